"""REST v1 for templates, clusters, tickets, sessions and operations: status codes, error bodies, secrecy, tenancy."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from portal.models import AppCategory, Cluster, CommentType, OperationState, TicketStatus
from tests import factories


def assert_error(response, status: int, code: str | None = None, fields: set[str] | None = None) -> dict:
    """The response is `status` with the one error envelope; returns the `error` object."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.json
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "fields"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    if fields is not None:
        assert set(body["error"]["fields"]) == fields
    return body["error"]


# ---------------------------------------------------------------- templates


def test_templates_list_search_filter_paginate(client, db, as_user):
    factories.make_template(db, slug="postgresql", name="PostgreSQL", tags=["Database", "SQL"])
    factories.make_template(db, slug="redis", name="Redis", description="Cache used with Postgres", tags=["Cache"])
    factories.make_template(db, slug="llm", name="AnythingLLM", category=AppCategory.ai_llm, tags=["AI"])
    factories.make_template(db, slug="gone", name="Gone", is_active=False)
    user = as_user(factories.make_user(db))

    listed = client.get("/api/v1/cloud/templates", headers=user)
    assert listed.status_code == 200
    assert listed.json["total"] == 3 and [t["slug"] for t in listed.json["items"]] == ["llm", "postgresql", "redis"]
    searched = client.get("/api/v1/cloud/templates?search=POSTGRES", headers=user).json
    assert [t["slug"] for t in searched["items"]] == ["postgresql", "redis"]  # name match first
    by_tags = client.get("/api/v1/cloud/templates?tags=database,sql", headers=user).json
    assert [t["slug"] for t in by_tags["items"]] == ["postgresql"]
    by_category = client.get("/api/v1/cloud/templates?category=ai_llm", headers=user).json
    assert [t["slug"] for t in by_category["items"]] == ["llm"]
    page2 = client.get("/api/v1/cloud/templates?per_page=2&page=2", headers=user).json
    assert (page2["total"], page2["page"], page2["per_page"], [t["slug"] for t in page2["items"]]) == (
        3,
        2,
        2,
        ["redis"],
    )

    assert_error(
        client.get("/api/v1/cloud/templates?category=games", headers=user), 422, "validation_error", {"category"}
    )
    assert_error(client.get("/api/v1/cloud/templates?colour=red", headers=user), 422, fields={"colour"})
    assert_error(client.get("/api/v1/cloud/templates?per_page=100000", headers=user), 422, fields={"per_page"})


def test_template_detail_by_id_or_slug_hides_secret_defaults(client, db, as_user):
    template = factories.make_template(
        db,
        slug="n8n",
        helm_default_values={"n8n": {"encryption_key": "auto-generated"}, "persistence": {"size": "5Gi"}},
        helm_value_specs={
            "required": [{"key": "encryptionKey", "label": "Key", "type": "password", "required": True}],
            "optional": [{"key": "timezone", "label": "TZ", "type": "text", "default": "UTC", "help": "IANA name"}],
        },
    )
    factories.make_template(db, slug="gone", is_active=False)
    user = as_user(factories.make_user(db))
    by_slug = client.get("/api/v1/cloud/templates/n8n", headers=user)
    assert by_slug.status_code == 200
    by_id = client.get(f"/api/v1/cloud/templates/{template.id}", headers=user)
    assert by_id.json == by_slug.json
    body = by_slug.json
    assert body["helm_chart"]["default_values"]["n8n"]["encryption_key"] == "********"
    assert body["helm_chart"]["default_values"]["persistence"] == {"size": "5Gi"}
    assert body["required_values"][0]["type"] == "password" and body["required_values"][0]["default_value"] is None
    optional = body["optional_values"][0]
    assert (optional["default_value"], optional["help_text"]) == ("UTC", "IANA name")
    assert body["category_label"] == "Database" and body["min_resources"] == {"vcpu": 1, "ram_gb": 1.0, "storage_gb": 5}
    assert_error(client.get("/api/v1/cloud/templates/gone", headers=user), 404, "not_found")
    assert client.get("/api/v1/cloud/templates/gone", headers=as_user(factories.make_admin(db))).status_code == 200
    assert_error(client.get(f"/api/v1/cloud/templates/{uuid.uuid4()}", headers=user), 404)
    assert_error(client.get("/api/v1/cloud/templates"), 401, "unauthorized")


# ---------------------------------------------------------------- clusters


def test_cluster_registration_shows_the_key_once(client, db, as_user):
    user_row = factories.make_user(db)
    user = as_user(user_row)
    created = client.post("/api/v1/clusters", json={"name": "prod-eu", "description": "Main"}, headers=user)
    assert created.status_code == 201
    key = created.json["api_key"]
    assert key.startswith("kdc_") and created.json["status"] == "pending"
    assert created.json["customer_id"] == str(user_row.customer_id)
    assert "api_key_hash" not in created.json
    cid = created.json["id"]

    for response in (
        client.get(f"/api/v1/clusters/{cid}", headers=user),
        client.get("/api/v1/clusters", headers=user),
        client.get(f"/api/v1/clusters/{cid}/nodes", headers=user),
    ):
        assert response.status_code == 200
        text = response.get_data(as_text=True)
        assert key not in text and "api_key_hash" not in text and '"api_key"' not in text
    stored = db.scalars(select(Cluster).where(Cluster.id == uuid.UUID(cid))).one()
    assert stored.api_key_hash not in client.get(f"/api/v1/clusters/{cid}", headers=user).get_data(as_text=True)

    detail = client.get(f"/api/v1/clusters/{cid}", headers=user)
    assert detail.headers["ETag"] == '"1"' and key.startswith(detail.json["api_key_prefix"])
    rotated = client.post(f"/api/v1/clusters/{cid}/rotate-key", headers={**user, "If-Match": '"1"'})
    assert rotated.status_code == 200 and rotated.json["api_key"] != key and rotated.json["version"] == 2
    stale = client.post(f"/api/v1/clusters/{cid}/rotate-key", headers={**user, "If-Match": '"1"'})
    assert_error(stale, 409, "stale")
    duplicate = client.post("/api/v1/clusters", json={"name": "prod-eu"}, headers=user)
    assert_error(duplicate, 409, "duplicate_name", {"name"})


def test_cluster_validation_and_roles(client, db, as_user):
    customer = factories.make_customer(db)
    admin = as_user(factories.make_admin(db))
    engineer = as_user(factories.make_engineer(db))
    assert_error(client.post("/api/v1/clusters", json={"name": ""}, headers=admin), 422, fields={"name"})
    assert_error(client.post("/api/v1/clusters", json={"name": "x" * 256}, headers=admin), 422, fields={"name"})
    assert_error(client.post("/api/v1/clusters", json={"name": "x", "extra": 1}, headers=admin), 422, fields={"extra"})
    assert_error(client.post("/api/v1/clusters", json={"name": "x"}, headers=admin), 422, fields={"customer_id"})
    assert_error(client.post("/api/v1/clusters", data="nope", headers=admin), 400, "expected_json")
    body = {"name": "x", "customer_id": str(customer.id)}
    assert_error(client.post("/api/v1/clusters", json=body, headers=engineer), 403, "forbidden")
    created = client.post("/api/v1/clusters", json=body, headers=admin)
    assert created.status_code == 201
    cid = created.json["id"]
    assert client.get(f"/api/v1/clusters/{cid}", headers=engineer).status_code == 200
    assert_error(client.post(f"/api/v1/clusters/{cid}/rotate-key", headers=engineer), 403)
    assert_error(client.get("/api/v1/clusters?status=broken", headers=engineer), 422, fields={"status"})


def test_cluster_tenant_isolation(client, db, as_user):
    user = factories.make_user(db)
    own = factories.make_cluster(db, user.customer, name="own")
    foreign = factories.make_cluster(db, name="foreign")
    factories.make_node(db, own, name="node-01")
    factories.make_node(db, foreign, name="node-99")
    headers = as_user(user)
    listed = client.get("/api/v1/clusters", headers=headers).json
    assert [c["id"] for c in listed["items"]] == [str(own.id)]
    nodes = client.get(f"/api/v1/clusters/{own.id}/nodes", headers=headers).json
    assert [n["name"] for n in nodes["items"]] == ["node-01"]
    for path in (f"/api/v1/clusters/{foreign.id}", f"/api/v1/clusters/{foreign.id}/nodes"):
        assert_error(client.get(path, headers=headers), 404, "not_found")
    assert_error(client.post(f"/api/v1/clusters/{foreign.id}/rotate-key", headers=headers), 404)
    # the filter cannot widen the scope
    assert client.get(f"/api/v1/clusters?customer_id={foreign.customer_id}", headers=headers).json["total"] == 0


# ---------------------------------------------------------------- tickets


def test_ticket_lifecycle_over_http(client, db, as_user):
    customer_user = factories.make_user(db)
    engineer_row = factories.make_engineer(db)
    cluster = factories.make_cluster(db, customer_user.customer)
    customer = as_user(customer_user)
    engineer = as_user(engineer_row)

    created = client.post(
        "/api/v1/tickets",
        json={"cluster_id": str(cluster.id), "title": "Node-02 cannot start", "description": "...", "priority": "high"},
        headers=customer,
    )
    assert created.status_code == 201
    ticket = created.json
    assert ticket["ticket_number"].startswith("TKT-") and ticket["status"] == "open"
    assert ticket["allowed_transitions"] == ["in_progress"] and ticket["created_by"] == str(customer_user.id)
    path = f"/api/v1/tickets/{ticket['id']}"

    assigned = client.patch(path, json={"assigned_to": str(engineer_row.id), "status": "in_progress"}, headers=engineer)
    assert assigned.status_code == 200, assigned.json
    assert (assigned.json["status"], assigned.json["assigned_to"], assigned.json["version"]) == (
        "in_progress",
        str(engineer_row.id),
        2,
    )
    assert assigned.headers["ETag"] == '"2"'
    invalid = client.patch(path, json={"status": "closed"}, headers=engineer)
    error = assert_error(invalid, 422, "validation_error", {"status"})
    assert "in_progress to closed" in error["fields"]["status"]
    stale = client.patch(path, json={"status": "resolved", "version": 1}, headers=engineer)
    assert_error(stale, 409, "stale")
    resolved = client.patch(path, json={"status": "resolved"}, headers={**engineer, "If-Match": '"2"'})
    assert resolved.status_code == 200 and resolved.json["resolved_at"] is not None
    closed = client.patch(path, json={"status": "closed"}, headers=customer)
    assert closed.status_code == 200 and closed.json["allowed_transitions"] == ["open"]
    reopened = client.patch(path, json={"status": "open"}, headers=customer)
    assert reopened.status_code == 200 and reopened.json["closed_at"] is None

    comment = client.post(f"{path}/comments", json={"content": "Thanks!"}, headers=customer)
    assert comment.status_code == 201 and comment.json["author_type"] == "customer"
    comments = client.get(f"{path}/comments", headers=engineer).json
    kinds = [c["comment_type"] for c in comments["items"]]
    assert kinds.count(CommentType.status_change) == 4 and kinds[-1] == "comment"
    changes = [
        (c["details"]["from"], c["details"]["to"]) for c in comments["items"] if c["comment_type"] == "status_change"
    ]
    assert changes == [("open", "in_progress"), ("in_progress", "resolved"), ("resolved", "closed"), ("closed", "open")]


def test_ticket_field_errors_and_role_rules(client, db, as_user):
    customer_user = factories.make_user(db)
    customer = as_user(customer_user)
    engineer = as_user(factories.make_engineer(db))
    ticket = factories.make_ticket(db, customer=customer_user.customer)
    db.commit()
    path = f"/api/v1/tickets/{ticket.id}"
    assert_error(client.post("/api/v1/tickets", json={}, headers=customer), 422, fields={"title"})
    assert_error(
        client.post("/api/v1/tickets", json={"title": "x", "priority": "asap"}, headers=customer),
        422,
        fields={"priority"},
    )
    assert_error(
        client.post("/api/v1/tickets", json={"title": "x", "cluster_id": "nope"}, headers=customer),
        422,
        fields={"cluster_id"},
    )
    assert_error(client.post("/api/v1/tickets", json={"title": "x"}, headers=engineer), 422, fields={"customer_id"})
    assert_error(client.patch(path, json={"title": None}, headers=customer), 422, fields={"title"})
    assert_error(client.patch(path, json={"status": "done"}, headers=customer), 422, fields={"status"})
    assert_error(client.patch(path, json={"ticket_number": "TKT-1"}, headers=customer), 422, fields={"ticket_number"})
    assert_error(client.patch(path, json={"status": "in_progress"}, headers=customer), 403, "forbidden")
    assert_error(client.patch(path, json={"title": "Mine now"}, headers=engineer), 403, "forbidden")
    assert_error(
        client.patch(path, json={"assigned_to": str(customer_user.id)}, headers=engineer), 422, fields={"assigned_to"}
    )
    assert_error(client.post(f"{path}/comments", json={"content": ""}, headers=customer), 422, fields={"content"})
    assert_error(client.patch(path, json={"title": "Stale"}, headers={**customer, "If-Match": '"7"'}), 409, "stale")
    assert_error(client.patch(path, json={}, headers={**customer, "If-Match": "abc"}), 400, "invalid_if_match")
    assert client.get(path, headers=customer).json["status"] == TicketStatus.open


def test_ticket_filters_over_http(client, db, as_user):
    user = factories.make_user(db)
    engineer_row = factories.make_engineer(db)
    a = factories.make_ticket(db, customer=user.customer, title="Disk full", priority="urgent")
    b = factories.make_ticket(
        db, customer=user.customer, title="DNS slow", status=TicketStatus.in_progress, assigned_to=engineer_row
    )
    c = factories.make_ticket(db, title="Other customer", status=TicketStatus.resolved)
    engineer = as_user(engineer_row)

    def numbers(query, headers=engineer):
        response = client.get(f"/api/v1/tickets?{query}", headers=headers)
        assert response.status_code == 200, response.json
        return {item["id"] for item in response.json["items"]}

    assert numbers("") == {str(a.id), str(b.id), str(c.id)}
    assert numbers("status=open,in_progress") == {str(a.id), str(b.id)}
    assert numbers("status=resolved&status=open") == {str(a.id), str(c.id)}
    assert numbers("priority=urgent") == {str(a.id)}
    assert numbers(f"customer_id={user.customer_id}") == {str(a.id), str(b.id)}
    assert numbers("assigned_to=me") == {str(b.id)}
    assert numbers("assigned_to=none&search=disk") == {str(a.id)}
    assert numbers(f"search={c.ticket_number}") == {str(c.id)}
    assert numbers("", headers=as_user(user)) == {str(a.id), str(b.id)}
    assert_error(client.get("/api/v1/tickets?status=pending", headers=engineer), 422, fields={"status.0"})
    assert_error(client.get("/api/v1/tickets?assigned_to=someone", headers=engineer), 422, fields={"assigned_to"})


def test_ticket_tenant_isolation(client, db, as_user):
    user = factories.make_user(db)
    headers = as_user(user)
    foreign = factories.make_ticket(db)
    foreign_cluster = factories.make_cluster(db)
    db.commit()
    path = f"/api/v1/tickets/{foreign.id}"
    assert_error(client.get(path, headers=headers), 404, "not_found")
    assert_error(client.patch(path, json={"title": "x"}, headers=headers), 404)
    assert_error(client.get(f"{path}/comments", headers=headers), 404)
    assert_error(client.post(f"{path}/comments", json={"content": "hi"}, headers=headers), 404)
    assert_error(
        client.post("/api/v1/tickets", json={"title": "x", "cluster_id": str(foreign_cluster.id)}, headers=headers), 404
    )
    # an invalid body to a foreign ticket is a 422 (validation runs before the lookup)
    assert_error(client.patch(path, json={"priority": "asap"}, headers=headers), 422)
    assert client.get(path, headers=as_user(factories.make_engineer(db))).status_code == 200


def test_failed_request_writes_nothing(client, db, as_user):
    engineer = as_user(factories.make_engineer(db))
    ticket = factories.make_ticket(db)
    db.commit()
    response = client.patch(
        f"/api/v1/tickets/{ticket.id}", json={"priority": "urgent", "status": "closed"}, headers=engineer
    )
    assert_error(response, 422, fields={"status"})
    again = client.get(f"/api/v1/tickets/{ticket.id}", headers=engineer).json
    assert (again["priority"], again["version"]) == ("normal", 1)
    comments = client.get(f"/api/v1/tickets/{ticket.id}/comments", headers=engineer).json
    assert comments["total"] == 0


# ---------------------------------------------------------------- sessions


def test_sessions_are_scoped_and_never_show_tunnel_credentials(client, db, as_user):
    user = factories.make_user(db)
    cluster = factories.make_cluster(db, user.customer)
    own = factories.make_session(
        db, ticket=factories.make_ticket(db, cluster=cluster), tunnel_token="secret-tunnel-token"
    )
    foreign = factories.make_session(db)
    headers = as_user(user)
    listed = client.get("/api/v1/sessions", headers=headers)
    assert listed.status_code == 200 and [s["id"] for s in listed.json["items"]] == [str(own.id)]
    detail = client.get(f"/api/v1/sessions/{own.id}", headers=headers)
    assert detail.status_code == 200 and detail.json["state"] == "requested"
    assert "secret-tunnel-token" not in detail.get_data(as_text=True) and "tunnel_token" not in detail.json
    assert_error(client.get(f"/api/v1/sessions/{foreign.id}", headers=headers), 404)
    engineer = as_user(factories.make_engineer(db))
    by_ticket = client.get(f"/api/v1/sessions?ticket_id={foreign.ticket_id}", headers=engineer).json
    assert [s["id"] for s in by_ticket["items"]] == [str(foreign.id)]
    assert_error(client.get("/api/v1/sessions?state=sleeping", headers=engineer), 422, fields={"state.0"})


# ---------------------------------------------------------------- operations


def test_operations_are_scoped_through_their_target(client, db, as_user):
    workspace = factories.make_workspace(db)
    member = factories.make_user(db, customer=workspace.customer)
    outsider = factories.make_user(db, customer=workspace.customer)  # same customer, not a member
    factories.make_member(db, workspace, member, role="viewer")
    service = factories.make_service(db, workspace)
    on_service = factories.make_operation(db, service, params={"name": "x"})
    cluster = factories.make_cluster(db, workspace.customer)
    on_cluster = factories.make_operation(db, cluster, kind="cluster.bootstrap")
    requested = factories.make_operation(db, service, requested_by=outsider)
    platform = factories.make_operation(db, False, kind="platform.up")
    foreign = factories.make_operation(db)

    member_h, outsider_h = as_user(member), as_user(outsider)
    shown = client.get(f"/api/v1/operations/{on_service.id}", headers=member_h)
    assert shown.status_code == 200
    assert (shown.json["kind"], shown.json["target_type"], shown.json["state"]) == (
        "service.deploy",
        "service",
        OperationState.queued,
    )
    assert "log" not in shown.json
    assert client.get(f"/api/v1/operations/{on_cluster.id}", headers=outsider_h).status_code == 200
    assert client.get(f"/api/v1/operations/{requested.id}", headers=outsider_h).status_code == 200
    assert_error(client.get(f"/api/v1/operations/{on_service.id}", headers=outsider_h), 404)
    assert_error(client.get(f"/api/v1/operations/{platform.id}", headers=member_h), 404)
    assert_error(client.get(f"/api/v1/operations/{foreign.id}", headers=member_h), 404)
    engineer = as_user(factories.make_engineer(db))
    for op in (on_service, platform, foreign):
        assert client.get(f"/api/v1/operations/{op.id}", headers=engineer).status_code == 200


def test_an_operations_log_is_served_on_its_own_route_with_the_operations_visibility(client, db, as_user):
    workspace = factories.make_workspace(db)
    member = factories.make_user(db, customer=workspace.customer)
    outsider = factories.make_user(db, customer=workspace.customer)
    factories.make_member(db, workspace, member, role="viewer")
    cluster = factories.make_cluster(db, workspace.customer)
    onboarding = factories.make_operation(db, cluster, kind="cluster.onboard")
    onboarding.log = "TASK [Apply the install bundle] ok\n"
    db.commit()

    shown = client.get(f"/api/v1/operations/{onboarding.id}/log", headers=as_user(member))
    assert shown.status_code == 200
    assert shown.json["log"] == "TASK [Apply the install bundle] ok\n"
    assert shown.json["operation_id"] == str(onboarding.id)
    foreign = factories.make_operation(db)
    assert_error(client.get(f"/api/v1/operations/{foreign.id}/log", headers=as_user(outsider)), 404)

"""Cloud Services API without a cluster: validation, names, permissions, one operation at a time, limits, secrecy."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from portal.models import CloudService, Operation, OperationState, ServiceState, WorkspaceRole
from portal.queue import default_queue
from portal.services import cloud_services
from tests import factories

PASSWORD = "Sup3r-secret-pw"
SPECS = {
    "required": [
        {"key": "auth.password", "label": "Password", "type": "password", "required": True},
        {"key": "auth.database", "label": "Database", "type": "text", "default_value": "app_db"},
    ],
    "optional": [
        {"key": "size", "label": "Size", "type": "select", "default_value": "8Gi", "options": ["8Gi", "16Gi"]},
        {"key": "replicas", "label": "Replicas", "type": "number"},
        {"key": "metrics.enabled", "label": "Metrics", "type": "boolean", "default_value": False},
    ],
}


@pytest.fixture()
def world(db, as_user):
    customer = factories.make_customer(db)
    workspace = factories.make_workspace(db, customer=customer, slug="acme")
    template = factories.make_template(db, slug="pg", helm_value_specs=SPECS, min_vcpu=1, min_ram_gb=1)
    users = {}
    for role in ("owner", "admin", "member", "viewer"):
        user = factories.make_user(db, customer=customer)
        factories.make_member(db, workspace=workspace, user=user, role=WorkspaceRole(role))
        users[role] = user
    users["outsider"] = factories.make_user(db, customer=customer)
    db.commit()
    headers = {role: as_user(user) for role, user in users.items()}
    return {"workspace": workspace, "template": template, "users": users, "headers": headers}


def _create(client, world, role="member", **body):
    payload = {
        "template_id": str(world["template"].id),
        "name": "My Database",
        "values": {"auth.password": PASSWORD},
    }
    payload.update(body)
    return client.post(
        f"/api/v1/workspaces/{world['workspace'].id}/services", json=payload, headers=world["headers"][role]
    )


def _running(db, world, **kw):
    service = factories.make_service(
        db,
        world["workspace"],
        world["template"],
        values={"auth.password": PASSWORD, "auth.database": "x", "size": "8Gi", "metrics.enabled": False},
        **kw,
    )
    service.state = ServiceState.running
    service.helm_revision = 1
    factories.make_revision(db, service)
    db.commit()
    return service


def test_create_returns_service_and_operation_and_queues_the_job(client, db, world, settings):
    response = _create(client, world, subdomain="my-db")
    assert response.status_code == 202, response.json
    body = response.json
    assert set(body) == {"service", "operation"}
    service, operation = body["service"], body["operation"]
    assert service["state"] == "pending"
    assert service["reference_id"] == "my-database"
    assert service["subdomain"] == "my-db"
    assert service["helm_release_name"] == "paas-ws-acme-my-database"
    assert service["helm_namespace"] == "paas-ws-acme"
    assert service["values"] == {"auth.database": "app_db", "size": "8Gi", "metrics.enabled": False}
    assert service["secret_keys_set"] == ["auth.password"]
    assert service["template"]["slug"] == "pg"
    assert service["active_operation"]["id"] == operation["id"]
    assert operation["kind"] == "service.deploy" and operation["state"] == "queued"
    assert PASSWORD not in response.get_data(as_text=True)
    # queued after the commit, under the operation's id; the encrypted args never hold the password in clear
    queue = default_queue(settings)
    assert operation["id"] in queue.job_ids
    job = queue.fetch_job(operation["id"])
    assert PASSWORD not in json.dumps([str(a) for a in job.args])
    # the stored row: password encrypted, not in the plain column
    row = db.get(CloudService, service["id"])
    db.refresh(row)
    assert "auth.password" not in row.helm_values and row.user_values["auth.password"] == PASSWORD
    activity = client.get(f"/api/v1/services/{service['id']}/activity", headers=world["headers"]["viewer"]).json
    assert [a["event_type"] for a in activity["items"]] == ["deploy_requested"]
    assert PASSWORD not in json.dumps(activity)


@pytest.mark.parametrize(
    ("values", "fields"),
    [
        ({}, {"values.auth.password": "required"}),
        ({"auth.password": PASSWORD, "colour": "red"}, {"values.colour": "is not allowed"}),
        ({"auth.password": PASSWORD, "size": "1Ti"}, {"values.size": "must be one of: 8Gi, 16Gi"}),
        ({"auth.password": PASSWORD, "replicas": "many"}, {"values.replicas": "must be a number"}),
        ({"auth.password": PASSWORD, "metrics.enabled": "maybe"}, {"values.metrics.enabled": "must be true or false"}),
        ({"auth.password": 12.5, "auth.database": True}, {"values.auth.database": "must be a string"}),
    ],
)
def test_values_are_validated_against_specs_and_nothing_is_created(client, db, world, values, fields):
    response = _create(client, world, values=values)
    assert response.status_code == 422, response.json
    assert response.json["error"]["fields"] == fields
    assert PASSWORD not in response.get_data(as_text=True)
    assert db.scalar(select(func.count()).select_from(CloudService)) == 0
    assert db.scalar(select(func.count()).select_from(Operation)) == 0


@pytest.mark.parametrize(
    ("subdomain", "reason"),
    [("www", "reserved"), ("Bad_Name", "invalid"), ("-x", "invalid"), ("a" * 64, "must be at most 63 characters")],
)
def test_subdomain_rules(client, world, subdomain, reason):
    response = _create(client, world, subdomain=subdomain)
    assert response.status_code == 422
    assert response.json["error"]["fields"] == {"subdomain": reason}


def test_taken_subdomain_and_reference_id_are_409_and_check_reports_them(client, db, world):
    assert _create(client, world, subdomain="shop", reference_id="db1").status_code == 202
    other_ws = factories.make_workspace(db, slug="other")
    factories.make_service(db, other_ws, world["template"], subdomain="elsewhere")
    db.commit()
    taken_sub = _create(client, world, subdomain="elsewhere", reference_id="db2")  # unique on the whole platform
    assert taken_sub.status_code == 409 and taken_sub.json["error"]["code"] == "subdomain_taken"
    taken_ref = _create(client, world, subdomain="shop2", reference_id="db1")
    assert taken_ref.status_code == 409 and taken_ref.json["error"]["code"] == "reference_id_taken"
    derived = _create(client, world, name="db1", subdomain="shop3")
    assert derived.status_code == 202 and derived.json["service"]["reference_id"] == "db1-2"

    url = f"/api/v1/workspaces/{world['workspace'].id}/services/check"
    viewer = world["headers"]["viewer"]
    answer = client.get(f"{url}?subdomain=elsewhere&reference_id=fresh", headers=viewer).json
    assert answer == {
        "subdomain": {"value": "elsewhere", "available": False, "reason": "taken"},
        "reference_id": {"value": "fresh", "available": True, "reason": None},
    }
    assert client.get(f"{url}?subdomain=api", headers=viewer).json == {
        "subdomain": {"value": "api", "available": False, "reason": "reserved"}
    }


def test_private_service_gets_no_subdomain(client, world):
    response = _create(client, world, is_private_network=True, subdomain="ignored")
    assert response.status_code == 202
    assert response.json["service"]["subdomain"] is None and response.json["service"]["is_private_network"] is True


def test_permissions(client, db, world):
    assert _create(client, world, role="viewer").status_code == 403
    assert _create(client, world, role="outsider").status_code == 404
    service = _running(db, world)
    url = f"/api/v1/services/{service.id}"
    assert client.get(url, headers=world["headers"]["viewer"]).status_code == 200
    assert client.get(url, headers=world["headers"]["outsider"]).status_code == 404
    assert client.patch(url, json={"values": {"size": "16Gi"}}, headers=world["headers"]["viewer"]).status_code == 403
    assert client.delete(url, headers=world["headers"]["member"]).status_code == 403
    assert client.delete(url, headers=world["headers"]["admin"]).status_code == 202


def test_one_operation_at_a_time_names_the_running_one(client, db, world):
    service = _running(db, world)
    url = f"/api/v1/services/{service.id}"
    first = client.patch(url, json={"values": {"size": "16Gi"}}, headers=world["headers"]["member"])
    assert first.status_code == 202
    assert first.json["service"]["state"] == "upgrading"
    running_id = first.json["operation"]["id"]
    for call in (
        lambda: client.patch(url, json={"values": {"size": "8Gi"}}, headers=world["headers"]["member"]),
        lambda: client.post(f"{url}/rollback", json={"revision": 1}, headers=world["headers"]["member"]),
        lambda: client.delete(url, headers=world["headers"]["owner"]),
    ):
        # upgrading is not a state an operation can start from, or the running operation blocks it
        second = call()
        assert second.status_code == 409, second.json
    db.expire_all()
    assert db.get(CloudService, service.id).state == ServiceState.upgrading
    # a service in a startable state with an operation still queued: 409 names it
    service.state = ServiceState.running
    db.commit()
    blocked = client.delete(url, headers=world["headers"]["owner"])
    assert blocked.status_code == 409
    assert blocked.json["error"]["code"] == "operation_running"
    assert blocked.json["operation_id"] == running_id
    # finished → the next one may start
    op = db.get(Operation, running_id)
    op.state = OperationState.succeeded
    db.commit()
    assert client.delete(url, headers=world["headers"]["owner"]).status_code == 202


def test_upgrade_keeps_a_blank_password_and_preview_queues(client, db, world, settings):
    service = _running(db, world)
    url = f"/api/v1/services/{service.id}"
    preview = client.post(f"{url}/preview", json={"values": {"size": "16Gi"}}, headers=world["headers"]["member"])
    assert preview.status_code == 202 and set(preview.json) == {"operation"}
    assert preview.json["operation"]["kind"] == "service.preview"
    db.get(Operation, preview.json["operation"]["id"]).state = OperationState.succeeded
    db.commit()
    bad = client.patch(url, json={"values": {"nope": 1}}, headers=world["headers"]["member"])
    assert bad.status_code == 422 and bad.json["error"]["fields"] == {"values.nope": "is not allowed"}
    ok = client.patch(url, json={"values": {"auth.password": "", "size": "16Gi"}}, headers=world["headers"]["member"])
    assert ok.status_code == 202
    assert ok.json["operation"]["params"]["changed_keys"] == ["size"]


def test_rollback_to_unknown_revision_is_422(client, db, world):
    service = _running(db, world)
    response = client.post(
        f"/api/v1/services/{service.id}/rollback", json={"revision": 9}, headers=world["headers"]["member"]
    )
    assert response.status_code == 422 and response.json["error"]["fields"] == {"revision": "not found"}


def test_revisions_newest_first_with_current_and_no_secrets(client, db, world):
    service = _running(db, world)
    factories.make_revision(db, service, kind="upgrade")
    service.helm_revision = 2
    db.commit()
    revisions = client.get(f"/api/v1/services/{service.id}/revisions", headers=world["headers"]["viewer"]).json
    assert [(r["revision"], r["kind"], r["current"]) for r in revisions["items"]] == [
        (2, "upgrade", True),
        (1, "install", False),
    ]
    assert PASSWORD not in json.dumps(revisions)
    detail = client.get(f"/api/v1/services/{service.id}", headers=world["headers"]["viewer"])
    assert PASSWORD not in detail.get_data(as_text=True)
    assert detail.json["secret_keys_set"] == ["auth.password"]


def test_fifty_services_per_workspace(client, db, world, settings):
    template = factories.make_template(db, slug="tiny", helm_value_specs={}, min_vcpu=0, min_ram_gb=0, min_storage_gb=0)
    for n in range(settings.max_services_per_workspace):
        factories.make_service(db, world["workspace"], template, reference_id=f"s{n}", subdomain=f"s{n}", values={})
    db.commit()
    response = _create(client, world, template_id=str(template.id), values={})
    assert response.status_code == 409 and response.json["error"]["code"] == "service_limit"
    # deleted services do not count
    gone = db.scalars(select(CloudService).where(CloudService.reference_id == "s0")).one()
    gone.state = ServiceState.deleted
    db.commit()
    assert _create(client, world, template_id=str(template.id), values={}).status_code == 202


def test_quota_headroom_is_checked_against_min_resources(client, db, world):
    world["workspace"].quota_requests_cpu = "2"
    big = factories.make_template(db, slug="big", helm_value_specs={}, min_vcpu=3)
    db.commit()
    response = _create(client, world, template_id=str(big.id), values={})
    assert response.status_code == 422
    assert set(response.json["error"]["fields"]) == {"template_id"}
    assert "CPU" in response.json["error"]["message"]
    assert _create(client, world, values={"auth.password": PASSWORD}).status_code == 202  # 1 vCPU fits


def test_list_leaves_out_deleted_unless_asked(client, db, world):
    live = _running(db, world)
    gone = factories.make_service(db, world["workspace"], world["template"], state=ServiceState.deleted)
    db.commit()
    url = f"/api/v1/workspaces/{world['workspace'].id}/services"
    listed = client.get(url, headers=world["headers"]["viewer"]).json
    assert [s["id"] for s in listed["items"]] == [str(live.id)]
    everything = client.get(f"{url}?include_deleted=true", headers=world["headers"]["viewer"]).json
    assert {s["id"] for s in everything["items"]} == {str(live.id), str(gone.id)}


def test_values_diff_masks_passwords(db, world):
    diff = cloud_services.values_diff(
        world["template"], {"auth.password": "a", "size": "8Gi"}, {"auth.password": "b", "size": "16Gi"}
    )
    assert diff == [
        {"key": "auth.password", "old": "********", "new": "********"},
        {"key": "size", "old": "8Gi", "new": "16Gi"},
    ]


def test_parse_quantity():
    assert cloud_services.parse_quantity("500m") * 1000 == 500
    assert cloud_services.parse_quantity("16Gi") == 16 * 2**30
    with pytest.raises(ValueError, match="not a quantity"):
        cloud_services.parse_quantity("lots")


def test_an_operation_whose_job_is_gone_no_longer_blocks_the_service(client, db, world):
    from datetime import timedelta

    from portal.models import utcnow

    service = _running(db, world)
    stuck = factories.make_operation(db, service, kind="service.upgrade", state=OperationState.running)
    stuck.rq_job_id = str(stuck.id)  # never enqueued: as after a worker was killed and its job expired
    service.state = ServiceState.upgrading
    db.commit()
    url = f"/api/v1/services/{service.id}"
    assert client.delete(url, headers=world["headers"]["owner"]).status_code == 409  # within the grace period
    db.execute(Operation.__table__.update().values(updated_at=utcnow() - timedelta(minutes=5)))
    db.commit()
    response = client.delete(url, headers=world["headers"]["owner"])
    assert response.status_code == 202, response.json
    db.expire_all()
    assert db.get(Operation, stuck.id).state == OperationState.failed

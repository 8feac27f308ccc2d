"""REST v1 for customers, users, workspaces and members: rules, validation, conflicts, secrecy."""

from __future__ import annotations

import pytest

from tests import factories

# ---------------------------------------------------------------- customers


def test_admin_manages_customers(client, db, as_user) -> None:
    admin = as_user(factories.make_admin(db))
    created = client.post("/api/v1/customers", json={"name": "Acme"}, headers=admin)
    assert created.status_code == 201 and created.json["version"] == 1
    cid = created.json["id"]
    duplicate = client.post("/api/v1/customers", json={"name": "ACME"}, headers=admin)
    assert duplicate.status_code == 409 and duplicate.json["error"]["fields"] == {"name": "taken"}
    renamed = client.patch(f"/api/v1/customers/{cid}", json={"name": "Acme Corp", "version": 1}, headers=admin)
    assert renamed.status_code == 200 and renamed.json["version"] == 2
    stale = client.patch(f"/api/v1/customers/{cid}", json={"name": "Old", "version": 1}, headers=admin)
    assert stale.status_code == 409 and stale.json["error"]["code"] == "stale"
    null_name = client.patch(f"/api/v1/customers/{cid}", json={"name": None}, headers=admin)
    assert null_name.status_code == 422
    listed = client.get("/api/v1/customers?search=corp", headers=admin).json
    assert [c["name"] for c in listed["items"]] == ["Acme Corp"]
    assert client.delete(f"/api/v1/customers/{cid}", headers={**admin, "If-Match": '"1"'}).status_code == 409
    assert client.delete(f"/api/v1/customers/{cid}", headers=admin).status_code == 204
    assert client.get(f"/api/v1/customers/{cid}", headers=admin).status_code == 404


def test_customer_with_workspaces_cannot_be_deleted(client, db, as_user) -> None:
    admin = as_user(factories.make_admin(db))
    workspace = factories.make_workspace(db)
    db.commit()
    response = client.delete(f"/api/v1/customers/{workspace.customer_id}", headers=admin)
    assert response.status_code == 409 and response.json["error"]["code"] == "customer_not_empty"


def test_customer_users_see_only_their_customer(client, db, as_user) -> None:
    mine, other = factories.make_customer(db), factories.make_customer(db)
    headers = as_user(factories.make_user(db, customer=mine))
    listed = client.get("/api/v1/customers", headers=headers).json
    assert [c["id"] for c in listed["items"]] == [str(mine.id)] and listed["total"] == 1
    assert client.get(f"/api/v1/customers/{other.id}", headers=headers).status_code == 404
    assert client.post("/api/v1/customers", json={"name": "Mine"}, headers=headers).status_code == 403
    engineer = as_user(factories.make_engineer(db))
    assert client.get("/api/v1/customers", headers=engineer).json["total"] == 2
    assert client.post("/api/v1/customers", json={"name": "Nope"}, headers=engineer).status_code == 403


# ---------------------------------------------------------------- users


def test_admin_creates_users_and_secrets_never_leave(client, db, as_user) -> None:
    admin = as_user(factories.make_admin(db))
    customer = factories.make_customer(db)
    db.commit()
    body = {
        "email": "Jane@Example.com",
        "name": "Jane",
        "role": "customer",
        "customer_id": str(customer.id),
        "password": "a good password",
    }
    created = client.post("/api/v1/users", json=body, headers=admin)
    assert created.status_code == 201
    assert created.json["email"] == "jane@example.com"
    assert "password" not in created.get_data(as_text=True) and "argon2" not in created.get_data(as_text=True)
    duplicate = client.post("/api/v1/users", json={**body, "email": "JANE@example.com"}, headers=admin)
    assert duplicate.status_code == 409 and duplicate.json["error"]["fields"] == {"email": "taken"}


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"role": "customer"}, {"customer_id": "is required for customer users"}),
        ({"role": "engineer", "customer_id": "__customer__"}, {"customer_id": "must be empty for staff users"}),
        ({"role": "boss"}, {"role": "must be one of: admin, engineer or customer"}),
        ({"email": "not-an-email"}, {"email": "must be a valid email address"}),
        ({"password": "short"}, {"password": "must be at least 8 characters"}),
    ],
)
def test_user_validation(client, db, as_user, changes, fields) -> None:
    admin = as_user(factories.make_admin(db))
    customer = factories.make_customer(db)
    db.commit()
    body = {"email": "x@example.com", "name": "X", "role": "engineer", **changes}
    if body.get("customer_id") == "__customer__":
        body["customer_id"] = str(customer.id)
    response = client.post("/api/v1/users", json=body, headers=admin)
    assert response.status_code == 422
    assert response.json["error"]["fields"] == fields


def test_admin_cannot_lock_themselves_out(client, db, as_user) -> None:
    me = factories.make_admin(db)
    headers = as_user(me)
    assert client.delete(f"/api/v1/users/{me.id}", headers=headers).status_code == 409
    demote = client.patch(f"/api/v1/users/{me.id}", json={"role": "engineer"}, headers=headers)
    assert demote.status_code == 409 and demote.json["error"]["code"] == "self_lockout"


def test_customer_users_see_only_their_colleagues(client, db, as_user) -> None:
    customer = factories.make_customer(db)
    colleague = factories.make_user(db, customer=customer)
    stranger = factories.make_user(db)
    engineer = factories.make_engineer(db)
    me = factories.make_user(db, customer=customer)
    headers = as_user(me)
    listed = client.get("/api/v1/users", headers=headers).json
    assert {u["id"] for u in listed["items"]} == {str(colleague.id), str(me.id)}
    assert listed["total"] == 2
    assert client.get(f"/api/v1/users/{colleague.id}", headers=headers).status_code == 200
    assert client.get(f"/api/v1/users/{stranger.id}", headers=headers).status_code == 404
    assert client.get(f"/api/v1/users/{engineer.id}", headers=headers).status_code == 404
    assert client.patch(f"/api/v1/users/{colleague.id}", json={"name": "Z"}, headers=headers).status_code == 403


# ---------------------------------------------------------------- workspaces


def test_customer_user_creates_a_workspace_and_becomes_owner(client, db, as_user) -> None:
    user = factories.make_user(db)
    factories.make_workspace(db, name="Shop", slug="shop")  # another tenant already has the slug
    headers = as_user(user)
    created = client.post("/api/v1/workspaces", json={"name": "Shop"}, headers=headers)
    assert created.status_code == 201
    assert created.json["slug"] == "shop-2" and created.json["namespace"] == "paas-ws-shop-2"
    assert created.json["customer_id"] == str(user.customer_id)
    me = client.get("/api/v1/me", headers=headers).json
    assert me["memberships"] == [
        {"workspace_id": created.json["id"], "workspace_name": "Shop", "workspace_slug": "shop-2", "role": "owner"}
    ]
    foreign = client.post(
        "/api/v1/workspaces", json={"name": "X", "customer_id": str(factories.make_customer(db).id)}, headers=headers
    )
    assert foreign.status_code == 422 and foreign.json["error"]["fields"] == {
        "customer_id": "must be your own customer"
    }


def test_admin_creates_workspaces_for_a_customer(client, db, as_user) -> None:
    admin = as_user(factories.make_admin(db))
    customer = factories.make_customer(db)
    owner = factories.make_user(db, customer=customer)
    db.commit()
    missing = client.post("/api/v1/workspaces", json={"name": "W"}, headers=admin)
    assert missing.status_code == 422 and missing.json["error"]["fields"] == {"customer_id": "is required"}
    created = client.post(
        "/api/v1/workspaces",
        json={"name": "Été 2024 — Test!", "customer_id": str(customer.id), "owner_id": str(owner.id)},
        headers=admin,
    )
    assert created.status_code == 201 and created.json["slug"] == "ete-2024-test"
    members = client.get(f"/api/v1/workspaces/{created.json['id']}/members", headers=admin).json["items"]
    assert [(m["user_id"], m["role"]) for m in members] == [(str(owner.id), "owner")]
    engineer = as_user(factories.make_engineer(db))
    refused = client.post("/api/v1/workspaces", json={"name": "W", "customer_id": str(customer.id)}, headers=engineer)
    assert refused.status_code == 403


def test_workspace_with_services_cannot_be_deleted(client, db, as_user) -> None:
    admin = as_user(factories.make_admin(db))
    service = factories.make_service(db)
    db.commit()
    response = client.delete(f"/api/v1/workspaces/{service.workspace_id}", headers=admin)
    assert response.status_code == 409 and response.json["error"]["code"] == "workspace_not_empty"


def test_workspace_validation(client, db, as_user) -> None:
    headers = as_user(factories.make_user(db))
    response = client.post("/api/v1/workspaces", json={"name": "x" * 101, "colour": "red"}, headers=headers)
    assert response.status_code == 422
    assert response.json["error"]["fields"] == {"name": "must be at most 100 characters", "colour": "is not allowed"}


# ---------------------------------------------------------------- members


@pytest.fixture()
def team(db):
    customer = factories.make_customer(db)
    workspace = factories.make_workspace(db, customer=customer)
    people = {role: factories.make_user(db, customer=customer) for role in ("owner", "admin", "member", "viewer")}
    for role, user in people.items():
        factories.make_member(db, workspace=workspace, user=user, role=role)
    outsider = factories.make_user(db, customer=customer)
    db.commit()
    return workspace, people, outsider


def test_members_add_change_remove(client, db, as_user, team) -> None:
    workspace, people, outsider = team
    headers = as_user(people["admin"])
    base = f"/api/v1/workspaces/{workspace.id}/members"
    added = client.post(base, json={"user_id": str(outsider.id), "role": "viewer"}, headers=headers)
    assert added.status_code == 201 and added.json["role"] == "viewer"
    again = client.post(base, json={"user_id": str(outsider.id), "role": "viewer"}, headers=headers)
    assert again.status_code == 409
    changed = client.patch(f"{base}/{outsider.id}", json={"role": "member", "version": 1}, headers=headers)
    assert changed.status_code == 200 and changed.json["role"] == "member" and changed.json["version"] == 2
    assert client.delete(f"{base}/{outsider.id}", headers=headers).status_code == 204
    assert client.delete(f"{base}/{outsider.id}", headers=headers).status_code == 404
    total = client.get(base, headers=as_user(people["viewer"])).json["total"]
    assert total == 4


def test_only_owners_touch_the_owner_role(client, db, as_user, team) -> None:
    workspace, people, outsider = team
    base = f"/api/v1/workspaces/{workspace.id}/members"
    admin = as_user(people["admin"])
    assert client.post(base, json={"user_id": str(outsider.id), "role": "owner"}, headers=admin).status_code == 403
    assert client.delete(f"{base}/{people['owner'].id}", headers=admin).status_code == 403
    owner = as_user(people["owner"])
    promoted = client.patch(f"{base}/{people['admin'].id}", json={"role": "owner"}, headers=owner)
    assert promoted.status_code == 200


def test_last_owner_cannot_be_removed_or_demoted(client, db, as_user, team) -> None:
    workspace, people, _ = team
    base = f"/api/v1/workspaces/{workspace.id}/members/{people['owner'].id}"
    owner = as_user(people["owner"])
    demoted = client.patch(base, json={"role": "admin"}, headers=owner)
    assert demoted.status_code == 409 and demoted.json["error"]["code"] == "last_owner"
    removed = client.delete(base, headers=owner)
    assert removed.status_code == 409 and removed.json["error"]["code"] == "last_owner"
    admin = as_user(factories.make_admin(db))
    assert client.delete(f"/api/v1/users/{people['owner'].id}", headers=admin).status_code == 409


def test_members_must_belong_to_the_workspace_customer(client, db, as_user, team) -> None:
    workspace, people, _ = team
    stranger = factories.make_user(db)
    engineer = factories.make_engineer(db)
    headers = as_user(factories.make_admin(db))
    base = f"/api/v1/workspaces/{workspace.id}/members"
    for user in (stranger, engineer):
        response = client.post(base, json={"user_id": str(user.id), "role": "member"}, headers=headers)
        assert response.status_code == 422
        assert response.json["error"]["fields"] == {"user_id": "must be an active user of the workspace's customer"}
    assert client.get(f"/api/v1/users/{stranger.id}", headers=as_user(people["owner"])).status_code == 404


def test_only_platform_admins_set_a_workspace_quota(client, db, as_user) -> None:
    workspace = factories.make_workspace(db)
    owner = factories.make_user(db, customer=workspace.customer)
    factories.make_member(db, workspace, owner, role="owner")
    url = f"/api/v1/workspaces/{workspace.id}"
    raised = {"quota": {"requests_cpu": "12", "requests_memory": "24Gi", "pods": 150}}

    refused = client.patch(url, json=raised, headers=as_user(owner))
    assert refused.status_code == 403
    assert client.get(url, headers=as_user(owner)).json["quota"]["requests.cpu"] == "8"  # unchanged

    admin = as_user(factories.make_admin(db))
    bad = client.patch(url, json={"quota": {"requests_cpu": "lots", "pods": 0}}, headers=admin)
    assert bad.status_code == 422
    assert set(bad.json["error"]["fields"]) == {"quota.requests_cpu", "quota.pods"}

    updated = client.patch(url, json=raised, headers=admin)
    assert updated.status_code == 200
    quota = updated.json["quota"]
    assert (quota["requests.cpu"], quota["requests.memory"], quota["pods"]) == ("12", "24Gi", "150")
    assert quota["limits.cpu"] == "16"  # fields not sent keep their value
    # the owner may still rename without touching the quota
    assert client.patch(url, json={"name": "Renamed"}, headers=as_user(owner)).status_code == 200

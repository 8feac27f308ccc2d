"""The access matrix, generated from the route table: every /api/v1 endpoint, every role, own and foreign objects.

`EXPECTATIONS` is the one declarative table of expected statuses (docs/api.md, "Authorization").
A route in the table without an expectation fails `test_every_route_has_an_expectation`: whoever
adds an endpoint adds its row here (and, if it needs new objects, a line in `build_tenant`).

Every request runs inside a SAVEPOINT that is rolled back afterwards, so all cases share one
world built once per module and no case sees another's writes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from portal import create_app, database_of
from portal.api import routes
from portal.crypto import install_encryption
from portal.services.recordings import RecordingStore
from tests import factories

# ---------------------------------------------------------------- roles

STAFF = ("admin", "engineer")
# customer users of tenant A, by their role in A's workspaces ("ws_none": same customer, no membership)
TENANT_ROLES = ("ws_owner", "ws_admin", "ws_member", "ws_viewer", "ws_none")
ROLES = ("anonymous", *STAFF, *TENANT_ROLES, "foreign")  # foreign: owner of tenant B's workspace
WS_ROLE_OF = {"ws_owner": "owner", "ws_admin": "admin", "ws_member": "member", "ws_viewer": "viewer"}


@dataclass
class Tenant:
    """One customer's objects; `ids` maps path-parameter names to this tenant's object ids."""

    name: str
    users: dict[str, Any] = field(default_factory=dict)  # role → User
    tokens: dict[str, str] = field(default_factory=dict)  # role → bearer token
    spare_tokens: dict[str, uuid.UUID] = field(default_factory=dict)  # role → id of a second token
    ids: dict[str, Any] = field(default_factory=dict)


@dataclass
class World:
    tenants: dict[str, Tenant]
    staff: dict[str, Any]
    staff_tokens: dict[str, str]
    staff_spare_tokens: dict[str, uuid.UUID]

    def token(self, role: str) -> str | None:
        if role == "anonymous":
            return None
        if role in STAFF:
            return self.staff_tokens[role]
        if role == "foreign":
            return self.tenants["B"].tokens["ws_owner"]
        return self.tenants["A"].tokens[role]

    def spare_token(self, role: str) -> uuid.UUID | None:
        if role in STAFF:
            return self.staff_spare_tokens[role]
        if role == "foreign":
            return self.tenants["B"].spare_tokens["ws_owner"]
        return self.tenants["A"].spare_tokens.get(role)


def build_tenant(session: Session, name: str, engineer: Any) -> Tenant:
    """A customer with one user per workspace role, two identical workspaces and a non-member.

    `engineer` (the matrix's engineer) runs the tenant's active support session.
    """
    tenant = Tenant(name)
    customer = factories.make_customer(session, name=f"Tenant {name}")
    workspace = factories.make_workspace(session, customer=customer, name=f"WS {name}")
    empty_workspace = factories.make_workspace(session, customer=customer, name=f"Empty WS {name}")
    for role in TENANT_ROLES:
        user = factories.make_user(session, customer=customer, email=f"{role}.{name.lower()}@example.com")
        tenant.users[role] = user
        if role in WS_ROLE_OF:
            factories.make_member(session, workspace=workspace, user=user, role=WS_ROLE_OF[role])
            factories.make_member(session, workspace=empty_workspace, user=user, role=WS_ROLE_OF[role])
        _, tenant.tokens[role] = factories.make_api_token(session, user)
        tenant.spare_tokens[role] = factories.make_api_token(session, user)[0].id
    tenant.ids.update(
        customer_id=customer.id,
        workspace_id=workspace.id,
        empty_workspace_id=empty_workspace.id,
        user_id=tenant.users["ws_member"].id,  # a user of this tenant who is a member (not the last owner)
        outsider_id=tenant.users["ws_none"].id,
    )
    # Domain objects go here (clusters, nodes, tickets, services, sessions, operations...), e.g.
    #   cluster = factories.make_cluster(session, customer); tenant.ids["cluster_id"] = cluster.id
    # Remote Support: a cluster with a node, a ticket on it with a session; Cloud Services: an
    # operation on a service of the workspace (readable by its members only); a (global) template.
    # The cluster and node are online, so admins may start a session; the ticket is not assigned, so the
    # engineer may not. The active session is the engineer's: only they get a terminal ticket.
    cluster = factories.make_cluster(session, customer, name=f"cluster-{name.lower()}", status="online")
    node = factories.make_node(session, cluster, agent_status="online")
    ticket = factories.make_ticket(session, cluster=cluster, created_by=tenant.users["ws_member"])
    support_session = factories.make_session(session, ticket=ticket, node=node, engineer=engineer, state="active")
    operation = factories.make_operation(session, factories.make_service(session, workspace))
    template = factories.make_template(session, slug=f"matrix-app-{name.lower()}")
    # Cloud Services: a running service with one revision and no operation in flight
    service = factories.make_service(
        session, workspace, template, state="running", helm_revision=1, values={"auth.postgresPassword": "pw-1234"}
    )
    factories.make_revision(session, service)
    tenant.ids["service_id"] = service.id
    tenant.ids.update(
        cluster_id=cluster.id,
        node_id=node.id,
        ticket_id=ticket.id,
        session_id=support_session.id,
        operation_id=operation.id,
        template_ref=template.slug,
    )
    return tenant


def build_world(session: Session) -> World:
    staff = {"admin": factories.make_admin(session), "engineer": factories.make_engineer(session)}
    tenants = {name: build_tenant(session, name, staff["engineer"]) for name in ("A", "B")}
    tokens = {role: factories.make_api_token(session, user)[1] for role, user in staff.items()}
    spare = {role: factories.make_api_token(session, user)[0].id for role, user in staff.items()}
    return World(tenants=tenants, staff=staff, staff_tokens=tokens, staff_spare_tokens=spare)


# ---------------------------------------------------------------- the expectation table


@dataclass
class Expect:
    """Expected statuses for one route.

    `own`: role → status when the object belongs to tenant A (for "foreign", that is B's user on
    A's object). `foreign`: status for tenant-A customer users on tenant B's object (None: the
    route has no tenant object, only the `own` run happens); staff expect the same as `own` unless
    `staff_foreign` says otherwise (e.g. someone else's personal token).
    `body(world, tenant, role)` builds the JSON body; `params(world, tenant, role)` overrides path
    parameters (default: `tenant.ids[name]`).
    """

    own: dict[str, int]
    foreign: int | None = 404
    staff_foreign: int | None = None
    body: Callable[[World, Tenant, str], Any] | None = None
    params: Callable[[World, Tenant, str], dict[str, Any]] | None = None


def statuses(*, anonymous: int = 401, staff: tuple[int, int], tenant: dict[str, int] | int, foreign: int) -> dict:
    per_tenant = tenant if isinstance(tenant, dict) else dict.fromkeys(TENANT_ROLES, tenant)
    assert set(per_tenant) == set(TENANT_ROLES)
    return {"anonymous": anonymous, "admin": staff[0], "engineer": staff[1], **per_tenant, "foreign": foreign}


def everyone(ok: int) -> dict:
    """Any signed-in user (no tenant object involved)."""
    return statuses(staff=(ok, ok), tenant=ok, foreign=ok)


def admins_only(ok: int, *, others: int = 403, foreign: int = 403) -> dict:
    return statuses(staff=(ok, others), tenant=others, foreign=foreign)


def tenant_read(ok: int = 200) -> dict:
    """Readable by staff and every user of the owning customer; 404 to other tenants."""
    return statuses(staff=(ok, ok), tenant=ok, foreign=404)


def tenant_admin_write(ok: int) -> dict:
    """Visible to the owning customer's users but writable by platform admins only."""
    return statuses(staff=(ok, 403), tenant=403, foreign=404)


def workspace(action: str, ok: int) -> dict:
    """docs/api.md: viewer reads, member deploys, admin/owner delete and manage; non-members get 404."""
    least = {"read": "ws_viewer", "deploy": "ws_member", "delete": "ws_admin", "manage": "ws_admin"}[action]
    order = ["ws_viewer", "ws_member", "ws_admin", "ws_owner"]
    allowed = set(order[order.index(least) :])
    per_tenant = {role: (ok if role in allowed else 403) for role in order} | {"ws_none": 404}
    engineer = ok if action == "read" else 403
    return statuses(staff=(ok, engineer), tenant=per_tenant, foreign=404)


def own_token(world: World, tenant: Tenant, role: str) -> dict[str, Any]:
    """Own object: the caller's own spare token; foreign object: a tenant-B user's token."""
    if tenant.name == "B":
        return {"token_id": tenant.spare_tokens["ws_viewer"]}
    return {"token_id": world.spare_token(role) or uuid.uuid4()}


V1 = "/api/v1"
MATRIX_KUBECONFIG = (
    "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
    "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n"
)
EXPECTATIONS: dict[tuple[str, str], Expect] = {
    ("GET", f"{V1}/openapi.json"): Expect(statuses(anonymous=200, staff=(200, 200), tenant=200, foreign=200), None),
    ("GET", f"{V1}/me"): Expect(everyone(200), None),
    ("GET", f"{V1}/me/tokens"): Expect(everyone(200), None),
    ("POST", f"{V1}/me/tokens"): Expect(everyone(201), None, body=lambda w, t, r: {"name": "matrix"}),
    ("DELETE", f"{V1}/me/tokens/{{token_id}}"): Expect(everyone(204), 404, staff_foreign=404, params=own_token),
    # customers
    ("GET", f"{V1}/customers"): Expect(everyone(200), None),
    ("POST", f"{V1}/customers"): Expect(admins_only(201), None, body=lambda w, t, r: {"name": "Matrix Inc"}),
    ("GET", f"{V1}/customers/{{customer_id}}"): Expect(tenant_read()),
    ("PATCH", f"{V1}/customers/{{customer_id}}"): Expect(
        tenant_admin_write(200), body=lambda w, t, r: {"name": f"Renamed {t.name}"}
    ),
    # 409 for admins: tenant A still owns workspaces (authorized, then stopped by the rule)
    ("DELETE", f"{V1}/customers/{{customer_id}}"): Expect(tenant_admin_write(409)),
    # users
    ("GET", f"{V1}/users"): Expect(everyone(200), None),
    ("POST", f"{V1}/users"): Expect(
        admins_only(201),
        None,
        body=lambda w, t, r: {"email": "new.user@example.com", "name": "New", "role": "engineer"},
    ),
    ("GET", f"{V1}/users/{{user_id}}"): Expect(tenant_read()),
    ("PATCH", f"{V1}/users/{{user_id}}"): Expect(tenant_admin_write(200), body=lambda w, t, r: {"name": "Renamed"}),
    ("DELETE", f"{V1}/users/{{user_id}}"): Expect(tenant_admin_write(204)),
    # workspaces
    ("GET", f"{V1}/workspaces"): Expect(everyone(200), None),
    ("POST", f"{V1}/workspaces"): Expect(
        # customer users create in their own customer (the body names tenant A's); B's user → 422
        statuses(staff=(201, 403), tenant=201, foreign=422),
        422,
        body=lambda w, t, r: {"name": "Matrix WS", "customer_id": str(t.ids["customer_id"])},
    ),
    ("GET", f"{V1}/workspaces/{{workspace_id}}"): Expect(workspace("read", 200)),
    ("PATCH", f"{V1}/workspaces/{{workspace_id}}"): Expect(
        workspace("manage", 200), body=lambda w, t, r: {"description": "changed"}
    ),
    ("DELETE", f"{V1}/workspaces/{{workspace_id}}"): Expect(
        workspace("manage", 204), params=lambda w, t, r: {"workspace_id": t.ids["empty_workspace_id"]}
    ),
    ("GET", f"{V1}/workspaces/{{workspace_id}}/members"): Expect(workspace("read", 200)),
    ("POST", f"{V1}/workspaces/{{workspace_id}}/members"): Expect(
        workspace("manage", 201), body=lambda w, t, r: {"user_id": str(t.ids["outsider_id"]), "role": "viewer"}
    ),
    ("PATCH", f"{V1}/workspaces/{{workspace_id}}/members/{{user_id}}"): Expect(
        workspace("manage", 200), body=lambda w, t, r: {"role": "viewer"}
    ),
    ("DELETE", f"{V1}/workspaces/{{workspace_id}}/members/{{user_id}}"): Expect(workspace("manage", 204)),
    # templates (global: readable by every signed-in user)
    ("GET", f"{V1}/cloud/templates"): Expect(everyone(200), None),
    ("GET", f"{V1}/cloud/templates/{{template_ref}}"): Expect(everyone(200), None),
    # clusters: customer users register in their own customer (B's user naming A's customer → 422)
    ("GET", f"{V1}/clusters"): Expect(everyone(200), None),
    ("POST", f"{V1}/clusters"): Expect(
        statuses(staff=(201, 403), tenant=201, foreign=422),
        422,
        body=lambda w, t, r: {"name": "matrix-new", "customer_id": str(t.ids["customer_id"])},
    ),
    ("GET", f"{V1}/clusters/{{cluster_id}}"): Expect(tenant_read()),
    ("GET", f"{V1}/clusters/{{cluster_id}}/nodes"): Expect(tenant_read()),
    ("POST", f"{V1}/clusters/{{cluster_id}}/rotate-key"): Expect(statuses(staff=(200, 403), tenant=200, foreign=404)),
    # D1 onboarding. The bundle needs the cluster's key (X-Kaiden-Cluster-Key, not sent here): users who
    # see the cluster are told to send it (403). The status route is readable like the cluster.
    ("GET", f"{V1}/clusters/{{cluster_id}}/install.yaml"): Expect(statuses(staff=(403, 403), tenant=403, foreign=404)),
    ("GET", f"{V1}/clusters/{{cluster_id}}/status"): Expect(tenant_read()),
    ("POST", f"{V1}/clusters/{{cluster_id}}/onboard"): Expect(
        statuses(staff=(202, 403), tenant=202, foreign=404), body=lambda w, t, r: {"kubeconfig": MATRIX_KUBECONFIG}
    ),
    # tickets: a foreign cluster in the body is a 404, like a foreign ticket in the path
    ("GET", f"{V1}/tickets"): Expect(everyone(200), None),
    ("POST", f"{V1}/tickets"): Expect(
        statuses(staff=(201, 201), tenant=201, foreign=404),
        404,
        body=lambda w, t, r: {"title": "Matrix ticket", "cluster_id": str(t.ids["cluster_id"])},
    ),
    ("GET", f"{V1}/tickets/{{ticket_id}}"): Expect(tenant_read()),
    ("PATCH", f"{V1}/tickets/{{ticket_id}}"): Expect(tenant_read(), body=lambda w, t, r: {"priority": "high"}),
    ("GET", f"{V1}/tickets/{{ticket_id}}/comments"): Expect(tenant_read()),
    ("POST", f"{V1}/tickets/{{ticket_id}}/comments"): Expect(tenant_read(201), body=lambda w, t, r: {"content": "hi"}),
    # support sessions (docs/sessions.md): admins or the ticket's assignee start them; the session's engineer,
    # admins and whoever may close the ticket end them; only the session's engineer attaches; the ticket's
    # parties read the recording
    ("GET", f"{V1}/sessions"): Expect(everyone(200), None),
    ("GET", f"{V1}/sessions/{{session_id}}"): Expect(tenant_read()),
    ("POST", f"{V1}/tickets/{{ticket_id}}/sessions"): Expect(
        statuses(staff=(202, 403), tenant=403, foreign=404), body=lambda w, t, r: {"node_id": str(t.ids["node_id"])}
    ),
    ("DELETE", f"{V1}/sessions/{{session_id}}"): Expect(tenant_read(202)),
    ("POST", f"{V1}/sessions/{{session_id}}/attach"): Expect(
        statuses(staff=(403, 201), tenant=403, foreign=404), body=lambda w, t, r: {"cols": 80, "rows": 24}
    ),
    ("GET", f"{V1}/sessions/{{session_id}}/recording"): Expect(tenant_read()),
    # operations: readable where the target is (here a service: workspace members only)
    ("GET", f"{V1}/operations/{{operation_id}}"): Expect(workspace("read", 200)),
    ("GET", f"{V1}/operations/{{operation_id}}/log"): Expect(workspace("read", 200)),
    # Cloud Services (docs/cloud-services.md): viewers read, members deploy/upgrade/roll back, admins delete
    ("GET", f"{V1}/workspaces/{{workspace_id}}/services"): Expect(workspace("read", 200)),
    ("GET", f"{V1}/workspaces/{{workspace_id}}/services/check"): Expect(workspace("read", 200)),
    ("POST", f"{V1}/workspaces/{{workspace_id}}/services"): Expect(
        workspace("deploy", 202),
        body=lambda w, t, r: {
            "template_id": t.ids["template_ref"],
            "name": "Matrix service",
            "values": {"auth.postgresPassword": "matrix-pw-1"},
        },
    ),
    ("GET", f"{V1}/services/{{service_id}}"): Expect(workspace("read", 200)),
    ("PATCH", f"{V1}/services/{{service_id}}"): Expect(
        workspace("deploy", 202), body=lambda w, t, r: {"values": {"auth.database": "changed"}}
    ),
    ("DELETE", f"{V1}/services/{{service_id}}"): Expect(workspace("delete", 202)),
    ("POST", f"{V1}/services/{{service_id}}/preview"): Expect(
        workspace("deploy", 202), body=lambda w, t, r: {"values": {"auth.database": "changed"}}
    ),
    ("POST", f"{V1}/services/{{service_id}}/rollback"): Expect(
        workspace("deploy", 202), body=lambda w, t, r: {"revision": 1}
    ),
    ("GET", f"{V1}/services/{{service_id}}/revisions"): Expect(workspace("read", 200)),
    ("GET", f"{V1}/services/{{service_id}}/activity"): Expect(workspace("read", 200)),
}


# ---------------------------------------------------------------- running it


def _savepoint_engine(url: str):
    """An engine whose connections honour SAVEPOINTs (pysqlite needs explicit BEGIN for that)."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection, _record) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:
            conn.exec_driver_sql("BEGIN")

    return engine


@pytest.fixture(scope="module")
def matrix(settings, _schema):
    """(app, connection, world): the app's request sessions run in SAVEPOINTs of one outer transaction."""
    app = create_app(settings)
    engine = _savepoint_engine(settings.database_url)
    install_encryption(engine, settings.encryption_key)
    connection = engine.connect()
    outer = connection.begin()
    factory = sessionmaker(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    recordings = RecordingStore.from_settings(settings)
    world = None
    try:
        with factory() as session:
            world = build_world(session)
            session.commit()
        for tenant in world.tenants.values():  # a recording of each tenant's session, for the replay route
            recordings.put_chunk(tenant.ids["session_id"], 0, b'{"version": 2, "width": 80, "height": 24}\n')
        database_of(app).sessionmaker = factory
        yield app, connection, world
    finally:
        for tenant in world.tenants.values() if world else ():
            recordings.delete(tenant.ids["session_id"])
        outer.rollback()
        connection.close()
        engine.dispose()
        database_of(app).dispose()


def _cases(expect: Expect):
    for role in ROLES:
        yield role, "A", expect.own[role]
    if expect.foreign is not None:
        for role in (*STAFF, *TENANT_ROLES):
            if role in STAFF:
                yield role, "B", expect.own[role] if expect.staff_foreign is None else expect.staff_foreign
            else:
                yield role, "B", expect.foreign


def _request(client, world: World, method: str, path: str, expect: Expect, role: str, tenant: Tenant):
    params = dict(tenant.ids)
    if expect.params is not None:
        params.update(expect.params(world, tenant, role))
    url = path.format(**{k: str(v) for k, v in params.items()})
    headers = {}
    token = world.token(role)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = expect.body(world, tenant, role) if expect.body is not None else None
    return client.open(url, method=method, headers=headers, json=body)


def test_every_route_has_an_expectation(matrix) -> None:
    app, _, _ = matrix
    table = {(route.method, route.path) for route in routes(app)}
    missing = sorted(table - set(EXPECTATIONS))
    stale = sorted(set(EXPECTATIONS) - table)
    assert not missing, f"routes without an access expectation (add them to EXPECTATIONS): {missing}"
    assert not stale, f"expectations for routes that do not exist: {stale}"
    for key, expect in EXPECTATIONS.items():
        assert set(expect.own) == set(ROLES), f"{key}: expectation must name every role"


@pytest.mark.parametrize(("method", "path"), sorted(EXPECTATIONS), ids=lambda value: str(value))
def test_access(matrix, method: str, path: str) -> None:
    app, connection, world = matrix
    expect = EXPECTATIONS[(method, path)]
    client = app.test_client()
    mismatches = []
    for role, tenant_name, expected in _cases(expect):
        savepoint = connection.begin_nested()
        try:
            response = _request(client, world, method, path, expect, role, world.tenants[tenant_name])
        finally:
            savepoint.rollback()
        if response.status_code != expected:
            detail = response.get_json(silent=True) or response.status
            mismatches.append(f"{role:>9} on {tenant_name}'s object: expected {expected}, got {detail}")
        elif response.status_code >= 400:
            error = (response.get_json(silent=True) or {}).get("error")
            assert error and set(error) == {"code", "message", "fields"}, f"{role}: not the error envelope"
    assert not mismatches, f"{method} {path}\n" + "\n".join(mismatches)

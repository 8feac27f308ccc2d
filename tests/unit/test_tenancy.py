"""Tenant scoping: a customer user reaches nothing of another customer through any helper or any ORM query."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, aliased

import portal.models as m
from portal import tenancy
from portal.db import Base
from portal.errors import NotFound
from tests import factories as f

TENANT_MODELS = sorted(tenancy.TENANT_MODELS, key=lambda model: model.__name__)


def _build_tenant(db: Session, label: str) -> dict[str, Any]:
    """One row of every tenant-owned model for a new customer, plus its customer user."""
    customer = f.make_customer(db, name=f"Tenant {label}")
    user = f.make_user(db, m.UserRole.customer, customer)
    workspace = f.make_workspace(db, customer)
    member = f.make_member(db, workspace, user, role="owner")
    service = f.make_service(db, workspace, values={"auth.postgresPassword": f"pw-{label}"})
    cluster = f.make_cluster(db, customer)
    node = f.make_node(db, cluster)
    ticket = f.make_ticket(db, cluster=cluster, created_by=user)
    rows = {
        m.Customer: customer,
        m.User: user,
        m.ApiToken: f.make_api_token(db, user)[0],
        m.Workspace: workspace,
        m.WorkspaceMember: member,
        m.CloudService: service,
        m.ServiceRevision: f.make_revision(db, service),
        m.Backup: f.make_backup(db, service),
        m.ServiceActivityLog: f.make_activity(db, service),
        m.Cluster: cluster,
        m.Node: node,
        m.Ticket: ticket,
        m.TicketComment: f.make_comment(db, ticket, user),
        m.SupportSession: f.make_session(db, ticket, node),
        m.Operation: f.make_operation(db, service, requested_by=user),
    }
    return {"customer": customer, "user": user, "rows": rows}


@pytest.fixture()
def world(db: Session) -> dict[str, Any]:
    """Two tenants, A and B, each with one of everything, and the staff who see both."""
    a = _build_tenant(db, "A")
    b = _build_tenant(db, "B")
    admin = f.make_admin(db)
    engineer = f.make_engineer(db)
    platform_op = f.make_operation(db, False, kind="platform.up")
    db.commit()
    ids = {label: {model: row.id for model, row in t["rows"].items()} for label, t in (("A", a), ("B", b))}
    return {"A": a, "B": b, "ids": ids, "admin": admin, "engineer": engineer, "platform_op": platform_op}


def test_every_model_has_exactly_one_tenancy_rule() -> None:
    mapped = {mapper.class_ for mapper in Base.registry.mappers}
    assert tenancy.TENANT_MODELS | tenancy.GLOBAL_MODELS == mapped
    assert not tenancy.TENANT_MODELS & tenancy.GLOBAL_MODELS


def test_a_model_without_a_rule_cannot_be_scoped() -> None:
    class Unregistered:
        __name__ = "Unregistered"

    user = m.User(role=m.UserRole.admin, email="x@example.test", name="x")
    with pytest.raises(TypeError):
        tenancy.scoped(Unregistered, user)  # type: ignore[arg-type]


def test_world_has_one_row_per_model_per_tenant(db: Session, world: dict[str, Any]) -> None:
    for label in "AB":
        for model, row in world[label]["rows"].items():
            assert tenancy.customer_id_of(db, row) == world[label]["customer"].id, model


@pytest.mark.parametrize("model", TENANT_MODELS, ids=lambda model: model.__name__)
def test_customer_user_sees_only_own_tenant_through_the_helpers(db: Session, world: dict[str, Any], model) -> None:
    actor = world["A"]["user"]
    own, foreign = world["ids"]["A"][model], world["ids"]["B"][model]

    visible = tenancy.list_scoped(db, model, actor)
    assert own in {row.id for row in visible}
    assert all(tenancy.customer_id_of(db, row) == world["A"]["customer"].id for row in visible)
    assert db.scalar(select(func.count()).select_from(tenancy.scoped(model, actor).subquery())) == len(visible)

    assert tenancy.get_scoped(db, model, own, actor).id == own
    assert tenancy.get_scoped(db, model, str(own), actor).id == own
    with pytest.raises(NotFound):
        tenancy.get_scoped(db, model, foreign, actor)
    with pytest.raises(NotFound):
        tenancy.get_scoped(db, model, str(foreign), actor, for_update=True)

    foreign_row = db.get(model, foreign)  # loaded by unscoped code: still refused
    assert not tenancy.can_see(db, actor, foreign_row)
    with pytest.raises(NotFound):
        tenancy.ensure_visible(db, actor, foreign_row)
    with pytest.raises(NotFound):
        tenancy.get_scoped(db, model, foreign, actor)  # identity map holds it; the query still refuses
    assert tenancy.can_see(db, actor, db.get(model, own))


@pytest.mark.parametrize("model", TENANT_MODELS, ids=lambda model: model.__name__)
def test_staff_see_every_tenant(db: Session, world: dict[str, Any], model) -> None:
    for staff in (world["admin"], world["engineer"], tenancy.SYSTEM):
        ids = {row.id for row in tenancy.list_scoped(db, model, staff)}
        assert {world["ids"]["A"][model], world["ids"]["B"][model]} <= ids
        assert tenancy.get_scoped(db, model, world["ids"]["B"][model], staff).id == world["ids"]["B"][model]


@pytest.mark.parametrize("model", TENANT_MODELS, ids=lambda model: model.__name__)
def test_bound_session_filters_every_orm_query(db: Session, world: dict[str, Any], model) -> None:
    """After bind_actor, even hand-written queries and session.get() cannot reach the other tenant."""
    own, foreign = world["ids"]["A"][model], world["ids"]["B"][model]
    db.expunge_all()
    tenancy.bind_actor(db, world["A"]["user"])
    try:
        assert db.get(model, foreign) is None
        assert db.get(model, own).id == own
        ids = set(db.scalars(select(model.id)))
        assert own in ids and foreign not in ids
        rows = db.scalars(select(model)).all()
        assert foreign not in {row.id for row in rows}
        alias = aliased(model)
        assert foreign not in set(db.scalars(select(alias.id)))
        assert db.execute(delete(model).where(model.id == foreign)).rowcount == 0
    finally:
        tenancy.bind_actor(db, None)
    db.rollback()
    assert db.get(model, foreign) is not None


def test_bound_session_still_follows_relationships_inside_the_tenant(db: Session, world: dict[str, Any]) -> None:
    db.expunge_all()
    tenancy.bind_actor(db, world["A"]["user"])
    try:
        assert tenancy.bound_actor(db) is world["A"]["user"]
        ticket = db.get(m.Ticket, world["ids"]["A"][m.Ticket])
        session = ticket.sessions[0]
        assert session.engineer.is_staff  # staff user reached through a visible row's link
        assert session.node.cluster.customer_id == world["A"]["customer"].id
    finally:
        tenancy.bind_actor(db, None)


def test_staff_bound_session_is_not_filtered(db: Session, world: dict[str, Any]) -> None:
    tenancy.bind_actor(db, world["engineer"])
    try:
        assert db.scalar(select(func.count()).select_from(m.Customer)) == 2
    finally:
        tenancy.bind_actor(db, None)


def test_platform_operations_are_staff_only(db: Session, world: dict[str, Any]) -> None:
    op_id = world["platform_op"].id
    assert world["platform_op"].customer_id is None
    assert tenancy.get_scoped(db, m.Operation, op_id, world["admin"]).kind == "platform.up"
    with pytest.raises(NotFound):
        tenancy.get_scoped(db, m.Operation, op_id, world["A"]["user"])


def test_templates_are_global(db: Session, world: dict[str, Any]) -> None:
    templates = tenancy.list_scoped(db, m.AppTemplate, world["A"]["user"])
    assert len(templates) == 2
    assert tenancy.can_see(db, world["B"]["user"], templates[0])


@dataclass(frozen=True)
class _OddActor:
    role: str
    customer_id: uuid.UUID | None
    id: uuid.UUID | None = None


def test_unknown_roles_and_customerless_actors_see_nothing_foreign(db: Session, world: dict[str, Any]) -> None:
    nobody = _OddActor(role="customer", customer_id=None)
    assert tenancy.list_scoped(db, m.Ticket, nobody) == []
    stranger = _OddActor(role="auditor", customer_id=world["A"]["customer"].id)
    assert {t.id for t in tenancy.list_scoped(db, m.Ticket, stranger)} == {world["ids"]["A"][m.Ticket]}


def test_malformed_ids_are_not_found(db: Session, world: dict[str, Any]) -> None:
    for bad in ("not-a-uuid", "", "1 OR 1=1"):
        with pytest.raises(NotFound):
            tenancy.get_scoped(db, m.Ticket, bad, world["admin"])
    with pytest.raises(NotFound):
        tenancy.get_scoped(db, m.Ticket, uuid.uuid4(), world["admin"])


def test_workspace_role(db: Session, world: dict[str, Any]) -> None:
    workspace = world["A"]["rows"][m.Workspace]
    assert tenancy.workspace_role(db, world["A"]["user"], workspace) is m.WorkspaceRole.owner
    assert tenancy.workspace_role(db, world["A"]["user"], workspace.id) is m.WorkspaceRole.owner
    assert tenancy.workspace_role(db, world["B"]["user"], workspace) is None
    assert tenancy.workspace_role(db, world["admin"], workspace) is None


def test_new_operation_copies_the_targets_customer(db: Session, world: dict[str, Any]) -> None:
    node = world["B"]["rows"][m.Node]
    operation = tenancy.new_operation(db, "node.bootstrap", node, world["admin"], params={"x": 1})
    assert (operation.target_type, operation.target_id) == (m.TargetType.node, node.id)
    assert operation.customer_id == world["B"]["customer"].id
    assert operation.requested_by_id == world["admin"].id
    with pytest.raises(TypeError):
        tenancy.new_operation(db, "x", world["A"]["rows"][m.TicketComment])

"""Tenant scoping, in one place: which rows an actor may reach, and each model's path to its customer.

Staff (admin, engineer) and the `SYSTEM` actor see every tenant; a customer user sees only rows
whose path leads to their `customer_id`. Three layers, all driven by the same `_RULES` table:

- `scoped()` / `get_scoped()` / `list_scoped()`: the helpers every lookup goes through
  (Redash's `get_by_id_and_org`); a foreign id is `NotFound`, exactly like a missing one.
- `bind_actor(session, actor)`: after it, *every* ORM SELECT/UPDATE/DELETE in that session —
  `session.get()`, a hand-written `select()`, a bulk `update()` — gets the same criteria added,
  so a forgotten filter cannot leak (relationship loads from an already visible row are not
  filtered: they follow links the flush checks below keep inside the tenant).
- a `before_flush` check that links never cross tenants (a ticket's cluster, a session's node,
  a workspace member) and that assignees and session engineers are staff.

A model with no rule here and not listed in `GLOBAL_MODELS` cannot be scoped at all (and the
tenancy tests fail), so a new table cannot silently become visible to everyone.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy import ColumnElement, Select, event, false, select
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria

from portal.errors import NotFound, ValidationError
from portal.models.cloud import (
    AppTemplate,
    Backup,
    CloudService,
    ServiceActivityLog,
    ServiceRevision,
    Workspace,
    WorkspaceMember,
    WorkspaceRole,
)
from portal.models.identity import ApiToken, Customer, User, UserRole
from portal.models.operations import Operation, TargetType
from portal.models.support import Cluster, Node, SupportSession, Ticket, TicketComment, TicketCounter

T = TypeVar("T")

_ACTOR_KEY = "kaiden.actor"
_INTERNAL = "kaiden_tenancy_internal"  # execution option: this module's own path-following lookups
_ALL_TENANTS_ROLES = frozenset({"admin", "engineer", "system"})


class Actor(Protocol):
    """Anyone acting: a `User`, or `SYSTEM` for jobs and the CLI."""

    @property
    def id(self) -> uuid.UUID | None: ...

    @property
    def role(self) -> str: ...

    @property
    def customer_id(self) -> uuid.UUID | None: ...


@dataclass(frozen=True)
class SystemActor:
    """The platform itself (workers, CLI, bootstrap): sees every tenant."""

    id: uuid.UUID | None = None
    role: str = "system"
    customer_id: uuid.UUID | None = None


SYSTEM = SystemActor()


def sees_all_tenants(actor: Actor) -> bool:
    """Staff and the system see every customer; anything else (including unknown roles) sees one."""
    return str(actor.role) in _ALL_TENANTS_ROLES


# ---------------------------------------------------------------- the tenant path of every model


def _workspace_ids(cid: uuid.UUID) -> Select:
    return select(Workspace.id).where(Workspace.customer_id == cid)


def _service_ids(cid: uuid.UUID) -> Select:
    return select(CloudService.id).where(CloudService.workspace_id.in_(_workspace_ids(cid)))


def _cluster_ids(cid: uuid.UUID) -> Select:
    return select(Cluster.id).where(Cluster.customer_id == cid)


def _ticket_ids(cid: uuid.UUID) -> Select:
    return select(Ticket.id).where(Ticket.customer_id == cid)


def _user_ids(cid: uuid.UUID) -> Select:
    return select(User.id).where(User.customer_id == cid)


# model → (criteria limiting it to customer `cid`). Paths: workspace → customer; member/service →
# workspace; revision/backup/activity → service; cluster → customer; node → cluster; ticket →
# customer; comment/session → ticket; operation → its own customer_id (copied from its target).
_RULES: dict[type, Callable[[uuid.UUID], ColumnElement[bool]]] = {
    Customer: lambda cid: Customer.id == cid,
    User: lambda cid: User.customer_id == cid,
    ApiToken: lambda cid: ApiToken.user_id.in_(_user_ids(cid)),
    Workspace: lambda cid: Workspace.customer_id == cid,
    WorkspaceMember: lambda cid: WorkspaceMember.workspace_id.in_(_workspace_ids(cid)),
    CloudService: lambda cid: CloudService.workspace_id.in_(_workspace_ids(cid)),
    ServiceRevision: lambda cid: ServiceRevision.service_id.in_(_service_ids(cid)),
    Backup: lambda cid: Backup.service_id.in_(_service_ids(cid)),
    ServiceActivityLog: lambda cid: ServiceActivityLog.service_id.in_(_service_ids(cid)),
    Cluster: lambda cid: Cluster.customer_id == cid,
    Node: lambda cid: Node.cluster_id.in_(_cluster_ids(cid)),
    Ticket: lambda cid: Ticket.customer_id == cid,
    TicketComment: lambda cid: TicketComment.ticket_id.in_(_ticket_ids(cid)),
    SupportSession: lambda cid: SupportSession.ticket_id.in_(_ticket_ids(cid)),
    Operation: lambda cid: Operation.customer_id == cid,
}

# Not owned by any tenant: readable by everyone (writes are gated by role elsewhere).
GLOBAL_MODELS: frozenset[type] = frozenset({AppTemplate, TicketCounter})

TENANT_MODELS: frozenset[type] = frozenset(_RULES)


def tenant_criteria(model: type, actor: Actor) -> ColumnElement[bool] | None:
    """The WHERE criteria limiting `model` to what `actor` may see; None means no limit."""
    if model in GLOBAL_MODELS:
        return None
    rule = _RULES.get(model)
    if rule is None:
        raise TypeError(f"{model.__name__} has no tenancy rule: add it to portal.tenancy._RULES or GLOBAL_MODELS")
    if sees_all_tenants(actor):
        return None
    if actor.customer_id is None:
        return false()
    return rule(actor.customer_id)


def scoped(model: type[T], actor: Actor) -> Select[tuple[T]]:
    """`select(model)` limited to `actor`'s tenant; add filters, ordering and paging to it."""
    criteria = tenant_criteria(model, actor)  # first: an unregistered model raises before any query
    stmt = select(model)
    return stmt if criteria is None else stmt.where(criteria)


def list_scoped(session: Session, model: type[T], actor: Actor, *where: Any, order_by: Any = None) -> list[T]:
    """All rows of `model` visible to `actor` that match `where`."""
    stmt = scoped(model, actor).where(*where)
    if order_by is not None:
        stmt = stmt.order_by(order_by)
    return list(session.scalars(stmt))


def _as_uuid(value: uuid.UUID | str) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def get_scoped(
    session: Session, model: type[T], ident: uuid.UUID | str, actor: Actor, *, for_update: bool = False
) -> T:
    """The `model` row with id `ident` if `actor` may see it; `NotFound` otherwise (same for foreign and absent).

    Always queries the database (never trusts the identity map), so a row loaded earlier by
    other code in the same session is still checked.
    """
    key = _as_uuid(ident)
    if key is None:
        raise NotFound(f"{model.__name__} not found")
    stmt = scoped(model, actor).where(model.id == key)  # type: ignore[attr-defined]
    if for_update:
        stmt = stmt.with_for_update()
    found = session.scalars(stmt.execution_options(populate_existing=True)).one_or_none()
    if found is None:
        raise NotFound(f"{model.__name__} not found")
    return found


def can_see(session: Session, actor: Actor, obj: object) -> bool:
    """Whether `actor` may see an already loaded object (e.g. one reached through a relationship)."""
    if type(obj) in GLOBAL_MODELS:
        return True
    if type(obj) not in _RULES:
        raise TypeError(f"{type(obj).__name__} has no tenancy rule")
    if sees_all_tenants(actor):
        return True
    owner = customer_id_of(session, obj)
    return owner is not None and owner == actor.customer_id


def ensure_visible(session: Session, actor: Actor, obj: T) -> T:
    """`obj` itself, or `NotFound` if `actor` may not see it."""
    if not can_see(session, actor, obj):
        raise NotFound(f"{type(obj).__name__} not found")
    return obj


# ---------------------------------------------------------------- following the path in Python


def _parent(session: Session, obj: object, relation: str, fk: str, cls: type[T]) -> T | None:
    parent = getattr(obj, relation)
    if parent is None and getattr(obj, fk) is not None:
        with session.no_autoflush:
            parent = session.get(cls, getattr(obj, fk), execution_options={_INTERNAL: True})
    return parent


def owner_of(session: Session, obj: object) -> Customer | None:
    """The `Customer` owning `obj` by following its path (works on pending objects before a flush)."""
    match obj:
        case Customer():
            return obj
        case User() | Workspace() | Cluster() | Ticket() | Operation():
            return _parent(session, obj, "customer", "customer_id", Customer)
        case ApiToken():
            user = _parent(session, obj, "user", "user_id", User)
            return None if user is None else owner_of(session, user)
        case WorkspaceMember() | CloudService():
            workspace = _parent(session, obj, "workspace", "workspace_id", Workspace)
            return None if workspace is None else owner_of(session, workspace)
        case ServiceRevision() | Backup() | ServiceActivityLog():
            service = _parent(session, obj, "service", "service_id", CloudService)
            return None if service is None else owner_of(session, service)
        case Node():
            cluster = _parent(session, obj, "cluster", "cluster_id", Cluster)
            return None if cluster is None else owner_of(session, cluster)
        case TicketComment() | SupportSession():
            ticket = _parent(session, obj, "ticket", "ticket_id", Ticket)
            return None if ticket is None else owner_of(session, ticket)
        case _ if type(obj) in GLOBAL_MODELS:
            return None
    raise TypeError(f"{type(obj).__name__} has no tenancy rule")


def customer_id_of(session: Session, obj: object) -> uuid.UUID | None:
    """The id of the customer owning `obj` (None for global rows, staff users and platform operations)."""
    owner = owner_of(session, obj)
    return None if owner is None else owner.id


_TARGET_TYPES: dict[type, TargetType] = {
    CloudService: TargetType.service,
    SupportSession: TargetType.session,
    Cluster: TargetType.cluster,
    Node: TargetType.node,
    Workspace: TargetType.workspace,
    Backup: TargetType.backup,
    Ticket: TargetType.ticket,
}


def new_operation(
    session: Session, kind: str, target: object | None, requested_by: Actor | None = None, **fields: Any
) -> Operation:
    """A queued `Operation` on `target` (None: a platform operation), its customer copied from the target.

    The row is added to the session and flushed so it has an id to enqueue.
    """
    if target is None:
        operation = Operation(kind=kind, target_type=TargetType.platform, target_id=None, customer_id=None, **fields)
    else:
        target_type = _TARGET_TYPES.get(type(target))
        if target_type is None:
            raise TypeError(f"operations cannot target {type(target).__name__}")
        with session.no_autoflush:
            customer_id = customer_id_of(session, target)
        operation = Operation(
            kind=kind,
            target_type=target_type,
            target_id=target.id,  # type: ignore[attr-defined]
            customer_id=customer_id,
            **fields,
        )
    if requested_by is not None and isinstance(requested_by, User):
        operation.requested_by = requested_by
    session.add(operation)
    session.flush()
    return operation


# ---------------------------------------------------------------- workspace roles


def workspace_role(session: Session, user: User, workspace: Workspace | uuid.UUID) -> WorkspaceRole | None:
    """`user`'s role in `workspace`, or None if not a member (staff are members only if added)."""
    workspace_id = workspace.id if isinstance(workspace, Workspace) else workspace
    stmt = select(WorkspaceMember.role).where(
        WorkspaceMember.workspace_id == workspace_id, WorkspaceMember.user_id == user.id
    )
    role = session.execute(stmt).scalar_one_or_none()
    return None if role is None else WorkspaceRole(role)


# ---------------------------------------------------------------- the session-wide guard


def bind_actor(session: Session, actor: Actor | None) -> None:
    """Scope every ORM statement of `session` to `actor` (None removes the guard)."""
    if actor is None:
        session.info.pop(_ACTOR_KEY, None)
    else:
        session.info[_ACTOR_KEY] = actor


def bound_actor(session: Session) -> Actor | None:
    return session.info.get(_ACTOR_KEY)


@event.listens_for(Session, "do_orm_execute")
def _tenant_guard_handler(state: ORMExecuteState) -> None:
    actor = state.session.info.get(_ACTOR_KEY)
    if actor is None or sees_all_tenants(actor):
        return
    if state.is_column_load or state.is_relationship_load or state.execution_options.get(_INTERNAL):
        return
    if not (state.is_select or state.is_update or state.is_delete):
        return
    options = []
    for model in _RULES:
        criteria = tenant_criteria(model, actor)
        if criteria is not None:
            # Not propagated to relationship loads: links from a visible row stay inside the tenant
            # (checked at flush), and a ticket must still show its (staff) assignee.
            options.append(with_loader_criteria(model, criteria, include_aliases=True, propagate_to_loaders=False))
    state.statement = state.statement.options(*options)


# ---------------------------------------------------------------- links never cross tenants


def _check_links(session: Session, obj: object) -> None:
    if isinstance(obj, Ticket):
        customer = owner_of(session, obj)
        cluster = _parent(session, obj, "cluster", "cluster_id", Cluster)
        if cluster is not None and owner_of(session, cluster) is not customer:
            raise ValidationError("cluster belongs to another customer", fields={"cluster_id": "not found"})
        node = _parent(session, obj, "node", "node_id", Node)
        if node is not None:
            if cluster is not None and _parent(session, node, "cluster", "cluster_id", Cluster) is not cluster:
                raise ValidationError("node is not in the ticket's cluster", fields={"node_id": "not in cluster"})
            if owner_of(session, node) is not customer:
                raise ValidationError("node belongs to another customer", fields={"node_id": "not found"})
        assignee = _parent(session, obj, "assigned_to", "assigned_to_id", User)
        if assignee is not None and not assignee.is_staff:
            raise ValidationError("tickets are assigned to staff only", fields={"assigned_to": "must be an engineer"})
    elif isinstance(obj, SupportSession):
        ticket = _parent(session, obj, "ticket", "ticket_id", Ticket)
        node = _parent(session, obj, "node", "node_id", Node)
        if ticket is not None and node is not None and owner_of(session, node) is not owner_of(session, ticket):
            raise ValidationError("node belongs to another customer", fields={"node_id": "not found"})
        engineer = _parent(session, obj, "engineer", "engineer_id", User)
        if engineer is not None and not engineer.is_staff:
            raise ValidationError("sessions are run by staff only", fields={"engineer_id": "must be an engineer"})
    elif isinstance(obj, WorkspaceMember):
        user = _parent(session, obj, "user", "user_id", User)
        if (
            user is not None
            and user.role == UserRole.customer
            and owner_of(session, user) is not owner_of(session, obj)
        ):
            raise ValidationError("user belongs to another customer", fields={"user_id": "not found"})


@event.listens_for(Session, "before_flush")
def _tenant_links_handler(session: Session, _context: object, _instances: object) -> None:
    for obj in (*session.new, *session.dirty):
        _check_links(session, obj)

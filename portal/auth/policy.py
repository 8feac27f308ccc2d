"""The one authorization policy: what each platform role and workspace role may do (see docs/api.md).

Not visible → `NotFound` (we never reveal another tenant's objects); visible but not allowed →
`PermissionDenied`. Tenant-scoped lookups of other objects go through `portal.tenancy`.
"""

from __future__ import annotations

import uuid
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.errors import NotFound, PermissionDenied
from portal.models import (
    WORKSPACE_ROLE_RANK,
    Customer,
    SupportSession,
    Ticket,
    TicketStatus,
    User,
    UserRole,
    Workspace,
    WorkspaceMember,
    WorkspaceRole,
)
from portal.tenancy import get_scoped, workspace_role

# Which fields of a ticket each role may change (the seed-000 split between customers and support).
TICKET_EDITABLE_FIELDS: dict[UserRole, frozenset[str]] = {
    UserRole.admin: frozenset({"title", "description", "priority", "status", "assigned_to_id"}),
    UserRole.engineer: frozenset({"priority", "status", "assigned_to_id"}),
    UserRole.customer: frozenset({"title", "description", "priority", "status"}),
}
# Customers may close a resolved ticket and reopen one; moving work along is support's job.
TICKET_CUSTOMER_STATUS_TARGETS = frozenset({TicketStatus.closed, TicketStatus.open})


class WorkspaceAction(StrEnum):
    READ = "read"  # see the workspace, its members, services, revisions, metrics, logs, backups
    DEPLOY = "deploy"  # create / upgrade / roll back services; create and restore backups
    DELETE = "delete"  # delete services and backups
    MANAGE = "manage"  # rename or delete the workspace; add, change and remove members


# The least workspace role that allows each action (ranks from portal.models.WORKSPACE_ROLE_RANK).
WORKSPACE_MIN_ROLE: dict[WorkspaceAction, WorkspaceRole] = {
    WorkspaceAction.READ: WorkspaceRole.viewer,
    WorkspaceAction.DEPLOY: WorkspaceRole.member,
    WorkspaceAction.DELETE: WorkspaceRole.admin,
    WorkspaceAction.MANAGE: WorkspaceRole.admin,
}

# What staff may do in any workspace without a membership.
STAFF_WORKSPACE_ACTIONS: dict[UserRole, frozenset[WorkspaceAction]] = {
    UserRole.admin: frozenset(WorkspaceAction),
    UserRole.engineer: frozenset({WorkspaceAction.READ}),
}


def is_staff(actor: User) -> bool:
    return actor.role in (UserRole.admin, UserRole.engineer)


def is_admin(actor: User) -> bool:
    return actor.role == UserRole.admin


def require_staff(actor: User) -> None:
    if not is_staff(actor):
        raise PermissionDenied("Only Kaiden staff may do this.")


def require_admin(actor: User) -> None:
    if not is_admin(actor):
        raise PermissionDenied("Only administrators may do this.")


def customer_scope(actor: User) -> uuid.UUID | None:
    """`None` when the actor sees every tenant (staff), else the one customer they belong to."""
    return None if is_staff(actor) else actor.customer_id


def can_see_customer(actor: User, customer_id: uuid.UUID | None) -> bool:
    scope = customer_scope(actor)
    return scope is None or (customer_id is not None and scope == customer_id)


def visible_customer(session: Session, actor: User, customer_id: uuid.UUID) -> Customer:
    """The customer, or 404 when it does not exist or is another tenant."""
    return get_scoped(session, Customer, customer_id, actor)


def visible_user(session: Session, actor: User, user_id: uuid.UUID) -> User:
    """A user the actor may see: staff see all; customer users see their own customer's users."""
    return get_scoped(session, User, user_id, actor)


def membership_role(session: Session, actor: User, workspace_id: uuid.UUID) -> WorkspaceRole | None:
    """The actor's role in the workspace, or None when not a member."""
    return workspace_role(session, actor, workspace_id)


def can_workspace(actor: User, role: WorkspaceRole | None, action: WorkspaceAction) -> bool:
    """Whether `actor` holding workspace `role` (None: not a member) may do `action`."""
    if is_staff(actor):
        return action in STAFF_WORKSPACE_ACTIONS[UserRole(actor.role)]
    if role is None:
        return False
    return WORKSPACE_ROLE_RANK[WorkspaceRole(role)] >= WORKSPACE_ROLE_RANK[WORKSPACE_MIN_ROLE[action]]


def workspace_for(session: Session, actor: User, workspace_id: uuid.UUID, action: WorkspaceAction) -> Workspace:
    """The workspace when `actor` may do `action` there; 404 when not visible, 403 when not allowed.

    Staff see every workspace; a customer user sees a workspace of their own customer only through
    a membership.
    """
    workspace = get_scoped(session, Workspace, workspace_id, actor)
    role: WorkspaceRole | None = None
    if not is_staff(actor):
        role = membership_role(session, actor, workspace.id)
        if role is None:
            raise NotFound("Workspace not found.")
    if not can_workspace(actor, role, action):
        raise PermissionDenied(f"Your role in this workspace does not allow this ({action.value}).")
    return workspace


def visible_workspaces(actor: User):
    """A `Select` of the workspaces the actor can see (staff: all; customer users: their memberships)."""
    stmt = select(Workspace)
    if not is_staff(actor):
        stmt = stmt.where(
            Workspace.customer_id == actor.customer_id,
            Workspace.id.in_(select(WorkspaceMember.workspace_id).where(WorkspaceMember.user_id == actor.id)),
        )
    return stmt


# ---------------------------------------------------------------- support sessions (docs/sessions.md)
# Visibility (404) comes first, from the tenant-scoped lookup; these rules decide 403 on a visible session.


def can_start_session(actor: User, ticket: Ticket) -> bool:
    """Admins, and the engineer the ticket is assigned to."""
    return is_admin(actor) or (actor.role == UserRole.engineer and ticket.assigned_to_id == actor.id)


def require_session_starter(actor: User, ticket: Ticket) -> None:
    if can_start_session(actor, ticket):
        return
    if is_staff(actor):
        raise PermissionDenied(
            "Only the engineer assigned to the ticket (or an admin) may start a session.", code="not_assigned"
        )
    raise PermissionDenied("Support sessions are started by Kaiden staff.")


def may_close_tickets(actor: User) -> bool:
    """Whether the role may move a ticket to `closed` at all (customers: a resolved one; staff: any)."""
    role = UserRole(str(actor.role))
    if "status" not in TICKET_EDITABLE_FIELDS[role]:
        return False
    return role != UserRole.customer or TicketStatus.closed in TICKET_CUSTOMER_STATUS_TARGETS


def can_end_session(actor: User, session: SupportSession) -> bool:
    """The session's engineer, an admin, or anyone who may close the ticket (staff, the ticket's customer's users)."""
    if is_admin(actor) or (actor.id is not None and actor.id == session.engineer_id):
        return True
    if not may_close_tickets(actor):
        return False
    return is_staff(actor) or actor.customer_id == session.ticket.customer_id


def require_session_ender(actor: User, session: SupportSession) -> None:
    if not can_end_session(actor, session):
        raise PermissionDenied("You may not end this support session.")


def can_attach(actor: User, session: SupportSession) -> bool:
    """Only the session's own engineer opens its terminal (admins too are refused)."""
    return session.engineer_id is not None and actor.id == session.engineer_id


def require_attach(actor: User, session: SupportSession) -> None:
    if not can_attach(actor, session):
        raise PermissionDenied("Only the session's engineer may open its terminal.", code="not_session_engineer")


def may_read_recording(actor: User, session: SupportSession) -> bool:
    """The ticket's parties: admins, the session's engineer, the ticket's assignee, the ticket's customer's users."""
    if is_admin(actor):
        return True
    if actor.id is not None and actor.id in (session.engineer_id, session.ticket.assigned_to_id):
        return True
    return actor.role == UserRole.customer and actor.customer_id == session.ticket.customer_id


def require_recording_reader(actor: User, session: SupportSession) -> None:
    if not may_read_recording(actor, session):
        raise PermissionDenied("Only the ticket's parties may watch this session's recording.")

"""Support tickets (seed 000): numbering, filters, edits with optimistic locking, the status flow, comments.

Status flow: open → in_progress → resolved → closed, and reopen (resolved or closed → open). Every
status change writes a `status_change` comment; assignment and priority changes write `system`
comments. Users only ever write plain `comment`s.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session, object_session

from portal.auth import policy
from portal.errors import NotFound, PermissionDenied, ValidationError
from portal.models import (
    AuthorType,
    Cluster,
    CommentType,
    Customer,
    Node,
    Ticket,
    TicketComment,
    TicketPriority,
    TicketStatus,
    User,
    UserRole,
    allocate_ticket_number,
    utcnow,
)
from portal.services import check_version
from portal.tenancy import Actor, get_scoped, scoped, sees_all_tenants

S = TicketStatus

# The state machine: from → the statuses it may move to. Anything else is a 422 on `status`.
TRANSITIONS: dict[TicketStatus, frozenset[TicketStatus]] = {
    S.open: frozenset({S.in_progress}),
    S.in_progress: frozenset({S.resolved}),
    S.resolved: frozenset({S.closed, S.open}),
    S.closed: frozenset({S.open}),
}

_FIELD_NAMES = {"assigned_to_id": "assigned_to"}  # the API's name for a field, in error messages


def _author_type(actor: Actor) -> AuthorType:
    role = str(actor.role)
    if role == UserRole.customer:
        return AuthorType.customer
    if role in (UserRole.admin, UserRole.engineer):
        return AuthorType.engineer
    return AuthorType.system


def _author(actor: Actor) -> User | None:
    return actor if isinstance(actor, User) else None


# ---------------------------------------------------------------- create


def create_ticket(
    session: Session,
    actor: User,
    *,
    title: str,
    description: str | None = None,
    priority: TicketPriority = TicketPriority.normal,
    customer_id: uuid.UUID | None = None,
    cluster_id: uuid.UUID | None = None,
    node_id: uuid.UUID | None = None,
    assigned_to_id: uuid.UUID | None = None,
) -> Ticket:
    """Open a ticket numbered `TKT-YYYYMMDD-NNN`.

    A customer user files for their own customer (a foreign cluster or node is a 404). Staff name
    the customer, or a cluster/node it is taken from; staff may also assign it at once.
    """
    node = get_scoped(session, Node, node_id, actor) if node_id is not None else None
    if node is not None and cluster_id is None:
        cluster_id = node.cluster_id
    cluster = get_scoped(session, Cluster, cluster_id, actor) if cluster_id is not None else None
    if node is not None and cluster is not None and node.cluster_id != cluster.id:
        raise ValidationError("Invalid ticket.", fields={"node_id": "is not a node of the cluster"})

    if actor.role == UserRole.customer:
        if customer_id is not None and customer_id != actor.customer_id:
            raise ValidationError("Invalid ticket.", fields={"customer_id": "must be your own customer"})
        if assigned_to_id is not None:
            raise PermissionDenied("Only Kaiden staff may assign tickets.")
        customer_id = actor.customer_id
    else:
        if customer_id is None and cluster is not None:
            customer_id = cluster.customer_id
        if customer_id is None:
            raise ValidationError("Invalid ticket.", fields={"customer_id": "is required (or give a cluster_id)"})
    customer = session.scalars(scoped(Customer, actor).where(Customer.id == customer_id)).one_or_none()
    if customer is None:
        raise ValidationError("Invalid ticket.", fields={"customer_id": "no such customer"})
    if cluster is not None and cluster.customer_id != customer.id:
        raise ValidationError("Invalid ticket.", fields={"cluster_id": "belongs to another customer"})
    assignee = _assignee(session, assigned_to_id) if assigned_to_id is not None else None

    ticket = Ticket(
        ticket_number=allocate_ticket_number(session, utcnow()),
        customer_id=customer.id,
        cluster_id=cluster.id if cluster is not None else None,
        node_id=node.id if node is not None else None,
        title=title,
        description=description,
        priority=TicketPriority(priority),
        status=TicketStatus.open,
        assigned_to_id=assignee.id if assignee is not None else None,
        created_by_id=actor.id,
    )
    session.add(ticket)
    session.flush()
    return ticket


def _assignee(session: Session, user_id: uuid.UUID) -> User:
    """An active staff user (tickets are worked by admins and engineers only); 422 otherwise."""
    user = session.get(User, user_id)
    if user is None or not user.is_active or not user.is_staff:
        raise ValidationError("Invalid assignee.", fields={"assigned_to": "must be an active engineer or admin"})
    return user


# ---------------------------------------------------------------- read


AssigneeFilter = uuid.UUID | Literal["me", "none"]


@dataclass(frozen=True)
class TicketFilter:
    """The seed-000 list filters; lists mean "any of"."""

    status: Iterable[TicketStatus] = ()
    priority: Iterable[TicketPriority] = ()
    customer_id: uuid.UUID | None = None
    cluster_id: uuid.UUID | None = None
    assigned_to: AssigneeFilter | None = None
    created_by: uuid.UUID | None = None
    search: str | None = None


def tickets_query(actor: User, filters: TicketFilter | None = None) -> Select[tuple[Ticket]]:
    """The tickets `actor` may see matching `filters`, newest first.

    `search` is a case-insensitive substring of the title, the description or the ticket number;
    `assigned_to` is a user id, `"me"` or `"none"` (unassigned).
    """
    filters = filters or TicketFilter()
    stmt = scoped(Ticket, actor)
    statuses = [TicketStatus(s) for s in filters.status]
    if statuses:
        stmt = stmt.where(Ticket.status.in_(statuses))
    priorities = [TicketPriority(p) for p in filters.priority]
    if priorities:
        stmt = stmt.where(Ticket.priority.in_(priorities))
    if filters.customer_id is not None:
        stmt = stmt.where(Ticket.customer_id == filters.customer_id)
    if filters.cluster_id is not None:
        stmt = stmt.where(Ticket.cluster_id == filters.cluster_id)
    if filters.assigned_to == "none":
        stmt = stmt.where(Ticket.assigned_to_id.is_(None))
    elif filters.assigned_to == "me":
        stmt = stmt.where(Ticket.assigned_to_id == actor.id)
    elif filters.assigned_to is not None:
        stmt = stmt.where(Ticket.assigned_to_id == filters.assigned_to)
    if filters.created_by is not None:
        stmt = stmt.where(Ticket.created_by_id == filters.created_by)
    if filters.search:
        needle = filters.search.strip().lower()
        stmt = stmt.where(
            or_(
                func.lower(Ticket.title).contains(needle, autoescape=True),
                func.lower(Ticket.description).contains(needle, autoescape=True),
                func.lower(Ticket.ticket_number).contains(needle, autoescape=True),
            )
        )
    return stmt.order_by(Ticket.created_at.desc(), Ticket.id.desc())


def list_tickets(session: Session, actor: User, filters: TicketFilter | None = None) -> list[Ticket]:
    return list(session.scalars(tickets_query(actor, filters)))


def get_ticket(session: Session, actor: User, ticket_id: uuid.UUID | str) -> Ticket:
    """A ticket `actor` may see; foreign or missing is `NotFound`."""
    return get_scoped(session, Ticket, ticket_id, actor)


# ---------------------------------------------------------------- change


def update_ticket(
    session: Session, actor: User | Actor, ticket: Ticket, changes: Mapping[str, Any], *, version: int | None = None
) -> Ticket:
    """Apply `changes` (title, description, priority, status, assigned_to_id) as one edit.

    Checks, in order: the role may change every given field (403), the version is current (409),
    the values are valid — assignee is active staff, the status move is allowed (422). Then writes
    the changes and one comment per status, assignment or priority change.
    """
    unknown = set(changes) - policy.TICKET_EDITABLE_FIELDS[UserRole.admin]
    if unknown:
        raise ValidationError("Invalid ticket.", fields={name: "is not allowed" for name in sorted(unknown)})
    changed = {k: v for k, v in changes.items() if getattr(ticket, k) != v}
    role = str(actor.role)
    # The platform itself (SYSTEM, from jobs) may change what an admin may.
    editable = (
        policy.TICKET_EDITABLE_FIELDS[UserRole.admin]
        if role == "system"
        else policy.TICKET_EDITABLE_FIELDS[UserRole(role)]
    )
    forbidden = sorted(set(changed) - editable)
    if forbidden:
        names = ", ".join(_FIELD_NAMES.get(name, name) for name in forbidden)
        raise PermissionDenied(f"Your role may not change: {names}.")
    if (
        "status" in changed
        and role == UserRole.customer
        and changed["status"] not in policy.TICKET_CUSTOMER_STATUS_TARGETS
    ):
        raise PermissionDenied("Customers may close a resolved ticket or reopen one; support moves it along.")
    check_version(ticket, version)

    if "title" in changed and not (changed["title"] or "").strip():
        raise ValidationError("Invalid ticket.", fields={"title": "must not be empty"})
    new_status = TicketStatus(changed["status"]) if "status" in changed else None
    if new_status is not None:
        _check_transition(TicketStatus(ticket.status), new_status)
    assignee: User | None = None
    if changed.get("assigned_to_id") is not None:
        assignee = _assignee(session, changed["assigned_to_id"])

    if "title" in changed:
        ticket.title = changed["title"]
    if "description" in changed:
        ticket.description = changed["description"]
    if "priority" in changed:
        old = TicketPriority(ticket.priority)
        ticket.priority = TicketPriority(changed["priority"])
        _system_note(
            ticket,
            actor,
            f"Priority changed from {old.value} to {ticket.priority.value}.",
            {"field": "priority", "from": old.value, "to": ticket.priority.value},
        )
    if "assigned_to_id" in changed:
        old_id = ticket.assigned_to_id
        ticket.assigned_to_id = assignee.id if assignee is not None else None
        text = f"Assigned to {assignee.name}." if assignee is not None else "Unassigned."
        _system_note(
            ticket,
            actor,
            text,
            {
                "field": "assigned_to",
                "from": str(old_id) if old_id else None,
                "to": str(assignee.id) if assignee else None,
            },
        )
    if new_status is not None:
        _apply_status(ticket, actor, new_status)
    session.flush()  # one UPDATE (one version bump) for the whole edit, plus its comments
    if new_status == S.closed:
        from portal.services.sessions import end_sessions_of_ticket

        end_sessions_of_ticket(session, ticket, actor=actor)  # docs/sessions.md: closing ends its sessions
    session.expire(ticket, ["comments"])
    return ticket


def change_status(
    session: Session, actor: User | Actor, ticket: Ticket, status: TicketStatus, *, version: int | None = None
) -> Ticket:
    """Move a ticket along the status flow (see `TRANSITIONS`); same rules as a PATCH of `status`."""
    return update_ticket(session, actor, ticket, {"status": TicketStatus(status)}, version=version)


def allowed_transitions(status: TicketStatus) -> frozenset[TicketStatus]:
    return TRANSITIONS[TicketStatus(status)]


def _check_transition(current: TicketStatus, target: TicketStatus) -> None:
    allowed = TRANSITIONS[current]
    if target not in allowed:
        options = ", ".join(sorted(s.value for s in allowed))
        raise ValidationError(
            f"A ticket cannot go from {current.value} to {target.value}.",
            fields={"status": f"cannot change from {current.value} to {target.value}; allowed: {options}"},
        )


def _apply_status(ticket: Ticket, actor: Actor, target: TicketStatus) -> None:
    old = TicketStatus(ticket.status)
    now = utcnow()
    ticket.status = target
    if target == S.resolved:
        ticket.resolved_at = now
    elif target == S.closed:
        ticket.closed_at = now
    elif target == S.open:  # reopened: it is neither resolved nor closed any more
        ticket.resolved_at = None
        ticket.closed_at = None
    verb = "Reopened" if target == S.open else "Status changed"
    _add_comment(
        ticket,
        TicketComment(
            content=f"{verb}: {old.value} → {target.value}.",
            comment_type=CommentType.status_change,
            author=_author(actor),
            author_type=_author_type(actor),
            details={"from": old.value, "to": target.value},
        ),
    )


def _system_note(ticket: Ticket, actor: Actor, content: str, details: dict[str, Any]) -> None:
    _add_comment(
        ticket,
        TicketComment(
            content=content,
            comment_type=CommentType.system,
            author=_author(actor),
            author_type=AuthorType.system,
            details=details,
        ),
    )


def _add_comment(ticket: Ticket, comment: TicketComment) -> None:
    # By id, not `ticket.comments.append`: loading the collection would autoflush the ticket
    # mid-edit and bump its version twice for one change.
    comment.ticket_id = ticket.id
    session = object_session(ticket)
    assert session is not None
    session.add(comment)


# ---------------------------------------------------------------- comments


def add_comment(session: Session, actor: User, ticket: Ticket, content: str) -> TicketComment:
    """A customer's or engineer's comment on a ticket they can see (closed tickets too)."""
    text = (content or "").strip()
    if not text:
        raise ValidationError("Invalid comment.", fields={"content": "must not be empty"})
    if not sees_all_tenants(actor) and ticket.customer_id != actor.customer_id:
        raise NotFound("Ticket not found.")
    comment = TicketComment(
        ticket_id=ticket.id,
        content=text,
        comment_type=CommentType.comment,
        author_id=actor.id,
        author_type=_author_type(actor),
    )
    session.add(comment)
    session.flush()
    return comment


def add_system_comment(
    session: Session, ticket: Ticket, content: str, details: Mapping[str, Any] | None = None
) -> TicketComment:
    """A platform-written log line (session started, tunnel failed, ...). Never reachable from user input."""
    comment = TicketComment(
        ticket_id=ticket.id,
        content=content,
        comment_type=CommentType.system,
        author_id=None,
        author_type=AuthorType.system,
        details=dict(details or {}),
    )
    session.add(comment)
    session.flush()
    return comment


def comments_query(session: Session, actor: User, ticket_id: uuid.UUID | str) -> Select[tuple[TicketComment]]:
    """The comments of a ticket `actor` may see (else `NotFound`), oldest first."""
    ticket = get_ticket(session, actor, ticket_id)
    return (
        select(TicketComment)
        .where(TicketComment.ticket_id == ticket.id)
        .order_by(TicketComment.created_at, TicketComment.id)
    )


def list_comments(session: Session, actor: User, ticket_id: uuid.UUID | str) -> list[TicketComment]:
    return list(session.scalars(comments_query(session, actor, ticket_id)))

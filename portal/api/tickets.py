"""REST v1: support tickets (seed 000 §5.1) — list with filters, create, get, patch (incl. status), comments."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator
from sqlalchemy import Select
from sqlalchemy.orm import Session

from portal.api.framework import Page, PageQuery, RequestModel, ResponseModel, Router, expected_version, paginate
from portal.models import AuthorType, CommentType, Ticket, TicketComment, TicketPriority, TicketStatus, User
from portal.services import tickets as service

router = Router("tickets", tags=["Tickets"])


class TicketFilter(PageQuery):
    status: list[TicketStatus] | None = Field(None, description="Any of these statuses (`?status=open,in_progress`).")
    priority: list[TicketPriority] | None = Field(None, description="Any of these priorities.")
    customer_id: uuid.UUID | None = None
    cluster_id: uuid.UUID | None = None
    assigned_to: str | None = Field(None, description="A user id, `me`, or `none` for unassigned tickets.")
    created_by: uuid.UUID | None = None
    search: str | None = Field(
        None, max_length=200, description="Case-insensitive text in the title, description or ticket number."
    )

    @field_validator("assigned_to")
    @classmethod
    def _assignee_filter(cls, value: str | None) -> uuid.UUID | Literal["me", "none"] | None:
        if value is None or value in ("me", "none"):
            return value  # type: ignore[return-value]
        try:
            return uuid.UUID(value)
        except ValueError:
            raise ValueError("must be a user id, me or none") from None


class TicketCreate(RequestModel):
    title: str = Field(min_length=1, max_length=255)
    description: str | None = Field(None, max_length=20_000)
    priority: TicketPriority = TicketPriority.normal
    cluster_id: uuid.UUID | None = None
    node_id: uuid.UUID | None = Field(None, description="The node the problem is on (must be in the cluster).")
    customer_id: uuid.UUID | None = Field(
        None, description="Staff: required unless a cluster_id or node_id names it. Customer users: omit."
    )
    assigned_to: uuid.UUID | None = Field(None, description="Staff only: an engineer or admin to assign.")


class TicketUpdate(RequestModel):
    title: str = Field(None, min_length=1, max_length=255)
    description: str | None = Field(None, max_length=20_000)
    priority: TicketPriority = None  # type: ignore[assignment]
    status: TicketStatus = Field(
        None,  # type: ignore[arg-type]
        description="open → in_progress → resolved → closed; resolved/closed → open reopens. Others are 422.",
    )
    assigned_to: uuid.UUID | None = Field(None, description="An engineer or admin; `null` unassigns.")
    version: int | None = Field(None, ge=1, description="The version you last read (optimistic locking).")


class TicketOut(ResponseModel):
    id: uuid.UUID
    ticket_number: str = Field(description="Human-readable `TKT-YYYYMMDD-NNN`.")
    customer_id: uuid.UUID
    cluster_id: uuid.UUID | None
    node_id: uuid.UUID | None
    title: str
    description: str | None
    priority: TicketPriority
    status: TicketStatus
    allowed_transitions: list[TicketStatus] = Field(description="Statuses this ticket may move to next.")
    assigned_to: uuid.UUID | None = Field(validation_alias="assigned_to_id")
    created_by: uuid.UUID | None = Field(validation_alias="created_by_id")
    created_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    closed_at: datetime | None
    version: int

    @classmethod
    def of(cls, ticket: Ticket) -> TicketOut:
        data: dict[str, Any] = {name: getattr(ticket, name) for name in _TICKET_COLUMNS}
        data["allowed_transitions"] = sorted(service.allowed_transitions(ticket.status))
        return cls.model_validate(data)


_TICKET_COLUMNS = (
    "id",
    "ticket_number",
    "customer_id",
    "cluster_id",
    "node_id",
    "title",
    "description",
    "priority",
    "status",
    "assigned_to_id",
    "created_by_id",
    "created_at",
    "updated_at",
    "resolved_at",
    "closed_at",
    "version",
)


class CommentCreate(RequestModel):
    content: str = Field(min_length=1, max_length=20_000)


class CommentOut(ResponseModel):
    id: uuid.UUID
    ticket_id: uuid.UUID
    content: str
    comment_type: CommentType
    author_id: uuid.UUID | None
    author_type: AuthorType
    details: dict[str, Any] = Field(description="For status changes: `{from, to}`.")
    created_at: datetime


@router.get("/tickets", query=TicketFilter, response=TicketOut, paginated=True, summary="List tickets")
def list_tickets(session: Session, actor: User, query: TicketFilter) -> Page[TicketOut]:
    """Newest first. Staff see every customer's tickets; a customer user sees their customer's."""
    filters = service.TicketFilter(
        status=tuple(query.status or ()),
        priority=tuple(query.priority or ()),
        customer_id=query.customer_id,
        cluster_id=query.cluster_id,
        assigned_to=query.assigned_to,
        created_by=query.created_by,
        search=query.search,
    )
    page = paginate(service.tickets_query(actor, filters), query)
    return Page(items=[TicketOut.of(t) for t in page.items], page=page.page, per_page=page.per_page, total=page.total)


@router.post("/tickets", body=TicketCreate, response=TicketOut, summary="Open a ticket", errors=(404,))
def create_ticket(session: Session, actor: User, body: TicketCreate) -> TicketOut:
    """Numbered `TKT-YYYYMMDD-NNN`. A foreign cluster or node is a 404."""
    ticket = service.create_ticket(
        session,
        actor,
        title=body.title,
        description=body.description,
        priority=body.priority,
        customer_id=body.customer_id,
        cluster_id=body.cluster_id,
        node_id=body.node_id,
        assigned_to_id=body.assigned_to,
    )
    return TicketOut.of(ticket)


@router.get("/tickets/<uuid:ticket_id>", response=TicketOut, summary="Get a ticket")
def get_ticket(session: Session, actor: User, ticket_id: uuid.UUID) -> TicketOut:
    return TicketOut.of(service.get_ticket(session, actor, ticket_id))


@router.patch("/tickets/<uuid:ticket_id>", body=TicketUpdate, response=TicketOut, summary="Update a ticket")
def update_ticket(session: Session, actor: User, ticket_id: uuid.UUID, body: TicketUpdate) -> TicketOut:
    """Customers: title, description, priority; close a resolved ticket or reopen. Engineers: status,
    priority, assignee. Admins: all. Each status change adds a `status_change` comment; a stale
    `version` (or `If-Match`) is a 409.
    """
    ticket = service.get_ticket(session, actor, ticket_id)
    changes = body.model_dump(exclude_unset=True, exclude={"version"})
    if "assigned_to" in changes:
        changes["assigned_to_id"] = changes.pop("assigned_to")
    updated = service.update_ticket(session, actor, ticket, changes, version=expected_version(body.version))
    return TicketOut.of(updated)


@router.get(
    "/tickets/<uuid:ticket_id>/comments",
    query=PageQuery,
    response=CommentOut,
    paginated=True,
    summary="List a ticket's comments",
)
def list_comments(
    session: Session, actor: User, ticket_id: uuid.UUID, query: PageQuery
) -> Select[tuple[TicketComment]]:
    """Oldest first: people's comments, status changes and system notes."""
    return service.comments_query(session, actor, ticket_id)


@router.post(
    "/tickets/<uuid:ticket_id>/comments", body=CommentCreate, response=CommentOut, summary="Comment on a ticket"
)
def add_comment(session: Session, actor: User, ticket_id: uuid.UUID, body: CommentCreate) -> TicketComment:
    """A customer's or engineer's comment (closed tickets too); system notes are written by the platform only."""
    ticket = service.get_ticket(session, actor, ticket_id)
    return service.add_comment(session, actor, ticket, body.content)

"""REST v1: support-session records (seed 000) — list and get. Starting and ending sessions comes later."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field
from sqlalchemy import Select
from sqlalchemy.orm import Session

from portal.api.framework import PageQuery, ResponseModel, Router
from portal.models import SessionState, SessionTransport, SupportSession, User
from portal.services import sessions as service

router = Router("sessions", tags=["Support sessions"])


class SessionFilter(PageQuery):
    ticket_id: uuid.UUID | None = None
    node_id: uuid.UUID | None = None
    engineer_id: uuid.UUID | None = None
    state: list[SessionState] | None = Field(None, description="Any of these states (`?state=requested,active`).")


class SessionOut(ResponseModel):
    """A session as the portal shows it; tunnel credentials never leave the server."""

    id: uuid.UUID
    ticket_id: uuid.UUID
    node_id: uuid.UUID | None
    engineer_id: uuid.UUID | None
    state: SessionState
    transport: SessionTransport
    services: list[str]
    tunnel_id: str | None
    public_hostname: str | None
    expires_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None
    error_message: str | None
    recording_url: str | None
    created_at: datetime
    updated_at: datetime
    version: int


@router.get("/sessions", query=SessionFilter, response=SessionOut, paginated=True, summary="List support sessions")
def list_sessions(session: Session, actor: User, query: SessionFilter) -> Select[tuple[SupportSession]]:
    """Newest first. Staff see all; a customer user sees the sessions on their customer's tickets."""
    filters = service.SessionFilter(
        ticket_id=query.ticket_id,
        node_id=query.node_id,
        engineer_id=query.engineer_id,
        state=tuple(query.state or ()),
    )
    return service.sessions_query(actor, filters)


@router.get("/sessions/<uuid:session_id>", response=SessionOut, summary="Get a support session")
def get_session(session: Session, actor: User, session_id: uuid.UUID) -> SupportSession:
    return service.get_session(session, actor, session_id)

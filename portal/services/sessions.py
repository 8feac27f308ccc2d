"""Support-session records (seed 000): list and get, tenant-scoped. Starting and ending them is later work.

Customer users see the sessions of their own customer's tickets; staff see all.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import Select
from sqlalchemy.orm import Session

from portal.models import SessionState, SupportSession, User
from portal.tenancy import get_scoped, scoped


@dataclass(frozen=True)
class SessionFilter:
    ticket_id: uuid.UUID | None = None
    node_id: uuid.UUID | None = None
    engineer_id: uuid.UUID | None = None
    state: tuple[SessionState, ...] = ()


def sessions_query(actor: User, filters: SessionFilter | None = None) -> Select[tuple[SupportSession]]:
    """The support sessions `actor` may see matching `filters`, newest first."""
    filters = filters or SessionFilter()
    stmt = scoped(SupportSession, actor)
    if filters.ticket_id is not None:
        stmt = stmt.where(SupportSession.ticket_id == filters.ticket_id)
    if filters.node_id is not None:
        stmt = stmt.where(SupportSession.node_id == filters.node_id)
    if filters.engineer_id is not None:
        stmt = stmt.where(SupportSession.engineer_id == filters.engineer_id)
    if filters.state:
        stmt = stmt.where(SupportSession.state.in_([SessionState(s) for s in filters.state]))
    return stmt.order_by(SupportSession.created_at.desc(), SupportSession.id.desc())


def list_sessions(session: Session, actor: User, filters: SessionFilter | None = None) -> list[SupportSession]:
    return list(session.scalars(sessions_query(actor, filters)))


def get_session(session: Session, actor: User, session_id: uuid.UUID | str) -> SupportSession:
    """A support session `actor` may see; foreign or missing is `NotFound`."""
    return get_scoped(session, SupportSession, session_id, actor)

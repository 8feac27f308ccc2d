"""REST v1: support sessions (docs/sessions.md) — list, get, start (on a ticket), end, attach a terminal, recording."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Literal

from flask import Response, current_app
from pydantic import Field, ValidationInfo, field_validator
from sqlalchemy import Select
from sqlalchemy.orm import Session

from portal import redis_of, settings_of
from portal.api.framework import PageQuery, RequestModel, ResponseModel, Router
from portal.api.operations import OperationOut
from portal.errors import ValidationError
from portal.models import SessionState, SessionTransport, SupportSession, User
from portal.queue import default_queue
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


# ---------------------------------------------------------------- start, end, attach, recording


class SessionStart(RequestModel):
    node_id: uuid.UUID = Field(description="A node of the ticket's cluster: `ready`, its agent and the cluster online.")
    services: list[Literal["ssh", "web"]] = Field(
        default_factory=lambda: ["ssh", "web"],
        min_length=1,
        max_length=2,
        description="What the session exposes (Cloudflare transport); the relay always gives a terminal.",
    )
    duration_minutes: int | None = Field(
        None,
        ge=service.MIN_MINUTES,
        le=1_000_000,
        description="5 to `KAIDEN_SESSION_MAX_MINUTES` (default 480); omitted: `KAIDEN_SESSION_DEFAULT_MINUTES`.",
    )

    duration: int | Annotated[str, Field(max_length=16)] | None = Field(
        None,
        description="The same as `duration_minutes`, as whole minutes or a duration such as `90m`, `2h`, `1h30m`.",
    )

    @field_validator("services")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("must not repeat a service")
        return value

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: int | str | None, info: ValidationInfo) -> int | None:
        if value is None:
            return None
        if info.data.get("duration_minutes") is not None:
            raise ValueError("give duration or duration_minutes, not both")
        minutes = value if isinstance(value, int) else _minutes_of(value)
        if not service.MIN_MINUTES <= minutes <= 1_000_000:
            raise ValueError(f"must be at least {service.MIN_MINUTES} minutes")
        return minutes

    @property
    def minutes(self) -> int | None:
        """The requested duration in minutes, whichever field named it."""
        return self.duration_minutes if self.duration_minutes is not None else self.duration  # type: ignore[return-value]


_DURATION = re.compile(r"^(?:(\d{1,4})h)?(?:(\d{1,6})m)?$")


def _minutes_of(text: str) -> int:
    match = _DURATION.match(text.strip().lower())
    if text.strip().isdigit():
        return int(text.strip())
    if not match or not any(match.groups()):
        raise ValueError("must be minutes or a duration such as 90m, 2h or 1h30m")
    hours, minutes = (int(part or 0) for part in match.groups())
    return hours * 60 + minutes


class SessionAccepted(ResponseModel):
    """A `202` answer: the session and the operation working on it (poll `GET /operations/{id}`)."""

    session: SessionOut
    operation: OperationOut


class AttachRequest(RequestModel):
    cols: int = Field(80, ge=1, le=1000, description="Terminal width in columns.")
    rows: int = Field(24, ge=1, le=1000, description="Terminal height in rows.")


class AttachOut(ResponseModel):
    url: str = Field(description="The gateway's WebSocket URL for this terminal, with a one-use ticket.")
    expires_in: int = Field(description="Seconds the ticket stays valid.")


def _queue():
    settings = settings_of(current_app)
    return default_queue(settings, redis_of(current_app))


@router.post(
    "/tickets/<uuid:ticket_id>/sessions",
    body=SessionStart,
    response=SessionAccepted,
    status=202,
    summary="Start a support session on a node of the ticket's cluster",
)
def start_session(session: Session, actor: User, ticket_id: uuid.UUID, body: SessionStart) -> service.SessionOperation:
    """The engineer assigned to the ticket, or an admin (403 `not_assigned`). The node must be in the
    ticket's cluster (422 `node_id`), `ready` with its agent and the cluster online (409 `node_offline`);
    one open session per node and engineer (409 `session_open`, naming it in `session_id`); not on a
    closed ticket (409 `ticket_closed`). A `session.start` operation brings it to `active` (or `failed`
    with `error_message`).
    """
    try:
        return service.start_session(
            session,
            actor,
            ticket_id,
            body.node_id,
            body.services,
            body.minutes,
            settings=settings_of(current_app),
            queue=_queue(),
        )
    except ValidationError as exc:  # name the field the request used
        if body.duration is not None and "duration_minutes" in exc.fields:
            exc.fields["duration"] = exc.fields.pop("duration_minutes")
        raise


@router.delete(
    "/sessions/<uuid:session_id>",
    response=SessionAccepted,
    status=202,
    summary="End a support session",
)
def end_session(session: Session, actor: User, session_id: uuid.UUID) -> service.SessionOperation:
    """The session's engineer, an admin, or anyone who may close the ticket. A `session.end` operation
    closes the terminal (or the tunnel and its Cloudflare objects), keeps the recording and writes the
    ticket's timeline. An ended or failed session is a 409 (`session_ended`), so is one already ending
    (`operation_running`).
    """
    return service.end_session(session, actor, session_id, queue=_queue())


@router.post(
    "/sessions/<uuid:session_id>/attach",
    body=AttachRequest,
    response=AttachOut,
    summary="Get a one-use ticket to open the session's terminal (relay)",
)
def attach(session: Session, actor: User, session_id: uuid.UUID, body: AttachRequest) -> service.AttachTicket:
    """Only the session's own engineer (admins too are refused: 403 `not_session_engineer`), only while
    the session is `active` (409 `session_not_active`). Open the answer's `url` (a WebSocket on the
    gateway) within `expires_in` seconds; the ticket works once.
    """
    return service.issue_attach_ticket(
        session, redis_of(current_app), actor, session_id, body.cols, body.rows, settings_of(current_app)
    )


@router.get(
    "/sessions/<uuid:session_id>/recording",
    media_type="application/x-asciicast",
    summary="The session's terminal recording (asciicast v2)",
)
def get_recording(session: Session, actor: User, session_id: uuid.UUID) -> Response:
    """For the ticket's parties: admins, the session's engineer, the ticket's assignee and the customer's
    users (other engineers 403). No recording (yet) is a 404 `no_recording`.
    """
    data = service.read_recording(session, actor, session_id, settings_of(current_app))
    response = Response(data, status=200, mimetype="application/x-asciicast")
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["Content-Disposition"] = f'inline; filename="session-{session_id}.cast"'
    return response

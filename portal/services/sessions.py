"""Support sessions (seed 000, docs/sessions.md): list, get, start, end, expire, attach tickets, recordings.

Customer users see the sessions of their own customer's tickets; staff see all. Starting and ending
record an operation (`session.start` / `session.end`) whose RQ job (`portal.jobs.sessions`) does the
work; the job is enqueued only once the transaction commits.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from portal.auth import policy
from portal.errors import ConflictError, NotFound, ValidationError
from portal.models import (
    ACTIVE_OPERATION_STATES,
    OPEN_SESSION_STATES,
    AgentStatus,
    Cluster,
    ClusterStatus,
    Node,
    NodeStatus,
    Operation,
    SessionState,
    SessionTransport,
    SupportSession,
    TargetType,
    Ticket,
    TicketStatus,
    User,
    utcnow,
)
from portal.tenancy import Actor, get_scoped, new_operation, scoped

if TYPE_CHECKING:
    import redis
    from rq import Queue

    from portal.settings import Settings

START_KIND = "session.start"
END_KIND = "session.end"
MIN_MINUTES = 5
SERVICES = ("ssh", "web")
START_JOB_TIMEOUT = 900  # seconds: a Cloudflare stack up plus the 60 s tunnel wait
END_JOB_TIMEOUT = 900
ATTACH_TTL_SECONDS = 60
ATTACH_KEY_PREFIX = "kaiden:attach:"

# end reasons (stored in `end_reason`) and how the ticket's timeline says them
REASON_USER = "ended_by_user"
REASON_EXPIRED = "expired"
REASON_TICKET_CLOSED = "ticket_closed"
REASON_TEXT = {REASON_USER: "ended by request", REASON_EXPIRED: "expired", REASON_TICKET_CLOSED: "ticket closed"}


@dataclass(frozen=True)
class SessionFilter:
    ticket_id: uuid.UUID | None = None
    node_id: uuid.UUID | None = None
    engineer_id: uuid.UUID | None = None
    state: tuple[SessionState, ...] = ()


@dataclass(frozen=True)
class SessionOperation:
    """A session and the operation just queued on it (the `202 {"session", "operation"}` answer)."""

    session: SupportSession
    operation: Operation


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


def transport_for(settings: Settings) -> SessionTransport:
    """Cloudflare when the API token, account, zone and the support domain are all configured; else the relay."""
    if settings.cloudflare_enabled and settings.support_domain:
        return SessionTransport.cloudflare
    return SessionTransport.relay


def recording_url(session_id: uuid.UUID | str) -> str:
    return f"/api/v1/sessions/{session_id}/recording"


def active_operation(db: Session, support_session: SupportSession, kind: str | None = None) -> Operation | None:
    """The queued or running operation (of `kind`, if given) on the session, newest first."""
    stmt = select(Operation).where(
        Operation.target_type == TargetType.session,
        Operation.target_id == support_session.id,
        Operation.state.in_(ACTIVE_OPERATION_STATES),
    )
    if kind is not None:
        stmt = stmt.where(Operation.kind == kind)
    return db.scalars(stmt.order_by(Operation.created_at.desc()).limit(1)).first()


# ---------------------------------------------------------------- start


def _check_duration(settings: Settings, duration_minutes: int | None) -> int:
    minutes = settings.session_default_minutes if duration_minutes is None else int(duration_minutes)
    if minutes < MIN_MINUTES:
        raise ValidationError("Invalid duration.", fields={"duration_minutes": f"must be at least {MIN_MINUTES}"})
    if minutes > settings.session_max_minutes:
        raise ValidationError(
            "Invalid duration.", fields={"duration_minutes": f"must be at most {settings.session_max_minutes}"}
        )
    return minutes


def _check_services(services: Iterable[str] | None) -> list[str]:
    chosen = list(services) if services is not None else list(SERVICES)
    unknown = [name for name in chosen if name not in SERVICES]
    if unknown or not chosen:
        raise ValidationError("Invalid services.", fields={"services": "must be one or more of: ssh, web"})
    if len(set(chosen)) != len(chosen):
        raise ValidationError("Invalid services.", fields={"services": "must not repeat a service"})
    return [name for name in SERVICES if name in chosen]


def _node_of_ticket(db: Session, actor: User, ticket: Ticket, node_id: uuid.UUID | str) -> Node:
    if ticket.cluster_id is None:
        raise ValidationError("Invalid node.", fields={"node_id": "the ticket names no cluster"})
    try:
        node = get_scoped(db, Node, node_id, actor)
    except NotFound:
        node = None
    if node is None or node.cluster_id != ticket.cluster_id:
        raise ValidationError("Invalid node.", fields={"node_id": "is not a node of the ticket's cluster"})
    return node


def session_blockers(node: Node, cluster: Cluster) -> list[str]:
    """Why a session cannot start on `node` of `cluster` right now; empty: it can. The one rule, for the API
    and the pages: the cluster and the node's agent online, and the node not reported not-ready. A node whose
    readiness is `unknown` with its agent online qualifies: a host outside Kubernetes (its agent is all there
    is) or a node whose kubelet stopped reporting, which is what support is for; the agent carries the session."""
    blockers = []
    if cluster.status != ClusterStatus.online:
        blockers.append(f"cluster {cluster.name} is {ClusterStatus(cluster.status).value}")
    if node.status == NodeStatus.not_ready:
        blockers.append(f"node {node.name} is {NodeStatus(node.status).value}")
    if node.agent_status != AgentStatus.online:
        blockers.append(f"the agent on {node.name} is {AgentStatus(node.agent_status).value}")
    return blockers


def _check_node_online(node: Node) -> None:
    problems = session_blockers(node, node.cluster)
    if problems:
        raise ConflictError(
            f"A session needs a node with its agent and cluster online: {'; '.join(problems)}.",
            code="node_offline",
        )


def _open_session_of(db: Session, node: Node, engineer: User) -> SupportSession | None:
    stmt = select(SupportSession).where(
        SupportSession.node_id == node.id,
        SupportSession.engineer_id == engineer.id,
        SupportSession.state.in_(OPEN_SESSION_STATES),
    )
    return db.scalars(stmt.order_by(SupportSession.created_at).limit(1)).first()


def start_session(
    db: Session,
    actor: User,
    ticket_id: uuid.UUID | str,
    node_id: uuid.UUID | str,
    services: Sequence[str] | None,
    duration_minutes: int | None,
    *,
    settings: Settings,
    queue: Queue,
) -> SessionOperation:
    """Request a session of `actor` on a node of the ticket's cluster and queue its `session.start` job.

    404 ticket not visible; 403 not the assignee or an admin (`not_assigned`); 422 `node_id` not in
    the ticket's cluster, `services`, `duration_minutes` out of 5..`session_max_minutes`; 409
    `ticket_closed`, `node_offline`, or `session_open` when the actor already has an open session on that node.
    """
    ticket = get_scoped(db, Ticket, ticket_id, actor)
    policy.require_session_starter(actor, ticket)
    minutes = _check_duration(settings, duration_minutes)
    if ticket.status == TicketStatus.closed:  # closing ends a ticket's sessions; a new one would outlive it
        raise ConflictError("The ticket is closed; reopen it to start a session.", code="ticket_closed")
    chosen = _check_services(services)
    node = _node_of_ticket(db, actor, ticket, node_id)
    # Serialize starts on one node (PostgreSQL), so two requests cannot both pass the check below.
    db.execute(select(Node.id).where(Node.id == node.id).with_for_update())
    _check_node_online(node)
    existing = _open_session_of(db, node, actor)
    if existing is not None:
        error = ConflictError(
            f"You already have an open session on node {node.name}: {existing.id} ({existing.state}).",
            code="session_open",
        )
        error.extra = {"session_id": str(existing.id)}  # type: ignore[attr-defined]
        raise error
    now = utcnow()
    support_session = SupportSession(
        ticket_id=ticket.id,
        node_id=node.id,
        engineer_id=actor.id,
        state=SessionState.requested,
        transport=transport_for(settings),
        services=chosen,
        expires_at=now + timedelta(minutes=minutes),
    )
    db.add(support_session)
    db.flush()
    operation = new_operation(
        db,
        START_KIND,
        support_session,
        actor,
        params={
            "ticket_id": str(ticket.id),
            "node": node.name,
            "services": chosen,
            "duration_minutes": minutes,
            "transport": support_session.transport.value,
        },
        step="queued",
    )
    _enqueue(db, queue, operation, "start_session_job", START_JOB_TIMEOUT)
    return SessionOperation(support_session, operation)


def _enqueue(db: Session, queue: Queue, operation: Operation, job: str, timeout: int) -> None:
    from portal.jobs import dispatch
    from portal.jobs import sessions as jobs

    operation.rq_job_id = str(operation.id)
    dispatch.enqueue_after_commit(
        db,
        queue,
        getattr(jobs, job),
        str(operation.id),
        job_id=str(operation.id),
        job_timeout=timeout,
        failure_ttl=3600,
    )


# ---------------------------------------------------------------- end


def _queue_end(
    db: Session, support_session: SupportSession, reason: str, actor: Actor | None, queue: Queue
) -> Operation:
    support_session.state = SessionState.ending
    support_session.end_reason = reason
    operation = new_operation(
        db,
        END_KIND,
        support_session,
        actor,
        params={"reason": reason, "transport": SessionTransport(support_session.transport).value},
        step="queued",
    )
    _enqueue(db, queue, operation, "end_session_job", END_JOB_TIMEOUT)
    return operation


def end_session(
    db: Session, actor: User, session_id: uuid.UUID | str, reason: str = REASON_USER, *, queue: Queue
) -> SessionOperation:
    """Queue the `session.end` job of a session (state → `ending`).

    404 not visible; 403 unless the session's engineer, an admin, or someone who may close the ticket
    (staff, the ticket's customer's users); 409 `session_ended` (ended or failed), `operation_running` (an end
    operation is queued or running; its id in `operation_id`). A session left `ending` by a failed end
    operation may be ended again.
    """
    support_session = get_scoped(db, SupportSession, session_id, actor, for_update=True)
    policy.require_session_ender(actor, support_session)
    state = SessionState(support_session.state)
    if state in (SessionState.ended, SessionState.failed):
        raise ConflictError(f"This session has already {state.value}.", code="session_ended")
    running = active_operation(db, support_session, END_KIND)
    if running is not None:
        error = ConflictError("This session is already ending.", code="operation_running")
        error.extra = {"operation_id": str(running.id)}  # type: ignore[attr-defined]
        raise error
    operation = _queue_end(db, support_session, reason, actor, queue)
    return SessionOperation(support_session, operation)


def expire_due(db: Session, now: datetime, queue: Queue) -> list[Operation]:
    """Queue `session.end` (reason `expired`) for every open session past `expires_at`; returns the new operations.

    Idempotent and safe with several callers: a session gets one end operation (it leaves the open
    states in the same transaction), and rows another transaction holds are skipped, not waited on.
    The caller commits.
    """
    stmt = (
        select(SupportSession)
        .where(SupportSession.state.in_(OPEN_SESSION_STATES), SupportSession.expires_at <= now)
        .order_by(SupportSession.expires_at, SupportSession.id)
        .with_for_update(skip_locked=True)
    )
    created = []
    for support_session in db.scalars(stmt):
        if active_operation(db, support_session, END_KIND) is None:
            created.append(_queue_end(db, support_session, REASON_EXPIRED, None, queue))
    return created


def end_sessions_of_ticket(
    db: Session,
    ticket: Ticket,
    reason: str = REASON_TICKET_CLOSED,
    *,
    actor: Actor | None = None,
    queue: Queue | None = None,
) -> list[Operation]:
    """Queue `session.end` for every open session of `ticket` (called when the ticket is closed)."""
    stmt = (
        select(SupportSession)
        .where(SupportSession.ticket_id == ticket.id, SupportSession.state.in_(OPEN_SESSION_STATES))
        .order_by(SupportSession.created_at, SupportSession.id)
        .with_for_update()
    )
    open_sessions = list(db.scalars(stmt))
    if not open_sessions:
        return []
    queue = queue or _ambient_queue()
    return [_queue_end(db, s, reason, actor, queue) for s in open_sessions if active_operation(db, s, END_KIND) is None]


def _ambient_queue() -> Queue:
    """The job queue of the running app (a request) or of the worker (a job), for callers that have no settings."""
    from flask import current_app, has_app_context

    from portal.queue import default_queue

    if has_app_context():
        from portal import redis_of, settings_of

        return default_queue(settings_of(current_app), redis_of(current_app))
    from portal.jobs.common import current_settings

    return default_queue(current_settings())


# ---------------------------------------------------------------- attaching a terminal (relay)


@dataclass(frozen=True)
class AttachTicket:
    """What the engineer's browser gets: the WebSocket URL (ticket included) and how long it is valid."""

    url: str
    expires_in: int


@dataclass(frozen=True)
class AttachGrant:
    """What a valid attach ticket grants, as stored in Redis for the gateway."""

    session_id: uuid.UUID
    user_id: uuid.UUID
    cols: int
    rows: int


def attach_key(ticket: str) -> str:
    """The Redis key of an attach ticket: `kaiden:attach:<sha256 hex>` (the raw ticket is never stored)."""
    return ATTACH_KEY_PREFIX + hashlib.sha256(ticket.encode("utf-8")).hexdigest()


def parse_attach(raw: bytes | str | None) -> AttachGrant | None:
    """The grant stored under an attach key (what `GETDEL` returned), or None when absent or malformed."""
    if raw is None:
        return None
    try:
        data: Any = json.loads(raw)
        return AttachGrant(
            session_id=uuid.UUID(str(data["session_id"])),
            user_id=uuid.UUID(str(data["user_id"])),
            cols=int(data["cols"]),
            rows=int(data["rows"]),
        )
    except (ValueError, TypeError, KeyError):
        return None


def take_attach_ticket(connection: redis.Redis, ticket: str) -> AttachGrant | None:
    """Consume a ticket (one use: `GETDEL`) and return its grant; None when unknown, used or expired."""
    return parse_attach(connection.getdel(attach_key(ticket)))


def issue_attach_ticket(
    db: Session,
    connection: redis.Redis,
    actor: User,
    session_id: uuid.UUID | str,
    cols: int,
    rows: int,
    settings: Settings,
) -> AttachTicket:
    """A one-use, 60-second ticket for the session's terminal, for the session's own engineer only.

    404 not visible; 403 `not_session_engineer` (admins too); 409 `session_not_active`.
    """
    support_session = get_scoped(db, SupportSession, session_id, actor)
    policy.require_attach(actor, support_session)
    if support_session.state != SessionState.active:
        raise ConflictError(
            f"The session is {SessionState(support_session.state).value}; only an active session has a terminal.",
            code="session_not_active",
        )
    ticket = secrets.token_urlsafe(32)
    grant = {"session_id": str(support_session.id), "user_id": str(actor.id), "cols": int(cols), "rows": int(rows)}
    connection.set(attach_key(ticket), json.dumps(grant, separators=(",", ":")), ex=ATTACH_TTL_SECONDS)
    url = f"{settings.gateway_url}/api/v1/sessions/{support_session.id}/terminal?ticket={ticket}"
    return AttachTicket(url=url, expires_in=ATTACH_TTL_SECONDS)


# ---------------------------------------------------------------- recordings


def read_recording(db: Session, actor: User, session_id: uuid.UUID | str, settings: Settings) -> bytes:
    """The session's asciicast for the ticket's parties: 404 not visible or `no_recording`; 403 other staff."""
    from portal.services.recordings import RecordingStore

    support_session = get_scoped(db, SupportSession, session_id, actor)
    policy.require_recording_reader(actor, support_session)
    store = RecordingStore.from_settings(settings)
    if not store.has(str(support_session.id)):
        raise NotFound("This session has no recording (yet).", code="no_recording")
    return store.read(str(support_session.id))

"""Support-session jobs (docs/sessions.md): `session.start` and `session.end`, taking operation ids.

Each job reloads the operation and its session, closes the database session before talking to the
cluster or the engine, publishes progress (`kaiden:operation:<id>`), and writes one final state to
the operation, the session and the ticket's timeline. Errors become readable messages; tunnel tokens
and API tokens never reach a message, a log line or the operation row.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from pydantic import SecretStr

from agent import protocol
from portal.db import Database
from portal.errors import KaidenError, NotFound
from portal.infra import engine
from portal.jobs.common import Reporter, StackLock, current_settings, publish
from portal.models import (
    Operation,
    OperationState,
    SessionState,
    SessionTransport,
    SupportSession,
    Ticket,
    User,
    utcnow,
)
from portal.queue import connect
from portal.services import sessions as service
from portal.services.cluster_commands import ClusterUnavailable, CommandTimeout, events_channel, send_command
from portal.services.tickets import add_system_comment
from portal.settings import Settings

log = logging.getLogger("kaiden.jobs.sessions")

PING_TIMEOUT = 10.0  # seconds for the node's agent to answer a ping
COMMAND_TIMEOUT = 15.0  # start_tunnel / stop_tunnel / terminal_close: an unreachable agent must not block
TUNNEL_READY_TIMEOUT = 60.0  # cloudflared registering its first connection
RECORDING_WAIT = 5.0  # after the end: how long the first recording chunk may take to arrive
SETTLED_WAIT = 1.0  # the same after the agent acknowledged the close
STACK_LOCK_WAIT = 600.0  # the end job waits for a start still applying the same stack
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class SessionSnapshot:
    """The session as the job found it: plain data, so no database session is held while waiting."""

    id: uuid.UUID
    ticket_id: uuid.UUID
    cluster_id: uuid.UUID
    node_name: str
    transport: SessionTransport
    services: tuple[str, ...]
    engineer_name: str
    engineer_email: str | None
    expires_at: datetime | None
    started_at: datetime | None
    end_reason: str | None

    @property
    def stack(self) -> str:
        return f"sess-{self.id}"

    @property
    def duration_minutes(self) -> int:
        if self.expires_at is None:
            return 0
        return max(1, round((self.expires_at - utcnow()).total_seconds() / 60))

    @classmethod
    def of(cls, support_session: SupportSession) -> SessionSnapshot:
        node = support_session.node
        engineer = support_session.engineer
        return cls(
            id=support_session.id,
            ticket_id=support_session.ticket_id,
            cluster_id=node.cluster_id if node is not None else support_session.ticket.cluster_id,
            node_name=node.name if node is not None else "(deleted node)",
            transport=SessionTransport(support_session.transport),
            services=tuple(support_session.services or ()),
            engineer_name=engineer.name if engineer is not None else "a former engineer",
            engineer_email=engineer.email if engineer is not None else None,
            expires_at=support_session.expires_at,
            started_at=support_session.started_at,
            end_reason=support_session.end_reason,
        )


class SessionFailure(Exception):
    """A start that cannot go on; `message` is safe to show (it never holds a token)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class JobContext:
    settings: Settings
    db: Database
    connection: redis.Redis
    operation_id: uuid.UUID
    snap: SessionSnapshot
    reporter: Reporter
    requested_by: str | None = None  # the name of who asked (end jobs)

    def step(self, progress: int, step: str) -> None:
        self.reporter.set(progress, step, force=True)


# ---------------------------------------------------------------- entry points


def start_session_job(operation_id: str, settings: Settings | None = None) -> str:
    """RQ entry point of `session.start`. Returns the operation's final state."""
    return _run(operation_id, settings, _start)


def end_session_job(operation_id: str, settings: Settings | None = None) -> str:
    """RQ entry point of `session.end`. Returns the operation's final state."""
    return _run(operation_id, settings, _end)


def _run(operation_id: str, settings: Settings | None, body: Callable[..., str]) -> str:
    settings = settings or current_settings()
    database = Database(settings.database_url, settings.encryption_key)
    connection = connect(settings)
    try:
        return body(settings, database, connection, uuid.UUID(operation_id))
    finally:
        connection.close()
        database.dispose()


def _begin(
    database: Database, operation_id: uuid.UUID, kind: str, runnable: Callable[[SupportSession], str | None]
) -> tuple[SessionSnapshot | None, str | None, str]:
    """Reload the operation and its session; mark it running, or finish it at once.

    `runnable(session)` returns None when the job should go on, else the reason to skip it (the
    operation is then cancelled). Returns (snapshot or None, requester name, final state if finished).
    """
    with database.session() as db:
        operation = db.get(Operation, operation_id)
        if operation is None or operation.is_final or operation.kind != kind:
            log.warning("%s %s: no queued operation, nothing to do", kind, operation_id)
            return None, None, "skipped"
        support_session = db.get(SupportSession, operation.target_id) if operation.target_id else None
        if support_session is None:
            operation.state, operation.error, operation.finished_at = (
                OperationState.failed,
                "The support session no longer exists.",
                utcnow(),
            )
            return None, None, "failed"
        skip = runnable(support_session)
        if skip is not None:
            operation.state, operation.step, operation.finished_at = OperationState.cancelled, skip[:255], utcnow()
            operation.result = {"session_id": str(support_session.id), "skipped": skip}
            return None, None, "cancelled"
        operation.state, operation.started_at, operation.step, operation.progress = (
            OperationState.running,
            utcnow(),
            "starting",
            1,
        )
        requester = db.get(User, operation.requested_by_id) if operation.requested_by_id else None
        if kind == service.START_KIND:
            support_session.state = SessionState.starting
        return SessionSnapshot.of(support_session), (requester.name if requester else None), "running"


def _finish_operation(
    ctx: JobContext, db: Any, state: OperationState, *, error: str | None = None, result: dict | None = None
) -> None:
    operation = db.get(Operation, ctx.operation_id)
    operation.state = state
    operation.error = error
    operation.result = result
    operation.step = "done" if state == OperationState.succeeded else str(state.value)
    if state == OperationState.succeeded:
        operation.progress = 100
    operation.finished_at = utcnow()


def _published_end(ctx: JobContext, state: str, error: str | None) -> None:
    if state == "succeeded":
        publish(
            ctx.connection, str(ctx.operation_id), "progress", {"progress": 100, "done": 0, "total": 0, "step": "done"}
        )
    publish(ctx.connection, str(ctx.operation_id), "end", {"state": state, "error": error})


def _readable(exc: BaseException, fallback: str) -> str:
    if isinstance(exc, SessionFailure | KaidenError):
        return exc.message
    log.exception(fallback)
    return fallback


# ---------------------------------------------------------------- start


def _start(settings: Settings, database: Database, connection: redis.Redis, operation_id: uuid.UUID) -> str:
    def runnable(support_session: SupportSession) -> str | None:
        if support_session.state != SessionState.requested:
            return f"the session is already {SessionState(support_session.state).value}"
        return None

    snap, _, state = _begin(database, operation_id, service.START_KIND, runnable)
    if snap is None:
        return state
    ctx = JobContext(
        settings, database, connection, operation_id, snap, Reporter(database, connection, str(operation_id))
    )
    ctx.step(2, f"contacting the agent on {snap.node_name}")
    try:
        if snap.transport == SessionTransport.cloudflare:
            hostname = _start_cloudflare(ctx)
        else:
            _start_relay(ctx)
            hostname = None
    except Exception as exc:  # every failure ends as a readable message on the session and the operation
        message = _readable(exc, "internal error while starting the session")
        _start_failed(ctx, message)
        return "failed"
    return _start_succeeded(ctx, hostname)


def _start_relay(ctx: JobContext) -> None:
    snap = ctx.snap
    ping = protocol.Ping(payload=protocol.PingPayload(node_name=snap.node_name))
    reply = _command(ctx, ping, PING_TIMEOUT)
    if isinstance(reply, protocol.Pong):
        return
    if isinstance(reply, protocol.Error):
        raise SessionFailure(f"The agent on node {snap.node_name} is not reachable: {reply.payload.message}")
    raise SessionFailure(f"The agent on node {snap.node_name} answered the ping with {reply.type}.")


def _command(ctx: JobContext, message: protocol._Message, timeout: float) -> protocol._Message:
    """`send_command` with the failures a start reports: not connected, no answer in time."""
    try:
        return send_command(ctx.connection, ctx.snap.cluster_id, message, timeout=timeout)
    except ClusterUnavailable:
        raise SessionFailure("The cluster's controller is not connected.") from None
    except CommandTimeout:
        raise SessionFailure(
            f"The agent on node {ctx.snap.node_name} did not answer {message.type} within {timeout:g} s."
        ) from None


def _start_succeeded(ctx: JobContext, hostname: str | None) -> str:
    snap = ctx.snap
    superseded = False
    with ctx.db.session() as db:
        support_session = db.get(SupportSession, snap.id)
        if support_session is not None and support_session.state == SessionState.starting:
            now = utcnow()
            support_session.state = SessionState.active
            support_session.started_at = now
            support_session.error_message = None
            where = f" ({hostname})" if hostname else ""
            add_system_comment(
                db,
                db.get(Ticket, snap.ticket_id),
                f"Support session started by {snap.engineer_name} on node {snap.node_name}{where}.",
                {"session_id": str(snap.id), "event": "session_started", "transport": snap.transport.value},
            )
        else:
            superseded = True  # ended while starting: the end job cleans up what this one set up
        result = {
            "session_id": str(snap.id),
            "state": "ending" if superseded else "active",
            "transport": snap.transport.value,
            "public_hostname": hostname,
        }
        _finish_operation(ctx, db, OperationState.succeeded, result=result)
    _published_end(ctx, "succeeded", None)
    return "succeeded"


def _start_failed(ctx: JobContext, message: str) -> None:
    snap = ctx.snap
    with ctx.db.session() as db:
        support_session = db.get(SupportSession, snap.id)
        if support_session is not None and support_session.state == SessionState.starting:
            support_session.state = SessionState.failed
            support_session.error_message = message
            support_session.ended_at = utcnow()
            add_system_comment(
                db,
                db.get(Ticket, snap.ticket_id),
                f"Support session by {snap.engineer_name} on node {snap.node_name} could not start: {message}",
                {"session_id": str(snap.id), "event": "session_failed"},
            )
        _finish_operation(ctx, db, OperationState.failed, error=message, result={"session_id": str(snap.id)})
    _published_end(ctx, "failed", message)


# ---------------------------------------------------------------- start: Cloudflare


def build_stack_spec(settings: Settings, snap: SessionSnapshot) -> Any:
    """The `stacks/support_session.py` spec of this session, from the platform settings."""
    from stacks import support_session as stack

    methods = tuple(m.strip() for m in settings.cloudflare_access_login_methods.split(",") if m.strip())
    try:
        return stack.SessionStackSpec(
            session_id=str(snap.id),
            account_id=settings.cloudflare_account_id or "",
            zone_id=settings.cloudflare_zone_id or "",
            support_domain=settings.support_domain or "",
            engineer_email=snap.engineer_email or "",
            session_duration=snap.duration_minutes,
            api_token=settings.cloudflare_api_token or "",
            services=snap.services,
            login_method_ids=methods,
        )
    except ValueError as exc:  # the spec's messages name the field and value; no token is ever among them
        raise SessionFailure(f"The Cloudflare session cannot be set up: {exc}") from None


def _stack_program(spec: Any) -> Callable[[], None]:
    from stacks import support_session as stack

    return functools.partial(stack.support_session, spec)


def _token_config(settings: Settings) -> dict[str, engine.ConfigInput]:
    # Secret config so the engine scrubs the API token from every log line and error.
    return {"kaiden:cloudflareApiToken": engine.Secret(settings.cloudflare_api_token or "")}


def _reveal(value: Any) -> Any:
    return value.reveal() if isinstance(value, engine.Secret) else value


def _start_cloudflare(ctx: JobContext) -> str:
    snap = ctx.snap
    with StackLock(ctx.connection, snap.stack, wait=None):
        try:
            return _apply_and_open_tunnel(ctx)
        except Exception:
            _destroy_quietly(ctx)
            raise


def _apply_and_open_tunnel(ctx: JobContext) -> str:
    snap = ctx.snap
    spec = build_stack_spec(ctx.settings, snap)
    ctx.reporter.phase(5, 70, {})
    ctx.step(5, f"creating the tunnel and Access policy for {snap.node_name}")
    result = engine.up(
        snap.stack,
        _stack_program(spec),
        ctx.settings,
        config=_token_config(ctx.settings),
        progress_callback=ctx.reporter.callback,
        expected_total=5,
    )
    outputs = result.outputs
    token = _reveal(outputs.get("tunnel_token"))
    hostname = _reveal(outputs.get("public_hostname"))
    if not token or not hostname:
        raise SessionFailure("The session stack did not produce a tunnel token and hostname.")
    with ctx.db.session() as db:
        support_session = db.get(SupportSession, snap.id)
        support_session.tunnel_id = _reveal(outputs.get("tunnel_id"))
        support_session.tunnel_token = str(token)  # an encrypted column
        support_session.public_hostname = str(hostname)
        support_session.dns_record_id = _reveal(outputs.get("dns_record_id"))
        support_session.access_app_id = _reveal(outputs.get("access_app_id"))
        support_session.access_policy_id = _reveal(outputs.get("access_policy_id"))
    ctx.step(75, f"starting cloudflared on {snap.node_name}")
    command = protocol.StartTunnel(
        payload=protocol.StartTunnelPayload(
            session_id=str(snap.id),
            node_name=snap.node_name,
            tunnel_token=SecretStr(str(token)),
            services=list(snap.services),  # type: ignore[arg-type]
            public_hostname=str(hostname),
        )
    )
    pubsub = _subscribed(ctx.connection, events_channel(snap.cluster_id))  # before sending: no event is missed
    try:
        reply = _command(ctx, command, COMMAND_TIMEOUT)
        outcome = _tunnel_outcome(reply, str(snap.id))
        if outcome is None:
            if isinstance(reply, protocol.Error):
                raise SessionFailure(f"The agent on node {snap.node_name} refused the tunnel: {reply.payload.message}")
            ctx.step(85, "waiting for the tunnel to register")
            outcome = _wait_for_tunnel(pubsub, str(snap.id), TUNNEL_READY_TIMEOUT)
    finally:
        pubsub.close()
    if outcome is None:
        _stop_tunnel_quietly(ctx)
        raise SessionFailure(f"The tunnel on node {snap.node_name} did not come up within {TUNNEL_READY_TIMEOUT:g} s.")
    if isinstance(outcome, protocol.TunnelError):
        raise SessionFailure(f"The tunnel on node {snap.node_name} failed: {outcome.payload.error}")
    return outcome.payload.public_hostname or str(hostname)


def _subscribed(connection: redis.Redis, channel: str, timeout: float = 5.0) -> Any:
    """A pubsub subscribed to `channel`, confirmed by the server (so a publish right after is received)."""
    pubsub = connection.pubsub()
    pubsub.subscribe(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=POLL_SECONDS)
        if message is not None and message.get("type") == "subscribe":
            return pubsub
    return pubsub  # unconfirmed: still subscribed, the wait below simply sees what arrives


def _tunnel_outcome(message: protocol._Message, session_id: str) -> protocol.TunnelReady | protocol.TunnelError | None:
    if isinstance(message, protocol.TunnelReady | protocol.TunnelError) and message.payload.session_id == session_id:
        return message
    return None


def _wait_for_tunnel(
    pubsub: Any, session_id: str, timeout: float
) -> protocol.TunnelReady | protocol.TunnelError | None:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=min(left, 1.0))
        if message is None or message.get("type") != "message":
            continue
        try:
            event = protocol.decode(message["data"])
        except protocol.ProtocolError:
            continue
        outcome = _tunnel_outcome(event, session_id)
        if outcome is not None:
            return outcome
    return None


def _stop_tunnel_quietly(ctx: JobContext) -> None:
    stop = protocol.StopTunnel(payload=protocol.SessionRef(session_id=str(ctx.snap.id)))
    try:
        send_command(ctx.connection, ctx.snap.cluster_id, stop, timeout=COMMAND_TIMEOUT)
    except (ClusterUnavailable, CommandTimeout):
        pass


def _destroy_stack(ctx: JobContext) -> None:
    """Destroy and remove `sess-<id>`; a stack that never existed is fine."""
    try:
        engine.destroy(ctx.snap.stack, ctx.settings, config=_token_config(ctx.settings), remove=True)
    except NotFound:
        pass


def _destroy_quietly(ctx: JobContext) -> None:
    try:
        _destroy_stack(ctx)
    except Exception:  # the start's own error is the one reported; an admin can still end the session
        log.exception("session %s: could not destroy stack %s after a failed start", ctx.snap.id, ctx.snap.stack)


# ---------------------------------------------------------------- end


def _end(settings: Settings, database: Database, connection: redis.Redis, operation_id: uuid.UUID) -> str:
    def runnable(support_session: SupportSession) -> str | None:
        if support_session.state in (SessionState.ended, SessionState.failed):
            return f"the session has already {SessionState(support_session.state).value}"
        support_session.state = SessionState.ending
        return None

    snap, requester, state = _begin(database, operation_id, service.END_KIND, runnable)
    if snap is None:
        return state
    ctx = JobContext(
        settings, database, connection, operation_id, snap, Reporter(database, connection, str(operation_id)), requester
    )
    notes: list[str] = []
    settled = False
    try:
        if snap.transport == SessionTransport.cloudflare:
            _end_cloudflare(ctx, notes)
        else:
            settled = _end_relay(ctx, notes)
    except Exception as exc:  # the Cloudflare objects may remain: keep the session `ending`, report, allow a retry
        message = _readable(exc, "internal error while ending the session")
        with ctx.db.session() as db:
            support_session = db.get(SupportSession, snap.id)
            if support_session is not None:
                support_session.error_message = f"Ending failed: {message}"
            _finish_operation(ctx, db, OperationState.failed, error=message, result={"session_id": str(snap.id)})
        _published_end(ctx, "failed", message)
        return "failed"
    ctx.step(90, "collecting the recording")
    where = _wait_for_recording(ctx, settled)
    _end_succeeded(ctx, where, notes)
    return "succeeded"


def _end_relay(ctx: JobContext, notes: list[str]) -> bool:
    """Close the session's terminal. True when the agent settled it: acknowledged (its final recording chunk
    was sent before the ack) or had no terminal for the session (nothing more will come)."""
    snap = ctx.snap
    ctx.step(20, f"closing the terminal on {snap.node_name}")
    close = protocol.TerminalClose(
        payload=protocol.TerminalClosePayload(session_id=str(snap.id), reason=snap.end_reason or "ended")
    )
    try:
        reply = send_command(ctx.connection, snap.cluster_id, close, timeout=COMMAND_TIMEOUT)
    except ClusterUnavailable:
        notes.append("the cluster's controller was not connected")
        return False
    except CommandTimeout:
        notes.append(f"the agent did not answer within {COMMAND_TIMEOUT:g} s")
        return False
    if isinstance(reply, protocol.Error):
        if reply.payload.code == protocol.ErrorCode.not_found:
            return True  # no terminal was ever opened: nothing to close, no recording to wait for
        notes.append(f"the agent answered: {reply.payload.message}")
        return False
    return True


def _end_cloudflare(ctx: JobContext, notes: list[str]) -> None:
    snap = ctx.snap
    ctx.step(10, f"stopping the tunnel on {snap.node_name}")
    stop = protocol.StopTunnel(payload=protocol.SessionRef(session_id=str(snap.id)))
    try:
        reply = send_command(ctx.connection, snap.cluster_id, stop, timeout=COMMAND_TIMEOUT)
        if isinstance(reply, protocol.Error) and reply.payload.code != protocol.ErrorCode.not_found:
            notes.append(f"the agent answered: {reply.payload.message}")
    except ClusterUnavailable:
        notes.append("the cluster's controller was not connected")
    except CommandTimeout:
        notes.append(f"the agent did not answer within {COMMAND_TIMEOUT:g} s")
    ctx.reporter.phase(30, 85, {})
    ctx.step(30, "removing the tunnel, DNS record and Access policy")
    with StackLock(ctx.connection, snap.stack, wait=STACK_LOCK_WAIT):
        _destroy_stack(ctx)


def _recording_store(settings: Settings) -> Any:
    from portal.services.recordings import RecordingStore

    return RecordingStore.from_settings(settings)


def _wait_for_recording(ctx: JobContext, settled: bool) -> str | None:
    """Where the session's recording is (`recording_path`), or None when no chunk arrived in time.

    The path names the session's folder in the store, so it is the same whether the final chunk is in
    yet or not (reads concatenate what is there). Only an empty store is worth waiting for: ≤
    `RECORDING_WAIT` s, or ≤ `SETTLED_WAIT` s when the agent settled the close (the final chunk is sent
    before the ack).
    """
    try:
        store = _recording_store(ctx.settings)
    except Exception:
        log.exception("session %s: the recording store is not available", ctx.snap.id)
        return None
    deadline = time.monotonic() + (min(SETTLED_WAIT, RECORDING_WAIT) if settled else RECORDING_WAIT)
    while True:
        with ctx.db.session() as db:
            support_session = db.get(SupportSession, ctx.snap.id)
            final = support_session.recording_path if support_session is not None else None
        if final:
            return final  # the gateway saw the final chunk
        try:
            if store.has(ctx.snap.id):
                return store.path_of(ctx.snap.id)
        except Exception:
            log.exception("session %s: could not look the recording up", ctx.snap.id)
            return None
        if time.monotonic() >= deadline:
            return None
        time.sleep(POLL_SECONDS)


def _reason_text(ctx: JobContext) -> str:
    reason = ctx.snap.end_reason or service.REASON_USER
    if reason == service.REASON_USER:
        return f"by {ctx.requested_by}" if ctx.requested_by else "on request"
    return service.REASON_TEXT.get(reason, reason)


def format_duration(seconds: float) -> str:
    """`12 min 3 s`, `1 h 0 min 5 s`, `42 s`."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min {secs} s"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def _end_succeeded(ctx: JobContext, recording_path: str | None, notes: list[str]) -> None:
    snap = ctx.snap
    has_recording = recording_path is not None
    with ctx.db.session() as db:
        support_session = db.get(SupportSession, snap.id)
        now = utcnow()
        support_session.state = SessionState.ended
        support_session.ended_at = now
        support_session.end_reason = snap.end_reason or service.REASON_USER
        support_session.error_message = None
        if snap.transport == SessionTransport.cloudflare:
            support_session.tunnel_token = None  # the tunnel is gone; its credential is not kept
        if has_recording:
            support_session.recording_path = support_session.recording_path or recording_path
            support_session.recording_url = service.recording_url(snap.id)
        started = support_session.started_at
        duration = (now - started).total_seconds() if started is not None else None
        text = f"Support session by {snap.engineer_name} on node {snap.node_name} ended ({_reason_text(ctx)})"
        text += f" after {format_duration(duration)}" if duration is not None else " before it became active"
        if has_recording:
            text += "; recording available"
        add_system_comment(
            db,
            db.get(Ticket, snap.ticket_id),
            text + ".",
            {
                "session_id": str(snap.id),
                "event": "session_ended",
                "reason": support_session.end_reason,
                "duration_seconds": None if duration is None else int(duration),
                "recording": has_recording,
            },
        )
        result = {
            "session_id": str(snap.id),
            "state": "ended",
            "end_reason": support_session.end_reason,
            "duration_seconds": None if duration is None else int(duration),
            "recording_url": support_session.recording_url,
            "notes": notes,
        }
        _finish_operation(ctx, db, OperationState.succeeded, result=result)
    _published_end(ctx, "succeeded", None)

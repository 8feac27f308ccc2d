"""`WS /api/v1/sessions/<id>/terminal?ticket=…`: engineers' browser terminals of relay sessions (docs/sessions.md,
"Attaching a terminal"). The gateway holding the browser needs not hold the controller: everything goes through
Redis — `terminal_open` as a command, input and resizes as `forward` envelopes, output from the session's channel.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as aioredis
from sqlalchemy import select
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from agent import protocol
from portal.db import Database
from portal.models import Node, SessionState, SupportSession, utcnow
from portal.services.cluster_commands import (
    ClusterUnavailable,
    CommandTimeout,
    forward_async,
    send_command_async,
    session_output_channel,
)
from portal.services.recordings import RecordingStore
from portal.services.sessions import attach_key, parse_attach

log = logging.getLogger("kaiden.gateway")

TERMINAL_PATH = re.compile(r"^/api/v1/sessions/([0-9a-fA-F-]{36})/terminal$")

CLOSE_TICKET = 4001  # ticket missing, used, expired or for another session
CLOSE_FORBIDDEN = 4003  # session not active, or not this user's
CLOSE_NOT_OPENED = 4504  # the agent did not open the terminal (the reason says why)
OPEN_TIMEOUT = 10.0
OUTPUT_BACKLOG = 4096  # output frames queued for one browser before it counts as gone
INPUT_PIECE = 256 * 1024  # bytes of input per terminal_data frame (a frame's base64 must stay under 1 MiB)
REDIS_POOL_SIZE = 512  # `terminal_open` waits hold a connection for up to OPEN_TIMEOUT


def terminal_session_id(path: str) -> uuid.UUID | None:
    """The session id of a terminal path (query string allowed), or None for any other path."""
    match = TERMINAL_PATH.match(path.split("?", 1)[0])
    if match is None:
        return None
    try:
        return uuid.UUID(match.group(1))
    except ValueError:
        return None


def _reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8."""
    return text.encode("utf-8")[:123].decode("utf-8", "ignore")


def _size(query: dict[str, list[str]], name: str, default: int) -> int:
    try:
        value = int(query.get(name, [""])[0])
    except ValueError:
        return default
    return value if 1 <= value <= 1000 else default


class OpenFailed(Exception):
    """The agent did not open the terminal; the message is for the engineer."""


@dataclass(frozen=True)
class SessionTarget:
    state: SessionState
    engineer_id: uuid.UUID | None
    node_name: str | None
    cluster_id: uuid.UUID | None


@dataclass(eq=False)
class Attachment:
    """One browser attached to one session's terminal."""

    session_id: uuid.UUID
    cluster_id: uuid.UUID
    node_name: str
    websocket: ServerConnection
    cols: int
    rows: int
    output: asyncio.Queue[bytes | tuple[str, str]] = field(default_factory=asyncio.Queue)
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # set when it must go now (output backlog)
    shell_exited: bool = False
    ending: bool = False

    @property
    def channel(self) -> str:
        return session_output_channel(self.session_id)

    def deliver(self, data: bytes) -> None:
        if self.output.qsize() >= OUTPUT_BACKLOG:
            self.gone.set()
            return
        self.output.put_nowait(data)

    def session_ended(self, reason: str) -> None:
        if not self.ending:  # once; after the output queued before it
            self.ending = True
            self.output.put_nowait(("ended", reason))


class TerminalHub:
    """The browser terminals this gateway holds: one Redis subscription for all their output channels, and one
    periodic database check of their sessions' states (a session that ends, by any path, closes its terminals)."""

    def __init__(
        self,
        database: Database,
        redis_url: str,
        *,
        record_input: bool = False,
        state_check_seconds: float = 2.0,
        open_timeout: float = OPEN_TIMEOUT,
        recordings: RecordingStore | None = None,
    ) -> None:
        self.database = database
        self.recordings = recordings
        self.record_input = record_input
        self.state_check_seconds = state_check_seconds
        self.open_timeout = open_timeout
        # its own pool: waits for terminal_open acks must never starve the controllers' replies of connections
        pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=REDIS_POOL_SIZE, timeout=None)
        self.redis = aioredis.Redis(connection_pool=pool)
        self.pubsub = self.redis.pubsub()
        self.attachments: set[Attachment] = set()
        self._listeners: dict[str, set[Attachment]] = {}
        self._confirmed: dict[str, asyncio.Event] = {}
        self._lock = asyncio.Lock()
        self._own_channel = f"kaiden:gateway-terminals:{uuid.uuid4().hex}"
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.pubsub.subscribe(self._own_channel)  # keeps the pubsub connection listening
        self._tasks = [asyncio.create_task(self._read_output()), asyncio.create_task(self._watch_sessions())]

    async def close(self) -> None:
        for attachment in list(self.attachments):
            await attachment.websocket.close(1001, "gateway shutting down")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pubsub.aclose()
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()  # a pool we made is ours to close

    # ------------------------------------------------------------ the endpoint

    async def handle(self, websocket: ServerConnection, session_id: uuid.UUID) -> None:
        request_path = websocket.request.path if websocket.request is not None else ""
        query = parse_qs(urlsplit(request_path).query)
        ticket = query.get("ticket", [""])[0]
        if not ticket:
            await websocket.close(CLOSE_TICKET, "ticket missing")
            return
        try:
            grant = parse_attach(await self.redis.getdel(attach_key(ticket)))  # one use
        except Exception:
            log.exception("cannot read attach tickets from Redis")
            await websocket.close(1011, "gateway cannot reach Redis; retry later")
            return
        if grant is None:
            await websocket.close(CLOSE_TICKET, "ticket unknown, used or expired")
            return
        if grant.session_id != session_id:
            await websocket.close(CLOSE_TICKET, "ticket for another session")
            return
        try:
            target = await asyncio.to_thread(self._load, session_id)
        except Exception:
            log.exception("cannot load session %s", session_id)
            await websocket.close(1011, "gateway cannot reach its database; retry later")
            return
        if target is None or target.engineer_id != grant.user_id:
            await websocket.close(CLOSE_FORBIDDEN, "not your session")
            return
        if target.state != SessionState.active:
            await websocket.close(CLOSE_FORBIDDEN, f"session not active ({SessionState(target.state).value})")
            return
        if target.node_name is None or target.cluster_id is None:
            await websocket.close(CLOSE_NOT_OPENED, "the session's node no longer exists")
            return
        attachment = Attachment(
            session_id=session_id,
            cluster_id=target.cluster_id,
            node_name=target.node_name,
            websocket=websocket,
            cols=_size(query, "cols", grant.cols if 1 <= grant.cols <= 1000 else 80),
            rows=_size(query, "rows", grant.rows if 1 <= grant.rows <= 1000 else 24),
        )
        try:
            await self._serve(attachment)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("terminal of session %s failed", session_id)
            await websocket.close(1011, "internal error")

    def _load(self, session_id: uuid.UUID) -> SessionTarget | None:
        with self.database.session() as session:
            row = session.execute(
                select(SupportSession.state, SupportSession.engineer_id, Node.name, Node.cluster_id)
                .outerjoin(Node, SupportSession.node_id == Node.id)
                .where(SupportSession.id == session_id)
            ).first()
        return None if row is None else SessionTarget(*row)

    async def _serve(self, attachment: Attachment) -> None:
        websocket = attachment.websocket
        await self._listen(attachment)  # before terminal_open: no output is missed
        try:
            try:
                await self._open(attachment)
            except OpenFailed as exc:
                await websocket.close(CLOSE_NOT_OPENED, _reason(str(exc)))
                return
            self.attachments.add(attachment)
            await websocket.send(json.dumps({"type": "ready"}))
            log.info("terminal of session %s attached", attachment.session_id)
            tasks = [
                asyncio.create_task(self._pump_input(attachment)),
                asyncio.create_task(self._pump_output(attachment)),
                asyncio.create_task(attachment.gone.wait()),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                if tasks[2] in done:
                    log.warning("terminal of session %s: the browser does not keep up; closed", attachment.session_id)
                    await websocket.close(1011, "terminal output backlog")
                for task in done:
                    task.result()  # a pump's unexpected error surfaces here
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self.attachments.discard(attachment)
            await self._unlisten(attachment)
            log.info("terminal of session %s detached", attachment.session_id)

    def _recording_position(self, session_id: uuid.UUID) -> tuple[int, float]:
        """The seq after the last chunk stored for the session, and the seconds since it started: where an agent
        that restarted mid-session continues the recording (one asciicast, nothing overwritten). (0, 0) if none."""
        if self.recordings is None:
            return 0, 0.0
        stored = self.recordings.chunks(session_id)
        if not stored:
            return 0, 0.0
        with self.database.session() as session:
            started = session.scalar(select(SupportSession.started_at).where(SupportSession.id == session_id))
        # the recording began at the first terminal_open, after `started_at`: times stay increasing
        elapsed = max(0.0, (utcnow() - started).total_seconds()) if started is not None else 0.0
        return max(stored) + 1, round(elapsed, 6)

    async def _open(self, attachment: Attachment) -> None:
        """`terminal_open` to the agent (a live shell only acks and resizes); raises `OpenFailed`."""
        seq, elapsed = await asyncio.to_thread(self._recording_position, attachment.session_id)
        message = protocol.TerminalOpen(
            payload=protocol.TerminalOpenPayload(
                session_id=str(attachment.session_id),
                node_name=attachment.node_name,
                cols=attachment.cols,
                rows=attachment.rows,
                record_input=self.record_input,
                recording_seq=seq,
                recording_elapsed=elapsed,
            )
        )
        try:
            reply = await send_command_async(self.redis, attachment.cluster_id, message, timeout=self.open_timeout)
        except ClusterUnavailable as exc:
            raise OpenFailed("the cluster's controller is not connected") from exc
        except CommandTimeout as exc:
            raise OpenFailed(f"the agent did not answer within {self.open_timeout:g} s") from exc
        if isinstance(reply, protocol.Error):
            raise OpenFailed(reply.payload.message)
        if not isinstance(reply, protocol.Ack):
            raise OpenFailed(f"unexpected answer from the agent: {reply.type}")
        attachment.shell_exited = False

    # ------------------------------------------------------------ browser → agent

    async def _pump_input(self, attachment: Attachment) -> None:
        try:
            async for message in attachment.websocket:
                if isinstance(message, bytes):
                    await self._input(attachment, message)
                    continue
                try:
                    data = json.loads(message)
                except ValueError:
                    data = None
                kind = data.get("type") if isinstance(data, dict) else None
                if kind == "input" and isinstance(data.get("data"), str):
                    await self._input(attachment, data["data"].encode("utf-8", "surrogateescape"))
                elif kind == "resize":
                    await self._resize(attachment, data.get("cols"), data.get("rows"))
                else:
                    await self._tell(attachment, {"type": "error", "message": "unknown message"})
        except ConnectionClosed:
            pass

    async def _input(self, attachment: Attachment, data: bytes) -> None:
        if not data:
            return
        if attachment.shell_exited:  # the shell ended: any input opens a new one in the same session
            try:
                await self._open(attachment)
            except OpenFailed as exc:
                await self._tell(attachment, {"type": "error", "message": str(exc)})
                return
        for start in range(0, len(data), INPUT_PIECE):
            piece = base64.b64encode(data[start : start + INPUT_PIECE]).decode("ascii")
            frame = protocol.TerminalData(
                payload=protocol.TerminalDataPayload(session_id=str(attachment.session_id), data=piece)
            )
            if not await self._forward(attachment, frame):
                return

    async def _resize(self, attachment: Attachment, cols: object, rows: object) -> None:
        if not (type(cols) is int and type(rows) is int and 1 <= cols <= 1000 and 1 <= rows <= 1000):
            await self._tell(attachment, {"type": "error", "message": "resize needs cols and rows in 1..1000"})
            return
        attachment.cols, attachment.rows = cols, rows
        if attachment.shell_exited:
            return  # the next terminal_open carries the size
        frame = protocol.TerminalResize(
            payload=protocol.TerminalResizePayload(session_id=str(attachment.session_id), cols=cols, rows=rows)
        )
        await self._forward(attachment, frame)

    async def _forward(self, attachment: Attachment, frame: protocol._Message) -> bool:
        try:
            await forward_async(self.redis, attachment.cluster_id, frame)
        except ClusterUnavailable:
            await self._tell(
                attachment, {"type": "error", "message": "the cluster's controller is not connected; input not sent"}
            )
            return False
        return True

    async def _tell(self, attachment: Attachment, message: dict[str, object]) -> None:
        await attachment.websocket.send(json.dumps(message))

    # ------------------------------------------------------------ agent → browser

    async def _pump_output(self, attachment: Attachment) -> None:
        websocket = attachment.websocket
        while True:
            item = await attachment.output.get()
            if isinstance(item, tuple):  # the session ended (database check)
                await self._tell(attachment, {"type": "closed", "reason": item[1]})
                await websocket.close(1000, "session ended")
                return
            try:
                message = protocol.decode(item)
            except protocol.ProtocolError:
                log.warning("undecodable frame on %s", attachment.channel)
                continue
            if isinstance(message, protocol.TerminalData):
                attachment.shell_exited = False
                await websocket.send(message.payload.raw())
            elif isinstance(message, protocol.TerminalClose):
                reason = message.payload.reason or "closed"
                if reason == "exited":
                    attachment.shell_exited = True
                    await self._tell(attachment, {"type": "exit", "reason": reason})
                else:
                    await self._tell(attachment, {"type": "closed", "reason": reason})
                    await websocket.close(1000, "terminal closed")
                    return

    # ------------------------------------------------------------ the output channels

    async def _listen(self, attachment: Attachment) -> None:
        channel = attachment.channel
        async with self._lock:
            listeners = self._listeners.get(channel)
            if listeners is None:
                listeners = self._listeners[channel] = set()
                self._confirmed[channel] = asyncio.Event()
                await self.pubsub.subscribe(channel)
            listeners.add(attachment)
            confirmed = self._confirmed[channel]
        try:
            await asyncio.wait_for(confirmed.wait(), timeout=self.open_timeout)
        except TimeoutError:
            await self._unlisten(attachment)
            raise

    async def _unlisten(self, attachment: Attachment) -> None:
        channel = attachment.channel
        async with self._lock:
            listeners = self._listeners.get(channel)
            if listeners is None:
                return
            listeners.discard(attachment)
            if not listeners:
                del self._listeners[channel]
                self._confirmed.pop(channel, None)
                try:
                    await self.pubsub.unsubscribe(channel)
                except Exception:  # the gateway is closing
                    log.debug("unsubscribe failed", exc_info=True)

    async def _read_output(self) -> None:
        while True:
            try:
                message = await self.pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reading the terminal output channels failed; retrying")
                await asyncio.sleep(1)
                continue
            if message is None:
                continue
            channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
            if message["type"] == "subscribe":
                confirmed = self._confirmed.get(channel)
                if confirmed is not None:
                    confirmed.set()
            elif message["type"] == "message":
                for attachment in list(self._listeners.get(channel, ())):
                    attachment.deliver(message["data"])

    async def _watch_sessions(self) -> None:
        """Every `state_check_seconds`, one query for the states of the sessions with a terminal here."""
        while True:
            await asyncio.sleep(self.state_check_seconds)
            held = [a for a in self.attachments if not a.ending]
            if not held:
                continue
            try:
                states = await asyncio.to_thread(self._states, {a.session_id for a in held})
            except Exception:
                log.exception("cannot check the states of the attached sessions")
                continue
            for attachment in held:
                state, end_reason = states.get(attachment.session_id, (None, None))
                if state != SessionState.active:
                    attachment.session_ended(end_reason or (SessionState(state).value if state else "deleted"))

    def _states(self, ids: set[uuid.UUID]) -> dict[uuid.UUID, tuple[SessionState, str | None]]:
        with self.database.session() as session:
            rows = session.execute(
                select(SupportSession.id, SupportSession.state, SupportSession.end_reason).where(
                    SupportSession.id.in_(ids)
                )
            )
            return {row[0]: (row[1], row[2]) for row in rows}

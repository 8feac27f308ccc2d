"""`WS /api/v1/agent/connect`: controllers' connections — handshake, one live connection per cluster,
frames in (heartbeats, replies, events, terminal output, recording chunks), commands and forwarded terminal
input out (from Redis). Close codes are in docs/agents.md; the session frames in docs/sessions.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from sqlalchemy import select
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from agent import protocol
from portal.crypto import hash_token
from portal.db import Database
from portal.gateway.liveness import HeartbeatBuffer, Stats
from portal.models import Node, SupportSession
from portal.services.cluster_commands import (
    REPLY_TTL_SECONDS,
    control_channel,
    events_channel,
    session_output_channel,
)
from portal.services.heartbeats import cluster_key_matches, current_key_hashes
from portal.services.recordings import RecordingStore

log = logging.getLogger("kaiden.gateway")

CLOSE_UNAUTHORIZED = 4001
CLOSE_UNKNOWN_CLUSTER = 4004
CLOSE_REPLACED = 4009
CLOSE_PROTOCOL = 4400
HELLO_TIMEOUT = 10.0
REDIS_POOL_SIZE = 32
RECORDING_WRITE_ATTEMPTS = 3
SESSION_CACHE_SIZE = 4096  # per connection: which session ids belong to its cluster
SessionFrame = protocol.TerminalData | protocol.TerminalClose | protocol.RecordingChunk


@dataclass(eq=False)
class ControllerConnection:
    cluster_id: uuid.UUID
    websocket: ServerConnection
    key_hash: str = ""  # of the key it authenticated with: a rotation closes the connection
    connection_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    pending: dict[str, str] = field(default_factory=dict)  # command id → reply list key
    sessions: dict[str, bool] = field(default_factory=dict)  # session id → is a session on this cluster


class ControllerHub:
    """The controller connections this gateway holds, and their bridge to Redis."""

    def __init__(
        self,
        database: Database,
        redis_url: str,
        buffer: HeartbeatBuffer,
        stats: Stats,
        recordings: RecordingStore | None = None,
    ) -> None:
        self.database = database
        self.buffer = buffer
        self.stats = stats
        self.recordings = recordings
        # session id → the latest write of its recording; each waits for the one before (chunks in order)
        self._recording_writes: dict[str, asyncio.Task[None]] = {}
        # Agents flush every session's chunk at the same tick. Files: one writer thread takes that burst in turn
        # instead of several contending with the event loop for the GIL (it showed in the keystroke echo tail).
        self._recording_executor = ThreadPoolExecutor(
            max_workers=recordings.writers if recordings is not None else 1, thread_name_prefix="kaiden-recordings"
        )
        # blocking pool: a burst of connects waits for a Redis connection instead of failing
        pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=REDIS_POOL_SIZE, timeout=None)
        self.redis = aioredis.Redis(connection_pool=pool)
        self.pubsub = self.redis.pubsub()
        self.connections: dict[uuid.UUID, ControllerConnection] = {}
        self._own_channel = f"kaiden:gateway:{uuid.uuid4().hex}"
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.pubsub.subscribe(self._own_channel)  # keeps the pubsub connection listening
        self._reader = asyncio.create_task(self._read_control())

    async def close(self) -> None:
        for conn in list(self.connections.values()):
            await conn.websocket.close(1001, "gateway shutting down")
        writes = list(self._recording_writes.values())
        if writes:  # chunks already received are stored before the gateway goes
            await asyncio.wait(writes, timeout=30)
        self._recording_executor.shutdown(wait=False, cancel_futures=True)
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
        await self.pubsub.aclose()
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()  # a pool we made is ours to close

    # ------------------------------------------------------------ handshake

    async def handle(self, websocket: ServerConnection) -> None:
        headers = websocket.request.headers if websocket.request is not None else {}
        raw_id = (headers.get("X-Kaiden-Cluster-Id") or "").strip()
        auth = headers.get("Authorization") or ""
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        try:
            cluster_id = uuid.UUID(raw_id)
        except ValueError:
            await websocket.close(CLOSE_UNKNOWN_CLUSTER, "unknown cluster: X-Kaiden-Cluster-Id missing or malformed")
            return
        try:
            exists, key_ok = await asyncio.to_thread(self._check_key, cluster_id, key)
        except Exception:
            log.exception("cannot check the key of cluster %s", cluster_id)
            await websocket.close(1011, "gateway cannot reach its database; retry later")
            return
        if not exists:
            await websocket.close(CLOSE_UNKNOWN_CLUSTER, "unknown cluster")
            return
        if not key_ok:
            log.warning("controller of cluster %s refused: wrong or rotated API key", cluster_id)
            await websocket.close(CLOSE_UNAUTHORIZED, "unauthorized: wrong or rotated API key")
            return
        hello = await self._await_hello(websocket)
        if hello is None:
            return
        conn = ControllerConnection(cluster_id=cluster_id, websocket=websocket, key_hash=hash_token(key))
        try:
            await self._register(conn)
        except Exception:  # Redis down: heartbeats still count, commands wait for the next connection
            log.exception("cluster %s: could not subscribe to its command channel", cluster_id)
        self.buffer.connected(cluster_id, hello.payload.software_version)
        log.info("controller of cluster %s connected (%s)", cluster_id, hello.payload.software_version)
        try:
            await self._serve(conn)
        finally:
            await self._unregister(conn)

    def _check_key(self, cluster_id: uuid.UUID, key: str) -> tuple[bool, bool]:
        with self.database.session() as session:
            return cluster_key_matches(session, cluster_id, key)

    async def _await_hello(self, websocket: ServerConnection) -> protocol.Hello | None:
        try:
            frame = await asyncio.wait_for(websocket.recv(), timeout=HELLO_TIMEOUT)
        except (TimeoutError, ConnectionClosed):
            await websocket.close(CLOSE_PROTOCOL, "hello expected")
            return None
        message, error = protocol.decode_or_error(frame)
        if message is not None and not (isinstance(message, protocol.Hello) and message.payload.role == "controller"):
            error = protocol.error_frame(
                protocol.ProtocolError(protocol.ErrorCode.invalid, "the first frame must be a controller hello")
            )
        elif isinstance(message, protocol.Hello) and protocol.PROTOCOL_VERSION not in message.payload.protocol_versions:
            error = protocol.error_frame(
                protocol.ProtocolError(protocol.ErrorCode.unsupported_version, "no common protocol version")
            )
        if error is not None:
            try:
                await websocket.send(error)
            except ConnectionClosed:
                pass
            await websocket.close(CLOSE_PROTOCOL, "hello expected")
            return None
        return message  # type: ignore[return-value]

    # ------------------------------------------------------------ one live connection per cluster

    async def _register(self, conn: ControllerConnection) -> None:
        old = self.connections.get(conn.cluster_id)
        self.connections[conn.cluster_id] = conn
        if old is not None:
            await self._replace(old)
        else:
            await self.pubsub.subscribe(control_channel(conn.cluster_id))
        # other gateways holding this cluster close theirs when they read this
        notice = json.dumps({"kind": "replaced", "connection": conn.connection_id})
        await self.redis.publish(control_channel(conn.cluster_id), notice)

    async def _replace(self, old: ControllerConnection) -> None:
        log.info("controller of cluster %s replaced by a newer connection", old.cluster_id)
        await self._fail_pending(old, "the controller reconnected")
        await old.websocket.close(CLOSE_REPLACED, "replaced by a newer connection")

    async def _unregister(self, conn: ControllerConnection) -> None:
        await self._fail_pending(conn, "the controller disconnected")
        if self.connections.get(conn.cluster_id) is conn:
            del self.connections[conn.cluster_id]
            try:
                await self.pubsub.unsubscribe(control_channel(conn.cluster_id))
            except Exception:  # the gateway is closing
                log.debug("unsubscribe failed", exc_info=True)
        log.info("controller of cluster %s disconnected", conn.cluster_id)

    async def _fail_pending(self, conn: ControllerConnection, why: str) -> None:
        pending, conn.pending = conn.pending, {}
        for command_id, key in pending.items():
            error = protocol.Error(
                payload=protocol.ErrorPayload(code=protocol.ErrorCode.internal, message=why, of=command_id)
            )
            await self._push_reply(key, protocol.encode(error))

    async def close_revoked(self) -> int:
        """Close (4001) the connections whose cluster's key was rotated or which were deleted since they connected."""
        held = list(self.connections.values())
        if not held:
            return 0

        def lookup() -> dict[uuid.UUID, str]:
            with self.database.session() as session:
                return current_key_hashes(session, [c.cluster_id for c in held])

        current = await asyncio.to_thread(lookup)
        closed = 0
        for conn in held:
            if current.get(conn.cluster_id) != conn.key_hash and self.connections.get(conn.cluster_id) is conn:
                log.warning("controller of cluster %s disconnected: its API key was rotated", conn.cluster_id)
                await conn.websocket.close(CLOSE_UNAUTHORIZED, "unauthorized: wrong or rotated API key")
                closed += 1
        return closed

    # ------------------------------------------------------------ frames from the controller

    async def _serve(self, conn: ControllerConnection) -> None:
        websocket = conn.websocket
        try:
            async for frame in websocket:
                received = time.monotonic()
                self.stats.frames += 1
                message, error = protocol.decode_or_error(frame)
                if error is not None:
                    self.stats.frame_errors += 1
                    log.warning("cluster %s sent a bad frame: %s", conn.cluster_id, json.loads(error)["payload"])
                    await websocket.send(error)
                    continue
                await self._dispatch(conn, message, received)
                done = time.monotonic()
                self.stats.handle_latency.append((done, done - received))
        except ConnectionClosed:
            pass

    async def _dispatch(self, conn: ControllerConnection, message: protocol._Message, received: float) -> None:
        if isinstance(message, protocol.Heartbeat):
            if message.payload.cluster_id != str(conn.cluster_id):
                self.stats.frame_errors += 1
                await conn.websocket.send(
                    protocol.error_frame(
                        protocol.ProtocolError(
                            protocol.ErrorCode.invalid, "heartbeat.cluster_id is not this connection's cluster"
                        )
                    )
                )
                return
            self.buffer.heartbeat(conn.cluster_id, message.payload, received)
            return
        answered = protocol.reply_id(message)
        if answered is not None and answered in conn.pending:
            await self._push_reply(conn.pending.pop(answered), protocol.encode(message))
            return
        if isinstance(message, protocol.Hello):
            return  # a repeated hello changes nothing
        if isinstance(message, SessionFrame):
            await self._session_frame(conn, message)
            return
        try:
            await self.redis.publish(events_channel(conn.cluster_id), protocol.encode(message))
        except Exception:
            log.exception("could not publish a %s event of cluster %s", message.type, conn.cluster_id)

    # ------------------------------------------------------------ session frames (docs/sessions.md)

    async def _session_frame(self, conn: ControllerConnection, message: SessionFrame) -> None:
        """Terminal output goes to the session's output channel, recording chunks into the store; both only for
        sessions on this connection's cluster, so one customer's controller cannot write into another's session."""
        session_id = message.payload.session_id
        if not await self._owns_session(conn, session_id):
            self.stats.frame_errors += 1
            log.warning("cluster %s sent a %s for a session not on it; dropped", conn.cluster_id, message.type)
            return
        if isinstance(message, protocol.RecordingChunk):
            self._record(message.payload)
            return
        try:
            await self.redis.publish(session_output_channel(session_id), protocol.encode(message))
        except Exception:
            log.exception("could not publish a %s of a session of cluster %s", message.type, conn.cluster_id)

    async def _owns_session(self, conn: ControllerConnection, session_id: str) -> bool:
        known = conn.sessions.get(session_id)
        if known is not None:
            return known
        try:
            key = uuid.UUID(session_id)
        except ValueError:
            return False

        def lookup() -> uuid.UUID | None:
            with self.database.session() as session:
                stmt = (
                    select(Node.cluster_id)
                    .join(SupportSession, SupportSession.node_id == Node.id)
                    .where(SupportSession.id == key)
                )
                return session.scalar(stmt)

        try:
            owner = await asyncio.to_thread(lookup)
        except Exception:  # not cached: the next frame asks again
            log.exception("cannot check the session %s of cluster %s", session_id, conn.cluster_id)
            return False
        if len(conn.sessions) >= SESSION_CACHE_SIZE:
            conn.sessions.clear()
        conn.sessions[session_id] = owner == conn.cluster_id
        return conn.sessions[session_id]

    def _record(self, chunk: protocol.RecordingChunkPayload) -> None:
        """Store a chunk in the background (the controller's frames keep flowing), after the session's previous one."""
        if self.recordings is None:
            return
        session_id = chunk.session_id
        task = asyncio.create_task(self._write_chunk(chunk, self._recording_writes.get(session_id)))
        self._recording_writes[session_id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._recording_writes.get(session_id) is done:
                del self._recording_writes[session_id]

        task.add_done_callback(forget)

    async def _write_chunk(self, chunk: protocol.RecordingChunkPayload, previous: asyncio.Task[None] | None) -> None:
        assert self.recordings is not None
        if previous is not None:
            await asyncio.wait([previous])
        data = chunk.data.encode("utf-8")
        for attempt in range(RECORDING_WRITE_ATTEMPTS):
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._recording_executor, self.recordings.put_chunk, chunk.session_id, chunk.seq, data
                )
                break
            except Exception:
                last = attempt == RECORDING_WRITE_ATTEMPTS - 1
                log.warning(
                    "storing chunk %d of the recording of session %s failed%s",
                    chunk.seq,
                    chunk.session_id,
                    "; it is lost" if last else "; retrying",
                    exc_info=last,
                )
                if last:
                    return
                await asyncio.sleep(0.5 * 2**attempt)
        if chunk.final:
            try:
                await asyncio.to_thread(self._mark_recorded, chunk.session_id)
            except Exception:
                log.exception("could not record where the recording of session %s is", chunk.session_id)

    def _mark_recorded(self, session_id: str) -> None:
        from portal.services.sessions import recording_url

        assert self.recordings is not None
        table = SupportSession.__table__
        # A Core UPDATE of two columns only the gateway writes: it leaves `version` alone, so the session's end
        # job, which may hold the row loaded meanwhile, is not failed as a concurrent edit.
        with self.database.session() as session:
            session.execute(
                table.update()
                .where(table.c.id == uuid.UUID(session_id))
                .values(recording_path=self.recordings.path_of(session_id), recording_url=recording_url(session_id))
            )

    async def _push_reply(self, key: str, frame: str) -> None:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.rpush(key, frame)
                pipe.expire(key, REPLY_TTL_SECONDS)
                await pipe.execute()
        except Exception:  # the sender times out; the connection goes on
            log.exception("could not deliver a command reply")

    # ------------------------------------------------------------ commands from Redis

    async def _read_control(self) -> None:
        while True:
            try:
                message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reading the control channels failed; retrying")
                await asyncio.sleep(1)
                continue
            if message is None or message.get("type") != "message":
                continue
            try:
                await self._on_control(message["channel"], message["data"])
            except Exception:
                log.exception("control message not handled")

    async def _on_control(self, channel: bytes, data: bytes) -> None:
        parts = channel.decode().split(":")
        if len(parts) != 4 or parts[1] != "cluster":
            return
        conn = self.connections.get(uuid.UUID(parts[2]))
        if conn is None:
            return
        envelope = json.loads(data)
        if envelope.get("kind") == "replaced":
            if envelope.get("connection") != conn.connection_id:
                del self.connections[conn.cluster_id]
                await self.pubsub.unsubscribe(channel.decode())
                await self._replace(conn)
            return
        if envelope.get("kind") == "forward":  # terminal input and resizes: nothing comes back
            frame = envelope.get("frame")
            if isinstance(frame, str):
                try:
                    await conn.websocket.send(frame)
                except ConnectionClosed:
                    pass
            return
        if envelope.get("kind") != "command":
            return
        command_id, key, frame = envelope.get("id"), envelope.get("reply_to"), envelope.get("frame")
        if not (isinstance(command_id, str) and isinstance(key, str) and isinstance(frame, str)):
            return
        conn.pending[command_id] = key
        try:
            await conn.websocket.send(frame)
        except ConnectionClosed:
            conn.pending.pop(command_id, None)
            await self._fail_pending_one(key, command_id)

    async def _fail_pending_one(self, key: str, command_id: str) -> None:
        error = protocol.Error(
            payload=protocol.ErrorPayload(
                code=protocol.ErrorCode.internal, message="the controller disconnected", of=command_id
            )
        )
        await self._push_reply(key, protocol.encode(error))

"""The gateway's server: HTTP routing (health, metrics, websocket endpoints: controllers, browser terminals) and the
lifecycle of its tasks (heartbeat flush, offline sweep, key revocation, session expiry)."""

from __future__ import annotations

import asyncio
import http
import json
import logging
import resource
import signal
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from portal.db import Database
from portal.gateway.controllers import ControllerHub
from portal.gateway.liveness import HeartbeatBuffer, Stats, flush_loop, revocation_loop, sweep_loop
from portal.gateway.sessions import expiry_loop
from portal.gateway.terminals import TerminalHub, terminal_session_id
from portal.services.recordings import RecordingStore
from portal.settings import Settings

log = logging.getLogger("kaiden.gateway")

AGENT_CONNECT_PATH = "/api/v1/agent/connect"


@dataclass(frozen=True)
class GatewayConfig:
    """Timing of the gateway's background work (seconds). Tests use fractions of a second."""

    flush_seconds: float = 1.0
    offline_after: float = 45.0  # no heartbeat for this long → offline
    sweep_seconds: float = 7.5
    key_check_seconds: float = 5.0  # how soon a rotated key disconnects a live controller
    session_sweep_seconds: float = 5.0  # how soon a session past its expiry gets its end operation
    terminal_check_seconds: float = 2.0  # how soon a browser terminal learns that its session ended

    @classmethod
    def from_settings(cls, settings: Settings) -> GatewayConfig:
        offline_after = float(settings.offline_after_heartbeats * settings.heartbeat_interval)
        return cls(
            flush_seconds=float(settings.heartbeat_flush_seconds),
            offline_after=offline_after,
            sweep_seconds=max(0.1, min(settings.heartbeat_interval / 2, offline_after / 3)),
            key_check_seconds=5.0,
        )


def _json_response(connection: ServerConnection, body: object) -> Response:
    data = json.dumps(body).encode()
    response = connection.respond(http.HTTPStatus.OK, "")
    response.body = data
    # Headers is a multi-dict: replace respond()'s text/plain and zero length rather than adding to them
    del response.headers["Content-Type"]
    del response.headers["Content-Length"]
    response.headers["Content-Type"] = "application/json"
    response.headers["Content-Length"] = str(len(data))
    return response


class Gateway:
    """One gateway: `await start(host, port)` → bound port; `await close()`."""

    def __init__(self, settings: Settings, config: GatewayConfig | None = None) -> None:
        from portal.queue import redis_url

        self.settings = settings
        self.config = config or GatewayConfig.from_settings(settings)
        self.database = Database(settings.database_url, settings.encryption_key)
        self.stats = Stats()
        self.buffer = HeartbeatBuffer(self.database, self.stats)
        recordings = RecordingStore.from_settings(settings)
        self.hub = ControllerHub(self.database, redis_url(settings), self.buffer, self.stats, recordings)
        self.terminals = TerminalHub(
            self.database,
            redis_url(settings),
            record_input=settings.session_record_input,
            state_check_seconds=self.config.terminal_check_seconds,
            recordings=recordings,
        )
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._server: Server | None = None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return _json_response(connection, {"status": "ok"})
        if path == "/metrics":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return _json_response(
                connection,
                {
                    "controllers": len(self.hub.connections),
                    "terminals": len(self.terminals.attachments),
                    "max_rss_kib": usage.ru_maxrss,
                    "rss_kib": _current_rss_kib(),
                    **self.stats.snapshot(_window(request.path)),
                },
            )
        if path == AGENT_CONNECT_PATH or terminal_session_id(path) is not None:
            return None
        return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")

    async def _handler(self, connection: ServerConnection) -> None:
        path = connection.request.path if connection.request is not None else ""
        if path.split("?", 1)[0] == AGENT_CONNECT_PATH:
            await self.hub.handle(connection)
            return
        session_id = terminal_session_id(path)
        if session_id is not None:
            await self.terminals.handle(connection, session_id)
            return
        await connection.close(code=1008, reason="unknown endpoint")

    async def start(self, host: str, port: int) -> int:
        await self.hub.start()
        await self.terminals.start()
        self._server = await serve(
            self._handler,
            host,
            port,
            process_request=self._process_request,
            max_size=2 * 1024 * 1024,
            ping_interval=20,
            ping_timeout=20,
        )
        self._tasks = [
            asyncio.create_task(flush_loop(self.buffer, self.config.flush_seconds, self._stop)),
            asyncio.create_task(
                sweep_loop(self.database, self.stats, self.config.offline_after, self.config.sweep_seconds, self._stop)
            ),
            asyncio.create_task(revocation_loop(self.hub, self.config.key_check_seconds, self._stop)),
            asyncio.create_task(
                expiry_loop(self.database, self.settings, self.config.session_sweep_seconds, self._stop)
            ),
        ]
        bound = self._server.sockets[0].getsockname()[1]
        log.info("gateway on ws://%s:%s/", host, bound)
        return bound

    async def close(self) -> None:
        """Close every connection (1001) and let their handlers finish, then Redis, a last flush, the database."""
        self._stop.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self.terminals.close()
        await self.hub.close()
        for task in self._tasks:
            await task
        await self.buffer.flush()
        self.database.dispose()


def _window(path: str) -> float | None:
    """`/metrics?window=30`: latency percentiles over the last 30 s."""
    query = parse_qs(urlsplit(path).query)
    try:
        value = float(query.get("window", [""])[0])
    except ValueError:
        return None
    return value if 0 < value < 86_400 else None


def _current_rss_kib() -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


async def serve_gateway(
    settings: Settings, host: str, port: int, stop: asyncio.Event, config: GatewayConfig | None = None
) -> None:
    gateway = Gateway(settings, config)
    await gateway.start(host, port)
    try:
        await stop.wait()
    finally:
        await gateway.close()


def run_gateway(settings: Settings, *, host: str, port: int) -> None:
    """Run until SIGINT/SIGTERM."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve_gateway(settings, host, port, stop)

    asyncio.run(main())

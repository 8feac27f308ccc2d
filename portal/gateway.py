"""The gateway process: asyncio server for long-lived connections (agents, terminals, live streams).

Today it answers health checks; the agent, terminal and stream endpoints arrive with issues C/D1/D2.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import signal

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from portal.settings import Settings

log = logging.getLogger("kaiden.gateway")


def _process_request(connection: ServerConnection, request: Request) -> Response | None:
    if request.path == "/healthz":
        body = json.dumps({"status": "ok"}).encode()
        response = connection.respond(http.HTTPStatus.OK, "")
        response.body = body
        response.headers["Content-Type"] = "application/json"
        response.headers["Content-Length"] = str(len(body))
        return response
    return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")


async def _handler(connection: ServerConnection) -> None:
    await connection.close(code=1008, reason="unknown endpoint")


async def serve_gateway(settings: Settings, host: str, port: int, stop: asyncio.Event) -> None:
    async with serve(_handler, host, port, process_request=_process_request):
        log.info("gateway on ws://%s:%s/", host, port)
        await stop.wait()


def run_gateway(settings: Settings, *, host: str, port: int) -> None:
    """Run until SIGINT/SIGTERM."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve_gateway(settings, host, port, stop)

    asyncio.run(main())

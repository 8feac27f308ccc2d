"""The gateway process: asyncio server for long-lived connections — controllers today (`/api/v1/agent/connect`),
terminals and live streams later. It talks to the rest only through the database and Redis.
"""

from __future__ import annotations

from portal.gateway.server import Gateway, GatewayConfig, run_gateway, serve_gateway

__all__ = ["Gateway", "GatewayConfig", "run_gateway", "serve_gateway"]

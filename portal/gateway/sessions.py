"""The gateway's periodic session task: end the support sessions past their `expires_at` (docs/sessions.md, "Expiry").

Like the offline sweep, any number of gateways may run it: `expire_due` creates one end operation per session.
"""

from __future__ import annotations

import asyncio
import logging

from portal.db import Database
from portal.gateway.liveness import periodically
from portal.models import utcnow
from portal.settings import Settings

log = logging.getLogger("kaiden.gateway")


async def expiry_loop(database: Database, settings: Settings, every: float, stop: asyncio.Event) -> None:
    """Every `every` seconds, queue `session.end` (reason `expired`) for the open sessions past their expiry."""
    from rq import Queue

    from portal.queue import default_queue
    from portal.services.sessions import expire_due

    queue: Queue | None = None

    def sweep() -> int:
        nonlocal queue
        if queue is None:  # made in the thread: connecting to Redis blocks
            queue = default_queue(settings)
        with database.session() as session:
            return len(expire_due(session, utcnow(), queue))

    try:
        async for ended in periodically(every, stop, sweep, "session expiry sweep"):
            if ended:
                log.info("%d support session(s) expired: end operations queued", ended)
    finally:
        if queue is not None:
            queue.connection.close()

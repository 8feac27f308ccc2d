"""The RQ worker process: forks one child per job, so each Pulumi inline program runs alone."""

from __future__ import annotations

import logging

from rq import Worker

from portal.queue import QUEUE_NAMES, connect
from portal.settings import Settings

log = logging.getLogger("kaiden.worker")


def run_worker(settings: Settings, *, burst: bool = False) -> bool:
    """Work the Kaiden queues until stopped (or until empty with `burst`). Returns RQ's result."""
    from portal.jobs import common

    common.configure(settings)  # jobs run in forked children and inherit these settings
    connection = connect(settings)
    worker = Worker(list(QUEUE_NAMES), connection=connection)
    log.info("worker %s listening on %s", worker.name, ", ".join(QUEUE_NAMES))
    return worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level.upper())

"""What every job shares: the settings the worker gave them, progress events (Redis + the operation row) and
the per-stack lock that keeps two operations off one stack.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any

import redis

from portal.db import Database
from portal.errors import ConflictError
from portal.infra import engine
from portal.models import Operation
from portal.settings import Settings, load_settings

log = logging.getLogger("kaiden.jobs")

CHANNEL = "kaiden:operation:{id}"
STACK_LOCK = "kaiden:lock:stack:{name}"

_VERBS = {
    "create": "creating",
    "update": "updating",
    "delete": "deleting",
    "replace": "replacing",
    "create-replacement": "replacing",
    "delete-replaced": "cleaning up",
    "same": "checking",
    "read": "reading",
    "refresh": "reading",
}

_settings: Settings | None = None


def configure(settings: Settings) -> None:
    """Called by the worker before it starts: jobs (in forked children) use these settings."""
    global _settings
    _settings = settings


def current_settings() -> Settings:
    return _settings if _settings is not None else load_settings()


def publish(connection: redis.Redis, operation_id: str, event_name: str, data: dict[str, Any]) -> None:
    try:
        connection.publish(CHANNEL.format(id=operation_id), json.dumps({"event": event_name, "data": data}))
    except redis.RedisError:
        log.warning("could not publish progress of operation %s", operation_id)


class Reporter:
    """Maps engine progress of one phase to the operation's 0-100 range; writes the row (throttled) and publishes."""

    def __init__(self, db: Database, connection: redis.Redis, operation_id: str) -> None:
        self.db = db
        self.connection = connection
        self.operation_id = operation_id
        self.low, self.high = 0, 100
        self.names: dict[str, str] = {}
        self.steps: list[dict[str, str]] = []
        self.progress = 0
        self.step = ""
        self._written = 0.0
        self._lock = threading.Lock()

    def phase(self, low: int, high: int, names: dict[str, str]) -> None:
        self.low, self.high, self.names = low, high, names

    def set(self, progress: int, step: str, *, done: int = 0, total: int = 0, force: bool = False) -> None:
        with self._lock:
            self.progress = max(self.progress, min(progress, 99))
            self.step = step[:255]
            publish(
                self.connection,
                self.operation_id,
                "progress",
                {"progress": self.progress, "done": done, "total": total, "step": self.step},
            )
            now = time.monotonic()
            if force or now - self._written >= 0.5:
                self._written = now
                self._write()

    def _write(self) -> None:
        try:
            with self.db.session() as session:
                operation = session.get(Operation, uuid.UUID(self.operation_id))
                if operation is not None:
                    operation.progress = self.progress
                    operation.step = self.step
        except Exception:  # progress is best effort; the final state is written separately
            log.exception("could not record progress of operation %s", self.operation_id)

    def callback(self, progress: engine.Progress) -> None:
        if progress.event not in ("resource-started", "resource-done", "resource-failed"):
            return
        logical = (progress.urn or "").rsplit("::", 1)[-1]
        kind = (progress.resource_type or "").rsplit(":", 1)[-1]
        name = self.names.get(logical, logical)
        op = progress.operation or "same"
        if progress.event == "resource-started" and progress.kind == "preview":
            self.steps.append({"op": op, "type": progress.resource_type or "", "name": name})
        verb = _VERBS.get(op, op)
        if progress.event == "resource-done":
            verb = {"creating": "created", "updating": "updated", "deleting": "deleted"}.get(verb, verb)
        if progress.event == "resource-failed":
            verb = f"failed {verb}"
        span = self.high - self.low
        percent = self.low + (span * progress.done // max(progress.total, 1))
        self.set(percent, f"{verb} {kind} {name}", done=progress.done, total=progress.total)


class StackLock:
    """A Redis lock on one stack for the length of an engine operation."""

    def __init__(self, connection: redis.Redis, stack: str, *, wait: float | None, ttl: float = 900) -> None:
        # The TTL bounds how long a killed worker's lock lingers; the engine still refuses a live Pulumi lock.
        self.lock = connection.lock(STACK_LOCK.format(name=stack), timeout=ttl, blocking_timeout=wait)
        self.wait = wait
        self.stack = stack

    def __enter__(self) -> None:
        if not self.lock.acquire(blocking=self.wait is not None):
            raise ConflictError(f"stack {self.stack} is busy with another operation", code="stack_locked")

    def __exit__(self, *_exc: object) -> None:
        try:
            self.lock.release()
        except redis.exceptions.LockError:
            pass

"""Heartbeats into the database in batches, and the periodic offline sweep (both asyncio tasks of the gateway)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

from agent.protocol import HeartbeatPayload
from portal.db import Database
from portal.models.base import utcnow
from portal.services.heartbeats import (
    ClusterUpdate,
    WriteCache,
    mark_stale_clusters_offline,
    record_cluster_updates,
)

T = TypeVar("T")

log = logging.getLogger("kaiden.gateway")

_LATENCY_WINDOW = 20_000


@dataclass
class Stats:
    """Counters and recent latencies the gateway serves on /metrics (no identifiers, counts only)."""

    heartbeats: int = 0
    frames: int = 0
    frame_errors: int = 0
    flushes: int = 0
    rows_written: int = 0
    flush_seconds_total: float = 0.0
    flush_failures: int = 0
    clusters_marked_offline: int = 0
    # (monotonic time, seconds): frame decode + dispatch; heartbeat receipt → its batch committed
    handle_latency: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))
    commit_latency: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))

    def snapshot(self, window: float | None = None) -> dict[str, object]:
        """Counters, and latency percentiles over the last `window` seconds (default: the retained samples)."""
        since = time.monotonic() - window if window else None
        return {
            "heartbeats": self.heartbeats,
            "frames": self.frames,
            "frame_errors": self.frame_errors,
            "flushes": self.flushes,
            "rows_written": self.rows_written,
            "flush_seconds_total": round(self.flush_seconds_total, 6),
            "flush_failures": self.flush_failures,
            "clusters_marked_offline": self.clusters_marked_offline,
            "handle_ms": _percentiles(self.handle_latency, since),
            "commit_ms": _percentiles(self.commit_latency, since),
        }


def _percentiles(samples: deque[tuple[float, float]], since: float | None) -> dict[str, float | int | None]:
    ordered = sorted(value for at, value in samples if since is None or at >= since)
    if not ordered:
        return {"n": 0, "p50": None, "p99": None}

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"n": len(ordered), "p50": pick(0.5), "p99": pick(0.99)}


class HeartbeatBuffer:
    """Latest news per cluster since the last flush; `flush` writes it in one transaction."""

    def __init__(self, database: Database, stats: Stats) -> None:
        self.database = database
        self.stats = stats
        self._pending: dict[uuid.UUID, ClusterUpdate] = {}
        self._cache: WriteCache = {}
        self._lock = asyncio.Lock()

    def _entry(self, cluster_id: uuid.UUID) -> ClusterUpdate:
        entry = self._pending.get(cluster_id)
        if entry is None:
            entry = self._pending[cluster_id] = ClusterUpdate(cluster_id=cluster_id, seen_at=utcnow())
        else:
            entry.seen_at = utcnow()
        return entry

    def connected(self, cluster_id: uuid.UUID, controller_version: str) -> None:
        entry = self._entry(cluster_id)
        entry.controller_version = controller_version
        self._cache.pop(cluster_id, None)  # a new connection is written in full once

    def heartbeat(self, cluster_id: uuid.UUID, payload: HeartbeatPayload, received: float) -> None:
        entry = self._entry(cluster_id)
        entry.heartbeat = payload
        entry.received.append(received)
        self.stats.heartbeats += 1

    async def flush(self) -> None:
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = list(self._pending.values()), {}
            started = time.monotonic()
            try:
                result = await asyncio.to_thread(self._write, batch)
            except Exception:
                self.stats.flush_failures += 1
                log.exception("heartbeat flush of %d clusters failed; retrying with the next flush", len(batch))
                for entry in batch:  # keep the news unless something newer arrived meanwhile
                    self._pending.setdefault(entry.cluster_id, entry)
                return
            done = time.monotonic()
            self.stats.flushes += 1
            self.stats.flush_seconds_total += done - started
            self.stats.rows_written += (
                result.clusters + result.nodes_upserted + result.nodes_marked_absent + result.nodes_touched
            )
            for entry in batch:
                for received in entry.received:
                    self.stats.commit_latency.append((done, done - received))

    def _write(self, batch: list[ClusterUpdate]):
        with self.database.session() as session:
            return record_cluster_updates(session, batch, cache=self._cache)


async def flush_loop(buffer: HeartbeatBuffer, every: float, stop: asyncio.Event) -> None:
    """Flush every `every` seconds, counted from the start of the previous flush (a slow flush is not
    followed by a full idle period: under load the gateway writes back to back)."""
    pause = every
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=pause)
        except TimeoutError:
            pass
        started = time.monotonic()
        await buffer.flush()
        pause = max(0.0, every - (time.monotonic() - started))


async def periodically(every: float, stop: asyncio.Event, work: Callable[[], T], what: str) -> AsyncIterator[T]:
    """Run blocking `work` in a thread every `every` seconds until `stop`, yielding each result; a failure is
    logged (naming `what`) and the next round goes on. The gateway's sweeps are loops over this."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=every)
            return
        except TimeoutError:
            pass
        try:
            result = await asyncio.to_thread(work)
        except Exception:
            log.exception("%s failed", what)
            continue
        yield result


async def sweep_loop(database: Database, stats: Stats, offline_after: float, every: float, stop: asyncio.Event) -> None:
    """Mark clusters offline whose last heartbeat is older than `offline_after` seconds."""

    def sweep() -> list[uuid.UUID]:
        with database.session() as session:
            return mark_stale_clusters_offline(session, utcnow() - timedelta(seconds=offline_after))

    async for flipped in periodically(every, stop, sweep, "offline sweep"):
        if flipped:
            stats.clusters_marked_offline += len(flipped)
            log.info("%d cluster(s) offline: no heartbeat for %.1f s", len(flipped), offline_after)


async def revocation_loop(hub, every: float, stop: asyncio.Event) -> None:
    """Close controllers whose API key was rotated (or whose cluster was deleted) while they were connected."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=every)
            return
        except TimeoutError:
            pass
        try:
            await hub.close_revoked()
        except Exception:
            log.exception("API key revocation check failed")

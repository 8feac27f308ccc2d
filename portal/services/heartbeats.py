"""Cluster liveness in the database: what the gateway writes for connects and heartbeats, and the offline sweep.

Written for batches: the gateway buffers what controllers send and calls `record_cluster_updates`
once per flush with every cluster heard from since the last one. Core statements (no ORM version
bump): liveness must never make a user's concurrent edit of the cluster stale.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from agent.protocol import HeartbeatPayload, NodeReport
from portal.models import AgentStatus, Cluster, ClusterStatus, Node, NodeStatus
from portal.models.base import new_id, utcnow


@dataclass
class ClusterUpdate:
    """Everything heard from one cluster since the last flush (the latest heartbeat wins)."""

    cluster_id: uuid.UUID
    seen_at: datetime
    controller_version: str | None = None
    heartbeat: HeartbeatPayload | None = None
    received: list[float] = field(default_factory=list)  # monotonic receipt times, for latency figures


@dataclass(frozen=True)
class FlushResult:
    clusters: int
    nodes_upserted: int
    nodes_marked_absent: int
    nodes_touched: int = 0  # steady nodes whose last_seen moved


def _insert_for(session: Session):
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return pg_insert
    if dialect == "sqlite":
        return sqlite_insert
    raise RuntimeError(f"heartbeats do not support {dialect}")  # pragma: no cover


def _node_row(cluster_id: uuid.UUID, report: NodeReport, seen_at: datetime) -> dict[str, Any]:
    return {
        "id": new_id(),
        "cluster_id": cluster_id,
        "name": report.name,
        "status": NodeStatus(report.status),
        "internal_ip": report.internal_ip,
        "agent_status": AgentStatus.online if report.agent_status == "online" else AgentStatus.offline,
        "agent_version": report.agent_version,
        "cpu_capacity": report.cpu_capacity,
        "memory_capacity": report.memory_capacity,
        "os_image": report.os_image,
        "kernel_version": report.kernel_version[:100] if report.kernel_version else None,
        "kubelet_version": report.kubelet_version[:50] if report.kubelet_version else None,
        "architecture": report.architecture,
        "roles": list(report.roles),
        "labels": dict(report.labels),
        "last_seen": seen_at,
        "created_at": seen_at,
        "updated_at": seen_at,
        "version": 1,
    }


_UPSERT_COLUMNS = (
    "status",
    "internal_ip",
    "agent_status",
    "agent_version",
    "cpu_capacity",
    "memory_capacity",
    "os_image",
    "kernel_version",
    "kubelet_version",
    "architecture",
    "roles",
    "labels",
    "last_seen",
    "updated_at",
)


WriteCache = dict[uuid.UUID, tuple[str, frozenset[str]]]  # cluster → (digest of last written report, node names)
_CHUNK = 1000


def _digest(heartbeat: HeartbeatPayload) -> str:
    return hashlib.sha256(heartbeat.model_dump_json().encode()).hexdigest()


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def record_cluster_updates(
    session: Session, updates: Sequence[ClusterUpdate], *, cache: WriteCache | None = None
) -> FlushResult:
    """Write a batch: clusters online with their heartbeat fields, nodes upserted by name, absent nodes
    marked unknown/agent offline.

    `cache` (kept by the caller across batches, updated in place) makes steady clusters cheap: a report
    identical to the one this caller last wrote only moves `last_heartbeat` and the nodes' `last_seen`
    (to the batch's latest receipt time), in a few set-based statements. A cluster found not online
    (the sweep flipped it meanwhile) is written in full again.
    """
    if not updates:
        return FlushResult(0, 0, 0)
    cache = cache if cache is not None else {}
    table = Cluster.__table__
    node_table = Node.__table__
    plain = [u for u in updates if u.heartbeat is None]
    beats = [u for u in updates if u.heartbeat is not None]
    digests = {u.cluster_id: _digest(u.heartbeat) for u in beats if u.heartbeat is not None}
    candidates = [u.cluster_id for u in beats if cache.get(u.cluster_id, ("",))[0] == digests[u.cluster_id]]
    flipped: set[uuid.UUID] = set()
    for part in _chunks(candidates):
        flipped.update(
            session.scalars(select(table.c.id).where(table.c.id.in_(part), table.c.status != ClusterStatus.online))
        )
    steady = [u for u in beats if u.cluster_id in set(candidates) - flipped]
    full = [u for u in beats if u.cluster_id not in set(candidates) - flipped]

    if plain:
        stmt = (
            update(table)
            .where(table.c.id == bindparam("cid"))
            .values(status=ClusterStatus.online, last_heartbeat=bindparam("seen"))
        )
        session.execute(stmt, [{"cid": u.cluster_id, "seen": u.seen_at} for u in plain])
    with_version = [u for u in updates if u.controller_version]
    if with_version:
        stmt = update(table).where(table.c.id == bindparam("cid")).values(controller_version=bindparam("cv"))
        session.execute(stmt, [{"cid": u.cluster_id, "cv": (u.controller_version or "")[:50]} for u in with_version])

    touched = 0
    if steady:
        latest = max(u.seen_at for u in steady)
        ids = [u.cluster_id for u in steady]
        for part in _chunks(ids):
            session.execute(
                update(table).where(table.c.id.in_(part)).values(status=ClusterStatus.online, last_heartbeat=latest)
            )
        pairs = [(u.cluster_id, name) for u in steady for name in sorted(cache[u.cluster_id][1])]
        for part in _chunks(pairs):
            touched += (
                session.execute(
                    update(node_table)
                    .where(tuple_(node_table.c.cluster_id, node_table.c.name).in_(part))
                    .values(last_seen=latest)
                ).rowcount
                or 0
            )

    if full:
        stmt = (
            update(table)
            .where(table.c.id == bindparam("cid"))
            .values(
                status=ClusterStatus.online,
                last_heartbeat=bindparam("seen"),
                k8s_version=bindparam("k8s"),
                node_count=bindparam("count"),
            )
        )
        params = []
        for u in full:
            assert u.heartbeat is not None
            version = u.heartbeat.k8s_version
            params.append(
                {
                    "cid": u.cluster_id,
                    "seen": u.seen_at,
                    "k8s": version[:50] if version else None,
                    "count": len(u.heartbeat.nodes),
                }
            )
        session.execute(stmt, params)
    rows: list[dict[str, Any]] = []
    for u in full:
        assert u.heartbeat is not None
        seen_names: set[str] = set()
        for report in u.heartbeat.nodes:
            if report.name not in seen_names:  # a duplicate name in one report: first wins
                seen_names.add(report.name)
                rows.append(_node_row(u.cluster_id, report, u.seen_at))
    if rows:
        # executemany of one cached statement: SQLAlchemy batches it ("insertmanyvalues") without
        # compiling a new multi-row statement per batch size
        stmt = _insert_for(session)(node_table)
        stmt = stmt.on_conflict_do_update(
            index_elements=["cluster_id", "name"], set_={c: stmt.excluded[c] for c in _UPSERT_COLUMNS}
        )
        session.execute(stmt, rows)
    # nodes absent from a report: only clusters whose node set changed since this caller last wrote it
    changed: dict[uuid.UUID, frozenset[str]] = {}
    for u in full:
        assert u.heartbeat is not None
        names = frozenset(n.name for n in u.heartbeat.nodes)
        if cache.get(u.cluster_id, ("", None))[1] != names:
            changed[u.cluster_id] = names
        cache[u.cluster_id] = (digests[u.cluster_id], names)
    absent = 0
    if changed:
        stored = session.execute(
            select(node_table.c.id, node_table.c.cluster_id, node_table.c.name).where(
                node_table.c.cluster_id.in_(list(changed)),
                or_(node_table.c.status != NodeStatus.unknown, node_table.c.agent_status != AgentStatus.offline),
            )
        )
        gone = [row[0] for row in stored if row[2] not in changed[row[1]]]
        for part in _chunks(gone):
            absent += (
                session.execute(
                    update(node_table)
                    .where(node_table.c.id.in_(part))
                    .values(status=NodeStatus.unknown, agent_status=AgentStatus.offline, updated_at=utcnow())
                ).rowcount
                or 0
            )
    return FlushResult(len(updates), len(rows), absent, touched)


def mark_stale_clusters_offline(session: Session, cutoff: datetime) -> list[uuid.UUID]:
    """Flip `online` clusters whose last heartbeat is older than `cutoff` to `offline` (their agents too).

    One idempotent statement each, so several gateways may sweep at once. Returns the clusters flipped.
    """
    table = Cluster.__table__
    stale = or_(table.c.last_heartbeat.is_(None), table.c.last_heartbeat < cutoff)
    ids = list(session.scalars(select(table.c.id).where(table.c.status == ClusterStatus.online, stale)))
    if not ids:
        return []
    session.execute(
        update(table)
        .where(table.c.id.in_(ids), table.c.status == ClusterStatus.online, stale)
        .values(status=ClusterStatus.offline)
    )
    node_table = Node.__table__
    session.execute(
        update(node_table)
        .where(and_(node_table.c.cluster_id.in_(ids), node_table.c.agent_status == AgentStatus.online))
        .values(agent_status=AgentStatus.offline)
    )
    return ids


def cluster_key_matches(session: Session, cluster_id: uuid.UUID, key: str) -> tuple[bool, bool]:
    """For the gateway's handshake: `(cluster exists, key is its current key)`."""
    from portal.services.clusters import authenticate_cluster_key

    exists = session.scalar(select(Cluster.__table__.c.id).where(Cluster.__table__.c.id == cluster_id)) is not None
    if not exists:
        return False, False
    found = authenticate_cluster_key(session, key)
    return True, found is not None and found.id == cluster_id


def current_key_hashes(session: Session, ids: Iterable[uuid.UUID], chunk: int = 1000) -> dict[uuid.UUID, str]:
    """Cluster id → hash of its current API key (deleted clusters are absent), for the gateway's revocation check."""
    table = Cluster.__table__
    wanted = list(ids)
    found: dict[uuid.UUID, str] = {}
    for start in range(0, len(wanted), chunk):
        part = wanted[start : start + chunk]
        found.update(
            (row[0], row[1])
            for row in session.execute(select(table.c.id, table.c.api_key_hash).where(table.c.id.in_(part)))
        )
    return found

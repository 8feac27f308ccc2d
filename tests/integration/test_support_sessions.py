"""Support sessions end to end in relay mode (docs/sessions.md), every part real: the REST API, RQ burst workers
(subprocesses) running the session jobs, the gateway, a kwok customer cluster read by `python -m agent.controller`
and one `python -m agent.agent` process per node running /bin/sh on a PTY, the recording store.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import time
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from portal import database_of
from portal.gateway import GatewayConfig
from portal.models import (
    AgentStatus,
    ClusterStatus,
    NodeStatus,
    Operation,
    SupportSession,
    TicketComment,
    utcnow,
)
from tests.d1_support import cluster_row, free_port, wait_until
from tests.factories import make_api_token, make_cluster, make_engineer, make_ticket, make_user
from tests.support import run_workers

pytestmark = pytest.mark.integration

TIMEOUT = 30  # seconds for anything to show up on a loaded machine


@pytest.fixture()
def gateway_config() -> GatewayConfig:
    # processes reading a real API server: 1 s heartbeats, offline after 5 missed; expiry checked often
    return dataclasses.replace(
        GatewayConfig(flush_seconds=0.2, offline_after=5.0, sweep_seconds=0.2), session_sweep_seconds=0.3
    )


@dataclasses.dataclass
class World:
    client: object
    headers: dict[str, dict[str, str]]
    cluster_id: str
    ticket_id: str
    nodes: dict[str, str]  # node name → node id


@pytest.fixture()
def world(app, settings, gateway, customer_cluster, processes) -> World:
    kc = customer_cluster(nodes=2)
    with database_of(app).session() as db:
        cluster = make_cluster(db)
        engineer, other = make_engineer(db), make_engineer(db)
        customer_user = make_user(db, customer=cluster.customer)
        ticket = make_ticket(db, cluster=cluster, assigned_to_id=engineer.id, created_by=customer_user)
        tokens = {
            "engineer": make_api_token(db, engineer)[1],
            "other": make_api_token(db, other)[1],
            "customer": make_api_token(db, customer_user)[1],
        }
        db.commit()
        cluster_id, key, ticket_id = str(cluster.id), cluster.plain_api_key, str(ticket.id)
    port = free_port()
    processes.controller(
        {
            "CLUSTER_ID": cluster_id,
            "API_KEY": key,
            "CLOUD_ENDPOINT": gateway.url,
            "HEARTBEAT_INTERVAL": "1",
            "CONTROLLER_LISTEN": f"127.0.0.1:{port}",
            "KUBECONFIG": str(kc.kubeconfig),
        }
    )
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(config_file=str(kc.kubeconfig)))
    names = sorted(n.metadata.name for n in core.list_node().items)
    for name in names:
        processes.agent(
            {
                "NODE_NAME": name,
                "CONTROLLER_URL": f"ws://127.0.0.1:{port}/agent",
                "API_KEY": key,
                "HOST_ROOT": "/nonexistent-host-root",
                "SESSION_SHELL": "/bin/sh",
                "RECORDING_CHUNK_SECONDS": "0.3",
            },
            name,
        )

    def online() -> bool:
        row = cluster_row(app, cluster_id)
        return (
            row.status == ClusterStatus.online
            and len(row.nodes) == len(names)
            and all(n.status == NodeStatus.ready and n.agent_status == AgentStatus.online for n in row.nodes)
        )

    wait_until(online, 60, "cluster online with ready nodes and their agents")
    nodes = {n.name: str(n.id) for n in cluster_row(app, cluster_id).nodes}
    headers = {role: {"Authorization": f"Bearer {token}"} for role, token in tokens.items()}
    return World(app.test_client(), headers, cluster_id, ticket_id, nodes)


def _session(app, session_id: str) -> SupportSession:
    with database_of(app).session() as db:
        row = db.get(SupportSession, uuid.UUID(session_id))
        assert row is not None
        db.expunge(row)
        return row


def _system_comments(app, ticket_id: str) -> list[str]:
    with database_of(app).session() as db:
        rows = db.query(TicketComment).filter_by(ticket_id=uuid.UUID(ticket_id)).order_by(TicketComment.created_at)
        return [c.content for c in rows if c.author_type == "system"]


def _start(world: World, node_name: str, **body) -> dict:
    response = world.client.post(
        f"/api/v1/tickets/{world.ticket_id}/sessions",
        json={"node_id": world.nodes[node_name], "services": ["ssh"], **body},
        headers=world.headers["engineer"],
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def _read_until(ws, pattern: bytes, what: str) -> bytes:
    seen = b""
    deadline = time.monotonic() + TIMEOUT
    while not re.search(pattern, seen):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {what}; got {seen[-300:]!r}")
        try:
            frame = ws.recv(timeout=left)
        except TimeoutError:
            continue
        if isinstance(frame, bytes):
            seen += frame
    return seen


def test_a_relay_session_from_the_api_to_the_recording(app, settings, gateway, world: World) -> None:
    node = sorted(world.nodes)[0]
    # only the assigned engineer (or an admin) starts one
    refused = world.client.post(
        f"/api/v1/tickets/{world.ticket_id}/sessions",
        json={"node_id": world.nodes[node], "services": ["ssh"]},
        headers=world.headers["other"],
    )
    assert refused.status_code == 403
    started = _start(world, node, duration_minutes=30)
    session_id = started["session"]["id"]
    assert started["session"]["state"] == "requested" and started["operation"]["kind"] == "session.start"

    run_workers(settings)  # the start job pings the node's agent through Redis, gateway and controller
    row = _session(app, session_id)
    assert row.state == "active" and row.started_at is not None, row.error_message
    assert any("started" in text for text in _system_comments(app, world.ticket_id))
    # the customer sees that a session is live on their ticket
    listed = world.client.get(f"/api/v1/sessions?ticket_id={world.ticket_id}", headers=world.headers["customer"])
    assert [s["state"] for s in listed.get_json()["items"]] == ["active"]

    # a second engineer cannot attach; the session's engineer gets a one-use ticket
    assert (
        world.client.post(f"/api/v1/sessions/{session_id}/attach", json={}, headers=world.headers["other"]).status_code
        == 403
    )
    attach = world.client.post(
        f"/api/v1/sessions/{session_id}/attach", json={"cols": 100, "rows": 30}, headers=world.headers["engineer"]
    )
    assert attach.status_code == 201
    parts = urlsplit(attach.get_json()["url"])
    number = random.randint(10_000, 99_999)
    with connect(f"{gateway.url}{parts.path}?{parts.query}", open_timeout=TIMEOUT) as ws:
        assert json.loads(ws.recv(timeout=TIMEOUT)) == {"type": "ready"}
        ws.send(f"echo kaiden-$(({number} + 1))\n".encode())
        _read_until(ws, rf"kaiden-{number + 1}\r?\n".encode(), "the shell's echo")
        ws.send(json.dumps({"type": "resize", "cols": 91, "rows": 37}))
        ws.send(b"stty size\n")
        _read_until(ws, rb"(?<!\d)37 91\r?\n", "the resized terminal")

        ended = world.client.delete(f"/api/v1/sessions/{session_id}", headers=world.headers["engineer"])
        assert ended.status_code == 202 and ended.get_json()["operation"]["kind"] == "session.end"
        run_workers(settings)  # the end job closes the PTY; the agent sends its last recording chunk
        # the browser is told and the connection closes
        with pytest.raises(ConnectionClosed):
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:
                ws.recv(timeout=TIMEOUT)

    row = _session(app, session_id)
    assert row.state == "ended" and row.ended_at is not None and row.end_reason
    assert row.recording_url == f"/api/v1/sessions/{session_id}/recording"
    ending = [text for text in _system_comments(app, world.ticket_id) if "ended" in text]
    assert ending and "recording" in ending[-1]

    # the recording: asciicast v2 with the shell's output, for the ticket's parties only
    recording = world.client.get(row.recording_url, headers=world.headers["customer"])
    assert recording.status_code == 200 and recording.mimetype == "application/x-asciicast"
    lines = recording.get_data(as_text=True).splitlines()
    assert json.loads(lines[0])["version"] == 2
    output = "".join(event[2] for event in map(json.loads, lines[1:]) if event[1] == "o")
    assert f"kaiden-{number + 1}" in output
    assert world.client.get(row.recording_url, headers=world.headers["other"]).status_code == 403
    assert world.client.delete(f"/api/v1/sessions/{session_id}", headers=world.headers["engineer"]).status_code == 409


def test_an_expired_session_ends_on_its_own(app, settings, gateway, world: World) -> None:
    node = sorted(world.nodes)[-1]
    session_id = _start(world, node, duration_minutes=5)["session"]["id"]
    run_workers(settings)
    assert _session(app, session_id).state == "active"
    with database_of(app).session() as db:  # five minutes later, as far as the session knows
        db.get(SupportSession, uuid.UUID(session_id)).expires_at = utcnow() - timedelta(seconds=1)
        db.commit()

    def end_queued() -> bool:
        return _session(app, session_id).state in ("ending", "ended") or _queued_end(app, session_id)

    wait_until(end_queued, TIMEOUT, "the gateway's expiry task queued the end")
    run_workers(settings)
    row = _session(app, session_id)
    assert row.state == "ended" and row.end_reason == "expired"
    assert any("expired" in text for text in _system_comments(app, world.ticket_id))


def _queued_end(app, session_id: str) -> bool:
    with database_of(app).session() as db:
        found = db.query(Operation).filter_by(target_id=uuid.UUID(session_id), kind="session.end").first()
        return found is not None

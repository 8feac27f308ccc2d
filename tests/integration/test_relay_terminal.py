"""Relay terminals end to end (docs/sessions.md, "Attaching a terminal", "Recording", "Expiry"): a browser client
on the gateway's terminal endpoint, the real gateway, controller and agent (SESSION_SHELL=/bin/sh, a real PTY),
attach tickets placed in Redis as the contract says, recordings in the store, the expiry task.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import random
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from rq.job import Job
from sqlalchemy import select
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from agent import protocol
from agent.agent import Agent, AgentConfig
from portal import database_of, redis_of
from portal.models import Operation, SessionState, SupportSession, utcnow
from portal.services.cluster_commands import send_command
from portal.services.recordings import RecordingStore
from tests.d1_support import FAST, Running, RuntimeKit, wait_until
from tests.factories import make_cluster, make_engineer, make_node, make_session, make_ticket

pytestmark = pytest.mark.integration

TIMEOUT = 20  # seconds for anything to show up on a loaded machine


@pytest.fixture()
def gateway_config():
    return dataclasses.replace(FAST, session_sweep_seconds=0.2, terminal_check_seconds=0.2)


@dataclasses.dataclass
class Setup:
    cluster_id: str
    key: str
    session_id: str
    engineer_id: str
    node_name: str


def _setup(app, *, state: SessionState = SessionState.active, **session_fields) -> Setup:
    with database_of(app).session() as db:
        cluster = make_cluster(db)
        node = make_node(db, cluster, name=f"node-{uuid.uuid4().hex[:6]}")
        ticket = make_ticket(db, cluster=cluster)
        engineer = make_engineer(db)
        row = make_session(db, ticket, node, engineer, state=state, **session_fields)
        return Setup(str(cluster.id), cluster.plain_api_key, str(row.id), str(engineer.id), node.name)


def _start_runtime(runtime: RuntimeKit, setup: Setup, *, agent: bool = True) -> tuple[Running, Running | None]:
    """The real controller and agent code as tasks (returned); the agent's sessions run /bin/sh, recordings chunk
    fast."""
    controller = runtime.controller(setup.cluster_id, setup.key)
    started = _start_agent(runtime, controller, setup) if agent else None
    wait_until(
        lambda: uuid.UUID(setup.cluster_id) in runtime.gateway.gateway.hub.connections, TIMEOUT, "controller connected"
    )
    return controller, started


def _start_agent(runtime: RuntimeKit, controller: Running, setup: Setup) -> Running:
    config = AgentConfig(
        node_name=setup.node_name,
        controller_url=f"ws://127.0.0.1:{controller.obj.listen_port}/agent",
        api_key=setup.key,
        host_root=Path("/"),
        facts_interval=5,
        session_shell="/bin/sh",
        recording_chunk_seconds=0.2,
    )

    async def make() -> Running:
        started = Agent(config)
        stop = asyncio.Event()
        return Running(started, stop, runtime.loop.spawn(started.run(stop)), runtime.loop)

    running = runtime.loop.run(make())
    runtime.running.append(running)
    wait_until(lambda: running.obj.connected.is_set(), TIMEOUT, "agent connected")
    return running


def _ticket(app, setup: Setup, *, session_id: str | None = None, user_id: str | None = None) -> str:
    """A ticket placed as the portal does: `kaiden:attach:<sha256(ticket)>` → the grant, for 60 s."""
    ticket = secrets.token_urlsafe(32)
    grant = {
        "session_id": session_id or setup.session_id,
        "user_id": user_id or setup.engineer_id,
        "cols": 80,
        "rows": 24,
    }
    redis_of(app).set(f"kaiden:attach:{hashlib.sha256(ticket.encode()).hexdigest()}", json.dumps(grant), ex=60)
    return ticket


def _connect(gateway, session_id: str, query: str) -> ClientConnection:
    return connect(f"{gateway.url}/api/v1/sessions/{session_id}/terminal?{query}", open_timeout=TIMEOUT)


def _closed_with(ws: ClientConnection) -> tuple[int | None, str]:
    deadline = time.monotonic() + TIMEOUT
    with pytest.raises(ConnectionClosed) as caught:
        while time.monotonic() < deadline:
            ws.recv(timeout=TIMEOUT)  # anything before the close is skipped
    rcvd = caught.value.rcvd
    return (rcvd.code, rcvd.reason) if rcvd else (None, "")


class Browser:
    """What the portal's terminal page does, minus the drawing: output bytes collected, control messages kept."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.output = b""
        self.messages: list[dict] = []

    def _take(self, timeout: float) -> None:
        frame = self.ws.recv(timeout=timeout)
        if isinstance(frame, bytes):
            self.output += frame
        else:
            self.messages.append(json.loads(frame))

    def wait_output(self, pattern: str, what: str) -> re.Match[bytes]:
        deadline = time.monotonic() + TIMEOUT
        while True:
            match = re.search(pattern.encode(), self.output)
            if match:
                return match
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; output so far: {self.output[-400:]!r}")
            try:
                self._take(left)
            except TimeoutError:
                continue

    def wait_message(self, kind: str) -> dict:
        deadline = time.monotonic() + TIMEOUT
        while True:
            for message in self.messages:
                if message.get("type") == kind:
                    self.messages.remove(message)
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for a {kind!r} message; got {self.messages}")
            try:
                self._take(left)
            except TimeoutError:
                continue

    def type(self, text: str) -> None:
        self.ws.send(text.encode())


@contextlib.contextmanager
def _attached(app, gateway, setup: Setup, query: str = "") -> Iterator[Browser]:
    with _connect(gateway, setup.session_id, f"ticket={_ticket(app, setup)}{query}") as ws:
        ready = json.loads(ws.recv(timeout=TIMEOUT))  # the first frame, before any output
        assert ready == {"type": "ready"}
        yield Browser(ws)


def _row(app, session_id: str) -> SupportSession:
    with database_of(app).session() as db:
        row = db.get(SupportSession, uuid.UUID(session_id))
        assert row is not None
        return row


def _set(app, session_id: str, **fields) -> None:
    with database_of(app).session() as db:
        row = db.get(SupportSession, uuid.UUID(session_id))
        for name, value in fields.items():
            setattr(row, name, value)


# ---------------------------------------------------------------- the terminal


def test_typing_reaches_the_shell_and_output_comes_back_resized_and_reopened(app, runtime) -> None:
    setup = _setup(app)
    _start_runtime(runtime, setup)
    with _attached(app, runtime.gateway, setup, "&cols=100&rows=30") as browser:
        number = random.randint(10_000, 99_999)
        # the shell prints the sum, the PTY echoes the expression: only a real shell makes the number
        browser.type(f"echo kaiden-$(({number} + 1))\n")
        browser.wait_output(rf"kaiden-{number + 1}\r?\n", "the echo of the shell")
        browser.type("stty size\n")
        browser.wait_output(r"(?<!\d)30 100\r?\n", "the size the attach asked for")
        assert runtime.gateway.gateway.terminals.attachments  # counted on /metrics too

        browser.ws.send(json.dumps({"type": "resize", "cols": 91, "rows": 37}))
        browser.ws.send(json.dumps({"type": "input", "data": "stty size\n"}))  # input as a text frame
        browser.wait_output(r"(?<!\d)37 91\r?\n", "the resized terminal")

        browser.type("exit\n")
        assert browser.wait_message("exit")["reason"] == "exited"
        browser.output = b""
        browser.type("echo again-$((2 * 21))\n")  # any input after an exit opens a new shell
        browser.wait_output(r"again-42\r?\n", "a new shell after exit")
        browser.type("stty size\n")
        browser.wait_output(r"(?<!\d)37 91\r?\n", "the new shell has the last size")


def test_a_second_browser_reattaches_to_the_same_shell(app, runtime) -> None:
    setup = _setup(app)
    _start_runtime(runtime, setup)
    with _attached(app, runtime.gateway, setup) as first:
        first.type("KAIDEN_MARK=m$((6 * 7)); echo set-$KAIDEN_MARK\n")
        first.wait_output(r"set-m42\r?\n", "the assignment")
    # a reload: the PTY lives on
    with _attached(app, runtime.gateway, setup) as second:
        second.type('echo "mark=$KAIDEN_MARK"\n')
        second.wait_output(r"mark=m42\r?\n", "the variable set from the first browser")


# ---------------------------------------------------------------- refusals


def test_missing_used_wrong_and_foreign_tickets_are_4001(app, runtime) -> None:
    setup = _setup(app)
    _start_runtime(runtime, setup, agent=False)
    gateway = runtime.gateway
    with _connect(gateway, setup.session_id, "") as ws:
        assert _closed_with(ws) == (4001, "ticket missing")
    with _connect(gateway, setup.session_id, f"ticket={secrets.token_urlsafe(32)}") as ws:
        assert _closed_with(ws) == (4001, "ticket unknown, used or expired")
    other = _setup(app)
    foreign = _ticket(app, setup, session_id=other.session_id)
    with _connect(gateway, setup.session_id, f"ticket={foreign}") as ws:
        assert _closed_with(ws) == (4001, "ticket for another session")
    with _connect(gateway, other.session_id, f"ticket={foreign}") as ws:  # it was used up by the try above
        assert _closed_with(ws)[0] == 4001
    assert redis_of(app).keys("kaiden:attach:*") == []  # every ticket shown was consumed


def test_a_used_ticket_is_4001(app, runtime) -> None:
    setup = _setup(app)
    _start_runtime(runtime, setup)
    ticket = _ticket(app, setup)
    with _connect(runtime.gateway, setup.session_id, f"ticket={ticket}") as ws:
        assert json.loads(ws.recv(timeout=TIMEOUT)) == {"type": "ready"}
    with _connect(runtime.gateway, setup.session_id, f"ticket={ticket}") as ws:
        assert _closed_with(ws) == (4001, "ticket unknown, used or expired")


def test_another_users_ticket_and_inactive_sessions_are_4003(app, runtime) -> None:
    setup = _setup(app)
    _start_runtime(runtime, setup, agent=False)
    with database_of(app).session() as db:
        other_engineer = str(make_engineer(db).id)
    ticket = _ticket(app, setup, user_id=other_engineer)
    with _connect(runtime.gateway, setup.session_id, f"ticket={ticket}") as ws:
        assert _closed_with(ws) == (4003, "not your session")
    for state in (SessionState.requested, SessionState.ending, SessionState.ended):
        _set(app, setup.session_id, state=state)
        with _connect(runtime.gateway, setup.session_id, f"ticket={_ticket(app, setup)}") as ws:
            assert _closed_with(ws) == (4003, f"session not active ({state.value})")
    missing = str(uuid.uuid4())
    with _connect(runtime.gateway, missing, f"ticket={_ticket(app, setup, session_id=missing)}") as ws:
        assert _closed_with(ws)[0] == 4003


def test_no_agent_or_no_controller_is_4504_with_the_reason(app, runtime) -> None:
    setup = _setup(app)
    with _connect(runtime.gateway, setup.session_id, f"ticket={_ticket(app, setup)}") as ws:
        assert _closed_with(ws) == (4504, "the cluster's controller is not connected")
    _start_runtime(runtime, setup, agent=False)
    with _connect(runtime.gateway, setup.session_id, f"ticket={_ticket(app, setup)}") as ws:
        assert _closed_with(ws) == (4504, f"no agent connected on node {setup.node_name}")


def test_other_session_paths_are_404_at_the_handshake(gateway) -> None:
    for path in (
        "/api/v1/sessions/not-a-uuid/terminal",
        f"/api/v1/sessions/{uuid.uuid4()}/terminals",
        f"/api/v1/sessions/{uuid.uuid4()}",
    ):
        with pytest.raises(InvalidStatus) as caught:
            connect(f"{gateway.url}{path}?ticket=x", open_timeout=TIMEOUT)
        assert caught.value.response.status_code == 404


# ---------------------------------------------------------------- recording and the end of a session


def test_an_agent_restarted_mid_session_continues_the_same_recording(app, settings, runtime) -> None:
    """The new agent knows nothing of the session: terminal_open tells it where the cloud's recording stands, so
    the shell after the restart is recorded too, in the same asciicast (one header, times going on)."""
    setup = _setup(app, started_at=utcnow())
    controller, first = _start_runtime(runtime, setup)
    assert first is not None
    store = RecordingStore.from_settings(settings)
    with _attached(app, runtime.gateway, setup) as browser:
        browser.type("echo part-$((1 + 1000))\n")
        browser.wait_output(r"part-1001\r?\n", "the first shell's echo")
        wait_until(lambda: store.has(setup.session_id), TIMEOUT, "the first agent's chunks in the store")
    first.stop()
    before = store.chunks(setup.session_id)
    _start_agent(runtime, controller, setup)
    wait_until(lambda: setup.node_name in _live_agents(controller), TIMEOUT, "the new agent at the controller")
    with _attached(app, runtime.gateway, setup) as browser:
        browser.type("echo part-$((2 + 1000))\n")
        browser.wait_output(r"part-1002\r?\n", "the new shell's echo")
        close = protocol.TerminalClose(payload=protocol.TerminalClosePayload(session_id=setup.session_id))
        assert isinstance(send_command(redis_of(app), setup.cluster_id, close, timeout=TIMEOUT), protocol.Ack)
        wait_until(lambda: _row(app, setup.session_id).recording_url is not None, TIMEOUT, "the final chunk")
    chunks = store.chunks(setup.session_id)
    assert chunks[: len(before)] == before and len(chunks) > len(before)  # continued, nothing overwritten
    assert chunks == list(range(len(chunks)))
    lines = store.read(setup.session_id).decode().splitlines()
    assert json.loads(lines[0])["version"] == 2
    events = [json.loads(line) for line in lines[1:]]
    assert all(isinstance(event, list) for event in events)  # exactly one header
    times = [event[0] for event in events]
    assert times == sorted(times)
    output = "".join(text for _, code, text in events if code == "o")
    assert "part-1001" in output and "part-1002" in output


def _live_agents(controller: Running) -> set[str]:
    return {name for name, state in controller.obj.agents.items() if state.link is not None}


def test_recording_chunks_land_in_the_store_and_the_final_one_sets_the_url(app, settings, runtime) -> None:
    setup = _setup(app)
    _start_runtime(runtime, setup)
    number = random.randint(10_000, 99_999)
    store = RecordingStore.from_settings(settings)
    with _attached(app, runtime.gateway, setup) as browser:
        browser.type(f"echo rec-$(({number} * 3))\n")
        browser.wait_output(rf"rec-{number * 3}\r?\n", "the echo")
        wait_until(lambda: store.has(setup.session_id), TIMEOUT, "a first chunk in the store")
        assert _row(app, setup.session_id).recording_url is None  # not before the final chunk

        close = protocol.TerminalClose(payload=protocol.TerminalClosePayload(session_id=setup.session_id))
        reply = send_command(redis_of(app), setup.cluster_id, close, timeout=TIMEOUT)
        assert isinstance(reply, protocol.Ack)
        wait_until(lambda: _row(app, setup.session_id).recording_url is not None, TIMEOUT, "recording_url set")
        row = _row(app, setup.session_id)
        assert row.recording_url == f"/api/v1/sessions/{setup.session_id}/recording"
        assert row.recording_path == f"{settings.recordings_location}/{setup.session_id}"

        recording = store.read(setup.session_id).decode()
        lines = recording.splitlines()
        header = json.loads(lines[0])
        assert header["version"] == 2 and header["title"] == f"kaiden session {setup.session_id}"
        events = [json.loads(line) for line in lines[1:]]
        output = "".join(text for _, code, text in events if code == "o")
        assert f"rec-{number * 3}" in output
        assert store.chunks(setup.session_id) == list(range(len(store.chunks(setup.session_id))))  # no gaps

        # the end job marks the session ended; the browser is told within the state check
        _set(app, setup.session_id, state=SessionState.ended, end_reason="ended_by_user")
        assert browser.wait_message("closed")["reason"] == "ended_by_user"
        assert _closed_with(browser.ws) == (1000, "session ended")


def test_another_clusters_controller_cannot_write_into_a_session(app, runtime) -> None:
    victim = _setup(app)
    intruder = _setup(app)
    _start_runtime(runtime, victim)
    stats = runtime.gateway.gateway.stats
    forged = [
        protocol.TerminalData(
            payload=protocol.TerminalDataPayload(session_id=victim.session_id, data="Zm9yZ2VkLW91dHB1dA==")
        ),
        protocol.RecordingChunk(
            payload=protocol.RecordingChunkPayload(session_id=victim.session_id, seq=99, data="x\n", final=True)
        ),
    ]
    hello = protocol.Hello(
        payload=protocol.HelloPayload(role="controller", protocol_versions=[1], software_version="intruder")
    )
    headers = {"Authorization": f"Bearer {intruder.key}", "X-Kaiden-Cluster-Id": intruder.cluster_id}
    with _attached(app, runtime.gateway, victim) as browser:
        with connect(f"{runtime.gateway.url}/api/v1/agent/connect", additional_headers=headers) as rogue:
            before = stats.frame_errors
            rogue.send(protocol.encode(hello))  # a controller with its own cluster's valid key
            for message in forged:
                rogue.send(protocol.encode(message))
            wait_until(lambda: stats.frame_errors >= before + 2, TIMEOUT, "the forged frames refused")
        browser.type("echo fine-$((1 + 1))\n")
        browser.wait_output(r"fine-2\r?\n", "the victim's own output")
        assert b"forged-output" not in browser.output
    assert 99 not in RecordingStore.from_settings(runtime.gateway.gateway.settings).chunks(victim.session_id)
    assert _row(app, victim.session_id).recording_url is None


def test_the_expiry_task_ends_due_sessions_and_their_terminals_close(app, runtime) -> None:
    setup = _setup(app, expires_at=utcnow() + timedelta(hours=1))
    _start_runtime(runtime, setup)
    with _attached(app, runtime.gateway, setup) as browser:
        _set(app, setup.session_id, expires_at=utcnow() - timedelta(seconds=1))
        wait_until(lambda: _row(app, setup.session_id).state == SessionState.ending, TIMEOUT, "the session ending")
        assert browser.wait_message("closed")["reason"] == "expired"
    with database_of(app).session() as db:
        operations = db.scalars(select(Operation).where(Operation.target_id == uuid.UUID(setup.session_id))).all()
    assert [o.kind for o in operations] == ["session.end"]  # one end operation, however many sweeps saw it
    assert operations[0].params["reason"] == "expired"
    Job.fetch(operations[0].rq_job_id, connection=redis_of(app)).delete()  # no worker here: leave no job behind

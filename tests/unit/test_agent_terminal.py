"""The agent's support-session terminals: real PTYs running /bin/sh, their recordings (asciicast v2 chunks), the
agent's command handling, and one run through the real controller and agent behind a stand-in gateway."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import re
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from agent import protocol
from agent.agent import Agent, AgentConfig, Outbox
from agent.controller import Controller, ControllerConfig
from agent.recording import CHUNK_BYTES, MAX_LINE_BYTES, Recorder
from agent.terminal import (
    SessionNotFound,
    ShellCommand,
    TerminalError,
    TerminalManager,
    in_host_namespaces,
    shell_command,
    shell_environment,
)
from tests.support import eventually
from tests.support import run_async as run

TIMEOUT = 30.0  # generous: a loaded 2-core machine
SH = ShellCommand(("/bin/sh", "-l"), "/bin/sh", False)


class Wire:
    """An outbox delivering into a list, as the agent's websocket would."""

    def __init__(self, outbox: Outbox | None = None) -> None:
        self.outbox = outbox if outbox is not None else Outbox()
        self.outbox.online = True
        self.frames: list[protocol._Message] = []
        self._task: asyncio.Task[None] | None = None

    async def _send(self, text: str) -> None:
        self.frames.append(protocol.decode(text))  # every frame is valid on the wire

    def start(self) -> Wire:
        self._task = asyncio.get_running_loop().create_task(self.outbox.deliver(self._send))
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def of(self, kind: type[protocol._Message], session_id: str | None = None) -> list[Any]:
        return [
            f for f in self.frames if isinstance(f, kind) and (session_id is None or f.payload.session_id == session_id)
        ]

    def output(self, session_id: str) -> bytes:
        return b"".join(f.payload.raw() for f in self.of(protocol.TerminalData, session_id))

    async def settle(self) -> None:
        """Until everything queued so far was delivered."""
        await asyncio.wait_for(self.outbox.wait_empty(), TIMEOUT)

    async def wait_output(self, session_id: str, needle: bytes) -> None:
        await eventually(lambda: needle in self.output(session_id), f"{needle!r} in the output")

    def recording(self, session_id: str) -> str:
        chunks = self.of(protocol.RecordingChunk, session_id)
        assert [c.payload.seq for c in chunks] == list(range(len(chunks)))
        return "".join(c.payload.data for c in chunks)


def marker() -> tuple[bytes, bytes]:
    """A command whose output differs from its echo: the shell computes part of it."""
    n = random.randrange(10**6, 10**7)
    return f"echo kaiden-{n}-$((6*7))\n".encode(), f"kaiden-{n}-42".encode()


def parse_cast(text: str) -> tuple[dict[str, Any], list[list[Any]]]:
    assert text.endswith("\n")
    lines = [json.loads(line) for line in text.splitlines()]
    header, events = lines[0], lines[1:]
    assert isinstance(header, dict) and header["version"] == 2
    assert all(isinstance(e, list) and len(e) == 3 and isinstance(e[0], float | int) for e in events)
    assert [e[0] for e in events] == sorted(e[0] for e in events)
    return header, events


def texts(events: list[list[Any]], code: str) -> str:
    return "".join(e[2] for e in events if e[1] == code)


# ---------------------------------------------------------------- PTY sessions


def test_shell_echoes_input_and_follows_resizes() -> None:
    async def scenario() -> None:
        wire = Wire().start()
        terminals = TerminalManager(wire.outbox, command=lambda: SH)
        try:
            assert terminals.open("s1", 80, 24) is True
            command, expected = marker()
            terminals.write("s1", command)
            await wire.wait_output("s1", expected)
            terminals.write("s1", b"stty size\n")
            await wire.wait_output("s1", b"24 80")
            terminals.resize("s1", 100, 30)
            terminals.write("s1", b"stty size; echo TERM=$TERM KAIDEN_SESSION_ID=$KAIDEN_SESSION_ID\n")
            await wire.wait_output("s1", b"30 100")
            await wire.wait_output("s1", b"TERM=xterm-256color KAIDEN_SESSION_ID=s1")
            assert all(len(f.payload.raw()) <= 16 * 1024 for f in wire.of(protocol.TerminalData))
        finally:
            await terminals.close_all()
            await wire.stop()

    run(scenario)


def test_reopen_attaches_to_the_same_shell() -> None:
    async def scenario() -> None:
        wire = Wire().start()
        terminals = TerminalManager(wire.outbox, command=lambda: SH)
        try:
            terminals.open("s1", 80, 24)
            terminals.write("s1", b"kaiden_mark=keep$((40+2))\n")
            terminals.write("s1", b"echo first-$kaiden_mark\n")
            await wire.wait_output("s1", b"first-keep42")
            assert terminals.open("s1", 90, 20) is False  # a browser reload: same shell, new size
            terminals.write("s1", b"echo again-$kaiden_mark; stty size\n")
            await wire.wait_output("s1", b"again-keep42")
            await wire.wait_output("s1", b"20 90")
            assert wire.of(protocol.TerminalClose) == []
        finally:
            await terminals.close_all()
            await wire.stop()

    run(scenario)


def test_shell_exit_is_reported_and_the_next_open_starts_a_new_shell_in_the_same_recording() -> None:
    async def scenario() -> None:
        wire = Wire().start()
        terminals = TerminalManager(wire.outbox, command=lambda: SH, chunk_seconds=0.1)
        try:
            terminals.open("s1", 80, 24)
            terminals.write("s1", b"kaiden_mark=old; exit\n")
            closed = await eventually(lambda: wire.of(protocol.TerminalClose, "s1"), "terminal_close")
            assert closed[0].payload.reason == "exited"
            assert not terminals.running("s1")
            with pytest.raises(SessionNotFound, match="exited"):
                terminals.write("s1", b"echo lost\n")
            terminals.resize("s1", 100, 40)  # known session: no error, the next open brings its size
            assert terminals.open("s1", 80, 24) is True
            command, expected = marker()
            terminals.write("s1", command + b"echo mark=[$kaiden_mark]\n")
            await wire.wait_output("s1", expected)
            await wire.wait_output("s1", b"mark=[]")  # a new shell
            await terminals.close("s1")
            await wire.settle()
            header, events = parse_cast(wire.recording("s1"))
            assert header["title"] == "kaiden session s1"
            output = texts(events, "o")
            assert output.index("exit") < output.index(expected.decode())
            assert wire.of(protocol.RecordingChunk, "s1")[-1].payload.final
        finally:
            await terminals.close_all()
            await wire.stop()

    run(scenario)


def _terminal_fds() -> set[str]:
    """This process's open PTY masters, terminals and pidfds (other threads' sockets and files do not count)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target in ("/dev/ptmx", "anon_inode:[pidfd]") or target.startswith("/dev/pts/"):
            found.add(f"{fd}:{target}")
    return found


def test_close_ends_the_shell_and_the_recording() -> None:
    async def scenario() -> None:
        wire = Wire().start()
        terminals = TerminalManager(wire.outbox, command=lambda: SH, chunk_seconds=3600)
        fds = _terminal_fds()
        try:
            terminals.open("s1", 80, 24)
            terminals.write("s1", b"echo pid=$$\n")
            found = await eventually(lambda: re.search(rb"pid=(\d+)\r\n", wire.output("s1")), "the shell's pid")
            pid = int(found.group(1))
            await terminals.close("s1")
            await wire.settle()
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # killed and reaped
            chunks = wire.of(protocol.RecordingChunk, "s1")
            assert [c.payload.final for c in chunks] == [False] * (len(chunks) - 1) + [True]
            assert wire.of(protocol.TerminalClose) == []  # an ending asked for is not an "exited"
            with pytest.raises(TerminalError, match="has ended"):
                terminals.open("s1", 80, 24)  # one recording per session
            with pytest.raises(SessionNotFound):
                terminals.write("s1", b"x")
            await terminals.close("s1")  # idempotent
            assert len(wire.of(protocol.RecordingChunk, "s1")) == len(chunks)
            await terminals.close_all()
            assert _terminal_fds() <= fds  # PTY and pidfd closed
        finally:
            await terminals.close_all()
            await wire.stop()

    run(scenario)


@pytest.mark.parametrize("record_input", [True, False])
def test_recording_is_asciicast_v2(record_input: bool) -> None:
    async def scenario() -> None:
        wire = Wire().start()
        terminals = TerminalManager(wire.outbox, command=lambda: SH, chunk_seconds=0.05)
        try:
            terminals.open("s1", 80, 24, record_input=record_input)
            command, expected = marker()
            terminals.write("s1", command)
            await wire.wait_output("s1", expected)
            await eventually(lambda: wire.of(protocol.RecordingChunk, "s1"), "a periodic chunk")  # while running
            terminals.resize("s1", 120, 40)
            await terminals.close("s1")
            await wire.settle()
            chunks = wire.of(protocol.RecordingChunk, "s1")
            assert chunks[0].payload.data.startswith('{"version": 2')
            assert all(c.payload.data.endswith("\n") for c in chunks)
            header, events = parse_cast(wire.recording("s1"))
            assert (header["width"], header["height"]) == (80, 24)
            assert header["env"] == {"TERM": "xterm-256color", "SHELL": "/bin/sh"}
            assert isinstance(header["timestamp"], int) and abs(header["timestamp"] - time.time()) < 600
            assert expected.decode() in texts(events, "o")
            assert [e[2] for e in events if e[1] == "r"] == ["120x40"]
            if record_input:
                assert command.decode() in texts(events, "i")
            else:
                assert texts(events, "i") == ""
        finally:
            await terminals.close_all()
            await wire.stop()

    run(scenario)


def test_a_shell_that_cannot_start_is_an_error_naming_it() -> None:
    async def scenario() -> None:
        wire = Wire().start()
        missing = ShellCommand(("/nonexistent/kaiden-shell", "-l"), "/nonexistent/kaiden-shell", False)
        terminals = TerminalManager(wire.outbox, command=lambda: missing)
        try:
            with pytest.raises(TerminalError, match="/nonexistent/kaiden-shell"):
                terminals.open("s1", 80, 24)
            assert terminals.recorder("s1") is None
            with pytest.raises(SessionNotFound):
                terminals.resize("s1", 80, 24)
        finally:
            await terminals.close_all()
            await wire.stop()

    run(scenario)


def test_a_full_outbox_pauses_the_shell_without_losing_output() -> None:
    async def scenario() -> None:
        outbox = Outbox(high_water=64 * 1024, low_water=16 * 1024)
        outbox.online = True
        terminals = TerminalManager(outbox, command=lambda: SH)
        wire = Wire(outbox)  # not delivering yet: the outbox fills up
        try:
            terminals.open("s1", 80, 24)
            terminals.write(
                "s1", b"i=0; while [ $i -lt 4000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done\n"
            )
            await eventually(lambda: outbox.congested, "a congested outbox")
            wire.start()
            await wire.wait_output("s1", b"line-3999-")
            text = wire.output("s1").decode()
            assert all(f"line-{i}-" in text for i in range(4000))
        finally:
            await terminals.close_all()
            await wire.stop()

    run(scenario)


# ---------------------------------------------------------------- the recorder


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_recorder_events_times_and_chunks() -> None:
    clock = Clock()
    recorder = Recorder("s9", 80, 24, record_input=False, shell_path="/bin/bash", clock=clock, wall_clock=lambda: 1.7e9)
    clock.now = 100.1234567
    recorder.output(b"hello\r\n")
    recorder.input(b"secret")  # not recorded without record_input
    recorder.resize(80, 24)  # no change, no event
    clock.now = 101.5
    recorder.resize(100, 50)
    first = recorder.take_chunk()
    assert first is not None and (first.seq, first.final) == (0, False)
    header, events = parse_cast(first.data)
    assert header == {
        "version": 2,
        "width": 80,
        "height": 24,
        "timestamp": 1700000000,
        "env": {"TERM": "xterm-256color", "SHELL": "/bin/bash"},
        "title": "kaiden session s9",
    }
    assert events == [[0.123457, "o", "hello\r\n"], [1.5, "r", "100x50"]]
    assert recorder.take_chunk() is None  # nothing new
    last = recorder.take_chunk(final=True)  # sent even when empty
    assert last is not None and (last.seq, last.final, last.data) == (1, True, "")
    assert recorder.take_chunk() is None and recorder.take_chunk(final=True) is None
    recorder.output(b"after the end")
    assert recorder.pending_bytes == 0


def test_a_recorder_continuing_the_clouds_recording_has_no_header_and_goes_on_in_seq_and_time() -> None:
    """An agent restarted mid-session: terminal_open says where the cloud's recording stands."""
    clock = Clock()
    recorder = Recorder("s9", 80, 24, clock=clock, continue_at=7, elapsed=300.0)
    clock.now += 2.5
    recorder.output(b"back\r\n")
    chunk = recorder.take_chunk(final=True)
    assert chunk is not None and (chunk.seq, chunk.final) == (7, True)
    lines = [json.loads(line) for line in chunk.data.splitlines()]
    assert lines == [[302.5, "o", "back\r\n"]]  # an event line first: the header is in chunk 0 already


def test_a_session_new_to_the_agent_continues_the_recording_from_terminal_open() -> None:
    async def scenario() -> None:
        wire = Wire().start()
        manager = TerminalManager(wire.outbox, command=lambda: SH, chunk_seconds=60)
        try:
            assert manager.open("s-cont", recording_seq=4, recording_elapsed=12.0) is True
            recorder = manager.recorder("s-cont")
            assert recorder is not None and recorder.seq == 4
            # a live shell keeps its recorder: the values only matter to a session the agent does not know
            assert manager.open("s-cont", recording_seq=99, recording_elapsed=500.0) is False
            assert manager.recorder("s-cont") is recorder and recorder.seq == 4
            await manager.close("s-cont")
            await wire.settle()
            chunks = wire.of(protocol.RecordingChunk, "s-cont")
            assert [c.payload.seq for c in chunks] == [4] and chunks[0].payload.final
            assert not chunks[0].payload.data.startswith('{"version"')  # no second header
        finally:
            await manager.close_all()
            await wire.stop()

    run(scenario)


def test_recorder_decodes_a_character_split_across_reads() -> None:
    recorder = Recorder("s", 80, 24, record_input=True)
    euro, smile = "€".encode(), "😀".encode()
    recorder.output(euro[:1])
    recorder.output(euro[1:] + smile[:2])
    recorder.output(smile[2:] + b"!")
    recorder.input("é".encode()[:1])
    recorder.input("é".encode()[1:])
    recorder.output(b"\xe2\x82")  # cut short at the end: flushed (replaced) with the final chunk
    chunks = recorder.take_chunks(final=True)
    _, events = parse_cast("".join(c.data for c in chunks))
    assert texts(events, "o") == "€😀!\ufffd"
    assert texts(events, "i") == "é"


def test_chunks_stay_under_the_limits_and_lose_nothing() -> None:
    recorder = Recorder("s", 80, 24)
    rng = random.Random(5)
    pieces = [bytes(rng.randrange(256) for _ in range(16 * 1024)) for _ in range(8)]
    pieces += [b"\x01" * 300_000, "ß€".encode() * 200_000, b'"\\' * 100_000]  # escapes make lines grow
    for piece in pieces:
        recorder.output(piece)
    chunks = recorder.take_chunks(final=True)
    assert [c.seq for c in chunks] == list(range(len(chunks))) and len(chunks) > 20
    assert [c.final for c in chunks] == [False] * (len(chunks) - 1) + [True]
    for chunk in chunks:
        assert len(chunk.data.encode()) <= CHUNK_BYTES and chunk.data.endswith("\n")
        assert all(len(line.encode()) < MAX_LINE_BYTES for line in chunk.data.splitlines())
        frame = protocol.encode(protocol.RecordingChunk(payload=chunk))
        assert len(frame.encode()) <= protocol.MAX_FRAME_BYTES
        assert protocol.decode(frame).payload == chunk
    _, events = parse_cast("".join(c.data for c in chunks))
    assert texts(events, "o") == b"".join(pieces).decode("utf-8", "replace")


def test_chunks_are_taken_as_they_fill() -> None:
    recorder = Recorder("s", 80, 24, chunk_bytes=1000)
    for i in range(50):
        recorder.output(f"line {i:03d} ".encode() * 5)
    assert recorder.pending_bytes > 1000
    chunk = recorder.take_chunk()
    assert chunk is not None and not chunk.final and len(chunk.data) <= 1000
    rest = recorder.take_chunks()
    assert rest and not rest[-1].final and recorder.pending_bytes == 0
    assert [c.seq for c in [chunk, *rest]] == list(range(1 + len(rest)))


# ---------------------------------------------------------------- which shell, which environment


def test_nsenter_only_when_in_the_hosts_namespaces() -> None:
    def which(name: str) -> str | None:
        return "/usr/bin/nsenter" if name == "nsenter" else None

    def never(_path: str) -> bool:
        return False

    host = shell_command(None, "/bin/zsh", host_namespaces=lambda: True, which=which, exists=lambda p: True)
    assert host.argv == ("/usr/bin/nsenter", "-t", "1", "-m", "-u", "-i", "-n", "-p", "--", "/bin/bash", "-l")
    assert (host.shell, host.host) == ("/bin/bash", True)
    no_bash = shell_command(None, None, host_namespaces=lambda: True, which=which, exists=never)
    assert no_bash.argv[-2:] == ("/bin/sh", "-l")
    forced = shell_command("/bin/sh", None, host_namespaces=lambda: True, which=which, exists=lambda p: True)
    assert forced.argv[0] == "/usr/bin/nsenter" and forced.argv[-2:] == ("/bin/sh", "-l")
    assert shell_command(None, "/bin/zsh", host_namespaces=lambda: False, which=which) == ShellCommand(
        ("/bin/zsh", "-l"), "/bin/zsh", False
    )
    no_nsenter = shell_command(None, None, host_namespaces=lambda: True, which=lambda name: None)
    assert no_nsenter == ShellCommand(("/bin/bash", "-l"), "/bin/bash", False)
    assert shell_command("/bin/sh", "/bin/zsh", host_namespaces=lambda: False).argv == ("/bin/sh", "-l")


def test_host_namespace_check(tmp_path: Path) -> None:
    for name in ("1", "self"):
        (tmp_path / name / "ns").mkdir(parents=True)
    (tmp_path / "self/ns/mnt").symlink_to("mnt:[4026531840]")
    assert in_host_namespaces(tmp_path) is False  # PID 1's namespace unreadable
    (tmp_path / "1/ns/mnt").symlink_to("mnt:[4026531840]")
    assert in_host_namespaces(tmp_path) is False  # our own PID 1
    (tmp_path / "1/ns/mnt").unlink()
    (tmp_path / "1/ns/mnt").symlink_to("mnt:[4026531841]")
    assert in_host_namespaces(tmp_path) is True


def test_the_shell_does_not_inherit_the_agents_secrets() -> None:
    base = {"PATH": "/usr/bin:/bin", "API_KEY": "kdc_secret", "HOME": "/home/agent", "LANG": "de_DE.UTF-8"}
    env = shell_environment("s-7", SH, base)
    assert env == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/agent",
        "LANG": "de_DE.UTF-8",
        "TERM": "xterm-256color",
        "SHELL": "/bin/sh",
        "KAIDEN_SESSION_ID": "s-7",
    }
    host = shell_environment("s-7", ShellCommand(("nsenter", "--", "/bin/bash", "-l"), "/bin/bash", True), base)
    assert (host["HOME"], host["USER"]) == ("/root", "root") and "API_KEY" not in host


# ---------------------------------------------------------------- the agent's command handling


def _agent(**changes: Any) -> Agent:
    fields: dict[str, Any] = {"session_shell": "/bin/sh", "recording_chunk_seconds": 0.1, **changes}
    return Agent(
        AgentConfig(node_name="n1", controller_url="ws://unused/agent", api_key="k", host_root=Path("/"), **fields)
    )


def _open(session_id: str, command_id: str | None, **fields: Any) -> protocol.TerminalOpen:
    payload = protocol.TerminalOpenPayload(session_id=session_id, node_name="n1", **fields)
    return protocol.TerminalOpen(id=command_id, payload=payload)


def _data(session_id: str, data: bytes) -> protocol.TerminalData:
    encoded = base64.b64encode(data).decode()
    return protocol.TerminalData(payload=protocol.TerminalDataPayload(session_id=session_id, data=encoded))


def _close(session_id: str, command_id: str) -> protocol.TerminalClose:
    return protocol.TerminalClose(id=command_id, payload=protocol.TerminalClosePayload(session_id=session_id))


def _acked(wire: Wire, command_id: str) -> bool:
    return any(isinstance(f, protocol.Ack) and f.payload.of == command_id for f in wire.frames)


def test_agent_acks_open_and_sends_the_final_chunk_before_the_close_ack() -> None:
    async def scenario() -> None:
        agent = _agent()
        wire = Wire(agent.outbox).start()
        try:
            await agent.handle(_open("s1", "o-1", cols=100, rows=30, record_input=True))
            await eventually(lambda: _acked(wire, "o-1"), "the open ack")
            command, expected = marker()
            await agent.handle(_data("s1", command))
            await wire.wait_output("s1", expected)
            await agent.handle(
                protocol.TerminalResize(payload=protocol.TerminalResizePayload(session_id="s1", cols=90, rows=20))
            )
            await agent.handle(_open("s1", "o-2"))  # already running: only acked (and resized)
            await eventually(lambda: _acked(wire, "o-2"), "the second open ack")
            await agent.handle(_close("s1", "c-1"))
            await eventually(lambda: _acked(wire, "c-1"), "the close ack")
            final_at = next(
                i for i, f in enumerate(wire.frames) if isinstance(f, protocol.RecordingChunk) and f.payload.final
            )
            ack_at = next(i for i, f in enumerate(wire.frames) if isinstance(f, protocol.Ack) and f.payload.of == "c-1")
            assert final_at < ack_at
            _, events = parse_cast(wire.recording("s1"))
            assert command.decode() in texts(events, "i") and expected.decode() in texts(events, "o")
            assert [e[2] for e in events if e[1] == "r"] == ["90x20", "80x24"]
        finally:
            await agent.shutdown()
            await wire.stop()

    run(scenario)


def test_agent_errors_for_unknown_sessions_and_shells_that_cannot_start() -> None:
    async def scenario() -> None:
        agent = _agent()
        broken = _agent(session_shell="/nonexistent/kaiden-sh")
        wire, broken_wire = Wire(agent.outbox).start(), Wire(broken.outbox).start()
        try:
            await agent.handle(_data("nope", b"ls\n"))
            await agent.handle(
                protocol.TerminalResize(
                    id="r-1", payload=protocol.TerminalResizePayload(session_id="nope", cols=1, rows=1)
                )
            )
            errors = await eventually(lambda: len(wire.of(protocol.Error)) == 2 and wire.of(protocol.Error), "errors")
            assert {e.payload.code for e in errors} == {protocol.ErrorCode.not_found}
            assert errors[1].payload.of == "r-1" and "nope" in errors[1].payload.message
            await agent.handle(_close("never-opened", "c-9"))  # ending a session without a terminal: acked
            await eventually(lambda: _acked(wire, "c-9"), "the close ack")
            await broken.handle(_open("s1", "o-1"))
            refused = await eventually(lambda: broken_wire.of(protocol.Error), "the open error")
            assert refused[0].payload.of == "o-1" and "/nonexistent/kaiden-sh" in refused[0].payload.message
            pong = agent.answer(protocol.Ping(id="p-1", payload=protocol.PingPayload(node_name="n1")))
            assert isinstance(pong, protocol.Pong)
        finally:
            await agent.shutdown()
            await broken.shutdown()
            await wire.stop()
            await broken_wire.stop()

    run(scenario)


def test_agent_stop_closes_every_terminal() -> None:
    async def scenario() -> None:
        agent = _agent()
        wire = Wire(agent.outbox).start()
        try:
            await agent.handle(_open("s1", "o-1"))
            command, expected = marker()
            await agent.handle(_data("s1", command))
            await wire.wait_output("s1", expected)
            await agent.shutdown()
            assert not agent.terminals.running("s1")
            closed = await eventually(lambda: wire.of(protocol.TerminalClose, "s1"), "terminal_close")
            assert closed[0].payload.reason == "agent_stopped"
            assert expected.decode() in texts(parse_cast(wire.recording("s1"))[1], "o")
        finally:
            await agent.shutdown()
            await wire.stop()

    run(scenario)


# ---------------------------------------------------------------- through the real controller and agent


class StandInGateway:
    """Accepts the controller's connection like the gateway: records its frames, sends it commands."""

    def __init__(self) -> None:
        self.frames: list[protocol._Message] = []
        self.connection: ServerConnection | None = None

    async def handler(self, websocket: ServerConnection) -> None:
        self.connection = websocket
        async for frame in websocket:
            self.frames.append(protocol.decode(frame))

    async def send(self, message: protocol._Message) -> None:
        assert self.connection is not None
        await self.connection.send(protocol.encode(message))

    def of(self, kind: type[protocol._Message]) -> list[Any]:
        return [f for f in self.frames if isinstance(f, kind)]

    def output(self, session_id: str) -> bytes:
        return b"".join(f.payload.raw() for f in self.of(protocol.TerminalData) if f.payload.session_id == session_id)

    def acked(self, command_id: str) -> bool:
        return any(isinstance(f, protocol.Ack) and f.payload.of == command_id for f in self.frames)


def test_terminal_through_the_controller_and_agent() -> None:
    async def scenario() -> None:
        gateway = StandInGateway()
        async with serve(gateway.handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            config = ControllerConfig(
                cluster_id="c-1",
                api_key="kdc_e2e",
                cloud_endpoint=f"ws://127.0.0.1:{port}",
                heartbeat_interval=30,
                listen_host="127.0.0.1",
                listen_port=0,
            )
            controller = Controller(config)
            stop_controller, stop_agent = asyncio.Event(), asyncio.Event()
            controller_task = asyncio.create_task(controller.run(stop_controller))
            agent_task: asyncio.Task[None] | None = None
            try:
                await eventually(lambda: controller.listen_port and gateway.of(protocol.Hello), "the controller")
                agent = Agent(
                    AgentConfig(
                        node_name="node-a",
                        controller_url=f"ws://127.0.0.1:{controller.listen_port}/agent",
                        api_key="kdc_e2e",
                        host_root=Path("/"),
                        session_shell="/bin/sh",
                        recording_chunk_seconds=0.2,
                    )
                )
                agent_task = asyncio.create_task(agent.run(stop_agent))
                await eventually(lambda: (s := controller.agents.get("node-a")) and s.link, "the agent")

                await gateway.send(
                    protocol.TerminalOpen(
                        id="o-1", payload=protocol.TerminalOpenPayload(session_id="s-1", node_name="node-a")
                    )
                )
                await eventually(lambda: gateway.acked("o-1"), "the open ack")
                assert controller.sessions == {"s-1": "node-a"}
                command, expected = marker()
                await gateway.send(_data("s-1", command))
                await eventually(lambda: expected in gateway.output("s-1"), "the echo through the controller")
                await eventually(lambda: gateway.of(protocol.RecordingChunk), "a periodic recording chunk")

                await gateway.send(_data("s-1", b"exit\n"))
                closed = await eventually(lambda: gateway.of(protocol.TerminalClose), "terminal_close (exited)")
                assert closed[0].payload.reason == "exited"
                assert controller.sessions == {"s-1": "node-a"}  # the agent's own close keeps the route
                await gateway.send(
                    protocol.TerminalOpen(
                        id="o-2", payload=protocol.TerminalOpenPayload(session_id="s-1", node_name="node-a")
                    )
                )
                await eventually(lambda: gateway.acked("o-2"), "the reopen ack")

                await gateway.send(_close("s-1", "c-1"))
                await eventually(lambda: gateway.acked("c-1"), "the close ack")
                chunks = [f for f in gateway.of(protocol.RecordingChunk) if f.payload.session_id == "s-1"]
                assert [c.payload.seq for c in chunks] == list(range(len(chunks))) and chunks[-1].payload.final
                final_at = gateway.frames.index(chunks[-1])
                ack_at = next(
                    i for i, f in enumerate(gateway.frames) if isinstance(f, protocol.Ack) and f.payload.of == "c-1"
                )
                assert final_at < ack_at
                assert controller.sessions == {}
                _, events = parse_cast("".join(c.payload.data for c in chunks))
                assert expected.decode() in texts(events, "o")
            finally:
                stop_agent.set()
                if agent_task is not None:
                    await asyncio.wait_for(agent_task, TIMEOUT)
                stop_controller.set()
                await asyncio.wait_for(controller_task, TIMEOUT)

    run(scenario)

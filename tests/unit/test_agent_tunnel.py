"""The agent's tunnels: a stand-in `cloudflared` (a script written here) started, watched and stopped."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent import protocol
from agent.agent import Agent, AgentConfig
from agent.tunnel import REDACTED, TunnelManager, TunnelStartError, redact
from tests.support import eventually
from tests.support import run_async as run

TIMEOUT = 30.0
SECRET = base64.b64encode(b"s" * 32).decode()
TOKEN = base64.b64encode(json.dumps({"a": "acct", "t": "tunnel-id", "s": SECRET}).encode()).decode()

# Checks what the real one would be given (arguments, TUNNEL_TOKEN in the environment, never on argv), notes it
# in seen.json, then behaves as MODE says.
FAKE = """#!{python}
import json, os, signal, sys, time
here = os.path.dirname(os.path.abspath(__file__))
token = os.environ.get("TUNNEL_TOKEN", "")
seen = {{"argv": sys.argv[1:], "token_in_env": bool(token), "token_on_argv": any(token in a for a in sys.argv)}}
with open(os.path.join(here, "seen.json"), "w") as f:
    json.dump(seen, f)
if not token or seen["token_on_argv"] or sys.argv[1:] != ["tunnel", "--no-autoupdate", "run"]:
    print("ERR refusing to run: " + json.dumps(seen), file=sys.stderr, flush=True)
    sys.exit(4)
mode = {mode!r}
def terminated(*_):
    open(os.path.join(here, "terminated"), "w").close()
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else terminated)
print("INF Starting tunnel tunnelID=tunnel-id", file=sys.stderr, flush=True)
if mode == "fail":
    print("ERR Provided Tunnel token is not valid: " + token, file=sys.stderr, flush=True)
    sys.exit(1)
print("INF Registered tunnel connection connIndex=0 location=fra01", file=sys.stderr, flush=True)
print("INF Registered tunnel connection connIndex=1 location=fra02", file=sys.stderr, flush=True)
while True:
    time.sleep(0.05)
"""


def fake_cloudflared(directory: Path, mode: str = "ready") -> Path:
    path = directory / "cloudflared"
    path.write_text(FAKE.format(python=sys.executable, mode=mode))
    path.chmod(0o755)
    return path


def _start(session_id: str = "s-1", hostname: str | None = "sess-1.support.example", command_id: str = "t-1"):
    payload = protocol.StartTunnelPayload(
        session_id=session_id, node_name="n1", tunnel_token=TOKEN, services=["ssh"], public_hostname=hostname
    )
    return protocol.StartTunnel(id=command_id, payload=payload)


class AgentWire:
    """An agent whose outbox delivers into a list."""

    def __init__(self, cloudflared: Path | str) -> None:
        config = AgentConfig(
            node_name="n1",
            controller_url="ws://unused",
            api_key="k",
            host_root=Path("/"),
            cloudflared_path=str(cloudflared),
        )
        self.agent = Agent(config)
        self.agent.outbox.online = True
        self.frames: list[protocol._Message] = []
        self._task: asyncio.Task[None] | None = None

    async def _send(self, text: str) -> None:
        self.frames.append(protocol.decode(text))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.agent.outbox.deliver(self._send))

    async def close(self) -> None:
        await self.agent.shutdown()
        await asyncio.wait_for(self.agent.outbox.wait_empty(), TIMEOUT)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def index(self, predicate: Callable[[protocol._Message], bool]) -> int:
        return next(i for i, f in enumerate(self.frames) if predicate(f))

    def acked(self, command_id: str) -> bool:
        return any(isinstance(f, protocol.Ack) and f.payload.of == command_id for f in self.frames)

    def of(self, kind: type[protocol._Message]) -> list[Any]:
        return [f for f in self.frames if isinstance(f, kind)]


def test_tunnel_ready_then_stopped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kaiden.agent")  # its own level: earlier tests may have set "kaiden"
    binary = fake_cloudflared(tmp_path)

    async def scenario() -> None:
        wire = AgentWire(binary)
        wire.start()
        try:
            await wire.agent.handle(_start())
            ready = await eventually(lambda: wire.of(protocol.TunnelReady), "tunnel_ready")
            assert ready[0].payload == protocol.TunnelReadyPayload(
                session_id="s-1", public_hostname="sess-1.support.example"
            )
            assert wire.index(lambda f: isinstance(f, protocol.Ack)) < wire.index(
                lambda f: isinstance(f, protocol.TunnelReady)
            )  # acked at spawn, ready later
            assert wire.agent.tunnels.running("s-1")
            await wire.agent.handle(_start(command_id="t-2"))  # already running and ready: ready again
            await eventually(lambda: wire.acked("t-2") and len(wire.of(protocol.TunnelReady)) == 2, "ready again")
            stop = protocol.StopTunnel(id="x-1", payload=protocol.SessionRef(session_id="s-1"))
            await wire.agent.handle(stop)
            await eventually(lambda: wire.acked("x-1"), "the stop ack")
            assert not wire.agent.tunnels.running("s-1")
            assert (tmp_path / "terminated").exists()  # SIGTERM, handled
            assert wire.of(protocol.TunnelError) == []  # asked to stop: not an error
        finally:
            await wire.close()
        seen = json.loads((tmp_path / "seen.json").read_text())
        assert seen == {"argv": ["tunnel", "--no-autoupdate", "run"], "token_in_env": True, "token_on_argv": False}

    run(scenario)
    assert "Registered tunnel connection" in caplog.text  # its log is kept (at debug) …
    assert TOKEN not in caplog.text and SECRET not in caplog.text  # … never the token


def test_missing_binary_is_a_tunnel_error_naming_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        missing = tmp_path / "nowhere" / "cloudflared"
        wire = AgentWire(missing)
        wire.start()
        try:
            await wire.agent.handle(_start())
            errors = await eventually(lambda: wire.of(protocol.TunnelError), "tunnel_error")
            assert str(missing) in errors[0].payload.error
            refused = await eventually(lambda: wire.of(protocol.Error), "the command's error")
            assert refused[0].payload.of == "t-1" and str(missing) in refused[0].payload.message
            assert not wire.acked("t-1")
        finally:
            await wire.close()
        sent: list[protocol._Message] = []
        by_name = TunnelManager(sent.append, binary="kaiden-no-such-cloudflared", base_env={"PATH": str(tmp_path)})
        with pytest.raises(TunnelStartError, match="'kaiden-no-such-cloudflared' not found on PATH"):
            await by_name.start(_start().payload)
        assert isinstance(sent[0], protocol.TunnelError) and "CLOUDFLARED_PATH" in sent[0].payload.error

    run(scenario)


def test_early_exit_is_a_tunnel_error_with_its_last_line_redacted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kaiden.agent")  # its own level: earlier tests may have set "kaiden"
    binary = fake_cloudflared(tmp_path, mode="fail")

    async def scenario() -> None:
        wire = AgentWire(binary)
        wire.start()
        try:
            await wire.agent.handle(_start())
            errors = await eventually(lambda: wire.of(protocol.TunnelError), "tunnel_error")
            message = errors[0].payload.error
            assert "exited with code 1 before the tunnel was ready" in message
            assert "Provided Tunnel token is not valid: " + REDACTED in message
            assert TOKEN not in message
            assert wire.acked("t-1") and wire.of(protocol.TunnelReady) == []
            await eventually(lambda: not wire.agent.tunnels.running("s-1"), "the tunnel gone")
            stop = protocol.StopTunnel(id="x-1", payload=protocol.SessionRef(session_id="s-1"))
            await wire.agent.handle(stop)  # nothing left to stop: still acked
            await eventually(lambda: wire.acked("x-1"), "the stop ack")
        finally:
            await wire.close()

    run(scenario)
    assert "token is not valid" in caplog.text and TOKEN not in caplog.text


def test_stop_kills_a_cloudflared_that_ignores_sigterm(tmp_path: Path) -> None:
    binary = fake_cloudflared(tmp_path, mode="stubborn")

    async def scenario() -> None:
        sent: list[protocol._Message] = []
        tunnels = TunnelManager(sent.append, binary=str(binary), stop_grace=0.5)
        try:
            await tunnels.start(_start(hostname=None).payload)
            await eventually(lambda: any(isinstance(m, protocol.TunnelReady) for m in sent), "tunnel_ready")
            ready = next(m for m in sent if isinstance(m, protocol.TunnelReady))
            assert ready.payload.public_hostname == "sess-s-1"  # no hostname given: the session's stack name
            await tunnels.stop("s-1")
            assert not tunnels.running("s-1") and not (tmp_path / "terminated").exists()
            assert not any(isinstance(m, protocol.TunnelError) for m in sent)
        finally:
            await tunnels.stop_all()

    run(scenario)


def test_agent_stop_ends_its_tunnels(tmp_path: Path) -> None:
    binary = fake_cloudflared(tmp_path)

    async def scenario() -> None:
        wire = AgentWire(binary)
        wire.start()
        try:
            await wire.agent.handle(_start())
            await eventually(lambda: wire.of(protocol.TunnelReady), "tunnel_ready")
            await wire.agent.shutdown()
            assert not wire.agent.tunnels.running("s-1") and (tmp_path / "terminated").exists()
        finally:
            await wire.close()

    run(scenario)


def test_redact_removes_the_token_its_secret_and_lookalikes() -> None:
    line = f"token={TOKEN} secret={SECRET} other=eyJhbGciOiJIUzI1NiJ9abc id=6ba7b810-9dad-11d1-80b4-00c04fd430c8"
    cleaned = redact(line, TOKEN)
    assert TOKEN not in cleaned and SECRET not in cleaned and "eyJhbGci" not in cleaned
    assert "id=6ba7b810-9dad-11d1-80b4-00c04fd430c8" in cleaned  # tunnel ids are no secret
    assert redact("plain words", "not-base64!") == "plain words"

"""The node agent (`python -m agent.agent`): one per node; reports the node's facts to the cluster's controller
and answers its commands: ping, support-session terminals (with their recordings) and tunnels. Environment and
protocol: docs/agents.md, sessions: docs/sessions.md.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import logging
import os
import platform
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from agent import protocol
from agent.runtime import SOFTWARE_VERSION, Backoff, number, reconnect_forever, require, run_main
from agent.terminal import SessionNotFound, TerminalError, TerminalManager, shell_command
from agent.tunnel import TunnelManager, TunnelStartError

log = logging.getLogger("kaiden.agent")

CAPABILITIES = ["ping", "terminal", "recording", "tunnel"]
SHUTDOWN_FLUSH_SECONDS = 5.0  # on stop, how long the last frames (final output, chunks) may take to go out


@dataclass(frozen=True)
class AgentConfig:
    node_name: str
    controller_url: str
    api_key: str
    host_root: Path
    facts_interval: float = 60.0
    cloudflared_path: str = "cloudflared"  # a path, or a name looked up on PATH
    recording_chunk_seconds: float = 2.0
    session_shell: str | None = None  # SESSION_SHELL: the sessions' shell instead of the default
    login_shell: str | None = None  # $SHELL: the default shell when not entering the host's namespaces

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AgentConfig:
        host_root = Path(env.get("HOST_ROOT") or "/host")
        return cls(
            node_name=require(env, "NODE_NAME"),
            controller_url=require(env, "CONTROLLER_URL"),
            api_key=require(env, "API_KEY"),
            host_root=host_root if host_root.is_dir() else Path("/"),
            facts_interval=number(env, "FACTS_INTERVAL", 60.0),
            cloudflared_path=(env.get("CLOUDFLARED_PATH") or "").strip() or "cloudflared",
            recording_chunk_seconds=number(env, "RECORDING_CHUNK_SECONDS", 2.0),
            session_shell=(env.get("SESSION_SHELL") or "").strip() or None,
            login_shell=(env.get("SHELL") or "").strip() or None,
        )

    def __repr__(self) -> str:  # the key never appears in logs
        return f"AgentConfig(node_name={self.node_name!r}, controller_url={self.controller_url!r})"


# ---------------------------------------------------------------- facts


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _os_name(root: Path) -> str | None:
    for candidate in ("etc/os-release", "usr/lib/os-release"):
        text = _read(root / candidate)
        if text is None:
            continue
        values = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip().strip('"').strip("'")
        name = values.get("PRETTY_NAME") or values.get("NAME")
        if name:
            return name[:255]
    return None


def _memory_bytes(root: Path) -> int | None:
    for proc in (root / "proc", Path("/proc")):
        text = _read(proc / "meminfo")
        if text:
            for line in text.splitlines():
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    return None


def _ipv4_addresses() -> list[str]:
    found: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                reply = fcntl.ioctl(sock.fileno(), 0x8915, request)  # SIOCGIFADDR
            except OSError:
                continue  # no IPv4 address on this interface
            found.append(socket.inet_ntoa(reply[20:24]))
    return found


def _ipv6_addresses() -> list[str]:
    text = _read(Path("/proc/net/if_inet6")) or ""
    found = []
    for line in text.splitlines():
        raw = line.split()[0] if line.split() else ""
        if len(raw) == 32:
            found.append(str(ipaddress.IPv6Address(bytes.fromhex(raw))))
    return found


def node_ips() -> list[str]:
    """The host's addresses without loopback and link-local (the agent runs with hostNetwork)."""
    result = []
    for text in _ipv4_addresses() + _ipv6_addresses():
        address = ipaddress.ip_address(text)
        if not (address.is_loopback or address.is_link_local) and text not in result:
            result.append(text)
    return result[:64]


def collect_facts(config: AgentConfig) -> protocol.NodeFactsPayload:
    root = config.host_root
    hostname = (_read(root / "etc/hostname") or "").strip() if root != Path("/") else ""
    return protocol.NodeFactsPayload(
        node_name=config.node_name,
        agent_version=SOFTWARE_VERSION,
        hostname=(hostname or socket.gethostname())[:253],
        ips=node_ips(),
        os=_os_name(root),
        kernel=platform.release()[:255] or None,
        architecture=platform.machine()[:32] or None,
        cpu_count=os.cpu_count(),
        memory_bytes=_memory_bytes(root),
    )


# ---------------------------------------------------------------- the one send path


class Outbox:
    """Every frame the agent sends after its hello, in order: replies, output, recording chunks, tunnel events.

    One writer per connection (`deliver`) sends them; between connections they wait (a reconnect delivers them),
    except terminal output, which nobody could watch. Past `high_water` queued bytes it is `congested`: the
    terminals stop reading their PTYs until it is back under `low_water`.
    """

    def __init__(
        self, *, high_water: int = 4 * 1024 * 1024, low_water: int = 1024 * 1024, limit: int = 64 * 1024 * 1024
    ) -> None:
        self.online = False
        self._frames: deque[str] = deque()
        self._bytes = 0
        self._high_water, self._low_water, self._limit = high_water, low_water, limit
        self._nonempty = asyncio.Event()
        self._empty = asyncio.Event()
        self._relieved = asyncio.Event()
        self._update()

    def put(self, message: protocol._Message) -> None:
        if not self.online and isinstance(message, protocol.TerminalData):
            return
        text = protocol.encode(message)
        self._frames.append(text)
        self._bytes += len(text)
        while self._bytes > self._limit and len(self._frames) > 1:  # a very long disconnect: the oldest go
            self._bytes -= len(self._frames.popleft())
            log.warning("outbox full while disconnected: an old frame was dropped")
        self._update()

    @property
    def congested(self) -> bool:
        return self._bytes > self._high_water

    @property
    def pending(self) -> int:
        """Frames waiting to be sent."""
        return len(self._frames)

    async def wait_relieved(self) -> None:
        await self._relieved.wait()

    async def wait_empty(self) -> None:
        await self._empty.wait()

    async def deliver(self, send: Callable[[str], Awaitable[None]]) -> None:
        """Send frames as they come until `send` fails; the frame it failed on stays first in line."""
        while True:
            await self._nonempty.wait()
            text = self._frames.popleft()
            self._bytes -= len(text)
            try:
                await send(text)
            except BaseException:
                self._frames.appendleft(text)
                self._bytes += len(text)
                raise
            finally:
                self._update()

    def _update(self) -> None:
        for event, state in (
            (self._nonempty, bool(self._frames)),
            (self._empty, not self._frames),
            (self._relieved, self._bytes <= self._low_water),
        ):
            if state:
                event.set()
            else:
                event.clear()


# ---------------------------------------------------------------- connection


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.backoff = Backoff()
        self.connected = asyncio.Event()
        self.outbox = Outbox()
        self.terminals = TerminalManager(
            self.outbox,
            command=lambda: shell_command(config.session_shell, config.login_shell),
            chunk_seconds=config.recording_chunk_seconds,
        )
        self.tunnels = TunnelManager(self.outbox.put, binary=config.cloudflared_path)
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected to the controller until `stop` is set; then end every terminal and tunnel.

        Terminals outlive a lost connection: after a reconnect their output and recordings go on.
        """

        def lost() -> None:
            self.connected.clear()
            self.outbox.online = False

        try:
            await reconnect_forever(self._session, stop, self.backoff, "controller", log, lost)
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """End every terminal and tunnel (idempotent); their last frames wait in the outbox."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.terminals.close_all()
        await self.tunnels.stop_all()

    async def _session(self, stop: asyncio.Event) -> None:
        headers = {
            "Authorization": f"Bearer {protocol.agent_token(self.config.api_key)}",
            "X-Kaiden-Node-Name": self.config.node_name,
        }
        async with connect(self.config.controller_url, additional_headers=headers, open_timeout=10) as ws:
            hello = protocol.Hello(
                payload=protocol.HelloPayload(
                    role="agent",
                    protocol_versions=sorted(protocol.SUPPORTED_VERSIONS),
                    software_version=SOFTWARE_VERSION,
                    capabilities=CAPABILITIES,
                    node_name=self.config.node_name,
                )
            )
            # hello and the first facts go before the writer starts; after that, everything through the outbox
            await ws.send(protocol.encode(hello))
            await ws.send(protocol.encode(protocol.NodeFacts(payload=await self._facts())))
            self.outbox.online = True
            self.connected.set()
            log.info("connected to the controller as node %s", self.config.node_name)
            writer = asyncio.create_task(self.outbox.deliver(ws.send))
            reporter = asyncio.create_task(self._report_facts())
            stopper = asyncio.create_task(stop.wait())
            reader = asyncio.create_task(self._read(ws))
            try:
                done, _ = await asyncio.wait({reader, stopper, writer}, return_when=asyncio.FIRST_COMPLETED)
                for task in done & {reader, writer}:
                    task.result()
                if stopper in done:  # last words while still connected: final output, recordings, closes
                    await self.shutdown()
                    try:
                        await asyncio.wait_for(self.outbox.wait_empty(), SHUTDOWN_FLUSH_SECONDS)
                    except TimeoutError:
                        log.warning("stopping with %d frames not sent", self.outbox.pending)
            finally:
                for task in (writer, reporter, stopper, reader):
                    task.cancel()
                await asyncio.gather(writer, reporter, stopper, reader, return_exceptions=True)

    async def _facts(self) -> protocol.NodeFactsPayload:
        return await asyncio.to_thread(collect_facts, self.config)

    async def _report_facts(self) -> None:
        while True:
            await asyncio.sleep(self.config.facts_interval)
            self.outbox.put(protocol.NodeFacts(payload=await self._facts()))

    async def _read(self, ws: ClientConnection) -> None:
        async for frame in ws:
            message, error = protocol.decode_or_error(frame)
            if error is not None:
                log.warning("bad frame from the controller answered with an error frame")
                self.outbox.put(protocol.decode(error))
                continue
            try:
                await self.handle(message)
            except Exception:  # a command gone wrong must not cost the connection (and every other session)
                log.exception("handling a %s failed", message.type)
                self.outbox.put(
                    self._error(message, protocol.ErrorCode.internal, f"{message.type} failed on the agent")
                )

    # ------------------------------------------------------------ commands

    async def handle(self, message: protocol._Message) -> None:
        """Act on one frame from the controller; replies go out through the outbox.

        Slow endings (terminal_close, stop_tunnel) run as tasks, so they do not hold up other sessions' input.
        """
        if isinstance(message, protocol.TerminalOpen):
            p = message.payload
            try:
                self.terminals.open(
                    p.session_id,
                    p.cols,
                    p.rows,
                    p.record_input,
                    recording_seq=p.recording_seq,
                    recording_elapsed=p.recording_elapsed,
                )
            except TerminalError as exc:
                self.outbox.put(self._error(message, protocol.ErrorCode.internal, str(exc)))
            else:
                self._ack(message)
        elif isinstance(message, protocol.TerminalData | protocol.TerminalResize):
            try:
                if isinstance(message, protocol.TerminalData):
                    self.terminals.write(message.payload.session_id, message.payload.raw())
                else:
                    self.terminals.resize(message.payload.session_id, message.payload.cols, message.payload.rows)
            except SessionNotFound as exc:
                self.outbox.put(self._error(message, protocol.ErrorCode.not_found, str(exc)))
        elif isinstance(message, protocol.TerminalClose):
            self._background(self._close_terminal(message), message)
        elif isinstance(message, protocol.StartTunnel):
            try:
                await self.tunnels.start(message.payload)
            except TunnelStartError as exc:  # tunnel_error went up already
                self.outbox.put(self._error(message, protocol.ErrorCode.internal, str(exc)))
            else:
                self._ack(message)
        elif isinstance(message, protocol.StopTunnel):
            self._background(self._stop_tunnel(message), message)
        else:
            reply = self.answer(message)
            if reply is not None:
                self.outbox.put(reply)

    def answer(self, message: protocol._Message) -> protocol._Message | None:
        """The reply to a command that needs no session state (ping); anything `handle` does not take on is
        refused as unsupported. None: nothing to say."""
        if isinstance(message, protocol.Ping):
            return protocol.Pong(
                id=message.id,
                payload=protocol.PongPayload(
                    role="agent", node_name=self.config.node_name, software_version=SOFTWARE_VERSION
                ),
            )
        if isinstance(message, protocol.Ack | protocol.Error | protocol.Hello):
            return None
        return self._error(
            message, protocol.ErrorCode.unsupported, f"{message.type} is not supported by agent {SOFTWARE_VERSION}"
        )

    async def _close_terminal(self, message: protocol.TerminalClose) -> None:
        await self.terminals.close(message.payload.session_id)  # the final chunk is queued before the ack
        self._ack(message)

    async def _stop_tunnel(self, message: protocol.StopTunnel) -> None:
        await self.tunnels.stop(message.payload.session_id)
        self._ack(message)

    def _background(self, work: Awaitable[None], message: protocol._Message) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)

        def finished(task: asyncio.Future[None]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error("handling a %s failed", message.type, exc_info=task.exception())
                self.outbox.put(
                    self._error(message, protocol.ErrorCode.internal, f"{message.type} failed on the agent")
                )

        task.add_done_callback(finished)

    def _ack(self, message: protocol._Message) -> None:
        if message.id is not None:
            self.outbox.put(protocol.Ack(id=message.id, payload=protocol.AckPayload(of=message.id)))

    @staticmethod
    def _error(message: protocol._Message, code: protocol.ErrorCode, text: str) -> protocol.Error:
        payload = protocol.ErrorPayload(code=code, message=text[:1000], of=message.id)
        return protocol.Error(id=message.id, payload=payload)


def main(env: Mapping[str, str] | None = None) -> int:
    return run_main(env, AgentConfig.from_env, lambda config, stop: Agent(config).run(stop), log)


if __name__ == "__main__":
    raise SystemExit(main())

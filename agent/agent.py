"""The node agent (`python -m agent.agent`): one per node; reports the node's facts to the cluster's controller
and answers its commands. Environment and protocol: docs/agents.md.
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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from agent import protocol
from agent.runtime import SOFTWARE_VERSION, Backoff, number, reconnect_forever, require, run_main

log = logging.getLogger("kaiden.agent")

CAPABILITIES = ["ping"]


@dataclass(frozen=True)
class AgentConfig:
    node_name: str
    controller_url: str
    api_key: str
    host_root: Path
    facts_interval: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AgentConfig:
        host_root = Path(env.get("HOST_ROOT") or "/host")
        return cls(
            node_name=require(env, "NODE_NAME"),
            controller_url=require(env, "CONTROLLER_URL"),
            api_key=require(env, "API_KEY"),
            host_root=host_root if host_root.is_dir() else Path("/"),
            facts_interval=number(env, "FACTS_INTERVAL", 60.0),
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


# ---------------------------------------------------------------- connection


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.backoff = Backoff()
        self.connected = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected to the controller until `stop` is set."""
        await reconnect_forever(self._session, stop, self.backoff, "controller", log, self.connected.clear)

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
            await ws.send(protocol.encode(hello))
            await self._send_facts(ws)
            self.connected.set()
            log.info("connected to the controller as node %s", self.config.node_name)
            reporter = asyncio.create_task(self._report_facts(ws))
            stopper = asyncio.create_task(stop.wait())
            reader = asyncio.create_task(self._read(ws))
            try:
                done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    reader.result()
            finally:
                for task in (reporter, stopper, reader):
                    task.cancel()
                await asyncio.gather(reporter, stopper, reader, return_exceptions=True)

    async def _send_facts(self, ws: ClientConnection) -> None:
        facts = await asyncio.to_thread(collect_facts, self.config)
        await ws.send(protocol.encode(protocol.NodeFacts(payload=facts)))

    async def _report_facts(self, ws: ClientConnection) -> None:
        while True:
            await asyncio.sleep(self.config.facts_interval)
            try:
                await self._send_facts(ws)
            except ConnectionClosed:
                return

    async def _read(self, ws: ClientConnection) -> None:
        async for frame in ws:
            message, error = protocol.decode_or_error(frame)
            if error is not None:
                log.warning("bad frame from the controller answered with an error frame")
                await ws.send(error)
                continue
            reply = self.answer(message)
            if reply is not None:
                await ws.send(protocol.encode(reply))

    def answer(self, message: protocol._Message) -> protocol._Message | None:
        """The reply to one command from the controller (None: nothing to say)."""
        if isinstance(message, protocol.Ping):
            return protocol.Pong(
                id=message.id,
                payload=protocol.PongPayload(
                    role="agent", node_name=self.config.node_name, software_version=SOFTWARE_VERSION
                ),
            )
        if isinstance(message, protocol.Ack | protocol.Error | protocol.Hello):
            return None
        return protocol.Error(
            id=message.id,
            payload=protocol.ErrorPayload(
                code=protocol.ErrorCode.unsupported,
                message=f"{message.type} is not supported by agent {SOFTWARE_VERSION}",
                of=message.id,
            ),
        )


def main(env: Mapping[str, str] | None = None) -> int:
    return run_main(env, AgentConfig.from_env, lambda config, stop: Agent(config).run(stop), log)


if __name__ == "__main__":
    raise SystemExit(main())

"""The cluster controller (`python -m agent.controller`): one per customer cluster. Keeps one connection to the
cloud gateway (hello, heartbeats with the cluster's nodes merged with their agents' reports), serves the node
agents on CONTROLLER_LISTEN and routes cloud commands to the agent of the target node. See docs/agents.md.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from agent import protocol
from agent.runtime import SOFTWARE_VERSION, Backoff, ConfigError, number, reconnect_forever, require, run_main

log = logging.getLogger("kaiden.controller")

CONNECT_PATH = "/api/v1/agent/connect"
AGENT_PATH = "/agent"
CAPABILITIES = ["heartbeat", "ping", "route"]
CLOSE_UNAUTHORIZED = 4001
CLOSE_REPLACED = 4009
_SESSION_COMMANDS = (protocol.StopTunnel, protocol.TerminalData, protocol.TerminalResize, protocol.TerminalClose)
_MAX_LABELS = 128


@dataclass(frozen=True)
class ControllerConfig:
    cluster_id: str
    api_key: str
    cloud_endpoint: str
    heartbeat_interval: float = 15.0
    listen_host: str = "0.0.0.0"  # noqa: S104 - agents on every node dial in
    listen_port: int = 7070
    kubeconfig: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ControllerConfig:
        listen = (env.get("CONTROLLER_LISTEN") or "0.0.0.0:7070").strip()
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"CONTROLLER_LISTEN: expected host:port, got {listen!r}")
        endpoint = require(env, "CLOUD_ENDPOINT").rstrip("/")
        if not endpoint.startswith(("ws://", "wss://")):
            raise ConfigError(f"CLOUD_ENDPOINT: expected ws:// or wss://, got {endpoint!r}")
        return cls(
            cluster_id=require(env, "CLUSTER_ID"),
            api_key=require(env, "API_KEY"),
            cloud_endpoint=endpoint,
            heartbeat_interval=number(env, "HEARTBEAT_INTERVAL", 15.0),
            listen_host=host.strip("[]") or "0.0.0.0",  # noqa: S104
            listen_port=int(port),
            kubeconfig=(env.get("KUBECONFIG") or "").strip() or None,
        )

    def __repr__(self) -> str:  # the key never appears in logs
        return f"ControllerConfig(cluster_id={self.cluster_id!r}, cloud_endpoint={self.cloud_endpoint!r})"


# ---------------------------------------------------------------- the Kubernetes side


def _ready_status(node: Any) -> str:
    for condition in (node.status.conditions if node.status else None) or []:
        if condition.type == "Ready":
            return {"True": "ready", "False": "not-ready"}.get(condition.status, "unknown")
    return "unknown"


def node_report_from_kubernetes(node: Any) -> dict[str, Any]:
    """The fields of a `NodeReport` that the Kubernetes API knows about one node."""
    labels = dict(node.metadata.labels or {})
    status = node.status
    info = status.node_info if status else None
    capacity = (status.capacity if status else None) or {}
    internal_ip = next(
        (a.address for a in (status.addresses if status else None) or [] if a.type == "InternalIP"), None
    )
    roles = sorted(key.split("/", 1)[1] or "node" for key in labels if key.startswith("node-role.kubernetes.io/"))
    kept = dict(sorted((k, v) for k, v in labels.items() if len(k) <= 317 and len(v) <= 63)[:_MAX_LABELS])
    return {
        "name": node.metadata.name,
        "status": _ready_status(node),
        "internal_ip": internal_ip,
        "cpu_capacity": capacity.get("cpu"),
        "memory_capacity": capacity.get("memory"),
        "os_image": info.os_image if info else None,
        "kernel_version": info.kernel_version if info else None,
        "kubelet_version": info.kubelet_version if info else None,
        "architecture": info.architecture if info else None,
        "roles": roles[:32],
        "labels": kept,
    }


class KubernetesReader:
    """Reads nodes and the server version; kubeconfig file or the in-cluster service account."""

    def __init__(self, kubeconfig: str | None) -> None:
        from kubernetes import client, config

        if kubeconfig:
            api_client = config.new_client_from_config(config_file=kubeconfig)
        else:
            config.load_incluster_config()
            api_client = client.ApiClient()
        self._core = client.CoreV1Api(api_client)
        self._version = client.VersionApi(api_client)

    def read(self) -> tuple[str | None, list[dict[str, Any]]]:
        version = self._version.get_code(_request_timeout=10).git_version
        nodes = self._core.list_node(_request_timeout=20).items
        return version, [node_report_from_kubernetes(n) for n in nodes]


# ---------------------------------------------------------------- the agents' side


@dataclass(eq=False)
class AgentLink:
    node_name: str
    websocket: ServerConnection
    software_version: str
    facts: protocol.NodeFactsPayload | None = None


@dataclass
class AgentState:
    """What the controller knows of a node's agent, kept after it disconnects (reported offline)."""

    version: str | None = None
    facts: protocol.NodeFactsPayload | None = None
    link: AgentLink | None = None


def merge_nodes(kubernetes_nodes: list[dict[str, Any]], agents: Mapping[str, AgentState]) -> list[protocol.NodeReport]:
    """Kubernetes' view of each node plus its agent's; agent-only nodes (hosts outside Kubernetes) too."""
    reports = []
    seen = set()
    for fields in kubernetes_nodes:
        state = agents.get(fields["name"])
        reports.append(_merged(dict(fields), state))
        seen.add(fields["name"])
    for name, state in sorted(agents.items()):
        if name not in seen and state.facts is not None:
            reports.append(_merged({"name": name, "status": "unknown"}, state))
    return reports


def _merged(fields: dict[str, Any], state: AgentState | None) -> protocol.NodeReport:
    fields["agent_status"] = "online" if state is not None and state.link is not None else "offline"
    if state is not None:
        fields["agent_version"] = state.version
        facts = state.facts
        if facts is not None:  # the Kubernetes API's answer wins; facts fill what it does not know
            fields["internal_ip"] = fields.get("internal_ip") or (facts.ips[0] if facts.ips else None)
            fields["os_image"] = fields.get("os_image") or facts.os
            fields["kernel_version"] = fields.get("kernel_version") or facts.kernel
            fields["architecture"] = fields.get("architecture") or facts.architecture
            fields["cpu_capacity"] = fields.get("cpu_capacity") or (
                str(facts.cpu_count) if facts.cpu_count is not None else None
            )
            if not fields.get("memory_capacity") and facts.memory_bytes is not None:
                fields["memory_capacity"] = f"{facts.memory_bytes // 1024}Ki"
    return protocol.NodeReport(**fields)


# ---------------------------------------------------------------- the controller


@dataclass
class Controller:
    config: ControllerConfig
    reader: Any = None  # KubernetesReader (or anything with .read()); None: agent-only nodes
    reader_factory: Any = None  # called (in a thread) until it returns a reader: the API may be down at start
    agents: dict[str, AgentState] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)  # session id → node name
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    listen_port: int | None = None
    _cloud: ClientConnection | None = None
    _agent_token: str = ""
    _last_kubernetes: tuple[str | None, list[dict[str, Any]]] = (None, [])
    _last_warning: str | None = None

    def __post_init__(self) -> None:
        self._agent_token = protocol.agent_token(self.config.api_key)
        self.backoff = Backoff()

    # ------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        server = await self.start_agent_server()
        try:
            await self.run_cloud(stop)
        finally:
            server.close()
            await server.wait_closed()

    async def start_agent_server(self) -> Server:
        server = await serve(
            self._agent_handler,
            self.config.listen_host,
            self.config.listen_port,
            process_request=self._agent_request,
        )
        self.listen_port = server.sockets[0].getsockname()[1]
        log.info("serving agents on ws://%s:%s%s", self.config.listen_host, self.listen_port, AGENT_PATH)
        return server

    async def run_cloud(self, stop: asyncio.Event) -> None:
        """Stay connected to the gateway until `stop` is set, reconnecting with backoff and jitter."""

        def lost() -> None:
            self.connected.clear()
            self._cloud = None

        await reconnect_forever(self._cloud_session, stop, self.backoff, "gateway", log, lost)

    async def _cloud_session(self, stop: asyncio.Event) -> None:
        headers = {"Authorization": f"Bearer {self.config.api_key}", "X-Kaiden-Cluster-Id": self.config.cluster_id}
        url = self.config.cloud_endpoint + CONNECT_PATH
        async with connect(url, additional_headers=headers, open_timeout=15, max_size=2 * 1024 * 1024) as ws:
            hello = protocol.Hello(
                payload=protocol.HelloPayload(
                    role="controller",
                    protocol_versions=sorted(protocol.SUPPORTED_VERSIONS),
                    software_version=SOFTWARE_VERSION,
                    capabilities=CAPABILITIES,
                )
            )
            await ws.send(protocol.encode(hello))
            self._cloud = ws
            log.info("connected to the gateway %s, hello sent", self.config.cloud_endpoint)
            beats = asyncio.create_task(self._heartbeats(ws))
            reader = asyncio.create_task(self._read_cloud(ws))
            stopper = asyncio.create_task(stop.wait())
            self.connected.set()
            try:
                done, _ = await asyncio.wait({beats, reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not stopper:
                        task.result()
            finally:
                for task in (beats, reader, stopper):
                    task.cancel()
                await asyncio.gather(beats, reader, stopper, return_exceptions=True)

    # ------------------------------------------------------------ heartbeats

    async def heartbeat_message(self) -> protocol.Heartbeat:
        if self.reader is None and self.reader_factory is not None:
            try:
                self.reader = await asyncio.to_thread(self.reader_factory)
            except Exception as exc:  # heartbeat anyway: the cluster is alive even when its API is not readable
                self._warn_once(f"cannot read the Kubernetes API yet ({exc.__class__.__name__}): {str(exc)[:200]}")
        if self.reader is not None:
            try:
                self._last_kubernetes = await asyncio.to_thread(self.reader.read)
            except Exception as exc:  # keep heartbeating with the last good view
                self._warn_once(f"reading nodes from the Kubernetes API failed: {exc.__class__.__name__}")
            else:
                self._last_warning = None
        version, nodes = self._last_kubernetes
        return protocol.Heartbeat(
            payload=protocol.HeartbeatPayload(
                cluster_id=self.config.cluster_id, k8s_version=version, nodes=merge_nodes(nodes, self.agents)
            )
        )

    def _warn_once(self, text: str) -> None:
        """Log a problem when it starts or changes, not at every heartbeat."""
        if text != self._last_warning:
            log.warning("%s", text)
            self._last_warning = text

    async def _heartbeats(self, ws: ClientConnection) -> None:
        while True:
            started = time.monotonic()
            await ws.send(protocol.encode(await self.heartbeat_message()))
            await asyncio.sleep(max(0.0, self.config.heartbeat_interval - (time.monotonic() - started)))

    # ------------------------------------------------------------ commands from the cloud

    async def _read_cloud(self, ws: ClientConnection) -> None:
        async for frame in ws:
            message, error = protocol.decode_or_error(frame)
            if error is not None:
                log.warning("bad frame from the gateway answered with an error frame")
                await ws.send(error)
                continue
            reply = await self.route(message)
            if reply is not None:
                await ws.send(protocol.encode(reply))

    def _error(self, message: protocol._Message, code: protocol.ErrorCode, text: str) -> protocol.Error:
        return protocol.Error(id=message.id, payload=protocol.ErrorPayload(code=code, message=text, of=message.id))

    async def route(self, message: protocol._Message) -> protocol._Message | None:
        """Forward a command to its node's agent (its reply comes back later), or answer it here."""
        if isinstance(message, protocol.Ack | protocol.Error | protocol.Hello):
            return None
        if isinstance(message, protocol.Ping) and message.payload.node_name is None:
            return protocol.Pong(
                id=message.id, payload=protocol.PongPayload(role="controller", software_version=SOFTWARE_VERSION)
            )
        node: str | None
        if isinstance(message, protocol.Ping | protocol.StartTunnel | protocol.TerminalOpen):
            node = message.payload.node_name
            if not isinstance(message, protocol.Ping):
                self.sessions[message.payload.session_id] = node
        elif isinstance(message, _SESSION_COMMANDS):
            node = self.sessions.get(message.payload.session_id)
            if isinstance(message, protocol.StopTunnel | protocol.TerminalClose):
                self.sessions.pop(message.payload.session_id, None)
            if node is None:
                return self._error(message, protocol.ErrorCode.not_found, "unknown session")
        else:
            return self._error(message, protocol.ErrorCode.invalid, f"{message.type} is not a command")
        state = self.agents.get(node)
        if state is None or state.link is None:
            return self._error(message, protocol.ErrorCode.not_found, f"no agent connected on node {node}")
        try:
            await state.link.websocket.send(protocol.encode(message))
        except ConnectionClosed:
            return self._error(message, protocol.ErrorCode.not_found, f"no agent connected on node {node}")
        return None

    # ------------------------------------------------------------ agents

    def _agent_request(self, connection: ServerConnection, request: Any) -> Any:
        if request.path.split("?", 1)[0] != AGENT_PATH:
            return connection.respond(404, "not found\n")
        return None

    async def _agent_handler(self, websocket: ServerConnection) -> None:
        headers = websocket.request.headers if websocket.request is not None else {}
        auth = headers.get("Authorization") or ""
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        node_name = (headers.get("X-Kaiden-Node-Name") or "").strip()
        if not hmac.compare_digest(token.encode(), self._agent_token.encode()) or not node_name:
            log.warning("agent refused: bad token or no node name")
            await websocket.close(CLOSE_UNAUTHORIZED, "unauthorized: bad agent token")
            return
        try:
            first = await asyncio.wait_for(websocket.recv(), timeout=10)
        except (TimeoutError, ConnectionClosed):
            await websocket.close(4400, "hello expected")
            return
        hello, error = protocol.decode_or_error(first)
        if error is not None or not isinstance(hello, protocol.Hello) or hello.payload.node_name != node_name:
            await websocket.send(
                error
                or protocol.error_frame(
                    protocol.ProtocolError(protocol.ErrorCode.invalid, "expected an agent hello for this node")
                )
            )
            await websocket.close(4400, "hello expected")
            return
        link = AgentLink(node_name=node_name, websocket=websocket, software_version=hello.payload.software_version)
        state = self.agents.setdefault(node_name, AgentState())
        old, state.link, state.version = state.link, link, link.software_version
        if old is not None:
            await old.websocket.close(CLOSE_REPLACED, "replaced by a newer connection")
        log.info("agent on node %s connected (%s)", node_name, link.software_version)
        try:
            async for frame in websocket:
                message, error = protocol.decode_or_error(frame)
                if error is not None:
                    log.warning("bad frame from the agent on %s answered with an error frame", node_name)
                    await websocket.send(error)
                    continue
                await self._from_agent(state, message)
        except ConnectionClosed:
            pass
        finally:
            if state.link is link:
                state.link = None
            log.info("agent on node %s disconnected", node_name)

    async def _from_agent(self, state: AgentState, message: protocol._Message) -> None:
        if isinstance(message, protocol.NodeFacts):
            state.facts = message.payload
            state.version = message.payload.agent_version
            return
        if isinstance(message, protocol.Hello | protocol.Heartbeat):
            return
        cloud = self._cloud  # replies and events go up as they are
        if cloud is not None:
            try:
                await cloud.send(protocol.encode(message))
            except ConnectionClosed:
                log.info("dropped a %s from an agent: the gateway connection is down", message.type)


def main(env: Mapping[str, str] | None = None) -> int:
    def start(config: ControllerConfig, stop: asyncio.Event) -> Awaitable[None]:
        return Controller(config, reader_factory=lambda: KubernetesReader(config.kubeconfig)).run(stop)

    return run_main(env, ControllerConfig.from_env, start, log)


if __name__ == "__main__":
    raise SystemExit(main())

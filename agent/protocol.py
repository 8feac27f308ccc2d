"""The agent protocol: every message between the cloud (gateway), a cluster's controller and its node
agents, versioned and validated the same way on both ends. The one definition; imports nothing of portal/.

A frame is one JSON object: `{"v": 1, "type": "...", "id": "optional correlation id", "payload": {...}}`.
Seed 000 §5.2 gives heartbeat, start_tunnel, stop_tunnel, tunnel_ready and tunnel_error; we add hello,
ack/error, node_facts (agent → controller), ping/pong, the terminal messages used by relay sessions and
recording_chunk (a session's asciicast, agent → cloud).
A reply carries the `id` of the command it answers (ack/error: `payload.of`); see docs/agents.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, field_validator
from pydantic import ValidationError as PydanticValidationError

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
MAX_FRAME_BYTES = 1024 * 1024
AGENT_TOKEN_CONTEXT = b"kaiden-agent-v1"

Name = Annotated[str, Field(min_length=1, max_length=253)]
Ident = Annotated[str, Field(min_length=1, max_length=128)]
ShortText = Annotated[str, Field(max_length=1000)]
LabelKey = Annotated[str, Field(max_length=317)]  # Kubernetes: 253-character prefix + "/" + 63-character name
LabelValue = Annotated[str, Field(max_length=63)]


class ErrorCode(StrEnum):
    malformed = "malformed"  # not a JSON object
    too_large = "too_large"
    unsupported_version = "unsupported_version"
    unknown_type = "unknown_type"
    invalid = "invalid"  # a known message whose fields are wrong
    unauthorized = "unauthorized"
    not_found = "not_found"
    unsupported = "unsupported"  # understood, but this peer cannot do it (yet)
    internal = "internal"


class ProtocolError(Exception):
    """A frame that cannot be accepted; `code` and `message` go back to the peer in an error frame."""

    def __init__(self, code: ErrorCode, message: str, *, of: str | None = None) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.of = of


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- payloads


class HelloPayload(_Strict):
    role: Literal["controller", "agent", "gateway"]
    protocol_versions: Annotated[list[int], Field(min_length=1, max_length=16)]
    software_version: Annotated[str, Field(min_length=1, max_length=64)]
    capabilities: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=64)] = []
    node_name: Name | None = None  # agents say which node they serve


class NodeReport(_Strict):
    name: Name
    status: Literal["ready", "not-ready", "unknown"]
    agent_status: Literal["online", "offline", "unknown"] = "unknown"
    agent_version: Annotated[str, Field(max_length=64)] | None = None
    internal_ip: Annotated[str, Field(max_length=64)] | None = None
    cpu_capacity: Annotated[str, Field(max_length=32)] | None = None
    memory_capacity: Annotated[str, Field(max_length=32)] | None = None
    os_image: Annotated[str, Field(max_length=255)] | None = None
    kernel_version: Annotated[str, Field(max_length=255)] | None = None
    kubelet_version: Annotated[str, Field(max_length=64)] | None = None
    architecture: Annotated[str, Field(max_length=32)] | None = None
    roles: Annotated[list[Annotated[str, Field(max_length=63)]], Field(max_length=32)] = []
    labels: Annotated[
        dict[Annotated[str, Field(max_length=317)], Annotated[str, Field(max_length=63)]], Field(max_length=128)
    ] = {}


class NodeFactsPayload(_Strict):
    """What an agent reads on its host (agent → controller)."""

    node_name: Name
    agent_version: Annotated[str, Field(min_length=1, max_length=64)]
    hostname: Annotated[str, Field(max_length=253)] | None = None
    ips: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=64)] = []
    os: Annotated[str, Field(max_length=255)] | None = None
    kernel: Annotated[str, Field(max_length=255)] | None = None
    architecture: Annotated[str, Field(max_length=32)] | None = None
    cpu_count: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    memory_bytes: Annotated[int, Field(ge=0)] | None = None


class PingPayload(_Strict):
    node_name: Name | None = None  # None: the controller answers itself


class PongPayload(_Strict):
    role: Literal["controller", "agent"]
    node_name: Name | None = None
    software_version: Annotated[str, Field(max_length=64)] | None = None


class HeartbeatPayload(_Strict):
    cluster_id: Ident
    k8s_version: Annotated[str, Field(max_length=64)] | None = None
    nodes: Annotated[list[NodeReport], Field(max_length=10_000)]


class StartTunnelPayload(_Strict):
    session_id: Ident
    node_name: Name
    tunnel_token: SecretStr  # a Cloudflare tunnel token: never printed by repr or logs
    services: Annotated[list[Literal["ssh", "web"]], Field(min_length=1, max_length=2)]
    public_hostname: Name | None = None  # the session's hostname, echoed back in tunnel_ready


class SessionRef(_Strict):
    session_id: Ident


class TunnelReadyPayload(_Strict):
    session_id: Ident
    public_hostname: Name


class TunnelErrorPayload(_Strict):
    session_id: Ident
    error: ShortText


class AckPayload(_Strict):
    of: Ident


class ErrorPayload(_Strict):
    code: ErrorCode
    message: ShortText
    of: Ident | None = None


class TerminalOpenPayload(_Strict):
    session_id: Ident
    node_name: Name
    cols: Annotated[int, Field(ge=1, le=1000)] = 80
    rows: Annotated[int, Field(ge=1, le=1000)] = 24
    record_input: bool = False  # also record keystrokes ("i" events) in the session's asciicast
    # Where the session's recording stands in the cloud. An agent with no recorder for the session (it restarted
    # mid-session) continues the recording from here: no second header, no seq the cloud already holds.
    recording_seq: Annotated[int, Field(ge=0, le=10_000_000)] = 0
    recording_elapsed: Annotated[float, Field(ge=0, le=10_000_000)] = 0.0


class TerminalDataPayload(_Strict):
    session_id: Ident
    data: Annotated[str, Field(max_length=(MAX_FRAME_BYTES // 4) * 3)]  # base64 of the bytes

    @field_validator("data")
    @classmethod
    def _is_base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("data must be base64") from exc
        return value

    def raw(self) -> bytes:
        return base64.b64decode(self.data)


class TerminalResizePayload(_Strict):
    session_id: Ident
    cols: Annotated[int, Field(ge=1, le=1000)]
    rows: Annotated[int, Field(ge=1, le=1000)]


class TerminalClosePayload(_Strict):
    session_id: Ident
    reason: ShortText | None = None


class RecordingChunkPayload(_Strict):
    """A piece of a session's asciicast v2 recording (agent → cloud), in order by `seq` from 0.

    `data` is whole NDJSON lines: chunk 0 starts with the header line. `final` marks the last chunk.
    """

    session_id: Ident
    seq: Annotated[int, Field(ge=0, le=10_000_000)]
    data: Annotated[str, Field(max_length=MAX_FRAME_BYTES // 2)]
    final: bool = False


# ---------------------------------------------------------------- messages


class _Message(_Strict):
    v: Literal[1] = PROTOCOL_VERSION
    id: Ident | None = None


class Hello(_Message):
    type: Literal["hello"] = "hello"
    payload: HelloPayload


class Heartbeat(_Message):
    type: Literal["heartbeat"] = "heartbeat"
    payload: HeartbeatPayload


class NodeFacts(_Message):
    type: Literal["node_facts"] = "node_facts"
    payload: NodeFactsPayload


class Ping(_Message):
    type: Literal["ping"] = "ping"
    payload: PingPayload = PingPayload()


class Pong(_Message):
    type: Literal["pong"] = "pong"
    payload: PongPayload


class StartTunnel(_Message):
    type: Literal["start_tunnel"] = "start_tunnel"
    payload: StartTunnelPayload


class StopTunnel(_Message):
    type: Literal["stop_tunnel"] = "stop_tunnel"
    payload: SessionRef


class TunnelReady(_Message):
    type: Literal["tunnel_ready"] = "tunnel_ready"
    payload: TunnelReadyPayload


class TunnelError(_Message):
    type: Literal["tunnel_error"] = "tunnel_error"
    payload: TunnelErrorPayload


class Ack(_Message):
    type: Literal["ack"] = "ack"
    payload: AckPayload


class Error(_Message):
    type: Literal["error"] = "error"
    payload: ErrorPayload


class TerminalOpen(_Message):
    type: Literal["terminal_open"] = "terminal_open"
    payload: TerminalOpenPayload


class TerminalData(_Message):
    type: Literal["terminal_data"] = "terminal_data"
    payload: TerminalDataPayload


class TerminalResize(_Message):
    type: Literal["terminal_resize"] = "terminal_resize"
    payload: TerminalResizePayload


class TerminalClose(_Message):
    type: Literal["terminal_close"] = "terminal_close"
    payload: TerminalClosePayload


class RecordingChunk(_Message):
    type: Literal["recording_chunk"] = "recording_chunk"
    payload: RecordingChunkPayload


MESSAGE_TYPES: tuple[type[_Message], ...] = (
    Hello,
    Heartbeat,
    NodeFacts,
    Ping,
    Pong,
    StartTunnel,
    StopTunnel,
    TunnelReady,
    TunnelError,
    Ack,
    Error,
    TerminalOpen,
    TerminalData,
    TerminalResize,
    TerminalClose,
    RecordingChunk,
)
TYPE_NAMES = frozenset(cls.model_fields["type"].default for cls in MESSAGE_TYPES)

Message = Annotated[
    Hello
    | Heartbeat
    | NodeFacts
    | Ping
    | Pong
    | StartTunnel
    | StopTunnel
    | TunnelReady
    | TunnelError
    | Ack
    | Error
    | TerminalOpen
    | TerminalData
    | TerminalResize
    | TerminalClose
    | RecordingChunk,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Message)


# ---------------------------------------------------------------- encoding


def encode(message: _Message) -> str:
    """Serialize a message to its wire text; secrets (the tunnel token) are revealed only here."""
    data = message.model_dump(mode="json", exclude_none=True)
    if isinstance(message, StartTunnel):
        data["payload"]["tunnel_token"] = message.payload.tunnel_token.get_secret_value()
    return json.dumps(data, separators=(",", ":"))


def decode(frame: str | bytes) -> _Message:
    """Parse and validate one frame. Any problem raises `ProtocolError`, never anything else."""
    size = len(frame) if isinstance(frame, bytes) else len(frame.encode("utf-8", "surrogatepass"))
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(ErrorCode.too_large, f"frame exceeds {MAX_FRAME_BYTES} bytes")
    try:
        data = json.loads(frame)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(ErrorCode.malformed, "frame is not valid JSON") from exc
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.malformed, "frame must be a JSON object")
    correlation = data.get("id") if isinstance(data.get("id"), str) and 1 <= len(data["id"]) <= 128 else None
    version = data.get("v")
    if type(version) is not int or version not in SUPPORTED_VERSIONS:  # bool and lists are not versions
        supported = ", ".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
        raise ProtocolError(
            ErrorCode.unsupported_version, f"protocol version {version!r} not supported ({supported})", of=correlation
        )
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in TYPE_NAMES:
        raise ProtocolError(ErrorCode.unknown_type, f"unknown message type {str(kind)[:64]!r}", of=correlation)
    try:
        return _ADAPTER.validate_python(data)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"][1:]) or "(message)"
        raise ProtocolError(ErrorCode.invalid, f"{kind}: {where}: {first['msg']}", of=correlation) from exc
    except RecursionError as exc:
        raise ProtocolError(ErrorCode.malformed, "frame is nested too deeply") from exc


def reply_id(message: _Message) -> str | None:
    """The command id a message answers: `payload.of` for ack/error, else the message's own `id`."""
    if isinstance(message, Ack | Error) and message.payload.of:
        return message.payload.of
    return message.id


def agent_token(api_key: str) -> str:
    """The token an agent presents to its controller: HMAC-SHA256(api_key, "kaiden-agent-v1"), hex.

    Derived, so an agent (or a leaked agent token) cannot authenticate to the cloud as the cluster.
    """
    return hmac.new(api_key.encode(), AGENT_TOKEN_CONTEXT, hashlib.sha256).hexdigest()


def error_frame(error: ProtocolError) -> str:
    """The frame that answers a refused one."""
    of = error.of if isinstance(error.of, str) and 1 <= len(error.of) <= 128 else None  # never a second failure
    return encode(Error(payload=ErrorPayload(code=error.code, message=error.message[:1000], of=of)))


def decode_or_error(frame: str | bytes) -> tuple[_Message | None, str | None]:
    """For connection handlers: `(message, None)` or `(None, error frame to send back)`."""
    try:
        return decode(frame), None
    except ProtocolError as exc:
        return None, error_frame(exc)

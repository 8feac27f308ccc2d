"""Commands to a cluster's controller from any process (portal, worker, CLI), through Redis.

The gateway holding the cluster's connection subscribes to the cluster's control channel, forwards
the frame and pushes the reply onto the list named in `reply_to`. See docs/agents.md. The envelopes on
that channel are made here only: `command` (a reply is awaited), `forward` (terminal input and resizes:
sent on, nothing comes back) and `replaced` (a newer connection took the cluster; the gateway's own).
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

import redis

if TYPE_CHECKING:
    import redis.asyncio as aioredis

from agent import protocol
from portal.errors import ConflictError, KaidenError

REPLY_TTL_SECONDS = 60


class ClusterUnavailable(ConflictError):
    """No gateway holds a connection from this cluster's controller right now."""

    code = "cluster_unavailable"


class CommandTimeout(KaidenError):
    status = 504
    code = "command_timeout"


def control_channel(cluster_id: uuid.UUID | str) -> str:
    return f"kaiden:cluster:{cluster_id}:control"


def events_channel(cluster_id: uuid.UUID | str) -> str:
    return f"kaiden:cluster:{cluster_id}:events"


def reply_key(command_id: str) -> str:
    return f"kaiden:reply:{command_id}"


def session_output_channel(session_id: uuid.UUID | str) -> str:
    """Where the gateway holding a cluster publishes a session's `terminal_data` / `terminal_close` frames."""
    return f"kaiden:session:{session_id}:out"


def _command_envelope(message: protocol._Message) -> tuple[protocol._Message, str, str]:
    """(the message with an id, its reply list key, the `command` envelope)."""
    if message.id is None:
        message = message.model_copy(update={"id": uuid.uuid4().hex})
    assert message.id is not None
    key = reply_key(message.id)
    envelope = json.dumps(
        {"kind": "command", "id": message.id, "frame": protocol.encode(message), "reply_to": key}, separators=(",", ":")
    )
    return message, key, envelope


def forward_envelope(message: protocol._Message) -> str:
    """The `forward` envelope: the holding gateway sends the frame to the controller and tracks no reply."""
    return json.dumps({"kind": "forward", "frame": protocol.encode(message)}, separators=(",", ":"))


def send_command(
    connection: redis.Redis, cluster_id: uuid.UUID | str, message: protocol._Message, *, timeout: float = 10.0
) -> protocol._Message:
    """Send `message` to the cluster's controller and return its reply (a protocol message, maybe `error`).

    The message gets a fresh `id` when it has none. Raises `ClusterUnavailable` when no gateway holds
    the cluster, `CommandTimeout` when no reply comes within `timeout` seconds.
    """
    message, key, envelope = _command_envelope(message)
    receivers = connection.publish(control_channel(cluster_id), envelope)
    if not receivers:
        raise ClusterUnavailable("The cluster's controller is not connected.")
    popped = connection.blpop([key], timeout=max(timeout, 0.01))
    if popped is None:
        raise CommandTimeout(f"The cluster did not answer {message.type} within {timeout:g} s.")
    connection.delete(key)
    return protocol.decode(popped[1])


async def send_command_async(
    connection: aioredis.Redis, cluster_id: uuid.UUID | str, message: protocol._Message, *, timeout: float = 10.0
) -> protocol._Message:
    """`send_command` for asyncio code (the gateway): the same envelope, errors and reply."""
    message, key, envelope = _command_envelope(message)
    receivers = await connection.publish(control_channel(cluster_id), envelope)
    if not receivers:
        raise ClusterUnavailable("The cluster's controller is not connected.")
    popped = await connection.blpop([key], timeout=max(timeout, 0.01))
    if popped is None:
        raise CommandTimeout(f"The cluster did not answer {message.type} within {timeout:g} s.")
    await connection.delete(key)
    return protocol.decode(popped[1])


async def forward_async(connection: aioredis.Redis, cluster_id: uuid.UUID | str, message: protocol._Message) -> None:
    """Send a frame to the controller, waiting for nothing; `ClusterUnavailable` when nobody holds the cluster."""
    receivers = await connection.publish(control_channel(cluster_id), forward_envelope(message))
    if not receivers:
        raise ClusterUnavailable("The cluster's controller is not connected.")

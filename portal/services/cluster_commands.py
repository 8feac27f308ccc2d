"""Commands to a cluster's controller from any process (portal, worker, CLI), through Redis.

The gateway holding the cluster's connection subscribes to the cluster's control channel, forwards
the frame and pushes the reply onto the list named in `reply_to`. See docs/agents.md.
"""

from __future__ import annotations

import json
import uuid

import redis

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


def send_command(
    connection: redis.Redis, cluster_id: uuid.UUID | str, message: protocol._Message, *, timeout: float = 10.0
) -> protocol._Message:
    """Send `message` to the cluster's controller and return its reply (a protocol message, maybe `error`).

    The message gets a fresh `id` when it has none. Raises `ClusterUnavailable` when no gateway holds
    the cluster, `CommandTimeout` when no reply comes within `timeout` seconds.
    """
    if message.id is None:
        message = message.model_copy(update={"id": uuid.uuid4().hex})
    assert message.id is not None
    key = reply_key(message.id)
    envelope = json.dumps(
        {"kind": "command", "id": message.id, "frame": protocol.encode(message), "reply_to": key}, separators=(",", ":")
    )
    receivers = connection.publish(control_channel(cluster_id), envelope)
    if not receivers:
        raise ClusterUnavailable("The cluster's controller is not connected.")
    popped = connection.blpop([key], timeout=max(timeout, 0.01))
    if popped is None:
        raise CommandTimeout(f"The cluster did not answer {message.type} within {timeout:g} s.")
    connection.delete(key)
    return protocol.decode(popped[1])

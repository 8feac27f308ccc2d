"""Server-Sent Events: an operation's progress, relayed from Redis pub/sub with a database poll as fallback.

`GET /api/v1/operations/<id>/events` — a plain Flask view (a stream is not a JSON route), with the same
authentication and visibility as `GET /api/v1/operations/<id>`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, stream_with_context

from portal import database_of, redis_of
from portal.jobs.common import CHANNEL
from portal.models import Operation
from portal.services import operations as operations_service

blueprint = Blueprint("operation_events", __name__)
POLL_SECONDS = 2.0
MAX_SECONDS = 3600.0


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _snapshot(app: Flask, operation_id: uuid.UUID) -> dict[str, Any] | None:
    with database_of(app).session() as session:
        operation = session.get(Operation, operation_id)
        if operation is None:
            return None
        return {
            "state": str(operation.state),
            "progress": operation.progress,
            "step": operation.step or "",
            "error": operation.error,
            "final": operation.is_final,
        }


def _end(snapshot: dict[str, Any]) -> str:
    return sse("end", {"state": snapshot["state"], "error": snapshot["error"]})


def _progress(snapshot: dict[str, Any]) -> str:
    return sse("progress", {"progress": snapshot["progress"], "done": 0, "total": 0, "step": snapshot["step"]})


@blueprint.get("/api/v1/operations/<uuid:operation_id>/events")
def operation_events(operation_id: uuid.UUID) -> Response:
    """Progress events of one operation until it ends (`event: end`)."""
    from portal import auth
    from portal.web import request_session

    actor = auth.authenticate_request(require=True)
    session = request_session()
    operations_service.get_operation(session, actor, operation_id)  # 404 unless visible to the actor
    session.close()  # hold no connection while streaming
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    connection = redis_of(app)

    def stream() -> Iterator[str]:
        pubsub = connection.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(CHANNEL.format(id=operation_id))
        try:
            snapshot = _snapshot(app, operation_id)
            if snapshot is None:
                return
            yield _progress(snapshot)
            if snapshot["final"]:
                yield _end(snapshot)
                return
            started = last_poll = time.monotonic()
            while time.monotonic() - started < MAX_SECONDS:
                message = pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") == "message":
                    payload = json.loads(message["data"])
                    yield sse(payload["event"], payload["data"])
                    if payload["event"] == "end":
                        return
                else:
                    yield ": keep-alive\n\n"
                if time.monotonic() - last_poll >= POLL_SECONDS:  # a missed message never hangs the stream
                    last_poll = time.monotonic()
                    snapshot = _snapshot(app, operation_id)
                    if snapshot is None:
                        return
                    if snapshot["final"]:
                        yield _progress(snapshot)
                        yield _end(snapshot)
                        return
        finally:
            pubsub.close()

    response = Response(stream_with_context(stream()), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response

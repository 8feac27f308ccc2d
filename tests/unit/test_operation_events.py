"""The SSE progress stream: auth and visibility, relaying Redis messages, ending on the final state."""

from __future__ import annotations

import threading
import time

from portal.jobs import common
from portal.models import OperationState, WorkspaceRole
from portal.queue import connect
from tests import factories


def _world(db, as_user):
    workspace = factories.make_workspace(db)
    viewer = factories.make_user(db, customer=workspace.customer)
    factories.make_member(db, workspace=workspace, user=viewer, role=WorkspaceRole.viewer)
    outsider = factories.make_user(db, customer=workspace.customer)
    operation = factories.make_operation(db, factories.make_service(db, workspace))
    db.commit()
    return operation, as_user(viewer), as_user(outsider)


def test_stream_needs_auth_and_visibility(client, db, as_user):
    operation, _, outsider = _world(db, as_user)
    url = f"/api/v1/operations/{operation.id}/events"
    assert client.get(url).status_code == 401
    assert client.get(url, headers=outsider).status_code == 404


def test_finished_operation_sends_its_state_and_ends(client, db, as_user):
    operation, viewer, _ = _world(db, as_user)
    operation.state = OperationState.failed
    operation.progress = 40
    operation.step = "creating Release x"
    operation.error = "release failed"
    db.commit()
    response = client.get(f"/api/v1/operations/{operation.id}/events", headers=viewer)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    text = response.get_data(as_text=True)
    assert text.startswith(
        'event: progress\ndata: {"progress": 40, "done": 0, "total": 0, "step": "creating Release x"}'
    )
    assert text.rstrip().endswith('event: end\ndata: {"state": "failed", "error": "release failed"}')


def test_running_operation_relays_published_progress_until_end(client, db, as_user, settings):
    operation, viewer, _ = _world(db, as_user)
    connection = connect(settings)

    channel = common.CHANNEL.format(id=operation.id)

    def publish_later() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not connection.pubsub_numsub(channel)[0][1]:
            time.sleep(0.05)  # the stream subscribes when the client starts reading
        step = {"progress": 50, "done": 1, "total": 2, "step": "creating Release x"}
        common.publish(connection, str(operation.id), "progress", step)
        common.publish(connection, str(operation.id), "end", {"state": "succeeded", "error": None})

    thread = threading.Thread(target=publish_later)
    thread.start()
    response = client.get(f"/api/v1/operations/{operation.id}/events", headers=viewer, buffered=False)
    chunks = "".join(chunk.decode() for chunk in response.response)
    thread.join()
    assert 'event: progress\ndata: {"progress": 50, "done": 1, "total": 2, "step": "creating Release x"}' in chunks
    assert chunks.rstrip().endswith('event: end\ndata: {"state": "succeeded", "error": null}')

"""Support-session jobs against a real Redis and a stand-in for the gateway + controller.

`FakeController` subscribes to the cluster's control channel and answers commands onto their
`reply_to` list exactly as the gateway does for a connected controller (and publishes unprompted
frames such as `tunnel_ready` on the cluster's events channel). The real gateway path is covered
by the integration tests.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
import redis
from sqlalchemy import Text, select, type_coerce

from agent import protocol
from portal.infra import engine
from portal.jobs import sessions as jobs
from portal.models import (
    CommentType,
    Operation,
    OperationState,
    SessionState,
    SessionTransport,
    SupportSession,
    TicketComment,
    utcnow,
)
from portal.services import sessions as service
from portal.services.cluster_commands import control_channel, events_channel
from portal.services.recordings import RecordingStore
from portal.tenancy import new_operation
from tests import factories

Handler = Callable[[protocol._Message, "FakeController"], protocol._Message | None]


class FakeController:
    """The gateway-and-controller side of `send_command`, in a thread: replies via `handler(message, self)`."""

    def __init__(self, redis_url: str, cluster_id: uuid.UUID, handler: Handler) -> None:
        self.connection = redis.Redis.from_url(redis_url)
        self.cluster_id = cluster_id
        self.handler = handler
        self.received: list[protocol._Message] = []
        self._after: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._pubsub = self.connection.pubsub()
        self._pubsub.subscribe(control_channel(cluster_id))
        while (message := self._pubsub.get_message(timeout=1.0)) is None or message["type"] != "subscribe":
            pass
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def after_reply(self, action: Callable[[], None]) -> None:
        """Run `action` once the current reply is delivered (e.g. report the tunnel after acking start_tunnel)."""
        self._after.append(action)

    def emit(self, message: protocol._Message) -> None:
        """A frame the controller sends on its own: published on the cluster's events channel."""
        self.connection.publish(events_channel(self.cluster_id), protocol.encode(message))

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
            if message is None:
                continue
            envelope = json.loads(message["data"])
            if envelope.get("kind") != "command":
                continue
            frame = protocol.decode(envelope["frame"])
            self.received.append(frame)
            reply = self.handler(frame, self)
            if reply is not None:
                self.connection.rpush(envelope["reply_to"], protocol.encode(reply))
                self.connection.expire(envelope["reply_to"], 60)
            while self._after:
                self._after.pop(0)()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pubsub.close()
        self.connection.close()


@pytest.fixture()
def controllers(settings):
    started: list[FakeController] = []

    def start(cluster_id: uuid.UUID, handler: Handler) -> FakeController:
        controller = FakeController(settings.redis_url, cluster_id, handler)
        started.append(controller)
        return controller

    yield start
    for controller in started:
        controller.close()


def ack(message: protocol._Message) -> protocol.Ack:
    return protocol.Ack(payload=protocol.AckPayload(of=message.id))


def error(message: protocol._Message, code: protocol.ErrorCode, text: str) -> protocol.Error:
    return protocol.Error(payload=protocol.ErrorPayload(code=code, message=text, of=message.id))


def agent(message: protocol._Message, _controller: FakeController) -> protocol._Message | None:
    """A healthy agent: pong to pings, ack to everything else."""
    if isinstance(message, protocol.Ping):
        return protocol.Pong(id=message.id, payload=protocol.PongPayload(role="agent", node_name="node-01"))
    return ack(message)


@pytest.fixture()
def world(db):
    cluster = factories.make_cluster(db, status="online")
    node = factories.make_node(db, cluster, name="node-01", agent_status="online")
    engineer = factories.make_engineer(db, name="Erin Engineer", email="erin@example.test")
    ticket = factories.make_ticket(db, cluster=cluster, assigned_to=engineer)
    db.commit()
    return {"cluster": cluster, "node": node, "engineer": engineer, "ticket": ticket}


def _queued(db, world, kind="session.start", requested_by=None, **session_fields):
    fields = {"state": SessionState.requested, **session_fields}
    support_session = factories.make_session(
        db, ticket=world["ticket"], node=world["node"], engineer=world["engineer"], **fields
    )
    if kind == "session.end":
        support_session.state = SessionState.ending
        support_session.end_reason = support_session.end_reason or service.REASON_USER
    operation = new_operation(db, kind, support_session, requested_by)
    db.commit()
    return support_session, operation


def _reload(db, support_session, operation):
    db.expire_all()
    return db.get(SupportSession, support_session.id), db.get(Operation, operation.id)


def _system_comments(db, ticket):
    return [
        c.content
        for c in db.scalars(
            select(TicketComment)
            .where(TicketComment.ticket_id == ticket.id, TicketComment.comment_type == CommentType.system)
            .order_by(TicketComment.created_at)
        )
    ]


# ---------------------------------------------------------------- relay start


def test_relay_start_pings_the_agent_and_activates_the_session(db, world, settings, controllers):
    controller = controllers(world["cluster"].id, agent)
    support_session, operation = _queued(db, world)
    assert jobs.start_session_job(str(operation.id), settings) == "succeeded"
    row, op = _reload(db, support_session, operation)
    assert row.state == SessionState.active and row.started_at is not None and row.error_message is None
    assert op.state == OperationState.succeeded and op.progress == 100 and op.finished_at is not None
    assert op.result["state"] == "active"
    (ping,) = controller.received
    assert isinstance(ping, protocol.Ping) and ping.payload.node_name == "node-01"
    assert _system_comments(db, world["ticket"]) == ["Support session started by Erin Engineer on node node-01."]
    # a second run of the same operation does nothing
    assert jobs.start_session_job(str(operation.id), settings) == "skipped"


def test_agent_error_fails_the_session_with_its_message(db, world, settings, controllers):
    controllers(
        world["cluster"].id, lambda m, c: error(m, protocol.ErrorCode.not_found, "no agent connected for node-01")
    )
    support_session, operation = _queued(db, world)
    assert jobs.start_session_job(str(operation.id), settings) == "failed"
    row, op = _reload(db, support_session, operation)
    assert row.state == SessionState.failed
    assert row.error_message == "The agent on node node-01 is not reachable: no agent connected for node-01"
    assert op.state == OperationState.failed and op.error == row.error_message
    assert _system_comments(db, world["ticket"]) == [
        f"Support session by Erin Engineer on node node-01 could not start: {row.error_message}"
    ]


def test_no_controller_fails_with_not_connected(db, world, settings):
    support_session, operation = _queued(db, world)
    assert jobs.start_session_job(str(operation.id), settings) == "failed"
    row, op = _reload(db, support_session, operation)
    assert row.state == SessionState.failed and "not connected" in row.error_message
    assert op.error == "The cluster's controller is not connected."


def test_silent_agent_fails_with_a_timeout(db, world, settings, controllers, monkeypatch):
    monkeypatch.setattr(jobs, "PING_TIMEOUT", 0.3)
    controllers(world["cluster"].id, lambda m, c: None)
    support_session, operation = _queued(db, world)
    assert jobs.start_session_job(str(operation.id), settings) == "failed"
    row, _ = _reload(db, support_session, operation)
    assert row.error_message == "The agent on node node-01 did not answer ping within 0.3 s."


def test_a_session_ended_before_its_start_ran_is_not_started(db, world, settings, controllers):
    controller = controllers(world["cluster"].id, agent)
    support_session, operation = _queued(db, world, state=SessionState.ending)
    assert jobs.start_session_job(str(operation.id), settings) == "cancelled"
    row, op = _reload(db, support_session, operation)
    assert row.state == SessionState.ending and op.state == OperationState.cancelled
    assert controller.received == []


# ---------------------------------------------------------------- relay end


@pytest.fixture()
def recordings(settings):
    store = RecordingStore.from_settings(settings)
    used: list[uuid.UUID] = []
    yield store, used
    for session_id in used:
        store.delete(session_id)


def test_end_closes_the_terminal_and_keeps_what_was_recorded(db, world, settings, controllers, recordings):
    store, used = recordings
    controller = controllers(world["cluster"].id, agent)
    admin = factories.make_admin(db, name="Ada Admin")
    started = utcnow() - timedelta(minutes=12, seconds=3)
    support_session, operation = _queued(
        db, world, kind="session.end", requested_by=admin, state=SessionState.active, started_at=started
    )
    used.append(support_session.id)
    store.put_chunk(support_session.id, 0, b'{"version": 2, "width": 80, "height": 24}\n[0.1, "o", "hi"]\n')
    store.put_chunk(support_session.id, 1, b'[1.0, "o", "there"]\n')  # no final chunk: still the recording
    assert jobs.end_session_job(str(operation.id), settings) == "succeeded"
    row, op = _reload(db, support_session, operation)
    assert row.state == SessionState.ended and row.ended_at is not None and row.end_reason == "ended_by_user"
    assert row.recording_url == f"/api/v1/sessions/{support_session.id}/recording"
    assert row.recording_path == store.path_of(support_session.id)
    assert op.state == OperationState.succeeded and op.result["recording_url"] == row.recording_url
    (close,) = controller.received
    assert isinstance(close, protocol.TerminalClose) and close.payload.session_id == str(support_session.id)
    (comment,) = _system_comments(db, world["ticket"])
    assert re.fullmatch(
        r"Support session by Erin Engineer on node node-01 ended \(by Ada Admin\) after 12 min [34] s; "
        r"recording available\.",
        comment,
    ), comment


def test_an_unreachable_agent_does_not_block_the_end(db, world, settings, monkeypatch):
    monkeypatch.setattr(jobs, "RECORDING_WAIT", 0.3)
    support_session, operation = _queued(
        db,
        world,
        kind="session.end",
        state=SessionState.active,
        started_at=utcnow() - timedelta(seconds=42),
        end_reason=service.REASON_EXPIRED,
    )
    assert jobs.end_session_job(str(operation.id), settings) == "succeeded"
    row, op = _reload(db, support_session, operation)
    assert row.state == SessionState.ended and row.end_reason == "expired"
    assert row.recording_url is None and row.recording_path is None
    assert op.result["notes"] == ["the cluster's controller was not connected"]
    (comment,) = _system_comments(db, world["ticket"])
    assert re.fullmatch(r"Support session by Erin Engineer on node node-01 ended \(expired\) after 4[23] s\.", comment)


def test_a_session_that_never_started_ends_without_a_duration(db, world, settings, controllers):
    controllers(world["cluster"].id, lambda m, c: error(m, protocol.ErrorCode.not_found, "no such terminal"))
    support_session, operation = _queued(db, world, kind="session.end", end_reason=service.REASON_TICKET_CLOSED)
    assert jobs.end_session_job(str(operation.id), settings) == "succeeded"
    row, _ = _reload(db, support_session, operation)
    assert row.state == SessionState.ended
    assert _system_comments(db, world["ticket"]) == [
        "Support session by Erin Engineer on node node-01 ended (ticket closed) before it became active."
    ]


# ---------------------------------------------------------------- Cloudflare (engine stubbed)


@pytest.fixture()
def cloudflare_settings(settings):
    return dataclasses.replace(
        settings,
        cloudflare_api_token="cf-api-token-secret",
        cloudflare_account_id="acct123",
        cloudflare_zone_id="zone123",
        support_domain="support.example.test",
    )


class FakeEngine:
    """Stands in for `portal.infra.engine`'s up/destroy: Cloudflare cannot be reached from the tests."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict]] = []

    def up(self, stack, program, settings, **options):
        self.calls.append(("up", str(stack), options))
        self.program = program
        hostname = f"{stack}.support.example.test"
        outputs = {
            "tunnel_id": "tun-1",
            "tunnel_token": engine.Secret("tunnel-token-secret"),
            "public_hostname": hostname,
            "dns_record_id": "dns-1",
            "access_app_id": "app-1",
            "access_policy_id": "pol-1",
        }
        return engine.EngineResult(str(stack), "update", "succeeded", {"create": 6}, outputs, 0.1)

    def destroy(self, stack, settings, **options):
        self.calls.append(("destroy", str(stack), options))
        return engine.EngineResult(str(stack), "destroy", "succeeded", {"delete": 6}, {}, 0.1)


@pytest.fixture()
def fake_engine(monkeypatch):
    fake = FakeEngine()
    monkeypatch.setattr(jobs.engine, "up", fake.up)
    monkeypatch.setattr(jobs.engine, "destroy", fake.destroy)
    return fake


def _tunnel_agent(outcome: str) -> Handler:
    def handle(message: protocol._Message, controller: FakeController) -> protocol._Message | None:
        if isinstance(message, protocol.StartTunnel):
            reply = ack(message)
            sid = message.payload.session_id
            if outcome == "ready":
                event = protocol.TunnelReady(
                    payload=protocol.TunnelReadyPayload(session_id=sid, public_hostname=message.payload.public_hostname)
                )
            else:
                event = protocol.TunnelError(
                    payload=protocol.TunnelErrorPayload(session_id=sid, error="cloudflared exited with status 1")
                )
            other = protocol.TunnelReady(  # another session's event on the same cluster is not ours
                payload=protocol.TunnelReadyPayload(session_id=str(uuid.uuid4()), public_hostname="x.example.test")
            )
            controller.after_reply(lambda: (controller.emit(other), controller.emit(event)))
            return reply
        return agent(message, controller)

    return handle


def test_cloudflare_start_applies_the_stack_and_waits_for_tunnel_ready(
    db, world, cloudflare_settings, controllers, fake_engine
):
    """The engine call is stubbed (Cloudflare cannot be reached); the program itself is tested under Pulumi mocks."""
    controller = controllers(world["cluster"].id, _tunnel_agent("ready"))
    support_session, operation = _queued(db, world, transport=SessionTransport.cloudflare, services=["ssh"])
    assert jobs.start_session_job(str(operation.id), cloudflare_settings) == "succeeded"
    row, op = _reload(db, support_session, operation)
    hostname = f"sess-{support_session.id}.support.example.test"
    assert row.state == SessionState.active and row.public_hostname == hostname
    assert (row.tunnel_id, row.dns_record_id, row.access_app_id, row.access_policy_id) == (
        "tun-1",
        "dns-1",
        "app-1",
        "pol-1",
    )
    assert row.tunnel_token == "tunnel-token-secret"  # stored encrypted, read back through the column type
    raw = db.scalar(select(type_coerce(SupportSession.tunnel_token, Text)).where(SupportSession.id == row.id))
    assert raw and "tunnel-token-secret" not in raw
    assert op.result["public_hostname"] == hostname
    everything = json.dumps([op.params, op.result, op.error, op.log, op.step])
    assert "tunnel-token-secret" not in everything and "cf-api-token-secret" not in everything
    (call,) = fake_engine.calls
    assert call[0] == "up" and call[1] == f"sess-{support_session.id}"
    assert call[2]["config"]["kaiden:cloudflareApiToken"].reveal() == "cf-api-token-secret"
    spec = fake_engine.program.args[0]
    assert spec.services == ("ssh",) and spec.engineer_email == "erin@example.test"
    assert spec.account_id == "acct123" and spec.zone_id == "zone123"
    (start,) = controller.received
    assert isinstance(start, protocol.StartTunnel)
    assert start.payload.public_hostname == hostname and start.payload.node_name == "node-01"
    assert start.payload.tunnel_token.get_secret_value() == "tunnel-token-secret"
    assert _system_comments(db, world["ticket"]) == [
        f"Support session started by Erin Engineer on node node-01 ({hostname})."
    ]


def test_cloudflare_tunnel_error_fails_and_destroys_the_stack(db, world, cloudflare_settings, controllers, fake_engine):
    """The engine call is stubbed (Cloudflare cannot be reached)."""
    controllers(world["cluster"].id, _tunnel_agent("error"))
    support_session, operation = _queued(db, world, transport=SessionTransport.cloudflare)
    assert jobs.start_session_job(str(operation.id), cloudflare_settings) == "failed"
    row, op = _reload(db, support_session, operation)
    assert row.state == SessionState.failed
    assert row.error_message == "The tunnel on node node-01 failed: cloudflared exited with status 1"
    assert op.error == row.error_message
    assert [(kind, stack) for kind, stack, _ in fake_engine.calls] == [
        ("up", f"sess-{support_session.id}"),
        ("destroy", f"sess-{support_session.id}"),
    ]
    assert fake_engine.calls[1][2]["remove"] is True


def test_cloudflare_tunnel_that_never_comes_up_times_out(
    db, world, cloudflare_settings, controllers, fake_engine, monkeypatch
):
    """The engine call is stubbed (Cloudflare cannot be reached)."""
    monkeypatch.setattr(jobs, "TUNNEL_READY_TIMEOUT", 0.5)
    controller = controllers(world["cluster"].id, agent)  # acks start_tunnel, never reports the tunnel
    support_session, operation = _queued(db, world, transport=SessionTransport.cloudflare)
    assert jobs.start_session_job(str(operation.id), cloudflare_settings) == "failed"
    row, _ = _reload(db, support_session, operation)
    assert row.error_message == "The tunnel on node node-01 did not come up within 0.5 s."
    assert [type(m) for m in controller.received] == [protocol.StartTunnel, protocol.StopTunnel]
    assert [kind for kind, _, _ in fake_engine.calls] == ["up", "destroy"]


def test_cloudflare_end_stops_the_tunnel_and_destroys_the_stack(
    db, world, cloudflare_settings, controllers, fake_engine, monkeypatch
):
    """The engine call is stubbed (Cloudflare cannot be reached)."""
    monkeypatch.setattr(jobs, "RECORDING_WAIT", 0.2)
    controller = controllers(world["cluster"].id, agent)
    support_session, operation = _queued(
        db,
        world,
        kind="session.end",
        transport=SessionTransport.cloudflare,
        state=SessionState.active,
        started_at=utcnow() - timedelta(minutes=1),
        tunnel_token="tunnel-token-secret",
        public_hostname="sess-x.support.example.test",
    )
    assert jobs.end_session_job(str(operation.id), cloudflare_settings) == "succeeded"
    row, op = _reload(db, support_session, operation)
    assert row.state == SessionState.ended and row.tunnel_token is None
    assert op.state == OperationState.succeeded
    (stop,) = controller.received
    assert isinstance(stop, protocol.StopTunnel) and stop.payload.session_id == str(support_session.id)
    ((kind, stack, options),) = fake_engine.calls
    assert (kind, stack, options["remove"]) == ("destroy", f"sess-{support_session.id}", True)


def test_a_failed_destroy_keeps_the_session_ending_for_a_retry(
    db, world, cloudflare_settings, controllers, fake_engine, monkeypatch
):
    """The engine call is stubbed (Cloudflare cannot be reached)."""
    from portal.errors import InfrastructureError

    def broken(stack, settings, **options):
        raise InfrastructureError("destroy of sess-x failed: the Cloudflare API answered 503")

    monkeypatch.setattr(jobs.engine, "destroy", broken)
    controllers(world["cluster"].id, agent)
    support_session, operation = _queued(
        db, world, kind="session.end", transport=SessionTransport.cloudflare, state=SessionState.active
    )
    assert jobs.end_session_job(str(operation.id), cloudflare_settings) == "failed"
    row, op = _reload(db, support_session, operation)
    assert row.state == SessionState.ending and "503" in row.error_message
    assert op.state == OperationState.failed and op.error == "destroy of sess-x failed: the Cloudflare API answered 503"


def test_durations_read_like_people_write_them():
    assert jobs.format_duration(723) == "12 min 3 s"
    assert jobs.format_duration(42.9) == "42 s"
    assert jobs.format_duration(3605) == "1 h 0 min 5 s"

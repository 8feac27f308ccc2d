"""The runtime end to end on real PostgreSQL + Redis: gateway, controller and agents (the real code, as asyncio
tasks), raw websocket clients for the refusals and malformed frames, commands through Redis.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid

import pytest
from hypothesis import assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import select
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from agent import protocol
from portal import database_of, redis_of
from portal.gateway import Gateway
from portal.models import AgentStatus, Cluster, ClusterStatus, Node, NodeStatus
from portal.services import clusters as cluster_service
from portal.services.cluster_commands import ClusterUnavailable, CommandTimeout, events_channel, reply_key, send_command
from tests.d1_support import FAST, RunningGateway, cluster_row, free_port, wait_until
from tests.factories import make_admin, make_cluster

pytestmark = pytest.mark.integration

PATH = "/api/v1/agent/connect"


def _new_cluster(app) -> tuple[str, str]:
    with database_of(app).session() as session:
        cluster = make_cluster(session)
        return str(cluster.id), cluster.plain_api_key


def _raw(gateway, cluster_id: str, key: str) -> ClientConnection:
    return connect(
        gateway.url + PATH,
        additional_headers={"Authorization": f"Bearer {key}", "X-Kaiden-Cluster-Id": cluster_id},
        open_timeout=5,
    )


def _hello() -> str:
    return protocol.encode(
        protocol.Hello(
            payload=protocol.HelloPayload(role="controller", protocol_versions=[1], software_version="test-1")
        )
    )


def _heartbeat(cluster_id: str, *names: str, k8s: str = "v1.36.3") -> str:
    nodes = [protocol.NodeReport(name=n, status="ready", agent_status="online", agent_version="9.9") for n in names]
    return protocol.encode(
        protocol.Heartbeat(payload=protocol.HeartbeatPayload(cluster_id=cluster_id, k8s_version=k8s, nodes=nodes))
    )


def _closed_with(ws: ClientConnection) -> tuple[int | None, str]:
    with pytest.raises(ConnectionClosed) as caught:
        ws.recv(timeout=5)
    rcvd = caught.value.rcvd
    return (rcvd.code, rcvd.reason) if rcvd else (None, "")


def test_healthz_and_metrics(gateway) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.port}/healthz", timeout=5) as response:
        assert json.load(response) == {"status": "ok"}
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.port}/metrics", timeout=5) as response:
        metrics = json.load(response)
    assert metrics["controllers"] == 0 and metrics["rss_kib"] > 0


def test_controller_and_agents_bring_the_cluster_online_with_nodes(app, runtime) -> None:
    cluster_id, key = _new_cluster(app)
    assert cluster_row(app, cluster_id).status == ClusterStatus.pending
    controller = runtime.controller(cluster_id, key)
    runtime.agent(controller, "node-a", key)
    runtime.agent(controller, "node-b", key)

    def online_with_agents() -> bool:
        cluster = cluster_row(app, cluster_id)
        agents = {n.name: n.agent_status for n in cluster.nodes}
        return cluster.status == ClusterStatus.online and agents == {
            "node-a": AgentStatus.online,
            "node-b": AgentStatus.online,
        }

    wait_until(online_with_agents, 10, "cluster online with two agents")
    cluster = cluster_row(app, cluster_id)
    assert cluster.node_count == 2 and cluster.controller_version == "0.1.0"
    assert cluster.last_heartbeat is not None
    node = cluster.nodes[0]
    # agent-only nodes (no Kubernetes reader here) carry the agent's facts
    assert node.agent_version == "0.1.0" and node.kernel_version and node.cpu_capacity
    assert node.status == NodeStatus.unknown and node.last_seen is not None


def test_the_controller_refuses_agents_without_the_derived_token(app, runtime) -> None:
    cluster_id, key = _new_cluster(app)
    controller = runtime.controller(cluster_id, key)
    url = f"ws://127.0.0.1:{controller.obj.listen_port}/agent"
    for token in ("", key, protocol.agent_token(key + "x")):  # the cluster key itself is not an agent token
        with connect(url, additional_headers={"Authorization": f"Bearer {token}", "X-Kaiden-Node-Name": "n1"}) as ws:
            assert _closed_with(ws) == (4001, "unauthorized: bad agent token")
    good = {"Authorization": f"Bearer {protocol.agent_token(key)}", "X-Kaiden-Node-Name": "n1"}
    with connect(url, additional_headers=good) as ws:
        ws.send("{")  # not a hello
        assert protocol.decode(ws.recv(timeout=5)).type == "error"
        assert _closed_with(ws)[0] == 4400
    assert controller.obj.agents == {}


def test_wrong_key_unknown_cluster_and_rotated_key_are_refused(app, gateway) -> None:
    cluster_id, key = _new_cluster(app)
    with _raw(gateway, cluster_id, key + "x") as ws:
        assert _closed_with(ws) == (4001, "unauthorized: wrong or rotated API key")
    with _raw(gateway, str(uuid.uuid4()), key) as ws:
        assert _closed_with(ws) == (4004, "unknown cluster")
    with _raw(gateway, "not-a-uuid", key) as ws:
        assert _closed_with(ws)[0] == 4004
    with database_of(app).session() as session:
        cluster = session.get(Cluster, uuid.UUID(cluster_id))
        new_key = cluster_service.rotate_api_key(session, make_admin(session), cluster).api_key
    with _raw(gateway, cluster_id, key) as ws:
        assert _closed_with(ws)[0] == 4001
    with _raw(gateway, cluster_id, new_key) as ws:
        ws.send(_hello())
        ws.send(_heartbeat(cluster_id, "n1"))
        wait_until(lambda: cluster_row(app, cluster_id).status == ClusterStatus.online, 5, "online with the new key")
    # nothing was written for the refused attempts: only the accepted connection made it online
    assert cluster_row(app, cluster_id).node_count == 1


def test_rotating_the_key_disconnects_the_live_controller(app, gateway) -> None:
    cluster_id, key = _new_cluster(app)
    with _raw(gateway, cluster_id, key) as ws:
        ws.send(_hello())
        wait_until(lambda: len(gateway.gateway.hub.connections) == 1, 5, "connected")
        time.sleep(FAST.key_check_seconds * 2)
        assert len(gateway.gateway.hub.connections) == 1  # an unchanged key keeps the connection
        with database_of(app).session() as session:
            cluster = session.get(Cluster, uuid.UUID(cluster_id))
            cluster_service.rotate_api_key(session, make_admin(session), cluster)
        assert _closed_with(ws) == (4001, "unauthorized: wrong or rotated API key")
    wait_until(lambda: not gateway.gateway.hub.connections, 5, "connection dropped")


def test_first_frame_must_be_a_controller_hello(app, gateway) -> None:
    cluster_id, key = _new_cluster(app)
    with _raw(gateway, cluster_id, key) as ws:
        ws.send(_heartbeat(cluster_id, "n1"))
        answer = protocol.decode(ws.recv(timeout=5))
        assert answer.type == "error" and answer.payload.code == protocol.ErrorCode.invalid
        assert _closed_with(ws)[0] == 4400
    assert cluster_row(app, cluster_id).status == ClusterStatus.pending


def test_a_new_connection_replaces_the_old_one(app, gateway) -> None:
    cluster_id, key = _new_cluster(app)
    with _raw(gateway, cluster_id, key) as first:
        first.send(_hello())
        wait_until(lambda: len(gateway.gateway.hub.connections) == 1, 5, "first connection registered")
        with _raw(gateway, cluster_id, key) as second:
            second.send(_hello())
            assert _closed_with(first) == (4009, "replaced by a newer connection")
            second.send(_heartbeat(cluster_id, "n1", "n2"))
            wait_until(lambda: cluster_row(app, cluster_id).node_count == 2, 5, "heartbeat on the new connection")
            assert len(gateway.gateway.hub.connections) == 1


def test_malformed_frames_get_error_frames_and_the_connection_lives_on(app, gateway) -> None:
    cluster_id, key = _new_cluster(app)
    bad_frames = [
        "not json",
        "[1]",
        '{"v": 9, "type": "heartbeat", "payload": {}}',
        '{"v": 1, "type": "reboot", "payload": {}}',
        '{"v": 1, "id": "c-1", "type": "heartbeat", "payload": {"nodes": "many"}}',
        b"\xff\xfe",
    ]
    expected = ["malformed", "malformed", "unsupported_version", "unknown_type", "invalid", "malformed"]
    with _raw(gateway, cluster_id, key) as ws:
        ws.send(_hello())
        for frame, code in zip(bad_frames, expected, strict=True):
            ws.send(frame)
            answer = protocol.decode(ws.recv(timeout=5))
            assert (answer.type, answer.payload.code.value) == ("error", code)
        ws.send(_heartbeat(str(uuid.uuid4()), "n1"))  # another cluster's id: refused, not recorded
        assert protocol.decode(ws.recv(timeout=5)).payload.code == protocol.ErrorCode.invalid
        ws.send(_heartbeat(cluster_id, "n1"))
        wait_until(lambda: cluster_row(app, cluster_id).node_count == 1, 5, "heartbeat after the bad frames")
    assert gateway.gateway.stats.frame_errors >= len(bad_frames) + 1


def test_nodes_absent_from_a_report_are_marked_unknown_and_offline(app, gateway) -> None:
    cluster_id, key = _new_cluster(app)
    with _raw(gateway, cluster_id, key) as ws:
        ws.send(_hello())
        ws.send(_heartbeat(cluster_id, "n1", "n2", "n3"))
        wait_until(lambda: len(cluster_row(app, cluster_id).nodes) == 3, 5, "three nodes")
        ws.send(_heartbeat(cluster_id, "n1", "n3", k8s="v1.36.4"))

        def n2_gone() -> bool:
            nodes = {n.name: n for n in cluster_row(app, cluster_id).nodes}
            return nodes["n2"].status == NodeStatus.unknown and nodes["n2"].agent_status == AgentStatus.offline

        wait_until(n2_gone, 5, "n2 marked absent")
    cluster = cluster_row(app, cluster_id)
    nodes = {n.name: n for n in cluster.nodes}
    assert cluster.node_count == 2 and cluster.k8s_version == "v1.36.4"
    assert nodes["n1"].status == NodeStatus.ready and nodes["n1"].agent_status == AgentStatus.online
    assert nodes["n1"].agent_version == "9.9"


def test_offline_after_missed_heartbeats_and_online_again_on_reconnect(app, runtime) -> None:
    cluster_id, key = _new_cluster(app)
    controller = runtime.controller(cluster_id, key)
    runtime.agent(controller, "node-a", key)
    wait_until(lambda: cluster_row(app, cluster_id).status == ClusterStatus.online, 10, "online")
    # still online well past one interval while heartbeats flow
    time.sleep(FAST.offline_after * 2)
    assert cluster_row(app, cluster_id).status == ClusterStatus.online
    controller.stop()
    stopped = time.monotonic()
    wait_until(lambda: cluster_row(app, cluster_id).status == ClusterStatus.offline, 10, "offline")
    assert time.monotonic() - stopped >= FAST.offline_after * 0.5  # not flipped by the disconnect itself
    cluster = cluster_row(app, cluster_id)
    assert all(n.agent_status == AgentStatus.offline for n in cluster.nodes)
    runtime.controller(cluster_id, key)
    wait_until(lambda: cluster_row(app, cluster_id).status == ClusterStatus.online, 10, "online again")


def test_command_round_trip_through_redis_gateway_controller_agent(app, runtime) -> None:
    cluster_id, key = _new_cluster(app)
    redis = redis_of(app)
    with pytest.raises(ClusterUnavailable):
        send_command(redis, cluster_id, protocol.Ping(), timeout=1)
    controller = runtime.controller(cluster_id, key)
    agent = runtime.agent(controller, "node-a", key)
    wait_until(lambda: agent.obj.connected.is_set(), 10, "agent connected")
    wait_until(lambda: uuid.UUID(cluster_id) in runtime.gateway.gateway.hub.connections, 10, "controller connected")

    reply = send_command(redis, cluster_id, protocol.Ping(id="cmd-1", payload=protocol.PingPayload(node_name="node-a")))
    assert isinstance(reply, protocol.Pong)
    assert (reply.id, reply.payload.role, reply.payload.node_name) == ("cmd-1", "agent", "node-a")

    reply = send_command(redis, cluster_id, protocol.Ping())  # no node: the controller itself answers
    assert isinstance(reply, protocol.Pong) and reply.payload.role == "controller"

    reply = send_command(redis, cluster_id, protocol.Ping(payload=protocol.PingPayload(node_name="node-zz")))
    assert isinstance(reply, protocol.Error) and reply.payload.code == protocol.ErrorCode.not_found

    reply = send_command(
        redis,
        cluster_id,
        protocol.StopTunnel(payload=protocol.SessionRef(session_id="s-unknown")),
    )
    assert isinstance(reply, protocol.Error) and "unknown session" in reply.payload.message
    assert not redis.exists(reply_key("cmd-1"))  # the reply was consumed, nothing left behind


def test_a_command_nobody_answers_times_out(app, gateway) -> None:
    cluster_id, key = _new_cluster(app)
    with _raw(gateway, cluster_id, key) as ws:
        ws.send(_hello())
        wait_until(lambda: len(gateway.gateway.hub.connections) == 1, 5, "connected")
        with pytest.raises(CommandTimeout):
            send_command(redis_of(app), cluster_id, protocol.Ping(), timeout=0.5)
        forwarded = protocol.decode(ws.recv(timeout=5))  # the raw client got it but stayed silent
        assert forwarded.type == "ping"


def test_heartbeats_are_written_in_batches(app, gateway) -> None:
    cluster_id, key = _new_cluster(app)
    before = gateway.gateway.stats.flushes
    with _raw(gateway, cluster_id, key) as ws:
        ws.send(_hello())
        for _ in range(20):
            ws.send(_heartbeat(cluster_id, "n1"))
        wait_until(lambda: gateway.gateway.stats.heartbeats >= 20, 5, "20 heartbeats received")
        wait_until(lambda: cluster_row(app, cluster_id).node_count == 1, 5, "written")
    flushes = gateway.gateway.stats.flushes - before
    assert 1 <= flushes < 20  # many heartbeats, few transactions
    with database_of(app).session() as session:
        assert session.scalar(select(Node.name).where(Node.cluster_id == uuid.UUID(cluster_id))) == "n1"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)
_frames = st.one_of(
    st.text(max_size=100),
    st.binary(max_size=100),
    _json.map(json.dumps),
    st.fixed_dictionaries(
        {"v": st.just(1), "type": st.sampled_from(sorted(protocol.TYPE_NAMES)), "payload": _json}
    ).map(json.dumps),
)


def test_any_bad_frame_gets_an_error_frame_and_the_connection_stays(app, gateway) -> None:
    cluster_id, key = _new_cluster(app)
    with _raw(gateway, cluster_id, key) as ws:
        ws.send(_hello())

        @hypothesis_settings(max_examples=150, deadline=None, derandomize=True)
        @given(_frames)
        def check(frame: str | bytes) -> None:
            assume(protocol.decode_or_error(frame)[1] is not None)  # only frames the protocol refuses
            ws.send(frame)
            answer = protocol.decode(ws.recv(timeout=5))
            assert answer.type == "error"

        check()
        ws.send(_heartbeat(cluster_id, "still-here"))
        wait_until(lambda: cluster_row(app, cluster_id).node_count == 1, 5, "a heartbeat after the fuzzing")
    assert gateway.gateway.stats.frame_errors >= 100


def test_one_connection_per_cluster_across_gateway_processes(app, settings, loop, gateway) -> None:
    """Two gateways share the database and Redis: connecting to the second closes the first's connection."""
    second = Gateway(settings, FAST)
    port = loop.run(second.start("127.0.0.1", 0))
    try:
        cluster_id, key = _new_cluster(app)
        with _raw(gateway, cluster_id, key) as first:
            first.send(_hello())
            wait_until(lambda: len(gateway.gateway.hub.connections) == 1, 5, "held by the first gateway")
            other = RunningGateway(second, port)
            with _raw(other, cluster_id, key) as newer:
                newer.send(_hello())
                assert _closed_with(first) == (4009, "replaced by a newer connection")
                wait_until(lambda: not gateway.gateway.hub.connections, 5, "first gateway let go")
                # commands now reach the controller through the second gateway
                reply_box: list = []
                thread = threading.Thread(
                    target=lambda: reply_box.append(
                        send_command(redis_of(app), cluster_id, protocol.Ping(id="x-1"), timeout=5)
                    )
                )
                thread.start()
                command = protocol.decode(newer.recv(timeout=5))
                assert (command.type, command.id) == ("ping", "x-1")
                newer.send(protocol.encode(protocol.Pong(id="x-1", payload=protocol.PongPayload(role="controller"))))
                thread.join(timeout=10)
                assert isinstance(reply_box[0], protocol.Pong) and reply_box[0].id == "x-1"
    finally:
        loop.run(second.close())


def test_unprompted_controller_messages_are_published_as_events(app, gateway) -> None:
    cluster_id, key = _new_cluster(app)
    pubsub = redis_of(app).pubsub()
    pubsub.subscribe(events_channel(cluster_id))
    try:
        assert pubsub.get_message(timeout=2)["type"] == "subscribe"
        with _raw(gateway, cluster_id, key) as ws:
            ws.send(_hello())
            ready = protocol.TunnelReady(
                payload=protocol.TunnelReadyPayload(session_id="s-1", public_hostname="sess-1.support.example")
            )
            ws.send(protocol.encode(ready))
            event = pubsub.get_message(timeout=5)
            assert event is not None and protocol.decode(event["data"]) == ready
    finally:
        pubsub.close()


def test_session_commands_follow_the_node_of_their_session(app, runtime) -> None:
    cluster_id, key = _new_cluster(app)
    controller = runtime.controller(cluster_id, key)
    agent = runtime.agent(controller, "node-a", key)
    wait_until(lambda: agent.obj.connected.is_set(), 10, "agent connected")
    wait_until(lambda: uuid.UUID(cluster_id) in runtime.gateway.gateway.hub.connections, 10, "controller connected")
    redis = redis_of(app)
    opened = protocol.TerminalOpen(payload=protocol.TerminalOpenPayload(session_id="s-9", node_name="node-a"))
    reply = send_command(redis, cluster_id, opened)
    assert isinstance(reply, protocol.Ack)  # the agent opened a shell for the session
    assert controller.obj.sessions == {"s-9": "node-a"}
    # a session the controller never saw opened has no node to go to: the controller answers itself
    stray = protocol.TerminalData(payload=protocol.TerminalDataPayload(session_id="s-10", data="bHM="))
    reply = send_command(redis, cluster_id, stray)
    assert isinstance(reply, protocol.Error) and reply.payload.code == protocol.ErrorCode.not_found
    close = protocol.TerminalClose(payload=protocol.TerminalClosePayload(session_id="s-9"))
    reply = send_command(redis, cluster_id, close, timeout=20)
    assert isinstance(reply, protocol.Ack)  # the agent closed the shell (after sending its last chunk)
    assert controller.obj.sessions == {}


def test_kaiden_gateway_command_serves_a_controller_process(app, settings, processes, tmp_path) -> None:
    """The wiring of `kaiden gateway` (what `kaiden up` starts) to this package, with real processes."""
    cluster_id, key = _new_cluster(app)
    port = free_port()
    processes.start(
        "portal.cli",
        {
            "KAIDEN_HOME": str(tmp_path / "home"),
            "KAIDEN_DATABASE_URL": settings.database_url,
            "KAIDEN_REDIS_URL": settings.redis_url or "",
            "KAIDEN_SECRET_KEY": "test",
            "KAIDEN_GATEWAY_PORT": str(port),
            "KAIDEN_HEARTBEAT_FLUSH_SECONDS": "0.2",
        },
        "gateway",
        args=["gateway"],
    )

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    wait_until(healthy, 60, "kaiden gateway answering /healthz")
    processes.controller(
        {
            "CLUSTER_ID": cluster_id,
            "API_KEY": key,
            "CLOUD_ENDPOINT": f"ws://127.0.0.1:{port}",
            "HEARTBEAT_INTERVAL": "0.5",
            "CONTROLLER_LISTEN": "127.0.0.1:0",
            "KUBECONFIG": str(tmp_path / "missing-kubeconfig"),  # unreadable API: heartbeats go on regardless
        }
    )
    wait_until(lambda: cluster_row(app, cluster_id).status == ClusterStatus.online, 60, "online via kaiden gateway")
    assert cluster_row(app, cluster_id).controller_version == "0.1.0"
    assert "cannot read the Kubernetes API" in processes.log_of("controller")

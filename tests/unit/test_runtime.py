"""Controller and agent pieces without a network: configuration, backoff, node reports, routing, facts;
and the liveness service on the test database (PostgreSQL under scripts/test, SQLite in the second pass).
"""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from pathlib import Path

import pytest
from kubernetes import client as k8s

from agent import protocol
from agent.agent import Agent, AgentConfig, collect_facts
from agent.controller import AgentState, Controller, ControllerConfig, merge_nodes, node_report_from_kubernetes
from agent.runtime import Backoff, ConfigError
from portal.models import AgentStatus, ClusterStatus, NodeStatus
from portal.models.base import utcnow
from portal.services.heartbeats import ClusterUpdate, mark_stale_clusters_offline, record_cluster_updates
from tests.factories import make_cluster, make_node

ENV = {"CLUSTER_ID": "c-1", "API_KEY": "kdc_secret", "CLOUD_ENDPOINT": "wss://gw.example.com:8001/"}


def test_controller_config_from_env() -> None:
    config = ControllerConfig.from_env({**ENV, "HEARTBEAT_INTERVAL": "0.5", "CONTROLLER_LISTEN": "127.0.0.1:9000"})
    assert (config.cloud_endpoint, config.heartbeat_interval) == ("wss://gw.example.com:8001", 0.5)
    assert (config.listen_host, config.listen_port, config.kubeconfig) == ("127.0.0.1", 9000, None)
    assert "kdc_secret" not in repr(config)
    defaults = ControllerConfig.from_env(ENV)
    assert (defaults.heartbeat_interval, defaults.listen_host, defaults.listen_port) == (15.0, "0.0.0.0", 7070)  # noqa: S104


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"API_KEY": ""}, "API_KEY is required"),
        ({"CLOUD_ENDPOINT": "http://x"}, "CLOUD_ENDPOINT"),
        ({"HEARTBEAT_INTERVAL": "soon"}, "HEARTBEAT_INTERVAL"),
        ({"HEARTBEAT_INTERVAL": "-1"}, "HEARTBEAT_INTERVAL"),
        ({"CONTROLLER_LISTEN": "7070"}, "CONTROLLER_LISTEN"),
    ],
)
def test_controller_config_errors_name_the_variable(change: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ControllerConfig.from_env({**ENV, **change})


def test_agent_config_falls_back_to_root_without_host_mount(tmp_path: Path) -> None:
    env = {"NODE_NAME": "n1", "CONTROLLER_URL": "ws://c:7070/agent", "API_KEY": "kdc_x"}
    assert AgentConfig.from_env({**env, "HOST_ROOT": str(tmp_path / "missing")}).host_root == Path("/")
    assert AgentConfig.from_env({**env, "HOST_ROOT": str(tmp_path)}).host_root == tmp_path
    assert "kdc_x" not in repr(AgentConfig.from_env(env))


def test_backoff_is_capped_full_jitter() -> None:
    backoff = Backoff(base=1, cap=8, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(50)]
    assert all(0 <= d <= 8 for d in delays)
    assert max(delays[:1]) <= 1 and max(delays[10:]) > 2  # grows, then stays under the cap
    backoff.reset()
    assert backoff.next_delay() <= 1


def _node(name: str, ready: str = "True", **labels: str) -> k8s.V1Node:
    return k8s.V1Node(
        metadata=k8s.V1ObjectMeta(name=name, labels={"kubernetes.io/os": "linux", **labels}),
        status=k8s.V1NodeStatus(
            conditions=[k8s.V1NodeCondition(type="Ready", status=ready)],
            addresses=[
                k8s.V1NodeAddress(type="Hostname", address=name),
                k8s.V1NodeAddress(type="InternalIP", address="10.0.0.7"),
            ],
            capacity={"cpu": "4", "memory": "16Gi"},
            node_info=k8s.V1NodeSystemInfo(
                architecture="amd64",
                boot_id="b",
                container_runtime_version="containerd://2",
                kernel_version="6.12.0",
                kube_proxy_version="",
                kubelet_version="v1.36.3",
                machine_id="m",
                operating_system="linux",
                os_image="Debian GNU/Linux 13",
                system_uuid="u",
            ),
        ),
    )


def test_node_report_from_the_kubernetes_api() -> None:
    fields = node_report_from_kubernetes(_node("cp-1", **{"node-role.kubernetes.io/control-plane": ""}))
    report = protocol.NodeReport(**fields)
    assert (report.status, report.internal_ip, report.cpu_capacity, report.memory_capacity) == (
        "ready",
        "10.0.0.7",
        "4",
        "16Gi",
    )
    assert (report.kubelet_version, report.architecture, report.roles) == ("v1.36.3", "amd64", ["control-plane"])
    assert report.labels["kubernetes.io/os"] == "linux"
    assert node_report_from_kubernetes(_node("w", ready="False"))["status"] == "not-ready"
    assert node_report_from_kubernetes(_node("w", ready="Unknown"))["status"] == "unknown"


def test_merge_nodes_with_agents() -> None:
    facts = protocol.NodeFactsPayload(node_name="bare", agent_version="0.1.0", ips=["192.0.2.5"], cpu_count=2)
    agents = {
        "w-1": AgentState(version="0.1.0", link=object()),  # type: ignore[arg-type]
        "w-2": AgentState(version="0.0.9"),  # was connected, is not now
        "bare": AgentState(version="0.1.0", facts=facts, link=object()),  # type: ignore[arg-type]
    }
    kube = [node_report_from_kubernetes(_node(n)) for n in ("w-1", "w-2", "w-3")]
    by_name = {r.name: r for r in merge_nodes(kube, agents)}
    assert set(by_name) == {"w-1", "w-2", "w-3", "bare"}
    assert (by_name["w-1"].agent_status, by_name["w-1"].agent_version) == ("online", "0.1.0")
    assert (by_name["w-2"].agent_status, by_name["w-2"].agent_version) == ("offline", "0.0.9")
    assert by_name["w-3"].agent_status == "offline" and by_name["w-3"].agent_version is None
    bare = by_name["bare"]
    assert (bare.status, bare.internal_ip, bare.cpu_capacity) == ("unknown", "192.0.2.5", "2")


def test_controller_routes_or_refuses_commands() -> None:
    controller = Controller(ControllerConfig.from_env(ENV))

    async def route(message: protocol._Message) -> protocol._Message | None:
        return await controller.route(message)

    pong = asyncio.run(route(protocol.Ping(id="p1")))
    assert isinstance(pong, protocol.Pong) and pong.id == "p1" and pong.payload.role == "controller"
    missing = asyncio.run(route(protocol.Ping(id="p2", payload=protocol.PingPayload(node_name="nope"))))
    assert isinstance(missing, protocol.Error) and missing.payload.of == "p2"
    assert missing.payload.code == protocol.ErrorCode.not_found
    beat = protocol.Heartbeat(id="h", payload=protocol.HeartbeatPayload(cluster_id="c-1", nodes=[]))
    refused = asyncio.run(route(beat))
    assert isinstance(refused, protocol.Error) and refused.payload.code == protocol.ErrorCode.invalid
    assert asyncio.run(route(protocol.Ack(payload=protocol.AckPayload(of="x")))) is None


def test_agent_answers_ping_and_refuses_what_it_cannot_do() -> None:
    agent = Agent(AgentConfig(node_name="n1", controller_url="ws://x/agent", api_key="k", host_root=Path("/")))
    pong = agent.answer(protocol.Ping(id="a1", payload=protocol.PingPayload(node_name="n1")))
    assert isinstance(pong, protocol.Pong) and (pong.id, pong.payload.node_name) == ("a1", "n1")
    # a heartbeat is the controller's own message: an agent cannot act on it and says so
    beat = protocol.Heartbeat(id="t1", payload=protocol.HeartbeatPayload(cluster_id="c", nodes=[]))
    refused = agent.answer(beat)
    assert isinstance(refused, protocol.Error) and refused.payload.code == protocol.ErrorCode.unsupported
    assert refused.payload.of == "t1"


def test_agent_facts_from_a_host_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text('NAME="Debian"\nPRETTY_NAME="Debian GNU/Linux 13 (trixie)"\n')
    (tmp_path / "etc/hostname").write_text("worker-7\n")
    facts = collect_facts(AgentConfig(node_name="n1", controller_url="ws://x", api_key="k", host_root=tmp_path))
    assert (facts.hostname, facts.os, facts.node_name) == ("worker-7", "Debian GNU/Linux 13 (trixie)", "n1")
    assert facts.cpu_count and facts.cpu_count >= 1 and facts.memory_bytes and facts.memory_bytes > 0
    assert facts.kernel and all(not ip.startswith("127.") for ip in facts.ips)
    protocol.decode(protocol.encode(protocol.NodeFacts(payload=facts)))  # valid on the wire


# ---------------------------------------------------------------- the liveness service


def _beat(cluster, *names: str) -> protocol.HeartbeatPayload:
    return protocol.HeartbeatPayload(
        cluster_id=str(cluster.id),
        k8s_version="v1.36.3",
        nodes=[protocol.NodeReport(name=n, status="ready", agent_status="online", roles=["worker"]) for n in names],
    )


def test_record_updates_upserts_nodes_and_marks_absent_ones(db) -> None:
    cluster = make_cluster(db)
    stale = make_node(db, cluster, name="old", status=NodeStatus.ready, agent_status=AgentStatus.online)
    db.commit()
    now = utcnow()
    cache: dict = {}
    result = record_cluster_updates(
        db,
        [ClusterUpdate(cluster.id, now, controller_version="0.1.0", heartbeat=_beat(cluster, "a", "b"))],
        cache=cache,
    )
    db.commit()
    assert (result.clusters, result.nodes_upserted, result.nodes_marked_absent) == (1, 2, 1)
    db.expire_all()
    assert (cluster.status, cluster.node_count, cluster.k8s_version, cluster.controller_version) == (
        ClusterStatus.online,
        2,
        "v1.36.3",
        "0.1.0",
    )
    nodes = {n.name: n for n in cluster.nodes}
    assert nodes["a"].roles == ["worker"] and nodes["a"].agent_status == AgentStatus.online
    assert (nodes["old"].status, nodes["old"].agent_status) == (NodeStatus.unknown, AgentStatus.offline)
    assert nodes["old"].id == stale.id  # kept, not deleted
    # the same report again: steady path, nothing upserted, last_seen and last_heartbeat move
    later = now + timedelta(seconds=15)
    again = record_cluster_updates(
        db, [ClusterUpdate(cluster.id, later, heartbeat=_beat(cluster, "a", "b"))], cache=cache
    )
    db.commit()
    assert (again.nodes_upserted, again.nodes_marked_absent, again.nodes_touched) == (0, 0, 2)
    db.expire_all()
    nodes = {n.name: n for n in cluster.nodes}
    assert nodes["a"].last_seen == later and nodes["old"].last_seen != later and cluster.last_heartbeat == later
    # swept offline meanwhile: the next identical report is written in full (agents back online)
    mark_stale_clusters_offline(db, later + timedelta(seconds=1))
    db.commit()
    db.expire_all()
    assert cluster.status == ClusterStatus.offline and nodes["a"].agent_status == AgentStatus.offline
    third = record_cluster_updates(
        db, [ClusterUpdate(cluster.id, later, heartbeat=_beat(cluster, "a", "b"))], cache=cache
    )
    db.commit()
    db.expire_all()
    assert third.nodes_upserted == 2 and cluster.status == ClusterStatus.online
    assert {n.name: n.agent_status for n in cluster.nodes}["a"] == AgentStatus.online


def test_sweep_flips_only_stale_online_clusters(db) -> None:
    now = utcnow()
    fresh = make_cluster(db, status=ClusterStatus.online, last_heartbeat=now)
    stale = make_cluster(db, status=ClusterStatus.online, last_heartbeat=now - timedelta(minutes=5))
    make_node(db, stale, agent_status=AgentStatus.online)
    pending = make_cluster(db, status=ClusterStatus.pending)
    db.commit()
    flipped = mark_stale_clusters_offline(db, now - timedelta(seconds=45))
    db.commit()
    assert flipped == [stale.id]
    db.expire_all()
    assert (fresh.status, stale.status, pending.status) == (
        ClusterStatus.online,
        ClusterStatus.offline,
        ClusterStatus.pending,
    )
    assert stale.nodes[0].agent_status == AgentStatus.offline
    assert mark_stale_clusters_offline(db, now - timedelta(seconds=45)) == []  # idempotent

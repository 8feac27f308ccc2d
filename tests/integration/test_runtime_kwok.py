"""A customer cluster for real: a kwok cluster with 3 nodes, `python -m agent.controller` reading it through the
Kubernetes API and one `python -m agent.agent` process per node, all connected through the gateway.
"""

from __future__ import annotations

import signal

import pytest
from kubernetes import client, config

from agent import protocol
from portal import database_of, redis_of
from portal.gateway import GatewayConfig
from portal.models import AgentStatus, ClusterStatus, NodeStatus
from portal.services.cluster_commands import send_command
from tests.d1_support import cluster_row, free_port, wait_until
from tests.factories import make_cluster

pytestmark = pytest.mark.integration

HEARTBEAT = 1.0
OFFLINE_AFTER = 5 * HEARTBEAT  # 5 missed: the controller process reads a real API server per heartbeat


@pytest.fixture()
def gateway_config() -> GatewayConfig:
    # processes reading a real API server: 1 s heartbeats, offline after 5 missed
    return GatewayConfig(flush_seconds=0.2, offline_after=OFFLINE_AFTER, sweep_seconds=0.2)


def test_controller_and_three_agents_on_a_kwok_cluster(app, gateway, customer_cluster, processes) -> None:
    kc = customer_cluster(nodes=3)
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(kc.kubeconfig)))
    node_names = sorted(n.metadata.name for n in core.list_node().items)
    assert len(node_names) == 3
    with database_of(app).session() as session:
        cluster = make_cluster(session)
        cluster_id, key = str(cluster.id), cluster.plain_api_key
    port = free_port()
    controller_env = {
        "CLUSTER_ID": cluster_id,
        "API_KEY": key,
        "CLOUD_ENDPOINT": gateway.url,
        "HEARTBEAT_INTERVAL": str(HEARTBEAT),
        "CONTROLLER_LISTEN": f"127.0.0.1:{port}",
        "KUBECONFIG": str(kc.kubeconfig),
    }
    controller = processes.controller(controller_env)
    for name in node_names:
        processes.agent(
            {
                "NODE_NAME": name,
                "CONTROLLER_URL": f"ws://127.0.0.1:{port}/agent",
                "API_KEY": key,
                "HOST_ROOT": "/nonexistent-host-root",
            },
            name,
        )

    def all_online() -> bool:
        row = cluster_row(app, cluster_id)
        return (
            row.status == ClusterStatus.online
            and len(row.nodes) == 3
            and all(n.status == NodeStatus.ready and n.agent_status == AgentStatus.online for n in row.nodes)
        )

    wait_until(all_online, 60, "cluster online with 3 ready nodes and their agents")
    row = cluster_row(app, cluster_id)
    assert [n.name for n in row.nodes] == node_names and row.node_count == 3
    assert row.k8s_version and row.k8s_version.startswith("v1.36")
    for node in row.nodes:
        assert node.internal_ip and node.internal_ip.startswith("127.")  # from the Kubernetes API
        assert node.kubelet_version and node.cpu_capacity and node.memory_capacity
        assert node.agent_version == "0.1.0"

    # a command to one node's agent process and back
    reply = send_command(
        redis_of(app), cluster_id, protocol.Ping(payload=protocol.PingPayload(node_name=node_names[1])), timeout=10
    )
    assert isinstance(reply, protocol.Pong) and reply.payload.node_name == node_names[1]

    # the controller dies: offline after the configured intervals; a new one brings the cluster back
    controller.send_signal(signal.SIGKILL)
    controller.wait(timeout=10)
    wait_until(lambda: cluster_row(app, cluster_id).status == ClusterStatus.offline, 30, "offline")
    processes.controller(controller_env, name="controller-2")
    wait_until(all_online, 60, "online again with every agent reconnected")

    # a controller with a wrong key is refused and logs the gateway's reason
    wrong = processes.controller(
        {**controller_env, "API_KEY": key + "x", "CONTROLLER_LISTEN": f"127.0.0.1:{free_port()}"}, name="wrong"
    )
    wait_until(lambda: "4001" in processes.log_of("wrong"), 30, "the wrong key refused with 4001")
    assert wrong.poll() is None  # it keeps retrying with backoff, it does not crash

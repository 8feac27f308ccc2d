"""Local kwok clusters on our binaries: Ready nodes, Ready workload pods, served logs, several at once."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from portal.infra import devcluster, toolchain
from tests.support import wait_for

pytestmark = pytest.mark.integration

LABELS = {"app": "web"}


def _api(cluster: devcluster.Cluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


def _pod_template() -> client.V1PodTemplateSpec:
    container = client.V1Container(name="web", image="registry.invalid/web:1")
    return client.V1PodTemplateSpec(
        metadata=client.V1ObjectMeta(labels=LABELS), spec=client.V1PodSpec(containers=[container])
    )


@pytest.fixture()
def namespace(platform_cluster: devcluster.Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(_api(platform_cluster))
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)


def _ready(node: client.V1Node) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def test_platform_cluster_has_ready_nodes(platform_cluster: devcluster.Cluster) -> None:
    nodes = client.CoreV1Api(_api(platform_cluster)).list_node().items
    assert len(nodes) == 2
    assert all(_ready(node) for node in nodes)
    # nodes are addressed on loopback only, so the API server never dials outside this machine
    addresses = [a.address for node in nodes for a in node.status.addresses if a.type == "InternalIP"]
    assert addresses and all(a.startswith("127.") for a in addresses)


def test_workloads_get_ready_pods(platform_cluster: devcluster.Cluster, namespace: str) -> None:
    apps = client.AppsV1Api(_api(platform_cluster))
    selector = client.V1LabelSelector(match_labels=LABELS)
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1DeploymentSpec(replicas=3, selector=selector, template=_pod_template()),
        ),
    )
    apps.create_namespaced_stateful_set(
        namespace,
        client.V1StatefulSet(
            metadata=client.V1ObjectMeta(name="db"),
            spec=client.V1StatefulSetSpec(replicas=2, selector=selector, service_name="db", template=_pod_template()),
        ),
    )
    apps.create_namespaced_daemon_set(
        namespace,
        client.V1DaemonSet(
            metadata=client.V1ObjectMeta(name="agent"),
            spec=client.V1DaemonSetSpec(selector=selector, template=_pod_template()),
        ),
    )

    def all_ready() -> bool:
        deployment = apps.read_namespaced_deployment_status("web", namespace).status
        stateful = apps.read_namespaced_stateful_set_status("db", namespace).status
        daemon = apps.read_namespaced_daemon_set_status("agent", namespace).status
        return (
            deployment.ready_replicas == 3
            and stateful.ready_replicas == 2
            and daemon.number_ready == daemon.desired_number_scheduled == 2
        )

    wait_for(all_ready, what="Deployment, StatefulSet and DaemonSet pods Ready")
    pods = client.CoreV1Api(_api(platform_cluster)).list_namespaced_pod(namespace).items
    assert len(pods) == 7
    assert all(p.status.phase == "Running" for p in pods)


def test_volume_claims_bind_and_stateful_pods_with_claims_run(
    platform_cluster: devcluster.Cluster, namespace: str
) -> None:
    """The pool of volumes of the default class lets claims bind, as a provisioner would on a real cluster."""
    core = client.CoreV1Api(_api(platform_cluster))
    apps = client.AppsV1Api(_api(platform_cluster))
    resources = client.V1VolumeResourceRequirements(requests={"storage": "2Gi"})
    core.create_namespaced_persistent_volume_claim(
        namespace,
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name="data"),
            spec=client.V1PersistentVolumeClaimSpec(access_modes=["ReadWriteOnce"], resources=resources),
        ),
    )
    claim_template = client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name="state"),
        spec=client.V1PersistentVolumeClaimSpec(access_modes=["ReadWriteOnce"], resources=resources),
    )
    template = _pod_template()
    template.spec.containers[0].volume_mounts = [client.V1VolumeMount(name="state", mount_path="/data")]
    apps.create_namespaced_stateful_set(
        namespace,
        client.V1StatefulSet(
            metadata=client.V1ObjectMeta(name="db"),
            spec=client.V1StatefulSetSpec(
                replicas=1,
                selector=client.V1LabelSelector(match_labels=LABELS),
                service_name="db",
                template=template,
                volume_claim_templates=[claim_template],
            ),
        ),
    )

    def bound_and_ready() -> bool:
        claims = core.list_namespaced_persistent_volume_claim(namespace).items
        stateful = apps.read_namespaced_stateful_set_status("db", namespace).status
        return len(claims) == 2 and all(c.status.phase == "Bound" for c in claims) and stateful.ready_replicas == 1

    wait_for(bound_and_ready, what="claims Bound and the StatefulSet's pod Ready")
    claims = core.list_namespaced_persistent_volume_claim(namespace).items
    assert {c.spec.storage_class_name for c in claims} == {devcluster.STORAGE_CLASS}


def test_pod_logs_are_served(platform_cluster: devcluster.Cluster, namespace: str) -> None:
    core = client.CoreV1Api(_api(platform_cluster))
    core.create_namespaced_pod(
        namespace, client.V1Pod(metadata=client.V1ObjectMeta(name="logger"), spec=_pod_template().spec)
    )
    wait_for(
        lambda: core.read_namespaced_pod("logger", namespace).status.phase == "Running",
        what="pod Running",
    )
    logs = devcluster.kubectl(platform_cluster.name, "logs", "-n", namespace, "logger", root=_root(platform_cluster))
    lines = logs.splitlines()
    assert lines[0] == f"{devcluster.LOG_MARKER} line 1"
    assert len(lines) == devcluster.LOG_LINES

    kubectl = [str(toolchain.tool_path("kubectl")), "--kubeconfig", str(platform_cluster.kubeconfig)]
    follow = subprocess.Popen(
        [*kubectl, "logs", "-f", "-n", namespace, "logger"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follow.stdout is not None
        first = follow.stdout.readline().strip()
        assert first == f"{devcluster.LOG_MARKER} line 1"
        time.sleep(1)
        assert follow.poll() is None, "kubectl logs -f should keep following"
    finally:
        follow.kill()
        follow.wait()


def _root(cluster: devcluster.Cluster) -> Path:
    return cluster.workdir.parent.parent


def test_two_clusters_at_once_and_down_removes_one(
    platform_cluster: devcluster.Cluster, customer_cluster: Callable[..., devcluster.Cluster]
) -> None:
    customer = customer_cluster(nodes=1)
    assert customer.server != platform_cluster.server
    assert len(client.CoreV1Api(_api(customer)).list_node().items) == 1
    assert len(client.CoreV1Api(_api(platform_cluster)).list_node().items) == 2
    root = _root(customer)
    assert {customer.name, platform_cluster.name} <= set(devcluster.list_clusters(root))

    devcluster.delete_cluster(customer.name, root=root)
    assert customer.name not in devcluster.list_clusters(root)
    with pytest.raises(devcluster.ClusterError):
        devcluster.kubeconfig(customer.name, root=root)
    with pytest.raises(Exception):  # noqa: B017 - connection refused, whatever the client wraps it in
        client.VersionApi(_api(customer)).get_code(_request_timeout=5)
    # the platform cluster is untouched
    assert len(client.CoreV1Api(_api(platform_cluster)).list_node().items) == 2

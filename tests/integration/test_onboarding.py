"""Onboarding for real: the playbook against a 3-node kwok cluster with a live portal, twice (changed=0 the
second time), registration from the playbook, and the portal's own onboarding operation run by an RQ worker.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from werkzeug.serving import make_server

from portal import create_app, redis_of, settings_of
from portal.crypto import hash_token
from portal.gateway import GatewayConfig
from portal.infra import devcluster, runner
from portal.models import AgentStatus, Cluster, ClusterStatus, Operation, OperationState
from tests import factories
from tests.d1_support import cluster_row, free_port, wait_until

pytestmark = pytest.mark.integration

NAMESPACE = "kaiden-system"
WORKER_TIMEOUT = 600


@pytest.fixture(scope="module")
def kube(toolchain: Path, kwok_workdir: Path) -> Iterator[devcluster.Cluster]:
    """A 3-node cluster shared by this module's tests (each asserts on what its own run applied)."""
    name = f"ko-{os.getpid()}"
    try:
        yield devcluster.create_cluster(name, nodes=3, root=kwok_workdir)
    finally:
        devcluster.delete_cluster(name, root=kwok_workdir)


@contextlib.contextmanager
def serve(app) -> Iterator[str]:
    """A portal app served over HTTP in a thread (what the playbook's `uri` tasks call)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture()
def portal_url(app) -> Iterator[str]:
    with serve(app) as url:
        yield url


# The combined test: controllers heartbeat every second; the gateway's timing follows from these settings.
HEARTBEAT = 1


MISSED = 5  # heartbeats missed before offline: a loaded test machine must not flip the cluster spuriously


def _fast(settings):
    return dataclasses.replace(
        settings, heartbeat_interval=HEARTBEAT, heartbeat_flush_seconds=0.2, offline_after_heartbeats=MISSED
    )


@pytest.fixture()
def gateway_config(settings) -> GatewayConfig:
    config = GatewayConfig.from_settings(_fast(settings))
    assert config.offline_after == MISSED * HEARTBEAT  # KAIDEN_OFFLINE_AFTER_HEARTBEATS x the interval
    return config


def _api(cluster: devcluster.Cluster) -> k8s.ApiClient:
    return k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))


def _run(
    extravars: dict, lines: list[str] | None = None, secrets: tuple[str, ...] = (), check: bool = False
) -> runner.PlaybookResult:
    with runner.private_dir() as workdir:
        return runner.run_playbook(
            "onboard-cluster.yml",
            workdir=workdir,
            extravars=extravars,
            secrets=secrets,
            event_callback=(lambda event: lines.append(event.line())) if lines is not None else None,
            check=check,
        )


def _secret(api: k8s.ApiClient) -> dict[str, str]:
    secret = k8s.CoreV1Api(api).read_namespaced_secret("kaiden-cluster", NAMESPACE)
    return {name: base64.b64decode(value).decode() for name, value in secret.data.items()}


def test_playbook_onboards_a_cluster_and_a_second_run_changes_nothing(app, db, portal_url, kube):
    cluster = factories.make_cluster(db, name="kwok-three")
    key = cluster.plain_api_key
    db.commit()
    variables = {
        "kubeconfig": str(kube.kubeconfig),
        "portal_url": portal_url,
        "cluster_id": str(cluster.id),
        "api_key": key,
        "verify_online": False,
        "rollout_timeout": 180,
    }
    lines: list[str] = []
    first = _run(variables, lines)
    assert first.ok, first.failure
    assert first.stats.get("changed", 0) >= 1 and first.stats.get("failures", 0) == 0
    assert any("Apply the bundle" in line for line in lines)
    assert key not in "\n".join(lines)  # every task that sees the key is no_log

    api = _api(kube)
    core, apps, rbac = k8s.CoreV1Api(api), k8s.AppsV1Api(api), k8s.RbacAuthorizationV1Api(api)
    assert core.read_namespace(NAMESPACE).status.phase == "Active"
    settings = settings_of(app)
    assert _secret(api) == {"CLUSTER_ID": str(cluster.id), "API_KEY": key, "CLOUD_ENDPOINT": settings.gateway_url}
    role = rbac.read_cluster_role("kaiden-controller")
    assert [(r.api_groups, r.resources, r.verbs) for r in role.rules] == [([""], ["nodes"], ["get", "list", "watch"])]
    binding = rbac.read_cluster_role_binding("kaiden-controller")
    assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [
        ("ServiceAccount", "kaiden-controller", NAMESPACE)
    ]
    deployment = apps.read_namespaced_deployment("kaiden-controller", NAMESPACE)
    assert deployment.spec.replicas == 1 and deployment.status.available_replicas == 1
    assert deployment.spec.template.spec.containers[0].image == settings.controller_image
    assert core.read_namespaced_service("kaiden-controller", NAMESPACE).spec.ports[0].port == 7070
    daemonset = apps.read_namespaced_daemon_set("kaiden-agent", NAMESPACE)
    assert daemonset.status.desired_number_scheduled == 3 and daemonset.status.number_ready == 3
    pods = core.list_namespaced_pod(NAMESPACE, label_selector="app.kubernetes.io/name=kaiden-agent").items
    nodes = {node.metadata.name for node in core.list_node().items}
    assert len(nodes) == 3 and sorted(pod.spec.node_name for pod in pods) == sorted(nodes)  # one per node
    assert all(pod.spec.host_network and pod.spec.host_pid for pod in pods)

    second = _run(variables)
    assert second.ok, second.failure
    assert second.stats.get("changed", 0) == 0
    dry = _run(variables, check=True)  # --check against the applied state: nothing would change either
    assert dry.ok and dry.stats.get("changed", 0) == 0, dry.failure

    wrong = _run({**variables, "api_key": key + "x"}, secrets=(key,))
    assert not wrong.ok
    assert wrong.failure and "Fetch the install bundle" in wrong.failure
    assert key not in wrong.failure


def test_playbook_registers_a_new_cluster_with_a_portal_token(app, db, portal_url, kube):
    user = factories.make_user(db)
    _, token = factories.make_api_token(db, user)
    db.commit()
    variables = {
        "kubeconfig": str(kube.kubeconfig),
        "portal_url": portal_url,
        "portal_token": token,
        "cluster_name": "from-ansible",
        "verify_online": False,
        "rollout_timeout": 180,
    }
    result = _run(variables)
    assert result.ok, result.failure
    db.expire_all()
    cluster = db.query(Cluster).filter_by(name="from-ansible").one()
    assert cluster.customer_id == user.customer_id
    secret = _secret(_api(kube))
    assert secret["CLUSTER_ID"] == str(cluster.id)
    assert db.get(Cluster, cluster.id).api_key_hash == hash_token(secret["API_KEY"])

    again = _run(variables)  # the name is taken now: a clear stop, nothing applied
    assert not again.ok and "already registered" in (again.failure or "")
    assert _secret(_api(kube))["CLUSTER_ID"] == str(cluster.id)


def _run_worker(app) -> subprocess.CompletedProcess:
    settings = settings_of(app)
    env = dict(os.environ)
    env.update(
        KAIDEN_HOME=str(settings.home),
        KAIDEN_DATABASE_URL=settings.database_url,
        KAIDEN_REDIS_URL=settings.redis_url or "",
        KAIDEN_SECRET_KEY=settings.secret_key,
        KAIDEN_ENCRYPTION_KEY=settings.encryption_key,
        KAIDEN_DEMO_DATA="false",
        KAIDEN_LOG_LEVEL="INFO",
    )
    code = "from portal.jobs.worker import run_worker; from portal.settings import load_settings; "
    code += "run_worker(load_settings(), burst=True)"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT, check=False
    )


def test_onboarding_operation_runs_in_a_worker(app, client, db, as_user, kube):
    user = factories.make_user(db)
    good = factories.make_cluster(db, user.customer, name="via-portal")
    bad = factories.make_cluster(db, user.customer, name="unreachable")
    good_key, bad_key = good.plain_api_key, bad.plain_api_key
    headers = as_user(user)
    kubeconfig = kube.kubeconfig.read_text()
    dead = (
        "apiVersion: v1\nkind: Config\ncurrent-context: dead\n"
        "clusters: [{name: dead, cluster: {server: 'https://127.0.0.1:9', insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: sekrit-token-value-123456}}]\n"
        "contexts: [{name: dead, context: {cluster: dead, user: u}}]\n"
    )
    started = client.post(
        f"/api/v1/clusters/{good.id}/onboard", json={"kubeconfig": kubeconfig, "api_key": good_key}, headers=headers
    )
    assert started.status_code == 202, started.json
    failing = client.post(
        f"/api/v1/clusters/{bad.id}/onboard", json={"kubeconfig": dead, "api_key": bad_key}, headers=headers
    )
    assert failing.status_code == 202, failing.json
    busy = client.post(
        f"/api/v1/clusters/{good.id}/onboard", json={"kubeconfig": kubeconfig, "api_key": good_key}, headers=headers
    )
    assert busy.status_code == 409
    good_op, bad_op = started.json["operation"], failing.json["operation"]
    assert good_op["kind"] == "cluster.onboard" and good_op["state"] == "queued"
    assert good_op["params"] == {"context": None, "kubeconfig": "[redacted]", "api_key": "provided"}

    # what waits in Redis is sealed: neither the key nor the kubeconfig's credentials in clear
    redis = redis_of(app)
    raw = b"".join(redis.dump(name) or b"" for name in redis.keys("rq:job:*"))
    for secret in (good_key, bad_key, "sekrit-token-value-123456"):
        assert secret.encode() not in raw

    worker = _run_worker(app)
    assert worker.returncode == 0, worker.stderr[-3000:]
    for secret in (good_key, bad_key, "sekrit-token-value-123456"):
        assert secret not in worker.stdout + worker.stderr

    db.expire_all()
    done = db.get(Operation, uuid.UUID(good_op["id"]))
    assert done.state == OperationState.succeeded, (done.error, done.log)
    assert (done.progress, done.step) == (100, "done")
    assert "TASK [Apply the bundle" in done.log and "PLAY RECAP" in done.log
    assert good_key not in done.log
    assert _secret(_api(kube))["CLUSTER_ID"] == str(good.id)
    shown = client.get(f"/api/v1/operations/{good_op['id']}", headers=headers).json
    assert shown["state"] == "succeeded" and shown["progress"] == 100

    failed = db.get(Operation, uuid.UUID(bad_op["id"]))
    assert failed.state == OperationState.failed
    assert failed.error and failed.error.startswith("Apply the bundle")
    assert "sekrit-token-value-123456" not in (failed.error + failed.log)
    assert bad_key not in (failed.error + failed.log)


def test_onboarded_cluster_comes_online_through_the_gateway(app, settings, db, gateway, processes, kube):
    """The issue's combined test: the playbook installs the bundle; a controller and one agent per node run
    (as processes: kwok cannot run images) with the values the bundle put into the cluster; the portal shows
    the cluster online with 3 nodes; the playbook's online check passes; a killed controller turns the
    cluster offline after the configured intervals and a restarted one brings it back; wrong keys are refused.
    """
    portal = create_app(dataclasses.replace(_fast(settings), gateway_public_url=gateway.url))
    user = factories.make_user(db)
    cluster = factories.make_cluster(db, user.customer, name="online-three")
    key, cluster_id = cluster.plain_api_key, str(cluster.id)
    headers = {"Authorization": f"Bearer {factories.make_api_token(db, user)[1]}"}
    db.commit()
    with serve(portal) as url:
        variables = {
            "kubeconfig": str(kube.kubeconfig),
            "portal_url": url,
            "cluster_id": cluster_id,
            "api_key": key,
            "rollout_timeout": 180,
            "online_timeout": 90,
            "verify_online": False,
        }
        applied = _run(variables)
        assert applied.ok, applied.failure

        # what the bundle put into the cluster is what the processes get
        api = _api(kube)
        secret = _secret(api)
        assert secret == {"CLUSTER_ID": cluster_id, "API_KEY": key, "CLOUD_ENDPOINT": gateway.url}
        deployment = k8s.AppsV1Api(api).read_namespaced_deployment("kaiden-controller", NAMESPACE)
        env = {e.name: e.value for e in deployment.spec.template.spec.containers[0].env if e.value is not None}
        assert env["HEARTBEAT_INTERVAL"] == str(HEARTBEAT)
        pods = k8s.CoreV1Api(api).list_namespaced_pod(NAMESPACE, label_selector="app.kubernetes.io/name=kaiden-agent")
        node_names = sorted(pod.spec.node_name for pod in pods.items)
        assert len(node_names) == 3
        port = free_port()
        controller_env = {
            **secret,
            "HEARTBEAT_INTERVAL": env["HEARTBEAT_INTERVAL"],
            "CONTROLLER_LISTEN": f"127.0.0.1:{port}",
            "KUBECONFIG": str(kube.kubeconfig),  # in the cluster: the bundle's service account
        }
        controller = processes.controller(controller_env)
        for name in node_names:
            agent_env = {"NODE_NAME": name, "CONTROLLER_URL": f"ws://127.0.0.1:{port}/agent", "API_KEY": key}
            processes.agent({**agent_env, "HOST_ROOT": "/nonexistent-host-root"}, name)

        # the playbook's own online check (and nothing to change on this run)
        verified = _run({**variables, "verify_online": True})
        assert verified.ok, verified.failure
        assert verified.stats.get("changed", 0) == 0

        def online_with_agents() -> bool:
            row = cluster_row(app, cluster_id)
            return (
                row.status == ClusterStatus.online
                and sorted(n.name for n in row.nodes) == node_names
                and all(n.agent_status == AgentStatus.online for n in row.nodes)
            )

        wait_until(online_with_agents, 60, "online with 3 nodes and their agents")
        shown = portal.test_client().get(f"/api/v1/clusters/{cluster_id}", headers=headers).get_json()
        assert shown["status"] == "online" and shown["node_count"] == 3
        nodes = portal.test_client().get(f"/api/v1/clusters/{cluster_id}/nodes", headers=headers).get_json()
        assert {n["name"] for n in nodes["items"]} == set(node_names)
        assert all(n["agent_status"] == "online" and n["agent_version"] for n in nodes["items"])

        controller.send_signal(signal.SIGKILL)
        controller.wait(timeout=10)
        wait_until(lambda: cluster_row(app, cluster_id).status == ClusterStatus.offline, 30, "offline")
        status = portal.test_client().get(
            f"/api/v1/clusters/{cluster_id}/status", headers={"X-Kaiden-Cluster-Key": key}
        )
        assert status.get_json()["status"] == "offline"
        processes.controller(controller_env, name="controller-2")
        wait_until(online_with_agents, 60, "online again")

        wrong_bundle = portal.test_client().get(
            f"/api/v1/clusters/{cluster_id}/install.yaml", headers={"X-Kaiden-Cluster-Key": key + "x"}
        )
        assert wrong_bundle.status_code == 403
        wrong = processes.controller(
            {**controller_env, "API_KEY": key + "x", "CONTROLLER_LISTEN": f"127.0.0.1:{free_port()}"}, name="wrong"
        )
        wait_until(lambda: "4001" in processes.log_of("wrong"), 30, "the wrong key refused (4001)")
        assert wrong.poll() is None
        assert key not in processes.log_of("controller") + processes.log_of("wrong")

"""Cloud Services end to end: the API, real RQ workers (subprocesses) and the real engine against a kwok cluster.

Deploys two catalog apps (Redis: a StatefulSet with a kept volume, no ingress; n8n: an Ingress), upgrades
Redis, previews and rolls it back, deletes one service keeping its volume and the other deleting it —
checking the cluster with the kubernetes client after each step. Passwords must never come back.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from portal import create_app, database_of
from portal.catalog import load_catalog
from portal.infra import engine
from portal.models import WorkspaceRole
from portal.settings import Settings
from tests import factories
from tests.support import run_workers, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REDIS_PASSWORD = "redis-Pa55-word-xyz"
N8N_KEY = "n8n-encryption-key-123"


@pytest.fixture(scope="module")
def stack_settings(settings: Settings, platform_cluster, tmp_path_factory) -> Settings:
    home = tmp_path_factory.mktemp("cs-home")
    return dataclasses.replace(
        settings,
        kubeconfig=str(platform_cluster.kubeconfig),
        pulumi_backend_url=f"file://{home / 'state'}",
        base_domain="apps.test",
    )


@pytest.fixture()
def env(stack_settings: Settings, app):  # `app` (the shared fixture) empties the tables afterwards
    app = create_app(stack_settings)
    api = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=stack_settings.kubeconfig))
    apps = k8s.AppsV1Api(api.api_client)
    net = k8s.NetworkingV1Api(api.api_client)
    with database_of(app).session() as db:
        load_catalog(db, ROOT / "catalog")
        customer = factories.make_customer(db)
        workspace = factories.make_workspace(db, customer=customer, slug=f"it{os.getpid() % 10000}")
        member = factories.make_user(db, customer=customer)
        owner = factories.make_user(db, customer=customer)
        factories.make_member(db, workspace=workspace, user=member, role=WorkspaceRole.member)
        factories.make_member(db, workspace=workspace, user=owner, role=WorkspaceRole.owner)
        tokens = {"member": factories.make_api_token(db, member)[1], "owner": factories.make_api_token(db, owner)[1]}
        db.commit()
        workspace_id, slug = workspace.id, workspace.slug
    headers = {role: {"Authorization": f"Bearer {token}"} for role, token in tokens.items()}
    yield {
        "app": app,
        "client": app.test_client(),
        "headers": headers,
        "workspace_id": workspace_id,
        "namespace": f"paas-ws-{slug}",
        "slug": slug,
        "core": api,
        "apps": apps,
        "net": net,
    }
    for ref in ("cache", "flows", "broken"):  # a failed test never leaves a stack behind
        try:
            engine.destroy(f"svc-{slug}-{ref}", stack_settings, remove=True)
        except Exception:  # noqa: S110 (already gone is fine)
            pass
    database_of(app).dispose()


def test_deploy_upgrade_preview_rollback_delete(env, stack_settings: Settings) -> None:
    client, headers = env["client"], env["headers"]
    ns, slug = env["namespace"], env["slug"]
    seen: list[str] = []  # every response body, checked for passwords at the end

    def call(method: str, url: str, role: str = "member", **kw):
        response = client.open(f"/api/v1{url}", method=method, headers=headers[role], **kw)
        seen.append(response.get_data(as_text=True))
        return response

    def operation(op_id: str) -> dict:
        return call("GET", f"/operations/{op_id}").json

    ws = f"/workspaces/{env['workspace_id']}/services"
    redis = call(
        "POST",
        ws,
        json={
            "template_id": "redis",
            "name": "Cache",
            "values": {"auth.password": REDIS_PASSWORD, "maxmemory": "256mb", "persistence.size": "1Gi"},
        },
    )
    assert redis.status_code == 202, redis.json
    n8n = call(
        "POST",
        ws,
        json={
            "template_id": "n8n",
            "name": "Flows",
            "subdomain": f"flows-{slug}",
            "values": {"encryptionKey": N8N_KEY},
        },
    )
    assert n8n.status_code == 202, n8n.json
    redis_id, n8n_id = redis.json["service"]["id"], n8n.json["service"]["id"]

    # a second operation while the first is queued: 409 naming it
    busy = call("PATCH", f"/services/{redis_id}", json={"values": {"maxmemory": "512mb"}})
    assert busy.status_code == 409
    assert busy.json["operation_id"] == redis.json["operation"]["id"]

    # two workers: both deploys apply the new workspace's stack at the same time
    run_workers(stack_settings, count=2)
    for accepted in (redis, n8n):
        op = operation(accepted.json["operation"]["id"])
        assert op["state"] == "succeeded", op
        assert op["progress"] == 100
    cache = call("GET", f"/services/{redis_id}").json
    assert cache["state"] == "running" and cache["helm_revision"] == 1
    assert cache["public_url"] is None and cache["internal_port"] == 6379
    flows = call("GET", f"/services/{n8n_id}").json
    assert flows["state"] == "running"
    assert flows["public_url"] == f"https://flows-{slug}.apps.test"

    # the cluster: namespace with quota and limits, the releases' objects, the ingress
    quota = env["core"].read_namespaced_resource_quota("workspace-quota", ns)
    assert quota.spec.hard["requests.cpu"] == "8" and quota.spec.hard["pods"] == "100"
    assert env["core"].read_namespaced_limit_range("workspace-limits", ns).spec.limits[0].type == "Container"
    release = f"paas-ws-{slug}-cache"
    sts = env["apps"].read_namespaced_stateful_set(release, ns)
    assert "256mb" in sts.spec.template.spec.containers[0].command
    selector = f"app.kubernetes.io/instance={release}"
    assert len(env["core"].list_namespaced_persistent_volume_claim(ns, label_selector=selector).items) == 1
    secrets = env["core"].list_namespaced_secret(ns, label_selector=selector).items
    assert any(base64.b64decode(v).decode() == REDIS_PASSWORD for s in secrets for v in (s.data or {}).values())
    ingress = env["net"].read_namespaced_ingress(f"paas-ws-{slug}-flows", ns)
    assert ingress.spec.rules[0].host == f"flows-{slug}.apps.test"
    assert ingress.spec.ingress_class_name == "traefik"
    assert ingress.metadata.annotations["cert-manager.io/cluster-issuer"] == stack_settings.cert_issuer

    # upgrade → revision 2, the StatefulSet changes
    upgrade = call("PATCH", f"/services/{redis_id}", json={"values": {"maxmemory": "512mb"}})
    assert upgrade.status_code == 202 and upgrade.json["service"]["state"] == "upgrading"
    run_workers(stack_settings)
    assert operation(upgrade.json["operation"]["id"])["state"] == "succeeded"
    cache = call("GET", f"/services/{redis_id}").json
    assert cache["helm_revision"] == 2 and cache["values"]["maxmemory"] == "512mb"
    assert "512mb" in env["apps"].read_namespaced_stateful_set(release, ns).spec.template.spec.containers[0].command

    # preview: values diff and plan, nothing changes
    preview = call("POST", f"/services/{redis_id}/preview", json={"values": {"maxmemory": "1gb"}})
    assert preview.status_code == 202
    run_workers(stack_settings)
    result = operation(preview.json["operation"]["id"])
    assert result["state"] == "succeeded", result
    assert result["result"]["values_diff"] == [{"key": "maxmemory", "old": "512mb", "new": "1gb"}]
    assert result["result"]["plan"]["update"] >= 1
    assert any(step["op"] == "update" for step in result["result"]["plan"]["steps"])
    assert "512mb" in env["apps"].read_namespaced_stateful_set(release, ns).spec.template.spec.containers[0].command

    # rollback to revision 1 → revision 3 with the old inputs, the StatefulSet changes back
    rollback = call("POST", f"/services/{redis_id}/rollback", json={"revision": 1})
    assert rollback.status_code == 202
    run_workers(stack_settings)
    assert operation(rollback.json["operation"]["id"])["state"] == "succeeded"
    revisions = call("GET", f"/services/{redis_id}/revisions").json["items"]
    assert [(r["revision"], r["kind"], r["source_revision"], r["current"]) for r in revisions] == [
        (3, "rollback", 1, True),
        (2, "upgrade", None, False),
        (1, "install", None, False),
    ]
    assert "256mb" in env["apps"].read_namespaced_stateful_set(release, ns).spec.template.spec.containers[0].command

    # the progress stream of a finished operation: its last progress, then the end
    stream = call("GET", f"/operations/{rollback.json['operation']['id']}/events")
    assert stream.status_code == 200 and stream.mimetype == "text/event-stream"
    assert "event: end" in seen[-1] and '"state": "succeeded"' in seen[-1]

    # delete keeping the volume (members may not delete)
    assert call("DELETE", f"/services/{redis_id}").status_code == 403
    deleted = call("DELETE", f"/services/{redis_id}?keep_volumes=true", role="owner")
    assert deleted.status_code == 202
    # delete the other, volumes too
    deleted2 = call("DELETE", f"/services/{n8n_id}?keep_volumes=false", role="owner")
    assert deleted2.status_code == 202
    run_workers(stack_settings)
    for accepted in (deleted, deleted2):
        assert operation(accepted.json["operation"]["id"])["state"] == "succeeded"
    cache = call("GET", f"/services/{redis_id}").json
    assert cache["state"] == "deleted"
    assert env["core"].list_namespaced_persistent_volume_claim(ns, label_selector=selector).items  # kept
    flows_selector = f"app.kubernetes.io/instance=paas-ws-{slug}-flows"
    assert not env["core"].list_namespaced_persistent_volume_claim(ns, label_selector=flows_selector).items
    wait_for(
        lambda: not env["apps"].list_namespaced_stateful_set(ns, label_selector=selector).items,
        60,
        "the Redis StatefulSet to be removed",
    )
    assert not env["net"].list_namespaced_ingress(ns).items
    with pytest.raises(Exception):  # noqa: B017 (the stack itself is gone)
        engine.outputs(f"svc-{slug}-cache", stack_settings)
    activity = call("GET", f"/services/{redis_id}/activity").json["items"]
    assert [a["event_type"] for a in activity][:2] == ["deleted", "delete_requested"]
    assert {"deployed", "upgraded", "previewed", "rolled_back"} <= {a["event_type"] for a in activity}

    text = "\n".join(seen)
    assert REDIS_PASSWORD not in text and N8N_KEY not in text
    assert "kaiden:password" not in json.dumps(seen)


def test_failed_deploy_leaves_a_readable_error_then_retry_and_delete_work(env, stack_settings: Settings) -> None:
    from portal.charts import local_chart_version

    client, headers = env["client"], env["headers"]
    with database_of(env["app"]).session() as db:
        template = factories.make_template(
            db,
            slug=f"hello-{os.getpid()}",
            helm_repo_url="local",
            helm_chart_name="hello",
            helm_chart_version=local_chart_version("hello"),
            helm_default_values={},
            helm_value_specs={"optional": [{"key": "replicaCount", "label": "Replicas", "type": "number"}]},
            default_port=80,
            ingress_enabled=False,
            min_vcpu=0,
            min_ram_gb=0,
            min_storage_gb=0,
        )
        db.commit()
        template_id = str(template.id)
    ws = f"/api/v1/workspaces/{env['workspace_id']}/services"
    body = {"template_id": template_id, "name": "Broken", "values": {"replicaCount": -1}}
    created = client.post(ws, json=body, headers=headers["member"])
    assert created.status_code == 202, created.json
    service_url = f"/api/v1/services/{created.json['service']['id']}"
    run_workers(stack_settings)

    op = client.get(f"/api/v1/operations/{created.json['operation']['id']}", headers=headers["member"]).json
    assert op["state"] == "failed"
    service = client.get(service_url, headers=headers["member"]).json
    assert service["state"] == "error"
    assert "replicas" in service["error_message"].lower() and "Traceback" not in service["error_message"]
    activity = client.get(f"{service_url}/activity", headers=headers["member"]).json["items"]
    assert activity[0]["event_type"] == "deploy_failed"

    # retry with a good value: the first revision is recorded as the install
    retry = client.patch(service_url, json={"values": {"replicaCount": 1}}, headers=headers["member"])
    assert retry.status_code == 202, retry.json
    run_workers(stack_settings)
    service = client.get(service_url, headers=headers["member"]).json
    assert service["state"] == "running", service["error_message"]
    revisions = client.get(f"{service_url}/revisions", headers=headers["member"]).json["items"]
    assert [(r["revision"], r["kind"]) for r in revisions] == [(1, "install")]
    ns, release = env["namespace"], f"paas-ws-{env['slug']}-broken"
    assert env["apps"].read_namespaced_deployment(f"{release}-hello", ns).spec.replicas == 1

    deleted = client.delete(f"{service_url}?keep_volumes=false", headers=headers["owner"])
    assert deleted.status_code == 202
    run_workers(stack_settings)
    assert client.get(service_url, headers=headers["member"]).json["state"] == "deleted"
    assert not env["apps"].list_namespaced_deployment(ns, label_selector=f"app.kubernetes.io/instance={release}").items

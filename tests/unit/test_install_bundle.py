"""The install bundle: its objects, least-privilege RBAC, the agent's host access, and who may fetch it."""

from __future__ import annotations

import base64
import logging
import uuid

import pytest
import yaml
from cryptography.fernet import Fernet

from portal import settings_of
from portal.services import install_bundle
from tests.factories import make_admin, make_cluster, make_customer, make_engineer, make_user

EXPECTED_KINDS = [
    "Namespace",
    "Secret",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Deployment",
    "Service",
    "DaemonSet",
]


def _by_kind(docs: list[dict]) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in docs}


def _bundle_url(cluster_id) -> str:
    return f"/api/v1/clusters/{cluster_id}/install.yaml"


def test_bundle_parses_into_every_object_in_apply_order(app):
    settings = settings_of(app)
    cluster_id = uuid.uuid4()
    text = install_bundle.render_bundle(cluster_id, "kdc_secretvalue", settings)
    docs = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    assert [doc["kind"] for doc in docs] == EXPECTED_KINDS
    for doc in docs:
        assert doc["apiVersion"] and doc["metadata"]["name"]
        if doc["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == "kaiden-system"
    secret = _by_kind(docs)["Secret"]
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == {
        "CLUSTER_ID": str(cluster_id),
        "API_KEY": "kdc_secretvalue",
        "CLOUD_ENDPOINT": settings.gateway_url,  # the controller appends /api/v1/agent/connect
    }


def test_rbac_is_exactly_read_nodes():
    docs = _by_kind(install_bundle.bundle_documents(uuid.uuid4(), "kdc_x", _settings()))
    role, binding = docs["ClusterRole"], docs["ClusterRoleBinding"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "kaiden-controller",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kaiden-controller", "namespace": "kaiden-system"}
    ]
    # only the controller uses the service account; agents get no API token at all
    controller = docs["Deployment"]["spec"]["template"]["spec"]
    agent = docs["DaemonSet"]["spec"]["template"]["spec"]
    assert controller["serviceAccountName"] == "kaiden-controller"
    assert agent["automountServiceAccountToken"] is False and "serviceAccountName" not in agent


def test_controller_deployment_and_service():
    settings = _settings(controller_image="registry.example/kc:9.9", heartbeat_interval=7)
    docs = _by_kind(install_bundle.bundle_documents("c-1", "kdc_x", settings))
    deployment = docs["Deployment"]
    assert deployment["spec"]["replicas"] == 1
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/kc:9.9"
    assert container["command"] == ["python", "-m", "agent.controller"]
    env = {e["name"]: e for e in container["env"]}
    assert env["HEARTBEAT_INTERVAL"]["value"] == "7"
    assert env["CONTROLLER_LISTEN"]["value"] == "0.0.0.0:7070"
    for name in ("CLUSTER_ID", "API_KEY", "CLOUD_ENDPOINT"):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "kaiden-cluster", "key": name}
    service = docs["Service"]
    assert service["metadata"]["name"] == "kaiden-controller"
    assert service["spec"]["ports"][0]["port"] == 7070
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_agent_daemonset_host_access():
    settings = _settings(agent_image="registry.example/ka:1.2")
    agent = _by_kind(install_bundle.bundle_documents("c-1", "kdc_x", settings))["DaemonSet"]
    spec = agent["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["hostPID"] is True
    assert spec["tolerations"] == [{"operator": "Exists"}]
    (container,) = spec["containers"]
    assert container["image"] == "registry.example/ka:1.2"
    assert container["command"] == ["python", "-m", "agent.agent"]
    assert container["securityContext"] == {"privileged": True}
    assert container["volumeMounts"] == [{"name": "host-root", "mountPath": "/host", "readOnly": True}]
    assert spec["volumes"] == [{"name": "host-root", "hostPath": {"path": "/", "type": "Directory"}}]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["CONTROLLER_URL"]["value"] == "ws://kaiden-controller.kaiden-system.svc:7070/agent"
    assert env["HOST_ROOT"]["value"] == "/host"
    assert env["API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "kaiden-cluster"


def test_rendering_is_stable_and_a_new_key_restarts_pods():
    settings = _settings()
    first = install_bundle.render_bundle("c-1", "kdc_a", settings)
    assert install_bundle.render_bundle("c-1", "kdc_a", settings) == first  # re-applying changes nothing

    def checksum(key: str) -> str:
        docs = _by_kind(install_bundle.bundle_documents("c-1", key, settings))
        return docs["Deployment"]["spec"]["template"]["metadata"]["annotations"]["kaiden.io/secret-checksum"]

    assert checksum("kdc_a") != checksum("kdc_b")
    assert "kdc_a" not in checksum("kdc_a")


def _settings(**overrides):
    from portal.settings import load_settings

    values = {"home": "/tmp/kaiden-bundle-test", "secret_key": "s", "encryption_key": _FERNET, "pulumi_passphrase": "p"}
    return load_settings({**values, **overrides}, environ={})


_FERNET = Fernet.generate_key().decode()


# ---------------------------------------------------------------- the endpoint


def test_the_key_alone_fetches_the_bundle(app, client, db, caplog):
    settings = settings_of(app)
    cluster = make_cluster(db)
    key = cluster.plain_api_key
    db.commit()
    caplog.set_level(logging.DEBUG)
    response = client.get(_bundle_url(cluster.id), headers={"X-Kaiden-Cluster-Key": key})
    assert response.status_code == 200
    assert response.mimetype == "application/yaml"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.get_data(as_text=True) == install_bundle.render_bundle(cluster.id, key, settings)
    assert key not in caplog.text  # never logged


def test_signed_in_user_with_the_key(client, db, as_user):
    user = make_user(db)
    cluster = make_cluster(db, user.customer)
    key = cluster.plain_api_key
    headers = as_user(user) | {"X-Kaiden-Cluster-Key": key}
    response = client.get(_bundle_url(cluster.id), headers=headers)
    assert response.status_code == 200
    docs = list(yaml.safe_load_all(response.get_data(as_text=True)))
    assert base64.b64decode(_by_kind(docs)["Secret"]["data"]["API_KEY"]).decode() == key


def test_wrong_key_is_403_and_rotated_key_is_403(client, db, as_user):
    from portal.services import clusters

    user = make_user(db)
    cluster = make_cluster(db, user.customer)
    other = make_cluster(db, user.customer)
    old_key = cluster.plain_api_key
    db.commit()
    wrong = client.get(_bundle_url(cluster.id), headers={"X-Kaiden-Cluster-Key": old_key + "x"})
    assert wrong.status_code == 403 and wrong.get_json()["error"]["code"] == "invalid_cluster_key"
    # another cluster's valid key does not open this cluster's bundle
    crossed = client.get(_bundle_url(cluster.id), headers={"X-Kaiden-Cluster-Key": other.plain_api_key})
    assert crossed.status_code == 403
    # an unknown cluster id answers exactly like a wrong key (no existence oracle)
    unknown = client.get(_bundle_url(uuid.uuid4()), headers={"X-Kaiden-Cluster-Key": old_key})
    assert unknown.status_code == 403
    new_key = clusters.rotate_api_key(db, user, db.get(type(cluster), cluster.id)).api_key
    db.commit()
    rotated = client.get(_bundle_url(cluster.id), headers=as_user(user) | {"X-Kaiden-Cluster-Key": old_key})
    assert rotated.status_code == 403
    assert old_key not in rotated.get_data(as_text=True)
    assert client.get(_bundle_url(cluster.id), headers={"X-Kaiden-Cluster-Key": new_key}).status_code == 200


def test_without_a_key(client, db, as_user):
    customer = make_customer(db)
    owner = make_user(db, customer=customer)
    stranger = make_user(db)
    cluster = make_cluster(db, customer)
    assert client.get(_bundle_url(cluster.id)).status_code == 401
    needs_key = client.get(_bundle_url(cluster.id), headers=as_user(owner))
    assert needs_key.status_code == 403 and needs_key.get_json()["error"]["code"] == "cluster_key_required"
    assert client.get(_bundle_url(cluster.id), headers=as_user(make_admin(db))).status_code == 403
    assert client.get(_bundle_url(cluster.id), headers=as_user(stranger)).status_code == 404


def test_status_with_key_or_user(client, db, as_user):
    customer = make_customer(db)
    cluster = make_cluster(db, customer, node_count=3)
    key = cluster.plain_api_key
    db.commit()
    url = f"/api/v1/clusters/{cluster.id}/status"
    answer = client.get(url, headers={"X-Kaiden-Cluster-Key": key})
    assert answer.status_code == 200
    assert answer.get_json() == {
        "id": str(cluster.id),
        "status": "pending",
        "last_heartbeat": None,
        "k8s_version": None,
        "node_count": 3,
    }
    assert client.get(url, headers={"X-Kaiden-Cluster-Key": "kdc_nope"}).status_code == 403
    assert client.get(url).status_code == 401
    assert client.get(url, headers=as_user(make_user(db, customer=customer))).status_code == 200
    assert client.get(url, headers=as_user(make_engineer(db))).status_code == 200
    assert client.get(url, headers=as_user(make_user(db))).status_code == 404


def test_openapi_documents_yaml(client):
    document = client.get("/api/v1/openapi.json").get_json()
    operation = document["paths"]["/api/v1/clusters/{cluster_id}/install.yaml"]["get"]
    assert list(operation["responses"]["200"]["content"]) == ["application/yaml"]
    assert {"401", "403", "404"} <= set(operation["responses"])


@pytest.mark.parametrize("missing", ["controller_image", "agent_image"])
def test_images_come_from_settings(missing):
    settings = _settings(**{missing: f"example.org/{missing}:3"})
    text = install_bundle.render_bundle("c-1", "kdc_x", settings)
    assert f"image: example.org/{missing}:3" in text

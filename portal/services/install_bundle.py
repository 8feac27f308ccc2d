"""The install bundle (seed 000 §7.2): the Kubernetes objects that put Kaiden's controller and agents on a cluster.

One renderer for every consumer: the `install.yaml` endpoint, the onboarding job (which hands the
bundle to `playbooks/onboard-cluster.yml`) and the cluster pages. The bundle carries the cluster's
API key, so it is only ever rendered for a caller that presents that key (`cluster_for_bundle`).
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from typing import Any

import yaml
from sqlalchemy.orm import Session

from portal.errors import PermissionDenied, Unauthorized
from portal.models import Cluster, User
from portal.services import clusters as cluster_service
from portal.settings import Settings

NAMESPACE = "kaiden-system"
CONTROLLER = "kaiden-controller"
AGENT = "kaiden-agent"
SECRET_NAME = "kaiden-cluster"  # noqa: S105  (the Secret object's name, not a secret)
CONTROLLER_PORT = 7070
KEY_HEADER = "X-Kaiden-Cluster-Key"
# The controller reads nodes (names, status, addresses, capacity) and nothing else.
CONTROLLER_RULES: list[dict[str, list[str]]] = [
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}
]
PART_OF = "kaiden"


def cloud_endpoint(settings: Settings) -> str:
    """The controller's CLOUD_ENDPOINT: the gateway's base URL (docs/agents.md); the controller
    appends `/api/v1/agent/connect` itself."""
    return settings.gateway_url


def controller_url() -> str:
    """Where agents reach their controller: the in-cluster Service."""
    return f"ws://{CONTROLLER}.{NAMESPACE}.svc:{CONTROLLER_PORT}/agent"


def cluster_for_bundle(session: Session, actor: User | None, cluster_id: uuid.UUID, key: str | None) -> Cluster:
    """The cluster whose bundle may be rendered for this request, else the error to answer with.

    The cluster's current API key is the credential: a request that presents it is served with or
    without a portal sign-in (so `curl -H "X-Kaiden-Cluster-Key: …" … | kubectl apply -f -` works on a
    machine that holds no portal token). Without a key, a signed-in user who can see the cluster is
    told to send it (403); a cluster they cannot see stays a 404; an anonymous caller gets 401. A
    wrong or rotated key is a 403 for everyone, whether the cluster exists or not.
    """
    if key or actor is None:
        return cluster_for_key(session, cluster_id, key)
    cluster_service.get_cluster(session, actor, cluster_id)  # NotFound when not visible
    raise PermissionDenied(
        f"The bundle contains the cluster's API key, which Kaiden does not keep: send it in the {KEY_HEADER} "
        "header (rotate the key if it was lost).",
        code="cluster_key_required",
    )


def cluster_for_key(session: Session, cluster_id: uuid.UUID, key: str | None) -> Cluster:
    """The cluster `cluster_id` when `key` is its current API key: no key → 401, any other key → 403."""
    if not key:
        raise Unauthorized(f"Send the cluster's API key in the {KEY_HEADER} header (or sign in).")
    cluster = cluster_service.authenticate_cluster_key(session, key.strip())
    if cluster is None or cluster.id != cluster_id:
        raise PermissionDenied(
            "That API key is not this cluster's current key (it may have been rotated).", code="invalid_cluster_key"
        )
    return cluster


def _labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": component, "app.kubernetes.io/part-of": PART_OF}


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def _secret_env(name: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": SECRET_NAME, "key": key}}}


def bundle_documents(cluster_id: uuid.UUID | str, api_key: str, settings: Settings) -> list[dict[str, Any]]:
    """The bundle's objects in apply order (namespace first, workloads last)."""
    cluster_id = str(cluster_id)
    secret_data = {"CLUSTER_ID": cluster_id, "API_KEY": api_key, "CLOUD_ENDPOINT": cloud_endpoint(settings)}
    # Pods restart when the Secret's content changes (key rotation) and only then: the checksum is stable.
    checksum = hashlib.sha256(repr(sorted(secret_data.items())).encode()).hexdigest()[:16]
    meta = {"namespace": NAMESPACE}
    controller_labels = _labels(CONTROLLER)
    agent_labels = _labels(AGENT)
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": NAMESPACE, "labels": {"app.kubernetes.io/part-of": PART_OF}},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET_NAME, **meta, "labels": {"app.kubernetes.io/part-of": PART_OF}},
            "type": "Opaque",
            "data": {name: _b64(value) for name, value in secret_data.items()},
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": CONTROLLER, **meta, "labels": controller_labels},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": CONTROLLER, "labels": controller_labels},
            "rules": [dict(rule) for rule in CONTROLLER_RULES],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": CONTROLLER, "labels": controller_labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CONTROLLER},
            "subjects": [{"kind": "ServiceAccount", "name": CONTROLLER, "namespace": NAMESPACE}],
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": CONTROLLER, **meta, "labels": controller_labels},
            "spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},  # never two controllers holding the cluster's connection
                "selector": {"matchLabels": controller_labels},
                "template": {
                    "metadata": {"labels": controller_labels, "annotations": {"kaiden.io/secret-checksum": checksum}},
                    "spec": {
                        "serviceAccountName": CONTROLLER,
                        "containers": [
                            {
                                "name": "controller",
                                "image": settings.controller_image,
                                "command": ["python", "-m", "agent.controller"],
                                "env": [
                                    _secret_env("CLUSTER_ID", "CLUSTER_ID"),
                                    _secret_env("API_KEY", "API_KEY"),
                                    _secret_env("CLOUD_ENDPOINT", "CLOUD_ENDPOINT"),
                                    {"name": "HEARTBEAT_INTERVAL", "value": str(settings.heartbeat_interval)},
                                    {"name": "CONTROLLER_LISTEN", "value": f"0.0.0.0:{CONTROLLER_PORT}"},
                                ],
                                "ports": [{"name": "agents", "containerPort": CONTROLLER_PORT, "protocol": "TCP"}],
                                "resources": {
                                    "requests": {"cpu": "50m", "memory": "64Mi"},
                                    "limits": {"memory": "256Mi"},
                                },
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                            }
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": CONTROLLER, **meta, "labels": controller_labels},
            "spec": {
                "selector": controller_labels,
                "ports": [{"name": "agents", "port": CONTROLLER_PORT, "targetPort": "agents", "protocol": "TCP"}],
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": AGENT, **meta, "labels": agent_labels},
            "spec": {
                "selector": {"matchLabels": agent_labels},
                "template": {
                    "metadata": {"labels": agent_labels, "annotations": {"kaiden.io/secret-checksum": checksum}},
                    "spec": {
                        # Agents do not talk to the Kubernetes API: no token in their pods.
                        "automountServiceAccountToken": False,
                        "hostNetwork": True,
                        "hostPID": True,
                        "dnsPolicy": "ClusterFirstWithHostNet",  # resolve the controller's Service name
                        "tolerations": [{"operator": "Exists"}],  # every node, whatever its taints
                        "containers": [
                            {
                                "name": "agent",
                                "image": settings.agent_image,
                                "command": ["python", "-m", "agent.agent"],
                                "env": [
                                    {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                                    {"name": "CONTROLLER_URL", "value": controller_url()},
                                    _secret_env("API_KEY", "API_KEY"),
                                    {"name": "HOST_ROOT", "value": "/host"},
                                ],
                                "securityContext": {"privileged": True},
                                "volumeMounts": [{"name": "host-root", "mountPath": "/host", "readOnly": True}],
                                "resources": {
                                    "requests": {"cpu": "20m", "memory": "32Mi"},
                                    "limits": {"memory": "256Mi"},
                                },
                            }
                        ],
                        "volumes": [{"name": "host-root", "hostPath": {"path": "/", "type": "Directory"}}],
                    },
                },
            },
        },
    ]


def render_bundle(cluster_id: uuid.UUID | str, api_key: str, settings: Settings) -> str:
    """The bundle as multi-document YAML (what `kubectl apply -f -` and the playbook take)."""
    header = (
        f"# Kaiden install bundle for cluster {cluster_id}.\n"
        "# Contains the cluster's API key: treat this file as a secret.\n"
    )
    return header + yaml.safe_dump_all(bundle_documents(cluster_id, api_key, settings), sort_keys=False)

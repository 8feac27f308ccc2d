"""REST v1: customers' Kubernetes clusters (seed 000 §5.1) — register (API key shown once), list, get, nodes."""

from __future__ import annotations

import uuid
from datetime import datetime

from flask import Response, current_app, request
from pydantic import Field, SecretStr
from sqlalchemy import Select
from sqlalchemy.orm import Session

from portal import redis_of, settings_of
from portal.api.framework import PUBLIC, PageQuery, RequestModel, ResponseModel, Router, expected_version
from portal.api.operations import OperationOut
from portal.auth import policy
from portal.models import AgentStatus, Cluster, ClusterStatus, Node, NodeStatus, Operation, User, UserRole
from portal.services import clusters as service
from portal.services import install_bundle, onboarding

router = Router("clusters", tags=["Clusters"])


class ClusterCreate(RequestModel):
    name: str = Field(min_length=1, max_length=255)
    description: str | None = Field(None, max_length=2000)
    customer_id: uuid.UUID | None = Field(
        None, description="Admins: required. Customer users: omit (always your own customer)."
    )


class ClusterFilter(PageQuery):
    customer_id: uuid.UUID | None = None
    status: ClusterStatus | None = None
    search: str | None = Field(None, max_length=100, description="Case-insensitive substring of the name.")


class ClusterOut(ResponseModel):
    id: uuid.UUID
    customer_id: uuid.UUID
    name: str
    description: str | None
    status: ClusterStatus
    last_heartbeat: datetime | None
    k8s_version: str | None
    node_count: int | None
    controller_version: str | None
    api_key_prefix: str = Field(description="The first characters of the current API key, to tell keys apart.")
    created_at: datetime
    updated_at: datetime
    version: int


class ClusterCreated(ClusterOut):
    """The answer of registration and key rotation: the only time the API key is ever shown."""

    api_key: str = Field(description="The controller's credential (`kdc_...`). Shown once; store it now.")

    @classmethod
    def of(cls, credentials: service.ClusterCredentials) -> ClusterCreated:
        base = ClusterOut.model_validate(credentials.cluster, from_attributes=True)
        return cls(**base.model_dump(), api_key=credentials.api_key)


class NodeFilter(PageQuery):
    status: NodeStatus | None = None
    agent_status: AgentStatus | None = None


class NodeOut(ResponseModel):
    id: uuid.UUID
    cluster_id: uuid.UUID
    name: str
    status: NodeStatus
    internal_ip: str | None
    agent_status: AgentStatus
    agent_version: str | None
    cpu_capacity: str | None
    memory_capacity: str | None
    os_image: str | None
    kernel_version: str | None
    kubelet_version: str | None
    architecture: str | None
    roles: list[str]
    labels: dict[str, str]
    last_seen: datetime | None
    created_at: datetime
    updated_at: datetime


def _require_cluster_manager(actor: User) -> None:
    """Engineers read clusters but do not register them or hold their keys (admins and customers do)."""
    if actor.role == UserRole.engineer:
        policy.require_admin(actor)


@router.get("/clusters", query=ClusterFilter, response=ClusterOut, paginated=True, summary="List clusters")
def list_clusters(session: Session, actor: User, query: ClusterFilter) -> Select[tuple[Cluster]]:
    """Staff see every cluster; a customer user sees their customer's clusters."""
    return service.clusters_query(actor, customer_id=query.customer_id, status=query.status, search=query.search)


@router.post(
    "/clusters", body=ClusterCreate, response=ClusterCreated, summary="Register a cluster (API key shown once)"
)
def register_cluster(session: Session, actor: User, body: ClusterCreate) -> ClusterCreated:
    """Customer users register in their own customer; admins name the customer. The answer carries the
    controller's API key — the only time it is shown. A duplicate name within the customer is a 409.
    """
    _require_cluster_manager(actor)
    credentials = service.register_cluster(
        session, actor, name=body.name, description=body.description, customer_id=body.customer_id
    )
    return ClusterCreated.of(credentials)


@router.get("/clusters/<uuid:cluster_id>", response=ClusterOut, summary="Get a cluster")
def get_cluster(session: Session, actor: User, cluster_id: uuid.UUID) -> Cluster:
    return service.get_cluster(session, actor, cluster_id)


@router.post(
    "/clusters/<uuid:cluster_id>/rotate-key",
    response=ClusterCreated,
    status=200,
    summary="Rotate the cluster's API key (new key shown once)",
)
def rotate_key(session: Session, actor: User, cluster_id: uuid.UUID) -> ClusterCreated:
    """Issue a new key; the old one stops working immediately. Send `If-Match: "<version>"` to guard
    against a concurrent rotation (409 when stale).
    """
    cluster = service.get_cluster(session, actor, cluster_id)
    _require_cluster_manager(actor)
    return ClusterCreated.of(service.rotate_api_key(session, actor, cluster, version=expected_version()))


@router.get(
    "/clusters/<uuid:cluster_id>/nodes", query=NodeFilter, response=NodeOut, paginated=True, summary="List nodes"
)
def list_nodes(session: Session, actor: User, cluster_id: uuid.UUID, query: NodeFilter) -> Select[tuple[Node]]:
    """The nodes as last reported by the cluster's controller and agents, by name."""
    return service.nodes_query(session, actor, cluster_id, status=query.status, agent_status=query.agent_status)


# ---------------------------------------------------------------- onboarding (D1): bundle, status, onboard


class ClusterStatusOut(ResponseModel):
    """What a holder of the cluster's key may read: is the cluster connected."""

    id: uuid.UUID
    status: ClusterStatus
    last_heartbeat: datetime | None
    k8s_version: str | None
    node_count: int | None


class OnboardRequest(RequestModel):
    kubeconfig: SecretStr = Field(
        min_length=1,
        max_length=256 * 1024,
        description="A kubeconfig (YAML) for the target cluster. Passed encrypted to the job; never stored or logged.",
    )
    context: str | None = Field(None, min_length=1, max_length=253, description="Default: the current context.")
    api_key: SecretStr | None = Field(
        None,
        max_length=200,
        description="The cluster's current key. Omitted: a new key is issued for the bundle (the old one stops "
        "working).",
    )


def _cluster_key() -> str | None:
    return request.headers.get(install_bundle.KEY_HEADER) or None


@router.get(
    "/clusters/<uuid:cluster_id>/install.yaml",
    auth=PUBLIC,
    media_type="application/yaml",
    errors=(401, 403),
    summary="The install bundle (controller + agents), authorized by the cluster's API key",
)
def get_install_bundle(session: Session, actor: User | None, cluster_id: uuid.UUID) -> Response:
    """Multi-document YAML for `kubectl apply -f -`: namespace `kaiden-system`, the Secret with the
    cluster id, API key and gateway endpoint, the controller's ServiceAccount and least-privilege RBAC
    (get/list/watch nodes), the controller Deployment and Service, the agent DaemonSet.

    The bundle contains the API key, which Kaiden stores only hashed: send it in
    `X-Kaiden-Cluster-Key`. A request with the cluster's current key is served without a portal
    sign-in (so `curl … | kubectl apply -f -` works anywhere); a wrong or rotated key is a 403.
    """
    key = _cluster_key()
    cluster = install_bundle.cluster_for_bundle(session, actor, cluster_id, key)
    assert key is not None
    body = install_bundle.render_bundle(cluster.id, key.strip(), settings_of(current_app))
    response = Response(body, status=200, mimetype="application/yaml")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Disposition"] = f'inline; filename="kaiden-{cluster.id}.yaml"'
    return response


@router.get(
    "/clusters/<uuid:cluster_id>/status",
    auth=PUBLIC,
    response=ClusterStatusOut,
    errors=(401, 403),
    summary="A cluster's connection status (portal users, or the cluster's API key)",
)
def get_cluster_status(session: Session, actor: User | None, cluster_id: uuid.UUID) -> Cluster:
    """For scripts that hold only the cluster's key (the onboarding playbook waits on it): send
    `X-Kaiden-Cluster-Key`, or authenticate as a portal user who can see the cluster.
    """
    key = _cluster_key()
    if key or actor is None:
        return install_bundle.cluster_for_key(session, cluster_id, key)
    return service.get_cluster(session, actor, cluster_id)


@router.post(
    "/clusters/<uuid:cluster_id>/onboard",
    body=OnboardRequest,
    response=OperationOut,
    status=202,
    summary="Install Kaiden on the cluster from the portal (runs the onboarding playbook)",
)
def onboard_cluster(session: Session, actor: User, cluster_id: uuid.UUID, body: OnboardRequest) -> Operation:
    """Runs `playbooks/onboard-cluster.yml` in a worker against the given kubeconfig and answers with
    the operation to poll (`progress`, `step`, and on failure the failing task's message). The
    kubeconfig travels encrypted to the job and is deleted after the run. One onboarding per
    cluster at a time (409).
    """
    cluster = service.get_cluster(session, actor, cluster_id)
    _require_cluster_manager(actor)
    return onboarding.start_onboarding(
        session,
        actor,
        cluster,
        kubeconfig=body.kubeconfig.get_secret_value(),
        context=body.context,
        api_key=body.api_key.get_secret_value() if body.api_key is not None else None,
        settings=settings_of(current_app),
        connection=redis_of(current_app),
    )

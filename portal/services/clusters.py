"""Remote Support clusters (seed 000 §8.1): register with an API key shown once, rotate it, list, get, nodes.

Only the key's SHA-256 and a display prefix are stored; `authenticate_cluster_key` is what the
gateway uses to admit a controller.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from portal.auth import policy
from portal.crypto import hash_token, token_prefix
from portal.errors import ConflictError, PermissionDenied, ValidationError
from portal.models import AgentStatus, Cluster, ClusterStatus, Customer, Node, NodeStatus, User, UserRole
from portal.services import check_version, unscoped
from portal.tenancy import get_scoped, scoped

API_KEY_KIND = "kdc"
_MAX_KEY_LENGTH = 200


@dataclass(frozen=True)
class ClusterCredentials:
    """A cluster with the API key that was just issued for it: the only time the key exists in clear."""

    cluster: Cluster
    api_key: str

    @property
    def id(self) -> uuid.UUID:
        return self.cluster.id


def _require_cluster_admin(actor: User, customer_id: uuid.UUID) -> None:
    """Admins manage every customer's clusters; a customer user only their own; engineers none."""
    if actor.role == UserRole.admin:
        return
    if actor.role == UserRole.customer and actor.customer_id == customer_id:
        return
    raise PermissionDenied("Only administrators and the customer's own users may register clusters or rotate keys.")


def register_cluster(
    session: Session,
    actor: User,
    *,
    name: str,
    description: str | None = None,
    customer_id: uuid.UUID | None = None,
) -> ClusterCredentials:
    """Register a cluster (status pending) and issue its API key. Customer users register in their own
    customer; admins name the customer. A second cluster with the same name for a customer is a 409.
    """
    if actor.role == UserRole.customer:
        if customer_id is not None and customer_id != actor.customer_id:
            raise ValidationError("Invalid cluster.", fields={"customer_id": "must be your own customer"})
        customer_id = actor.customer_id
    else:
        policy.require_admin(actor)
        if customer_id is None:
            raise ValidationError("Invalid cluster.", fields={"customer_id": "is required"})
    assert customer_id is not None
    _require_cluster_admin(actor, customer_id)
    customer = session.scalars(scoped(Customer, actor).where(Customer.id == customer_id)).one_or_none()
    if customer is None:
        raise ValidationError("Invalid cluster.", fields={"customer_id": "no such customer"})
    taken = session.scalar(
        select(func.count()).select_from(Cluster).where(Cluster.customer_id == customer.id, Cluster.name == name)
    )
    if taken:
        raise ConflictError(
            "This customer already has a cluster with that name.", code="duplicate_name", fields={"name": "taken"}
        )
    cluster = Cluster(customer_id=customer.id, name=name, description=description, status=ClusterStatus.pending)
    issued = cluster.issue_api_key()
    session.add(cluster)
    session.flush()
    return ClusterCredentials(cluster=cluster, api_key=issued.token)


def rotate_api_key(
    session: Session, actor: User, cluster: Cluster, *, version: int | None = None
) -> ClusterCredentials:
    """Issue a new API key; the old one stops working at once (the controller must be given the new one)."""
    _require_cluster_admin(actor, cluster.customer_id)
    check_version(cluster, version)
    issued = cluster.issue_api_key()
    session.flush()
    return ClusterCredentials(cluster=cluster, api_key=issued.token)


def clusters_query(
    actor: User,
    *,
    customer_id: uuid.UUID | None = None,
    status: ClusterStatus | None = None,
    search: str | None = None,
) -> Select[tuple[Cluster]]:
    """The clusters `actor` may see (staff: all; customer users: their own), filtered, ordered by name."""
    stmt = scoped(Cluster, actor)
    if customer_id is not None:
        stmt = stmt.where(Cluster.customer_id == customer_id)
    if status is not None:
        stmt = stmt.where(Cluster.status == status)
    if search:
        stmt = stmt.where(func.lower(Cluster.name).contains(search.lower(), autoescape=True))
    return stmt.order_by(Cluster.name, Cluster.id)


def list_clusters(session: Session, actor: User, **filters: object) -> list[Cluster]:
    """`clusters_query` executed (for callers that want the rows, not a page)."""
    return list(session.scalars(clusters_query(actor, **filters)))  # type: ignore[arg-type]


def get_cluster(session: Session, actor: User, cluster_id: uuid.UUID | str) -> Cluster:
    """A cluster `actor` may see; a foreign or missing one is `NotFound`."""
    return get_scoped(session, Cluster, cluster_id, actor)


def nodes_query(
    session: Session,
    actor: User,
    cluster_id: uuid.UUID | str,
    *,
    status: NodeStatus | None = None,
    agent_status: AgentStatus | None = None,
) -> Select[tuple[Node]]:
    """The nodes of a cluster `actor` may see (else `NotFound`), optionally filtered, ordered by name."""
    cluster = get_cluster(session, actor, cluster_id)
    stmt = select(Node).where(Node.cluster_id == cluster.id)
    if status is not None:
        stmt = stmt.where(Node.status == status)
    if agent_status is not None:
        stmt = stmt.where(Node.agent_status == agent_status)
    return stmt.order_by(Node.name, Node.id)


def list_nodes(session: Session, actor: User, cluster_id: uuid.UUID | str, **filters: object) -> list[Node]:
    """`nodes_query` executed."""
    return list(session.scalars(nodes_query(session, actor, cluster_id, **filters)))  # type: ignore[arg-type]


def authenticate_cluster_key(session: Session, key: str) -> Cluster | None:
    """The cluster whose current API key is `key`, or None. For the gateway (no user actor).

    Candidates are narrowed by the non-secret prefix, then the hashes are compared in constant
    time, so response timing tells nothing about how much of a key was right.
    """
    if not isinstance(key, str) or not key.startswith(f"{API_KEY_KIND}_") or len(key) > _MAX_KEY_LENGTH:
        return None
    digest = hash_token(key)
    with unscoped(session):
        candidates = session.scalars(select(Cluster).where(Cluster.api_key_prefix == token_prefix(key))).all()
    found: Cluster | None = None
    for cluster in candidates:
        if hmac.compare_digest(cluster.api_key_hash, digest):
            found = cluster
    return found

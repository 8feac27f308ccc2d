"""Cluster service: the API key is shown once and only its hash is stored; rotation invalidates the old key."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select, text

from portal.errors import ConflictError, NotFound, PermissionDenied, ValidationError
from portal.models import Cluster, ClusterStatus
from portal.services import clusters
from tests.factories import make_admin, make_cluster, make_customer, make_engineer, make_node, make_user


def test_register_returns_the_key_once_and_stores_only_hash_and_prefix(db):
    user = make_user(db)
    created = clusters.register_cluster(db, user, name="prod-eu", description="Main site")
    key = created.api_key
    assert key.startswith("kdc_") and len(key) > 40
    cluster = created.cluster
    assert created.id == cluster.id
    assert (cluster.customer_id, cluster.status, cluster.name) == (user.customer_id, ClusterStatus.pending, "prod-eu")
    assert cluster.api_key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key.startswith(cluster.api_key_prefix) and len(cluster.api_key_prefix) < 20
    db.flush()
    row = db.execute(text("SELECT * FROM clusters WHERE name = 'prod-eu'")).mappings().one()
    assert key not in {str(value) for value in row.values()}  # nowhere in the row in clear
    # reading the cluster back never yields the key: nothing but the creation result holds it
    again = clusters.get_cluster(db, user, cluster.id)
    assert not any(isinstance(v, str) and v == key for v in vars(again).values())


def test_authenticate_with_the_key(db):
    created = clusters.register_cluster(db, make_admin(db), name="c1", customer_id=make_customer(db).id)
    assert clusters.authenticate_cluster_key(db, created.api_key) is created.cluster
    assert clusters.authenticate_cluster_key(db, created.api_key + "x") is None
    tampered_last = "B" if created.api_key.endswith("A") else "A"  # always a different key
    assert clusters.authenticate_cluster_key(db, created.api_key[:-1] + tampered_last) is None
    assert clusters.authenticate_cluster_key(db, created.cluster.api_key_hash) is None  # the hash is not a key
    assert clusters.authenticate_cluster_key(db, "kdn_" + created.api_key[4:]) is None
    assert clusters.authenticate_cluster_key(db, "") is None


def test_rotation_invalidates_the_old_key_at_once(db):
    user = make_user(db)
    created = clusters.register_cluster(db, user, name="c1")
    old_key, old_hash = created.api_key, created.cluster.api_key_hash
    rotated = clusters.rotate_api_key(db, user, created.cluster, version=created.cluster.version)
    assert rotated.api_key != old_key and rotated.cluster.api_key_hash != old_hash
    assert clusters.authenticate_cluster_key(db, old_key) is None
    assert clusters.authenticate_cluster_key(db, rotated.api_key) is rotated.cluster
    with pytest.raises(ConflictError):
        clusters.rotate_api_key(db, user, rotated.cluster, version=1)


def test_who_may_register_and_rotate(db):
    customer = make_customer(db)
    user = make_user(db, customer=customer)
    engineer = make_engineer(db)
    admin = make_admin(db)
    with pytest.raises(PermissionDenied):
        clusters.register_cluster(db, engineer, name="x", customer_id=customer.id)
    with pytest.raises(ValidationError) as err:
        clusters.register_cluster(db, admin, name="x")
    assert err.value.fields == {"customer_id": "is required"}
    with pytest.raises(ValidationError) as err:
        clusters.register_cluster(db, user, name="x", customer_id=make_customer(db).id)
    assert "customer_id" in err.value.fields
    cluster = clusters.register_cluster(db, admin, name="x", customer_id=customer.id).cluster
    with pytest.raises(PermissionDenied):
        clusters.rotate_api_key(db, engineer, cluster)
    with pytest.raises(PermissionDenied):
        clusters.rotate_api_key(db, make_user(db), cluster)  # another customer's user
    clusters.rotate_api_key(db, user, cluster)


def test_duplicate_name_per_customer_is_a_conflict(db):
    user = make_user(db)
    clusters.register_cluster(db, user, name="same")
    with pytest.raises(ConflictError):
        clusters.register_cluster(db, user, name="same")
    clusters.register_cluster(db, make_user(db), name="same")  # another customer may use it


def test_list_get_and_nodes_are_tenant_scoped(db):
    user = make_user(db)
    own = make_cluster(db, user.customer, name="b-own")
    own2 = make_cluster(db, user.customer, name="a-own", status=ClusterStatus.online)
    foreign = make_cluster(db, name="foreign")
    make_node(db, own, name="node-02")
    make_node(db, own, name="node-01")
    make_node(db, foreign)
    assert [c.id for c in clusters.list_clusters(db, user)] == [own2.id, own.id]
    assert [c.id for c in clusters.list_clusters(db, user, status=ClusterStatus.online)] == [own2.id]
    assert {c.id for c in clusters.list_clusters(db, make_engineer(db))} >= {own.id, own2.id, foreign.id}
    assert [c.id for c in clusters.list_clusters(db, make_engineer(db), search="FOREIGN")] == [foreign.id]
    assert [n.name for n in clusters.list_nodes(db, user, own.id)] == ["node-01", "node-02"]
    with pytest.raises(NotFound):
        clusters.get_cluster(db, user, foreign.id)
    with pytest.raises(NotFound):
        clusters.list_nodes(db, user, foreign.id)
    assert clusters.get_cluster(db, make_engineer(db), foreign.id) is not None


def test_hash_column_is_unique_per_key(db):
    a = clusters.register_cluster(db, make_user(db), name="a")
    b = clusters.register_cluster(db, make_user(db), name="b")
    hashes = db.scalars(select(Cluster.api_key_hash).where(Cluster.id.in_([a.id, b.id]))).all()
    assert len(set(hashes)) == 2

"""Onboarding from the portal without a cluster: request validation, one at a time, key rotation when no key
is given, sealed job arguments, redaction, and the job's handling of a vanished operation."""

from __future__ import annotations

import uuid
from pathlib import Path

from portal import redis_of, settings_of
from portal.infra import runner
from portal.jobs.onboarding import run_onboarding
from portal.models import Cluster, Operation, OperationState
from portal.services import clusters, onboarding
from tests import factories

KUBECONFIG = (
    "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
    "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
    "users: [{name: u, user: {token: very-secret-token-000111}}]\n"
    "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
)


def _url(cluster) -> str:
    return f"/api/v1/clusters/{cluster.id}/onboard"


def test_bad_requests_are_422_with_field_messages_and_change_nothing(client, db, as_user):
    user = factories.make_user(db)
    cluster = factories.make_cluster(db, user.customer)
    old_hash = cluster.api_key_hash
    headers = as_user(user)
    cases = [
        ({"kubeconfig": "{unclosed: ["}, "kubeconfig"),
        ({"kubeconfig": "a: 1"}, "kubeconfig"),
        ({"kubeconfig": "clusters: [{name: c}]\ncontexts: [{name: c}]\n", "context": "other"}, "context"),
        ({"kubeconfig": "clusters: [{name: c}]\ncontexts: [{name: c}]\n"}, "context"),  # no current-context
        ({"kubeconfig": KUBECONFIG, "api_key": "kdc_wrong"}, "api_key"),
        ({}, "kubeconfig"),
        ({"kubeconfig": KUBECONFIG, "extra": 1}, "extra"),
    ]
    for body, field in cases:
        response = client.post(_url(cluster), json=body, headers=headers)
        assert response.status_code == 422, (body, response.json)
        assert field in response.json["error"]["fields"], response.json
        assert "very-secret-token" not in response.get_data(as_text=True)
    db.expire_all()
    assert db.query(Operation).count() == 0
    assert db.get(Cluster, cluster.id).api_key_hash == old_hash


def test_who_may_onboard(client, db, as_user):
    cluster = factories.make_cluster(db)
    body = {"kubeconfig": KUBECONFIG}
    assert client.post(_url(cluster), json=body, headers=as_user(factories.make_engineer(db))).status_code == 403
    assert client.post(_url(cluster), json=body, headers=as_user(factories.make_user(db))).status_code == 404
    assert client.post(_url(cluster), json=body).status_code == 401
    assert db.query(Operation).count() == 0


def test_queued_with_sealed_secrets_and_one_at_a_time(app, client, db, as_user):
    user = factories.make_user(db)
    cluster = factories.make_cluster(db, user.customer)
    key = cluster.plain_api_key
    headers = as_user(user)
    redis = redis_of(app)
    redis.flushdb()
    first = client.post(_url(cluster), json={"kubeconfig": KUBECONFIG, "api_key": key}, headers=headers)
    assert first.status_code == 202
    operation = first.json["operation"]
    assert operation["params"] == {"context": None, "kubeconfig": "[redacted]", "api_key": "provided"}
    assert "very-secret-token" not in first.get_data(as_text=True) and key not in first.get_data(as_text=True)
    jobs = redis.keys("rq:job:*")
    assert len(jobs) == 1  # enqueued once the request committed
    raw = b"".join(redis.dump(name) or b"" for name in jobs)
    assert b"very-secret-token" not in raw and key.encode() not in raw
    second = client.post(_url(cluster), json={"kubeconfig": KUBECONFIG, "api_key": key}, headers=headers)
    assert second.status_code == 409 and second.json["error"]["code"] == "operation_running"
    assert len(redis.keys("rq:job:*")) == 1  # the refused request enqueued nothing
    db.expire_all()
    stored = db.get(Operation, uuid.UUID(operation["id"]))
    assert stored.state == OperationState.queued and stored.rq_job_id == f"operation-{stored.id}"
    assert clusters.authenticate_cluster_key(db, key).id == cluster.id  # a provided key is kept


def test_without_a_key_a_new_one_is_issued_for_the_bundle(app, client, db, as_user):
    user = factories.make_user(db)
    cluster = factories.make_cluster(db, user.customer)
    old_key = cluster.plain_api_key
    response = client.post(_url(cluster), json={"kubeconfig": KUBECONFIG}, headers=as_user(user))
    assert response.status_code == 202
    assert response.json["operation"]["params"]["api_key"] == "rotated"
    assert "kdc_" not in response.get_data(as_text=True)
    db.expire_all()
    assert clusters.authenticate_cluster_key(db, old_key) is None


def test_sealed_secrets_round_trip(app):
    settings = settings_of(app)
    sealed = onboarding.seal_secrets(settings, {"kubeconfig": KUBECONFIG, "api_key": "kdc_abc"})
    assert "very-secret-token" not in sealed and "kdc_abc" not in sealed
    assert onboarding.open_secrets(settings, sealed) == {"kubeconfig": KUBECONFIG, "api_key": "kdc_abc"}


def test_job_for_a_vanished_operation_does_nothing(app, db):
    settings = settings_of(app)
    sealed = onboarding.seal_secrets(settings, {"kubeconfig": KUBECONFIG, "api_key": "kdc_abc"})
    run_onboarding("00000000-0000-0000-0000-000000000000", sealed, settings)  # no row: returns quietly
    cluster = factories.make_cluster(db)
    cancelled = factories.make_operation(db, cluster, kind=onboarding.KIND, cancel_requested=True)
    db.commit()
    run_onboarding(str(cancelled.id), sealed, settings)
    db.expire_all()
    assert db.get(Operation, cancelled.id).state == OperationState.cancelled


def test_redaction_and_task_count():
    assert runner.redact("key kdc_abcdef and kdc_abcdef!", ["kdc_abcdef"]) == "key [redacted] and [redacted]!"
    assert runner.redact("ab", ["", "a"]) == "ab"  # empty and trivially short values are not "secrets"
    playbooks = Path(runner.PLAYBOOKS_DIR)
    assert runner.count_tasks(playbooks / "onboard-cluster.yml") >= 8
    line = runner.TaskEvent("failed", "Apply", "localhost", "boom").line()
    assert line == "  failed: localhost — boom"


def test_secret_files_are_private(tmp_path):
    with runner.private_dir() as workdir:
        assert workdir.stat().st_mode & 0o777 == 0o700
        path = runner.write_secret_file(workdir, "kubeconfig", KUBECONFIG)
        assert path.stat().st_mode & 0o777 == 0o600
    assert not workdir.exists()

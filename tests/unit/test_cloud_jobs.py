"""Cloud Services jobs without a cluster: the spec a job builds, progress mapping, stack locks, enqueue on commit."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest

from portal import database_of
from portal.errors import ConflictError
from portal.infra.engine import Progress
from portal.jobs import cloud, common
from portal.queue import connect, default_queue
from portal.tenancy import new_operation
from tests import factories

SPECS = {"required": [{"key": "auth.password", "label": "Password", "type": "password", "required": True}]}


def _snapshot(**overrides) -> cloud.ServiceSnapshot:
    values = {
        "id": uuid.uuid4(),
        "name": "Cache",
        "workspace_slug": "acme",
        "quota": {"requests.cpu": "8"},
        "reference_id": "cache",
        "subdomain": "cache",
        "is_private_network": False,
        "template_name": "Hello",
        "repo": "local",
        "chart_name": "hello",
        "default_values": {"replicaCount": 1},
        "secret_keys": frozenset({"auth.password"}),
        "ingress_enabled": True,
        "port": 80,
        "values": {"auth.password": "pw-123456", "config.GREETING": "hi"},
        "chart_version": "0.1.0",
        "current_revision": 1,
        "revision_count": 1,
    }
    values.update(overrides)
    return cloud.ServiceSnapshot(**values)


def _chart_version() -> str:
    from portal.charts import local_chart_version

    return local_chart_version("hello")


def test_spec_splits_secrets_and_builds_ingress_without_cloudflare(settings):
    spec = cloud.build_service_spec(settings, _snapshot(), _snapshot().values, _chart_version(), "kubeconfig")
    assert spec.secret_values == {"auth.password": "pw-123456"}
    assert spec.values == {"config.GREETING": "hi"}
    assert spec.chart.repo is None and spec.chart.chart.endswith("catalog/charts/hello")
    assert spec.ingress is not None and spec.ingress.host == f"cache.{settings.base_domain}"
    assert spec.ingress.ingress_class == settings.ingress_class
    assert spec.cloudflare is None  # not configured


def test_spec_has_dns_only_with_cloudflare_and_no_ingress_when_private(settings):
    with_cf = dataclasses.replace(
        settings, cloudflare_api_token="tok-123456", cloudflare_zone_id="zone", cloudflare_account_id="acct"
    )
    spec = cloud.build_service_spec(with_cf, _snapshot(), {}, _chart_version(), "kubeconfig")
    assert spec.cloudflare is not None and spec.cloudflare.zone_id == "zone"
    assert spec.cloudflare.target == settings.base_domain
    private = cloud.build_service_spec(with_cf, _snapshot(is_private_network=True), {}, _chart_version(), "k")
    assert private.ingress is None and private.cloudflare is None
    no_ingress = cloud.build_service_spec(with_cf, _snapshot(ingress_enabled=False), {}, _chart_version(), "k")
    assert no_ingress.ingress is None and no_ingress.cloudflare is None


def test_passwords_become_secret_config_for_the_scrubber():
    config = cloud._secret_config({"auth.password": "pw-123456", "plain": "x"}, frozenset({"auth.password"}))
    assert list(config) == ["kaiden:password0"]
    assert config["kaiden:password0"].reveal() == "pw-123456"
    assert "pw-123456" not in repr(config)


def test_reporter_maps_engine_progress_into_its_phase_and_publishes(app, db, settings):
    service = factories.make_service(db)
    operation = new_operation(db, "service.deploy", service)
    db.commit()
    connection = connect(settings)
    pubsub = connection.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(common.CHANNEL.format(id=operation.id))
    reporter = common.Reporter(database_of(app), connection, str(operation.id))
    reporter.phase(15, 95, {"release": "paas-ws-acme-cache"})
    urn = "urn:pulumi:svc::kaiden::kubernetes:helm.sh/v3:Release::release"
    reporter.callback(
        Progress("svc", "update", "resource-started", 1, 2, urn, "kubernetes:helm.sh/v3:Release", "create")
    )
    reporter.callback(Progress("svc", "update", "resource-done", 2, 2, urn, "kubernetes:helm.sh/v3:Release", "create"))
    reporter.set(reporter.progress, reporter.step, force=True)
    messages = []
    for _ in range(20):
        message = pubsub.get_message(timeout=0.2)
        if message:
            messages.append(json.loads(message["data"]))
        if len(messages) >= 2:
            break
    assert messages[0] == {
        "event": "progress",
        "data": {"progress": 55, "done": 1, "total": 2, "step": "creating Release paas-ws-acme-cache"},
    }
    assert messages[1]["data"]["progress"] == 95 and messages[1]["data"]["step"] == "created Release paas-ws-acme-cache"
    db.expire_all()
    row = db.get(type(operation), operation.id)
    assert row.progress == 95 and row.step == "created Release paas-ws-acme-cache"


def test_a_busy_stack_lock_is_a_conflict(settings):
    connection = connect(settings)
    name = f"svc-test-{uuid.uuid4().hex[:6]}"
    with common.StackLock(connection, name, wait=None):
        with pytest.raises(ConflictError) as caught, common.StackLock(connection, name, wait=None):
            pass
        assert caught.value.code == "stack_locked"
    with common.StackLock(connection, name, wait=None):  # released: free again
        pass


def test_jobs_are_enqueued_only_when_the_transaction_commits(app, db, settings):
    queue = default_queue(settings)
    service = factories.make_service(db, template=factories.make_template(db, helm_value_specs=SPECS))
    db.commit()
    rolled_back = new_operation(db, "service.upgrade", service)
    cloud.enqueue_after_commit(db, settings, rolled_back, {"values": {"auth.password": "pw-123456"}})
    db.rollback()
    assert str(rolled_back.id) not in queue.job_ids
    committed = new_operation(db, "service.upgrade", service)
    cloud.enqueue_after_commit(db, settings, committed, {"values": {"auth.password": "pw-123456"}})
    db.commit()
    assert str(committed.id) in queue.job_ids
    job = queue.fetch_job(str(committed.id))
    assert "pw-123456" not in json.dumps([str(arg) for arg in job.args])
    queue.remove(job)

"""Cloud Services jobs: deploy, preview, upgrade, roll back and delete a service through the engine.

A job takes the operation id (and, for new inputs, an encrypted blob), reloads everything, closes its
database session before any Pulumi work, publishes progress to Redis (`kaiden:operation:<id>`) and the
Operation row, and writes one final state to the operation, the service and its activity log.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import charts
from portal.crypto import decrypt_text, encrypt_text, make_fernet
from portal.db import Database
from portal.errors import ConflictError, KaidenError, NotFound
from portal.infra import engine
from portal.jobs import dispatch
from portal.jobs.common import Reporter, StackLock, current_settings, publish
from portal.models import (
    ActivityEvent,
    CloudService,
    Operation,
    OperationState,
    RevisionKind,
    ServiceActivityLog,
    ServiceRevision,
    ServiceState,
    User,
    utcnow,
)
from portal.models.cloud import split_secret_values
from portal.queue import connect, default_queue
from portal.settings import Settings
from stacks import cloud_service as service_stack
from stacks import workspace as workspace_stack

log = logging.getLogger("kaiden.jobs.cloud")

JOB_TIMEOUT = 3600
WORKSPACE_LOCK_WAIT = 900
# ---------------------------------------------------------------- enqueue after commit


def enqueue_after_commit(session: Session, settings: Settings, operation: Operation, args: dict[str, Any]) -> None:
    """Queue the job of `operation` once `session` commits (a rolled-back request queues nothing).

    `args` (new values, which may hold passwords) travel encrypted with the portal's key.
    """
    token = encrypt_text(make_fernet(settings.encryption_key), json.dumps(args)) if args else None
    operation.rq_job_id = str(operation.id)
    dispatch.enqueue_after_commit(
        session,
        default_queue(settings),
        run_operation,
        str(operation.id),
        token,
        job_id=str(operation.id),
        job_timeout=JOB_TIMEOUT,
    )


# ---------------------------------------------------------------- what a job needs, loaded once


@dataclass
class ServiceSnapshot:
    """The service as the job found it (plain data: no session is held during Pulumi work)."""

    id: uuid.UUID
    name: str
    workspace_slug: str
    quota: dict[str, str]
    reference_id: str
    subdomain: str | None
    is_private_network: bool
    template_name: str
    repo: str
    chart_name: str
    default_values: dict[str, Any]
    secret_keys: frozenset[str]
    ingress_enabled: bool
    port: int
    values: dict[str, Any] = field(repr=False)
    chart_version: str
    current_revision: int
    revision_count: int

    @property
    def stack(self) -> str:
        return service_stack.stack_name(self.workspace_slug, self.reference_id)

    @property
    def release(self) -> str:
        return service_stack.release_name(self.workspace_slug, self.reference_id)

    @property
    def host(self) -> str | None:
        if self.is_private_network or not self.ingress_enabled or not self.subdomain:
            return None
        return self.subdomain

    @classmethod
    def of(cls, service: CloudService) -> ServiceSnapshot:
        template = service.template
        return cls(
            id=service.id,
            name=service.name,
            workspace_slug=service.workspace.slug,
            quota=dict(service.workspace.quota),
            reference_id=service.reference_id,
            subdomain=service.subdomain,
            is_private_network=service.is_private_network,
            template_name=template.name,
            repo=template.helm_repo_url,
            chart_name=template.helm_chart_name,
            default_values=dict(template.helm_default_values or {}),
            secret_keys=template.secret_keys,
            ingress_enabled=template.ingress_enabled,
            port=template.default_port,
            values=service.user_values,
            chart_version=service.helm_chart_version or template.helm_chart_version,
            current_revision=service.helm_revision,
            revision_count=len(service.revisions),
        )


def kubeconfig_path(settings: Settings) -> Path:
    """The cluster services go to: `KAIDEN_KUBECONFIG`, else the local cluster `kaiden up` started."""
    if settings.kubeconfig:
        return Path(settings.kubeconfig).expanduser()
    from portal.infra import devcluster

    return devcluster.kubeconfig()


def build_service_spec(
    settings: Settings, snap: ServiceSnapshot, values: dict[str, Any], chart_version: str, kubeconfig: str
) -> service_stack.ServiceSpec:
    """The service program's spec from the service, its inputs and the platform settings."""
    ref = charts.resolve_chart(snap.repo, snap.chart_name, chart_version)
    plain, secret = split_secret_values(values, snap.secret_keys)
    ingress = None
    cloudflare = None
    if snap.host is not None:
        host = f"{snap.host}.{settings.base_domain}"
        ingress = service_stack.IngressSpec(
            host=host,
            ingress_class=settings.ingress_class,
            entrypoints=settings.ingress_entrypoints,
            cert_issuer=settings.cert_issuer,
        )
        if settings.cloudflare_enabled:
            cloudflare = service_stack.CloudflareSpec(
                api_token=settings.cloudflare_api_token or "",
                zone_id=settings.cloudflare_zone_id or "",
                target=settings.base_domain,
            )
    return service_stack.ServiceSpec(
        kubeconfig=kubeconfig,
        workspace_slug=snap.workspace_slug,
        reference_id=snap.reference_id,
        chart=service_stack.ChartSpec(chart=ref.chart, version=ref.version, repo=ref.repo),
        port=snap.port,
        default_values=snap.default_values,
        values=plain,
        secret_values=secret,
        ingress=ingress,
        cloudflare=cloudflare,
    )


def _secret_config(values: dict[str, Any], secret_keys: frozenset[str]) -> dict[str, engine.ConfigInput]:
    """Password values as secret stack config: the engine then scrubs them from every log and error."""
    secrets = [values[key] for key in sorted(secret_keys) if values.get(key) not in (None, "")]
    return {f"kaiden:password{n}": engine.Secret(str(value)) for n, value in enumerate(secrets)}


def _names(spec: service_stack.ServiceSpec) -> dict[str, str]:
    host = spec.ingress.host if spec.ingress else spec.release_name
    return {"release": spec.release_name, "ingress": spec.release_name, "dns": host, "cluster": "cluster connection"}


# ---------------------------------------------------------------- running an operation


@dataclass
class JobContext:
    settings: Settings
    db: Database
    connection: redis.Redis
    operation_id: str
    kind: str
    snap: ServiceSnapshot
    reporter: Reporter
    actor_id: uuid.UUID | None
    args: dict[str, Any]


def ensure_workspace(ctx: JobContext, kubeconfig: str) -> None:
    """Apply the workspace stack (namespace, quota, limits); serialized per workspace, retried on a lock conflict."""
    snap = ctx.snap
    spec = workspace_stack.WorkspaceSpec(kubeconfig=kubeconfig, slug=snap.workspace_slug, quota=snap.quota)
    names = {
        "namespace": spec.namespace,
        "quota": workspace_stack.QUOTA_NAME,
        "limits": workspace_stack.LIMITS_NAME,
        "cluster": "cluster connection",
    }
    ctx.reporter.phase(2, 15, names)
    ctx.reporter.set(2, f"preparing namespace {spec.namespace}", force=True)
    name = workspace_stack.stack_name(snap.workspace_slug)
    for attempt in range(3):
        try:
            with StackLock(ctx.connection, name, wait=WORKSPACE_LOCK_WAIT, ttl=300):
                engine.up(
                    name,
                    functools.partial(workspace_stack.workspace, spec),
                    ctx.settings,
                    progress_callback=ctx.reporter.callback,
                    expected_total=4,
                )
            return
        except ConflictError as exc:
            if exc.code != "stack_locked" or attempt == 2:
                raise
            time.sleep(2 + attempt * 3)


def apply_service(
    ctx: JobContext, values: dict[str, Any], chart_version: str, *, preview: bool = False
) -> engine.EngineResult:
    kubeconfig = kubeconfig_path(ctx.settings).read_text()
    spec = build_service_spec(ctx.settings, ctx.snap, values, chart_version, kubeconfig)
    program = functools.partial(service_stack.cloud_service, spec)
    config = _secret_config(values, ctx.snap.secret_keys)
    expected = 2 + (1 if spec.ingress else 0) + (2 if spec.cloudflare else 0)
    if preview:
        ctx.reporter.phase(5, 95, _names(spec))
        return engine.preview(
            ctx.snap.stack,
            program,
            ctx.settings,
            config=config,
            progress_callback=ctx.reporter.callback,
            expected_total=expected,
        )
    ensure_workspace(ctx, kubeconfig)
    ctx.reporter.phase(15, 95, _names(spec))
    ctx.reporter.set(15, f"installing {spec.release_name}", force=True)
    with StackLock(ctx.connection, ctx.snap.stack, wait=None):
        return engine.up(
            ctx.snap.stack,
            program,
            ctx.settings,
            config=config,
            progress_callback=ctx.reporter.callback,
            expected_total=expected,
        )


def _record_revision(
    session: Session,
    ctx: JobContext,
    service: CloudService,
    values: dict[str, Any],
    chart_version: str,
    kind: RevisionKind,
    outputs: dict[str, Any],
    source_revision: int | None = None,
) -> ServiceRevision:
    latest = (
        select(ServiceRevision.revision)
        .where(ServiceRevision.service_id == service.id)
        .order_by(ServiceRevision.revision.desc())
        .limit(1)
    )
    number = (session.scalar(latest) or 0) + 1
    plain, secret = split_secret_values(values, service.template.secret_keys)
    revision = ServiceRevision(
        service=service,
        revision=number,
        kind=kind,
        source_revision=source_revision,
        values=plain,
        secret_values=secret or None,
        chart_version=chart_version,
        created_by_id=ctx.actor_id,
    )
    session.add(revision)
    service.set_user_values(values, service.template.secret_keys)
    service.helm_chart_version = chart_version
    service.helm_revision = number
    service.state = ServiceState.running
    service.error_message = None
    service.public_url = outputs.get("public_url")
    service.internal_port = outputs.get("internal_port") or service.internal_port
    now = utcnow()
    if kind == RevisionKind.install:
        service.deployed_at = now
    else:
        service.last_upgraded_at = now
        service.deployed_at = service.deployed_at or now
    return revision


def _deploy_like(ctx: JobContext) -> dict[str, Any]:
    snap = ctx.snap
    source: int | None = None
    if ctx.kind == "rollback":
        source = int(ctx.args["revision"])
        with ctx.db.session() as session:
            row = session.scalars(
                select(ServiceRevision).where(ServiceRevision.service_id == snap.id, ServiceRevision.revision == source)
            ).one()
            values, chart_version = row.user_values, row.chart_version
        kind = RevisionKind.rollback
    elif ctx.kind == "upgrade":
        values, chart_version = ctx.args["values"], ctx.args["chart_version"]
        kind = RevisionKind.upgrade if snap.revision_count else RevisionKind.install
    else:
        values, chart_version = snap.values, snap.chart_version
        kind = RevisionKind.install
    result = apply_service(ctx, values, chart_version)
    outputs = result.public_outputs()
    with ctx.db.session() as session:
        service = session.get(CloudService, snap.id)
        revision = _record_revision(session, ctx, service, values, chart_version, kind, outputs, source)
        event_type, message = {
            RevisionKind.install: (ActivityEvent.deployed, f"Deployed {snap.template_name} {chart_version}"),
            RevisionKind.upgrade: (ActivityEvent.upgraded, f"Upgraded to revision {revision.revision}"),
            RevisionKind.rollback: (
                ActivityEvent.rolled_back,
                f"Rolled back to the inputs of revision {source} (now revision {revision.revision})",
            ),
        }[kind]
        ServiceActivityLog.record(
            service,
            event_type,
            message,
            {"revision": revision.revision, "changes": dict(result.changes), "duration": round(result.duration, 1)},
            _actor(session, ctx),
        )
    return {
        "revision": revision.revision,
        "public_url": outputs.get("public_url"),
        "internal_port": outputs.get("internal_port"),
        "helm_revision": outputs.get("helm_revision"),
        "chart_version": outputs.get("chart_version") or chart_version,
        "changes": dict(result.changes),
    }


def _preview(ctx: JobContext) -> dict[str, Any]:
    from portal.services.cloud_services import values_diff

    snap = ctx.snap
    values, chart_version = ctx.args["values"], ctx.args["chart_version"]
    result = apply_service(ctx, values, chart_version, preview=True)
    changes = dict(result.changes)
    with ctx.db.session() as session:
        service = session.get(CloudService, snap.id)
        diff = values_diff(service.template, snap.values, values)
        ServiceActivityLog.record(
            service,
            ActivityEvent.previewed,
            f"Previewed an upgrade: {len(diff)} value(s) changed, chart {chart_version}, plan {changes}",
            {"changes": diff, "plan": changes},
            _actor(session, ctx),
        )
    return {
        "values_diff": diff,
        "chart_version": {"old": snap.chart_version, "new": chart_version},
        "plan": {
            "create": changes.get("create", 0),
            "update": changes.get("update", 0),
            "delete": changes.get("delete", 0),
            "same": changes.get("same", 0),
            "steps": [step for step in ctx.reporter.steps if step["op"] != "same"],
        },
    }


def delete_volumes(kubeconfig: Path, namespace: str, release: str, timeout: float = 120) -> list[str]:
    """Delete the PVCs a release left behind (charts keep them on uninstall); returns their names."""
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    selector = f"{service_stack.INSTANCE_LABEL}={release}"
    claims = api.list_namespaced_persistent_volume_claim(namespace, label_selector=selector).items
    names = [pvc.metadata.name for pvc in claims]
    for name in names:
        try:
            api.delete_namespaced_persistent_volume_claim(name, namespace)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not api.list_namespaced_persistent_volume_claim(namespace, label_selector=selector).items:
            break
        time.sleep(1)
    return names


def _delete(ctx: JobContext) -> dict[str, Any]:
    snap = ctx.snap
    keep = bool(ctx.args.get("keep_volumes", True))
    ctx.reporter.phase(5, 85, {"release": snap.release, "ingress": snap.release, "cluster": "cluster connection"})
    ctx.reporter.set(5, f"removing {snap.release}", force=True)
    changes: dict[str, int] = {}
    try:
        with StackLock(ctx.connection, snap.stack, wait=None):
            result = engine.destroy(
                snap.stack, ctx.settings, progress_callback=ctx.reporter.callback, expected_total=3, remove=True
            )
        changes = dict(result.changes)
    except NotFound:
        pass  # never deployed (or already removed): nothing to destroy
    removed: list[str] = []
    if not keep:
        ctx.reporter.set(90, f"deleting volumes of {snap.release}", force=True)
        namespace = workspace_stack.namespace_name(snap.workspace_slug)
        removed = delete_volumes(kubeconfig_path(ctx.settings), namespace, snap.release)
    with ctx.db.session() as session:
        service = session.get(CloudService, snap.id)
        freed = service.subdomain
        service.state = ServiceState.deleted
        service.error_message = None
        service.subdomain = None
        service.public_url = None
        ServiceActivityLog.record(
            service,
            ActivityEvent.deleted,
            f"Deleted ({'volumes kept' if keep else f'{len(removed)} volume(s) deleted'})",
            {"keep_volumes": keep, "volumes_deleted": removed, "subdomain": freed},
            _actor(session, ctx),
        )
    return {"keep_volumes": keep, "volumes_deleted": removed, "changes": changes}


_HANDLERS: dict[str, Callable[[JobContext], dict[str, Any]]] = {
    "deploy": _deploy_like,
    "upgrade": _deploy_like,
    "rollback": _deploy_like,
    "preview": _preview,
    "delete": _delete,
}
_RUNNING_STATE = {
    "deploy": ServiceState.deploying,
    "upgrade": ServiceState.upgrading,
    "rollback": ServiceState.upgrading,
    "delete": ServiceState.deleting,
}
_FAILED_EVENT = {
    "deploy": ActivityEvent.deploy_failed,
    "upgrade": ActivityEvent.upgrade_failed,
    "rollback": ActivityEvent.rollback_failed,
    "delete": ActivityEvent.delete_failed,
    "preview": ActivityEvent.preview_failed,
}


def _actor(session: Session, ctx: JobContext) -> User | None:
    return session.get(User, ctx.actor_id) if ctx.actor_id else None


_databases: dict[str, Database] = {}


def _database(settings: Settings) -> Database:
    db = _databases.get(settings.database_url)
    if db is None:
        db = _databases[settings.database_url] = Database(settings.database_url, settings.encryption_key)
    return db


def run_operation(operation_id: str, token: str | None = None) -> str:
    """The RQ entry point of every Cloud Services operation. Returns the final state."""
    settings = current_settings()
    db = _database(settings)
    connection = connect(settings)
    args = json.loads(decrypt_text(make_fernet(settings.encryption_key), token)) if token else {}
    with db.session() as session:
        operation = session.get(Operation, uuid.UUID(operation_id))
        if operation is None or operation.is_final:
            return "skipped"
        kind = operation.kind.removeprefix("service.")
        service = session.get(CloudService, operation.target_id)
        if service is None or kind not in _HANDLERS:
            operation.state = OperationState.failed
            operation.error = "the service no longer exists" if service is None else f"unknown operation {kind}"
            operation.finished_at = utcnow()
            return "failed"
        operation.state = OperationState.running
        operation.started_at = utcnow()
        operation.step = "starting"
        if kind in _RUNNING_STATE:
            service.state = _RUNNING_STATE[kind]
        snap = ServiceSnapshot.of(service)
        actor_id = operation.requested_by_id
    reporter = Reporter(db, connection, operation_id)
    ctx = JobContext(settings, db, connection, operation_id, kind, snap, reporter, actor_id, args)
    reporter.set(1, "starting", force=True)
    try:
        result = _HANDLERS[kind](ctx)
    except Exception as exc:  # every failure ends as a readable message on the operation and the service
        message = exc.message if isinstance(exc, KaidenError) else "internal error while running the operation"
        if not isinstance(exc, KaidenError):
            log.exception("operation %s (%s) failed", operation_id, kind)
        _finish_failed(ctx, message)
        return "failed"
    with db.session() as session:
        operation = session.get(Operation, uuid.UUID(operation_id))
        operation.state = OperationState.succeeded
        operation.progress = 100
        operation.step = "done"
        operation.result = result
        operation.finished_at = utcnow()
    publish(connection, operation_id, "progress", {"progress": 100, "done": 0, "total": 0, "step": "done"})
    publish(connection, operation_id, "end", {"state": "succeeded", "error": None})
    return "succeeded"


def _finish_failed(ctx: JobContext, message: str) -> None:
    with ctx.db.session() as session:
        operation = session.get(Operation, uuid.UUID(ctx.operation_id))
        operation.state = OperationState.failed
        operation.error = message
        operation.step = "failed"
        operation.finished_at = utcnow()
        service = session.get(CloudService, ctx.snap.id)
        if ctx.kind in _FAILED_EVENT and service is not None:
            if ctx.kind != "preview":  # a failed preview changed nothing
                service.state = ServiceState.error
                service.error_message = message
            ServiceActivityLog.record(
                service, _FAILED_EVENT[ctx.kind], f"{ctx.kind.capitalize()} failed: {message}", {}, _actor(session, ctx)
            )
    publish(ctx.connection, ctx.operation_id, "end", {"state": "failed", "error": message})

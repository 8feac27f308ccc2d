"""The `cluster.onboard` job: render the bundle, run `playbooks/onboard-cluster.yml` through the runner,
and keep the operation's progress, step and (redacted) log current while it runs.
"""

from __future__ import annotations

import logging
import time
import uuid

from portal.db import Database
from portal.infra import runner
from portal.models import Cluster, Operation, OperationState, utcnow
from portal.services import install_bundle
from portal.services.onboarding import open_secrets
from portal.settings import Settings, load_settings

log = logging.getLogger("kaiden.jobs.onboarding")
PLAYBOOK = "onboard-cluster.yml"
CANCEL_POLL_SECONDS = 2.0
LOG_LIMIT = 200_000  # characters of event log kept on the operation


def run_onboarding(operation_id: str, sealed: str, settings: Settings | None = None) -> None:
    """RQ entry point. Takes the operation id and the sealed secrets; writes one final state."""
    settings = settings or load_settings()
    database = Database(settings.database_url, settings.encryption_key)
    try:
        _run(database, settings, uuid.UUID(operation_id), sealed)
    finally:
        database.dispose()


def _update(database: Database, operation_id: uuid.UUID, **values: object) -> Operation | None:
    """Reload the operation, apply `values` (and append `log_lines`), commit; None when it is gone."""
    lines = values.pop("log_lines", None)
    with database.session() as session:
        operation = session.get(Operation, operation_id)
        if operation is None:
            return None
        for name, value in values.items():
            setattr(operation, name, value)
        if lines:
            operation.log = ((operation.log or "") + "".join(f"{line}\n" for line in lines))[-LOG_LIMIT:]
        return operation


def _run(database: Database, settings: Settings, operation_id: uuid.UUID, sealed: str) -> None:
    with database.session() as session:
        operation = session.get(Operation, operation_id)
        if operation is None or operation.is_final:
            log.warning("onboarding %s: no queued operation, nothing to do", operation_id)
            return
        if operation.cancel_requested:
            operation.state, operation.finished_at = OperationState.cancelled, utcnow()
            return
        cluster = session.get(Cluster, operation.target_id)
        if cluster is None:
            operation.state, operation.error, operation.finished_at = (
                OperationState.failed,
                "The cluster is gone.",
                utcnow(),
            )
            return
        cluster_id, context = cluster.id, (operation.params or {}).get("context")
        operation.state, operation.started_at, operation.step, operation.progress = (
            OperationState.running,
            utcnow(),
            "preparing",
            1,
        )
    # The session is closed: the long work below holds no database connection.
    secrets = open_secrets(settings, sealed)
    kubeconfig, api_key = secrets["kubeconfig"], secrets["api_key"]
    hidden = [kubeconfig, api_key, *(line.strip() for line in kubeconfig.splitlines() if len(line.strip()) > 24)]
    last_cancel_check = 0.0
    cancelled = False

    def event_callback(event: runner.TaskEvent) -> None:
        values: dict[str, object] = {"log_lines": [event.line()]}
        if event.kind == "start":
            values["step"] = event.task[:255]
            if event.total:
                values["progress"] = max(1, min(99, round(100 * (event.started - 1) / event.total)))
        _update(database, operation_id, **values)

    def cancel_callback() -> bool:
        nonlocal last_cancel_check, cancelled
        now = time.monotonic()
        if now - last_cancel_check < CANCEL_POLL_SECONDS:
            return cancelled
        last_cancel_check = now
        with database.session() as session:
            operation = session.get(Operation, operation_id)
            cancelled = operation is None or operation.cancel_requested
        return cancelled

    try:
        with runner.private_dir() as workdir:
            kubeconfig_path = runner.write_secret_file(workdir, "kubeconfig", kubeconfig)
            bundle_path = runner.write_secret_file(
                workdir, "bundle.yaml", install_bundle.render_bundle(cluster_id, api_key, settings)
            )
            extravars: dict[str, object] = {
                "kubeconfig": str(kubeconfig_path),
                "bundle_file": str(bundle_path),
                "cluster_id": str(cluster_id),
                "verify_online": False,
            }
            if context:
                extravars["context"] = context
            result = runner.run_playbook(
                PLAYBOOK,
                workdir=workdir,
                extravars=extravars,
                secrets=hidden,
                event_callback=event_callback,
                cancel_callback=cancel_callback,
            )
    except Exception as exc:  # the runner itself broke: record it, never leave the operation running
        log.exception("onboarding %s: runner error", operation_id)
        _update(
            database,
            operation_id,
            state=OperationState.failed,
            error=runner.redact(f"The playbook could not be run: {type(exc).__name__}", hidden),
            finished_at=utcnow(),
        )
        return
    summary = ", ".join(f"{name}={count}" for name, count in sorted(result.stats.items()))
    if result.ok:
        _update(
            database,
            operation_id,
            state=OperationState.succeeded,
            progress=100,
            step="done",
            result={"cluster_id": str(cluster_id), "stats": result.stats, "namespace": install_bundle.NAMESPACE},
            finished_at=utcnow(),
            log_lines=[f"PLAY RECAP {summary}"],
        )
    elif result.status == "canceled" or cancelled:
        _update(database, operation_id, state=OperationState.cancelled, finished_at=utcnow(), log_lines=["cancelled"])
    else:
        _update(
            database,
            operation_id,
            state=OperationState.failed,
            error=(result.failure or "The playbook failed.")[:4000],
            finished_at=utcnow(),
            log_lines=[f"PLAY RECAP {summary}"],
        )

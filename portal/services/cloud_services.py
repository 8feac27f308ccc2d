"""Cloud Services use cases: create, preview, upgrade, roll back and delete a service; the rules they enforce.

Values are checked against the template's specs, names against DNS rules and uniqueness, the workspace
against its quota and service limit, and a service runs one operation at a time. The infrastructure
work itself is an RQ job (`portal.jobs.cloud`), enqueued after the transaction commits.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal import charts
from portal.auth import policy
from portal.auth.policy import WorkspaceAction
from portal.errors import ConflictError, ValidationError
from portal.models import (
    ActivityEvent,
    AppTemplate,
    CloudService,
    Operation,
    ServiceActivityLog,
    ServiceRevision,
    ServiceState,
    User,
    Workspace,
    utcnow,
)
from portal.models.operations import ACTIVE_OPERATION_STATES, OperationState, TargetType
from portal.services import unscoped
from portal.services.workspaces import slugify
from portal.settings import Settings
from portal.tenancy import get_scoped, new_operation

MASK = "********"
REFERENCE_MAX = 40
SUBDOMAIN_MAX = 63
HELM_RELEASE_MAX = 53
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
RESERVED_SUBDOMAINS = frozenset(
    "www api admin app apps portal mail ftp smtp imap pop ns ns1 ns2 dns kaiden static assets cdn dashboard "
    "status docs help support login auth sso billing grafana prometheus traefik kubernetes k8s".split()
)


# ---------------------------------------------------------------- lookups


def get_service(session: Session, actor: User, service_id: uuid.UUID, action: WorkspaceAction) -> CloudService:
    """The service when `actor` may do `action` in its workspace (404 not visible, 403 not allowed)."""
    service = get_scoped(session, CloudService, service_id, actor)
    policy.workspace_for(session, actor, service.workspace_id, action)
    return service


def active_operation(session: Session, service: CloudService) -> Operation | None:
    """The queued or running operation on `service`, if any."""
    stmt = (
        select(Operation)
        .where(
            Operation.target_type == TargetType.service,
            Operation.target_id == service.id,
            Operation.state.in_(ACTIVE_OPERATION_STATES),
        )
        .order_by(Operation.created_at.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()


def revisions(service: CloudService):
    """A `Select` of the service's revisions, newest first."""
    return (
        select(ServiceRevision)
        .where(ServiceRevision.service_id == service.id)
        .order_by(ServiceRevision.revision.desc(), ServiceRevision.id)
    )


def activity(service: CloudService):
    """A `Select` of the service's activity, newest first."""
    return (
        select(ServiceActivityLog)
        .where(ServiceActivityLog.service_id == service.id)
        .order_by(ServiceActivityLog.created_at.desc(), ServiceActivityLog.id)
    )


def services_of(workspace: Workspace, *, include_deleted: bool = False):
    stmt = select(CloudService).where(CloudService.workspace_id == workspace.id)
    if not include_deleted:
        stmt = stmt.where(CloudService.state != ServiceState.deleted)
    return stmt.order_by(CloudService.created_at, CloudService.id)


# ---------------------------------------------------------------- values against specs


def _required(template: AppTemplate) -> set[str]:
    specs = template.helm_value_specs or {}
    keys = {spec["key"] for spec in specs.get("required", [])}
    return keys | {spec["key"] for spec in template.value_specs if spec.get("required")}


def _default(spec: dict[str, Any]) -> Any:
    return spec.get("default_value", spec.get("default"))


def _check_value(spec: dict[str, Any], value: Any) -> tuple[Any, str | None]:
    """(normalized value, error message or None) for one value of one spec."""
    kind = spec.get("type", "text")
    if kind in ("text", "password"):
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return value, "must be a string"
        text = str(value)
        return (text, "must be at most 1000 characters") if len(text) > 1000 else (text, None)
    if kind == "number":
        if isinstance(value, bool):
            return value, "must be a number"
        if isinstance(value, int | float):
            return value, None
        if isinstance(value, str):
            try:
                number = Decimal(value.strip())
            except InvalidOperation:
                return value, "must be a number"
            return (int(number) if number == number.to_integral_value() else float(number)), None
        return value, "must be a number"
    if kind == "boolean":
        if isinstance(value, bool):
            return value, None
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true", None
        return value, "must be true or false"
    if kind == "select":
        options = [str(option) for option in spec.get("options") or []]
        if str(value) not in options:
            return value, "must be one of: " + ", ".join(options)
        return str(value), None
    return value, f"has an unknown type {kind!r}"


def validate_values(
    template: AppTemplate, values: dict[str, Any], current: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The full flat user values after checking `values` against the template's specs.

    `current` (an upgrade): values not sent keep their current value; an empty password keeps it too.
    Missing optional values get the spec's default. 422 with `values.<key>` messages; nothing is echoed.
    """
    specs = {spec["key"]: spec for spec in template.value_specs}
    errors: dict[str, str] = {}
    result: dict[str, Any] = dict(current or {})
    for key, value in values.items():
        spec = specs.get(key)
        if spec is None:
            errors[f"values.{key}"] = "is not allowed"
            continue
        if value is None or (isinstance(value, str) and value == ""):
            if spec.get("type") == "password" and current is not None and key in current:
                continue  # blank password on an upgrade: keep the stored one
            result.pop(key, None)
            continue
        normalized, error = _check_value(spec, value)
        if error:
            errors[f"values.{key}"] = error
        else:
            result[key] = normalized
    for key, spec in specs.items():
        if key not in result and _default(spec) not in (None, "") and spec.get("type") != "password":
            result[key] = _default(spec)
    for key in _required(template):
        if key in specs and result.get(key) in (None, ""):
            errors.setdefault(f"values.{key}", "required")
    if errors:
        raise ValidationError("Some values are invalid.", fields=errors)
    return result


def values_diff(template: AppTemplate, old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """`[{"key", "old", "new"}]` for every changed key; password values shown as a mask."""
    secret = template.secret_keys
    diff = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue

        def shown(value: Any, key: str = key) -> Any:
            return MASK if key in secret and value not in (None, "") else value

        diff.append({"key": key, "old": shown(old.get(key)), "new": shown(new.get(key))})
    return diff


# ---------------------------------------------------------------- names


def reference_max(workspace: Workspace) -> int:
    """The longest reference id that keeps the Helm release `paas-ws-<ws>-<ref>` within 53 characters."""
    return max(1, min(REFERENCE_MAX, HELM_RELEASE_MAX - len(f"paas-ws-{workspace.slug}-")))


def check_reference_id(
    session: Session, workspace: Workspace, value: str, *, exclude: uuid.UUID | None = None
) -> str | None:
    """None when `value` is a free, valid reference id in the workspace; else the reason."""
    limit = reference_max(workspace)
    if not value or not _LABEL.match(value):
        return "invalid"
    if len(value) > limit:
        return f"must be at most {limit} characters"
    stmt = select(CloudService.id).where(CloudService.workspace_id == workspace.id, CloudService.reference_id == value)
    if exclude is not None:
        stmt = stmt.where(CloudService.id != exclude)
    with unscoped(session):
        taken = session.scalar(stmt.limit(1)) is not None
    return "taken" if taken else None


def check_subdomain(session: Session, value: str, *, exclude: uuid.UUID | None = None) -> str | None:
    """None when `value` is a valid, unreserved subdomain no service on the platform uses; else the reason."""
    if not value or len(value) > SUBDOMAIN_MAX or not _LABEL.match(value):
        return "invalid"
    if value in RESERVED_SUBDOMAINS:
        return "reserved"
    stmt = select(CloudService.id).where(CloudService.subdomain == value)
    if exclude is not None:
        stmt = stmt.where(CloudService.id != exclude)
    with unscoped(session):
        taken = session.scalar(stmt.limit(1)) is not None
    return "taken" if taken else None


def derive_reference_id(session: Session, workspace: Workspace, name: str) -> str:
    """A free reference id from the name: its slug, with `-2`, `-3`... when taken."""
    limit = reference_max(workspace)
    base = slugify(name, limit) if re.search(r"[A-Za-z0-9]", name) else "app"  # slugify's fallback is "ws"
    if check_reference_id(session, workspace, base) is None:
        return base
    for n in range(2, 1000):
        suffix = f"-{n}"
        candidate = base[: limit - len(suffix)].strip("-") + suffix
        if check_reference_id(session, workspace, candidate) is None:
            return candidate
    raise ConflictError("Could not find a free reference id for this name.", code="reference_id_taken")


def check_names(
    session: Session, workspace: Workspace, *, subdomain: str | None, reference_id: str | None
) -> dict[str, dict[str, Any]]:
    """The `/services/check` answer: each asked name with `available` and a `reason`."""
    answer: dict[str, dict[str, Any]] = {}
    if subdomain is not None:
        reason = check_subdomain(session, subdomain)
        answer["subdomain"] = {"value": subdomain, "available": reason is None, "reason": reason}
    if reference_id is not None:
        reason = check_reference_id(session, workspace, reference_id)
        answer["reference_id"] = {"value": reference_id, "available": reason is None, "reason": reason}
    return answer


# ---------------------------------------------------------------- quota


_UNITS = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
}
_QUANTITY = re.compile(r"^([0-9.]+)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


def parse_quantity(text: str) -> Decimal:
    """A Kubernetes quantity (`500m`, `16Gi`, `8`) as a number of base units."""
    match = _QUANTITY.match(str(text).strip())
    if not match:
        raise ValueError(f"not a quantity: {text!r}")
    return Decimal(match.group(1)) * _UNITS[match.group(2) or ""]


def check_quota_headroom(session: Session, workspace: Workspace, template: AppTemplate) -> None:
    """422 (field `template_id`) when the template's minimum resources do not fit next to the live services."""
    gib = Decimal(2**30)
    used = session.execute(
        select(
            func.coalesce(func.sum(AppTemplate.min_vcpu), 0),
            func.coalesce(func.sum(AppTemplate.min_ram_gb), 0),
            func.coalesce(func.sum(AppTemplate.min_storage_gb), 0),
        )
        .join(CloudService, CloudService.template_id == AppTemplate.id)
        .where(CloudService.workspace_id == workspace.id, CloudService.state != ServiceState.deleted)
    ).one()
    quota = workspace.quota
    checks = [
        ("CPU", Decimal(str(used[0])) + template.min_vcpu, parse_quantity(quota["requests.cpu"]), "vCPU"),
        (
            "memory",
            Decimal(str(used[1])) + Decimal(str(template.min_ram_gb)),
            parse_quantity(quota["requests.memory"]) / gib,
            "GiB",
        ),
        (
            "storage",
            Decimal(str(used[2])) + template.min_storage_gb,
            parse_quantity(quota["requests.storage"]) / gib,
            "GiB",
        ),
    ]
    for what, need, limit, unit in checks:
        if need > limit:
            message = (
                f"Not enough {what} left in the workspace quota: with {template.name} the services would need "
                f"{need:g} {unit}, the quota is {limit:g} {unit}."
            )
            raise ValidationError(message, fields={"template_id": f"not enough {what} in the workspace quota"})


# ---------------------------------------------------------------- one operation per service


def _lock_service(session: Session, settings: Settings, service: CloudService) -> None:
    """Lock the service row for this transaction and refuse when an operation is queued or running."""
    session.execute(select(CloudService.id).where(CloudService.id == service.id).with_for_update())
    running = active_operation(session, service)
    if running is not None and _abandoned(settings, running):
        running.state = OperationState.failed
        running.error = "the worker running this operation stopped; start it again"
        running.finished_at = utcnow()
        if ServiceState(service.state) in _IN_FLIGHT:
            service.state = ServiceState.error
            service.error_message = running.error
        running = None
    if running is not None:
        error = ConflictError(
            f"Operation {running.kind} ({running.id}) is {running.state} on this service; wait until it finishes.",
            code="operation_running",
        )
        error.extra = {"operation_id": str(running.id)}  # type: ignore[attr-defined]
        raise error


_IN_FLIGHT = {ServiceState.deploying, ServiceState.upgrading, ServiceState.deleting}
ABANDONED_AFTER = timedelta(minutes=2)


def _abandoned(settings: Settings, operation: Operation) -> bool:
    """An active operation whose RQ job failed, was stopped or is gone (a killed worker), after a grace period."""
    if operation.rq_job_id is None or utcnow() - operation.updated_at < ABANDONED_AFTER:
        return False
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    from portal.queue import connect

    try:
        status = Job.fetch(operation.rq_job_id, connection=connect(settings)).get_status(refresh=False)
    except NoSuchJobError:
        return True
    return str(getattr(status, "value", status)) in ("failed", "stopped", "canceled")


def _start(
    session: Session,
    settings: Settings,
    actor: User,
    service: CloudService,
    kind: str,
    params: dict[str, Any],
    job_args: dict[str, Any] | None = None,
) -> Operation:
    from portal.jobs import cloud as jobs

    operation = new_operation(session, f"service.{kind}", service, actor, params=params)
    jobs.enqueue_after_commit(session, settings, operation, job_args or {})
    return operation


# ---------------------------------------------------------------- use cases


def create_service(
    session: Session,
    settings: Settings,
    actor: User,
    workspace: Workspace,
    *,
    template_id: uuid.UUID | str,
    name: str,
    reference_id: str | None = None,
    subdomain: str | None = None,
    is_private_network: bool = False,
    values: dict[str, Any] | None = None,
) -> tuple[CloudService, Operation]:
    """Create the service row (state pending) and queue its deploy."""
    policy.workspace_for(session, actor, workspace.id, WorkspaceAction.DEPLOY)
    template = _template(session, template_id)
    full_values = validate_values(template, values or {})
    try:
        charts.resolve_chart(template.helm_repo_url, template.helm_chart_name, template.helm_chart_version)
    except ValidationError:
        raise ValidationError(
            "This app's chart is not available.", fields={"template_id": "chart not available"}
        ) from None

    # Serialize creations in one workspace (limit, quota, reference ids): lock the workspace row.
    session.execute(select(Workspace.id).where(Workspace.id == workspace.id).with_for_update())
    live = session.scalar(
        select(func.count())
        .select_from(CloudService)
        .where(CloudService.workspace_id == workspace.id, CloudService.state != ServiceState.deleted)
    )
    if (live or 0) >= settings.max_services_per_workspace:
        raise ConflictError(
            f"A workspace can hold at most {settings.max_services_per_workspace} services.", code="service_limit"
        )
    check_quota_headroom(session, workspace, template)

    if reference_id:
        reason = check_reference_id(session, workspace, reference_id)
        if reason == "taken":
            raise ConflictError(
                "This reference id is already used in the workspace.",
                code="reference_id_taken",
                fields={"reference_id": "taken"},
            )
        if reason:
            raise ValidationError("Invalid reference id.", fields={"reference_id": reason})
    else:
        reference_id = derive_reference_id(session, workspace, name)

    if is_private_network or not template.ingress_enabled:
        subdomain = None
    else:
        subdomain = subdomain or reference_id
        reason = check_subdomain(session, subdomain)
        if reason == "taken":
            raise ConflictError(
                "This subdomain is already used.", code="subdomain_taken", fields={"subdomain": "taken"}
            )
        if reason:
            raise ValidationError("Invalid subdomain.", fields={"subdomain": reason})

    service = CloudService(
        workspace=workspace,
        template=template,
        name=name,
        reference_id=reference_id,
        subdomain=subdomain,
        is_private_network=is_private_network,
        helm_release_name=f"paas-ws-{workspace.slug}-{reference_id}",
        helm_namespace=workspace.namespace,
        helm_chart_version=template.helm_chart_version,
        helm_revision=0,
        internal_port=template.default_port,
        allocated_vcpu=template.min_vcpu,
        allocated_ram_gb=template.min_ram_gb,
        allocated_storage_gb=template.min_storage_gb,
        created_by=actor,
        state=ServiceState.pending,
    )
    service.set_user_values(full_values, template.secret_keys)
    session.add(service)
    session.flush()
    ServiceActivityLog.record(
        service,
        ActivityEvent.deploy_requested,
        f"{actor.name} requested deployment of {template.name} {template.helm_chart_version}",
        {"chart_version": template.helm_chart_version, "values": full_values},
        actor,
    )
    operation = _start(session, settings, actor, service, "deploy", {"chart_version": template.helm_chart_version})
    return service, operation


def _template(session: Session, template_id: uuid.UUID | str) -> AppTemplate:
    try:
        key = uuid.UUID(str(template_id))
    except ValueError:
        key = None
    template = None
    if key is not None:
        template = session.get(AppTemplate, key)
    if template is None:
        template = session.scalars(select(AppTemplate).where(AppTemplate.slug == str(template_id))).first()
    if template is None or not template.is_active:
        raise ValidationError("Unknown app template.", fields={"template_id": "not found"})
    return template


def _require_state(service: CloudService, allowed: set[ServiceState], doing: str) -> None:
    if ServiceState(service.state) not in allowed:
        raise ConflictError(f"Cannot {doing} a service that is {service.state}.", code="invalid_state")


def _new_inputs(
    service: CloudService, values: dict[str, Any] | None, chart_version: str | None
) -> tuple[dict[str, Any], str]:
    template = service.template
    full = validate_values(template, values or {}, current=service.user_values)
    version = chart_version or service.helm_chart_version or template.helm_chart_version
    if chart_version:
        try:
            charts.resolve_chart(template.helm_repo_url, template.helm_chart_name, chart_version)
        except ValidationError:
            raise ValidationError(
                "This chart version is not available.", fields={"chart_version": "not available"}
            ) from None
    return full, version


def preview_service(
    session: Session,
    settings: Settings,
    actor: User,
    service: CloudService,
    *,
    values: dict[str, Any] | None = None,
    chart_version: str | None = None,
) -> Operation:
    """Queue a preview of an upgrade: values diff and the Pulumi plan, nothing changed."""
    full, version = _new_inputs(service, values, chart_version)
    _lock_service(session, settings, service)
    _require_state(service, {ServiceState.running, ServiceState.error}, "preview")
    return _start(
        session,
        settings,
        actor,
        service,
        "preview",
        {"chart_version": version},
        {"values": full, "chart_version": version},
    )


def upgrade_service(
    session: Session,
    settings: Settings,
    actor: User,
    service: CloudService,
    *,
    values: dict[str, Any] | None = None,
    chart_version: str | None = None,
) -> Operation:
    """Queue an upgrade to new values and/or chart version (a new revision). Also retries a failed deploy."""
    full, version = _new_inputs(service, values, chart_version)
    _lock_service(session, settings, service)
    _require_state(service, {ServiceState.running, ServiceState.error}, "upgrade")
    diff = values_diff(service.template, service.user_values, full)
    service.state = ServiceState.upgrading
    service.error_message = None
    ServiceActivityLog.record(
        service,
        ActivityEvent.upgrade_requested,
        f"{actor.name} requested an upgrade ({len(diff)} value(s) changed, chart {version})",
        {"changes": diff, "chart_version": version},
        actor,
    )
    return _start(
        session,
        settings,
        actor,
        service,
        "upgrade",
        {"chart_version": version, "changed_keys": [d["key"] for d in diff]},
        {"values": full, "chart_version": version},
    )


def rollback_service(
    session: Session, settings: Settings, actor: User, service: CloudService, *, revision: int
) -> Operation:
    """Queue a rollback: `pulumi up` with the inputs of `revision`, recorded as a new revision."""
    source = session.scalars(
        select(ServiceRevision).where(ServiceRevision.service_id == service.id, ServiceRevision.revision == revision)
    ).first()
    if source is None:
        raise ValidationError("No such revision.", fields={"revision": "not found"})
    _lock_service(session, settings, service)
    _require_state(service, {ServiceState.running, ServiceState.error}, "roll back")
    service.state = ServiceState.upgrading
    service.error_message = None
    ServiceActivityLog.record(
        service,
        ActivityEvent.rollback_requested,
        f"{actor.name} requested a rollback to revision {revision}",
        {"revision": revision},
        actor,
    )
    return _start(session, settings, actor, service, "rollback", {"revision": revision}, {"revision": revision})


def delete_service(
    session: Session, settings: Settings, actor: User, service: CloudService, *, keep_volumes: bool = True
) -> Operation:
    """Queue the removal of the release, ingress, DNS record and stack (and the volumes unless kept)."""
    policy.workspace_for(session, actor, service.workspace_id, WorkspaceAction.DELETE)
    if ServiceState(service.state) == ServiceState.deleted:
        raise ConflictError("This service is already deleted.", code="invalid_state")
    _lock_service(session, settings, service)
    service.state = ServiceState.deleting
    ServiceActivityLog.record(
        service,
        ActivityEvent.delete_requested,
        f"{actor.name} requested deletion ({'keeping' if keep_volumes else 'deleting'} volumes)",
        {"keep_volumes": keep_volumes},
        actor,
    )
    return _start(
        session, settings, actor, service, "delete", {"keep_volumes": keep_volumes}, {"keep_volumes": keep_volumes}
    )


def secret_keys_set(service: CloudService) -> list[str]:
    """The password keys that have a value (the values themselves never leave the server)."""
    return sorted(key for key, value in (service.helm_secret_values or {}).items() if value not in (None, ""))

"""REST v1: Cloud Services — create, read, preview, upgrade, roll back and delete services (docs/cloud-services.md)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from flask import current_app, jsonify
from pydantic import Field
from sqlalchemy.orm import Session

from portal import settings_of
from portal.api.framework import PageQuery, RequestModel, ResponseModel, Router
from portal.api.operations import OperationOut
from portal.auth import policy
from portal.auth.policy import WorkspaceAction
from portal.models import CloudService, Operation, ServiceRevision, ServiceState, User
from portal.services import cloud_services as service

router = Router("services", tags=["Cloud Services"])

ValueInput = str | int | float | bool | None


# ---------------------------------------------------------------- schemas


class ServiceCreate(RequestModel):
    template_id: str = Field(min_length=1, max_length=100, description="Template id or slug.")
    name: str = Field(min_length=1, max_length=100)
    reference_id: str | None = Field(None, max_length=63, description="Derived from the name when omitted.")
    subdomain: str | None = Field(None, max_length=63, description="Defaults to the reference id.")
    is_private_network: bool = False
    values: dict[str, ValueInput] = Field(default_factory=dict, description="Spec key → value.")


class ServiceChange(RequestModel):
    values: dict[str, ValueInput] | None = Field(None, description="Changed values; a blank password keeps its value.")
    chart_version: str | None = Field(None, min_length=1, max_length=64)


class RollbackBody(RequestModel):
    revision: int = Field(ge=1)


class ServiceFilter(PageQuery):
    include_deleted: bool = False


class CheckQuery(RequestModel):
    subdomain: str | None = Field(None, max_length=100)
    reference_id: str | None = Field(None, max_length=100)


class DeleteQuery(RequestModel):
    keep_volumes: bool = True


class TemplateBrief(ResponseModel):
    id: uuid.UUID
    slug: str
    name: str
    icon_url: str | None
    category: str
    monthly_price: float


class ServiceOut(ResponseModel):
    id: uuid.UUID
    workspace_id: uuid.UUID
    template: TemplateBrief
    name: str
    reference_id: str
    deployment_id: str
    state: ServiceState
    error_message: str | None
    subdomain: str | None
    public_url: str | None
    internal_port: int | None
    is_private_network: bool
    helm_release_name: str | None
    helm_namespace: str | None
    helm_revision: int
    helm_chart_version: str | None
    values: dict[str, Any] = Field(description="Non-secret user values (passwords are never returned).")
    secret_keys_set: list[str] = Field(description="Password keys that have a value.")
    monthly_price: float
    created_at: datetime
    deployed_at: datetime | None
    last_upgraded_at: datetime | None
    active_operation: OperationOut | None
    version: int


class ServiceAccepted(ResponseModel):
    service: ServiceOut
    operation: OperationOut


class NameCheck(ResponseModel):
    value: str
    available: bool
    reason: str | None


class CheckOut(ResponseModel):
    subdomain: NameCheck | None = None
    reference_id: NameCheck | None = None


class UserBrief(ResponseModel):
    id: uuid.UUID
    name: str


class RevisionOut(ResponseModel):
    revision: int
    kind: str
    source_revision: int | None
    chart_version: str
    values: dict[str, Any]
    created_at: datetime
    created_by: UserBrief | None
    current: bool


class ActivityOut(ResponseModel):
    id: uuid.UUID
    event_type: str
    message: str
    actor: UserBrief | None
    created_at: datetime


def service_out(session: Session, svc: CloudService) -> dict[str, Any]:
    """The ServiceOut of a service: plain values only; passwords appear as key names in `secret_keys_set`."""
    template = svc.template
    return {
        "id": svc.id,
        "workspace_id": svc.workspace_id,
        "template": {
            "id": template.id,
            "slug": template.slug,
            "name": template.name,
            "icon_url": template.icon_url,
            "category": str(template.category),
            "monthly_price": template.monthly_price,
        },
        "name": svc.name,
        "reference_id": svc.reference_id,
        "deployment_id": svc.deployment_id,
        "state": svc.state,
        "error_message": svc.error_message,
        "subdomain": svc.subdomain,
        "public_url": svc.public_url,
        "internal_port": svc.internal_port,
        "is_private_network": svc.is_private_network,
        "helm_release_name": svc.helm_release_name,
        "helm_namespace": svc.helm_namespace,
        "helm_revision": svc.helm_revision,
        "helm_chart_version": svc.helm_chart_version,
        "values": dict(svc.helm_values or {}),
        "secret_keys_set": service.secret_keys_set(svc),
        "monthly_price": template.monthly_price,
        "created_at": svc.created_at,
        "deployed_at": svc.deployed_at,
        "last_upgraded_at": svc.last_upgraded_at,
        "active_operation": service.active_operation(session, svc),
        "version": svc.version,
    }


def _accepted(session: Session, svc: CloudService, operation: Operation) -> dict[str, Any]:
    session.flush()
    return {"service": service_out(session, svc), "operation": operation}


def _settings():
    return settings_of(current_app)


# ---------------------------------------------------------------- routes


@router.get(
    "/workspaces/<uuid:workspace_id>/services",
    query=ServiceFilter,
    response=ServiceOut,
    paginated=True,
    summary="List a workspace's services",
)
def list_services(session: Session, actor: User, workspace_id: uuid.UUID, query: ServiceFilter):
    """Deleted services are left out unless `include_deleted=true`."""
    workspace = policy.workspace_for(session, actor, workspace_id, WorkspaceAction.READ)
    stmt = service.services_of(workspace, include_deleted=query.include_deleted)
    return [service_out(session, svc) for svc in session.scalars(stmt)]


@router.get(
    "/workspaces/<uuid:workspace_id>/services/check",
    query=CheckQuery,
    response=CheckOut,
    summary="Check a subdomain and/or reference id",
)
def check_names(session: Session, actor: User, workspace_id: uuid.UUID, query: CheckQuery):
    """Each name asked for: whether it is available and, if not, why (invalid, reserved, taken)."""
    workspace = policy.workspace_for(session, actor, workspace_id, WorkspaceAction.READ)
    answer = service.check_names(session, workspace, subdomain=query.subdomain, reference_id=query.reference_id)
    return jsonify(answer)  # only the names asked for


@router.post(
    "/workspaces/<uuid:workspace_id>/services",
    body=ServiceCreate,
    response=ServiceAccepted,
    status=202,
    summary="Launch a service",
    errors=(409,),
)
def create_service(session: Session, actor: User, workspace_id: uuid.UUID, body: ServiceCreate):
    """Validates the values against the template's specs, checks names, quota and the service limit,
    creates the service and queues its deployment."""
    workspace = policy.workspace_for(session, actor, workspace_id, WorkspaceAction.DEPLOY)
    svc, operation = service.create_service(
        session,
        _settings(),
        actor,
        workspace,
        template_id=body.template_id,
        name=body.name,
        reference_id=body.reference_id,
        subdomain=body.subdomain,
        is_private_network=body.is_private_network,
        values=dict(body.values),
    )
    return _accepted(session, svc, operation)


@router.get("/services/<uuid:service_id>", response=ServiceOut, summary="Get a service")
def get_service(session: Session, actor: User, service_id: uuid.UUID):
    svc = service.get_service(session, actor, service_id, WorkspaceAction.READ)
    return service_out(session, svc)


@router.post(
    "/services/<uuid:service_id>/preview",
    body=ServiceChange,
    response=OperationOut,
    status=202,
    summary="Preview an upgrade",
    errors=(409,),
)
def preview_service(session: Session, actor: User, service_id: uuid.UUID, body: ServiceChange):
    """The operation's result: the values diff (passwords masked) and the Pulumi plan; nothing changes."""
    svc = service.get_service(session, actor, service_id, WorkspaceAction.DEPLOY)
    return service.preview_service(
        session, _settings(), actor, svc, values=body.values, chart_version=body.chart_version
    )


@router.patch(
    "/services/<uuid:service_id>",
    body=ServiceChange,
    response=ServiceAccepted,
    status=202,
    summary="Upgrade a service",
    errors=(409,),
)
def upgrade_service(session: Session, actor: User, service_id: uuid.UUID, body: ServiceChange):
    """New values and/or chart version → a new revision. Also retries a failed deployment."""
    svc = service.get_service(session, actor, service_id, WorkspaceAction.DEPLOY)
    operation = service.upgrade_service(
        session, _settings(), actor, svc, values=body.values, chart_version=body.chart_version
    )
    return _accepted(session, svc, operation)


@router.get(
    "/services/<uuid:service_id>/revisions",
    query=PageQuery,
    response=RevisionOut,
    paginated=True,
    summary="List a service's revisions",
)
def list_revisions(session: Session, actor: User, service_id: uuid.UUID, query: PageQuery):
    """Newest first; `current` marks the revision running now."""
    svc = service.get_service(session, actor, service_id, WorkspaceAction.READ)

    def out(rev: ServiceRevision) -> dict[str, Any]:
        return {
            "revision": rev.revision,
            "kind": str(rev.kind),
            "source_revision": rev.source_revision,
            "chart_version": rev.chart_version,
            "values": dict(rev.values or {}),
            "created_at": rev.created_at,
            "created_by": rev.created_by,
            "current": rev.revision == svc.helm_revision and svc.state != ServiceState.deleted,
        }

    return [out(rev) for rev in session.scalars(service.revisions(svc))]


@router.post(
    "/services/<uuid:service_id>/rollback",
    body=RollbackBody,
    response=ServiceAccepted,
    status=202,
    summary="Roll back to a revision",
    errors=(409,),
)
def rollback_service(session: Session, actor: User, service_id: uuid.UUID, body: RollbackBody):
    """`pulumi up` with the inputs of that revision, recorded as a new revision (as `helm rollback`)."""
    svc = service.get_service(session, actor, service_id, WorkspaceAction.DEPLOY)
    operation = service.rollback_service(session, _settings(), actor, svc, revision=body.revision)
    return _accepted(session, svc, operation)


@router.delete(
    "/services/<uuid:service_id>",
    query=DeleteQuery,
    response=ServiceAccepted,
    status=202,
    summary="Delete a service",
    errors=(409,),
)
def delete_service(session: Session, actor: User, service_id: uuid.UUID, query: DeleteQuery):
    """Removes the release, ingress, DNS record and stack; `keep_volumes=false` also deletes the volumes.
    The record stays (state `deleted`) with its history."""
    svc = service.get_service(session, actor, service_id, WorkspaceAction.DELETE)
    operation = service.delete_service(session, _settings(), actor, svc, keep_volumes=query.keep_volumes)
    return _accepted(session, svc, operation)


@router.get(
    "/services/<uuid:service_id>/activity",
    query=PageQuery,
    response=ActivityOut,
    paginated=True,
    summary="A service's activity log",
)
def list_activity(session: Session, actor: User, service_id: uuid.UUID, query: PageQuery):
    """Newest first: who did what, when, and how it ended."""
    svc = service.get_service(session, actor, service_id, WorkspaceAction.READ)
    return service.activity(svc)

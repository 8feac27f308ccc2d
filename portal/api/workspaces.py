"""REST v1: workspaces (Cloud Services tenants' projects) and their members."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import Field
from sqlalchemy import func
from sqlalchemy.orm import Session

from portal.api.framework import PageQuery, RequestModel, ResponseModel, Router, expected_version
from portal.auth import policy
from portal.auth.policy import WorkspaceAction
from portal.models import User, UserRole, Workspace, WorkspaceMember, WorkspaceRole
from portal.services import workspaces as service

router = Router("workspaces", tags=["Workspaces"])


class WorkspaceCreate(RequestModel):
    name: str = Field(min_length=1, max_length=100)
    description: str | None = Field(None, max_length=2000)
    customer_id: uuid.UUID | None = Field(
        None, description="Admins: required. Customer users: omit (always your own customer)."
    )
    owner_id: uuid.UUID | None = Field(
        None, description="Admins: optional customer user to make owner. Customer users become owner themselves."
    )


Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$", max_length=32)]


class QuotaUpdate(RequestModel):
    """The namespace's ResourceQuota; applied by the next operation on one of the workspace's services."""

    requests_cpu: Quantity | None = Field(None, description="`requests.cpu`, e.g. `8` or `500m`.")
    requests_memory: Quantity | None = Field(None, description="`requests.memory`, e.g. `16Gi`.")
    limits_cpu: Quantity | None = None
    limits_memory: Quantity | None = None
    requests_storage: Quantity | None = Field(None, description="`requests.storage`, e.g. `100Gi`.")
    pvcs: int | None = Field(None, ge=0, le=10_000, description="`persistentvolumeclaims`.")
    pods: int | None = Field(None, ge=1, le=10_000)


class WorkspaceUpdate(RequestModel):
    name: str = Field(None, min_length=1, max_length=100)
    description: str | None = Field(None, max_length=2000)
    quota: QuotaUpdate | None = Field(None, description="Platform admins only.")
    version: int | None = Field(None, ge=1, description="The version you last read (optimistic locking).")


class WorkspaceFilter(PageQuery):
    customer_id: uuid.UUID | None = None
    search: str | None = Field(None, max_length=100, description="Case-insensitive substring of the name.")


class WorkspaceOut(ResponseModel):
    id: uuid.UUID
    customer_id: uuid.UUID
    name: str
    slug: str = Field(description="Unique, derived from the name at creation; never changes.")
    description: str | None
    namespace: str = Field(description="The Kubernetes namespace of the workspace's services.")
    quota: dict[str, str]
    created_at: datetime
    updated_at: datetime
    version: int


class MemberAdd(RequestModel):
    user_id: uuid.UUID
    role: WorkspaceRole


class MemberUpdate(RequestModel):
    role: WorkspaceRole
    version: int | None = Field(None, ge=1, description="The membership version you last read.")


class MemberOut(ResponseModel):
    user_id: uuid.UUID
    email: str
    name: str
    role: WorkspaceRole
    created_at: datetime
    updated_at: datetime
    version: int

    @classmethod
    def of(cls, member: WorkspaceMember) -> MemberOut:
        return cls(
            user_id=member.user_id,
            email=member.user.email,
            name=member.user.name,
            role=member.role,
            created_at=member.created_at,
            updated_at=member.updated_at,
            version=member.version,
        )


@router.get("/workspaces", query=WorkspaceFilter, response=WorkspaceOut, paginated=True, summary="List workspaces")
def list_workspaces(session: Session, actor: User, query: WorkspaceFilter):
    """Staff see every workspace; a customer user sees the workspaces they are a member of."""
    stmt = policy.visible_workspaces(actor)
    if query.customer_id is not None:
        stmt = stmt.where(Workspace.customer_id == query.customer_id)
    if query.search:
        stmt = stmt.where(func.lower(Workspace.name).contains(query.search.lower(), autoescape=True))
    return stmt.order_by(Workspace.name, Workspace.id)


@router.post("/workspaces", body=WorkspaceCreate, response=WorkspaceOut, summary="Create a workspace")
def create_workspace(session: Session, actor: User, body: WorkspaceCreate) -> Workspace:
    """Customer users create in their own customer and become owner; admins name the customer."""
    if actor.role == UserRole.engineer:
        policy.require_admin(actor)
    return service.create_workspace(
        session,
        actor,
        name=body.name,
        description=body.description,
        customer_id=body.customer_id,
        owner_id=body.owner_id,
    )


@router.get("/workspaces/<uuid:workspace_id>", response=WorkspaceOut, summary="Get a workspace")
def get_workspace(session: Session, actor: User, workspace_id: uuid.UUID) -> Workspace:
    return policy.workspace_for(session, actor, workspace_id, WorkspaceAction.READ)


@router.patch(
    "/workspaces/<uuid:workspace_id>", body=WorkspaceUpdate, response=WorkspaceOut, summary="Update a workspace"
)
def update_workspace(session: Session, actor: User, workspace_id: uuid.UUID, body: WorkspaceUpdate) -> Workspace:
    """Workspace admins and owners, and platform admins. The slug never changes."""
    workspace = policy.workspace_for(session, actor, workspace_id, WorkspaceAction.MANAGE)
    changes = body.model_dump(exclude_unset=True, exclude={"version"})
    if "quota" in changes:
        changes["quota"] = {k: v for k, v in (changes["quota"] or {}).items() if v is not None}
    return service.update_workspace(session, actor, workspace, changes, version=expected_version(body.version))


@router.delete("/workspaces/<uuid:workspace_id>", status=204, summary="Delete an empty workspace")
def delete_workspace(session: Session, actor: User, workspace_id: uuid.UUID) -> None:
    """Workspace admins and owners, and platform admins; 409 while it still has services."""
    workspace = policy.workspace_for(session, actor, workspace_id, WorkspaceAction.MANAGE)
    service.delete_workspace(session, actor, workspace, version=expected_version())


@router.get(
    "/workspaces/<uuid:workspace_id>/members",
    query=PageQuery,
    response=MemberOut,
    paginated=True,
    summary="List members",
)
def list_members(session: Session, actor: User, workspace_id: uuid.UUID, query: PageQuery):
    workspace = policy.workspace_for(session, actor, workspace_id, WorkspaceAction.READ)
    return [MemberOut.of(member) for member in session.scalars(service.members(workspace))]


@router.post("/workspaces/<uuid:workspace_id>/members", body=MemberAdd, response=MemberOut, summary="Add a member")
def add_member(session: Session, actor: User, workspace_id: uuid.UUID, body: MemberAdd) -> MemberOut:
    """The user must be an active customer user of the workspace's customer; only owners grant `owner`."""
    workspace = policy.workspace_for(session, actor, workspace_id, WorkspaceAction.MANAGE)
    return MemberOut.of(service.add_member(session, actor, workspace, user_id=body.user_id, role=body.role))


@router.patch(
    "/workspaces/<uuid:workspace_id>/members/<uuid:user_id>",
    body=MemberUpdate,
    response=MemberOut,
    summary="Change a member's role",
)
def update_member(session: Session, actor: User, workspace_id: uuid.UUID, user_id: uuid.UUID, body: MemberUpdate):
    """The last owner cannot be demoted (409 `last_owner`)."""
    workspace = policy.workspace_for(session, actor, workspace_id, WorkspaceAction.MANAGE)
    member = service.get_member(session, workspace, user_id)
    version = expected_version(body.version)
    return MemberOut.of(service.change_member_role(session, actor, workspace, member, role=body.role, version=version))


@router.delete("/workspaces/<uuid:workspace_id>/members/<uuid:user_id>", status=204, summary="Remove a member")
def remove_member(session: Session, actor: User, workspace_id: uuid.UUID, user_id: uuid.UUID) -> None:
    """The last owner cannot be removed (409 `last_owner`)."""
    workspace = policy.workspace_for(session, actor, workspace_id, WorkspaceAction.MANAGE)
    member = service.get_member(session, workspace, user_id)
    service.remove_member(session, actor, workspace, member, version=expected_version())

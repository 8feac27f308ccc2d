"""REST v1: `GET /api/v1/me` — who the caller is, their customer and workspace memberships."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.api.framework import ResponseModel, Router
from portal.auth import auth_method
from portal.models import Customer, User, UserRole, Workspace, WorkspaceMember, WorkspaceRole

router = Router("me", tags=["Me"])


class CustomerRef(ResponseModel):
    id: uuid.UUID
    name: str


class MembershipOut(BaseModel):
    workspace_id: uuid.UUID
    workspace_name: str
    workspace_slug: str
    role: WorkspaceRole


class MeOut(ResponseModel):
    id: uuid.UUID
    email: str
    name: str
    role: UserRole
    customer: CustomerRef | None
    memberships: list[MembershipOut]
    authenticated_by: str
    last_login_at: datetime | None
    version: int


@router.get("/me", response=MeOut, summary="Who am I")
def get_me(session: Session, actor: User) -> MeOut:
    customer = session.get(Customer, actor.customer_id) if actor.customer_id else None
    rows = session.execute(
        select(Workspace, WorkspaceMember.role)
        .join(WorkspaceMember, WorkspaceMember.workspace_id == Workspace.id)
        .where(WorkspaceMember.user_id == actor.id)
        .order_by(Workspace.name, Workspace.id)
    ).all()
    return MeOut(
        id=actor.id,
        email=actor.email,
        name=actor.name,
        role=actor.role,
        customer=CustomerRef.model_validate(customer) if customer else None,
        memberships=[
            MembershipOut(workspace_id=ws.id, workspace_name=ws.name, workspace_slug=ws.slug, role=role)
            for ws, role in rows
        ],
        authenticated_by=auth_method() or "unknown",
        last_login_at=actor.last_login_at,
        version=actor.version,
    )

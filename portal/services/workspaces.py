"""Workspace use cases: create (unique slug from the name), rename, delete, and manage members."""

from __future__ import annotations

import re
import unicodedata
import uuid
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from portal.auth import policy
from portal.auth.policy import WorkspaceAction
from portal.errors import ConflictError, PermissionDenied, ValidationError
from portal.models import CloudService, Customer, User, UserRole, Workspace, WorkspaceMember, WorkspaceRole
from portal.services import check_version, unscoped

SLUG_MAX = 40


def slugify(name: str, max_length: int = SLUG_MAX) -> str:
    """A DNS-label-safe slug: ascii lowercase letters, digits and single dashes ("ws" if nothing is left)."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    return slug[:max_length].strip("-") or "ws"


def unique_slug(session: Session, name: str) -> str:
    """`slugify(name)`, with `-2`, `-3`, ... appended when taken (across all tenants)."""
    base = slugify(name)
    with unscoped(session):
        taken = set(
            session.scalars(select(Workspace.slug).where((Workspace.slug == base) | Workspace.slug.like(f"{base}-%")))
        )
    if base not in taken:
        return base
    for n in range(2, 10_000):
        suffix = f"-{n}"
        candidate = base[: SLUG_MAX - len(suffix)].strip("-") + suffix
        if candidate not in taken:
            return candidate
    raise ConflictError("Could not find a free slug for this name.", code="slug_exhausted")


def create_workspace(
    session: Session,
    actor: User,
    *,
    name: str,
    description: str | None = None,
    customer_id: uuid.UUID | None = None,
    owner_id: uuid.UUID | None = None,
) -> Workspace:
    """Create a workspace. A customer user creates it in their own customer and becomes its owner;
    an admin names the customer (and may name a customer user as owner); engineers cannot.
    """
    if actor.role == UserRole.customer:
        if customer_id is not None and customer_id != actor.customer_id:
            raise ValidationError("Invalid workspace.", fields={"customer_id": "must be your own customer"})
        if owner_id is not None and owner_id != actor.id:
            raise ValidationError("Invalid workspace.", fields={"owner_id": "you become the owner"})
        customer_id, owner_id = actor.customer_id, actor.id
    else:
        policy.require_admin(actor)
        if customer_id is None:
            raise ValidationError("Invalid workspace.", fields={"customer_id": "is required"})
    customer = session.get(Customer, customer_id)
    if customer is None:
        raise ValidationError("Invalid workspace.", fields={"customer_id": "no such customer"})
    owner = _member_candidate(session, customer.id, owner_id, field="owner_id") if owner_id else None
    workspace = Workspace(customer_id=customer.id, name=name, description=description, slug=unique_slug(session, name))
    session.add(workspace)
    session.flush()
    if owner is not None:
        session.add(WorkspaceMember(workspace_id=workspace.id, user_id=owner.id, role=WorkspaceRole.owner))
        session.flush()
    return workspace


def update_workspace(
    session: Session, actor: User, workspace: Workspace, changes: dict[str, Any], *, version: int | None = None
) -> Workspace:
    """Rename or describe a workspace (its slug and namespace never change); platform admins also set its
    quota (`{"requests_cpu": "8", "pods": 100, ...}`), applied by the next operation on one of its services."""
    _require(session, actor, workspace, WorkspaceAction.MANAGE)
    if changes.get("quota") and not policy.is_admin(actor):
        raise PermissionDenied("Only platform administrators may change a workspace's quota.")
    check_version(workspace, version)
    for key in ("name", "description"):
        if key in changes:
            setattr(workspace, key, changes[key])
    for key, value in (changes.get("quota") or {}).items():
        setattr(workspace, f"quota_{key}", value)
    session.flush()
    return workspace


def delete_workspace(session: Session, actor: User, workspace: Workspace, *, version: int | None = None) -> None:
    """Delete an empty workspace; one that still has services is a 409 (delete them first)."""
    _require(session, actor, workspace, WorkspaceAction.MANAGE)
    check_version(workspace, version)
    if session.scalar(select(exists().where(CloudService.workspace_id == workspace.id))):
        raise ConflictError("The workspace still has services; delete them first.", code="workspace_not_empty")
    session.delete(workspace)
    session.flush()


# ---------------------------------------------------------------- members


def members(workspace: Workspace):
    """A `Select` of the workspace's memberships, oldest first."""
    return (
        select(WorkspaceMember)
        .where(WorkspaceMember.workspace_id == workspace.id)
        .order_by(WorkspaceMember.created_at, WorkspaceMember.id)
    )


def get_member(session: Session, workspace: Workspace, user_id: uuid.UUID) -> WorkspaceMember:
    from portal.errors import NotFound

    member = session.scalars(
        select(WorkspaceMember).where(WorkspaceMember.workspace_id == workspace.id, WorkspaceMember.user_id == user_id)
    ).one_or_none()
    if member is None:
        raise NotFound("Member not found.")
    return member


def add_member(
    session: Session, actor: User, workspace: Workspace, *, user_id: uuid.UUID, role: WorkspaceRole | str
) -> WorkspaceMember:
    """Add a customer user of the workspace's customer; granting `owner` needs an owner or a platform admin."""
    role = WorkspaceRole(role)
    actor_role = _require(session, actor, workspace, WorkspaceAction.MANAGE)
    _require_owner_rights(actor, actor_role, role)
    user = _member_candidate(session, workspace.customer_id, user_id, field="user_id")
    if session.scalar(
        select(exists().where(WorkspaceMember.workspace_id == workspace.id, WorkspaceMember.user_id == user.id))
    ):
        raise ConflictError("This user is already a member.", code="duplicate", fields={"user_id": "already a member"})
    member = WorkspaceMember(workspace_id=workspace.id, user_id=user.id, role=role)
    session.add(member)
    session.flush()
    return member


def change_member_role(
    session: Session,
    actor: User,
    workspace: Workspace,
    member: WorkspaceMember,
    *,
    role: WorkspaceRole | str,
    version: int | None = None,
) -> WorkspaceMember:
    """Change a member's role; only owners touch `owner`, and the last owner stays an owner."""
    role = WorkspaceRole(role)
    actor_role = _require(session, actor, workspace, WorkspaceAction.MANAGE)
    check_version(member, version)
    if WorkspaceRole.owner in (role, WorkspaceRole(member.role)):
        _require_owner_rights(actor, actor_role, WorkspaceRole.owner)
    if member.role == WorkspaceRole.owner and role != WorkspaceRole.owner:
        _ensure_other_owner(session, workspace, member)
    member.role = role
    session.flush()
    return member


def remove_member(
    session: Session, actor: User, workspace: Workspace, member: WorkspaceMember, *, version: int | None = None
) -> None:
    """Remove a member; removing an owner needs owner rights, and the last owner cannot be removed (409)."""
    actor_role = _require(session, actor, workspace, WorkspaceAction.MANAGE)
    check_version(member, version)
    if member.role == WorkspaceRole.owner:
        _require_owner_rights(actor, actor_role, WorkspaceRole.owner)
        _ensure_other_owner(session, workspace, member)
    session.delete(member)
    session.flush()


def ensure_not_last_owner_anywhere(session: Session, user: User) -> None:
    """Before deleting `user`: 409 if they are the last owner of some workspace."""
    for member in session.scalars(
        select(WorkspaceMember).where(WorkspaceMember.user_id == user.id, WorkspaceMember.role == WorkspaceRole.owner)
    ):
        workspace = session.get(Workspace, member.workspace_id)
        if workspace is not None:
            _ensure_other_owner(session, workspace, member)


def _require(session: Session, actor: User, workspace: Workspace, action: WorkspaceAction) -> WorkspaceRole | None:
    role = None if policy.is_staff(actor) else policy.membership_role(session, actor, workspace.id)
    if not policy.can_workspace(actor, role, action):
        raise PermissionDenied(f"Your role in this workspace does not allow this ({action.value}).")
    return role


def _require_owner_rights(actor: User, actor_role: WorkspaceRole | None, role: WorkspaceRole) -> None:
    if role == WorkspaceRole.owner and not (policy.is_admin(actor) or actor_role == WorkspaceRole.owner):
        raise PermissionDenied("Only an owner can grant or take away the owner role.")


def _ensure_other_owner(session: Session, workspace: Workspace, member: WorkspaceMember) -> None:
    # Lock every owner row (PostgreSQL) so two concurrent demotions cannot both see "another owner".
    owner_ids = session.scalars(
        select(WorkspaceMember.id)
        .where(WorkspaceMember.workspace_id == workspace.id, WorkspaceMember.role == WorkspaceRole.owner)
        .with_for_update()
    ).all()
    if not [owner_id for owner_id in owner_ids if owner_id != member.id]:
        raise ConflictError("A workspace must keep at least one owner.", code="last_owner")


def _member_candidate(session: Session, customer_id: uuid.UUID, user_id: uuid.UUID | None, *, field: str) -> User:
    user = session.get(User, user_id) if user_id else None
    if user is None or user.role != UserRole.customer or user.customer_id != customer_id or not user.is_active:
        raise ValidationError("Invalid member.", fields={field: "must be an active user of the workspace's customer"})
    return user

"""REST v1: users. Staff read all, customer users read their own customer's users, admins write."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import EmailStr, Field
from sqlalchemy import func, or_
from sqlalchemy.orm import Session

from portal.api.framework import PageQuery, RequestModel, ResponseModel, Router, expected_version
from portal.auth import policy
from portal.auth.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from portal.models import User, UserRole
from portal.services import identity
from portal.tenancy import scoped

router = Router("users", tags=["Users"])


class UserCreate(RequestModel):
    email: EmailStr = Field(max_length=255)
    name: str = Field(min_length=1, max_length=255)
    role: UserRole
    customer_id: uuid.UUID | None = Field(None, description="Required for customer users, empty for staff.")
    password: str | None = Field(
        None,
        min_length=MIN_PASSWORD_LENGTH,
        max_length=MAX_PASSWORD_LENGTH,
        description="Optional: without one the user cannot sign in until an admin sets it.",
    )


class UserUpdate(RequestModel):
    email: EmailStr = Field(None, max_length=255)
    name: str = Field(None, min_length=1, max_length=255)
    role: UserRole = None  # type: ignore[assignment]
    customer_id: uuid.UUID | None = None
    is_active: bool = None  # type: ignore[assignment]
    password: str = Field(None, min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH)
    version: int | None = Field(None, ge=1, description="The version you last read (optimistic locking).")


class UserFilter(PageQuery):
    role: UserRole | None = None
    customer_id: uuid.UUID | None = None
    is_active: bool | None = None
    search: str | None = Field(None, max_length=255, description="Substring of the email or name.")


class UserOut(ResponseModel):
    id: uuid.UUID
    email: str
    name: str
    role: UserRole
    customer_id: uuid.UUID | None
    is_active: bool
    last_login_at: datetime | None
    created_at: datetime
    updated_at: datetime
    version: int


@router.get("/users", query=UserFilter, response=UserOut, paginated=True, summary="List users")
def list_users(session: Session, actor: User, query: UserFilter):
    """Staff see every user; a customer user sees the users of their own customer."""
    stmt = scoped(User, actor)
    if query.role is not None:
        stmt = stmt.where(User.role == query.role)
    if query.customer_id is not None:
        stmt = stmt.where(User.customer_id == query.customer_id)
    if query.is_active is not None:
        stmt = stmt.where(User.is_active.is_(query.is_active))
    if query.search:
        needle = query.search.lower()
        stmt = stmt.where(
            or_(User.email.contains(needle, autoescape=True), func.lower(User.name).contains(needle, autoescape=True))
        )
    return stmt.order_by(User.email, User.id)


@router.post("/users", body=UserCreate, response=UserOut, summary="Create a user", errors=(409,))
def create_user(session: Session, actor: User, body: UserCreate) -> User:
    """Admins only. Emails are unique (case-insensitive)."""
    return identity.create_user(
        session,
        actor,
        email=body.email,
        name=body.name,
        role=body.role,
        customer_id=body.customer_id,
        password=body.password,
    )


@router.get("/users/<uuid:user_id>", response=UserOut, summary="Get a user")
def get_user(session: Session, actor: User, user_id: uuid.UUID) -> User:
    return policy.visible_user(session, actor, user_id)


@router.patch("/users/<uuid:user_id>", body=UserUpdate, response=UserOut, summary="Update a user")
def update_user(session: Session, actor: User, user_id: uuid.UUID, body: UserUpdate) -> User:
    """Admins only. Changing the password signs the user out of their browser sessions."""
    user = policy.visible_user(session, actor, user_id)
    changes = body.model_dump(exclude_unset=True, exclude={"version"})
    return identity.update_user(session, actor, user, changes, version=expected_version(body.version))


@router.delete("/users/<uuid:user_id>", status=204, summary="Delete a user")
def delete_user(session: Session, actor: User, user_id: uuid.UUID) -> None:
    """Admins only; not yourself, and not the last owner of a workspace (409)."""
    user = policy.visible_user(session, actor, user_id)
    identity.delete_user(session, actor, user, version=expected_version())

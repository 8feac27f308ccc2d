"""Identity use cases: customers, users (incl. the first administrator) and personal API tokens."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from portal.auth import passwords, policy
from portal.crypto import new_token
from portal.errors import ConflictError, NotFound, ValidationError
from portal.models import ApiToken, Cluster, Customer, Ticket, User, UserRole, Workspace, normalize_email, utcnow
from portal.services import check_version, unscoped

MAX_TOKENS_PER_USER = 100


# ---------------------------------------------------------------- customers


def create_customer(session: Session, actor: User, *, name: str) -> Customer:
    policy.require_admin(actor)
    _ensure_customer_name_free(session, name)
    customer = Customer(name=name)
    session.add(customer)
    session.flush()
    return customer


def update_customer(
    session: Session, actor: User, customer: Customer, changes: dict[str, Any], *, version: int | None = None
) -> Customer:
    """Apply `changes` (name, is_active) to `customer`; `version` is the client's optimistic lock."""
    policy.require_admin(actor)
    check_version(customer, version)
    if "name" in changes and changes["name"] != customer.name:
        _ensure_customer_name_free(session, changes["name"], exclude=customer.id)
        customer.name = changes["name"]
    if "is_active" in changes:
        customer.is_active = bool(changes["is_active"])
    session.flush()
    return customer


def delete_customer(session: Session, actor: User, customer: Customer, *, version: int | None = None) -> None:
    """Delete an empty customer (its users go with it); one that still owns anything is a 409."""
    policy.require_admin(actor)
    check_version(customer, version)
    for model, label in ((Workspace, "workspaces"), (Cluster, "clusters"), (Ticket, "tickets")):
        if session.scalar(select(exists().where(model.customer_id == customer.id))):
            raise ConflictError(f"The customer still has {label}; remove them first.", code="customer_not_empty")
    session.delete(customer)
    session.flush()


def _ensure_customer_name_free(session: Session, name: str, exclude: uuid.UUID | None = None) -> None:
    stmt = select(Customer.id).where(func.lower(Customer.name) == name.lower())
    if exclude is not None:
        stmt = stmt.where(Customer.id != exclude)
    with unscoped(session):
        taken = session.scalar(stmt.limit(1))
    if taken is not None:
        raise ConflictError("A customer with this name already exists.", code="duplicate", fields={"name": "taken"})


# ---------------------------------------------------------------- users


def create_admin(session: Session, email: str, name: str, password: str) -> User:
    """Create a platform administrator (bootstrap and `kaiden users create-admin`; no actor needed)."""
    email = _validated_email(email)
    if not name.strip() or len(name) > 255:
        raise ValidationError("Name must be 1 to 255 characters.", fields={"name": "must be 1 to 255 characters"})
    _validate_password(password)
    _ensure_email_free(session, email)
    user = User(
        email=normalize_email(email),
        name=name,
        role=UserRole.admin,
        customer_id=None,
        password_hash=passwords.hash_password(password),
    )
    session.add(user)
    session.flush()
    return user


def _validated_email(email: str) -> str:
    """The API validates emails in its schemas; callers without one (CLI, bootstrap) come through here."""
    from email_validator import EmailNotValidError, validate_email

    try:
        return validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValidationError(f"Invalid email address: {exc}", fields={"email": "not a valid email address"}) from exc


def create_user(
    session: Session,
    actor: User,
    *,
    email: str,
    name: str,
    role: UserRole | str,
    customer_id: uuid.UUID | None = None,
    password: str | None = None,
) -> User:
    """Create a user (admins only). Customer users need `customer_id`; staff must not have one."""
    policy.require_admin(actor)
    role = UserRole(role)
    _check_role_customer(session, actor, role, customer_id)
    if password is not None:
        _validate_password(password)
    _ensure_email_free(session, email)
    user = User(
        email=normalize_email(email),
        name=name,
        role=role,
        customer_id=customer_id if role == UserRole.customer else None,
        password_hash=passwords.hash_password(password) if password is not None else None,
    )
    session.add(user)
    session.flush()
    return user


def update_user(
    session: Session, actor: User, user: User, changes: dict[str, Any], *, version: int | None = None
) -> User:
    """Apply `changes` (name, email, role, customer_id, is_active, password) — admins only."""
    policy.require_admin(actor)
    check_version(user, version)
    role = UserRole(changes.get("role", user.role))
    customer_id = changes.get("customer_id", user.customer_id) if role == UserRole.customer else None
    if user.id == actor.id and (role != user.role or changes.get("is_active") is False):
        raise ConflictError("You cannot demote or deactivate your own account.", code="self_lockout")
    if role != user.role or customer_id != user.customer_id:
        _check_role_customer(session, actor, role, customer_id)
        if user.memberships and (role != UserRole.customer or customer_id != user.customer_id):
            raise ConflictError(
                "The user is a member of workspaces; remove those memberships first.", code="has_memberships"
            )
        user.role = role
        user.customer_id = customer_id
    if "email" in changes and normalize_email(changes["email"]) != user.email:
        _ensure_email_free(session, changes["email"], exclude=user.id)
        user.email = changes["email"]
    if "name" in changes:
        user.name = changes["name"]
    if "is_active" in changes:
        user.is_active = bool(changes["is_active"])
    if changes.get("password") is not None:
        set_password(user, changes["password"])
    session.flush()
    return user


def delete_user(session: Session, actor: User, user: User, *, version: int | None = None) -> None:
    """Delete a user (admins only); their tokens and memberships go too, history keeps a NULL author."""
    policy.require_admin(actor)
    check_version(user, version)
    if user.id == actor.id:
        raise ConflictError("You cannot delete your own account.", code="self_lockout")
    from portal.services.workspaces import ensure_not_last_owner_anywhere

    ensure_not_last_owner_anywhere(session, user)
    session.delete(user)
    session.flush()


def set_password(user: User, password: str) -> None:
    """Hash and store a new password (this also signs the user out of other browser sessions)."""
    _validate_password(password)
    user.password_hash = passwords.hash_password(password)


def authenticate(session: Session, email: str, password: str) -> User | None:
    """The active user with this email and password, or None (same timing either way)."""
    user = session.scalars(select(User).where(User.email == normalize_email(email))).one_or_none()
    valid = passwords.verify_password(user.password_hash if user else None, password)
    if user is None or not valid or not user.is_active:
        return None
    if user.customer is not None and not user.customer.is_active:
        return None
    if user.password_hash and passwords.needs_rehash(user.password_hash):
        user.password_hash = passwords.hash_password(password)
    return user


def _validate_password(password: str) -> None:
    if len(password) < passwords.MIN_PASSWORD_LENGTH:
        raise ValidationError(
            "Invalid password.",
            fields={"password": f"must be at least {passwords.MIN_PASSWORD_LENGTH} characters"},
        )
    if len(password) > passwords.MAX_PASSWORD_LENGTH:
        raise ValidationError(
            "Invalid password.", fields={"password": f"must be at most {passwords.MAX_PASSWORD_LENGTH} characters"}
        )


def _check_role_customer(session: Session, actor: User, role: UserRole, customer_id: uuid.UUID | None) -> None:
    if role == UserRole.customer:
        if customer_id is None:
            raise ValidationError("Invalid user.", fields={"customer_id": "is required for customer users"})
        if session.get(Customer, customer_id) is None:
            raise ValidationError("Invalid user.", fields={"customer_id": "no such customer"})
    elif customer_id is not None:
        raise ValidationError("Invalid user.", fields={"customer_id": "must be empty for staff users"})


def _ensure_email_free(session: Session, email: str, exclude: uuid.UUID | None = None) -> None:
    stmt = select(User.id).where(User.email == normalize_email(email))
    if exclude is not None:
        stmt = stmt.where(User.id != exclude)
    with unscoped(session):
        taken = session.scalar(stmt.limit(1))
    if taken is not None:
        raise ConflictError("A user with this email already exists.", code="duplicate", fields={"email": "taken"})


# ---------------------------------------------------------------- API tokens


def create_token(
    session: Session, actor: User, *, name: str, expires_in_days: int | None = None
) -> tuple[ApiToken, str]:
    """A new personal token for `actor`: returns the row and the plain token (shown once, never stored)."""
    active = session.scalar(
        select(func.count()).select_from(ApiToken).where(ApiToken.user_id == actor.id, ApiToken.revoked_at.is_(None))
    )
    if (active or 0) >= MAX_TOKENS_PER_USER:
        raise ConflictError(f"You already have {MAX_TOKENS_PER_USER} tokens; revoke some first.", code="too_many")
    issued = new_token("kdn")
    expires_at: datetime | None = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
    token = ApiToken(
        user_id=actor.id, name=name, token_prefix=issued.prefix, token_hash=issued.hash, expires_at=expires_at
    )
    session.add(token)
    session.flush()
    return token, issued.token


def own_tokens(actor: User):
    """A `Select` of the actor's tokens that are not revoked, newest first."""
    return (
        select(ApiToken)
        .where(ApiToken.user_id == actor.id, ApiToken.revoked_at.is_(None))
        .order_by(ApiToken.created_at.desc(), ApiToken.id)
    )


def revoke_token(session: Session, actor: User, token_id: uuid.UUID) -> ApiToken:
    """Revoke one of the actor's own tokens (another user's token is a 404)."""
    token = session.scalars(
        select(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == actor.id, ApiToken.revoked_at.is_(None))
    ).one_or_none()
    if token is None:
        raise NotFound("Token not found.")
    token.revoked_at = utcnow()
    session.flush()
    return token

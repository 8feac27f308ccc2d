"""Who: customers (the tenants), users (staff or customer users) and their personal API tokens."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates

from portal.db import Base
from portal.models.base import CreatedMixin, IdMixin, TimestampMixin, UTCDateTime, VersionedMixin, enum_type

if TYPE_CHECKING:
    from portal.models.cloud import Workspace, WorkspaceMember
    from portal.models.support import Cluster, Ticket


class UserRole(enum.StrEnum):
    admin = "admin"
    engineer = "engineer"
    customer = "customer"


STAFF_ROLES = frozenset({UserRole.admin, UserRole.engineer})


class Customer(IdMixin, TimestampMixin, VersionedMixin, Base):
    """A tenant: owns workspaces (Cloud Services), clusters and tickets (Remote Support)."""

    __tablename__ = "customers"

    name: Mapped[str] = mapped_column(String(255), nullable=False, unique=True)
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)

    users: Mapped[list[User]] = relationship(back_populates="customer", passive_deletes=True)
    workspaces: Mapped[list[Workspace]] = relationship(back_populates="customer", passive_deletes=True)
    clusters: Mapped[list[Cluster]] = relationship(back_populates="customer", passive_deletes=True)
    tickets: Mapped[list[Ticket]] = relationship(back_populates="customer", passive_deletes=True)

    def __repr__(self) -> str:
        return f"<Customer {self.name!r}>"


class User(IdMixin, TimestampMixin, VersionedMixin, Base):
    """A person. Staff (admin, engineer) have no customer; customer users must have one."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(
            "(role = 'customer' AND customer_id IS NOT NULL) OR (role <> 'customer' AND customer_id IS NULL)",
            name="customer_iff_customer_role",
        ),
        # Stored lower-cased (see `normalize_email`), so a plain unique index is case-insensitive.
        CheckConstraint("email = lower(email)", name="email_lowercase"),
    )

    email: Mapped[str] = mapped_column(String(255), nullable=False, unique=True)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    role: Mapped[UserRole] = mapped_column(enum_type(UserRole, "user_role"), nullable=False)
    customer_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), nullable=True, index=True
    )
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    customer: Mapped[Customer | None] = relationship(back_populates="users")
    memberships: Mapped[list[WorkspaceMember]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )
    api_tokens: Mapped[list[ApiToken]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )

    @validates("email")
    def _normalize_email(self, _key: str, value: str) -> str:
        return normalize_email(value)

    @property
    def is_staff(self) -> bool:
        return self.role in STAFF_ROLES

    def __repr__(self) -> str:
        return f"<User {self.email} {self.role}>"


def normalize_email(value: str) -> str:
    """The stored form of an email address: trimmed and lower-cased (look users up with this)."""
    return value.strip().lower()


class ApiToken(IdMixin, CreatedMixin, Base):
    """A personal bearer token: only `token_hash` (SHA-256) is stored; the token is shown once."""

    __tablename__ = "api_tokens"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    token_prefix: Mapped[str] = mapped_column(String(32), nullable=False, index=True)
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    user: Mapped[User] = relationship(back_populates="api_tokens")

    def is_usable(self, now: datetime) -> bool:
        """Not revoked and not expired at `now` (an aware datetime)."""
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

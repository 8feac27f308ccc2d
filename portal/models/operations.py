"""Operations: one row per background job (deploy, upgrade, session start, playbook run, backup...)."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.db import Base
from portal.models.base import IdMixin, TimestampMixin, UTCDateTime, VersionedMixin, enum_type

if TYPE_CHECKING:
    from portal.models.identity import Customer, User


class OperationState(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


ACTIVE_OPERATION_STATES = frozenset({OperationState.queued, OperationState.running})
FINAL_OPERATION_STATES = frozenset({OperationState.succeeded, OperationState.failed, OperationState.cancelled})


class TargetType(enum.StrEnum):
    """What an operation acts on; `target_id` is that row's id (no FK: the target may be deleted)."""

    service = "service"
    session = "session"
    cluster = "cluster"
    node = "node"
    workspace = "workspace"
    backup = "backup"
    ticket = "ticket"
    platform = "platform"  # staff-only, no customer


class Operation(IdMixin, TimestampMixin, VersionedMixin, Base):
    """A background job's record: the portal creates it `queued`, a worker moves it to a final state.

    `customer_id` is copied from the target when created (`portal.tenancy.customer_id_of`), so
    scoping never depends on the target still existing; NULL means a platform operation.
    Workers update progress with the ORM (version-checked) after reloading the row.
    """

    __tablename__ = "operations"
    __table_args__ = (
        CheckConstraint("progress >= 0 AND progress <= 100", name="progress_range"),
        Index("ix_operations_target", "target_type", "target_id"),
    )

    kind: Mapped[str] = mapped_column(String(64), nullable=False, index=True)  # e.g. "service.deploy"
    target_type: Mapped[TargetType] = mapped_column(enum_type(TargetType, "operation_target_type"), nullable=False)
    target_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    customer_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), nullable=True, index=True
    )
    state: Mapped[OperationState] = mapped_column(
        enum_type(OperationState, "operation_state"), nullable=False, default=OperationState.queued, index=True
    )
    progress: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    step: Mapped[str | None] = mapped_column(String(255), nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)  # redacted inputs
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # outputs on success
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    log: Mapped[str] = mapped_column(Text, nullable=False, default="")
    requested_by_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    rq_job_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    customer: Mapped[Customer | None] = relationship()
    requested_by: Mapped[User | None] = relationship()

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_OPERATION_STATES

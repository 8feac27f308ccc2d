"""Column types and mixins shared by every model: UUID keys, UTC timestamps, enums, optimistic locking."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Dialect, Integer, TypeDecorator, Uuid
from sqlalchemy import Enum as SAEnum
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

ENUM_LENGTH = 32  # fixed, so adding an enum value never needs a column-length migration


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the only kind of datetime the models store)."""
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    return uuid.uuid4()


class UTCDateTime(TypeDecorator[datetime]):
    """`DateTime(timezone=True)` that always returns aware UTC datetimes, on SQLite too.

    Naive datetimes given to it are taken as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        # SQLite stores text without an offset: keep it naive UTC there.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def enum_type(enum_cls: type[enum.Enum], name: str, *, constraint: bool = True) -> SAEnum:
    """A portable enum column type: VARCHAR(32) + a named CHECK constraint (no native PG enum).

    Values are the enum's `.value`s; `constraint=False` keeps validation in Python only, for
    open-ended lists (activity event types) that should grow without a migration.
    """
    return SAEnum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=constraint,
        length=ENUM_LENGTH,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class IdMixin:
    """A UUID primary key, assigned when the object is constructed (usable before any flush)."""

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id, sort_order=-100)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.id is None:
            self.id = new_id()


class CreatedMixin:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow, sort_order=100)


class TimestampMixin(CreatedMixin):
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, nullable=False, default=utcnow, onupdate=utcnow, sort_order=101
    )


class VersionedMixin:
    """Optimistic locking: every ORM UPDATE checks and bumps `version`.

    A concurrent edit raises `sqlalchemy.orm.exc.StaleDataError` (map it to 409). Core
    `update()` statements bypass the check — use them only for fire-and-forget counters.
    """

    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1, sort_order=102)

    @declared_attr.directive
    def __mapper_args__(cls) -> dict[str, Any]:
        return {"version_id_col": cls.__table__.c.version}  # type: ignore[attr-defined]

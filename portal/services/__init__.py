"""Use cases: plain functions taking a `Session` and an actor; they own the business rules.

They never commit when called from a request (the request owns the transaction); the CLI and jobs
wrap them in `Database.session()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.orm import Session

from portal.errors import ConflictError


def check_version(obj: Any, expected: int | None) -> None:
    """Optimistic locking: the client's `version` (or If-Match) must match the row's, else 409."""
    if expected is not None and expected != obj.version:
        raise ConflictError(
            f"This record was changed by someone else (your version {expected}, current {obj.version}); "
            "reload it and try again.",
            code="stale",
        )


@contextmanager
def unscoped(session: Session) -> Iterator[Session]:
    """Lift the tenancy guard for a global check (e.g. a slug or email unique across tenants).

    Use only for existence checks whose result is not shown to the actor.
    """
    from portal.tenancy import bind_actor, bound_actor

    actor = bound_actor(session)
    bind_actor(session, None)
    try:
        yield session
    finally:
        bind_actor(session, actor)

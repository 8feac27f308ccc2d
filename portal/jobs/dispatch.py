"""Enqueue RQ jobs only once the transaction that created their operation has committed.

A worker can pick a job up within milliseconds; if it ran before the request committed, it would
not find its operation row. Jobs registered here are sent on the session's commit and dropped on
rollback, so a failed request never leaves a job behind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rq import Queue
from sqlalchemy import event
from sqlalchemy.orm import Session

_PENDING = "kaiden.pending_jobs"


def enqueue_after_commit(session: Session, queue: Queue, func: Callable[..., Any], *args: Any, **options: Any) -> None:
    """`queue.enqueue(func, *args, **options)` right after `session` commits (nothing on rollback)."""
    pending = session.info.get(_PENDING)
    if pending is None:
        pending = session.info[_PENDING] = []
        event.listen(session, "after_commit", _send_pending)
        event.listen(session, "after_rollback", _drop_pending)
    pending.append((queue, func, args, options))


def _send_pending(session: Session) -> None:
    pending = session.info.get(_PENDING) or []
    while pending:
        queue, func, args, options = pending.pop(0)
        queue.enqueue(func, *args, **options)


def _drop_pending(session: Session) -> None:
    (session.info.get(_PENDING) or []).clear()

"""Operations (background jobs' records): read one, scoped through its target; create one for a job.

A customer user sees an operation when it belongs to their customer and they can read its target
(for Cloud Services: a workspace membership), or when they requested it themselves.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.auth import policy
from portal.auth.policy import WorkspaceAction
from portal.errors import NotFound
from portal.models import Backup, CloudService, Operation, TargetType, User
from portal.tenancy import Actor, get_scoped, new_operation, sees_all_tenants


def create_operation(session: Session, kind: str, target: object | None, requested_by: Actor | None) -> Operation:
    """A queued operation of `kind` on `target` (None: a platform operation), flushed so it has an id.

    Enqueuing the job that runs it is the caller's next step (jobs take the operation id).
    """
    return new_operation(session, kind, target, requested_by)


def get_operation(session: Session, actor: User, operation_id: uuid.UUID | str) -> Operation:
    """An operation `actor` may see; foreign, unreadable or missing is `NotFound`."""
    operation = get_scoped(session, Operation, operation_id, actor)
    if sees_all_tenants(actor) or operation.requested_by_id == actor.id:
        return operation
    gated, workspace_id = _workspace_of_target(session, operation)
    if not gated:
        return operation  # clusters, nodes, tickets, sessions: every user of the customer reads them
    if workspace_id is None:
        raise NotFound("Operation not found.")  # its target is gone; only staff and the requester see it
    try:
        policy.workspace_for(session, actor, workspace_id, WorkspaceAction.READ)
    except NotFound:
        raise NotFound("Operation not found.") from None
    return operation


def _workspace_of_target(session: Session, operation: Operation) -> tuple[bool, uuid.UUID | None]:
    """(whether a workspace membership gates reading this operation, that workspace's id or None if gone)."""
    target_id = operation.target_id
    match TargetType(operation.target_type):
        case TargetType.workspace:
            return True, target_id
        case TargetType.service:
            stmt = select(CloudService.workspace_id).where(CloudService.id == target_id)
        case TargetType.backup:
            stmt = (
                select(CloudService.workspace_id)
                .join(Backup, Backup.service_id == CloudService.id)
                .where(Backup.id == target_id)
            )
        case _:
            return False, None
    return True, session.scalar(stmt)

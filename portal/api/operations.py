"""REST v1: background operations — poll one by id (`202` answers point here)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import Field
from sqlalchemy.orm import Session

from portal.api.framework import ResponseModel, Router
from portal.models import Operation, OperationState, TargetType, User
from portal.services import operations as service

router = Router("operations", tags=["Operations"])


class OperationOut(ResponseModel):
    """A background job's record; also the body of every `202 {"operation": ...}` answer."""

    id: uuid.UUID
    kind: str = Field(description="What runs, e.g. `service.deploy`, `session.start`.")
    target_type: TargetType
    target_id: uuid.UUID | None
    state: OperationState
    progress: int = Field(ge=0, le=100)
    step: str | None
    params: dict[str, Any] = Field(description="The inputs, secrets redacted.")
    result: dict[str, Any] | None
    error: str | None
    requested_by_id: uuid.UUID | None
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    version: int


@router.get("/operations/<uuid:operation_id>", response=OperationOut, summary="Get an operation")
def get_operation(session: Session, actor: User, operation_id: uuid.UUID) -> Operation:
    """Staff see every operation; a customer user sees those on objects they can read, or that they requested."""
    return service.get_operation(session, actor, operation_id)


class OperationLogOut(ResponseModel):
    """The operation's own log (e.g. the Ansible task events of an onboarding), redacted when written."""

    operation_id: uuid.UUID
    state: OperationState
    log: str


@router.get("/operations/<uuid:operation_id>/log", response=OperationLogOut, summary="Get an operation's log")
def get_operation_log(session: Session, actor: User, operation_id: uuid.UUID) -> OperationLogOut:
    """Same visibility as the operation; the log is kept out of `GET /operations/{id}` to keep polls small."""
    operation = service.get_operation(session, actor, operation_id)
    return OperationLogOut(operation_id=operation.id, state=operation.state, log=operation.log or "")

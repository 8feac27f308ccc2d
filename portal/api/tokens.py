"""REST v1: my personal API tokens — created once (the token is in that answer only), listed by prefix, revoked."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field
from sqlalchemy.orm import Session

from portal.api.framework import PageQuery, RequestModel, ResponseModel, Router
from portal.models import User
from portal.services import identity

router = Router("tokens", tags=["Me"])


class TokenCreate(RequestModel):
    name: str = Field(min_length=1, max_length=100, description="What the token is for, e.g. `ci`.")
    expires_in_days: int | None = Field(None, ge=1, le=3650, description="Omit for a token that never expires.")


class TokenOut(ResponseModel):
    id: uuid.UUID
    name: str
    token_prefix: str = Field(description="The first characters of the token, to recognise it.")
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="The bearer token. Shown only in this answer: store it now.")


@router.get("/me/tokens", query=PageQuery, response=TokenOut, paginated=True, summary="List my API tokens")
def list_tokens(actor: User, query: PageQuery):
    """Active (not revoked) tokens, newest first; the secret part is never shown again."""
    return identity.own_tokens(actor)


@router.post("/me/tokens", body=TokenCreate, response=TokenCreated, summary="Create an API token", errors=(409,))
def create_token(session: Session, actor: User, body: TokenCreate) -> TokenCreated:
    """Returns the token once; send it as `Authorization: Bearer <token>`."""
    token, secret = identity.create_token(session, actor, name=body.name, expires_in_days=body.expires_in_days)
    return TokenCreated.model_validate({**TokenOut.model_validate(token).model_dump(), "token": secret})


@router.delete("/me/tokens/<uuid:token_id>", status=204, summary="Revoke an API token")
def revoke_token(session: Session, actor: User, token_id: uuid.UUID) -> None:
    identity.revoke_token(session, actor, token_id)

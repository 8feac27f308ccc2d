"""REST v1: customers (tenants). Staff read all, customer users read their own, admins write."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field
from sqlalchemy import func
from sqlalchemy.orm import Session

from portal.api.framework import PageQuery, RequestModel, ResponseModel, Router, expected_version
from portal.auth import policy
from portal.models import Customer, User
from portal.services import identity
from portal.tenancy import scoped

router = Router("customers", tags=["Customers"])


class CustomerCreate(RequestModel):
    name: str = Field(min_length=1, max_length=255)


class CustomerUpdate(RequestModel):
    name: str = Field(None, min_length=1, max_length=255)
    is_active: bool = Field(None, description="Inactive customers' users cannot sign in or use tokens.")
    version: int | None = Field(None, ge=1, description="The version you last read (optimistic locking).")


class CustomerFilter(PageQuery):
    search: str | None = Field(None, max_length=255, description="Case-insensitive substring of the name.")
    is_active: bool | None = None


class CustomerOut(ResponseModel):
    id: uuid.UUID
    name: str
    is_active: bool
    created_at: datetime
    updated_at: datetime
    version: int


@router.get("/customers", query=CustomerFilter, response=CustomerOut, paginated=True, summary="List customers")
def list_customers(session: Session, actor: User, query: CustomerFilter):
    """Staff see every customer; a customer user sees only their own."""
    stmt = scoped(Customer, actor)
    if query.search:
        stmt = stmt.where(func.lower(Customer.name).contains(query.search.lower(), autoescape=True))
    if query.is_active is not None:
        stmt = stmt.where(Customer.is_active.is_(query.is_active))
    return stmt.order_by(Customer.name, Customer.id)


@router.post("/customers", body=CustomerCreate, response=CustomerOut, summary="Create a customer", errors=(409,))
def create_customer(session: Session, actor: User, body: CustomerCreate) -> Customer:
    """Admins only. Names are unique (case-insensitive)."""
    return identity.create_customer(session, actor, name=body.name)


@router.get("/customers/<uuid:customer_id>", response=CustomerOut, summary="Get a customer")
def get_customer(session: Session, actor: User, customer_id: uuid.UUID) -> Customer:
    return policy.visible_customer(session, actor, customer_id)


@router.patch("/customers/<uuid:customer_id>", body=CustomerUpdate, response=CustomerOut, summary="Update a customer")
def update_customer(session: Session, actor: User, customer_id: uuid.UUID, body: CustomerUpdate) -> Customer:
    """Admins only. Send `version` (or If-Match) to avoid overwriting someone else's change."""
    customer = policy.visible_customer(session, actor, customer_id)
    changes = body.model_dump(exclude_unset=True, exclude={"version"})
    return identity.update_customer(session, actor, customer, changes, version=expected_version(body.version))


@router.delete("/customers/<uuid:customer_id>", status=204, summary="Delete an empty customer")
def delete_customer(session: Session, actor: User, customer_id: uuid.UUID) -> None:
    """Admins only; 409 while the customer still owns workspaces, clusters or tickets."""
    customer = policy.visible_customer(session, actor, customer_id)
    identity.delete_customer(session, actor, customer, version=expected_version())

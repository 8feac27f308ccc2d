"""Demo data for the embedded default: a customer, its workspace, an engineer and a customer user."""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.auth.passwords import hash_password
from portal.models import Customer, User, UserRole, Workspace, WorkspaceMember, WorkspaceRole

DEMO_CUSTOMER = "Acme Corp"
DEMO_WORKSPACE = ("Acme Apps", "acme-apps")
DEMO_ENGINEER = ("engineer@kaiden.example", "Erin Engineer")
DEMO_CUSTOMER_USER = ("alice@acme.example", "Alice Acme")


def seed_demo(session: Session) -> list[str]:
    """Create the demo records once; returns lines to show (passwords of new users, shown only now)."""
    if session.scalar(select(Customer).where(Customer.name == DEMO_CUSTOMER)) is not None:
        return ["demo data already present"]
    lines: list[str] = []
    customer = Customer(name=DEMO_CUSTOMER)
    session.add(customer)
    session.flush()
    name, slug = DEMO_WORKSPACE
    workspace = Workspace(customer_id=customer.id, name=name, slug=slug, description="Demo workspace")
    session.add(workspace)

    def new_user(email: str, full_name: str, role: UserRole, customer_id=None) -> User:
        password = secrets.token_urlsafe(12)
        user = User(
            email=email, name=full_name, role=role, customer_id=customer_id, password_hash=hash_password(password)
        )
        session.add(user)
        lines.append(f"  {role.value:<9} {email:<28} password: {password}")
        return user

    new_user(*DEMO_ENGINEER, UserRole.engineer)
    alice = new_user(*DEMO_CUSTOMER_USER, UserRole.customer, customer.id)
    session.flush()
    session.add(WorkspaceMember(workspace_id=workspace.id, user_id=alice.id, role=WorkspaceRole.owner))
    session.flush()
    return [f"demo data: customer {DEMO_CUSTOMER!r}, workspace {slug!r}; users (passwords shown once):", *lines]

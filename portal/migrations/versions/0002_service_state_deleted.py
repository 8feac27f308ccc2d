"""Services: the `deleted` state (a deleted service keeps its row, revisions and activity).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 15:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONSTRAINT = "ck_cloud_services_service_state"
OLD = ("pending", "deploying", "running", "error", "upgrading", "deleting")
NEW = (*OLD, "deleted")


def _check(states: tuple[str, ...]) -> str:
    return "state IN (" + ", ".join(f"'{state}'" for state in states) + ")"


def upgrade() -> None:
    with op.batch_alter_table("cloud_services") as batch:
        batch.drop_constraint(op.f(CONSTRAINT), type_="check")
        batch.create_check_constraint(op.f(CONSTRAINT), _check(NEW))


def downgrade() -> None:
    op.execute("UPDATE cloud_services SET state = 'error' WHERE state = 'deleted'")
    with op.batch_alter_table("cloud_services") as batch:
        batch.drop_constraint(op.f(CONSTRAINT), type_="check")
        batch.create_check_constraint(op.f(CONSTRAINT), _check(OLD))

"""The `kaiden` command as an operator uses it: migrations, admin creation, catalog and demo data."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from flask.cli import ScriptInfo
from sqlalchemy import inspect, select

from portal import create_app, database_of
from portal.cli import main
from portal.models import Customer, User, UserRole
from portal.settings import load_settings

pytestmark = pytest.mark.integration


@pytest.fixture()
def fresh_app(tmp_path: Path):
    """An app on its own empty SQLite database, so migrations start from nothing."""
    settings = load_settings({"home": str(tmp_path / "home"), "testing": True}, environ={})
    app = create_app(settings)
    yield app
    database_of(app).dispose()


def _invoke(app, *args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), obj=ScriptInfo(create_app=lambda: app), input=input)


def test_db_upgrade_current_downgrade(fresh_app) -> None:
    engine = database_of(fresh_app).engine
    assert _invoke(fresh_app, "db", "current").output.strip() == "base"
    result = _invoke(fresh_app, "db", "upgrade")
    assert result.exit_code == 0, result.output
    assert {"users", "tickets", "cloud_services", "operations"} <= set(inspect(engine).get_table_names())
    assert _invoke(fresh_app, "db", "current").output.strip() != "base"
    result = _invoke(fresh_app, "db", "downgrade")
    assert result.exit_code == 0, result.output
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}


def test_create_admin_then_refuses_duplicate_and_bad_input(fresh_app) -> None:
    assert _invoke(fresh_app, "db", "upgrade").exit_code == 0
    ok = _invoke(fresh_app, "users", "create-admin", "--email", "Root@Example.com", "--password", "a-long-password-1")
    assert ok.exit_code == 0, ok.output
    assert "root@example.com" in ok.output
    assert "a-long-password-1" not in ok.output
    again = _invoke(fresh_app, "users", "create-admin", "--email", "root@example.com", "--password", "another-pass-22")
    assert again.exit_code != 0
    assert "email" in again.output
    bad = _invoke(fresh_app, "users", "create-admin", "--email", "not-an-email", "--password", "a-long-password-1")
    assert bad.exit_code != 0
    assert "email" in bad.output
    with database_of(fresh_app).session() as session:
        admins = session.scalars(select(User).where(User.role == UserRole.admin)).all()
        assert [a.email for a in admins] == ["root@example.com"]
        assert admins[0].password_hash and "a-long-password-1" not in admins[0].password_hash


def test_catalog_load_and_demo_seed_are_idempotent(fresh_app) -> None:
    assert _invoke(fresh_app, "db", "upgrade").exit_code == 0
    first = _invoke(fresh_app, "catalog", "load")
    assert first.exit_code == 0 and " created" in first.output
    second = _invoke(fresh_app, "catalog", "load")
    assert "0 created, 0 updated" in second.output
    seeded = _invoke(fresh_app, "demo", "seed")
    assert seeded.exit_code == 0 and "password:" in seeded.output
    assert "already present" in _invoke(fresh_app, "demo", "seed").output
    with database_of(fresh_app).session() as session:
        assert session.scalars(select(Customer.name)).all() == ["Acme Corp"]
        roles = sorted(u.role.value for u in session.scalars(select(User)))
        assert roles == ["customer", "engineer"]

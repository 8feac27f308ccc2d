"""Migrations: upgrade from empty and downgrade to base on SQLite and PostgreSQL, matching the models exactly.

`compare_metadata` finding no difference is what keeps the `create_all` schema of the other tests
honest; CHECK constraints (which Alembic does not compare) are compared by name here.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

import portal.models  # noqa: F401  (registers every table)
from portal import migrations
from portal.db import Base
from portal.settings import Settings, load_settings

pytestmark = pytest.mark.integration

PG_URL = os.environ.get("KAIDEN_TEST_DATABASE_URL", "")
BACKENDS = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(not PG_URL.startswith("postgresql"), reason="KAIDEN_TEST_DATABASE_URL not set"),
    ),
]


@pytest.fixture(params=BACKENDS)
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A brand-new empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.db'}"
        return
    name = f"kaiden_mig_{uuid.uuid4().hex[:10]}"
    admin = create_engine(make_url(PG_URL).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _settings(url: str, tmp_path: Path) -> Settings:
    return load_settings({"home": str(tmp_path / "home"), "database_url": url, "secret_key": "x"}, environ={})


def _check_constraints(url: str) -> dict[str, set[str]]:
    engine = create_engine(url)
    try:
        inspector = inspect(engine)
        return {
            table: {c["name"] for c in inspector.get_check_constraints(table)}
            for table in inspector.get_table_names()
            if table != "alembic_version"
        }
    finally:
        engine.dispose()


def test_upgrade_matches_the_models_and_downgrade_empties(empty_database: str, tmp_path: Path) -> None:
    settings = _settings(empty_database, tmp_path)
    assert migrations.current(settings) is None

    migrations.upgrade(settings)
    assert migrations.current(settings) == migrations.head() == "0002"

    engine = create_engine(empty_database)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == []
        assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    finally:
        engine.dispose()

    expected_checks = {
        table.name: {c.name for c in table.constraints if c.__class__.__name__ == "CheckConstraint"}
        for table in Base.metadata.sorted_tables
    }
    assert _check_constraints(empty_database) == expected_checks

    migrations.downgrade(settings)
    assert migrations.current(settings) is None
    engine = create_engine(empty_database)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()

    migrations.upgrade(settings)  # and back again: the round trip is repeatable
    assert migrations.current(settings) == "0002"


def test_migrated_schema_works_with_the_models(empty_database: str, tmp_path: Path) -> None:
    from portal.crypto import install_encryption
    from portal.db import Database
    from portal.models import Ticket, allocate_ticket_number, utcnow
    from portal.tenancy import get_scoped
    from tests import factories as f

    settings = _settings(empty_database, tmp_path)
    migrations.upgrade(settings)
    database = Database(empty_database)
    install_encryption(database.engine, settings.encryption_key)
    try:
        with database.session() as session:
            ticket = f.make_ticket(session, cluster=f.make_cluster(session))
            f.make_session(session, ticket)
            f.make_service(session, values={"auth.postgresPassword": "pw"})
            number = allocate_ticket_number(session, utcnow())
        with database.session() as session:
            customer_user = f.make_user(session, customer=ticket.customer)
            assert get_scoped(session, Ticket, ticket.id, customer_user).sessions[0].node is not None
        assert number.endswith("-002")
    finally:
        database.dispose()
    migrations.downgrade(settings)
    assert migrations.current(settings) is None


def test_0002_allows_the_deleted_service_state(empty_database: str, tmp_path: Path) -> None:
    settings = _settings(empty_database, tmp_path)
    migrations.upgrade(settings)
    engine = create_engine(empty_database)
    try:
        checks = {c["name"]: c["sqltext"] for c in inspect(engine).get_check_constraints("cloud_services")}
        assert "'deleted'" in checks["ck_cloud_services_service_state"]
    finally:
        engine.dispose()
    migrations.downgrade(settings, "0001")
    engine = create_engine(empty_database)
    try:
        checks = {c["name"]: c["sqltext"] for c in inspect(engine).get_check_constraints("cloud_services")}
        assert "'deleted'" not in checks["ck_cloud_services_service_state"]
    finally:
        engine.dispose()

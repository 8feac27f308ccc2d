"""Alembic migrations, configured in code from `Settings` (no alembic.ini): upgrade, downgrade, current.

`kaiden db upgrade|downgrade|current` call these; `make_revision()` autogenerates a new revision
file against a database at head (for developers).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from portal.settings import Settings

HERE = Path(__file__).resolve().parent


def alembic_config(database_url: str) -> Config:
    """An Alembic `Config` pointing at this package's scripts and the given database."""
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("path_separator", "os")
    # `%` would be taken as interpolation by the ini parser underneath.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["database_url"] = database_url
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Migrate the settings' database up to `revision` (creates the schema on an empty database)."""
    command.upgrade(alembic_config(settings.database_url), revision)


def downgrade(settings: Settings, revision: str = "base") -> None:
    """Migrate the settings' database down to `revision` (`base` drops every table)."""
    command.downgrade(alembic_config(settings.database_url), revision)


def current(settings: Settings) -> str | None:
    """The revision the database is at, or None for an empty (unmigrated) database."""
    engine = create_engine(settings.database_url)
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head() -> str | None:
    """The newest revision in `versions/`."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def make_revision(settings: Settings, message: str) -> None:
    """Autogenerate a revision from the difference between the models and the (migrated) database."""
    command.revision(alembic_config(settings.database_url), message=message, autogenerate=True)

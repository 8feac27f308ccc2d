"""Kaiden portal: the Flask application factory. Nothing connects or reads the environment on import."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from flask import Flask

from portal.db import Database
from portal.settings import Settings, load_settings


def create_app(config: Settings | Mapping[str, object] | None = None) -> Flask:
    """Build the portal app. `config` is a `Settings`, a mapping of setting overrides, or None (environment)."""
    settings = config if isinstance(config, Settings) else load_settings(config)
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.config.update(
        SECRET_KEY=settings.secret_key,
        TESTING=settings.testing,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=2 * 1024 * 1024,
        JSON_SORT_KEYS=False,
    )
    app.extensions["kaiden.settings"] = settings
    app.extensions["kaiden.db"] = Database(settings.database_url, settings.encryption_key)
    logging.getLogger("kaiden").setLevel(settings.log_level.upper())

    from portal import web

    web.init_app(app)
    return app


def settings_of(app: Flask) -> Settings:
    return app.extensions["kaiden.settings"]


def database_of(app: Flask) -> Database:
    return app.extensions["kaiden.db"]


def redis_of(app: Flask):
    """The app's Redis connection (created on first use: the embedded one starts only when needed)."""
    connection = app.extensions.get("kaiden.redis")
    if connection is None:
        from portal.queue import connect

        connection = app.extensions["kaiden.redis"] = connect(settings_of(app))
    return connection

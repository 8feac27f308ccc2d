"""First-run setup for `kaiden up`: schema, an administrator, the catalog and the demo data."""

from __future__ import annotations

import secrets

from flask import Flask
from sqlalchemy import select

from portal import database_of, migrations, settings_of
from portal.catalog import default_catalog_dir, load_catalog
from portal.models import User, UserRole

ADMIN_EMAIL = "admin@kaiden.example"


def initialize(app: Flask) -> list[str]:
    """Bring the data dir up to date. Idempotent; returns lines for the console (secrets only once)."""
    settings = settings_of(app)
    lines = [f"data directory: {settings.home}"]
    migrations.upgrade(settings)
    lines.append(f"schema at revision {migrations.current(settings)}")
    with database_of(app).session() as session:
        has_admin = session.scalar(select(User.id).where(User.role == UserRole.admin).limit(1)) is not None
        if not has_admin:
            from portal.services.identity import create_admin

            password = secrets.token_urlsafe(12)
            create_admin(session, email=ADMIN_EMAIL, name="Administrator", password=password)
            lines.append(f"administrator: {ADMIN_EMAIL}  password: {password}  (shown once — change it)")
        catalog = load_catalog(session, default_catalog_dir())
        lines.append(catalog.summary())
        if settings.demo_data:
            from portal.demo import seed_demo

            lines.extend(seed_demo(session))
    return lines

"""Wires blueprints, error handlers and request-scoped resources into the Flask app."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register every blueprint. Each package below exposes `init_app(app)`."""
    from portal import api, pages

    api.init_app(app)
    pages.init_app(app)

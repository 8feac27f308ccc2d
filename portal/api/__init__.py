"""REST API v1 (placeholder until the API package lands)."""

from flask import Flask


def init_app(app: Flask) -> None:
    return None

"""Server-rendered pages (placeholder until the pages package land)."""

from flask import Flask


def init_app(app: Flask) -> None:
    return None

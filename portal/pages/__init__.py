"""Server-rendered pages: every module here that defines a `blueprint` is registered at startup.

`portal.pages.core` holds login, logout, the dashboard and the API docs page.
"""

from __future__ import annotations

import importlib
import pkgutil

from flask import Blueprint, Flask


def init_app(app: Flask) -> None:
    """Register the blueprint of every page module (module-name order; import errors propagate)."""
    from portal.auth import current_user

    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        blueprint = getattr(module, "blueprint", None)
        if isinstance(blueprint, Blueprint):
            app.register_blueprint(blueprint)

    @app.context_processor
    def _inject_user() -> dict:
        return {"current_user": current_user()}

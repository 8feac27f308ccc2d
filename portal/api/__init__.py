"""REST API v1: discovers every `router` in `portal/api/*.py` and mounts it under /api/v1.

The route table (`routes(app)`) is what the OpenAPI document, the docs page and the access-matrix
test enumerate. To add endpoints, add a module here; see `docs/api.md`.
"""

from __future__ import annotations

import importlib
import pkgutil

from flask import Blueprint, Flask

from portal.api.framework import Route, Router, make_view

_NOT_ROUTERS = {"framework", "events"}
_ROUTES_KEY = "kaiden.api_routes"


def discover_routers() -> list[Router]:
    """Every module-level `router` in this package, in module-name order (import errors propagate)."""
    found: list[Router] = []
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_") or module_info.name in _NOT_ROUTERS:
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        router = getattr(module, "router", None)
        if isinstance(router, Router):
            found.append(router)
    return found


def init_app(app: Flask) -> None:
    """Mount every discovered route on the `api` blueprint and record the route table on the app."""
    app.extensions[_ROUTES_KEY] = mount(app, discover_routers(), "api")
    from portal.api import events

    events.init_app(app)  # the SSE progress stream: a plain view, not in the JSON route table


def mount(app: Flask, routers: list[Router], blueprint_name: str) -> list[Route]:
    """Register `routers` on a new blueprint of `app` (tests mount toy routers this way)."""
    from portal.auth import csrf

    blueprint = Blueprint(blueprint_name, __name__)
    table: list[Route] = []
    seen: set[tuple[str, str]] = set()
    for router in routers:
        for route in router.routes:
            key = (route.method, route.path)
            if key in seen:
                raise RuntimeError(f"two routes declare {route.method} {route.path}")
            seen.add(key)
            blueprint.add_url_rule(
                route.rule, endpoint=route.endpoint, view_func=make_view(route), methods=[route.method]
            )
            table.append(route)
    csrf.exempt(blueprint)  # API writes: bearer tokens need no CSRF; cookie sessions send X-CSRFToken (framework)
    app.register_blueprint(blueprint)
    return table


def routes(app: Flask) -> list[Route]:
    """The route table of `app`: one `Route` per (method, path)."""
    return list(app.extensions[_ROUTES_KEY])

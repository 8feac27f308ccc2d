"""The OpenAPI 3.1 document, generated from the route table and the same pydantic models that validate."""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from portal.api.framework import PUBLIC, Auth, ErrorBody, Route, Router

router = Router("openapi", tags=["Meta"])

_DOC_KEY = "kaiden.openapi"
_REF = "#/components/schemas/{model}"

_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    202: "Accepted: the work runs in the background; poll the operation",
    204: "No content",
    400: "Malformed request (not JSON, bad If-Match, missing CSRF header)",
    401: "Not signed in / no valid API token",
    403: "Signed in but not allowed",
    404: "Not found (or not visible to you)",
    409: "Conflict: stale version, duplicate, or a rule forbids it",
    422: "Validation failed: see error.fields",
}

_PATH_SCHEMAS = {
    "int": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
    "uuid": {"type": "string", "format": "uuid"},
    "string": {"type": "string", "minLength": 1, "pattern": "^[^/]+$"},
}


@router.get("/openapi.json", auth=PUBLIC, summary="This OpenAPI 3.1 document")
def openapi_json() -> dict[str, Any]:
    """The machine-readable description of every implemented endpoint."""
    return openapi_document(current_app)


def openapi_document(app: Flask) -> dict[str, Any]:
    """The document for `app`, built once and cached."""
    document = app.extensions.get(_DOC_KEY)
    if document is None:
        document = build_document(app)
        app.extensions[_DOC_KEY] = document
    return document


def build_document(app: Flask) -> dict[str, Any]:
    from portal import settings_of
    from portal.api import routes

    table = routes(app)
    page_max = settings_of(app).api_page_size_max

    wanted: list[tuple[type[BaseModel], str]] = [(ErrorBody, "serialization")]
    for route in table:
        if route.body is not None:
            wanted.append((route.body, "validation"))
        if route.query is not None:
            wanted.append((route.query, "validation"))
        if route.response is not None:
            wanted.append((route.response, "serialization"))
    unique = list(dict.fromkeys(wanted))
    refs, generated = models_json_schema(unique, ref_template=_REF)  # type: ignore[arg-type]
    schemas: dict[str, Any] = dict(generated.get("$defs", {}))

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return dict(refs[(model, mode)])  # type: ignore[index]

    query_only = (
        {_name(ref(r.query, "validation")) for r in table if r.query is not None}
        - {_name(ref(r.body, "validation")) for r in table if r.body is not None}
        - {_name(ref(r.response, "serialization")) for r in table if r.response is not None}
    )

    paths: dict[str, dict[str, Any]] = {}
    for route in table:
        operation = _operation(route, ref, schemas, page_max)
        paths.setdefault(route.path, {})[route.method.lower()] = operation

    for name in query_only:
        schemas.pop(name, None)

    tags = sorted({tag for route in table for tag in route.tags})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Kaiden API",
            "version": "1",
            "description": (
                "REST API v1 of the Kaiden portal. Authenticate with a personal API token "
                "(`Authorization: Bearer kdn_...`) or, from the browser, the session cookie plus an "
                '`X-CSRFToken` header on writes. Errors are `{"error": {"code", "message", "fields"}}`; '
                "lists are paginated with `?page=&per_page=`. See docs/api.md."
            ),
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": tag} for tag in tags],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A personal API token `kdn_...` (create one at POST /api/v1/me/tokens).",
                },
                "cookieAuth": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": app.config.get("SESSION_COOKIE_NAME", "session"),
                    "description": "The browser session; writes must also send the `X-CSRFToken` header.",
                },
            },
        },
        "security": [{"bearerAuth": []}, {"cookieAuth": []}],
    }


def _name(reference: dict[str, Any]) -> str:
    return reference["$ref"].rsplit("/", 1)[-1]


def _operation(route: Route, ref: Any, schemas: dict[str, Any], page_max: int) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": route.tags,
    }
    if route.description and route.description != route.summary:
        operation["description"] = route.description
    if route.auth is Auth.PUBLIC:
        operation["security"] = []
    else:
        operation["x-kaiden-auth"] = route.auth.value

    parameters: list[dict[str, Any]] = []
    for name, converter in route.path_params.items():
        parameters.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": dict(_PATH_SCHEMAS.get(converter, _PATH_SCHEMAS["string"])),
            }
        )
    if route.query is not None:
        query_schema = schemas[_name(ref(route.query, "validation"))]
        required = set(query_schema.get("required", []))
        for name, prop in query_schema.get("properties", {}).items():
            prop = dict(prop)
            if name == "per_page":
                prop["maximum"] = page_max
                prop["default"] = min(prop.get("default", 50), page_max)
            parameter: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
            if prop.get("description"):
                parameter["description"] = prop["description"]
            if _is_array(prop):
                parameter["style"] = "form"
                parameter["explode"] = False
            parameters.append(parameter)
    if parameters:
        operation["parameters"] = parameters

    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref(route.body, "validation")}},
        }

    responses: dict[str, Any] = {}
    success: dict[str, Any] = {"description": _STATUS_TEXT.get(route.status, "OK")}
    if route.status != 204:
        success["content"] = {"application/json": {"schema": _success_schema(route, ref, schemas)}}
    responses[str(route.status)] = success
    for status in route.error_statuses():
        responses[str(status)] = {
            "description": _STATUS_TEXT.get(status, "Error"),
            "content": {"application/json": {"schema": {"$ref": _REF.format(model="ErrorBody")}}},
        }
    operation["responses"] = responses
    return operation


def _is_array(schema: dict[str, Any]) -> bool:
    if schema.get("type") == "array":
        return True
    return any(option.get("type") == "array" for option in schema.get("anyOf", []))


def _success_schema(route: Route, ref: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    if route.response is None:
        return {"type": "object"}
    item = ref(route.response, "serialization")
    if route.paginated:
        name = f"{_name(item)}Page"
        schemas[name] = {
            "type": "object",
            "title": name,
            "required": ["items", "page", "per_page", "total"],
            "properties": {
                "items": {"type": "array", "items": item},
                "page": {"type": "integer", "minimum": 1},
                "per_page": {"type": "integer", "minimum": 1},
                "total": {"type": "integer", "minimum": 0},
            },
        }
        return {"$ref": _REF.format(model=name)}
    if route.status == 202 and "operation" in route.response.model_fields:
        return item  # the response model is the envelope itself
    if route.status == 202:
        name = f"{_name(item)}Accepted"
        schemas[name] = {
            "type": "object",
            "title": name,
            "required": ["operation"],
            "properties": {"operation": item},
        }
        return {"$ref": _REF.format(model=name)}
    return item

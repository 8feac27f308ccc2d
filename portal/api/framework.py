"""The REST v1 route layer: one declaration gives authentication, validation, serialization and OpenAPI.

Read `docs/api.md` first. A module in `portal/api/` defines `router = Router("name", tags=[...])`
and decorates plain functions; `portal.api.init_app` discovers every such router.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

from flask import Response, current_app, g, jsonify, request
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import Select, func, select

from portal.errors import BadRequest, PermissionDenied, Unauthorized, ValidationError

T = TypeVar("T")

API_PREFIX = "/api/v1"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
_HANDLER_EXTRAS = {"body", "query", "actor", "session"}


class Auth(StrEnum):
    """Who may call a route at all. Object-level rules live in `portal.auth.policy`."""

    PUBLIC = "public"  # opt-out: no login needed
    USER = "user"  # default: any signed-in user (token or session)
    STAFF = "staff"  # admin or engineer
    ADMIN = "admin"  # platform administrators only


PUBLIC, USER, STAFF, ADMIN = Auth.PUBLIC, Auth.USER, Auth.STAFF, Auth.ADMIN


# ---------------------------------------------------------------- schema base classes


class RequestModel(BaseModel):
    """Base of request bodies and query models: an allow-list (unknown fields are 422)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ResponseModel(BaseModel):
    """Base of response bodies: built from ORM objects, dicts or dataclasses by attribute."""

    model_config = ConfigDict(from_attributes=True)


class PageQuery(RequestModel):
    """Query parameters of every list route; subclass it to add filters."""

    page: int = Field(1, ge=1, le=1_000_000, description="1-based page number.")
    per_page: int = Field(50, ge=1, le=10_000, description="Items per page (at most `api_page_size_max`).")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list: what a paginated handler may return (or a `Select`, or a list)."""

    items: Sequence[T]
    page: int
    per_page: int
    total: int


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable error code, e.g. `validation_error`.")
    message: str = Field(description="Human-readable, safe to show.")
    fields: dict[str, str] = Field(description="Field path → message, for validation errors.")


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer of the API."""

    error: ErrorDetail


# ---------------------------------------------------------------- routes and routers


_RULE_PARAM = re.compile(r"<(?:(?P<conv>[a-zA-Z_]\w*)(?:\((?P<args>[^)]*)\))?:)?(?P<name>[a-zA-Z_]\w*)>")


@dataclass
class Route:
    """One operation (method + path). The route table is a list of these (see `routes(app)`)."""

    router: str
    method: str
    rule: str  # Flask rule, absolute: /api/v1/workspaces/<int:workspace_id>
    handler: Callable[..., Any]
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    auth: Auth = Auth.USER
    summary: str = ""
    description: str = ""
    tags: list[str] = field(default_factory=list)
    paginated: bool = False
    errors: tuple[int, ...] = ()
    parameters: set[str] = field(default_factory=set)

    @property
    def endpoint(self) -> str:
        return f"{self.router}_{self.handler.__name__}"

    @property
    def operation_id(self) -> str:
        return self.endpoint

    @property
    def path(self) -> str:
        """The OpenAPI path: /api/v1/workspaces/{workspace_id}."""
        return _RULE_PARAM.sub(lambda m: "{" + m.group("name") + "}", self.rule)

    @property
    def path_params(self) -> dict[str, str]:
        """Path parameter name → Flask converter (`int`, `uuid`, `string`, ...)."""
        return {m.group("name"): m.group("conv") or "string" for m in _RULE_PARAM.finditer(self.rule)}

    def error_statuses(self) -> list[int]:
        """Every error status this operation can answer with (documented in OpenAPI)."""
        statuses = set(self.errors)
        if self.auth is not Auth.PUBLIC:
            statuses |= {401, 403}
        if self.path_params:
            statuses.add(404)
        if self.body is not None:
            statuses |= {400, 422}
        if self.query is not None:
            statuses.add(422)
        if self.method in _WRITE_METHODS and self.auth is not Auth.PUBLIC:
            statuses |= {400, 409}  # 400: missing CSRF header on cookie-authenticated writes
        return sorted(statuses)


class Router:
    """A group of routes from one module; `name` prefixes endpoint names, `tags` group the docs."""

    def __init__(self, name: str, *, tags: Sequence[str] = ()) -> None:
        self.name = name
        self.tags = list(tags)
        self.routes: list[Route] = []

    def route(
        self,
        rule: str,
        *,
        methods: Sequence[str],
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int | None = None,
        auth: Auth = Auth.USER,
        summary: str = "",
        description: str = "",
        tags: Sequence[str] | None = None,
        paginated: bool = False,
        errors: Sequence[int] = (),
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Declare one operation. `rule` is relative to /api/v1 and uses Flask converters."""
        if len(methods) != 1 or methods[0].upper() not in METHODS:
            raise ValueError(f"{rule}: declare exactly one method per route, one of {METHODS}")
        method = methods[0].upper()
        if status is None:
            status = 201 if method == "POST" else 200
        if paginated and (query is None or not issubclass(query, PageQuery)):
            raise TypeError(f"{rule}: a paginated route needs query= a subclass of PageQuery")
        if paginated and response is None:
            raise TypeError(f"{rule}: a paginated route needs response= the item model")
        if status == 202 and response is None:
            raise TypeError(f"{rule}: a 202 route needs response= the operation model")
        if body is not None and method == "GET":
            raise TypeError(f"{rule}: GET routes take no body; use query=")

        def decorator(handler: Callable[..., Any]) -> Callable[..., Any]:
            route = Route(
                router=self.name,
                method=method,
                rule=API_PREFIX + rule,
                handler=handler,
                body=body,
                query=query,
                response=response,
                status=status,
                auth=Auth(auth),
                summary=summary or _first_line(handler.__doc__),
                description=description or inspect.cleandoc(handler.__doc__ or ""),
                tags=list(tags if tags is not None else self.tags),
                paginated=paginated,
                errors=tuple(errors),
            )
            route.parameters = _check_signature(route)
            self.routes.append(route)
            return handler

        return decorator

    def get(self, rule: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self.route(rule, methods=["GET"], **options)

    def post(self, rule: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self.route(rule, methods=["POST"], **options)

    def put(self, rule: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self.route(rule, methods=["PUT"], **options)

    def patch(self, rule: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self.route(rule, methods=["PATCH"], **options)

    def delete(self, rule: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self.route(rule, methods=["DELETE"], **options)


def _first_line(doc: str | None) -> str:
    return inspect.cleandoc(doc or "").split("\n", 1)[0].strip()


def _check_signature(route: Route) -> set[str]:
    """Handlers take path parameters by name plus any of body, query, actor, session — nothing else."""
    names = set(inspect.signature(route.handler).parameters)
    allowed = set(route.path_params) | _HANDLER_EXTRAS
    unknown = names - allowed
    if unknown:
        raise TypeError(f"{route.rule}: handler {route.handler.__name__} has unknown parameters {sorted(unknown)}")
    missing = set(route.path_params) - names
    if missing:
        raise TypeError(f"{route.rule}: handler {route.handler.__name__} must accept {sorted(missing)}")
    if route.body is not None and "body" not in names:
        raise TypeError(f"{route.rule}: declared body= but the handler takes no `body`")
    if route.query is not None and "query" not in names:
        raise TypeError(f"{route.rule}: declared query= but the handler takes no `query`")
    return names


# ---------------------------------------------------------------- request handling


def make_view(route: Route) -> Callable[..., Response]:
    """The Flask view for a route: authenticate, gate, validate, call, serialize."""

    def view(**path_args: Any) -> Response:
        from portal import auth
        from portal.web import flush_request_session, request_session

        actor = auth.authenticate_request(require=route.auth is not Auth.PUBLIC)
        if route.auth is not Auth.PUBLIC:
            _gate(route.auth, actor)
            if route.method in _WRITE_METHODS:
                auth.check_csrf_for_api()
        kwargs: dict[str, Any] = {k: v for k, v in path_args.items() if k in route.parameters}
        if route.query is not None:
            kwargs["query"] = parse_query(route.query, paginated=route.paginated)
        if route.body is not None:
            kwargs["body"] = parse_body(route.body)
        if "actor" in route.parameters:
            kwargs["actor"] = actor
        if "session" in route.parameters:
            kwargs["session"] = request_session()
        result = route.handler(**kwargs)
        flush_request_session()  # versions, defaults and constraint errors are known before serializing
        return _respond(route, result, kwargs.get("query"))

    view.__name__ = route.endpoint
    view.__doc__ = route.handler.__doc__
    return view


def _gate(level: Auth, actor: Any) -> None:
    if actor is None:
        raise Unauthorized("Sign in or send an API token (Authorization: Bearer kdn_...).")
    if level is Auth.STAFF and actor.role not in ("admin", "engineer"):
        raise PermissionDenied("Only Kaiden staff may do this.")
    if level is Auth.ADMIN and actor.role != "admin":
        raise PermissionDenied("Only administrators may do this.")


def parse_body(model: type[BaseModel]) -> BaseModel:
    """Validate the JSON body against `model`: 400 when it is not JSON, 422 with field messages."""
    if not request.is_json:
        raise BadRequest("Send a JSON body with Content-Type: application/json.", code="expected_json")
    data = request.get_json(silent=True)
    if data is None and request.get_data():
        raise BadRequest("The request body is not valid JSON.", code="invalid_json")
    if not isinstance(data, dict):
        raise ValidationError("The body must be a JSON object.", fields={"body": "must be a JSON object"})
    return validate(model, data)


def parse_query(model: type[BaseModel], *, paginated: bool = False) -> BaseModel:
    """Validate the query string against `model` (lists: repeated or comma-separated values)."""
    data: dict[str, Any] = {}
    list_fields = {name for name, info in model.model_fields.items() if _is_list(info.annotation)}
    for key in request.args:
        values = request.args.getlist(key)
        if key in list_fields:
            data[key] = [part for value in values for part in value.split(",") if part != ""]
        else:
            data[key] = values[-1]
    query = validate(model, data)
    if paginated:
        limit = _page_size_max()
        if "per_page" not in data:
            query.per_page = min(query.per_page, limit)  # type: ignore[attr-defined]
        elif query.per_page > limit:  # type: ignore[attr-defined]
            raise ValidationError("Invalid query parameters.", fields={"per_page": f"must be at most {limit}"})
    return query


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set, frozenset):
        return True
    return any(_is_list(arg) for arg in typing.get_args(annotation) if arg is not type(None))


def _page_size_max() -> int:
    from portal import settings_of

    return settings_of(current_app).api_page_size_max


def validate(model: type[BaseModel], data: Any) -> BaseModel:
    """`model.model_validate(data)` turning pydantic errors into a 422 with one message per field."""
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        raise ValidationError("Invalid input.", fields=field_errors(exc)) from None


def field_errors(exc: PydanticValidationError) -> dict[str, str]:
    """Pydantic errors → {"name": "must be at most 100 characters", "members.0.role": "..."}."""
    fields: dict[str, str] = {}
    for error in exc.errors(include_url=False, include_input=False):
        loc = [str(part) for part in error["loc"] if part not in ("body", "query")]
        # skip the union-member / validator-function names pydantic appends to locations
        loc = [part for part in loc if not part.startswith(("function-", "constrained-")) and "[" not in part]
        key = ".".join(loc) or "body"
        fields.setdefault(key, _message(error))
    return fields


def _message(error: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not allowed"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "string_too_short":
        minimum = ctx.get("min_length")
        return "must not be empty" if minimum == 1 else f"must be at least {minimum} characters"
    if kind in ("too_long", "too_short"):
        bound = ctx.get("max_length") if kind == "too_long" else ctx.get("min_length")
        return f"must have at most {bound} items" if kind == "too_long" else f"must have at least {bound} items"
    if kind in ("enum", "literal_error"):
        return f"must be one of: {ctx.get('expected', '')}".replace("'", "")
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "must be a whole number"
    if kind in ("bool_parsing", "bool_type"):
        return "must be true or false"
    if kind in ("string_type",):
        return "must be a string"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        words = {
            "greater_than_equal": ("at least", "ge"),
            "greater_than": ("greater than", "gt"),
            "less_than_equal": ("at most", "le"),
            "less_than": ("less than", "lt"),
        }[kind]
        return f"must be {words[0]} {ctx.get(words[1])}"
    if kind == "string_pattern_mismatch":
        return "has an invalid format"
    if kind == "value_error" and "email address" in str(error["msg"]):
        return "must be a valid email address"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error") or error["msg"]).removeprefix("Value error, ")
    return str(error["msg"]).removeprefix("Value error, ").lower()


# ---------------------------------------------------------------- responses


def dump(model: type[BaseModel], obj: Any) -> Any:
    """Serialize `obj` through the response allow-list `model` (JSON-ready)."""
    if isinstance(obj, model):
        return obj.model_dump(mode="json")
    return model.model_validate(obj, from_attributes=True).model_dump(mode="json")


def paginate(items_or_select: Any, query: PageQuery) -> Page[Any]:
    """Apply `page`/`per_page` to a `Select` (ORDER BY required for stable pages) or a sequence."""
    start = (query.page - 1) * query.per_page
    if isinstance(items_or_select, Select):
        from portal.web import request_session

        session = request_session()
        count = select(func.count()).select_from(items_or_select.order_by(None).subquery())
        total = session.scalar(count) or 0
        rows = session.scalars(items_or_select.limit(query.per_page).offset(start)).all()
        return Page(items=rows, page=query.page, per_page=query.per_page, total=total)
    items = list(items_or_select)
    return Page(items=items[start : start + query.per_page], page=query.page, per_page=query.per_page, total=len(items))


def _respond(route: Route, result: Any, query: Any) -> Response:
    if isinstance(result, Response):
        return result
    if route.status == 204:
        return Response(status=204)
    if route.paginated:
        page = result if isinstance(result, Page) else paginate(result, query)
        assert route.response is not None
        payload: Any = {
            "items": [dump(route.response, item) for item in page.items],
            "page": page.page,
            "per_page": page.per_page,
            "total": page.total,
        }
    elif route.status == 202:
        assert route.response is not None
        if "operation" in route.response.model_fields:  # an envelope already, e.g. {"service", "operation"}
            payload = dump(route.response, result)
        else:
            payload = {"operation": dump(route.response, result)}
    elif route.response is not None:
        payload = dump(route.response, result)
    else:
        payload = result if result is not None else {}
    response = jsonify(payload)
    response.status_code = route.status
    if not route.paginated and isinstance(payload, dict) and isinstance(payload.get("version"), int):
        response.headers["ETag"] = f'"{payload["version"]}"'
    return response


def expected_version(body_version: int | None = None) -> int | None:
    """The version the client last saw: the body's `version`, else the `If-Match` header (ETag)."""
    if body_version is not None:
        return body_version
    header = request.headers.get("If-Match")
    if not header:
        return None
    text = header.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise BadRequest('If-Match must be the ETag of the resource, e.g. "3".', code="invalid_if_match")
    return int(text)


def current_actor() -> Any:
    """The signed-in user of this request (after the route's authentication ran), or None."""
    return g.get("kaiden_actor")

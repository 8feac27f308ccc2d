"""Wires blueprints, error handlers and the request-scoped database session into the Flask app.

One transaction per request: the session opens lazily, commits just before the response is sent
when the status is below 400, and rolls back otherwise (and on any exception).
"""

from __future__ import annotations

import logging
import re

from flask import Flask, Response, current_app, g, jsonify, render_template, request
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError
from werkzeug.exceptions import HTTPException

from portal.errors import ConflictError, KaidenError

log = logging.getLogger("kaiden.web")

_SESSION_KEY = "kaiden_db_session"


def init_app(app: Flask) -> None:
    """Register every blueprint, the error handlers and the per-request transaction."""
    from portal import api, auth, chartrepo, pages

    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # a token lives as long as the session
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the order the response models declare
    auth.init_app(app)
    api.init_app(app)
    pages.init_app(app)
    app.register_blueprint(chartrepo.blueprint)  # /charts: our Helm chart repository (public, read-only)

    app.after_request(_commit_handler)
    app.teardown_request(_close_session_handler)
    app.register_error_handler(KaidenError, _kaiden_error_handler)
    app.register_error_handler(HTTPException, _http_error_handler)
    app.register_error_handler(StaleDataError, _stale_data_handler)
    app.register_error_handler(IntegrityError, _integrity_error_handler)
    app.register_error_handler(Exception, _unexpected_error_handler)


# ---------------------------------------------------------------- the request-scoped session


def request_session() -> Session:
    """The database session of the current request (opened on first use, one transaction)."""
    session = g.get(_SESSION_KEY)
    if session is None:
        from portal import database_of

        session = database_of(current_app).sessionmaker()
        setattr(g, _SESSION_KEY, session)
    return session


def flush_request_session() -> None:
    """Flush pending changes of the request's session, if it was opened (errors surface as 409s)."""
    session: Session | None = g.get(_SESSION_KEY)
    if session is not None:
        session.flush()


def _commit_handler(response: Response) -> Response:
    """Commit before the response leaves when it succeeded; any error status rolls back."""
    session: Session | None = g.get(_SESSION_KEY)
    if session is None:
        return response
    if response.status_code >= 400:
        session.rollback()
        return response
    try:
        session.commit()
    except Exception as exc:  # the commit itself failed: answer with an error, never a half success
        session.rollback()
        return error_response(_as_kaiden_error(exc))
    return response


def _close_session_handler(_exc: BaseException | None) -> None:
    session: Session | None = g.pop(_SESSION_KEY, None)
    if session is not None:
        session.rollback()  # no-op after a commit; undoes anything left over by an exception
        session.close()


# ---------------------------------------------------------------- errors


def wants_json() -> bool:
    """API paths answer errors with the JSON envelope; pages answer with an HTML page."""
    return request.path == "/api" or request.path.startswith("/api/")


def error_body(error: KaidenError) -> dict:
    body = {"error": {"code": error.code, "message": error.message, "fields": dict(error.fields)}}
    body.update(getattr(error, "extra", None) or {})  # e.g. the running operation's id on a 409
    return body


def error_response(error: KaidenError, status: int | None = None) -> Response:
    """Render a `KaidenError` as JSON (API) or HTML (pages) with its HTTP status."""
    status = status or error.status
    if wants_json():
        response = jsonify(error_body(error))
        response.status_code = status
    else:
        html = render_template("error.html", status=status, error=error)
        response = Response(html, status=status, mimetype="text/html")
    if status == 401 and wants_json():
        response.headers["WWW-Authenticate"] = 'Bearer realm="kaiden"'
    return response


def _kaiden_error_handler(error: KaidenError) -> Response:
    return error_response(error)


_HTTP_MESSAGES = {
    400: "The request could not be understood.",
    401: "Authentication required.",
    403: "You are not allowed to do this.",
    404: "Not found.",
    405: "This method is not allowed here.",
    413: "The request body is too large.",
    415: "Unsupported media type.",
}


def _http_error_handler(error: HTTPException) -> Response:
    status = error.code or 500
    if status >= 500:
        return _unexpected_error_handler(error)
    name = getattr(error, "name", "") or "error"
    code = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "error"
    message = _HTTP_MESSAGES.get(status, name)
    if type(error).__name__ == "CSRFError":
        code, message = "csrf_failed", "The CSRF token is missing or invalid; reload the page and try again."
    kaiden = KaidenError(message, code=code)
    response = error_response(kaiden, status)
    valid_methods = getattr(error, "valid_methods", None)
    if status == 405 and valid_methods:
        response.headers["Allow"] = ", ".join(valid_methods)
    return response


def _stale_data_handler(_error: StaleDataError) -> Response:
    return error_response(_as_kaiden_error(_error))


def _integrity_error_handler(error: IntegrityError) -> Response:
    return error_response(_as_kaiden_error(error))


def _as_kaiden_error(exc: Exception) -> KaidenError:
    """Map what a commit can raise to a safe, user-facing error; log the rest."""
    if isinstance(exc, KaidenError):
        return exc
    if isinstance(exc, StaleDataError):
        return ConflictError("This record was changed by someone else; reload it and try again.", code="stale")
    if isinstance(exc, IntegrityError):
        return ConflictError("This conflicts with existing data.", code="conflict")
    if isinstance(exc, OperationalError):
        log.exception("database error")
        return KaidenError("The database is unavailable; try again shortly.", code="database_unavailable")
    log.exception("unexpected error while finishing the request")
    return KaidenError("Internal server error.", code="internal_error")


def _unexpected_error_handler(error: Exception) -> Response:
    """Anything unplanned is a 500 with a generic message; the details go to the log only."""
    if isinstance(error, HTTPException) and (error.code or 500) < 500:
        return _http_error_handler(error)
    original = getattr(error, "original_exception", None) or error
    if isinstance(original, KaidenError | StaleDataError | IntegrityError):
        return error_response(_as_kaiden_error(original))
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=original)
    return error_response(KaidenError("Internal server error.", code="internal_error"), 500)

"""Authentication: who is making this request (bearer API token or browser session), CSRF, login/logout.

Authorization — what that user may do — lives in `portal.auth.policy`.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any, TypeVar

from flask import Flask, g, redirect, request, session, url_for
from flask_wtf.csrf import CSRFProtect, validate_csrf
from sqlalchemy import select, update
from sqlalchemy.orm.attributes import set_committed_value
from wtforms.validators import ValidationError as WTFValidationError

from portal.crypto import hash_token
from portal.errors import BadRequest, Unauthorized
from portal.models import ApiToken, User, utcnow

csrf = CSRFProtect()

F = TypeVar("F", bound=Callable[..., Any])

_ACTOR = "kaiden_actor"
_METHOD = "kaiden_auth_method"  # "token" | "session" | None
_RESOLVED = "kaiden_auth_resolved"
_SESSION_UID = "uid"
_SESSION_FINGERPRINT = "fp"
# last_used_at is written at most this often per token, so busy clients do not turn reads into writes.
LAST_USED_GRANULARITY = timedelta(minutes=1)
CSRF_HEADERS = ("X-CSRFToken", "X-CSRF-Token")


def init_app(app: Flask) -> None:
    """CSRF protection for every form; the API blueprint is exempted and checks the header itself."""
    app.config.setdefault("WTF_CSRF_HEADERS", list(CSRF_HEADERS))
    csrf.init_app(app)


def authenticate_request(*, require: bool) -> User | None:
    """Resolve (once per request) the user behind the bearer token or the session cookie.

    With `require`, a missing or invalid credential raises `Unauthorized`. A bearer header, when
    present, is the only credential considered: an invalid token is never rescued by a cookie.
    """
    if not g.get(_RESOLVED):
        g.setdefault(_ACTOR, None)
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, credential = header.partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                _fail("Use `Authorization: Bearer <token>`.", require)
                return None
            user = _user_from_token(credential.strip())
            if user is None:
                _fail("The API token is invalid, expired or revoked.", require)
                return None
            _set_actor(user, "token")
        else:
            user = _user_from_session()
            if user is not None:
                _set_actor(user, "session")
        g.setdefault(_RESOLVED, True)
    actor = g.get(_ACTOR)
    if actor is None and require:
        raise Unauthorized("Sign in or send an API token (Authorization: Bearer kdn_...).")
    return actor


def _fail(message: str, require: bool) -> None:
    g.setdefault(_RESOLVED, True)
    if require:
        raise Unauthorized(message)


def _set_actor(user: User, method: str) -> None:
    from portal.tenancy import bind_actor

    bind_actor(_db(), user)  # from here on, every ORM query of this request is tenant-scoped
    setattr(g, _ACTOR, user)
    setattr(g, _METHOD, method)
    setattr(g, _RESOLVED, True)


def current_user() -> User | None:
    """The signed-in user of this request (token or session), or None."""
    return authenticate_request(require=False)


def auth_method() -> str | None:
    """How the current request authenticated: "token", "session" or None."""
    authenticate_request(require=False)
    return g.get(_METHOD)


def _db():
    from portal.web import request_session

    return request_session()


def _usable_user(user: User | None) -> User | None:
    if user is None or not user.is_active:
        return None
    if user.customer is not None and not user.customer.is_active:
        return None
    return user


def _user_from_token(token: str) -> User | None:
    if not token.startswith("kdn_") or len(token) > 200:
        return None
    db = _db()
    row = db.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).one_or_none()
    now = utcnow()
    if row is None or not row.is_usable(now):
        return None
    user = _usable_user(row.user)
    if user is None:
        return None
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_GRANULARITY:
        row.last_used_at = now
    return user


def _user_from_session() -> User | None:
    raw = session.get(_SESSION_UID)
    if not raw:
        return None
    try:
        user_id = uuid.UUID(str(raw))
    except ValueError:
        session.clear()
        return None
    user = _usable_user(_db().get(User, user_id))
    if user is None or session.get(_SESSION_FINGERPRINT) != password_fingerprint(user):
        session.clear()  # deleted, deactivated, or the password changed since this cookie was issued
        return None
    return user


def password_fingerprint(user: User) -> str:
    """A short digest of the password hash: changing the password signs out every other session."""
    return hashlib.sha256((user.password_hash or "-").encode()).hexdigest()[:16]


def login_user(user: User) -> None:
    """Start a browser session for `user` (a fresh session: no fixation)."""
    session.clear()
    session[_SESSION_UID] = str(user.id)
    session[_SESSION_FINGERPRINT] = password_fingerprint(user)
    session.permanent = False
    # A plain UPDATE: signing in is not an edit, so it must not bump `version` (no spurious 409s).
    now = utcnow()
    _db().execute(update(User).where(User.id == user.id).values(last_login_at=now))
    set_committed_value(user, "last_login_at", now)
    _set_actor(user, "session")


def logout_user() -> None:
    """End the browser session."""
    from portal.tenancy import bind_actor

    session.clear()
    bind_actor(_db(), None)
    setattr(g, _ACTOR, None)
    setattr(g, _METHOD, None)


def check_csrf_for_api() -> None:
    """Cookie-authenticated API writes must carry the CSRF token in a header (bearer calls need none)."""
    if auth_method() != "session":
        return
    token = next((request.headers[h] for h in CSRF_HEADERS if request.headers.get(h)), None)
    try:
        validate_csrf(token)
    except WTFValidationError:
        raise BadRequest(
            "Cookie-authenticated writes must send the CSRF token in the X-CSRFToken header.",
            code="csrf_failed",
        ) from None


def login_required(view: F) -> F:
    """For pages: redirect anonymous visitors to the login page (then back)."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current_user() is None:
            return redirect(url_for("pages.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]

"""Pages every user sees: login (CSRF-protected form), logout, the dashboard and the API docs page."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Length

from portal import auth, redis_of, settings_of
from portal.auth import passwords, policy
from portal.auth.throttle import throttle_for
from portal.models import Customer
from portal.services import identity
from portal.web import request_session

blueprint = Blueprint("pages", __name__)


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=255)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=passwords.MAX_PASSWORD_LENGTH)])


class LogoutForm(FlaskForm):
    """Logout is a POST with a CSRF token, so another site cannot sign you out."""


def _safe_next(target: str | None) -> str:
    """Only same-site relative paths; anything else goes to the dashboard (no open redirect)."""
    if not target:
        return url_for("pages.dashboard")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("pages.dashboard")
    return target


@blueprint.route("/login", methods=["GET", "POST"])
def login() -> Response | str | tuple[str, int, dict[str, str]]:
    form = LoginForm()
    error = None
    if form.validate_on_submit():
        email = form.email.data or ""
        throttle = throttle_for(settings_of(current_app), redis_of(current_app))
        verdict = throttle.check(email, request.remote_addr)
        if not verdict.allowed:
            minutes = -(-verdict.retry_after // 60)
            error = f"Too many failed sign-ins. Try again in {minutes} minute{'s' if minutes != 1 else ''}."
            page = render_template("login.html", form=form, error=error)
            return page, 429, {"Retry-After": str(verdict.retry_after)}
        user = identity.authenticate(request_session(), email, form.password.data or "")
        if user is not None:
            throttle.succeeded(email)
            auth.login_user(user)
            return redirect(_safe_next(request.args.get("next")))
        throttle.failed(email, request.remote_addr)
        error = "Invalid email or password."
    elif request.method == "GET" and auth.current_user() is not None:
        return redirect(_safe_next(request.args.get("next")))
    return render_template("login.html", form=form, error=error)


@blueprint.route("/logout", methods=["POST"])
def logout() -> Response:
    form = LogoutForm()
    if form.validate_on_submit():
        auth.logout_user()
    return redirect(url_for("pages.login"))


@blueprint.route("/")
@auth.login_required
def dashboard() -> str:
    user = auth.current_user()
    assert user is not None
    session = request_session()
    workspaces = session.scalars(policy.visible_workspaces(user).order_by("name").limit(50)).all()
    customer = session.get(Customer, user.customer_id) if user.customer_id else None
    return render_template(
        "dashboard.html",
        user=user,
        customer=customer,
        workspaces=workspaces,
        logout_form=LogoutForm(),
    )


@blueprint.route("/api/docs")
def api_docs() -> str:
    """The OpenAPI document rendered as a page (no third-party JavaScript)."""
    from portal.api.openapi import openapi_document

    document = openapi_document(current_app)
    groups: dict[str, list[dict]] = {}
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            for tag in operation.get("tags") or ["Other"]:
                groups.setdefault(tag, []).append({"path": path, "method": method.upper(), **operation})
    return render_template("api_docs.html", document=document, groups=dict(sorted(groups.items())))


@blueprint.route("/healthz")
def healthz() -> tuple[dict[str, str], int]:
    """Liveness/readiness for load balancers and the platform stack's probes: the database answers."""
    from sqlalchemy import text

    try:
        request_session().execute(text("SELECT 1"))
    except Exception:  # any database failure means "not ready"; the detail goes to the log only
        current_app.logger.exception("health check: database unavailable")
        return {"status": "unavailable"}, 503
    return {"status": "ok"}, 200

"""Cloud Services pages (seed 002 UI): workspace dashboard, service selection, marketplace, configure, service detail.

Pages render what the signed-in user may see straight from the tenant-scoped models; everything
that changes something (launch, preview, upgrade, rollback, delete) is done by the small scripts
in `portal/static/` through the REST API, so the server stays the one authority on validation.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from flask import Blueprint, abort, current_app, render_template, request, url_for
from sqlalchemy.orm import Session

from portal import auth, settings_of
from portal.auth import policy
from portal.auth.policy import WorkspaceAction
from portal.errors import NotFound
from portal.models import APP_CATEGORY_LABELS, AppCategory, AppTemplate, User, Workspace
from portal.services import cloud_services
from portal.services import templates as template_service
from portal.tenancy import scoped
from portal.web import request_session

blueprint = Blueprint("cloud", __name__)

# States in which a service is still changing: pages watch these for updates.
TRANSITIONAL_STATES = frozenset({"pending", "deploying", "upgrading", "deleting"})
# Services in these states are gone from the dashboard (the record keeps its history).
GONE_STATES = frozenset({"deleted"})
NAV_WORKSPACES = 3  # how many workspaces the top navigation links directly


# ---------------------------------------------------------------- lookups (permission first)


def _actor() -> User:
    user = auth.current_user()
    if user is None:  # login_required runs first; this only narrows the type
        abort(401)
    return user


def workspace_by_ref(session: Session, actor: User, ref: str, action: WorkspaceAction) -> Workspace:
    """A workspace by id or slug when `actor` may do `action` there (404 when not visible, 403 when not allowed)."""
    try:
        workspace_id = uuid.UUID(ref)
    except ValueError:
        found = session.scalar(scoped(Workspace, actor).where(Workspace.slug == ref))
        if found is None:
            raise NotFound("Workspace not found.") from None
        workspace_id = found.id
    return policy.workspace_for(session, actor, workspace_id, action)


def _can(session: Session, actor: User, workspace: Workspace, action: WorkspaceAction) -> bool:
    role = None if policy.is_staff(actor) else policy.membership_role(session, actor, workspace.id)
    return policy.can_workspace(actor, role, action)


def _deployable_workspaces(session: Session, actor: User) -> list[Workspace]:
    workspaces = session.scalars(policy.visible_workspaces(actor).order_by(Workspace.name, Workspace.id)).all()
    return [ws for ws in workspaces if _can(session, actor, ws, WorkspaceAction.DEPLOY)]


# ---------------------------------------------------------------- what templates show


def spec_view(spec: dict[str, Any]) -> dict[str, Any]:
    """One HelmValueSpec as the form generator needs it (seed and catalog spellings both accepted)."""
    kind = spec.get("type", "text")
    default = spec.get("default_value", spec.get("default"))
    key = str(spec["key"])
    return {
        "key": key,
        "id": "value-" + "".join(ch if ch.isalnum() else "-" for ch in key),
        "label": spec.get("label") or key,
        "type": kind if kind in {"text", "password", "number", "boolean", "select"} else "text",
        "default": None if kind == "password" else default,
        "placeholder": spec.get("placeholder"),
        "help": spec.get("help_text", spec.get("help")),
        "required": bool(spec.get("required", False)),
        "options": [str(option) for option in spec.get("options") or []],
    }


def template_specs(template: AppTemplate) -> tuple[list[dict], list[dict]]:
    specs = template.helm_value_specs or {}
    return [spec_view(s) for s in specs.get("required", [])], [spec_view(s) for s in specs.get("optional", [])]


def template_card(template: AppTemplate) -> dict[str, Any]:
    """What a marketplace card shows (the same shape the marketplace script builds from the API)."""
    return {
        "id": str(template.id),
        "slug": template.slug,
        "name": template.name,
        "icon_url": template.icon_url,
        "description": template.description or "",
        "category": str(template.category),
        "category_label": template.category_label,
        "tags": [str(tag) for tag in template.tags or []],
        "monthly_price": template.monthly_price,
    }


@blueprint.app_template_filter("price")
def price_filter(value: float | None) -> str:
    if not value:
        return "Free"
    return f"${value:,.2f}/mo" if value % 1 else f"${value:,.0f}/mo"


@blueprint.app_template_filter("value_text")
def value_text(value: Any) -> str:
    """A Helm value as the user typed it: `true`/`false`, numbers and strings as is, structures as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


@blueprint.app_template_filter("icon_is_image")
def icon_is_image(value: str | None) -> bool:
    """Catalog icons may be a URL/path (shown as an image) or a bare name (shown as a letter badge)."""
    return bool(value) and str(value).startswith(("http://", "https://", "/"))


@blueprint.app_context_processor
def _nav_workspaces() -> dict[str, Any]:
    def nav_workspaces() -> list[Workspace]:
        user = auth.current_user()
        if user is None:
            return []
        try:
            stmt = policy.visible_workspaces(user).order_by(Workspace.name, Workspace.id).limit(NAV_WORKSPACES + 1)
            return list(request_session().scalars(stmt))
        except Exception:  # the nav must never break an error page (e.g. the database is down)
            current_app.logger.warning("navigation: could not list workspaces", exc_info=True)
            return []

    return {"nav_workspaces": nav_workspaces, "nav_workspaces_max": NAV_WORKSPACES}


# ---------------------------------------------------------------- pages


@blueprint.route("/workspaces/<ws_ref>")
@auth.login_required
def workspace_dashboard(ws_ref: str) -> str:
    """Service cards with status badges; "Deploy your first service" when there are none."""
    actor, session = _actor(), request_session()
    workspace = workspace_by_ref(session, actor, ws_ref, WorkspaceAction.READ)
    services = session.scalars(cloud_services.services_of(workspace)).all()  # deleted ones left out
    return render_template(
        "cloud/workspace.html",
        workspace=workspace,
        services=services,
        can_deploy=_can(session, actor, workspace, WorkspaceAction.DEPLOY),
        monthly_total=sum(s.template.monthly_price or 0 for s in services),
        transitional=TRANSITIONAL_STATES,
    )


@blueprint.route("/workspaces/<ws_ref>/services/new")
@auth.login_required
def service_selection(ws_ref: str) -> str:
    """What to add: Cloud Services (the marketplace), with shortcuts into each category."""
    actor, session = _actor(), request_session()
    workspace = workspace_by_ref(session, actor, ws_ref, WorkspaceAction.DEPLOY)
    return render_template("cloud/service_new.html", workspace=workspace, categories=APP_CATEGORY_LABELS)


@blueprint.route("/marketplace")
@auth.login_required
def marketplace() -> str:
    """Search, category filter and cards; works without JavaScript (GET form), the script searches as you type."""
    actor, session = _actor(), request_session()
    workspace = None
    ws_ref = request.args.get("workspace", "").strip()
    if ws_ref:
        workspace = workspace_by_ref(session, actor, ws_ref, WorkspaceAction.DEPLOY)
    workspaces = _deployable_workspaces(session, actor)
    if workspace is None and workspaces:
        workspace = workspaces[0]  # the "Deploy into" choice starts at the first one
    category_arg = request.args.get("category", "").strip()
    category = AppCategory(category_arg) if category_arg in {c.value for c in AppCategory} else None
    search = request.args.get("search", "").strip()[:100] or None
    filters = template_service.TemplateFilter(category=category, search=search, is_active=True)
    templates = [template_card(t) for t in template_service.list_templates(session, actor, filters)]
    return render_template(
        "cloud/marketplace.html",
        workspace=workspace,
        workspaces=workspaces,
        templates=templates,
        categories=APP_CATEGORY_LABELS,
        category=category,
        search=search or "",
    )


@blueprint.route("/workspaces/<ws_ref>/services/new/<template_ref>")
@auth.login_required
def configure(ws_ref: str, template_ref: str) -> str:
    """The launch form, generated from the template's value specs (required, then optional under Advanced)."""
    actor, session = _actor(), request_session()
    workspace = workspace_by_ref(session, actor, ws_ref, WorkspaceAction.DEPLOY)
    template = template_service.get_template(session, actor, template_ref)
    if not template.is_active:
        raise NotFound("This app is no longer offered.")
    required, optional = template_specs(template)
    return render_template(
        "cloud/configure.html",
        workspace=workspace,
        template=template,
        required_specs=required,
        optional_specs=optional,
        base_domain=settings_of(current_app).base_domain,
    )


@blueprint.route("/services/<uuid:service_id>")
@auth.login_required
def service_detail(service_id: uuid.UUID) -> str:
    """Header (status, Open Web UI, Rollback, Delete) and the Overview and Configuration tabs."""
    actor, session = _actor(), request_session()
    service = cloud_services.get_service(session, actor, service_id, WorkspaceAction.READ)
    workspace = service.workspace
    required, optional = template_specs(service.template)
    # Only non-secret values reach the page; password keys are shown as set / not set.
    secret_keys = service.template.secret_keys
    secrets_set = set(cloud_services.secret_keys_set(service))
    plain_values = {k: v for k, v in (service.helm_values or {}).items() if k not in secret_keys}
    revisions = session.scalars(cloud_services.revisions(service).limit(50)).all()
    activity = session.scalars(cloud_services.activity(service).limit(50)).all()
    state = str(service.state)
    return render_template(
        "cloud/service.html",
        service=service,
        workspace=workspace,
        template=service.template,
        state=state,
        required_specs=required,
        optional_specs=optional,
        plain_values=plain_values,
        secret_keys=secret_keys,
        secrets_set=secrets_set,
        revisions=revisions,
        activity=activity,
        operation=cloud_services.active_operation(session, service),
        can_deploy=_can(session, actor, workspace, WorkspaceAction.DEPLOY),
        can_delete=_can(session, actor, workspace, WorkspaceAction.DELETE),
        is_gone=state in GONE_STATES,
        base_domain=settings_of(current_app).base_domain,
        dashboard_url=url_for("cloud.workspace_dashboard", ws_ref=str(workspace.id)),
    )

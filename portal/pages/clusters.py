"""Remote Support cluster pages: list, register (API key shown once), detail with nodes, key rotation, onboarding help.

The pages poll the REST API (`/api/v1/clusters...`) with the browser session every few seconds to
keep status, heartbeat and nodes current (static/clusters.js, no third-party script).
"""

from __future__ import annotations

import uuid

from flask import Blueprint, Response, current_app, make_response, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Optional

from portal import auth, redis_of, settings_of
from portal.errors import ConflictError, PermissionDenied, ValidationError
from portal.models import Customer, Operation, TargetType, User, UserRole
from portal.services import clusters as service
from portal.services import install_bundle, onboarding
from portal.services.clusters import ClusterCredentials
from portal.tenancy import scoped
from portal.web import request_session

blueprint = Blueprint("clusters", __name__)


class RegisterForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=255)])
    description = TextAreaField("Description", validators=[Optional(), Length(max=2000)])
    customer_id = SelectField("Customer", validators=[Optional()], choices=[])


class RotateForm(FlaskForm):
    """Key rotation is a POST with a CSRF token."""


class OnboardForm(FlaskForm):
    kubeconfig = TextAreaField("Kubeconfig", validators=[DataRequired(), Length(max=256 * 1024)])
    context = StringField("Context", validators=[Optional(), Length(max=253)])
    api_key = StringField("API key", validators=[Optional(), Length(max=200)])


def can_manage(user: User, customer_id: uuid.UUID | None = None) -> bool:
    """Admins manage every cluster; customer users their own customer's; engineers only read."""
    if user.role == UserRole.admin:
        return True
    return user.role == UserRole.customer and (customer_id is None or user.customer_id == customer_id)


def _portal_url() -> str:
    return request.url_root.rstrip("/")


def _no_store(html: str) -> Response:
    """Pages that show an API key must not be cached by the browser or a proxy."""
    response = make_response(html)
    response.headers["Cache-Control"] = "no-store"
    return response


def commands(cluster_id: uuid.UUID | str, api_key: str, portal_url: str) -> dict[str, str]:
    """The copyable onboarding commands for a cluster (with the real key, or a placeholder)."""
    bundle_url = f"{portal_url}/api/v1/clusters/{cluster_id}/install.yaml"
    return {
        "kubectl": (
            f"curl -fsS -H '{install_bundle.KEY_HEADER}: {api_key}' \\\n  {bundle_url} \\\n  | kubectl apply -f -"
        ),
        "ansible": (
            "ansible-playbook playbooks/onboard-cluster.yml \\\n"
            "  -e kubeconfig=$HOME/.kube/config \\\n"
            f"  -e portal_url={portal_url} \\\n"
            f"  -e cluster_id={cluster_id} \\\n"
            f"  -e api_key={api_key}"
        ),
    }


def _registered(credentials: ClusterCredentials, *, rotated: bool) -> Response:
    cluster = credentials.cluster
    html = render_template(
        "clusters/registered.html",
        cluster=cluster,
        api_key=credentials.api_key,
        rotated=rotated,
        commands=commands(cluster.id, credentials.api_key, _portal_url()),
    )
    return _no_store(html)


@blueprint.route("/clusters")
@auth.login_required
def cluster_list() -> str:
    user = auth.current_user()
    assert user is not None
    session = request_session()
    rows = service.list_clusters(session, user)
    customers = {}
    if user.role != UserRole.customer:
        ids = {cluster.customer_id for cluster in rows}
        customers = {c.id: c.name for c in session.scalars(scoped(Customer, user).where(Customer.id.in_(ids)))}
    return render_template("clusters/list.html", clusters=rows, customers=customers, can_register=can_manage(user))


@blueprint.route("/clusters/new", methods=["GET", "POST"])
@auth.login_required
def register() -> Response | str | tuple[str, int]:
    user = auth.current_user()
    assert user is not None
    if not can_manage(user):
        raise PermissionDenied("Only administrators and customer users register clusters.")
    session = request_session()
    form = RegisterForm()
    if user.role == UserRole.admin:
        form.customer_id.choices = [("", "Choose a customer")] + [
            (str(c.id), c.name) for c in session.scalars(scoped(Customer, user).order_by(Customer.name))
        ]
    errors: dict[str, str] = {}
    message = None
    if form.validate_on_submit():
        customer_id = None
        if user.role == UserRole.admin:
            try:
                customer_id = uuid.UUID(form.customer_id.data or "")
            except ValueError:
                errors["customer_id"] = "Choose a customer."
        if not errors:
            try:
                credentials = service.register_cluster(
                    session,
                    user,
                    name=(form.name.data or "").strip(),
                    description=(form.description.data or "").strip() or None,
                    customer_id=customer_id,
                )
            except (ValidationError, ConflictError) as exc:
                message = exc.message
                for key, text in exc.fields.items():
                    errors[key] = f"{key.replace('_', ' ').capitalize()} {text}."
            else:
                return _registered(credentials, rotated=False)
    elif request.method == "POST":
        errors.update({name: "; ".join(messages) for name, messages in form.errors.items()})
    status = 422 if request.method == "POST" else 200
    return render_template("clusters/new.html", form=form, errors=errors, message=message), status


def _latest_onboarding(cluster_id: uuid.UUID) -> Operation | None:
    stmt = (
        select(Operation)
        .where(
            Operation.kind == onboarding.KIND,
            Operation.target_type == TargetType.cluster,
            Operation.target_id == cluster_id,
        )
        .order_by(Operation.created_at.desc(), Operation.id)
        .limit(1)
    )
    return request_session().scalars(stmt).first()


def _detail(cluster_id: uuid.UUID, *, onboard_errors: dict[str, str] | None = None, onboard_message: str | None = None):
    user = auth.current_user()
    assert user is not None
    session = request_session()
    cluster = service.get_cluster(session, user, cluster_id)
    nodes = service.list_nodes(session, user, cluster.id)
    settings = settings_of(current_app)
    return render_template(
        "clusters/detail.html",
        cluster=cluster,
        nodes=nodes,
        can_manage=can_manage(user, cluster.customer_id),
        rotate_form=RotateForm(),
        commands=commands(cluster.id, "<API_KEY>", _portal_url()),
        endpoint=install_bundle.cloud_endpoint(settings),
        poll_seconds=3,
        onboarding=_latest_onboarding(cluster.id),
        onboard_errors=onboard_errors or {},
        onboard_message=onboard_message,
    )


@blueprint.route("/clusters/<uuid:cluster_id>")
@auth.login_required
def cluster_detail(cluster_id: uuid.UUID) -> str:
    return _detail(cluster_id)


@blueprint.route("/clusters/<uuid:cluster_id>/onboard", methods=["POST"])
@auth.login_required
def onboard(cluster_id: uuid.UUID) -> Response | tuple[str, int]:
    """Start the portal-run onboarding (the same use case as `POST /api/v1/clusters/{id}/onboard`)."""
    user = auth.current_user()
    assert user is not None
    session = request_session()
    cluster = service.get_cluster(session, user, cluster_id)
    if not can_manage(user, cluster.customer_id):
        raise PermissionDenied("Only administrators and the customer's users onboard clusters.")
    form = OnboardForm()
    if not form.validate_on_submit():
        errors = {name: "; ".join(messages) for name, messages in form.errors.items()}
        return _detail(cluster_id, onboard_errors=errors, onboard_message="Check the form."), 422
    try:
        onboarding.start_onboarding(
            session,
            user,
            cluster,
            kubeconfig=form.kubeconfig.data or "",
            context=(form.context.data or "").strip() or None,
            api_key=(form.api_key.data or "").strip() or None,
            settings=settings_of(current_app),
            connection=redis_of(current_app),
        )
    except (ValidationError, ConflictError) as exc:
        return _detail(cluster_id, onboard_errors=dict(exc.fields), onboard_message=exc.message), exc.status
    return redirect(url_for("clusters.cluster_detail", cluster_id=cluster.id) + "#onboard-run")


@blueprint.route("/clusters/<uuid:cluster_id>/rotate-key", methods=["POST"])
@auth.login_required
def rotate_key(cluster_id: uuid.UUID) -> Response:
    user = auth.current_user()
    assert user is not None
    form = RotateForm()
    if not form.validate_on_submit():
        raise ValidationError("The form expired; reload the page and try again.")
    session = request_session()
    cluster = service.get_cluster(session, user, cluster_id)
    return _registered(service.rotate_api_key(session, user, cluster), rotated=True)

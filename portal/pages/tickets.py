"""Support ticket pages: list with filters, new ticket (cluster picker), detail with status flow, assignment,
comments timeline and the ticket's support sessions (list, live banner, replay links, and the "Start support
session" form for the assigned engineer or an admin; its helpers live in `portal.pages.sessions`).

Every read and change goes through `portal.services.tickets`, so tenancy (a customer user sees only
their customer's tickets; anything else is a 404) and the timeline entries stay in one place.
"""

from __future__ import annotations

import uuid

from flask import Blueprint, Response, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload
from wtforms import SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Optional

from portal import auth
from portal.auth import policy
from portal.errors import ConflictError, KaidenError, PermissionDenied, ValidationError
from portal.models import (
    Cluster,
    Node,
    SupportSession,
    Ticket,
    TicketPriority,
    TicketStatus,
    User,
    UserRole,
)
from portal.pages import sessions as session_pages
from portal.services import clusters as cluster_service
from portal.services import tickets as service
from portal.web import request_session

blueprint = Blueprint("tickets", __name__)

PRIORITIES = [p.value for p in TicketPriority]
STATUSES = [s.value for s in TicketStatus]
# The button text for a move along the status flow.
STATUS_ACTIONS = {
    TicketStatus.open: "Reopen",
    TicketStatus.in_progress: "Start work",
    TicketStatus.resolved: "Mark resolved",
    TicketStatus.closed: "Close",
}


class NewTicketForm(FlaskForm):
    title = StringField("Title", validators=[DataRequired(message="is required"), Length(max=255)])
    description = TextAreaField("Description", validators=[Optional(), Length(max=20_000)])
    priority = StringField("Priority", default=TicketPriority.normal.value)
    cluster_id = SelectField("Cluster", choices=[], validate_choice=False)
    node_id = SelectField("Node", choices=[], validate_choice=False)


class StatusForm(FlaskForm):
    status = StringField("Status", validators=[DataRequired()])
    version = StringField("Version", validators=[Optional()])


class AssignForm(FlaskForm):
    assigned_to = SelectField("Assignee", choices=[], validate_choice=False)
    version = StringField("Version", validators=[Optional()])


class CommentForm(FlaskForm):
    content = TextAreaField("Comment", validators=[DataRequired(message="must not be empty"), Length(max=20_000)])


def _user() -> User:
    user = auth.current_user()
    assert user is not None
    return user


def _uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


def _field_errors(exc: KaidenError) -> dict[str, str]:
    names = {
        "node_id": "node_id",
        "cluster_id": "cluster_id",
        "customer_id": "cluster_id",
        "assigned_to": "assigned_to",
    }
    return {names.get(key, key): text for key, text in exc.fields.items()}


def status_targets(user: User, ticket: Ticket) -> list[TicketStatus]:
    """The statuses `user` may move `ticket` to: the flow's next steps the role's policy allows."""
    role = UserRole(str(user.role))
    if "status" not in policy.TICKET_EDITABLE_FIELDS[role]:
        return []
    targets = service.allowed_transitions(ticket.status)
    if role == UserRole.customer:
        targets = targets & policy.TICKET_CUSTOMER_STATUS_TARGETS
    return sorted(targets, key=STATUSES.index)


def can_assign(user: User) -> bool:
    return "assigned_to_id" in policy.TICKET_EDITABLE_FIELDS[UserRole(str(user.role))]


def _staff(session: Session) -> list[User]:
    """Active engineers and admins: the people a ticket can be assigned to."""
    stmt = (
        select(User)
        .where(User.role.in_([UserRole.engineer, UserRole.admin]), User.is_active.is_(True))
        .order_by(User.name, User.email)
    )
    return list(session.scalars(stmt))


# ---------------------------------------------------------------- list


def _assignee_choices(session: Session, user: User) -> list[tuple[str, str]]:
    choices = [("", "Anyone"), ("none", "Unassigned")]
    if user.is_staff:
        choices.append(("me", "Me"))
        people = _staff(session)
    else:  # a customer user: the people working their customer's tickets
        ids = service.tickets_query(user).with_only_columns(Ticket.assigned_to_id).order_by(None)
        people = list(session.scalars(select(User).where(User.id.in_(ids)).order_by(User.name)))
    return choices + [(str(p.id), p.name or p.email) for p in people]


@blueprint.route("/tickets")
@auth.login_required
def ticket_list() -> tuple[str, int]:
    user = _user()
    session = request_session()
    args = request.args
    errors: dict[str, str] = {}
    status = args.get("status", "")
    priority = args.get("priority", "")
    cluster = args.get("cluster", "")
    assignee = args.get("assignee", "")
    text = args.get("q", "").strip()
    if status and status not in STATUSES:
        errors["status"] = "is not a ticket status"
    if priority and priority not in PRIORITIES:
        errors["priority"] = "is not a priority"
    cluster_id = _uuid(cluster)
    if cluster and cluster_id is None:
        errors["cluster"] = "is not a cluster id"
    assigned_to: service.AssigneeFilter | None = None
    if assignee in ("me", "none"):
        assigned_to = assignee  # type: ignore[assignment]
    elif assignee:
        assigned_to = _uuid(assignee)
        if assigned_to is None:
            errors["assignee"] = "must be a user, me or none"
    if len(text) > 200:
        errors["q"] = "must be at most 200 characters"
    rows: list[Ticket] = []
    if not errors:
        filters = service.TicketFilter(
            status=(TicketStatus(status),) if status else (),
            priority=(TicketPriority(priority),) if priority else (),
            cluster_id=cluster_id,
            assigned_to=assigned_to,
            search=text or None,
        )
        stmt = service.tickets_query(user, filters).options(
            selectinload(Ticket.customer), selectinload(Ticket.cluster), selectinload(Ticket.assigned_to)
        )
        rows = list(session.scalars(stmt))
    html = render_template(
        "tickets/list.html",
        tickets=rows,
        errors=errors,
        selected={"status": status, "priority": priority, "cluster": cluster, "assignee": assignee, "q": text},
        statuses=STATUSES,
        priorities=PRIORITIES,
        clusters=cluster_service.list_clusters(session, user),
        assignees=_assignee_choices(session, user),
        show_customer=user.is_staff,
    )
    return html, 422 if errors else 200


# ---------------------------------------------------------------- new


def _cluster_choices(session: Session, user: User) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    clusters = cluster_service.list_clusters(session, user)
    cluster_choices = [("", "Choose a cluster")] + [(str(c.id), c.name) for c in clusters]
    names = {c.id: c.name for c in clusters}
    # One query over the clusters already scoped to `user` (never a node of a cluster they cannot see).
    nodes = session.scalars(select(Node).where(Node.cluster_id.in_(list(names))).order_by(Node.name)) if names else []
    labelled = sorted(((str(n.id), f"{names[n.cluster_id]} / {n.name}") for n in nodes), key=lambda c: c[1])
    node_choices = [("", "No specific node"), *labelled]
    return cluster_choices, node_choices


@blueprint.route("/tickets/new", methods=["GET", "POST"])
@auth.login_required
def new_ticket() -> Response | tuple[str, int]:
    user = _user()
    session = request_session()
    form = NewTicketForm()
    form.cluster_id.choices, form.node_id.choices = _cluster_choices(session, user)
    if request.method == "GET" and request.args.get("cluster"):
        form.cluster_id.data = request.args["cluster"]
    errors: dict[str, str] = {}
    message = None
    if form.validate_on_submit():
        cluster_id = _uuid(form.cluster_id.data)
        node_id = _uuid(form.node_id.data)
        if form.priority.data not in PRIORITIES:
            errors["priority"] = "must be one of " + ", ".join(PRIORITIES)
        if cluster_id is None:
            errors["cluster_id"] = "choose a cluster"
        if form.node_id.data and node_id is None:
            errors["node_id"] = "is not a node"
        if not errors:
            try:
                ticket = service.create_ticket(
                    session,
                    user,
                    title=(form.title.data or "").strip(),
                    description=(form.description.data or "").strip() or None,
                    priority=TicketPriority(form.priority.data),
                    cluster_id=cluster_id,
                    node_id=node_id,
                )
            except ValidationError as exc:
                message = exc.message
                errors.update(_field_errors(exc))
            else:
                return redirect(url_for("tickets.ticket_detail", ticket_id=ticket.id))
    elif request.method == "POST":
        errors.update({name: "; ".join(messages) for name, messages in form.errors.items()})
        message = "Check the form." if "csrf_token" not in errors else "The form expired; reload the page."
    status = 422 if request.method == "POST" else 200
    return render_template("tickets/new.html", form=form, priorities=PRIORITIES, errors=errors, message=message), status


# ---------------------------------------------------------------- detail


def _detail(
    ticket_id: uuid.UUID, *, errors: dict[str, str] | None = None, message: str | None = None, comment: str = ""
) -> str:
    user = _user()
    session = request_session()
    ticket = service.get_ticket(session, user, ticket_id)
    sessions = list(
        session.scalars(
            select(SupportSession)
            .where(SupportSession.ticket_id == ticket.id)
            .order_by(SupportSession.created_at.desc(), SupportSession.id)
        )
    )
    return render_template(
        "tickets/detail.html",
        ticket=ticket,
        cluster=session.get(Cluster, ticket.cluster_id) if ticket.cluster_id else None,
        node=session.get(Node, ticket.node_id) if ticket.node_id else None,
        comments=service.list_comments(session, user, ticket.id),
        sessions=sessions,
        status_targets=status_targets(user, ticket),
        status_labels=STATUS_ACTIONS,
        assignees=_staff(session) if can_assign(user) else [],
        can_assign=can_assign(user),
        errors=errors or {},
        message=message,
        comment=comment,
        **session_pages.start_form_context(session, user, ticket),
    )


@blueprint.route("/tickets/<uuid:ticket_id>")
@auth.login_required
def ticket_detail(ticket_id: uuid.UUID) -> str:
    return _detail(ticket_id)


def _version(raw: str | None) -> int | None:
    return int(raw) if raw and raw.isdigit() else None


def _change(ticket_id: uuid.UUID, changes: dict, version: int | None) -> Response | tuple[str, int]:
    user = _user()
    session = request_session()
    ticket = service.get_ticket(session, user, ticket_id)
    try:
        service.update_ticket(session, user, ticket, changes, version=version)
    except (ValidationError, ConflictError, PermissionDenied) as exc:
        return _detail(ticket_id, errors=_field_errors(exc), message=exc.message), exc.status
    return redirect(url_for("tickets.ticket_detail", ticket_id=ticket_id) + "#timeline")


@blueprint.route("/tickets/<uuid:ticket_id>/status", methods=["POST"])
@auth.login_required
def change_status(ticket_id: uuid.UUID) -> Response | tuple[str, int]:
    form = StatusForm()
    if not form.validate_on_submit():
        return _detail(ticket_id, message="The form expired; reload the page and try again."), 400
    if form.status.data not in STATUSES:
        return _detail(ticket_id, errors={"status": "is not a ticket status"}, message="Invalid status."), 422
    return _change(ticket_id, {"status": TicketStatus(form.status.data)}, _version(form.version.data))


@blueprint.route("/tickets/<uuid:ticket_id>/assign", methods=["POST"])
@auth.login_required
def assign(ticket_id: uuid.UUID) -> Response | tuple[str, int]:
    form = AssignForm()
    if not form.validate_on_submit():
        return _detail(ticket_id, message="The form expired; reload the page and try again."), 400
    raw = form.assigned_to.data or ""
    assignee = _uuid(raw)
    if raw and assignee is None:
        return _detail(
            ticket_id, errors={"assigned_to": "must be an engineer or admin"}, message="Invalid assignee."
        ), 422
    return _change(ticket_id, {"assigned_to_id": assignee}, _version(form.version.data))


@blueprint.route("/tickets/<uuid:ticket_id>/comments", methods=["POST"])
@auth.login_required
def comment(ticket_id: uuid.UUID) -> Response | tuple[str, int]:
    user = _user()
    session = request_session()
    form = CommentForm()
    ticket = service.get_ticket(session, user, ticket_id)
    if not form.validate_on_submit():
        errors = {name: "; ".join(messages) for name, messages in form.errors.items()}
        return _detail(ticket_id, errors=errors, message="Check the comment.", comment=form.content.data or ""), 422
    try:
        service.add_comment(session, user, ticket, form.content.data or "")
    except ValidationError as exc:
        return _detail(ticket_id, errors=dict(exc.fields), message=exc.message, comment=form.content.data or ""), 422
    return redirect(url_for("tickets.ticket_detail", ticket_id=ticket_id) + "#timeline")

"""Support-session pages: `/sessions/<id>` (header, start progress, the engineer's browser terminal, End
session, the recording's player) and the session helpers the ticket page uses (who may start, end, replay).

Pages only render; starting, attaching, ending and fetching the recording go through the REST API from
`static/js/terminal.js` and `static/js/replay.js` (contract: docs/sessions.md). The terminal needs
xterm.js, which `scripts/setup` copies from npm into `static/vendor/`; without it the page still
renders and says how to install it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from flask import Blueprint, abort, current_app, render_template
from sqlalchemy.orm import Session

from portal import auth, settings_of
from portal.auth import policy
from portal.models import (
    Cluster,
    Node,
    SessionState,
    SupportSession,
    Ticket,
    TicketStatus,
    User,
)
from portal.services import sessions as session_service
from portal.tenancy import scoped
from portal.web import request_session

blueprint = Blueprint("sessions", __name__)

VENDOR_DIR = "vendor"
VENDOR_ASSETS = ("xterm.js", "xterm.css", "addon-fit.js")
ASSETS_MISSING = "terminal assets not installed — run scripts/setup"
# States in which the session page watches for changes (and the ticket page shows "live").
WATCHED_STATES = frozenset({SessionState.requested, SessionState.starting, SessionState.active, SessionState.ending})
LIVE_STATES = frozenset({SessionState.requested, SessionState.starting, SessionState.active})


def terminal_assets_installed() -> bool:
    """Whether xterm.js and its fit addon are in `static/vendor/` (checked per request: setup may run later)."""
    folder = Path(current_app.static_folder or "") / VENDOR_DIR
    return all((folder / name).is_file() for name in VENDOR_ASSETS)


# ---------------------------------------------------------------- who may do what (the API's policy decides)


def can_start_session(user: User, ticket: Ticket) -> bool:
    """Whether to offer the start form: the API's rule, on a ticket with a cluster that is not closed."""
    if ticket.cluster_id is None or ticket.status == TicketStatus.closed:
        return False
    return policy.can_start_session(user, ticket)


def can_end_session(user: User, support_session: SupportSession) -> bool:
    """The session's engineer, an admin, or anyone who may close the ticket; only while the session is open."""
    return support_session.state in LIVE_STATES and policy.can_end_session(user, support_session)


def has_recording(support_session: SupportSession) -> bool:
    return bool(support_session.recording_url or support_session.recording_path)


# ---------------------------------------------------------------- the ticket page's start form


@dataclass(frozen=True)
class NodeChoice:
    id: str
    name: str
    status: str
    agent_status: str
    available: bool
    reason: str  # why it cannot be picked ("" when it can)

    @property
    def label(self) -> str:
        text = f"{self.name} — {self.status} · agent {self.agent_status}"
        return f"{text} ({self.reason})" if self.reason else text


def node_choices(session: Session, user: User, ticket: Ticket) -> list[NodeChoice]:
    """The nodes of the ticket's cluster, each with whether a session can start there now."""
    if ticket.cluster_id is None:
        return []
    cluster = session.scalar(scoped(Cluster, user).where(Cluster.id == ticket.cluster_id))
    if cluster is None:
        return []
    nodes = session.scalars(scoped(Node, user).where(Node.cluster_id == cluster.id).order_by(Node.name))
    choices = []
    for node in nodes:
        reason = "; ".join(session_service.session_blockers(node, cluster))
        choices.append(
            NodeChoice(str(node.id), node.name, str(node.status), str(node.agent_status), not reason, reason)
        )
    return choices


def start_form_context(session: Session, user: User, ticket: Ticket) -> dict:
    """What tickets/detail.html needs for the sessions card (start form, live banner, replay links)."""
    settings = settings_of(current_app)
    can_start = can_start_session(user, ticket)
    return {
        "can_start_session": can_start,
        "session_nodes": node_choices(session, user, ticket) if can_start else [],
        "session_default_minutes": min(settings.session_default_minutes, settings.session_max_minutes),
        "session_max_minutes": settings.session_max_minutes,
        "session_live_states": LIVE_STATES,
        "session_can_replay": lambda s: has_recording(s) and policy.may_read_recording(user, s),
    }


# ---------------------------------------------------------------- the session page


@blueprint.route("/sessions/<uuid:session_id>")
@auth.login_required
def session_detail(session_id: uuid.UUID) -> str:
    user = auth.current_user()
    if user is None:  # login_required runs first; this only narrows the type
        abort(401)
    session = request_session()
    support_session = session_service.get_session(session, user, session_id)  # 404 for other customers
    ticket = session.get(Ticket, support_session.ticket_id)
    assert ticket is not None  # the session's ticket is visible: the session's scope goes through it
    state = SessionState(support_session.state)
    recording = has_recording(support_session)
    return render_template(
        "sessions/detail.html",
        support_session=support_session,
        ticket=ticket,
        node=support_session.node,
        engineer=support_session.engineer,
        state=str(state),
        operation=session_service.active_operation(session, support_session),
        starting=state in (SessionState.requested, SessionState.starting),
        watched=state in WATCHED_STATES,
        show_terminal=policy.can_attach(user, support_session) and state == SessionState.active,
        can_end=can_end_session(user, support_session),
        show_player=recording and policy.may_read_recording(user, support_session),
        recording_hidden=recording and not policy.may_read_recording(user, support_session),
        assets_installed=terminal_assets_installed(),
        assets_missing=ASSETS_MISSING,
        vendor=lambda name: f"{VENDOR_DIR}/{name}",
    )

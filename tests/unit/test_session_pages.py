"""Support-session pages: who sees the start form on the ticket page (and the node picker's states), the
customer's live banner, the session page's terminal, End session and recording player, tenancy, CSRF,
and rendering with and without the xterm.js assets in static/vendor/."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from portal.models import (
    AgentStatus,
    ClusterStatus,
    NodeStatus,
    SessionState,
    SessionTransport,
    SupportSession,
    TicketStatus,
    utcnow,
)
from portal.pages import sessions as session_pages
from tests import factories
from tests.unit.test_auth import csrf_from, login
from tests.unit.test_ticket_pages import _assert_labelled

VENDOR_SCRIPT = re.compile(r'<script src="/static/vendor/(xterm|addon-fit)\.js">')


@pytest.fixture()
def vendor(app, tmp_path: Path):
    """The app's static folder copied to a temp dir, so a test can install or remove the vendor assets."""
    static = tmp_path / "static"
    shutil.copytree(Path(app.static_folder), static, ignore=shutil.ignore_patterns("vendor"))
    app.static_folder = str(static)

    def install(present: bool = True) -> None:
        folder = static / "vendor"
        if present:
            folder.mkdir(exist_ok=True)
            for name in session_pages.VENDOR_ASSETS:
                (folder / name).write_text(f"/* {name} stand-in */\n")
        else:
            shutil.rmtree(folder, ignore_errors=True)

    install(True)
    return install


def _signed_in(client, db, user):
    db.commit()
    assert login(client, user.email).status_code == 302
    return client


def _as(app, db, user):
    """A fresh browser signed in as `user` (for tests that look through several people's eyes)."""
    return _signed_in(app.test_client(), db, user)


def _html(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.get_data(as_text=True)


def _section(html: str, marker: str) -> str:
    return html.split(marker, 1)[1].split("</section>", 1)[0]


def _online_cluster(db, customer=None, **kw):
    return factories.make_cluster(db, customer, status=ClusterStatus.online, **kw)


def _ready_node(db, cluster, **kw):
    kw.setdefault("agent_status", AgentStatus.online)
    return factories.make_node(db, cluster, **kw)


def _parties(db):
    """A customer with a user, an online cluster with one pickable node, an assigned engineer and a ticket."""
    customer = factories.make_customer(db)
    user = factories.make_user(db, customer=customer, name="Cara Customer")
    engineer = factories.make_engineer(db, name="Erin Engineer")
    cluster = _online_cluster(db, customer, name="prod")
    node = _ready_node(db, cluster, name="worker-a")
    ticket = factories.make_ticket(db, cluster=cluster, assigned_to=engineer, status=TicketStatus.in_progress)
    return customer, user, engineer, cluster, node, ticket


# ---------------------------------------------------------------- ticket page: the start form


def test_assigned_engineer_gets_the_start_form_with_node_states(client, db, settings):
    _, _, engineer, cluster, node, ticket = _parties(db)
    _ready_node(db, cluster, name="worker-b", status=NodeStatus.not_ready)
    _ready_node(db, cluster, name="worker-c", agent_status=AgentStatus.offline)
    # readiness unknown (a host outside Kubernetes, or a silent kubelet) with its agent online: the agent carries it
    host = _ready_node(db, cluster, name="worker-d", status=NodeStatus.unknown)
    _signed_in(client, db, engineer)

    html = _html(client.get(f"/tickets/{ticket.id}"))
    form = html.split('id="start-session-form"', 1)[1].split("</form>", 1)[0]
    assert f'data-ticket-id="{ticket.id}"' in html
    options = dict(re.findall(r'<option value="([^"]*)"[^>]*?((?:disabled)?)>', form.replace("\n", " ")))
    assert len(options) == 4
    assert options[str(node.id)] == ""  # the ready node with its agent online can be picked
    assert options[str(host.id)] == ""
    assert list(options.values()).count("disabled") == 2
    assert "worker-a — ready · agent online" in form
    assert "worker-b — not-ready · agent online (node worker-b is not-ready)" in form
    assert "worker-c — ready · agent offline (the agent on worker-c is offline)" in form
    assert "worker-d — unknown · agent online" in form
    assert 'value="ssh" checked' in form and 'value="web" checked' in form
    assert f'max="{settings.session_max_minutes}"' in form and f'value="{settings.session_default_minutes}"' in form
    for field in ("node_id", "services", "duration_minutes"):  # slots for the API's 422 field errors
        assert f'data-error-for="{field}"' in form
    assert "js/session_start.js" in html  # the start form is posted to the API by that module, not to a page
    _assert_labelled(html)


def test_admin_gets_the_form_others_do_not(app, db):
    _, user, engineer, _, _, ticket = _parties(db)
    colleague = factories.make_engineer(db)
    admin = factories.make_admin(db)
    closed = factories.make_ticket(db, cluster=ticket.cluster, assigned_to=engineer, status=TicketStatus.closed)
    no_cluster = factories.make_ticket(db, customer=ticket.customer, assigned_to=engineer)
    db.commit()

    def has_form(who, target=ticket) -> bool:
        client = _as(app, db, who)
        return 'id="start-session-form"' in _html(client.get(f"/tickets/{target.id}"))

    assert has_form(admin)
    assert not has_form(colleague)  # an engineer not assigned to the ticket
    assert not has_form(user)  # customers never start sessions
    assert has_form(engineer)
    assert not has_form(engineer, closed)
    assert not has_form(engineer, no_cluster)


def test_form_is_disabled_when_no_node_is_online(client, db):
    customer = factories.make_customer(db)
    engineer = factories.make_engineer(db)
    cluster = factories.make_cluster(db, customer, status=ClusterStatus.offline)
    _ready_node(db, cluster, name="worker-a")  # ready, but its cluster is offline
    ticket = factories.make_ticket(db, cluster=cluster, assigned_to=engineer)
    _signed_in(client, db, engineer)
    form = _html(client.get(f"/tickets/{ticket.id}")).split('id="start-session-form"', 1)[1].split("</form>", 1)[0]
    assert f"(cluster {cluster.name} is offline)" in form and "No node is online" in form
    assert re.search(r'id="start-session-button"\s+disabled', form)


# ---------------------------------------------------------------- ticket page: list, banner, links


def test_customer_sees_the_live_banner_while_a_session_is_active(client, db):
    _, user, engineer, _, node, ticket = _parties(db)
    live = factories.make_session(
        db, ticket=ticket, node=node, engineer=engineer, state=SessionState.active, started_at=utcnow()
    )
    _signed_in(client, db, user)
    html = _html(client.get(f"/tickets/{ticket.id}"))
    banner = html.split('id="live-session-banner"', 1)[1].split("</p>", 1)[0]
    assert "Live session in progress" in banner and "Erin Engineer" in banner and "worker-a" in banner
    assert f'href="/sessions/{live.id}"' in banner
    sessions = _section(html, 'id="sessions-h"')
    assert "status-active" in sessions and f'href="/sessions/{live.id}"' in sessions

    live.state, live.ended_at = SessionState.ended, utcnow()
    db.commit()
    html = _html(client.get(f"/tickets/{ticket.id}"))
    assert "Live session in progress" not in html and "status-ended" in html


def test_staff_see_no_banner_but_the_list(client, db):
    _, _, engineer, _, node, ticket = _parties(db)
    factories.make_session(db, ticket=ticket, node=node, engineer=engineer, state=SessionState.starting)
    _signed_in(client, db, engineer)
    html = _html(client.get(f"/tickets/{ticket.id}"))
    assert "Live session in progress" not in html and "status-starting" in html


def test_replay_links_for_the_tickets_parties_only(app, db):
    _, user, engineer, _, node, ticket = _parties(db)
    recorded = factories.make_session(
        db,
        ticket=ticket,
        node=node,
        engineer=engineer,
        state=SessionState.ended,
        ended_at=utcnow(),
        recording_url="/api/v1/sessions/x/recording",
    )
    unrecorded = factories.make_session(db, ticket=ticket, node=node, engineer=engineer, state=SessionState.failed)
    outsider = factories.make_engineer(db)
    db.commit()
    replay = f'href="/sessions/{recorded.id}#recording"'
    for who, sees in ((user, True), (engineer, True), (outsider, False)):
        sessions = _section(_html(_as(app, db, who).get(f"/tickets/{ticket.id}")), 'id="sessions-h"')
        assert (replay in sessions) is sees, who.email
        assert f'href="/sessions/{unrecorded.id}#recording"' not in sessions
        assert f'href="/sessions/{unrecorded.id}"' in sessions


# ---------------------------------------------------------------- the session page


def test_engineer_of_an_active_session_gets_the_terminal_and_end_button(client, db, vendor):
    _, _, engineer, _, node, ticket = _parties(db)
    active = factories.make_session(
        db, ticket=ticket, node=node, engineer=engineer, state=SessionState.active, started_at=utcnow()
    )
    _signed_in(client, db, engineer)
    html = _html(client.get(f"/sessions/{active.id}"))
    assert 'id="terminal"' in html and 'data-state="connecting"' in html
    assert 'id="terminal-reconnect"' in html
    assert 'id="end-session"' in html and 'id="end-dialog"' in html
    assert len(VENDOR_SCRIPT.findall(html)) == 2 and "/static/vendor/xterm.css" in html
    assert "/static/js/terminal.js" in html
    assert 'id="replay"' not in html  # nothing recorded yet
    facts = _section(html, 'id="session-facts-h"')
    assert "worker-a" in facts and "Erin Engineer" in facts and 'id="session-expires"' in facts
    assert ticket.ticket_number in facts and "relay" in facts
    assert 'name="csrf-token"' in html and csrf_from(html)  # the API calls send it as X-CSRFToken


def test_others_see_the_session_but_not_the_terminal(app, db, vendor):
    _, user, engineer, _, node, ticket = _parties(db)
    admin = factories.make_admin(db)
    active = factories.make_session(
        db, ticket=ticket, node=node, engineer=engineer, state=SessionState.active, started_at=utcnow()
    )
    db.commit()
    for who in (admin, user):
        html = _html(_as(app, db, who).get(f"/sessions/{active.id}"))
        assert 'id="terminal"' not in html and 'id="terminal-section"' not in html, who.email
        assert not VENDOR_SCRIPT.search(html)
        assert "worker-a" in html and "Erin Engineer" in html
        assert 'id="end-session"' in html  # admins, and whoever may close the ticket, may end it


def test_end_button_only_while_open_and_starting_shows_progress(client, db, vendor):
    _, _, engineer, _, node, ticket = _parties(db)
    starting = factories.make_session(db, ticket=ticket, node=node, engineer=engineer, state=SessionState.starting)
    operation = factories.make_operation(db, starting, kind="session.start", requested_by=engineer)
    ended = factories.make_session(
        db, ticket=ticket, node=node, engineer=engineer, state=SessionState.ended, ended_at=utcnow()
    )
    _signed_in(client, db, engineer)

    html = _html(client.get(f"/sessions/{starting.id}"))
    progress = html.split('id="session-progress"', 1)[1].split("</section>", 1)[0]
    assert f'data-operation-id="{operation.id}"' in progress and "Starting the session" in progress
    assert 'data-watch="true"' in html and 'id="end-session"' in html
    assert 'id="terminal"' not in html  # the terminal comes once the session is active

    html = _html(client.get(f"/sessions/{ended.id}"))
    assert 'id="end-session"' not in html and 'data-watch="false"' in html
    assert re.search(r'id="session-progress"[^>]*\bhidden\b', html)


def test_failed_session_shows_its_error(client, db):
    _, _, engineer, _, node, ticket = _parties(db)
    failed = factories.make_session(
        db, ticket=ticket, node=node, engineer=engineer, state=SessionState.failed, error_message="agent unreachable"
    )
    _signed_in(client, db, engineer)
    html = _html(client.get(f"/sessions/{failed.id}"))
    assert 'id="session-error"' in html and "agent unreachable" in html


def test_cloudflare_session_shows_its_public_hostname(client, db):
    _, _, engineer, _, node, ticket = _parties(db)
    tunnel = factories.make_session(
        db,
        ticket=ticket,
        node=node,
        engineer=engineer,
        state=SessionState.active,
        transport=SessionTransport.cloudflare,
        public_hostname="sess-abc.support.example",
    )
    _signed_in(client, db, engineer)
    html = _html(client.get(f"/sessions/{tunnel.id}"))
    assert 'data-field="public-hostname"' in html and "sess-abc.support.example" in html
    assert "Cloudflare Tunnel" in html


def test_replay_player_for_the_parties_when_a_recording_exists(app, db, vendor):
    _, user, engineer, _, node, ticket = _parties(db)
    outsider = factories.make_engineer(db)
    recorded = factories.make_session(
        db,
        ticket=ticket,
        node=node,
        engineer=engineer,
        state=SessionState.ended,
        ended_at=utcnow(),
        recording_url="/api/v1/sessions/x/recording",
    )
    db.commit()
    for who in (user, engineer):
        html = _html(_as(app, db, who).get(f"/sessions/{recorded.id}"))
        player = _section(html, 'id="recording"')
        assert f'data-recording-url="/api/v1/sessions/{recorded.id}/recording"' in player, who.email
        assert 'id="replay-play"' in player and 'id="replay-speed"' in player and 'id="replay-skip-idle"' in player
        assert {"1", "2", "4"} <= set(re.findall(r'<option value="(\d)"', player))
        assert "/static/js/replay.js" in html and len(VENDOR_SCRIPT.findall(html)) == 2
        assert 'id="terminal"' not in html  # ended: no live terminal
        _assert_labelled(player)

    html = _html(_as(app, db, outsider).get(f"/sessions/{recorded.id}"))
    assert 'id="replay"' not in html and 'id="recording-restricted"' in html
    assert "/static/js/replay.js" not in html


def test_pages_render_without_the_vendor_assets(client, db, vendor):
    vendor(False)
    _, _, engineer, _, node, ticket = _parties(db)
    active = factories.make_session(
        db, ticket=ticket, node=node, engineer=engineer, state=SessionState.active, started_at=utcnow()
    )
    recorded = factories.make_session(
        db,
        ticket=ticket,
        node=node,
        engineer=engineer,
        state=SessionState.ended,
        ended_at=utcnow(),
        recording_url="/api/v1/sessions/x/recording",
    )
    _signed_in(client, db, engineer)
    html = _html(client.get(f"/sessions/{active.id}"))
    assert "terminal assets not installed — run scripts/setup" in html
    assert 'id="terminal"' not in html and not VENDOR_SCRIPT.search(html) and "vendor/xterm.css" not in html
    assert 'id="end-session"' in html  # the rest of the page works
    html = _html(client.get(f"/sessions/{recorded.id}"))
    assert 'id="replay-assets-missing"' in html and 'id="replay"' not in html
    assert "/static/js/replay.js" not in html
    _html(client.get(f"/tickets/{ticket.id}"))  # the ticket page does not need them

    vendor(True)
    html = _html(client.get(f"/sessions/{active.id}"))  # installed later: picked up without a restart
    assert 'id="terminal"' in html and "terminal assets not installed" not in html


def test_other_customers_get_404_and_anonymous_visitors_the_login(client, db):
    _, _, engineer, _, node, ticket = _parties(db)
    support_session = factories.make_session(db, ticket=ticket, node=node, engineer=engineer)
    stranger = factories.make_user(db)  # a user of another customer
    db.commit()
    response = client.get(f"/sessions/{support_session.id}")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    _signed_in(client, db, stranger)
    assert client.get(f"/sessions/{support_session.id}").status_code == 404
    assert client.get(f"/tickets/{ticket.id}").status_code == 404
    assert client.get("/sessions/00000000-0000-0000-0000-000000000000").status_code == 404


def test_session_api_writes_need_the_csrf_header_with_a_cookie_session(client, db):
    """The pages' scripts send X-CSRFToken from the page's meta tag; without it a cookie-session write is refused."""
    _, _, engineer, _, node, ticket = _parties(db)
    active = factories.make_session(db, ticket=ticket, node=node, engineer=engineer, state=SessionState.active)
    _signed_in(client, db, engineer)
    token = csrf_from(_html(client.get(f"/sessions/{active.id}")))
    start = f"/api/v1/tickets/{ticket.id}/sessions"
    body = {"node_id": str(node.id), "services": ["ssh"], "duration_minutes": 30}
    attach = f"/api/v1/sessions/{active.id}/attach"
    for method, path, payload in (("POST", start, body), ("POST", attach, {"cols": 80, "rows": 24})):
        assert client.open(path, method=method, json=payload).status_code == 400, (method, path)
    assert client.delete(f"/api/v1/sessions/{active.id}").status_code == 400
    db.expire_all()
    assert db.get(SupportSession, active.id).state == SessionState.active  # nothing was ended

    # With the header the same calls reach the API's own rules (no job is queued by either).
    headers = {"X-CSRFToken": token}
    refused = client.post(start, json=body, headers=headers)
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "session_open"
    attached = client.post(attach, json={"cols": 80, "rows": 24}, headers=headers)
    assert attached.status_code == 201 and "/terminal?ticket=" in attached.get_json()["url"]

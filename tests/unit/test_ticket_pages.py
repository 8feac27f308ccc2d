"""Ticket pages: list filters and tenancy, the new-ticket form (and its field errors), the detail page's status
flow, assignment, comments timeline and sessions, and labelled inputs."""

from __future__ import annotations

import re

from sqlalchemy import func, select

from portal.models import (
    CommentType,
    SessionState,
    Ticket,
    TicketComment,
    TicketPriority,
    TicketStatus,
    utcnow,
)
from tests import factories
from tests.unit.test_auth import csrf_from, login


def _signed_in(client, db, user):
    db.commit()
    assert login(client, user.email).status_code == 302
    return client


def _html(response) -> str:
    return response.get_data(as_text=True)


def _token(client, url: str = "/tickets") -> str:
    return csrf_from(_html(client.get(url)))


def _ticket_count(db) -> int:
    db.expire_all()
    return db.scalar(select(func.count()).select_from(Ticket))


def _status_buttons(html: str) -> set[str]:
    return set(re.findall(r'data-status="([a-z_]+)"', html))


def _assert_labelled(html: str) -> None:
    """Every visible input, select and textarea has a <label for=...> naming its id."""
    labels = set(re.findall(r'<label for="([^"]+)"', html))
    controls = re.findall(r"<(input|select|textarea)\b([^>]*)>", html)
    checked = 0
    for tag, attrs in controls:
        if tag == "input" and re.search(r'type="(hidden|submit)"', attrs):
            continue
        match = re.search(r'\bid="([^"]+)"', attrs)
        assert match, f"<{tag}{attrs}> has no id"
        assert match.group(1) in labels, f"<{tag} id={match.group(1)}> has no label"
        checked += 1
    assert checked > 0


def test_list_filters_and_customers_see_only_their_own(client, db):
    customer = factories.make_customer(db)
    user = factories.make_user(db, customer=customer)
    engineer = factories.make_engineer(db, name="Erin Engineer")
    prod = factories.make_cluster(db, customer, name="prod")
    staging = factories.make_cluster(db, customer, name="staging")
    disk = factories.make_ticket(db, cluster=prod, title="Disk full on worker", priority=TicketPriority.urgent)
    dns = factories.make_ticket(
        db, cluster=staging, title="DNS flaps", status=TicketStatus.in_progress, assigned_to=engineer
    )
    theirs = factories.make_ticket(db, title="Another customer's secret problem")
    _signed_in(client, db, user)

    html = _html(client.get("/tickets"))
    assert disk.ticket_number in html and dns.ticket_number in html
    assert theirs.ticket_number not in html and "secret problem" not in html

    def numbers(query: str) -> set[str]:
        response = client.get(f"/tickets?{query}")
        assert response.status_code == 200
        found = set(re.findall(r"TKT-\d{8}-\d+", _html(response)))
        return found & {disk.ticket_number, dns.ticket_number, theirs.ticket_number}

    assert numbers("status=in_progress") == {dns.ticket_number}
    assert numbers("priority=urgent") == {disk.ticket_number}
    assert numbers(f"cluster={prod.id}") == {disk.ticket_number}
    assert numbers(f"assignee={engineer.id}") == {dns.ticket_number}
    assert numbers("assignee=none") == {disk.ticket_number}
    assert numbers("q=disk") == {disk.ticket_number}
    assert numbers("q=secret") == set()  # the other customer's ticket is never a search hit

    bad = client.get("/tickets?status=bogus")
    assert bad.status_code == 422 and "Status is not a ticket status." in _html(bad)

    assert client.get(f"/tickets/{theirs.id}").status_code == 404
    token = _token(client)
    assert client.post(f"/tickets/{theirs.id}/comments", data={"content": "hi", "csrf_token": token}).status_code == 404
    db.expire_all()
    assert db.scalar(select(func.count()).select_from(TicketComment)) == 0


def test_staff_see_every_customer_and_filter_by_me(client, db):
    engineer = factories.make_engineer(db)
    mine = factories.make_ticket(db, title="Mine", assigned_to=engineer)
    other = factories.make_ticket(db, title="Not mine")
    _signed_in(client, db, engineer)
    html = _html(client.get("/tickets"))
    assert mine.ticket_number in html and other.ticket_number in html
    html = _html(client.get("/tickets?assignee=me"))
    assert mine.ticket_number in html and other.ticket_number not in html


def test_create_ticket_through_the_form(client, db):
    customer = factories.make_customer(db)
    user = factories.make_user(db, customer=customer)
    cluster = factories.make_cluster(db, customer, name="prod-eu")
    node = factories.make_node(db, cluster, name="worker-a")
    foreign = factories.make_cluster(db, name="not-yours")
    _signed_in(client, db, user)

    page = client.get("/tickets/new")
    html = _html(page)
    assert page.status_code == 200
    assert "prod-eu" in html and "prod-eu / worker-a" in html and "not-yours" not in html
    _assert_labelled(html)

    response = client.post(
        "/tickets/new",
        data={
            "title": "Pods pending",
            "description": "Since 10:00",
            "priority": "high",
            "cluster_id": str(cluster.id),
            "node_id": str(node.id),
            "csrf_token": csrf_from(html),
        },
    )
    assert response.status_code == 302
    db.expire_all()
    ticket = db.scalars(select(Ticket)).one()
    assert response.headers["Location"].endswith(f"/tickets/{ticket.id}")
    assert (ticket.title, ticket.priority, ticket.cluster_id, ticket.node_id) == (
        "Pods pending",
        TicketPriority.high,
        cluster.id,
        node.id,
    )
    assert ticket.customer_id == customer.id and ticket.created_by_id == user.id
    detail = _html(client.get(f"/tickets/{ticket.id}"))
    assert "Pods pending" in detail and "Since 10:00" in detail and "worker-a" in detail

    # A foreign cluster is a 404 from the service's scoping, and nothing is created.
    token = _token(client, "/tickets/new")
    response = client.post(
        "/tickets/new",
        data={"title": "x", "priority": "normal", "cluster_id": str(foreign.id), "csrf_token": token},
    )
    assert response.status_code == 404
    assert _ticket_count(db) == 1


def test_engineer_files_a_ticket_for_a_customers_cluster(client, db):
    engineer = factories.make_engineer(db)
    cluster = factories.make_cluster(db, name="cust-cluster")
    _signed_in(client, db, engineer)
    html = _html(client.get("/tickets/new"))
    assert "cust-cluster" in html
    response = client.post(
        "/tickets/new",
        data={"title": "Proactive", "priority": "low", "cluster_id": str(cluster.id), "csrf_token": csrf_from(html)},
    )
    assert response.status_code == 302
    db.expire_all()
    ticket = db.scalars(select(Ticket)).one()
    assert ticket.customer_id == cluster.customer_id and ticket.priority == TicketPriority.low


def test_bad_form_rerenders_with_field_errors_and_creates_nothing(client, db):
    customer = factories.make_customer(db)
    user = factories.make_user(db, customer=customer)
    cluster = factories.make_cluster(db, customer)
    other_cluster = factories.make_cluster(db, customer)
    other_node = factories.make_node(db, other_cluster, name="elsewhere")
    _signed_in(client, db, user)
    token = _token(client, "/tickets/new")

    response = client.post(
        "/tickets/new", data={"title": "", "priority": "normal", "cluster_id": "", "csrf_token": token}
    )
    html = _html(response)
    assert response.status_code == 422
    assert 'id="title-error"' in html and "Title is required." in html
    assert 'aria-describedby="title-error"' in html

    response = client.post(
        "/tickets/new", data={"title": "No cluster", "priority": "normal", "cluster_id": "", "csrf_token": token}
    )
    html = _html(response)
    assert response.status_code == 422 and "Cluster choose a cluster." in html
    assert 'value="No cluster"' in html  # what was typed is kept

    response = client.post(
        "/tickets/new",
        data={
            "title": "Wrong node",
            "priority": "normal",
            "cluster_id": str(cluster.id),
            "node_id": str(other_node.id),
            "csrf_token": token,
        },
    )
    assert response.status_code == 422 and 'id="node-error"' in _html(response)

    response = client.post(
        "/tickets/new",
        data={"title": "Bad priority", "priority": "whenever", "cluster_id": str(cluster.id), "csrf_token": token},
    )
    assert response.status_code == 422 and 'id="priority-error"' in _html(response)

    response = client.post(
        "/tickets/new", data={"title": "No CSRF", "priority": "normal", "cluster_id": str(cluster.id)}
    )
    assert response.status_code == 400  # CSRF failure
    assert _ticket_count(db) == 0


def test_customer_closes_their_own_resolved_ticket(client, db):
    customer = factories.make_customer(db)
    user = factories.make_user(db, customer=customer)
    open_ticket = factories.make_ticket(db, customer=customer)
    resolved = factories.make_ticket(db, customer=customer, status=TicketStatus.resolved)
    _signed_in(client, db, user)

    # An open ticket: support moves it along, the customer gets no status buttons.
    assert _status_buttons(_html(client.get(f"/tickets/{open_ticket.id}"))) == set()
    token = _token(client)
    response = client.post(f"/tickets/{open_ticket.id}/status", data={"status": "in_progress", "csrf_token": token})
    assert response.status_code == 403
    db.expire_all()
    assert db.get(Ticket, open_ticket.id).status == TicketStatus.open

    html = _html(client.get(f"/tickets/{resolved.id}"))
    assert _status_buttons(html) == {"closed", "open"}
    response = client.post(
        f"/tickets/{resolved.id}/status",
        data={"status": "closed", "version": str(resolved.version), "csrf_token": csrf_from(html)},
    )
    assert response.status_code == 302
    db.expire_all()
    ticket = db.get(Ticket, resolved.id)
    assert ticket.status == TicketStatus.closed and ticket.closed_at is not None
    html = _html(client.get(f"/tickets/{resolved.id}"))
    assert 'data-type="status_change"' in html and "resolved → closed" in html
    assert _status_buttons(html) == {"open"}  # closed → only reopen
    assert 'id="assigned_to"' not in html  # customers do not assign


def test_engineer_assigns_and_moves_the_ticket(client, db):
    engineer = factories.make_engineer(db, name="Erin Engineer")
    colleague = factories.make_engineer(db, name="Cole Colleague")
    factories.make_user(db, name="Carl Customer")  # never an assignee choice
    ticket = factories.make_ticket(db)
    _signed_in(client, db, engineer)

    html = _html(client.get(f"/tickets/{ticket.id}"))
    old_version = ticket.version
    assert _status_buttons(html) == {"in_progress"}
    assert 'id="assigned_to"' in html and "Cole Colleague" in html and "Carl Customer" not in html
    _assert_labelled(html)
    response = client.post(
        f"/tickets/{ticket.id}/assign",
        data={"assigned_to": str(colleague.id), "version": str(ticket.version), "csrf_token": csrf_from(html)},
    )
    assert response.status_code == 302
    db.expire_all()
    assert db.get(Ticket, ticket.id).assigned_to_id == colleague.id
    html = _html(client.get(f"/tickets/{ticket.id}"))
    assert 'data-type="system"' in html and "Assigned to Cole Colleague." in html

    # A stale version (the page before the assignment) is a conflict, nothing changes.
    response = client.post(
        f"/tickets/{ticket.id}/status",
        data={"status": "in_progress", "version": str(old_version), "csrf_token": csrf_from(html)},
    )
    assert response.status_code == 409
    db.expire_all()
    assert db.get(Ticket, ticket.id).status == TicketStatus.open

    # A move the flow does not allow (open → closed) is a 422 with the status error; nothing changes.
    response = client.post(f"/tickets/{ticket.id}/status", data={"status": "closed", "csrf_token": csrf_from(html)})
    assert response.status_code == 422 and 'id="status-error"' in _html(response)
    db.expire_all()
    assert db.get(Ticket, ticket.id).status == TicketStatus.open

    # Assigning a customer user is a field error.
    customer_user = factories.make_user(db)
    db.commit()
    response = client.post(
        f"/tickets/{ticket.id}/assign", data={"assigned_to": str(customer_user.id), "csrf_token": csrf_from(html)}
    )
    assert response.status_code == 422 and 'id="assigned-error"' in _html(response)
    db.expire_all()
    assert db.get(Ticket, ticket.id).assigned_to_id == colleague.id

    response = client.post(
        f"/tickets/{ticket.id}/status", data={"status": "in_progress", "csrf_token": csrf_from(html)}
    )
    assert response.status_code == 302
    db.expire_all()
    assert db.get(Ticket, ticket.id).status == TicketStatus.in_progress
    assert _status_buttons(_html(client.get(f"/tickets/{ticket.id}"))) == {"resolved"}


def test_comment_appears_in_the_timeline(client, db):
    customer = factories.make_customer(db)
    user = factories.make_user(db, customer=customer, name="Cara Customer")
    ticket = factories.make_ticket(db, customer=customer)
    _signed_in(client, db, user)
    html = _html(client.get(f"/tickets/{ticket.id}"))
    _assert_labelled(html)

    response = client.post(f"/tickets/{ticket.id}/comments", data={"content": "   ", "csrf_token": csrf_from(html)})
    assert response.status_code == 422 and 'id="content-error"' in _html(response)

    response = client.post(
        f"/tickets/{ticket.id}/comments", data={"content": "It broke <again>", "csrf_token": csrf_from(html)}
    )
    assert response.status_code == 302
    db.expire_all()
    comments = list(db.scalars(select(TicketComment).where(TicketComment.ticket_id == ticket.id)))
    assert [(c.content, c.comment_type) for c in comments] == [("It broke <again>", CommentType.comment)]
    html = _html(client.get(f"/tickets/{ticket.id}"))
    assert "It broke &lt;again&gt;" in html and "Cara Customer" in html and 'data-type="comment"' in html


def test_sessions_section_lists_the_tickets_sessions(client, db):
    engineer = factories.make_engineer(db, name="Sam Sessions")
    cluster = factories.make_cluster(db)
    node = factories.make_node(db, cluster, name="node-7")
    ticket = factories.make_ticket(db, cluster=cluster)
    factories.make_session(
        db,
        ticket=ticket,
        node=node,
        engineer=engineer,
        state=SessionState.ended,
        started_at=utcnow(),
        ended_at=utcnow(),
    )
    _signed_in(client, db, engineer)
    html = _html(client.get(f"/tickets/{ticket.id}"))
    sessions = html.split('id="sessions-h"', 1)[1].split("</section>", 1)[0]
    assert "Sam Sessions" in sessions and "node-7" in sessions and "status-ended" in sessions
    assert "<form" not in sessions  # read-only for now


def test_list_page_inputs_are_labelled_and_nav_links_tickets(client, db):
    _signed_in(client, db, factories.make_user(db))
    html = _html(client.get("/tickets"))
    _assert_labelled(html)
    assert '<a href="/tickets">Tickets</a>' in html


def test_anonymous_visitors_are_sent_to_login(client, db):
    ticket = factories.make_ticket(db)
    db.commit()
    for url in ("/tickets", "/tickets/new", f"/tickets/{ticket.id}"):
        response = client.get(url)
        assert response.status_code == 302 and "/login" in response.headers["Location"]

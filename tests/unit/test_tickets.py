"""Ticket service: numbering, the status state machine, comments, role rules, optimistic locking, filters."""

from __future__ import annotations

import itertools
import re
import uuid

import pytest

from portal.auth import policy
from portal.errors import ConflictError, NotFound, PermissionDenied, ValidationError
from portal.models import AuthorType, CommentType, TicketPriority, TicketStatus, UserRole
from portal.services import tickets
from portal.services.tickets import TRANSITIONS, TicketFilter
from portal.tenancy import SYSTEM
from tests.factories import (
    make_admin,
    make_cluster,
    make_customer,
    make_engineer,
    make_node,
    make_ticket,
    make_user,
)

S = TicketStatus
VALID = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
INVALID = sorted((a, b) for a, b in itertools.permutations(S, 2) if (a, b) not in VALID)


def _status_changes(db, ticket):
    return [
        c for c in tickets.list_comments(db, make_admin(db), ticket.id) if c.comment_type == CommentType.status_change
    ]


# ---------------------------------------------------------------- create


def test_customer_creates_ticket_with_number_in_own_customer(db):
    user = make_user(db)
    cluster = make_cluster(db, user.customer)
    ticket = tickets.create_ticket(db, user, title="Node-02 cannot start", description="...", cluster_id=cluster.id)
    assert re.fullmatch(r"TKT-\d{8}-\d{3}", ticket.ticket_number)
    assert ticket.customer_id == user.customer_id
    assert ticket.status == S.open and ticket.priority == TicketPriority.normal
    assert ticket.created_by_id == user.id
    second = tickets.create_ticket(db, user, title="Another")
    assert second.ticket_number != ticket.ticket_number
    assert int(second.ticket_number[-3:]) == int(ticket.ticket_number[-3:]) + 1


def test_customer_cannot_file_on_foreign_cluster_or_customer(db):
    user = make_user(db)
    foreign = make_cluster(db)
    with pytest.raises(NotFound):
        tickets.create_ticket(db, user, title="x", cluster_id=foreign.id)
    with pytest.raises(ValidationError) as err:
        tickets.create_ticket(db, user, title="x", customer_id=foreign.customer_id)
    assert "customer_id" in err.value.fields
    with pytest.raises(PermissionDenied):
        tickets.create_ticket(db, user, title="x", assigned_to_id=make_engineer(db).id)


def test_staff_name_the_customer_or_a_cluster(db):
    engineer = make_engineer(db)
    with pytest.raises(ValidationError) as err:
        tickets.create_ticket(db, engineer, title="x")
    assert err.value.fields == {"customer_id": "is required (or give a cluster_id)"}
    cluster = make_cluster(db)
    node = make_node(db, cluster)
    ticket = tickets.create_ticket(db, engineer, title="x", node_id=node.id, assigned_to_id=engineer.id)
    assert (ticket.customer_id, ticket.cluster_id, ticket.assigned_to_id) == (
        cluster.customer_id,
        cluster.id,
        engineer.id,
    )
    with pytest.raises(ValidationError) as err:
        tickets.create_ticket(db, engineer, title="x", customer_id=make_customer(db).id, cluster_id=cluster.id)
    assert "cluster_id" in err.value.fields
    with pytest.raises(ValidationError) as err:
        tickets.create_ticket(db, engineer, title="x", cluster_id=make_cluster(db).id, node_id=node.id)
    assert "node_id" in err.value.fields


def test_only_staff_can_be_assigned(db):
    admin = make_admin(db)
    customer_user = make_user(db)
    with pytest.raises(ValidationError) as err:
        tickets.create_ticket(
            db, admin, title="x", customer_id=customer_user.customer_id, assigned_to_id=customer_user.id
        )
    assert "assigned_to" in err.value.fields


# ---------------------------------------------------------------- the state machine


def test_full_flow_writes_one_status_change_comment_per_step(db):
    engineer = make_engineer(db)
    ticket = make_ticket(db)
    for target in (S.in_progress, S.resolved, S.closed, S.open, S.in_progress, S.resolved, S.open):
        tickets.change_status(db, engineer, ticket, target)
        assert ticket.status == target
    changes = _status_changes(db, ticket)
    assert [(c.details["from"], c.details["to"]) for c in changes] == [
        ("open", "in_progress"),
        ("in_progress", "resolved"),
        ("resolved", "closed"),
        ("closed", "open"),
        ("open", "in_progress"),
        ("in_progress", "resolved"),
        ("resolved", "open"),
    ]
    assert all(c.author_id == engineer.id and c.author_type == AuthorType.engineer for c in changes)


def test_resolved_and_closed_timestamps_follow_the_status(db):
    engineer = make_engineer(db)
    ticket = make_ticket(db, status=S.in_progress)
    tickets.change_status(db, engineer, ticket, S.resolved)
    assert ticket.resolved_at is not None and ticket.closed_at is None
    tickets.change_status(db, engineer, ticket, S.closed)
    assert ticket.closed_at is not None
    tickets.change_status(db, engineer, ticket, S.open)
    assert ticket.resolved_at is None and ticket.closed_at is None


@pytest.mark.parametrize(("current", "target"), INVALID, ids=[f"{a.value}->{b.value}" for a, b in INVALID])
def test_every_invalid_transition_is_a_422_on_status_and_writes_nothing(db, current, target):
    admin = make_admin(db)
    ticket = make_ticket(db, status=current)
    version = ticket.version
    with pytest.raises(ValidationError) as err:
        tickets.change_status(db, admin, ticket, target)
    assert err.value.status == 422
    assert set(err.value.fields) == {"status"}
    assert f"from {current.value} to {target.value}" in err.value.fields["status"]
    db.flush()
    assert ticket.status == current and ticket.version == version
    assert _status_changes(db, ticket) == []


def test_same_status_is_not_a_transition(db):
    ticket = make_ticket(db)
    tickets.update_ticket(db, make_engineer(db), ticket, {"status": S.open})
    assert _status_changes(db, ticket) == [] and ticket.version == 1


def test_invalid_transition_leaves_other_fields_of_the_same_edit_unchanged(db):
    admin = make_admin(db)
    ticket = make_ticket(db, title="Before")
    with pytest.raises(ValidationError):
        tickets.update_ticket(db, admin, ticket, {"title": "After", "status": S.closed})
    assert ticket.title == "Before"


def test_customer_may_close_a_resolved_ticket_and_reopen_but_not_move_work_along(db):
    user = make_user(db)
    ticket = make_ticket(db, customer=user.customer, status=S.resolved)
    tickets.change_status(db, user, ticket, S.closed)
    tickets.change_status(db, user, ticket, S.open)
    assert [c.author_type for c in _status_changes(db, ticket)] == [AuthorType.customer, AuthorType.customer]
    with pytest.raises(PermissionDenied):
        tickets.change_status(db, user, ticket, S.in_progress)
    with pytest.raises(ValidationError):  # allowed target for a customer, but not from open
        tickets.change_status(db, user, ticket, S.closed)


# ---------------------------------------------------------------- edits: roles, comments, locking


def test_role_field_rules(db):
    engineer = make_engineer(db)
    user = make_user(db)
    ticket = make_ticket(db, customer=user.customer)
    with pytest.raises(PermissionDenied, match="title"):
        tickets.update_ticket(db, engineer, ticket, {"title": "New"})
    with pytest.raises(PermissionDenied, match="assigned_to"):
        tickets.update_ticket(db, user, ticket, {"assigned_to_id": engineer.id})
    tickets.update_ticket(db, user, ticket, {"title": "Clearer title", "description": "More", "priority": "high"})
    tickets.update_ticket(db, engineer, ticket, {"priority": "urgent", "assigned_to_id": engineer.id})
    assert (ticket.title, ticket.priority, ticket.assigned_to_id) == ("Clearer title", "urgent", engineer.id)
    # an unchanged field in the body is not a change, so it is not refused
    tickets.update_ticket(db, engineer, ticket, {"title": "Clearer title", "priority": "low"})
    assert ticket.priority == "low"


def test_assignment_and_priority_changes_write_system_comments(db):
    engineer = make_engineer(db, name="Eve Engineer")
    ticket = make_ticket(db)
    tickets.update_ticket(db, engineer, ticket, {"assigned_to_id": engineer.id, "priority": "high"})
    tickets.update_ticket(db, engineer, ticket, {"assigned_to_id": None})
    notes = [c for c in tickets.list_comments(db, engineer, ticket.id) if c.comment_type == CommentType.system]
    assert sorted(c.content for c in notes) == [
        "Assigned to Eve Engineer.",
        "Priority changed from normal to high.",
        "Unassigned.",
    ]
    assert all(c.author_type == AuthorType.system and c.author_id == engineer.id for c in notes)


def test_stale_version_is_a_409_and_changes_nothing(db):
    admin = make_admin(db)
    ticket = make_ticket(db, title="Original")
    tickets.update_ticket(db, admin, ticket, {"title": "First edit"}, version=1)
    assert ticket.version == 2
    with pytest.raises(ConflictError) as err:
        tickets.update_ticket(db, admin, ticket, {"title": "Lost update"}, version=1)
    assert err.value.status == 409 and err.value.code == "stale"
    with pytest.raises(ConflictError):
        tickets.change_status(db, admin, ticket, S.in_progress, version=1)
    assert ticket.title == "First edit" and ticket.status == S.open
    tickets.change_status(db, admin, ticket, S.in_progress, version=2)
    assert ticket.version == 3


def test_unknown_fields_are_refused(db):
    with pytest.raises(ValidationError) as err:
        tickets.update_ticket(db, make_admin(db), make_ticket(db), {"ticket_number": "TKT-1"})
    assert err.value.fields == {"ticket_number": "is not allowed"}


def test_comments_by_customer_and_engineer_and_system(db):
    user = make_user(db)
    engineer = make_engineer(db)
    ticket = make_ticket(db, customer=user.customer)
    first = tickets.add_comment(db, user, ticket, "  It broke again  ")
    second = tickets.add_comment(db, engineer, ticket, "Looking")
    third = tickets.add_system_comment(db, ticket, "Session started", {"session_id": "x"})
    assert (first.content, first.author_type, first.comment_type) == (
        "It broke again",
        AuthorType.customer,
        CommentType.comment,
    )
    assert (second.author_type, second.author_id) == (AuthorType.engineer, engineer.id)
    assert (third.author_type, third.author_id, third.comment_type) == (AuthorType.system, None, CommentType.system)
    assert {c.id for c in tickets.list_comments(db, user, ticket.id)} == {first.id, second.id, third.id}
    with pytest.raises(ValidationError):
        tickets.add_comment(db, user, ticket, "   ")


def test_foreign_tickets_are_not_found(db):
    user = make_user(db)
    foreign = make_ticket(db)
    with pytest.raises(NotFound):
        tickets.get_ticket(db, user, foreign.id)
    with pytest.raises(NotFound):
        tickets.add_comment(db, user, foreign, "hello")
    with pytest.raises(NotFound):
        tickets.list_comments(db, user, foreign.id)
    with pytest.raises(NotFound):
        tickets.get_ticket(db, user, uuid.uuid4())


# ---------------------------------------------------------------- filters


def test_filters(db):
    engineer = make_engineer(db)
    other_engineer = make_engineer(db)
    user = make_user(db)
    cluster = make_cluster(db, user.customer)
    a = make_ticket(db, customer=user.customer, cluster=cluster, title="Disk full on node-02", priority="high")
    b = make_ticket(
        db, customer=user.customer, title="Slow DNS", description="Resolution takes SECONDS", status=S.in_progress
    )
    c = make_ticket(db, title="Foreign", priority="urgent", assigned_to=engineer)
    b.assigned_to_id = engineer.id
    d = make_ticket(db, customer=user.customer, title="Done", status=S.closed, assigned_to=other_engineer)
    db.flush()

    def ids(actor, **kw):
        return {t.id for t in tickets.list_tickets(db, actor, TicketFilter(**kw))}

    assert ids(engineer) == {a.id, b.id, c.id, d.id}
    assert ids(user) == {a.id, b.id, d.id}  # never another customer's
    assert ids(engineer, status=[S.open, S.in_progress]) == {a.id, b.id, c.id}
    assert ids(engineer, priority=[TicketPriority.urgent]) == {c.id}
    assert ids(engineer, customer_id=user.customer_id) == {a.id, b.id, d.id}
    assert ids(user, customer_id=c.customer_id) == set()
    assert ids(engineer, cluster_id=cluster.id) == {a.id}
    assert ids(engineer, assigned_to=engineer.id) == {b.id, c.id}
    assert ids(engineer, assigned_to="me") == {b.id, c.id}
    assert ids(engineer, assigned_to="none") == {a.id}
    assert ids(engineer, search="seconds") == {b.id}
    assert ids(engineer, search="DISK") == {a.id}
    assert ids(engineer, search=a.ticket_number.lower()) == {a.id}
    assert ids(engineer, search="100%") == set()  # wildcards are literal
    assert ids(user, search="foreign") == set()
    assert ids(engineer, status=[S.open], customer_id=user.customer_id, priority=[TicketPriority.high]) == {a.id}
    newest_first = tickets.list_tickets(db, engineer)
    assert [t.created_at for t in newest_first] == sorted((t.created_at for t in newest_first), reverse=True)


def test_the_platform_moves_tickets_as_a_system_author(db):
    ticket = make_ticket(db, status=S.resolved)
    tickets.change_status(db, SYSTEM, ticket, S.closed)  # e.g. auto-close after a quiet period
    (change,) = _status_changes(db, ticket)
    assert (change.author_id, change.author_type) == (None, AuthorType.system)


def test_roles_cover_every_platform_role():
    assert set(policy.TICKET_EDITABLE_FIELDS) == set(UserRole)
    assert set(TRANSITIONS) == set(TicketStatus)

"""Support sessions API (docs/sessions.md) without a cluster: start, end, attach tickets, recordings, expiry."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from portal.models import (
    AgentStatus,
    ClusterStatus,
    NodeStatus,
    Operation,
    OperationState,
    SessionState,
    SessionTransport,
    SupportSession,
    TargetType,
    TicketStatus,
    utcnow,
)
from portal.queue import connect, default_queue
from portal.services import sessions as service
from portal.services.recordings import RecordingStore
from tests import factories


@pytest.fixture()
def world(db, as_user):
    customer = factories.make_customer(db)
    cluster = factories.make_cluster(db, customer, status=ClusterStatus.online)
    node = factories.make_node(db, cluster, name="node-01", agent_status=AgentStatus.online)
    other_cluster = factories.make_cluster(db, customer, status=ClusterStatus.online)
    other_node = factories.make_node(db, other_cluster, agent_status=AgentStatus.online)
    engineer = factories.make_engineer(db, name="Erin Engineer")
    ticket = factories.make_ticket(db, cluster=cluster, assigned_to=engineer)
    users = {
        "engineer": engineer,
        "other_engineer": factories.make_engineer(db),
        "admin": factories.make_admin(db),
        "customer": factories.make_user(db, customer=customer),
        "foreign": factories.make_user(db),
    }
    db.commit()
    return {
        "customer": customer,
        "cluster": cluster,
        "node": node,
        "other_node": other_node,
        "ticket": ticket,
        "users": users,
        "headers": {role: as_user(user) for role, user in users.items()},
    }


def _start(client, world, role="engineer", ticket=None, **body):
    payload = {"node_id": str(world["node"].id)}
    payload.update(body)
    ticket = ticket or world["ticket"]
    return client.post(f"/api/v1/tickets/{ticket.id}/sessions", json=payload, headers=world["headers"][role])


def _session(db, world, state=SessionState.active, engineer=None, **kw):
    support_session = factories.make_session(
        db,
        ticket=world["ticket"],
        node=world["node"],
        engineer=engineer or world["users"]["engineer"],
        state=state,
        **kw,
    )
    db.commit()
    return support_session


# ---------------------------------------------------------------- start


def test_assigned_engineer_starts_a_relay_session_and_its_job_is_queued(client, db, world, settings):
    before = utcnow()
    response = _start(client, world, services=["ssh"])
    assert response.status_code == 202, response.json
    assert set(response.json) == {"session", "operation"}
    session, operation = response.json["session"], response.json["operation"]
    assert session["state"] == "requested" and session["transport"] == "relay"
    assert session["services"] == ["ssh"]
    assert session["engineer_id"] == str(world["users"]["engineer"].id)
    assert session["node_id"] == str(world["node"].id) and session["ticket_id"] == str(world["ticket"].id)
    assert operation["kind"] == "session.start" and operation["state"] == "queued"
    assert operation["target_type"] == "session" and operation["target_id"] == session["id"]
    row = db.get(Operation, uuid.UUID(operation["id"]))
    assert row.customer_id == world["customer"].id  # scoped like the ticket
    stored = db.get(SupportSession, uuid.UUID(session["id"]))
    expires = stored.expires_at - before
    assert timedelta(minutes=60) <= expires < timedelta(minutes=61)  # KAIDEN_SESSION_DEFAULT_MINUTES
    job = default_queue(settings).fetch_job(operation["id"])
    assert job is not None and job.func_name == "portal.jobs.sessions.start_session_job"
    assert job.args == (operation["id"],)
    job.delete()


def test_who_may_start(client, db, world):
    unassigned = _start(client, world, role="other_engineer")
    assert unassigned.status_code == 403 and unassigned.json["error"]["code"] == "not_assigned"
    assert _start(client, world, role="customer").status_code == 403
    assert _start(client, world, role="foreign").status_code == 404  # another customer's ticket is not visible
    assert _start(client, world, role="admin").status_code == 202
    assert db.scalars(select(SupportSession)).all()[0].engineer_id == world["users"]["admin"].id


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"node_id": None}, {"node_id": None}),
        ({"node_id": "not-a-uuid"}, {"node_id": None}),
        ({"services": ["telnet"]}, {"services.0": "must be one of: ssh or web"}),
        ({"services": []}, {"services": "must have at least 1 items"}),
        ({"services": ["ssh", "ssh"]}, {"services": "must not repeat a service"}),
        ({"duration_minutes": 4}, {"duration_minutes": "must be at least 5"}),
        ({"duration_minutes": "long"}, {"duration_minutes": "must be a whole number"}),
        ({"colour": "red"}, {"colour": "is not allowed"}),
    ],
)
def test_start_validation_names_the_field(client, db, world, body, fields):
    response = _start(client, world, **body)
    assert response.status_code == 422, response.json
    error_fields = response.json["error"]["fields"]
    assert set(error_fields) == set(fields)
    for name, message in fields.items():
        assert message is None or error_fields[name] == message
    assert db.scalars(select(SupportSession)).all() == []


def test_missing_node_id_is_required(client, world):
    response = client.post(
        f"/api/v1/tickets/{world['ticket'].id}/sessions", json={}, headers=world["headers"]["engineer"]
    )
    assert response.status_code == 422 and response.json["error"]["fields"] == {"node_id": "is required"}


def test_duration_bounds_and_default(client, db, world, settings):
    too_long = _start(client, world, duration_minutes=settings.session_max_minutes + 1)
    assert too_long.status_code == 422
    assert too_long.json["error"]["fields"] == {"duration_minutes": f"must be at most {settings.session_max_minutes}"}
    ok = _start(client, world, duration_minutes=5)
    assert ok.status_code == 202
    stored = db.get(SupportSession, uuid.UUID(ok.json["session"]["id"]))
    assert timedelta(minutes=4, seconds=50) < stored.expires_at - utcnow() <= timedelta(minutes=5)


@pytest.mark.parametrize(("duration", "minutes"), [("1h30m", 90), ("2h", 120), ("45m", 45), (30, 30), ("25", 25)])
def test_duration_as_the_issue_names_it(client, db, world, duration, minutes):
    started = _start(client, world, duration=duration)
    assert started.status_code == 202, started.json
    stored = db.get(SupportSession, uuid.UUID(started.json["session"]["id"]))
    left = stored.expires_at - utcnow()
    assert timedelta(minutes=minutes) - timedelta(seconds=10) < left <= timedelta(minutes=minutes)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"duration": "soon"}, "must be minutes or a duration such as 90m, 2h or 1h30m"),
        ({"duration": "2m"}, "must be at least 5 minutes"),
        ({"duration": "9h"}, "must be at most 480"),
        ({"duration": "1h", "duration_minutes": 60}, "give duration or duration_minutes, not both"),
    ],
)
def test_bad_durations_name_the_duration_field(client, db, world, body, message):
    refused = _start(client, world, **body)
    assert refused.status_code == 422
    assert message in refused.json["error"]["fields"]["duration"]
    assert db.query(SupportSession).count() == 0  # nothing was created


def test_node_must_be_in_the_tickets_cluster(client, db, world):
    elsewhere = _start(client, world, node_id=str(world["other_node"].id))
    assert elsewhere.status_code == 422
    assert elsewhere.json["error"]["fields"] == {"node_id": "is not a node of the ticket's cluster"}
    missing = _start(client, world, node_id=str(uuid.uuid4()))
    assert missing.status_code == 422 and "node_id" in missing.json["error"]["fields"]
    no_cluster = factories.make_ticket(db, customer=world["customer"], assigned_to=world["users"]["engineer"])
    db.commit()
    response = _start(client, world, ticket=no_cluster)
    assert response.status_code == 422 and response.json["error"]["fields"] == {
        "node_id": "the ticket names no cluster"
    }


@pytest.mark.parametrize(
    ("target", "field", "value", "words"),
    [
        ("node", "agent_status", AgentStatus.offline, "the agent on node-01 is offline"),
        ("node", "status", NodeStatus.not_ready, "node node-01 is not-ready"),
        ("cluster", "status", ClusterStatus.offline, "is offline"),
    ],
)
def test_offline_node_is_a_409(client, db, world, target, field, value, words):
    setattr(world[target], field, value)
    db.commit()
    response = _start(client, world)
    assert response.status_code == 409
    assert response.json["error"]["code"] == "node_offline" and words in response.json["error"]["message"]


def test_a_node_of_unknown_readiness_with_its_agent_online_takes_a_session(client, db, world):
    """A host outside Kubernetes (reported from its agent alone) or a node whose kubelet went silent."""
    world["node"].status = NodeStatus.unknown
    db.commit()
    assert _start(client, world).status_code == 202
    world["node"].agent_status = AgentStatus.offline  # ...but never without its agent
    db.commit()
    refused = _start(client, world)
    assert refused.status_code == 409 and refused.json["error"]["code"] == "node_offline"


def test_no_session_on_a_closed_ticket(client, db, world):
    world["ticket"].status = TicketStatus.closed
    db.commit()
    response = _start(client, world)
    assert response.status_code == 409 and response.json["error"]["code"] == "ticket_closed"


def test_one_open_session_per_node_and_engineer(client, db, world):
    first = _start(client, world)
    assert first.status_code == 202
    first_id = first.json["session"]["id"]
    second = _start(client, world)
    assert second.status_code == 409
    assert second.json["error"]["code"] == "session_open"
    assert second.json["session_id"] == first_id and first_id in second.json["error"]["message"]
    assert _start(client, world, role="admin").status_code == 202  # another engineer on the same node is fine
    db.get(SupportSession, uuid.UUID(first_id)).state = SessionState.ended
    db.commit()
    assert _start(client, world).status_code == 202  # the first one is over


def test_transport_is_cloudflare_only_when_fully_configured(db, world, settings):
    configured = dataclasses.replace(
        settings,
        cloudflare_api_token="cf-token",
        cloudflare_account_id="acct",
        cloudflare_zone_id="zone",
        support_domain="support.example.test",
    )
    assert service.transport_for(settings) == SessionTransport.relay
    assert service.transport_for(configured) == SessionTransport.cloudflare
    assert service.transport_for(dataclasses.replace(configured, support_domain=None)) == SessionTransport.relay
    assert service.transport_for(dataclasses.replace(configured, cloudflare_zone_id=None)) == SessionTransport.relay
    engineer = world["users"]["engineer"]
    queue = default_queue(configured)
    started = service.start_session(
        db, engineer, world["ticket"].id, world["node"].id, None, None, settings=configured, queue=queue
    )
    assert started.session.transport == SessionTransport.cloudflare
    assert started.session.services == ["ssh", "web"]
    db.rollback()  # nothing was committed, so nothing was queued
    assert str(started.operation.id) not in queue.job_ids


# ---------------------------------------------------------------- end


def test_end_queues_an_end_operation_and_a_second_end_is_409(client, db, world, settings):
    support_session = _session(db, world)
    url = f"/api/v1/sessions/{support_session.id}"
    response = client.delete(url, headers=world["headers"]["engineer"])
    assert response.status_code == 202, response.json
    assert response.json["session"]["state"] == "ending"
    operation = response.json["operation"]
    assert operation["kind"] == "session.end" and operation["params"]["reason"] == "ended_by_user"
    job = default_queue(settings).fetch_job(operation["id"])
    assert job.func_name == "portal.jobs.sessions.end_session_job"
    job.delete()
    again = client.delete(url, headers=world["headers"]["admin"])
    assert again.status_code == 409
    assert again.json["error"]["code"] == "operation_running" and again.json["operation_id"] == operation["id"]
    # the end operation failed (e.g. Cloudflare unreachable): the session may be ended again
    row = db.get(Operation, uuid.UUID(operation["id"]))
    row.state = OperationState.failed
    db.commit()
    assert client.delete(url, headers=world["headers"]["admin"]).status_code == 202


@pytest.mark.parametrize("state", [SessionState.ended, SessionState.failed])
def test_ending_a_finished_session_is_409(client, db, world, state):
    support_session = _session(db, world, state=state)
    response = client.delete(f"/api/v1/sessions/{support_session.id}", headers=world["headers"]["engineer"])
    assert response.status_code == 409 and response.json["error"]["code"] == "session_ended"


def test_who_may_end(client, db, world):
    for role, status in [("foreign", 404), ("other_engineer", 202), ("customer", 202), ("admin", 202)]:
        support_session = _session(db, world, state=SessionState.requested)
        response = client.delete(f"/api/v1/sessions/{support_session.id}", headers=world["headers"][role])
        assert response.status_code == status, (role, response.json)


# ---------------------------------------------------------------- attach


def test_attach_gives_a_one_use_hashed_ticket_for_the_sessions_engineer(client, db, world, settings):
    support_session = _session(db, world)
    response = client.post(
        f"/api/v1/sessions/{support_session.id}/attach",
        json={"cols": 120, "rows": 40},
        headers=world["headers"]["engineer"],
    )
    assert response.status_code == 201, response.json
    assert response.json["expires_in"] == 60
    url = response.json["url"]
    prefix = f"{settings.gateway_url}/api/v1/sessions/{support_session.id}/terminal?ticket="
    assert url.startswith(prefix)
    ticket = url[len(prefix) :]
    assert len(ticket) >= 43  # 32 random bytes, urlsafe base64
    connection = connect(settings)
    key = service.attach_key(ticket)
    assert key.startswith("kaiden:attach:") and ticket not in key  # the raw ticket is not the key
    assert not connection.exists(ticket) and not connection.exists(f"kaiden:attach:{ticket}")
    assert 0 < connection.ttl(key) <= 60
    assert json.loads(connection.get(key)) == {
        "session_id": str(support_session.id),
        "user_id": str(world["users"]["engineer"].id),
        "cols": 120,
        "rows": 40,
    }
    grant = service.take_attach_ticket(connection, ticket)
    assert grant == service.AttachGrant(support_session.id, world["users"]["engineer"].id, 120, 40)
    assert service.take_attach_ticket(connection, ticket) is None  # one use
    second = client.post(
        f"/api/v1/sessions/{support_session.id}/attach", json={}, headers=world["headers"]["engineer"]
    ).json["url"]
    assert second != url and connection.get(service.attach_key(second.rsplit("=", 1)[1])) is not None


def test_attach_is_for_the_sessions_engineer_only_and_an_active_session(client, db, world):
    support_session = _session(db, world)
    url = f"/api/v1/sessions/{support_session.id}/attach"
    for role, status in [("admin", 403), ("other_engineer", 403), ("customer", 403), ("foreign", 404)]:
        response = client.post(url, json={}, headers=world["headers"][role])
        assert response.status_code == status, role
    refused = client.post(url, json={}, headers=world["headers"]["admin"])
    assert refused.json["error"]["code"] == "not_session_engineer"
    bad = client.post(url, json={"cols": 0, "rows": 5000}, headers=world["headers"]["engineer"])
    assert bad.status_code == 422 and set(bad.json["error"]["fields"]) == {"cols", "rows"}
    for state in (SessionState.requested, SessionState.starting, SessionState.ending, SessionState.ended):
        support_session.state = state
        db.commit()
        response = client.post(url, json={}, headers=world["headers"]["engineer"])
        assert response.status_code == 409 and response.json["error"]["code"] == "session_not_active"


def test_parse_attach_refuses_missing_or_malformed_grants():
    assert service.parse_attach(None) is None
    assert service.parse_attach(b"not json") is None
    assert service.parse_attach(json.dumps({"session_id": "x", "user_id": "y", "cols": 1, "rows": 1})) is None
    assert service.parse_attach(b'{"session_id": "%s"}' % str(uuid.uuid4()).encode()) is None
    sid, uid = uuid.uuid4(), uuid.uuid4()
    raw = json.dumps({"session_id": str(sid), "user_id": str(uid), "cols": 80, "rows": 24}).encode()
    assert service.parse_attach(raw) == service.AttachGrant(sid, uid, 80, 24)


# ---------------------------------------------------------------- recording


@pytest.fixture()
def store(settings):
    store = RecordingStore.from_settings(settings)
    created: list[uuid.UUID] = []
    yield store, created
    for session_id in created:
        store.delete(session_id)


def test_recording_is_served_to_the_tickets_parties(client, db, world, store):
    recordings, created = store
    support_session = _session(db, world, state=SessionState.ended)
    url = f"/api/v1/sessions/{support_session.id}/recording"
    none_yet = client.get(url, headers=world["headers"]["customer"])
    assert none_yet.status_code == 404 and none_yet.json["error"]["code"] == "no_recording"
    header = json.dumps({"version": 2, "width": 80, "height": 24, "timestamp": 1, "title": "t"}) + "\n"
    created.append(support_session.id)
    recordings.put_chunk(support_session.id, 0, (header + '[0.1, "o", "hello"]\n').encode())
    recordings.put_chunk(support_session.id, 1, b'[0.5, "o", " world"]\n')
    for role in ("customer", "engineer", "admin"):
        response = client.get(url, headers=world["headers"][role])
        assert response.status_code == 200, role
        assert response.mimetype == "application/x-asciicast"
        assert response.data == (header + '[0.1, "o", "hello"]\n[0.5, "o", " world"]\n').encode()
        assert "no-store" in response.headers["Cache-Control"]
    assert client.get(url, headers=world["headers"]["foreign"]).status_code == 404
    assert client.get(url, headers=world["headers"]["other_engineer"]).status_code == 403
    # the ticket's assignee reads the sessions of other engineers on the ticket
    other = _session(db, world, state=SessionState.ended, engineer=world["users"]["admin"])
    created.append(other.id)
    recordings.put_chunk(other.id, 0, header.encode())
    response = client.get(f"/api/v1/sessions/{other.id}/recording", headers=world["headers"]["engineer"])
    assert response.status_code == 200


# ---------------------------------------------------------------- ticket closed, expiry


def _end_operations(db, support_session):
    return db.scalars(
        select(Operation).where(
            Operation.kind == "session.end",
            Operation.target_type == TargetType.session,
            Operation.target_id == support_session.id,
        )
    ).all()


def test_closing_the_ticket_ends_its_open_sessions(client, db, world, settings):
    active = _session(db, world)
    requested = _session(db, world, state=SessionState.requested, engineer=world["users"]["admin"])
    finished = _session(db, world, state=SessionState.ended, engineer=world["users"]["other_engineer"])
    ticket = world["ticket"]
    ticket.status = TicketStatus.resolved
    db.commit()
    response = client.patch(
        f"/api/v1/tickets/{ticket.id}", json={"status": "closed"}, headers=world["headers"]["customer"]
    )
    assert response.status_code == 200, response.json
    db.expire_all()
    queue = default_queue(settings)
    for support_session in (active, requested):
        row = db.get(SupportSession, support_session.id)
        assert row.state == SessionState.ending and row.end_reason == "ticket_closed"
        (operation,) = _end_operations(db, row)
        assert operation.params["reason"] == "ticket_closed"
        assert operation.requested_by_id == world["users"]["customer"].id
        assert str(operation.id) in queue.job_ids
        queue.fetch_job(str(operation.id)).delete()
    assert db.get(SupportSession, finished.id).state == SessionState.ended
    assert _end_operations(db, finished) == []


def test_expire_due_ends_overdue_sessions_once(db, world, settings):
    now = utcnow()
    overdue = _session(db, world, expires_at=now - timedelta(seconds=1))
    overdue_requested = _session(
        db, world, state=SessionState.requested, engineer=world["users"]["admin"], expires_at=now - timedelta(minutes=1)
    )
    current = _session(db, world, engineer=world["users"]["other_engineer"], expires_at=now + timedelta(minutes=5))
    finished = _session(db, world, state=SessionState.ended, expires_at=now - timedelta(hours=1))
    queue = default_queue(settings)
    created = service.expire_due(db, now, queue)
    db.commit()
    assert {op.target_id for op in created} == {overdue.id, overdue_requested.id}
    assert all(op.params["reason"] == "expired" and op.requested_by_id is None for op in created)
    assert service.expire_due(db, now, queue) == []  # idempotent
    assert service.expire_due(db, now + timedelta(hours=1), queue)[0].target_id == current.id
    db.commit()
    db.expire_all()
    assert db.get(SupportSession, overdue.id).end_reason == "expired"
    assert _end_operations(db, finished) == []
    for operation in db.scalars(select(Operation).where(Operation.kind == "session.end")):
        assert len(_end_operations(db, db.get(SupportSession, operation.target_id))) == 1
        queue.fetch_job(str(operation.id)).delete()

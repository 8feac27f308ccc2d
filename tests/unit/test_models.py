"""The data model's own rules: constraints, optimistic locking, timestamps, secrets, ticket numbers, tenant links."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, inspect, select, text, update
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

import portal.models as m
from portal import database_of
from portal.crypto import REDACTED, hash_token
from portal.db import Base
from portal.errors import ValidationError
from tests import factories as f

VERSIONED = {
    "customers",
    "users",
    "workspaces",
    "workspace_members",
    "app_templates",
    "cloud_services",
    "backups",
    "clusters",
    "nodes",
    "tickets",
    "support_sessions",
    "operations",
}
APPEND_ONLY = {"api_tokens", "service_revisions", "service_activity_logs", "ticket_comments", "ticket_counters"}


def _expect_integrity_error(db: Session, obj: object) -> None:
    db.add(obj)
    with pytest.raises(IntegrityError):
        db.flush()
    db.rollback()


def test_every_table_is_plural_and_either_versioned_or_append_only() -> None:
    tables = set(Base.metadata.tables)
    assert tables == VERSIONED | APPEND_ONLY
    for mapper in Base.registry.mappers:
        table = mapper.local_table.name
        has_version = mapper.version_id_col is not None
        assert has_version == (table in VERSIONED), table


def test_factories_build_a_consistent_world(db: Session) -> None:
    session = f.make_session(db)
    operation = f.make_operation(db, session)
    db.commit()
    assert session.node.cluster is session.ticket.cluster
    assert session.ticket.customer is session.node.cluster.customer
    assert operation.customer_id == session.ticket.customer_id
    assert operation.target_type == m.TargetType.session
    assert session.version == 1 and operation.state == m.OperationState.queued


# ---------------------------------------------------------------- users


def test_email_is_stored_lowercase_and_unique_case_insensitively(db: Session) -> None:
    user = f.make_user(db, email="  Alice@Example.TEST ")
    db.commit()
    assert user.email == "alice@example.test"
    _expect_integrity_error(db, m.User(email="ALICE@example.test", name="Other", role=m.UserRole.engineer))


def test_database_rejects_an_uppercase_email_written_around_the_orm(db: Session) -> None:
    user = f.make_engineer(db)
    db.commit()
    with pytest.raises(IntegrityError):
        db.execute(update(m.User).where(m.User.id == user.id).values(email="UPPER@example.test"))
    db.rollback()


def test_customer_id_is_required_exactly_for_customer_users(db: Session) -> None:
    customer = f.make_customer(db)
    db.commit()
    _expect_integrity_error(db, m.User(email="c@example.test", name="C", role=m.UserRole.customer))
    _expect_integrity_error(
        db, m.User(email="e@example.test", name="E", role=m.UserRole.engineer, customer_id=customer.id)
    )
    assert f.make_user(db, m.UserRole.customer, customer).customer_id == customer.id
    assert f.make_admin(db).customer_id is None


def test_enum_values_are_checked_in_python_and_in_the_database(db: Session) -> None:
    ticket = f.make_ticket(db)
    db.commit()
    with pytest.raises(StatementError):
        db.execute(update(m.Ticket).where(m.Ticket.id == ticket.id).values(status="bogus"))
    db.rollback()
    with pytest.raises(IntegrityError):
        db.execute(text("UPDATE tickets SET status = 'bogus' WHERE ticket_number = :n"), {"n": ticket.ticket_number})
    db.rollback()
    assert db.get(m.Ticket, ticket.id).status is m.TicketStatus.open


def test_enums_match_the_seeds() -> None:
    # the seed's six, plus `deleted` (issue 4: a deleted service keeps its row and history; migration 0002)
    seed = ["pending", "deploying", "running", "error", "upgrading", "deleting"]
    assert [c.value for c in m.ServiceState] == [*seed, "deleted"]
    assert [s.value for s in m.ClusterStatus] == ["pending", "online", "offline"]
    assert [s.value for s in m.NodeStatus] == ["ready", "not-ready", "unknown"]
    assert [s.value for s in m.TicketStatus] == ["open", "in_progress", "resolved", "closed"]
    assert [s.value for s in m.TicketPriority] == ["low", "normal", "high", "urgent"]
    assert [s.value for s in m.CommentType] == ["comment", "system", "status_change"]
    assert [s.value for s in m.OperationState] == ["queued", "running", "succeeded", "failed", "cancelled"]
    assert list(m.APP_CATEGORY_LABELS.values()) == [
        "AI & LLM",
        "Automation",
        "Database",
        "Analytics",
        "DevOps",
        "Web",
        "Container",
    ]


# ---------------------------------------------------------------- uniqueness


def test_workspace_slug_is_unique_globally_and_members_once_per_workspace(db: Session) -> None:
    member = f.make_member(db, role="admin")
    db.commit()
    _expect_integrity_error(db, m.Workspace(customer_id=f.make_customer(db).id, name="x", slug=member.workspace.slug))
    workspace = db.get(m.Workspace, member.workspace_id)
    user = db.get(m.User, member.user_id)
    _expect_integrity_error(db, m.WorkspaceMember(workspace=workspace, user=user, role=m.WorkspaceRole.viewer))


def test_service_reference_is_unique_per_workspace_and_subdomain_globally(db: Session) -> None:
    service = f.make_service(db, reference_id="pg-01", subdomain="my-db")
    other_workspace = f.make_workspace(db)
    f.make_service(db, other_workspace, service.template, reference_id="pg-01")  # same reference elsewhere: fine
    db.commit()
    workspace = db.get(m.Workspace, service.workspace_id)
    template = db.get(m.AppTemplate, service.template_id)
    _expect_integrity_error(db, m.CloudService(workspace=workspace, template=template, name="x", reference_id="pg-01"))
    workspace = db.get(m.Workspace, service.workspace_id)
    template = db.get(m.AppTemplate, service.template_id)
    _expect_integrity_error(
        db, m.CloudService(workspace=workspace, template=template, name="x", reference_id="pg-02", subdomain="my-db")
    )


def test_node_name_is_unique_per_cluster(db: Session) -> None:
    node = f.make_node(db, name="node-01")
    f.make_node(db, name="node-01")  # another cluster
    db.commit()
    _expect_integrity_error(db, m.Node(cluster_id=node.cluster_id, name="node-01"))


def test_revision_number_is_unique_per_service(db: Session) -> None:
    revision = f.make_revision(db)
    db.commit()
    _expect_integrity_error(
        db, m.ServiceRevision(service_id=revision.service_id, revision=revision.revision, chart_version="1")
    )


def test_ticket_number_is_unique(db: Session) -> None:
    ticket = f.make_ticket(db)
    db.commit()
    _expect_integrity_error(db, m.Ticket(customer_id=ticket.customer_id, ticket_number=ticket.ticket_number, title="x"))


def test_operation_progress_stays_within_0_and_100(db: Session) -> None:
    operation = f.make_operation(db, progress=100)
    db.commit()
    with pytest.raises(IntegrityError):
        db.execute(update(m.Operation).where(m.Operation.id == operation.id).values(progress=101))
    db.rollback()


# ---------------------------------------------------------------- locking, timestamps, cascades


def test_optimistic_locking_rejects_a_concurrent_edit(app, db: Session) -> None:
    ticket = f.make_ticket(db)
    db.commit()
    assert ticket.version == 1
    database = database_of(app)
    with database.sessionmaker() as first, database.sessionmaker() as second:
        mine = first.get(m.Ticket, ticket.id)
        theirs = second.get(m.Ticket, ticket.id)
        mine.title = "first edit"
        first.commit()
        theirs.title = "second edit, based on a stale copy"
        with pytest.raises(StaleDataError):
            second.commit()
    db.expire_all()
    fresh = db.get(m.Ticket, ticket.id)
    assert (fresh.title, fresh.version) == ("first edit", 2)


def test_timestamps_are_aware_utc_and_updated_at_moves(db: Session) -> None:
    cluster = f.make_cluster(db)
    db.commit()
    db.expire_all()
    cluster = db.get(m.Cluster, cluster.id)
    assert cluster.created_at.tzinfo is not None and cluster.created_at.utcoffset() == timedelta(0)
    before = cluster.updated_at
    cluster.last_heartbeat = datetime(2024, 11, 24, 9, 0, tzinfo=UTC) + timedelta(hours=1)
    cluster.status = m.ClusterStatus.online
    db.commit()
    db.expire_all()
    cluster = db.get(m.Cluster, cluster.id)
    assert cluster.updated_at >= before
    assert cluster.last_heartbeat == datetime(2024, 11, 24, 10, 0, tzinfo=UTC)


def test_ids_exist_before_flush() -> None:
    customer = m.Customer(name="early")
    assert customer.id is not None
    assert m.Customer(name="x", id=customer.id).id == customer.id


def test_deleting_a_workspace_deletes_its_services_and_their_history(db: Session) -> None:
    service = f.make_service(db)
    f.make_revision(db, service)
    f.make_backup(db, service)
    f.make_activity(db, service)
    db.commit()
    db.delete(db.get(m.Workspace, service.workspace_id))
    db.commit()
    for model in (m.CloudService, m.ServiceRevision, m.Backup, m.ServiceActivityLog):
        assert db.scalar(select(func.count()).select_from(model)) == 0, model


# ---------------------------------------------------------------- cloud specifics


def test_workspace_quota_defaults_are_the_seed_resource_quota(db: Session) -> None:
    workspace = f.make_workspace(db)
    assert workspace.quota == m.DEFAULT_QUOTA
    assert workspace.namespace == f"paas-ws-{workspace.slug}"


def test_service_values_keep_passwords_encrypted_at_rest(db: Session) -> None:
    service = f.make_service(db, values={"auth.postgresPassword": "hunter2-secret", "auth.database": "shop"})
    db.commit()
    assert service.helm_values == {"auth.database": "shop"}
    raw = db.execute(text("SELECT helm_values, helm_secret_values FROM cloud_services")).one()
    assert "hunter2-secret" not in str(raw)
    db.expire_all()
    loaded = db.get(m.CloudService, service.id)
    assert loaded.user_values == {"auth.postgresPassword": "hunter2-secret", "auth.database": "shop"}
    assert loaded.stack_name == f"svc-{loaded.workspace.slug}-{loaded.reference_id}"


def test_template_secret_keys_come_from_password_specs(db: Session) -> None:
    template = f.make_template(db)
    assert template.secret_keys == {"auth.postgresPassword"}
    assert template.category_label == "Database"
    assert template.value_specs[0]["key"] == "auth.postgresPassword"


def test_activity_details_are_redacted(db: Session) -> None:
    service = f.make_service(db)
    entry = m.ServiceActivityLog.record(
        service,
        "config_updated",
        "values changed",
        {"changed": {"auth.postgresPassword": "s3cret", "auth.database": "shop"}, "api_token": "t"},
    )
    db.commit()
    assert entry.details == {
        "changed": {"auth.postgresPassword": REDACTED, "auth.database": "shop"},
        "api_token": REDACTED,
    }
    direct = f.make_activity(db, service, details={"admin_password": "x", "size": "8Gi"})
    assert direct.details == {"admin_password": REDACTED, "size": "8Gi"}


def test_cluster_api_key_is_stored_hashed(db: Session) -> None:
    cluster = f.make_cluster(db)
    key = cluster.plain_api_key
    assert key.startswith("kdc_") and cluster.api_key_hash == hash_token(key)
    assert key.startswith(cluster.api_key_prefix)
    raw = db.execute(text("SELECT api_key_hash, api_key_prefix FROM clusters")).one()
    assert key not in str(raw)


def test_api_token_usable_until_revoked_or_expired(db: Session) -> None:
    token, plain = f.make_api_token(db)
    now = m.utcnow()
    assert token.token_hash == hash_token(plain) and token.is_usable(now)
    token.expires_at = now - timedelta(seconds=1)
    assert not token.is_usable(now)
    token.expires_at, token.revoked_at = None, now
    assert not token.is_usable(now)


# ---------------------------------------------------------------- ticket numbers


def test_ticket_numbers_count_per_utc_day(db: Session) -> None:
    day1 = datetime(2024, 11, 24, 23, 59, tzinfo=UTC)
    assert m.allocate_ticket_number(db, day1) == "TKT-20241124-001"
    assert m.allocate_ticket_number(db, day1) == "TKT-20241124-002"
    # 00:30 in UTC+2 is still the 24th in UTC.
    from datetime import timezone

    assert m.allocate_ticket_number(db, datetime(2024, 11, 25, 0, 30, tzinfo=timezone(timedelta(hours=2)))) == (
        "TKT-20241124-003"
    )
    assert m.allocate_ticket_number(db, datetime(2024, 11, 25, 8, 0, tzinfo=UTC)) == "TKT-20241125-001"


def test_a_rolled_back_ticket_gives_its_number_back(db: Session) -> None:
    now = datetime(2030, 1, 2, tzinfo=UTC)
    assert m.allocate_ticket_number(db, now) == "TKT-20300102-001"
    db.commit()
    assert m.allocate_ticket_number(db, now) == "TKT-20300102-002"
    db.rollback()
    assert m.allocate_ticket_number(db, now) == "TKT-20300102-002"


# ---------------------------------------------------------------- links never cross tenants


def test_a_ticket_cannot_point_at_another_customers_cluster(db: Session) -> None:
    foreign = f.make_cluster(db)
    with pytest.raises(ValidationError):
        f.make_ticket(db, customer=f.make_customer(db), cluster=foreign)
    db.rollback()


def test_a_ticket_node_must_be_in_its_cluster(db: Session) -> None:
    cluster = f.make_cluster(db)
    other_cluster = f.make_cluster(db, cluster.customer)
    node = f.make_node(db, other_cluster)
    with pytest.raises(ValidationError):
        f.make_ticket(db, cluster=cluster, node=node)
    db.rollback()


def test_a_session_cannot_reach_another_customers_node(db: Session) -> None:
    ticket = f.make_ticket(db, cluster=f.make_cluster(db))
    foreign_node = f.make_node(db)
    with pytest.raises(ValidationError):
        f.make_session(db, ticket=ticket, node=foreign_node)
    db.rollback()


def test_assignees_and_session_engineers_are_staff(db: Session) -> None:
    ticket = f.make_ticket(db, cluster=f.make_cluster(db))
    ticket.assigned_to = f.make_user(db, m.UserRole.customer, ticket.customer)
    with pytest.raises(ValidationError):
        db.flush()
    db.rollback()
    ticket = f.make_ticket(db, cluster=f.make_cluster(db))
    with pytest.raises(ValidationError):
        f.make_session(db, ticket=ticket, engineer=f.make_user(db, m.UserRole.customer, ticket.customer))
    db.rollback()


def test_workspace_members_are_own_customer_users_or_staff(db: Session) -> None:
    workspace = f.make_workspace(db)
    assert f.make_member(db, workspace, f.make_engineer(db)).role == m.WorkspaceRole.member
    with pytest.raises(ValidationError):
        f.make_member(db, workspace, f.make_user(db))  # a user of another customer
    db.rollback()


def test_inspector_sees_the_models_tables(app) -> None:
    names = set(inspect(database_of(app).engine).get_table_names())
    assert set(Base.metadata.tables) <= names

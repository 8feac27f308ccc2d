"""Model factories for tests: `make_x(session, **overrides)` adds a valid row, flushes, and returns it.

Parents are created on demand (a service gets a workspace, a template and a customer unless
given), names are unique per process, and any column can be overridden by keyword.
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

from argon2 import PasswordHasher
from sqlalchemy.orm import Session

from portal.crypto import install_encryption, new_token
from portal.models import (
    ApiToken,
    AppCategory,
    AppTemplate,
    AuthorType,
    Backup,
    CloudService,
    Cluster,
    Customer,
    Node,
    NodeStatus,
    Operation,
    ServiceActivityLog,
    ServiceRevision,
    SupportSession,
    Ticket,
    TicketComment,
    User,
    UserRole,
    Workspace,
    WorkspaceMember,
    WorkspaceRole,
    allocate_ticket_number,
    utcnow,
)
from portal.tenancy import new_operation

_seq = itertools.count(1)
# Cheap argon2 parameters: verification reads them from the hash, so the portal verifies these too.
_fast_hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)

DEFAULT_PASSWORD = "correct horse battery staple"

POSTGRES_SPECS = {
    "required": [
        {"key": "auth.postgresPassword", "label": "Admin Password", "type": "password", "required": True},
        {"key": "auth.database", "label": "Database Name", "type": "text", "default_value": "app_db"},
    ],
    "optional": [
        {
            "key": "primary.persistence.size",
            "label": "Storage Size",
            "type": "select",
            "default_value": "8Gi",
            "options": ["8Gi", "16Gi", "32Gi"],
        }
    ],
}


def _n() -> int:
    return next(_seq)


TEST_ENCRYPTION_KEY = "4fVZ2LrMOOHfxd_wAKDUL3lx4Ugx_7vPFS6zCE5Yqz0="


def ensure_encryption(session: Session) -> None:
    """Install a key on the session's engine if the app has not (create_app normally does)."""
    bind = session.get_bind()
    engine = getattr(bind, "engine", bind)
    if getattr(engine.dialect, "kaiden_fernet", None) is None:
        install_encryption(engine, TEST_ENCRYPTION_KEY)


def _save(session: Session, obj: Any) -> Any:
    session.add(obj)
    session.flush()
    return obj


def hash_password_fast(password: str) -> str:
    return _fast_hasher.hash(password)


def make_customer(session: Session, **kw: Any) -> Customer:
    kw.setdefault("name", f"Customer {_n()}")
    return _save(session, Customer(**kw))


def make_user(
    session: Session,
    role: UserRole | str = UserRole.customer,
    customer: Customer | None = None,
    *,
    password: str | None = DEFAULT_PASSWORD,
    **kw: Any,
) -> User:
    """A user; a customer user gets a new customer unless one is given. `password=None` leaves no hash."""
    role = UserRole(role)
    if role == UserRole.customer and customer is None and "customer_id" not in kw:
        customer = make_customer(session)
    n = _n()
    kw.setdefault("email", f"{role.value}{n}@example.test")
    kw.setdefault("name", f"{role.value.title()} {n}")
    if password is not None:
        kw.setdefault("password_hash", hash_password_fast(password))
    return _save(session, User(role=role, customer=customer, **kw))


def make_admin(session: Session, **kw: Any) -> User:
    return make_user(session, UserRole.admin, **kw)


def make_engineer(session: Session, **kw: Any) -> User:
    return make_user(session, UserRole.engineer, **kw)


def make_api_token(session: Session, user: User | None = None, **kw: Any) -> tuple[ApiToken, str]:
    """A personal token row and its plain-text token."""
    user = user or make_user(session)
    issued = new_token("kdn")
    kw.setdefault("name", f"token {_n()}")
    row = _save(session, ApiToken(user=user, token_prefix=issued.prefix, token_hash=issued.hash, **kw))
    return row, issued.token


def make_workspace(session: Session, customer: Customer | None = None, **kw: Any) -> Workspace:
    if customer is None and "customer_id" not in kw:
        customer = make_customer(session)
    n = _n()
    kw.setdefault("name", f"Workspace {n}")
    kw.setdefault("slug", f"ws-{n}")
    return _save(session, Workspace(customer=customer, **kw))


def make_member(
    session: Session,
    workspace: Workspace | None = None,
    user: User | None = None,
    role: WorkspaceRole | str = WorkspaceRole.member,
    **kw: Any,
) -> WorkspaceMember:
    """A membership; the user defaults to a new customer user of the workspace's customer."""
    workspace = workspace or make_workspace(session)
    user = user or make_user(session, UserRole.customer, workspace.customer)
    return _save(session, WorkspaceMember(workspace=workspace, user=user, role=WorkspaceRole(role), **kw))


def make_template(session: Session, **kw: Any) -> AppTemplate:
    """A PostgreSQL-like template with one password value (`auth.postgresPassword`)."""
    n = _n()
    kw.setdefault("slug", f"app-{n}")
    kw.setdefault("name", f"App {n}")
    kw.setdefault("description", "A test application")
    kw.setdefault("category", AppCategory.database)
    kw.setdefault("tags", ["Database", "SQL"])
    kw.setdefault("monthly_price", 9.0)
    kw.setdefault("helm_repo_url", "https://charts.bitnami.com/bitnami")
    kw.setdefault("helm_chart_name", "postgresql")
    kw.setdefault("helm_chart_version", "15.5.0")
    kw.setdefault("helm_default_values", {"primary": {"persistence": {"enabled": True, "size": "8Gi"}}})
    kw.setdefault("helm_value_specs", POSTGRES_SPECS)
    kw.setdefault("default_port", 5432)
    return _save(session, AppTemplate(**kw))


def make_service(
    session: Session,
    workspace: Workspace | None = None,
    template: AppTemplate | None = None,
    *,
    values: dict[str, Any] | None = None,
    created_by: User | None = None,
    **kw: Any,
) -> CloudService:
    """A service (state pending); `values` are flat user values, password keys stored encrypted."""
    workspace = workspace or make_workspace(session)
    template = template or make_template(session)
    n = _n()
    kw.setdefault("name", f"Service {n}")
    kw.setdefault("reference_id", f"svc-{n}")
    kw.setdefault("subdomain", f"app-{n}")
    kw.setdefault("helm_chart_version", template.helm_chart_version)
    kw.setdefault("internal_port", template.default_port)
    ensure_encryption(session)
    service = CloudService(workspace=workspace, template=template, created_by=created_by, **kw)
    service.set_user_values(values or {"auth.database": "app_db"}, template.secret_keys)
    return _save(session, service)


def make_revision(session: Session, service: CloudService | None = None, **kw: Any) -> ServiceRevision:
    service = service or make_service(session)
    if "revision" not in kw:
        kw["revision"] = max((r.revision for r in service.revisions), default=0) + 1
    kw.setdefault("values", dict(service.helm_values))
    kw.setdefault("secret_values", service.helm_secret_values)
    kw.setdefault("chart_version", service.helm_chart_version or service.template.helm_chart_version)
    return _save(session, ServiceRevision(service=service, **kw))


def make_backup(session: Session, service: CloudService | None = None, **kw: Any) -> Backup:
    service = service or make_service(session)
    kw.setdefault("name", f"backup_{_n()}.tar.gz")
    return _save(session, Backup(service=service, **kw))


def make_activity(session: Session, service: CloudService | None = None, **kw: Any) -> ServiceActivityLog:
    service = service or make_service(session)
    kw.setdefault("event_type", "config_updated")
    kw.setdefault("message", "Configuration updated")
    return _save(session, ServiceActivityLog(service=service, **kw))


def make_cluster(session: Session, customer: Customer | None = None, **kw: Any) -> Cluster:
    """A cluster with a fresh API key; the plain key is on `cluster.plain_api_key` (not stored)."""
    if customer is None and "customer_id" not in kw:
        customer = make_customer(session)
    kw.setdefault("name", f"cluster-{_n()}")
    cluster = Cluster(customer=customer, **kw)
    issued = cluster.issue_api_key() if "api_key_hash" not in kw else None
    _save(session, cluster)
    cluster.plain_api_key = issued.token if issued else None  # type: ignore[attr-defined]
    return cluster


def make_node(session: Session, cluster: Cluster | None = None, **kw: Any) -> Node:
    cluster = cluster or make_cluster(session)
    n = _n()
    kw.setdefault("name", f"node-{n:02d}")
    kw.setdefault("status", NodeStatus.ready)
    kw.setdefault("internal_ip", f"10.0.{n // 250}.{n % 250 + 1}")
    kw.setdefault("cpu_capacity", "4")
    kw.setdefault("memory_capacity", "16Gi")
    return _save(session, Node(cluster=cluster, **kw))


def make_ticket(
    session: Session,
    customer: Customer | None = None,
    cluster: Cluster | None = None,
    created_by: User | None = None,
    **kw: Any,
) -> Ticket:
    """A ticket numbered by `allocate_ticket_number`; the customer follows the cluster or the creator."""
    if customer is None:
        if cluster is not None:
            customer = cluster.customer
        elif created_by is not None and created_by.customer is not None:
            customer = created_by.customer
        else:
            customer = make_customer(session)
    kw.setdefault("title", f"Ticket {_n()}")
    kw.setdefault("description", "Something is wrong")
    if "ticket_number" not in kw:
        kw["ticket_number"] = allocate_ticket_number(session, utcnow())
    return _save(session, Ticket(customer=customer, cluster=cluster, created_by=created_by, **kw))


def make_comment(
    session: Session, ticket: Ticket | None = None, author: User | None = None, **kw: Any
) -> TicketComment:
    ticket = ticket or make_ticket(session)
    kw.setdefault("content", f"Comment {_n()}")
    if "author_type" not in kw:
        if author is None:
            kw["author_type"] = AuthorType.system
        else:
            kw["author_type"] = AuthorType.customer if author.role == UserRole.customer else AuthorType.engineer
    return _save(session, TicketComment(ticket=ticket, author=author, **kw))


def make_session(
    session: Session,
    ticket: Ticket | None = None,
    node: Node | None = None,
    engineer: User | None = None,
    **kw: Any,
) -> SupportSession:
    """A support session (state requested) on a node of the ticket's cluster, run by an engineer."""
    if ticket is None:
        cluster = node.cluster if node is not None else make_cluster(session)
        ticket = make_ticket(session, cluster=cluster)
    if node is None:
        cluster = ticket.cluster or make_cluster(session, ticket.customer)
        node = make_node(session, cluster)
    engineer = engineer or make_engineer(session)
    ensure_encryption(session)
    kw.setdefault("expires_at", utcnow() + timedelta(hours=2))
    return _save(session, SupportSession(ticket=ticket, node=node, engineer=engineer, **kw))


def make_operation(
    session: Session,
    target: Any = None,
    kind: str = "service.deploy",
    requested_by: User | None = None,
    **kw: Any,
) -> Operation:
    """A queued operation on `target` (default: a new service); pass `target=False` for a platform operation."""
    if target is None:
        target = make_service(session)
    return new_operation(session, kind, None if target is False else target, requested_by, **kw)

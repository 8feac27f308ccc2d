"""Remote Support (seed 000 §4.1): clusters, nodes, tickets and their numbering, comments, support sessions."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from portal.crypto import EncryptedText, new_token
from portal.db import Base
from portal.models.base import CreatedMixin, IdMixin, TimestampMixin, UTCDateTime, VersionedMixin, enum_type

if TYPE_CHECKING:
    from portal.crypto import IssuedToken
    from portal.models.identity import Customer, User


class ClusterStatus(enum.StrEnum):
    pending = "pending"
    online = "online"
    offline = "offline"


class NodeStatus(enum.StrEnum):
    ready = "ready"
    not_ready = "not-ready"  # seed 000 spelling, as the controller reports it
    unknown = "unknown"


class AgentStatus(enum.StrEnum):
    online = "online"
    offline = "offline"


class TicketPriority(enum.StrEnum):
    low = "low"
    normal = "normal"
    high = "high"
    urgent = "urgent"


class TicketStatus(enum.StrEnum):
    open = "open"
    in_progress = "in_progress"
    resolved = "resolved"
    closed = "closed"


class CommentType(enum.StrEnum):
    comment = "comment"
    system = "system"
    status_change = "status_change"


class AuthorType(enum.StrEnum):
    customer = "customer"
    engineer = "engineer"
    system = "system"


class SessionState(enum.StrEnum):
    requested = "requested"
    starting = "starting"
    active = "active"
    ending = "ending"
    ended = "ended"
    failed = "failed"


OPEN_SESSION_STATES = frozenset({SessionState.requested, SessionState.starting, SessionState.active})


class SessionTransport(enum.StrEnum):
    cloudflare = "cloudflare"  # Cloudflare Tunnel + Access policy for the one engineer
    relay = "relay"  # through the portal's own gateway


class Cluster(IdMixin, TimestampMixin, VersionedMixin, Base):
    """A customer's Kubernetes cluster; its controller authenticates with an API key stored hashed."""

    __tablename__ = "clusters"
    __table_args__ = (UniqueConstraint("customer_id", "name"),)

    customer_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    api_key_prefix: Mapped[str] = mapped_column(String(32), nullable=False, index=True)
    api_key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    status: Mapped[ClusterStatus] = mapped_column(
        enum_type(ClusterStatus, "cluster_status"), nullable=False, default=ClusterStatus.pending, index=True
    )
    last_heartbeat: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    k8s_version: Mapped[str | None] = mapped_column(String(50), nullable=True)
    node_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    controller_version: Mapped[str | None] = mapped_column(String(50), nullable=True)

    customer: Mapped[Customer] = relationship(back_populates="clusters")
    nodes: Mapped[list[Node]] = relationship(
        back_populates="cluster", cascade="all, delete-orphan", passive_deletes=True, order_by="Node.name"
    )
    tickets: Mapped[list[Ticket]] = relationship(back_populates="cluster", passive_deletes=True)

    def issue_api_key(self) -> IssuedToken:
        """Set a new API key (hash + prefix) and return it: the caller shows `.token` once."""
        issued = new_token("kdc")
        self.api_key_prefix = issued.prefix
        self.api_key_hash = issued.hash
        return issued


class Node(IdMixin, TimestampMixin, VersionedMixin, Base):
    """A node of a cluster, as last reported by the controller and the node's agent."""

    __tablename__ = "nodes"
    __table_args__ = (UniqueConstraint("cluster_id", "name"),)

    cluster_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("clusters.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    status: Mapped[NodeStatus] = mapped_column(
        enum_type(NodeStatus, "node_status"), nullable=False, default=NodeStatus.unknown
    )
    internal_ip: Mapped[str | None] = mapped_column(String(45), nullable=True)
    agent_status: Mapped[AgentStatus] = mapped_column(
        enum_type(AgentStatus, "agent_status"), nullable=False, default=AgentStatus.offline
    )
    agent_version: Mapped[str | None] = mapped_column(String(50), nullable=True)
    cpu_capacity: Mapped[str | None] = mapped_column(String(50), nullable=True)
    memory_capacity: Mapped[str | None] = mapped_column(String(50), nullable=True)
    os_image: Mapped[str | None] = mapped_column(String(255), nullable=True)
    kernel_version: Mapped[str | None] = mapped_column(String(100), nullable=True)
    kubelet_version: Mapped[str | None] = mapped_column(String(50), nullable=True)
    architecture: Mapped[str | None] = mapped_column(String(32), nullable=True)
    roles: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, nullable=False, default=dict)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    cluster: Mapped[Cluster] = relationship(back_populates="nodes")


class TicketCounter(Base):
    """Last ticket sequence number handed out per UTC day (`YYYYMMDD`); see `allocate_ticket_number`."""

    __tablename__ = "ticket_counters"

    day: Mapped[str] = mapped_column(String(8), primary_key=True)
    last_value: Mapped[int] = mapped_column(Integer, nullable=False)


def allocate_ticket_number(session: Session, now: datetime) -> str:
    """The next `TKT-YYYYMMDD-NNN` for `now`'s UTC day, unique and gap-free under concurrency.

    One atomic upsert (`INSERT … ON CONFLICT DO UPDATE … RETURNING`) on the day's counter row:
    concurrent transactions queue on that row's lock (PostgreSQL) or the database write lock
    (SQLite), and a rolled-back ticket rolls its number back too. Call it in the transaction
    that inserts the ticket. NNN is zero-padded to three digits and simply grows past 999.
    """
    day = (now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)).strftime("%Y%m%d")
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        stmt = pg_insert(TicketCounter).values(day=day, last_value=1)
    elif dialect == "sqlite":
        stmt = sqlite_insert(TicketCounter).values(day=day, last_value=1)
    else:  # pragma: no cover - only the two supported databases
        raise RuntimeError(f"ticket numbering does not support {dialect}")
    stmt = stmt.on_conflict_do_update(
        index_elements=[TicketCounter.day], set_={"last_value": TicketCounter.last_value + 1}
    ).returning(TicketCounter.last_value)
    value = session.execute(stmt).scalar_one()
    return f"TKT-{day}-{value:03d}"


class Ticket(IdMixin, TimestampMixin, VersionedMixin, Base):
    """A support ticket. Status flow: open → in_progress → resolved → closed (reopen allowed)."""

    __tablename__ = "tickets"

    ticket_number: Mapped[str] = mapped_column(String(50), nullable=False, unique=True)
    customer_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), nullable=False, index=True
    )
    cluster_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("clusters.id", ondelete="SET NULL"), nullable=True, index=True
    )
    node_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("nodes.id", ondelete="SET NULL"), nullable=True)
    title: Mapped[str] = mapped_column(String(255), nullable=False)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    priority: Mapped[TicketPriority] = mapped_column(
        enum_type(TicketPriority, "ticket_priority"), nullable=False, default=TicketPriority.normal, index=True
    )
    status: Mapped[TicketStatus] = mapped_column(
        enum_type(TicketStatus, "ticket_status"), nullable=False, default=TicketStatus.open, index=True
    )
    assigned_to_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True, index=True
    )
    created_by_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    customer: Mapped[Customer] = relationship(back_populates="tickets")
    cluster: Mapped[Cluster | None] = relationship(back_populates="tickets")
    node: Mapped[Node | None] = relationship()
    assigned_to: Mapped[User | None] = relationship(foreign_keys=[assigned_to_id])
    created_by: Mapped[User | None] = relationship(foreign_keys=[created_by_id])
    comments: Mapped[list[TicketComment]] = relationship(
        back_populates="ticket",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="TicketComment.created_at",
    )
    sessions: Mapped[list[SupportSession]] = relationship(
        back_populates="ticket", cascade="all, delete-orphan", passive_deletes=True
    )


class TicketComment(IdMixin, CreatedMixin, Base):
    """A comment or log line on a ticket (append-only). Status changes carry `{"from", "to"}` in `details`."""

    __tablename__ = "ticket_comments"

    ticket_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tickets.id", ondelete="CASCADE"), nullable=False, index=True
    )
    content: Mapped[str] = mapped_column(Text, nullable=False)
    comment_type: Mapped[CommentType] = mapped_column(
        enum_type(CommentType, "comment_type"), nullable=False, default=CommentType.comment
    )
    author_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    author_type: Mapped[AuthorType] = mapped_column(enum_type(AuthorType, "author_type"), nullable=False)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)

    ticket: Mapped[Ticket] = relationship(back_populates="comments")
    author: Mapped[User | None] = relationship()


class SupportSession(IdMixin, TimestampMixin, VersionedMixin, Base):
    """One engineer's connection to one node for a ticket: a Pulumi stack (tunnel, DNS, Access) or the relay."""

    __tablename__ = "support_sessions"

    ticket_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tickets.id", ondelete="CASCADE"), nullable=False, index=True
    )
    node_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("nodes.id", ondelete="SET NULL"), nullable=True, index=True
    )
    engineer_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True, index=True
    )
    state: Mapped[SessionState] = mapped_column(
        enum_type(SessionState, "session_state"), nullable=False, default=SessionState.requested, index=True
    )
    transport: Mapped[SessionTransport] = mapped_column(
        enum_type(SessionTransport, "session_transport"), nullable=False, default=SessionTransport.relay
    )
    services: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=lambda: ["ssh", "web"])
    # Tunnel (seed 000) and the Cloudflare objects the session stack created.
    tunnel_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    tunnel_token: Mapped[str | None] = mapped_column(EncryptedText, nullable=True)
    public_hostname: Mapped[str | None] = mapped_column(String(255), nullable=True)
    dns_record_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    access_app_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    access_policy_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Time
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Recording (optional)
    recording_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    recording_path: Mapped[str | None] = mapped_column(String(1000), nullable=True)

    ticket: Mapped[Ticket] = relationship(back_populates="sessions")
    node: Mapped[Node | None] = relationship()
    engineer: Mapped[User | None] = relationship()

    @property
    def stack_name(self) -> str:
        return f"sess-{self.id}"

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_SESSION_STATES

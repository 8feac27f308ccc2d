"""Cloud Services (seed 002): workspaces and members, app templates, services, revisions, backups, activity."""

from __future__ import annotations

import enum
import secrets
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates

from portal.crypto import EncryptedJSON, redact
from portal.db import Base
from portal.models.base import CreatedMixin, IdMixin, TimestampMixin, UTCDateTime, VersionedMixin, enum_type

if TYPE_CHECKING:
    from portal.models.identity import Customer, User


class WorkspaceRole(enum.StrEnum):
    owner = "owner"
    admin = "admin"
    member = "member"
    viewer = "viewer"


# Higher rank includes the rights of every lower one (viewer read-only, member deploys, admin/owner delete).
WORKSPACE_ROLE_RANK = {WorkspaceRole.viewer: 1, WorkspaceRole.member: 2, WorkspaceRole.admin: 3, WorkspaceRole.owner: 4}


class AppCategory(enum.StrEnum):
    ai_llm = "ai_llm"
    automation = "automation"
    database = "database"
    analytics = "analytics"
    devops = "devops"
    web = "web"
    container = "container"


APP_CATEGORY_LABELS = {
    AppCategory.ai_llm: "AI & LLM",
    AppCategory.automation: "Automation",
    AppCategory.database: "Database",
    AppCategory.analytics: "Analytics",
    AppCategory.devops: "DevOps",
    AppCategory.web: "Web",
    AppCategory.container: "Container",
}


class ServiceState(enum.StrEnum):
    pending = "pending"
    deploying = "deploying"
    running = "running"
    error = "error"
    upgrading = "upgrading"
    deleting = "deleting"
    deleted = "deleted"  # the stack is gone; the row keeps the history


class RevisionKind(enum.StrEnum):
    install = "install"
    upgrade = "upgrade"
    rollback = "rollback"


class BackupStatus(enum.StrEnum):
    pending = "pending"
    in_progress = "in_progress"
    completed = "completed"
    failed = "failed"


class BackupType(enum.StrEnum):
    manual = "manual"
    scheduled = "scheduled"
    pre_update = "pre_update"
    upload = "upload"  # a volume archive uploaded by the user (Backups tab)


class ActivityEvent(enum.StrEnum):
    """Activity log event types: the seed's six, plus one per lifecycle step. Grows without a migration."""

    started = "started"
    stopped = "stopped"
    config_updated = "config_updated"
    alert = "alert"
    backup_created = "backup_created"
    backup_restored = "backup_restored"
    backup_deleted = "backup_deleted"
    backup_failed = "backup_failed"
    deploy_requested = "deploy_requested"
    deployed = "deployed"
    deploy_failed = "deploy_failed"
    upgrade_requested = "upgrade_requested"
    upgraded = "upgraded"
    upgrade_failed = "upgrade_failed"
    rollback_requested = "rollback_requested"
    rolled_back = "rolled_back"
    rollback_failed = "rollback_failed"
    delete_requested = "delete_requested"
    deleted = "deleted"
    delete_failed = "delete_failed"
    domain_updated = "domain_updated"


# Seed-002 ResourceQuota for a workspace namespace (Kubernetes quantities).
DEFAULT_QUOTA = {
    "requests.cpu": "8",
    "requests.memory": "16Gi",
    "limits.cpu": "16",
    "limits.memory": "32Gi",
    "persistentvolumeclaims": "10",
    "requests.storage": "100Gi",
    "pods": "100",
}


class Workspace(IdMixin, TimestampMixin, VersionedMixin, Base):
    """A customer's space for Cloud Services: one Kubernetes namespace with a ResourceQuota.

    `slug` is unique globally (it names the namespace and the Pulumi stacks).
    """

    __tablename__ = "workspaces"

    customer_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    slug: Mapped[str] = mapped_column(String(40), nullable=False, unique=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    quota_requests_cpu: Mapped[str] = mapped_column(String(32), nullable=False, default="8")
    quota_requests_memory: Mapped[str] = mapped_column(String(32), nullable=False, default="16Gi")
    quota_limits_cpu: Mapped[str] = mapped_column(String(32), nullable=False, default="16")
    quota_limits_memory: Mapped[str] = mapped_column(String(32), nullable=False, default="32Gi")
    quota_requests_storage: Mapped[str] = mapped_column(String(32), nullable=False, default="100Gi")
    quota_pvcs: Mapped[int] = mapped_column(Integer, nullable=False, default=10)
    quota_pods: Mapped[int] = mapped_column(Integer, nullable=False, default=100)

    customer: Mapped[Customer] = relationship(back_populates="workspaces")
    members: Mapped[list[WorkspaceMember]] = relationship(
        back_populates="workspace", cascade="all, delete-orphan", passive_deletes=True
    )
    services: Mapped[list[CloudService]] = relationship(
        back_populates="workspace", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def namespace(self) -> str:
        """The Kubernetes namespace of this workspace."""
        return f"paas-ws-{self.slug}"

    @property
    def quota(self) -> dict[str, str]:
        """The ResourceQuota `spec.hard` for the namespace."""
        return {
            "requests.cpu": self.quota_requests_cpu,
            "requests.memory": self.quota_requests_memory,
            "limits.cpu": self.quota_limits_cpu,
            "limits.memory": self.quota_limits_memory,
            "persistentvolumeclaims": str(self.quota_pvcs),
            "requests.storage": self.quota_requests_storage,
            "pods": str(self.quota_pods),
        }


class WorkspaceMember(IdMixin, TimestampMixin, VersionedMixin, Base):
    __tablename__ = "workspace_members"
    __table_args__ = (UniqueConstraint("workspace_id", "user_id"),)

    workspace_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), nullable=False, index=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    role: Mapped[WorkspaceRole] = mapped_column(enum_type(WorkspaceRole, "workspace_role"), nullable=False)

    workspace: Mapped[Workspace] = relationship(back_populates="members")
    user: Mapped[User] = relationship(back_populates="memberships")


class AppTemplate(IdMixin, TimestampMixin, VersionedMixin, Base):
    """A marketplace entry (seed 002 CloudAppTemplate): a Helm chart plus the values a user may set.

    `helm_value_specs` is `{"required": [HelmValueSpec...], "optional": [...]}`; a spec is
    `{key, label, type: text|password|number|boolean|select, default_value?, placeholder?,
    help_text?, required?, options?}`. Templates are global (not tenant-owned).
    """

    __tablename__ = "app_templates"

    slug: Mapped[str] = mapped_column(String(100), nullable=False, unique=True)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    icon_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    description: Mapped[str | None] = mapped_column(String(255), nullable=True)
    full_description: Mapped[str | None] = mapped_column(Text, nullable=True)
    category: Mapped[AppCategory] = mapped_column(enum_type(AppCategory, "app_category"), nullable=False, index=True)
    tags: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    monthly_price: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    documentation_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    helm_repo_url: Mapped[str] = mapped_column(String(500), nullable=False)
    helm_chart_name: Mapped[str] = mapped_column(String(255), nullable=False)
    helm_chart_version: Mapped[str] = mapped_column(String(64), nullable=False)
    helm_default_values: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    helm_value_specs: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    default_port: Mapped[int] = mapped_column(Integer, nullable=False, default=80)
    ingress_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    min_vcpu: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    min_ram_gb: Mapped[float] = mapped_column(Float, nullable=False, default=1.0)
    min_storage_gb: Mapped[int] = mapped_column(Integer, nullable=False, default=5)
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)

    services: Mapped[list[CloudService]] = relationship(back_populates="template")

    @property
    def category_label(self) -> str:
        return APP_CATEGORY_LABELS[AppCategory(self.category)]

    @property
    def value_specs(self) -> list[dict[str, Any]]:
        """Required then optional HelmValueSpecs, as one list."""
        specs = self.helm_value_specs or {}
        return [*specs.get("required", []), *specs.get("optional", [])]

    @property
    def secret_keys(self) -> frozenset[str]:
        """Keys of password-type values: stored encrypted and redacted everywhere."""
        return frozenset(spec["key"] for spec in self.value_specs if spec.get("type") == "password")


def split_secret_values(values: dict[str, Any], secret_keys: frozenset[str] | set[str]) -> tuple[dict, dict]:
    """Split flat user values (`{"auth.password": ...}`) into (plain, secret) by `secret_keys`."""
    plain = {k: v for k, v in values.items() if k not in secret_keys}
    secret = {k: v for k, v in values.items() if k in secret_keys}
    return plain, secret


def _deployment_id() -> str:
    return str(1000 + secrets.randbelow(9000))


class CloudService(IdMixin, TimestampMixin, VersionedMixin, Base):
    """A deployed app (seed 002 CloudService): one Helm release in its workspace's namespace, one Pulumi stack.

    User values are a flat mapping of HelmValueSpec keys: non-secret ones in `helm_values`,
    password-type ones encrypted in `helm_secret_values`; `user_values` merges them. Use
    `set_user_values()` so a password never lands in the plain column.
    """

    __tablename__ = "cloud_services"
    __table_args__ = (UniqueConstraint("workspace_id", "reference_id"),)

    workspace_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), nullable=False, index=True
    )
    template_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("app_templates.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    # Identity
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    reference_id: Mapped[str] = mapped_column(String(63), nullable=False)
    deployment_id: Mapped[str] = mapped_column(String(32), nullable=False, default=_deployment_id)
    # State
    state: Mapped[ServiceState] = mapped_column(
        enum_type(ServiceState, "service_state"), nullable=False, default=ServiceState.pending, index=True
    )
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Network
    subdomain: Mapped[str | None] = mapped_column(String(63), nullable=True, unique=True)
    custom_domain: Mapped[str | None] = mapped_column(String(255), nullable=True, unique=True)
    public_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    internal_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    is_private_network: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # Helm release
    helm_release_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    helm_namespace: Mapped[str | None] = mapped_column(String(63), nullable=True)
    helm_values: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    helm_secret_values: Mapped[dict[str, Any] | None] = mapped_column(EncryptedJSON, nullable=True)
    helm_revision: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    helm_chart_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Resources
    allocated_vcpu: Mapped[int | None] = mapped_column(Integer, nullable=True)
    allocated_ram_gb: Mapped[float | None] = mapped_column(Float, nullable=True)
    allocated_storage_gb: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Infrastructure
    k8s_cluster: Mapped[str] = mapped_column(String(100), nullable=False, default="default")
    region: Mapped[str] = mapped_column(String(64), nullable=False, default="us-east-1")
    created_by_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    deployed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_upgraded_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    workspace: Mapped[Workspace] = relationship(back_populates="services")
    template: Mapped[AppTemplate] = relationship(back_populates="services")
    created_by: Mapped[User | None] = relationship()
    revisions: Mapped[list[ServiceRevision]] = relationship(
        back_populates="service",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="ServiceRevision.revision",
    )
    backups: Mapped[list[Backup]] = relationship(
        back_populates="service", cascade="all, delete-orphan", passive_deletes=True
    )
    activity: Mapped[list[ServiceActivityLog]] = relationship(
        back_populates="service", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def user_values(self) -> dict[str, Any]:
        """All user-provided values (secrets decrypted): handle with care, never log."""
        return {**(self.helm_values or {}), **(self.helm_secret_values or {})}

    def set_user_values(self, values: dict[str, Any], secret_keys: frozenset[str] | set[str]) -> None:
        """Store flat user values, password-type keys (`template.secret_keys`) encrypted."""
        plain, secret = split_secret_values(values, secret_keys)
        self.helm_values = plain
        self.helm_secret_values = secret or None

    @property
    def stack_name(self) -> str:
        """The Pulumi stack (and Helm release) name: `svc-<workspace slug>-<reference id>`."""
        return f"svc-{self.workspace.slug}-{self.reference_id}"


class ServiceRevision(IdMixin, CreatedMixin, Base):
    """The inputs of one deployment of a service, kept so a rollback can re-apply them."""

    __tablename__ = "service_revisions"
    __table_args__ = (UniqueConstraint("service_id", "revision"),)

    service_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("cloud_services.id", ondelete="CASCADE"), nullable=False, index=True
    )
    revision: Mapped[int] = mapped_column(Integer, nullable=False)
    kind: Mapped[RevisionKind] = mapped_column(
        enum_type(RevisionKind, "revision_kind"), nullable=False, default=RevisionKind.install
    )
    source_revision: Mapped[int | None] = mapped_column(Integer, nullable=True)  # for rollbacks
    values: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    secret_values: Mapped[dict[str, Any] | None] = mapped_column(EncryptedJSON, nullable=True)
    chart_version: Mapped[str] = mapped_column(String(64), nullable=False)
    created_by_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)

    service: Mapped[CloudService] = relationship(back_populates="revisions")
    created_by: Mapped[User | None] = relationship()

    @property
    def user_values(self) -> dict[str, Any]:
        return {**(self.values or {}), **(self.secret_values or {})}


class Backup(IdMixin, TimestampMixin, VersionedMixin, Base):
    """A backup of a service's volumes (seed 002 CloudServiceBackup)."""

    __tablename__ = "backups"

    service_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("cloud_services.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    status: Mapped[BackupStatus] = mapped_column(
        enum_type(BackupStatus, "backup_status"), nullable=False, default=BackupStatus.pending
    )
    backup_type: Mapped[BackupType] = mapped_column(
        enum_type(BackupType, "backup_type"), nullable=False, default=BackupType.manual
    )
    storage_path: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    service: Mapped[CloudService] = relationship(back_populates="backups")
    created_by: Mapped[User | None] = relationship()


class ServiceActivityLog(IdMixin, CreatedMixin, Base):
    """One line of a service's activity (seed 002 CloudServiceLog). `details` must be passed through `redact()`."""

    __tablename__ = "service_activity_logs"

    service_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("cloud_services.id", ondelete="CASCADE"), nullable=False, index=True
    )
    event_type: Mapped[ActivityEvent] = mapped_column(
        enum_type(ActivityEvent, "activity_event", constraint=False), nullable=False, index=True
    )
    message: Mapped[str] = mapped_column(Text, nullable=False, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    actor_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)

    service: Mapped[CloudService] = relationship(back_populates="activity")
    actor: Mapped[User | None] = relationship()

    @validates("details")
    def _redact_details(self, _key: str, value: dict[str, Any] | None) -> dict[str, Any]:
        # Secret-looking keys are always masked; `record()` also masks the template's password keys.
        return redact(value or {})

    @classmethod
    def record(
        cls,
        service: CloudService,
        event_type: ActivityEvent | str,
        message: str = "",
        details: dict[str, Any] | None = None,
        actor: User | None = None,
    ) -> ServiceActivityLog:
        """A new log line for `service` (added to its `activity`), with details redacted."""
        secret_keys = service.template.secret_keys if service.template is not None else frozenset()
        entry = cls(
            event_type=ActivityEvent(event_type),
            message=message,
            details=redact(details or {}, secret_keys),
            actor=actor,
        )
        service.activity.append(entry)
        return entry

"""Initial schema: every table of both seeds (customers, users, workspaces, services, clusters, tickets...).

Revision ID: 0001
Revises:
Create Date: 2026-11-22 11:00:33.857240
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "app_templates",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("slug", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("icon_url", sa.String(length=500), nullable=True),
        sa.Column("description", sa.String(length=255), nullable=True),
        sa.Column("full_description", sa.Text(), nullable=True),
        sa.Column(
            "category",
            sa.Enum(
                "ai_llm",
                "automation",
                "database",
                "analytics",
                "devops",
                "web",
                "container",
                name="app_category",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("monthly_price", sa.Float(), nullable=False),
        sa.Column("documentation_url", sa.String(length=500), nullable=True),
        sa.Column("helm_repo_url", sa.String(length=500), nullable=False),
        sa.Column("helm_chart_name", sa.String(length=255), nullable=False),
        sa.Column("helm_chart_version", sa.String(length=64), nullable=False),
        sa.Column("helm_default_values", sa.JSON(), nullable=False),
        sa.Column("helm_value_specs", sa.JSON(), nullable=False),
        sa.Column("default_port", sa.Integer(), nullable=False),
        sa.Column("ingress_enabled", sa.Boolean(), nullable=False),
        sa.Column("min_vcpu", sa.Integer(), nullable=False),
        sa.Column("min_ram_gb", sa.Float(), nullable=False),
        sa.Column("min_storage_gb", sa.Integer(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_app_templates")),
        sa.UniqueConstraint("slug", name=op.f("uq_app_templates_slug")),
    )
    with op.batch_alter_table("app_templates", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_app_templates_category"), ["category"], unique=False)

    op.create_table(
        "customers",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customers")),
        sa.UniqueConstraint("name", name=op.f("uq_customers_name")),
    )
    op.create_table(
        "ticket_counters",
        sa.Column("day", sa.String(length=8), nullable=False),
        sa.Column("last_value", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_ticket_counters")),
    )
    op.create_table(
        "clusters",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("customer_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("api_key_prefix", sa.String(length=32), nullable=False),
        sa.Column("api_key_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "online",
                "offline",
                name="cluster_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("last_heartbeat", sa.DateTime(timezone=True), nullable=True),
        sa.Column("k8s_version", sa.String(length=50), nullable=True),
        sa.Column("node_count", sa.Integer(), nullable=True),
        sa.Column("controller_version", sa.String(length=50), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_clusters_customer_id_customers"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clusters")),
        sa.UniqueConstraint("api_key_hash", name=op.f("uq_clusters_api_key_hash")),
        sa.UniqueConstraint("customer_id", "name", name=op.f("uq_clusters_customer_id_name")),
    )
    with op.batch_alter_table("clusters", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_clusters_api_key_prefix"), ["api_key_prefix"], unique=False)
        batch_op.create_index(batch_op.f("ix_clusters_customer_id"), ["customer_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_clusters_status"), ["status"], unique=False)

    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column(
            "role",
            sa.Enum(
                "admin", "engineer", "customer", name="user_role", native_enum=False, create_constraint=True, length=32
            ),
            nullable=False,
        ),
        sa.Column("customer_id", sa.Uuid(), nullable=True),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "(role = 'customer' AND customer_id IS NOT NULL) OR (role <> 'customer' AND customer_id IS NULL)",
            name=op.f("ck_users_customer_iff_customer_role"),
        ),
        sa.CheckConstraint("email = lower(email)", name=op.f("ck_users_email_lowercase")),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_users_customer_id_customers"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_users_customer_id"), ["customer_id"], unique=False)

    op.create_table(
        "workspaces",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("customer_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("slug", sa.String(length=40), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("quota_requests_cpu", sa.String(length=32), nullable=False),
        sa.Column("quota_requests_memory", sa.String(length=32), nullable=False),
        sa.Column("quota_limits_cpu", sa.String(length=32), nullable=False),
        sa.Column("quota_limits_memory", sa.String(length=32), nullable=False),
        sa.Column("quota_requests_storage", sa.String(length=32), nullable=False),
        sa.Column("quota_pvcs", sa.Integer(), nullable=False),
        sa.Column("quota_pods", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_workspaces_customer_id_customers"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workspaces")),
        sa.UniqueConstraint("slug", name=op.f("uq_workspaces_slug")),
    )
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_workspaces_customer_id"), ["customer_id"], unique=False)

    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("token_prefix", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_api_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_tokens_token_prefix"), ["token_prefix"], unique=False)
        batch_op.create_index(batch_op.f("ix_api_tokens_user_id"), ["user_id"], unique=False)

    op.create_table(
        "cloud_services",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("template_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("reference_id", sa.String(length=63), nullable=False),
        sa.Column("deployment_id", sa.String(length=32), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "pending",
                "deploying",
                "running",
                "error",
                "upgrading",
                "deleting",
                name="service_state",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("subdomain", sa.String(length=63), nullable=True),
        sa.Column("custom_domain", sa.String(length=255), nullable=True),
        sa.Column("public_url", sa.String(length=500), nullable=True),
        sa.Column("internal_port", sa.Integer(), nullable=True),
        sa.Column("is_private_network", sa.Boolean(), nullable=False),
        sa.Column("helm_release_name", sa.String(length=255), nullable=True),
        sa.Column("helm_namespace", sa.String(length=63), nullable=True),
        sa.Column("helm_values", sa.JSON(), nullable=False),
        sa.Column("helm_secret_values", sa.Text(), nullable=True),
        sa.Column("helm_revision", sa.Integer(), nullable=False),
        sa.Column("helm_chart_version", sa.String(length=64), nullable=True),
        sa.Column("allocated_vcpu", sa.Integer(), nullable=True),
        sa.Column("allocated_ram_gb", sa.Float(), nullable=True),
        sa.Column("allocated_storage_gb", sa.Integer(), nullable=True),
        sa.Column("k8s_cluster", sa.String(length=100), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("created_by_id", sa.Uuid(), nullable=True),
        sa.Column("deployed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_upgraded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_cloud_services_created_by_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["template_id"],
            ["app_templates.id"],
            name=op.f("fk_cloud_services_template_id_app_templates"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_cloud_services_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cloud_services")),
        sa.UniqueConstraint("custom_domain", name=op.f("uq_cloud_services_custom_domain")),
        sa.UniqueConstraint("subdomain", name=op.f("uq_cloud_services_subdomain")),
        sa.UniqueConstraint("workspace_id", "reference_id", name=op.f("uq_cloud_services_workspace_id_reference_id")),
    )
    with op.batch_alter_table("cloud_services", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cloud_services_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_cloud_services_template_id"), ["template_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_cloud_services_workspace_id"), ["workspace_id"], unique=False)

    op.create_table(
        "nodes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("cluster_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "ready",
                "not-ready",
                "unknown",
                name="node_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("internal_ip", sa.String(length=45), nullable=True),
        sa.Column(
            "agent_status",
            sa.Enum("online", "offline", name="agent_status", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column("agent_version", sa.String(length=50), nullable=True),
        sa.Column("cpu_capacity", sa.String(length=50), nullable=True),
        sa.Column("memory_capacity", sa.String(length=50), nullable=True),
        sa.Column("os_image", sa.String(length=255), nullable=True),
        sa.Column("kernel_version", sa.String(length=100), nullable=True),
        sa.Column("kubelet_version", sa.String(length=50), nullable=True),
        sa.Column("architecture", sa.String(length=32), nullable=True),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["cluster_id"], ["clusters.id"], name=op.f("fk_nodes_cluster_id_clusters"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nodes")),
        sa.UniqueConstraint("cluster_id", "name", name=op.f("uq_nodes_cluster_id_name")),
    )
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_nodes_cluster_id"), ["cluster_id"], unique=False)

    op.create_table(
        "operations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column(
            "target_type",
            sa.Enum(
                "service",
                "session",
                "cluster",
                "node",
                "workspace",
                "backup",
                "ticket",
                "platform",
                name="operation_target_type",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("target_id", sa.Uuid(), nullable=True),
        sa.Column("customer_id", sa.Uuid(), nullable=True),
        sa.Column(
            "state",
            sa.Enum(
                "queued",
                "running",
                "succeeded",
                "failed",
                "cancelled",
                name="operation_state",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(length=255), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("log", sa.Text(), nullable=False),
        sa.Column("requested_by_id", sa.Uuid(), nullable=True),
        sa.Column("rq_job_id", sa.String(length=64), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint("progress >= 0 AND progress <= 100", name=op.f("ck_operations_progress_range")),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_operations_customer_id_customers"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["requested_by_id"], ["users.id"], name=op.f("fk_operations_requested_by_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operations")),
    )
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_operations_customer_id"), ["customer_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_operations_kind"), ["kind"], unique=False)
        batch_op.create_index(batch_op.f("ix_operations_rq_job_id"), ["rq_job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_operations_state"), ["state"], unique=False)
        batch_op.create_index("ix_operations_target", ["target_type", "target_id"], unique=False)

    op.create_table(
        "workspace_members",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column(
            "role",
            sa.Enum(
                "owner",
                "admin",
                "member",
                "viewer",
                name="workspace_role",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_workspace_members_user_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_workspace_members_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workspace_members")),
        sa.UniqueConstraint("workspace_id", "user_id", name=op.f("uq_workspace_members_workspace_id_user_id")),
    )
    with op.batch_alter_table("workspace_members", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_workspace_members_user_id"), ["user_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_workspace_members_workspace_id"), ["workspace_id"], unique=False)

    op.create_table(
        "backups",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("service_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "in_progress",
                "completed",
                "failed",
                name="backup_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "backup_type",
            sa.Enum(
                "manual",
                "scheduled",
                "pre_update",
                "upload",
                name="backup_type",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("storage_path", sa.String(length=1000), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_by_id", sa.Uuid(), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_backups_created_by_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["service_id"], ["cloud_services.id"], name=op.f("fk_backups_service_id_cloud_services"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backups")),
    )
    with op.batch_alter_table("backups", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_backups_service_id"), ["service_id"], unique=False)

    op.create_table(
        "service_activity_logs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("service_id", sa.Uuid(), nullable=False),
        sa.Column(
            "event_type",
            sa.Enum(
                "started",
                "stopped",
                "config_updated",
                "alert",
                "backup_created",
                "backup_restored",
                "backup_deleted",
                "backup_failed",
                "deploy_requested",
                "deployed",
                "deploy_failed",
                "upgrade_requested",
                "upgraded",
                "upgrade_failed",
                "rollback_requested",
                "rolled_back",
                "rollback_failed",
                "delete_requested",
                "deleted",
                "delete_failed",
                "domain_updated",
                name="activity_event",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["actor_id"], ["users.id"], name=op.f("fk_service_activity_logs_actor_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["service_id"],
            ["cloud_services.id"],
            name=op.f("fk_service_activity_logs_service_id_cloud_services"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_service_activity_logs")),
    )
    with op.batch_alter_table("service_activity_logs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_service_activity_logs_event_type"), ["event_type"], unique=False)
        batch_op.create_index(batch_op.f("ix_service_activity_logs_service_id"), ["service_id"], unique=False)

    op.create_table(
        "service_revisions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("service_id", sa.Uuid(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "install",
                "upgrade",
                "rollback",
                name="revision_kind",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("source_revision", sa.Integer(), nullable=True),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("secret_values", sa.Text(), nullable=True),
        sa.Column("chart_version", sa.String(length=64), nullable=False),
        sa.Column("created_by_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_service_revisions_created_by_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["service_id"],
            ["cloud_services.id"],
            name=op.f("fk_service_revisions_service_id_cloud_services"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_service_revisions")),
        sa.UniqueConstraint("service_id", "revision", name=op.f("uq_service_revisions_service_id_revision")),
    )
    with op.batch_alter_table("service_revisions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_service_revisions_service_id"), ["service_id"], unique=False)

    op.create_table(
        "tickets",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("ticket_number", sa.String(length=50), nullable=False),
        sa.Column("customer_id", sa.Uuid(), nullable=False),
        sa.Column("cluster_id", sa.Uuid(), nullable=True),
        sa.Column("node_id", sa.Uuid(), nullable=True),
        sa.Column("title", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "priority",
            sa.Enum(
                "low",
                "normal",
                "high",
                "urgent",
                name="ticket_priority",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "status",
            sa.Enum(
                "open",
                "in_progress",
                "resolved",
                "closed",
                name="ticket_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("assigned_to_id", sa.Uuid(), nullable=True),
        sa.Column("created_by_id", sa.Uuid(), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["assigned_to_id"], ["users.id"], name=op.f("fk_tickets_assigned_to_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["cluster_id"], ["clusters.id"], name=op.f("fk_tickets_cluster_id_clusters"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_tickets_created_by_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_tickets_customer_id_customers"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], name=op.f("fk_tickets_node_id_nodes"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tickets")),
        sa.UniqueConstraint("ticket_number", name=op.f("uq_tickets_ticket_number")),
    )
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tickets_assigned_to_id"), ["assigned_to_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_tickets_cluster_id"), ["cluster_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_tickets_customer_id"), ["customer_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_tickets_priority"), ["priority"], unique=False)
        batch_op.create_index(batch_op.f("ix_tickets_status"), ["status"], unique=False)

    op.create_table(
        "support_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("ticket_id", sa.Uuid(), nullable=False),
        sa.Column("node_id", sa.Uuid(), nullable=True),
        sa.Column("engineer_id", sa.Uuid(), nullable=True),
        sa.Column(
            "state",
            sa.Enum(
                "requested",
                "starting",
                "active",
                "ending",
                "ended",
                "failed",
                name="session_state",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "transport",
            sa.Enum(
                "cloudflare", "relay", name="session_transport", native_enum=False, create_constraint=True, length=32
            ),
            nullable=False,
        ),
        sa.Column("services", sa.JSON(), nullable=False),
        sa.Column("tunnel_id", sa.String(length=255), nullable=True),
        sa.Column("tunnel_token", sa.Text(), nullable=True),
        sa.Column("public_hostname", sa.String(length=255), nullable=True),
        sa.Column("dns_record_id", sa.String(length=255), nullable=True),
        sa.Column("access_app_id", sa.String(length=255), nullable=True),
        sa.Column("access_policy_id", sa.String(length=255), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sa.String(length=255), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("recording_url", sa.String(length=500), nullable=True),
        sa.Column("recording_path", sa.String(length=1000), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["engineer_id"], ["users.id"], name=op.f("fk_support_sessions_engineer_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_support_sessions_node_id_nodes"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["ticket_id"], ["tickets.id"], name=op.f("fk_support_sessions_ticket_id_tickets"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_support_sessions")),
    )
    with op.batch_alter_table("support_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_support_sessions_engineer_id"), ["engineer_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_support_sessions_node_id"), ["node_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_support_sessions_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_support_sessions_ticket_id"), ["ticket_id"], unique=False)

    op.create_table(
        "ticket_comments",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("ticket_id", sa.Uuid(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column(
            "comment_type",
            sa.Enum(
                "comment",
                "system",
                "status_change",
                name="comment_type",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("author_id", sa.Uuid(), nullable=True),
        sa.Column(
            "author_type",
            sa.Enum(
                "customer",
                "engineer",
                "system",
                name="author_type",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["author_id"], ["users.id"], name=op.f("fk_ticket_comments_author_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["ticket_id"], ["tickets.id"], name=op.f("fk_ticket_comments_ticket_id_tickets"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ticket_comments")),
    )
    with op.batch_alter_table("ticket_comments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ticket_comments_ticket_id"), ["ticket_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ticket_comments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ticket_comments_ticket_id"))

    op.drop_table("ticket_comments")
    with op.batch_alter_table("support_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_support_sessions_ticket_id"))
        batch_op.drop_index(batch_op.f("ix_support_sessions_state"))
        batch_op.drop_index(batch_op.f("ix_support_sessions_node_id"))
        batch_op.drop_index(batch_op.f("ix_support_sessions_engineer_id"))

    op.drop_table("support_sessions")
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tickets_status"))
        batch_op.drop_index(batch_op.f("ix_tickets_priority"))
        batch_op.drop_index(batch_op.f("ix_tickets_customer_id"))
        batch_op.drop_index(batch_op.f("ix_tickets_cluster_id"))
        batch_op.drop_index(batch_op.f("ix_tickets_assigned_to_id"))

    op.drop_table("tickets")
    with op.batch_alter_table("service_revisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_service_revisions_service_id"))

    op.drop_table("service_revisions")
    with op.batch_alter_table("service_activity_logs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_service_activity_logs_service_id"))
        batch_op.drop_index(batch_op.f("ix_service_activity_logs_event_type"))

    op.drop_table("service_activity_logs")
    with op.batch_alter_table("backups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_backups_service_id"))

    op.drop_table("backups")
    with op.batch_alter_table("workspace_members", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workspace_members_workspace_id"))
        batch_op.drop_index(batch_op.f("ix_workspace_members_user_id"))

    op.drop_table("workspace_members")
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.drop_index("ix_operations_target")
        batch_op.drop_index(batch_op.f("ix_operations_state"))
        batch_op.drop_index(batch_op.f("ix_operations_rq_job_id"))
        batch_op.drop_index(batch_op.f("ix_operations_kind"))
        batch_op.drop_index(batch_op.f("ix_operations_customer_id"))

    op.drop_table("operations")
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_nodes_cluster_id"))

    op.drop_table("nodes")
    with op.batch_alter_table("cloud_services", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cloud_services_workspace_id"))
        batch_op.drop_index(batch_op.f("ix_cloud_services_template_id"))
        batch_op.drop_index(batch_op.f("ix_cloud_services_state"))

    op.drop_table("cloud_services")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_tokens_user_id"))
        batch_op.drop_index(batch_op.f("ix_api_tokens_token_prefix"))

    op.drop_table("api_tokens")
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workspaces_customer_id"))

    op.drop_table("workspaces")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_users_customer_id"))

    op.drop_table("users")
    with op.batch_alter_table("clusters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_clusters_status"))
        batch_op.drop_index(batch_op.f("ix_clusters_customer_id"))
        batch_op.drop_index(batch_op.f("ix_clusters_api_key_prefix"))

    op.drop_table("clusters")
    op.drop_table("ticket_counters")
    op.drop_table("customers")
    with op.batch_alter_table("app_templates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_app_templates_category"))

    op.drop_table("app_templates")

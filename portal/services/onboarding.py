"""Onboarding from the portal (seed 000 §8.1): validate the request, record an operation, hand the job its secrets.

The kubeconfig and the API key reach the worker only inside the job's arguments, encrypted with the
instance's encryption key (`seal_secrets`); the operation row stores redacted parameters.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from redis import Redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.crypto import decrypt_text, encrypt_text, make_fernet
from portal.errors import ConflictError, ValidationError
from portal.models import ACTIVE_OPERATION_STATES, Cluster, Operation, TargetType, User
from portal.queue import default_queue
from portal.services import clusters as cluster_service
from portal.services.operations import create_operation
from portal.settings import Settings

KIND = "cluster.onboard"
JOB_TIMEOUT = 1800  # seconds: rollout waits are bounded inside the playbook, this is the backstop


def seal_secrets(settings: Settings, secrets: dict[str, str | None]) -> str:
    return encrypt_text(make_fernet(settings.encryption_key), json.dumps(secrets))


def open_secrets(settings: Settings, sealed: str) -> dict[str, Any]:
    return json.loads(decrypt_text(make_fernet(settings.encryption_key), sealed))


def check_kubeconfig(text: str, context: str | None) -> None:
    """A kubeconfig document with clusters, users and contexts (and `context` among them): else 422."""
    try:
        data = yaml.safe_load(text)
    except Exception:  # YAMLError, and the constructors' ValueErrors (e.g. an impossible date)
        raise ValidationError("Invalid kubeconfig.", fields={"kubeconfig": "is not valid YAML"}) from None
    if not isinstance(data, dict) or not isinstance(data.get("clusters"), list) or not data["clusters"]:
        raise ValidationError("Invalid kubeconfig.", fields={"kubeconfig": "must be a kubeconfig with clusters"})
    contexts = [c.get("name") for c in data.get("contexts") or [] if isinstance(c, dict)]
    if context is not None and context not in contexts:
        raise ValidationError("Invalid context.", fields={"context": "is not a context of the kubeconfig"})
    if context is None and not data.get("current-context"):
        raise ValidationError(
            "Invalid kubeconfig.", fields={"context": "is required: the kubeconfig has no current-context"}
        )


def active_onboarding(session: Session, cluster: Cluster) -> Operation | None:
    return session.scalars(
        select(Operation).where(
            Operation.kind == KIND,
            Operation.target_type == TargetType.cluster,
            Operation.target_id == cluster.id,
            Operation.state.in_(ACTIVE_OPERATION_STATES),
        )
    ).first()


def start_onboarding(
    session: Session,
    actor: User,
    cluster: Cluster,
    *,
    kubeconfig: str,
    context: str | None,
    api_key: str | None,
    settings: Settings,
    connection: Redis,
) -> Operation:
    """Queue the onboarding of `cluster` (an operation `cluster.onboard`).

    With `api_key` (the cluster's current key) the bundle carries it; without, a new key is issued
    now (the old one stops working) and travels only to the job and into the cluster's Secret.
    """
    check_kubeconfig(kubeconfig, context)
    if api_key is not None:
        owner = cluster_service.authenticate_cluster_key(session, api_key.strip())
        if owner is None or owner.id != cluster.id:
            raise ValidationError("Invalid API key.", fields={"api_key": "is not this cluster's current key"})
        key, key_source = api_key.strip(), "provided"
    # Serialize onboardings of one cluster: the second request waits here, then sees the first's operation.
    session.execute(select(Cluster.id).where(Cluster.id == cluster.id).with_for_update())
    if active_onboarding(session, cluster) is not None:
        raise ConflictError("This cluster is already being onboarded.", code="operation_running")
    if api_key is None:
        key, key_source = cluster_service.rotate_api_key(session, actor, cluster).api_key, "rotated"
    operation = create_operation(session, KIND, cluster, actor)
    operation.params = {"context": context, "kubeconfig": "[redacted]", "api_key": key_source}
    operation.step = "queued"
    job_id = f"operation-{operation.id}"
    operation.rq_job_id = job_id
    session.flush()

    from portal.jobs.dispatch import enqueue_after_commit
    from portal.jobs.onboarding import run_onboarding

    sealed = seal_secrets(settings, {"kubeconfig": kubeconfig, "api_key": key})
    enqueue_after_commit(
        session,
        default_queue(settings, connection),
        run_onboarding,
        str(operation.id),
        sealed,
        job_id=job_id,
        job_timeout=JOB_TIMEOUT,
        result_ttl=0,
        failure_ttl=3600,
    )
    return operation

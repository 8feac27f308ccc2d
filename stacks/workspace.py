"""The workspace stack `ws-<slug>`: the namespace every service of a workspace lives in, its quota and limits.

A pure function of `WorkspaceSpec`; applied (idempotently) before each service operation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

QUOTA_NAME = "workspace-quota"
LIMITS_NAME = "workspace-limits"
MANAGED_BY = {"app.kubernetes.io/managed-by": "kaiden"}

# Defaults for containers that declare no resources, so they still fit a namespace with a quota.
DEFAULT_LIMITS = {"cpu": "500m", "memory": "512Mi"}
DEFAULT_REQUESTS = {"cpu": "50m", "memory": "64Mi"}


def stack_name(slug: str) -> str:
    return f"ws-{slug}"


def namespace_name(slug: str) -> str:
    return f"paas-ws-{slug}"


@dataclass(frozen=True)
class WorkspaceSpec:
    """The workspace's namespace, quota (`spec.hard`) and the cluster to put them on."""

    kubeconfig: pulumi.Input[str]
    slug: str
    quota: Mapping[str, str]
    default_limits: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    default_requests: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_REQUESTS))

    @property
    def namespace(self) -> str:
        return namespace_name(self.slug)


def workspace(spec: WorkspaceSpec) -> None:
    """Declare the namespace, ResourceQuota and LimitRange; export the namespace name."""
    provider = k8s.Provider("cluster", kubeconfig=pulumi.Output.secret(spec.kubeconfig))
    opts = pulumi.ResourceOptions(provider=provider)
    labels = {**MANAGED_BY, "kaiden.io/workspace": spec.slug}

    namespace = k8s.core.v1.Namespace("namespace", metadata={"name": spec.namespace, "labels": labels}, opts=opts)
    k8s.core.v1.ResourceQuota(
        "quota",
        metadata={"name": QUOTA_NAME, "namespace": namespace.metadata["name"], "labels": labels},
        spec={"hard": dict(spec.quota)},
        opts=opts,
    )
    k8s.core.v1.LimitRange(
        "limits",
        metadata={"name": LIMITS_NAME, "namespace": namespace.metadata["name"], "labels": labels},
        spec={
            "limits": [
                {
                    "type": "Container",
                    "default": dict(spec.default_limits),
                    "defaultRequest": dict(spec.default_requests),
                }
            ]
        },
        opts=opts,
    )
    pulumi.export("namespace", namespace.metadata["name"])

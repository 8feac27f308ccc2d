"""The smoke stack: a namespace, a ConfigMap and a Helm release of our `hello` chart on any cluster.

Used by the engine's integration tests and benchmark; a pure function of `SmokeSpec`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

CONFIGMAP_NAME = "smoke-settings"
TOKEN_SECRET_NAME = "smoke-token"  # noqa: S105 (the name of a Kubernetes Secret, not a password)


@dataclass(frozen=True)
class SmokeSpec:
    """Everything the smoke program declares. `kubeconfig` is the kubeconfig's contents (or a path)."""

    kubeconfig: pulumi.Input[str]
    chart_path: str  # absolute path of catalog/charts/hello (the provider reads it, not the program)
    namespace: str = "kaiden-smoke"
    release_name: str = "hello"
    image: str = "registry.local/kaiden/hello:1.0.0"
    replicas: int = 1
    settings: Mapping[str, str] = field(default_factory=lambda: {"greeting": "hello from kaiden"})
    api_token: pulumi.Input[str] | None = None  # stored in a Secret and exported as a secret output
    timeout_seconds: int = 300


def _image(image: str) -> dict[str, str]:
    repository, _, tag = image.rpartition(":")
    if not repository or "/" in tag:  # no tag given, or the colon belonged to a registry port
        return {"repository": image, "tag": "latest"}
    return {"repository": repository, "tag": tag}


def smoke(spec: SmokeSpec) -> None:
    """Declare the smoke resources with an explicit provider for `spec.kubeconfig`; export what tests check."""
    provider = k8s.Provider("cluster", kubeconfig=pulumi.Output.secret(spec.kubeconfig))
    opts = pulumi.ResourceOptions(provider=provider)
    labels = {"app.kubernetes.io/part-of": "kaiden-smoke"}

    # Every object has a fixed name: an interrupted create can then be adopted, never duplicated.
    namespace = k8s.core.v1.Namespace(
        "namespace",
        metadata={"name": spec.namespace, "labels": labels},
        opts=opts,
    )
    settings = k8s.core.v1.ConfigMap(
        "settings",
        metadata={"name": CONFIGMAP_NAME, "namespace": namespace.metadata["name"], "labels": labels},
        data=dict(spec.settings),
        opts=opts,
    )
    release = k8s.helm.v3.Release(
        "hello",
        name=spec.release_name,
        chart=spec.chart_path,
        namespace=namespace.metadata["name"],
        values={
            "image": _image(spec.image),
            "replicaCount": spec.replicas,
            "config": {key.upper(): value for key, value in spec.settings.items()},
        },
        timeout=spec.timeout_seconds,
        opts=opts,
    )

    if spec.api_token is not None:
        token = pulumi.Output.secret(spec.api_token)
        k8s.core.v1.Secret(
            "token",
            metadata={"name": TOKEN_SECRET_NAME, "namespace": namespace.metadata["name"], "labels": labels},
            string_data={"token": token},
            opts=opts,
        )
        pulumi.export("api_token", token)

    pulumi.export("namespace", namespace.metadata["name"])
    pulumi.export("configmap", settings.metadata["name"])
    pulumi.export("release", release.status.apply(lambda status: status.name))
    pulumi.export("release_status", release.status.apply(lambda status: status.status))
    pulumi.export("revision", release.status.apply(lambda status: status.revision))

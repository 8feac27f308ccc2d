"""The service stack `svc-<ws>-<ref>`: one app's Helm release, its Ingress and (with Cloudflare) its DNS record.

A pure function of `ServiceSpec`. The namespace belongs to the workspace stack (`stacks/workspace.py`);
this program only refers to it by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

HELM_RELEASE_MAX = 53  # Helm refuses longer release names
ENTRYPOINTS_ANNOTATION = "traefik.ingress.kubernetes.io/router.entrypoints"
ISSUER_ANNOTATION = "cert-manager.io/cluster-issuer"
SKIP_AWAIT_ANNOTATION = "pulumi.com/skipAwait"
INSTANCE_LABEL = "app.kubernetes.io/instance"


def stack_name(workspace_slug: str, reference_id: str) -> str:
    return f"svc-{workspace_slug}-{reference_id}"


def release_name(workspace_slug: str, reference_id: str) -> str:
    return f"paas-ws-{workspace_slug}-{reference_id}"


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat dotted keys → nested dicts: `{"auth.password": "x"}` → `{"auth": {"password": "x"}}`."""
    nested: dict[str, Any] = {}
    for key in sorted(flat):
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = flat[key]
    return nested


def _copy_tree(value: Any) -> Any:
    """A copy of nested dicts and lists; leaves (including Pulumi Outputs, which cannot be deep-copied) shared."""
    if isinstance(value, Mapping):
        return {key: _copy_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_tree(item) for item in value]
    return value


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: `override` merged into `base`; nested dicts merge, anything else replaces."""
    merged = _copy_tree(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = _copy_tree(value)
    return merged


@dataclass(frozen=True)
class ChartSpec:
    """What Helm installs: `chart` is a local directory when `repo` is None, else a chart name in `repo`."""

    chart: str
    version: str
    repo: str | None = None


@dataclass(frozen=True)
class IngressSpec:
    host: str
    ingress_class: str = "traefik"
    entrypoints: str = "websecure"
    cert_issuer: str = "letsencrypt-prod"


@dataclass(frozen=True)
class CloudflareSpec:
    """A proxied CNAME `<host>` → `target` in `zone_id`; only built when Cloudflare is configured."""

    api_token: pulumi.Input[str]
    zone_id: str
    target: str
    proxied: bool = True


@dataclass(frozen=True)
class ServiceSpec:
    """Everything the service stack declares. Secret values are flat dotted keys, made Pulumi secrets."""

    kubeconfig: pulumi.Input[str]
    workspace_slug: str
    reference_id: str
    chart: ChartSpec
    port: int
    default_values: Mapping[str, Any] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=dict)  # flat, non-secret
    secret_values: Mapping[str, Any] = field(default_factory=dict)  # flat, password-type
    ingress: IngressSpec | None = None  # None: template without ingress, or a private service
    cloudflare: CloudflareSpec | None = None
    timeout_seconds: int = 600

    @property
    def namespace(self) -> str:
        return f"paas-ws-{self.workspace_slug}"

    @property
    def release_name(self) -> str:
        return release_name(self.workspace_slug, self.reference_id)

    def plain_values(self) -> dict[str, Any]:
        """Template defaults deep-merged with the user's non-secret values."""
        return deep_merge(self.default_values, nest(self.values))

    def helm_values(self) -> dict[str, Any]:
        """`plain_values()` with every secret value in place as a Pulumi secret."""
        secrets = {key: pulumi.Output.secret(value) for key, value in self.secret_values.items()}
        return deep_merge(self.plain_values(), nest(secrets))


def cloud_service(spec: ServiceSpec) -> None:
    """Declare the release (waiting for readiness), the Ingress and the DNS record; export what the portal shows."""
    provider = k8s.Provider("cluster", kubeconfig=pulumi.Output.secret(spec.kubeconfig))
    opts = pulumi.ResourceOptions(provider=provider)
    name = spec.release_name
    labels = {INSTANCE_LABEL: name, "app.kubernetes.io/managed-by": "kaiden"}

    release_args: dict[str, Any] = {
        "name": name,
        "namespace": spec.namespace,
        "chart": spec.chart.chart,
        "version": spec.chart.version,
        "values": spec.helm_values(),
        "timeout": spec.timeout_seconds,
        "atomic": False,  # a failed install stays visible (and is replaced by the next up)
        "cleanup_on_fail": True,
    }
    if spec.chart.repo is not None:
        release_args["repository_opts"] = {"repo": spec.chart.repo}
    release = k8s.helm.v3.Release("release", **release_args, opts=opts)

    public_url: pulumi.Input[str | None] = None
    if spec.ingress is not None:
        ingress = spec.ingress
        k8s.networking.v1.Ingress(
            "ingress",
            metadata={
                "name": name,
                "namespace": spec.namespace,
                "labels": labels,
                "annotations": {
                    ENTRYPOINTS_ANNOTATION: ingress.entrypoints,
                    ISSUER_ANNOTATION: ingress.cert_issuer,
                    # Readiness is the release's (its workloads); the ingress controller fills the Ingress
                    # status on its own schedule (never, on a cluster without one), so don't wait for it.
                    SKIP_AWAIT_ANNOTATION: "true",
                },
            },
            spec={
                "ingressClassName": ingress.ingress_class,
                "tls": [{"hosts": [ingress.host], "secretName": f"{name}-tls"}],
                "rules": [
                    {
                        "host": ingress.host,
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "pathType": "Prefix",
                                    "backend": {"service": {"name": name, "port": {"number": spec.port}}},
                                }
                            ]
                        },
                    }
                ],
            },
            opts=pulumi.ResourceOptions(provider=provider, depends_on=[release]),
        )
        public_url = f"https://{ingress.host}"
        if spec.cloudflare is not None:
            import pulumi_cloudflare as cloudflare  # only imported when used: its plugin is not needed otherwise

            cf = spec.cloudflare
            cf_provider = cloudflare.Provider("cloudflare", api_token=pulumi.Output.secret(cf.api_token))
            cloudflare.DnsRecord(
                "dns",
                zone_id=cf.zone_id,
                name=ingress.host,
                type="CNAME",
                content=cf.target,
                proxied=cf.proxied,
                ttl=1,
                comment=f"kaiden service {name}",
                opts=pulumi.ResourceOptions(provider=cf_provider),
            )

    pulumi.export("release", name)
    pulumi.export("namespace", spec.namespace)
    pulumi.export("public_url", public_url)
    pulumi.export("internal_port", spec.port)
    pulumi.export("internal_host", f"{name}.{spec.namespace}.svc.cluster.local")
    pulumi.export("helm_revision", release.status.apply(lambda status: status.revision))
    pulumi.export("chart_version", release.status.apply(lambda status: status.version))
    pulumi.export("release_status", release.status.apply(lambda status: status.status))

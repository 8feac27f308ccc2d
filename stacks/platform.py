"""The platform stack: Kaiden itself on a Kubernetes cluster (portal, workers, gateway, and optionally
in-cluster PostgreSQL and Redis). Operators apply it with `pulumi up` from the repository root."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

NAMESPACE = "kaiden-system"


@dataclass(frozen=True)
class ComponentSpec:
    replicas: int
    cpu: str
    memory: str


@dataclass(frozen=True)
class PlatformSpec:
    """Everything the platform program needs; built from `pulumi.Config` by `spec_from_config`."""

    image: str
    hostname: str
    secret_key: pulumi.Input[str]
    encryption_key: pulumi.Input[str]
    pulumi_passphrase: pulumi.Input[str]
    database_url: pulumi.Input[str] | None = None  # None → an in-cluster PostgreSQL StatefulSet
    redis_url: str | None = None  # None → an in-cluster Redis StatefulSet
    database_password: pulumi.Input[str] | None = None
    base_domain: str = "apps.localhost"
    namespace: str = NAMESPACE
    portal: ComponentSpec = field(default_factory=lambda: ComponentSpec(2, "500m", "512Mi"))
    worker: ComponentSpec = field(default_factory=lambda: ComponentSpec(2, "1000m", "1Gi"))
    gateway: ComponentSpec = field(default_factory=lambda: ComponentSpec(2, "500m", "512Mi"))
    postgres_storage: str = "100Gi"
    redis_storage: str = "10Gi"
    ingress_class: str = "traefik"
    cluster_issuer: str = "letsencrypt"


def _labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "kaiden", "app.kubernetes.io/component": component}


def _statefulset(name: str, spec: PlatformSpec, image: str, port: int, storage: str, env: list, opts) -> None:
    labels = _labels(name)
    k8s.core.v1.Service(
        name,
        metadata={"name": name, "namespace": spec.namespace, "labels": labels},
        spec={"selector": labels, "ports": [{"name": name, "port": port}], "cluster_ip": "None"},
        opts=opts,
    )
    k8s.apps.v1.StatefulSet(
        name,
        metadata={"name": name, "namespace": spec.namespace, "labels": labels},
        spec={
            "service_name": name,
            "replicas": 1,
            "selector": {"match_labels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": name,
                            "image": image,
                            "ports": [{"container_port": port}],
                            "env": env,
                            "volume_mounts": [{"name": "data", "mount_path": "/data"}],
                            "readiness_probe": {"tcp_socket": {"port": port}, "period_seconds": 5},
                        }
                    ]
                },
            },
            "volume_claim_templates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {"access_modes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}}},
                }
            ],
        },
        opts=opts,
    )


def platform(spec: PlatformSpec) -> None:
    """Declare the platform's resources and export its URL. A pure function of `spec`."""
    namespace = k8s.core.v1.Namespace("namespace", metadata={"name": spec.namespace, "labels": _labels("platform")})
    opts = pulumi.ResourceOptions(depends_on=[namespace])

    database_url = spec.database_url
    if database_url is None:
        password = spec.database_password or spec.secret_key
        _statefulset(
            "postgresql",
            spec,
            "postgres:16",
            5432,
            spec.postgres_storage,
            [
                {"name": "POSTGRES_DB", "value": "kaiden"},
                {"name": "POSTGRES_PASSWORD", "value_from": {"secret_key_ref": {"name": "kaiden", "key": "db-pass"}}},
                {"name": "PGDATA", "value": "/data/pgdata"},
            ],
            opts,
        )
        database_url = pulumi.Output.concat(
            "postgresql+psycopg://postgres:", password, f"@postgresql.{spec.namespace}.svc:5432/kaiden"
        )
    redis_url = spec.redis_url
    if redis_url is None:
        _statefulset("redis", spec, "redis:7", 6379, spec.redis_storage, [], opts)
        redis_url = f"redis://redis.{spec.namespace}.svc:6379/0"

    secret_data = {
        "KAIDEN_DATABASE_URL": database_url,
        "KAIDEN_REDIS_URL": redis_url,
        "KAIDEN_SECRET_KEY": spec.secret_key,
        "KAIDEN_ENCRYPTION_KEY": spec.encryption_key,
        "KAIDEN_PULUMI_PASSPHRASE": spec.pulumi_passphrase,
        "db-pass": spec.database_password or spec.secret_key,
    }
    secret = k8s.core.v1.Secret(
        "kaiden",
        metadata={"name": "kaiden", "namespace": spec.namespace},
        string_data={key: pulumi.Output.secret(value) for key, value in secret_data.items()},
        opts=opts,
    )
    settings = k8s.core.v1.ConfigMap(
        "kaiden-settings",
        metadata={"name": "kaiden-settings", "namespace": spec.namespace},
        data={"KAIDEN_HOST": "0.0.0.0", "KAIDEN_BASE_DOMAIN": spec.base_domain, "KAIDEN_HOME": "/var/lib/kaiden"},  # noqa: S104
        opts=opts,
    )
    env_from = [{"secret_ref": {"name": "kaiden"}}, {"config_map_ref": {"name": "kaiden-settings"}}]
    component_opts = pulumi.ResourceOptions(depends_on=[namespace, secret, settings])

    commands = {"portal": (["kaiden", "portal"], 8000), "worker": (["kaiden", "worker"], None)}
    commands["gateway"] = (["kaiden", "gateway"], 8001)
    for name, (command, port) in commands.items():
        component: ComponentSpec = getattr(spec, name)
        labels = _labels(name)
        container = {
            "name": name,
            "image": spec.image,
            "command": command,
            "env_from": env_from,
            "resources": {"requests": {"cpu": component.cpu, "memory": component.memory}},
        }
        if port:
            container["ports"] = [{"container_port": port, "name": "http"}]
            container["readiness_probe"] = {"http_get": {"path": "/healthz", "port": port}, "period_seconds": 5}
        k8s.apps.v1.Deployment(
            name,
            metadata={"name": f"kaiden-{name}", "namespace": spec.namespace, "labels": labels},
            spec={
                "replicas": component.replicas,
                "selector": {"match_labels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            },
            opts=component_opts,
        )
        if port:
            k8s.core.v1.Service(
                name,
                metadata={"name": f"kaiden-{name}", "namespace": spec.namespace, "labels": labels},
                spec={"selector": labels, "ports": [{"name": "http", "port": port, "target_port": port}]},
                opts=component_opts,
            )

    paths = [("/api/v1/agent/connect", "kaiden-gateway", 8001), ("/", "kaiden-portal", 8000)]
    k8s.networking.v1.Ingress(
        "kaiden",
        metadata={
            "name": "kaiden",
            "namespace": spec.namespace,
            "annotations": {"cert-manager.io/cluster-issuer": spec.cluster_issuer},
        },
        spec={
            "ingress_class_name": spec.ingress_class,
            "tls": [{"hosts": [spec.hostname], "secret_name": "kaiden-tls"}],
            "rules": [
                {
                    "host": spec.hostname,
                    "http": {
                        "paths": [
                            {
                                "path": path,
                                "path_type": "Prefix",
                                "backend": {"service": {"name": service, "port": {"number": port}}},
                            }
                            for path, service, port in paths
                        ]
                    },
                }
            ],
        },
        opts=component_opts,
    )
    pulumi.export("url", f"https://{spec.hostname}/")
    pulumi.export("namespace", spec.namespace)


def spec_from_config(config: pulumi.Config) -> PlatformSpec:
    """Read the operator's stack configuration (`pulumi config set kaiden:hostname …`)."""
    return PlatformSpec(
        image=config.get("image") or "ghcr.io/kaiden/kaiden:0.1.0",
        hostname=config.require("hostname"),
        base_domain=config.get("baseDomain") or "apps.localhost",
        secret_key=config.require_secret("secretKey"),
        encryption_key=config.require_secret("encryptionKey"),
        pulumi_passphrase=config.require_secret("pulumiPassphrase"),
        database_url=config.get_secret("databaseUrl"),
        database_password=config.get_secret("databasePassword"),
        redis_url=config.get("redisUrl"),
    )

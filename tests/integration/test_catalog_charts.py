"""Every catalog app, installed for real: one Pulumi stack with one Helm release per template (its defaults plus
generated required values) through the engine into the local kwok cluster, then the chart contract is
checked object by object with the kubernetes client.

What the service stack relies on: a Service named after the release on the template's default port; the
instance (and name) label on every object; claims Bound and annotated `helm.sh/resource-policy: keep`;
workloads Ready with probes, requests and limits; passwords only in Secrets.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pytest
from kubernetes import client, config

from portal.catalog import LOCAL_REPOSITORY, TemplateFile, default_catalog_dir, parse_template_file
from portal.charts import resolve_chart
from portal.infra import engine
from portal.settings import Settings, load_settings

pytestmark = pytest.mark.integration

TEMPLATES = [parse_template_file(p) for p in sorted(default_catalog_dir().glob("*.yaml"))]
LOCAL = [t for t in TEMPLATES if t.chart.repository == LOCAL_REPOSITORY]
INSTANCE = "app.kubernetes.io/instance"
NAME = "app.kubernetes.io/name"
MAX_RELEASE_NAME = 52


# --- values as a service starts from them ----------------------------------------------------------


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """`{"auth.password": "x"}` → `{"auth": {"password": "x"}}`."""
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


@dataclass(frozen=True)
class Install:
    template: TemplateFile
    namespace: str
    release: str
    passwords: dict[str, str]  # spec key → generated password

    def values(self) -> dict[str, Any]:
        """Template chart values ⊕ every spec default ⊕ generated values for required specs without one."""
        defaults = {}
        for spec in self.template.values.required + self.template.values.optional:
            if spec.type == "password":
                if spec.key in self.passwords:
                    defaults[spec.key] = self.passwords[spec.key]
            elif spec.default is not None:
                defaults[spec.key] = spec.default
            elif spec.required:
                defaults[spec.key] = {"number": 1, "boolean": True}.get(spec.type, "generated")
        return deep_merge(self.template.chart.values, nest(defaults))


def plan(suffix: str) -> list[Install]:
    installs = []
    for template in LOCAL:
        passwords = {
            spec.key: f"pw-{secrets.token_hex(12)}"
            for spec in template.values.required + template.values.optional
            if spec.type == "password"  # optional ones too: every password must end up in the Secret only
        }
        namespace = f"cat-{suffix}-{template.slug}"
        # release names as long as the charts allow (52: a StatefulSet's revision label adds "-<hash>" within 63)
        release = f"{template.slug}-{suffix}-".ljust(MAX_RELEASE_NAME, "r")
        installs.append(Install(template, namespace, release, passwords))
    return installs


def catalog_program(kubeconfig: str, installs: list[Install], without: frozenset[str] = frozenset()) -> None:
    """One namespace and one Helm release per catalog app (none for the slugs in `without`), passwords as
    Pulumi secrets."""
    provider = k8s.Provider("cluster", kubeconfig=pulumi.Output.secret(kubeconfig))
    opts = pulumi.ResourceOptions(provider=provider)
    for item in installs:
        chart = resolve_chart(item.template.chart.repository, item.template.chart.name, item.template.chart.version)
        namespace = k8s.core.v1.Namespace(f"ns-{item.template.slug}", metadata={"name": item.namespace}, opts=opts)
        if item.template.slug in without:
            continue
        values = item.values()
        secret_values = nest({key: pulumi.Output.secret(value) for key, value in item.passwords.items()})
        k8s.helm.v3.Release(
            item.template.slug,
            name=item.release,
            chart=chart.chart,
            version=chart.version,
            namespace=namespace.metadata["name"],
            values=deep_merge(values, secret_values),
            timeout=150,
            opts=opts,
        )


# --- the cluster, as the kubernetes client sees it -------------------------------------------------


@pytest.fixture(scope="module")
def api(platform_cluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(platform_cluster.kubeconfig))


@dataclass
class Installed:
    installs: list[Install]
    stack: str
    settings: Settings
    kubeconfig: str

    def up(self, without: frozenset[str] = frozenset()) -> engine.EngineResult:
        return engine.up(self.stack, lambda: catalog_program(self.kubeconfig, self.installs, without), self.settings)


@pytest.fixture(scope="module")
def installed(platform_cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """Every catalog chart installed by one `up` of one stack; destroyed (and the stack removed) afterwards."""
    suffix = uuid.uuid4().hex[:6]
    installs = plan(suffix)
    settings: Settings = load_settings(
        {
            "home": str(tmp_path_factory.mktemp("catalog-home")),
            "pulumi_passphrase": "catalog-charts-passphrase",
            "secret_key": "test",
        },
        environ={},
    )
    stack = f"catalog-{suffix}"
    kubeconfig = Path(platform_cluster.kubeconfig).read_text()
    state = Installed(installs, stack, settings, kubeconfig)
    try:
        result = state.up()
        assert result.changes == {"create": 2 + 2 * len(installs)}  # + provider and root stack
        yield state
    finally:
        try:
            engine.destroy(stack, settings, remove=True)
        except Exception as exc:  # best effort: the session's cluster is deleted anyway
            logging.getLogger(__name__).warning("destroy of %s: %s", stack, exc)


def _objects(api: client.ApiClient, namespace: str) -> dict[str, list[Any]]:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    secrets_ = [s for s in core.list_namespaced_secret(namespace).items if s.type != "helm.sh/release.v1"]
    configmaps = [c for c in core.list_namespaced_config_map(namespace).items if c.metadata.name != "kube-root-ca.crt"]
    return {
        "Service": core.list_namespaced_service(namespace).items,
        "Deployment": apps.list_namespaced_deployment(namespace).items,
        "StatefulSet": apps.list_namespaced_stateful_set(namespace).items,
        "Pod": core.list_namespaced_pod(namespace).items,
        "PersistentVolumeClaim": core.list_namespaced_persistent_volume_claim(namespace).items,
        "Secret": secrets_,
        "ConfigMap": configmaps,
    }


def test_every_catalog_chart_is_installed_and_keeps_the_contract(installed: Installed, api) -> None:
    assert len(installed.installs) >= 10
    for item in installed.installs:
        slug = item.template.slug
        objects = _objects(api, item.namespace)

        # the Service the platform's Ingress points at
        services = {s.metadata.name: s for s in objects["Service"]}
        assert item.release in services, f"{slug}: no Service named {item.release}"
        ports = [p.port for p in services[item.release].spec.ports]
        assert item.template.default_port in ports, f"{slug}: Service ports {ports}"

        # the instance and name labels on every object
        for kind, items in objects.items():
            for obj in items:
                labels = obj.metadata.labels or {}
                assert labels.get(INSTANCE) == item.release, f"{slug}: {kind} {obj.metadata.name} labels {labels}"
                assert labels.get(NAME), f"{slug}: {kind} {obj.metadata.name} has no {NAME}"

        # claims Bound, kept on uninstall, on the default class
        claims = objects["PersistentVolumeClaim"]
        assert claims, f"{slug}: no PersistentVolumeClaim"
        for claim in claims:
            assert claim.status.phase == "Bound", f"{slug}: claim {claim.metadata.name} {claim.status.phase}"
            assert (claim.metadata.annotations or {}).get("helm.sh/resource-policy") == "keep"
            assert claim.spec.storage_class_name == "kaiden-local"

        # workloads Ready, every container with probes, requests and limits
        workloads = objects["Deployment"] + objects["StatefulSet"]
        assert workloads, f"{slug}: no workload"
        for workload in workloads:
            assert (workload.status.ready_replicas or 0) == workload.spec.replicas >= 1, (
                f"{slug}: {workload.metadata.name} not ready"
            )
            for container in workload.spec.template.spec.containers:
                assert container.readiness_probe and container.liveness_probe, f"{slug}: {container.name} probes"
                resources = container.resources
                assert set(resources.requests) >= {"cpu", "memory"}, f"{slug}: {container.name} requests"
                assert set(resources.limits) >= {"cpu", "memory"}, f"{slug}: {container.name} limits"
        pods = objects["Pod"]
        assert pods and all(p.status.phase == "Running" for p in pods), f"{slug}: pods not running"

        # passwords: in the chart's Secret, referenced by secretKeyRef, nowhere else in plain text
        stored = {
            base64.b64decode(value).decode() for secret in objects["Secret"] for value in (secret.data or {}).values()
        }
        for key, password in item.passwords.items():
            assert password in stored, f"{slug}: {key} is not in a Secret"
            for kind in ("Service", "Deployment", "StatefulSet", "Pod", "PersistentVolumeClaim", "ConfigMap"):
                for obj in objects[kind]:
                    text = json.dumps(api.sanitize_for_serialization(obj))
                    assert password not in text, f"{slug}: {key} appears in {kind} {obj.metadata.name}"
        if item.passwords:
            refs = [
                env.value_from.secret_key_ref.name
                for pod in pods
                for container in pod.spec.containers
                for env in container.env or []
                if env.value_from and env.value_from.secret_key_ref
            ]
            assert refs, f"{slug}: no container reads the Secret"


def test_uninstall_keeps_the_volume_and_a_reinstall_adopts_it(installed: Installed, api) -> None:
    """What "delete, keep volumes" relies on: the release goes, its claim stays (Bound), and installing the
    same release again takes the same claim back."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    item = next(i for i in installed.installs if i.template.slug == "postgresql")
    claim_name = f"{item.release}-data"
    kept_uid = core.read_namespaced_persistent_volume_claim(claim_name, item.namespace).metadata.uid

    removed = installed.up(without=frozenset({"postgresql"}))
    assert removed.changes.get("delete") == 1
    assert apps.list_namespaced_stateful_set(item.namespace).items == []
    assert [s.metadata.name for s in core.list_namespaced_service(item.namespace).items] == []
    claim = core.read_namespaced_persistent_volume_claim(claim_name, item.namespace)
    assert claim.metadata.uid == kept_uid and claim.status.phase == "Bound"
    # the kept claim still says whose it was: that is how the service stack finds volumes to delete
    assert claim.metadata.labels[INSTANCE] == item.release

    again = installed.up()
    assert again.changes.get("create") == 1
    claim = core.read_namespaced_persistent_volume_claim(claim_name, item.namespace)
    assert claim.metadata.uid == kept_uid, "the reinstall made a new claim instead of adopting the kept one"
    status = apps.read_namespaced_stateful_set_status(item.release, item.namespace).status
    assert status.ready_replicas == 1


def test_helm_installs_from_the_portal_chart_repository(app, platform_cluster, api, tmp_path: Path) -> None:
    """The portal's /charts is a real Helm repository: Helm (inside the provider) reads index.yaml, fetches
    the archive by its relative URL and installs it, as it would from any public repository."""
    from werkzeug.serving import make_server

    requested: list[str] = []

    def recording(environ, start_response):
        requested.append(environ["PATH_INFO"])
        return app(environ, start_response)

    server = make_server("127.0.0.1", 0, recording, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    repo_url = f"http://127.0.0.1:{server.server_port}/charts"
    suffix = uuid.uuid4().hex[:6]
    namespace, release, password = f"repo-{suffix}", f"redis-{suffix}", f"pw-{secrets.token_hex(8)}"
    kubeconfig = Path(platform_cluster.kubeconfig).read_text()
    template = next(t for t in LOCAL if t.slug == "redis")

    def program() -> None:
        provider = k8s.Provider("cluster", kubeconfig=pulumi.Output.secret(kubeconfig))
        opts = pulumi.ResourceOptions(provider=provider)
        ns = k8s.core.v1.Namespace("ns", metadata={"name": namespace}, opts=opts)
        k8s.helm.v3.Release(
            "redis",
            name=release,
            chart=template.chart.name,
            version=template.chart.version,
            repository_opts={"repo": repo_url},
            namespace=ns.metadata["name"],
            values={"auth": {"password": pulumi.Output.secret(password)}},
            timeout=120,
            opts=opts,
        )
        pulumi.export("chart", "redis")

    settings = load_settings(
        {"home": str(tmp_path / "home"), "pulumi_passphrase": "repo-passphrase", "secret_key": "test"}, environ={}
    )
    stack = f"chartrepo-{suffix}"
    try:
        result = engine.up(stack, program, settings)
        assert result.changes == {"create": 4}  # root stack, provider, namespace, release
        assert "/charts/index.yaml" in requested and "/charts/redis-0.1.0.tgz" in requested, requested
        service = client.CoreV1Api(api).read_namespaced_service(release, namespace)
        assert [p.port for p in service.spec.ports] == [template.default_port]
        status = client.AppsV1Api(api).read_namespaced_stateful_set_status(release, namespace).status
        assert status.ready_replicas == 1
    finally:
        try:
            engine.destroy(stack, settings, remove=True)
        finally:
            server.shutdown()
            thread.join(timeout=10)


def test_container_app_with_user_values_and_no_volume(installed: Installed, api) -> None:
    """User values reach the objects: another image port, two replicas, plain env, no volume (emptyDir),
    the secret variable under its chosen name; the Service still forwards the template's port."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    base = next(i for i in installed.installs if i.template.slug == "container")
    item = Install(
        base.template,
        f"{base.namespace}-custom",
        f"{base.release[: MAX_RELEASE_NAME - 7]}-custom",
        {"secretEnv.value": "s3cr3t-x"},
    )
    user_values = nest(
        {
            "image.repository": "ghcr.io/example/api",
            "image.tag": "2.1",
            "containerPort": 8080,
            "replicaCount": 2,
            "persistence.enabled": False,
            "secretEnv.name": "API_KEY",
            "env": {"LOG_LEVEL": "debug"},
        }
    )

    def program() -> None:
        provider = k8s.Provider("cluster", kubeconfig=pulumi.Output.secret(installed.kubeconfig))
        opts = pulumi.ResourceOptions(provider=provider)
        ns = k8s.core.v1.Namespace("ns", metadata={"name": item.namespace}, opts=opts)
        chart = resolve_chart(item.template.chart.repository, item.template.chart.name, item.template.chart.version)
        secret_values = nest({k: pulumi.Output.secret(v) for k, v in item.passwords.items()})
        k8s.helm.v3.Release(
            "container",
            name=item.release,
            chart=chart.chart,
            namespace=ns.metadata["name"],
            values=deep_merge(deep_merge(item.values(), user_values), secret_values),
            timeout=120,
            opts=opts,
        )

    stack = f"{installed.stack}-custom"
    try:
        engine.up(stack, program, installed.settings)
        deployment = apps.read_namespaced_deployment(item.release, item.namespace)
        assert deployment.status.ready_replicas == 2
        pod_spec = deployment.spec.template.spec
        (container,) = pod_spec.containers
        assert container.image == "ghcr.io/example/api:2.1"
        assert [(p.name, p.container_port) for p in container.ports] == [("http", 8080)]
        env = {e.name: e for e in container.env}
        assert env["LOG_LEVEL"].value == "debug"
        assert env["API_KEY"].value is None and env["API_KEY"].value_from.secret_key_ref.key == "secret-value"
        assert pod_spec.volumes[0].empty_dir is not None and pod_spec.volumes[0].persistent_volume_claim is None
        assert core.list_namespaced_persistent_volume_claim(item.namespace).items == []
        service = core.read_namespaced_service(item.release, item.namespace)
        assert [(p.port, p.target_port) for p in service.spec.ports] == [(80, "http")]
        secret = core.read_namespaced_secret(f"{item.release}-secret", item.namespace)
        assert base64.b64decode(secret.data["secret-value"]).decode() == "s3cr3t-x"
    finally:
        engine.destroy(stack, installed.settings, remove=True)

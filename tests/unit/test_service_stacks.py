"""The workspace and service stack programs under Pulumi mocks: resources, names, merged values, secrets, DNS."""

from __future__ import annotations

from pathlib import Path

import pulumi

from stacks import cloud_service as svc
from stacks import workspace as ws
from tests.support import run_under_mocks

CHART = str(Path(__file__).resolve().parents[2] / "catalog" / "charts" / "hello")
RELEASE = "kubernetes:helm.sh/v3:Release"
INGRESS = "kubernetes:networking.k8s.io/v1:Ingress"
DNS = "cloudflare:index/dnsRecord:DnsRecord"
SECRET_SIG = "4dabf18193072939515e22adb298388d"
KUBECONFIG = "apiVersion: v1\nkind: Config\n"


def _is_secret(value: object) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG) == "1b47061264138c4ac30d75fd1eb44270"


def _reveal(value: object) -> object:
    """Replace every secret-marked value by its plaintext (to compare whole structures)."""
    if _is_secret(value):
        return _reveal(value["value"])  # type: ignore[index]
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_reveal(v) for v in value]
    return value


class _Mocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources.append(args)
        outputs = dict(args.inputs)
        if args.typ == RELEASE:
            outputs["status"] = {"name": args.inputs["name"], "status": "deployed", "revision": 3, "version": "1.0.0"}
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}

    def by_type(self) -> dict[str, list[pulumi.runtime.MockResourceArgs]]:
        found: dict[str, list[pulumi.runtime.MockResourceArgs]] = {}
        for res in self.resources:
            found.setdefault(res.typ, []).append(res)
        return found


def _run(program) -> _Mocks:
    mocks = _Mocks()
    run_under_mocks(program, mocks)
    return mocks


def _spec(**overrides) -> svc.ServiceSpec:
    values = {
        "kubeconfig": KUBECONFIG,
        "workspace_slug": "acme",
        "reference_id": "cache",
        "chart": svc.ChartSpec(chart=CHART, version="0.1.0"),
        "port": 6379,
        "default_values": {"image": {"repository": "redis", "tag": "7"}, "auth": {"enabled": True}, "maxmemory": "1"},
        "values": {"maxmemory": "256mb", "persistence.enabled": True, "persistence.size": "2Gi"},
        "secret_values": {"auth.password": "s3cret-pass"},
        "ingress": svc.IngressSpec(host="cache.apps.example.com", cert_issuer="letsencrypt-staging"),
    }
    values.update(overrides)
    return svc.ServiceSpec(**values)


# ---------------------------------------------------------------- pure helpers


def test_nest_turns_dotted_keys_into_dicts() -> None:
    assert svc.nest({"a.b.c": 1, "a.d": 2, "e": 3}) == {"a": {"b": {"c": 1}, "d": 2}, "e": 3}


def test_deep_merge_merges_dicts_and_replaces_the_rest_without_touching_inputs() -> None:
    base = {"a": {"b": 1, "c": [1]}, "d": 1}
    merged = svc.deep_merge(base, {"a": {"c": [2], "e": 3}, "d": {"x": 1}})
    assert merged == {"a": {"b": 1, "c": [2], "e": 3}, "d": {"x": 1}}
    assert base == {"a": {"b": 1, "c": [1]}, "d": 1}


def test_names() -> None:
    assert svc.stack_name("acme", "blog") == "svc-acme-blog"
    assert svc.release_name("acme", "blog") == "paas-ws-acme-blog"
    assert ws.stack_name("acme") == "ws-acme"
    assert ws.namespace_name("acme") == "paas-ws-acme"


# ---------------------------------------------------------------- workspace stack


def test_workspace_stack_declares_namespace_quota_and_limits() -> None:
    quota = {"requests.cpu": "8", "requests.memory": "16Gi", "pods": "100"}
    mocks = _run(lambda: ws.workspace(ws.WorkspaceSpec(kubeconfig=KUBECONFIG, slug="acme", quota=quota)))
    by_type = mocks.by_type()
    assert sorted(by_type) == sorted(
        [
            "pulumi:providers:kubernetes",
            "kubernetes:core/v1:Namespace",
            "kubernetes:core/v1:ResourceQuota",
            "kubernetes:core/v1:LimitRange",
        ]
    )
    assert _is_secret(by_type["pulumi:providers:kubernetes"][0].inputs["kubeconfig"])
    assert by_type["kubernetes:core/v1:Namespace"][0].inputs["metadata"]["name"] == "paas-ws-acme"
    rq = by_type["kubernetes:core/v1:ResourceQuota"][0].inputs
    assert rq["metadata"]["name"] == ws.QUOTA_NAME
    assert rq["metadata"]["namespace"] == "paas-ws-acme"
    assert rq["spec"]["hard"] == quota
    lr = by_type["kubernetes:core/v1:LimitRange"][0].inputs
    assert lr["metadata"]["namespace"] == "paas-ws-acme"
    assert lr["spec"]["limits"][0]["type"] == "Container"
    assert lr["spec"]["limits"][0]["default"] == ws.DEFAULT_LIMITS


# ---------------------------------------------------------------- service stack


def test_service_stack_declares_release_with_merged_values_and_secret_password() -> None:
    mocks = _run(lambda: svc.cloud_service(_spec()))
    by_type = mocks.by_type()
    assert sorted(by_type) == sorted(["pulumi:providers:kubernetes", RELEASE, INGRESS])
    assert _is_secret(by_type["pulumi:providers:kubernetes"][0].inputs["kubeconfig"])

    release = by_type[RELEASE][0].inputs
    assert release["name"] == "paas-ws-acme-cache"
    assert release["namespace"] == "paas-ws-acme"
    assert release["chart"] == CHART
    assert release["version"] == "0.1.0"
    assert "repositoryOpts" not in release
    values = release["values"]
    # the password leaf is secret-marked (or the whole values object is), never a plain string
    password = values["auth"]["password"] if isinstance(values, dict) and "auth" in values else None
    assert _is_secret(values) or _is_secret(password)
    assert _reveal(values) == {
        "image": {"repository": "redis", "tag": "7"},
        "auth": {"enabled": True, "password": "s3cret-pass"},
        "maxmemory": "256mb",
        "persistence": {"enabled": True, "size": "2Gi"},
    }


def test_secret_values_under_a_key_the_defaults_do_not_have() -> None:
    spec = _spec(default_values={}, values={}, secret_values={"auth.password": "pw-123456"})
    release = _run(lambda: svc.cloud_service(spec)).by_type()[RELEASE][0].inputs
    assert _reveal(release["values"]) == {"auth": {"password": "pw-123456"}}


def test_plain_values_never_contain_secrets() -> None:
    spec = _spec()
    assert "password" not in str(spec.plain_values())
    assert spec.plain_values()["auth"] == {"enabled": True}


def test_service_stack_ingress_names_host_class_annotations_and_tls() -> None:
    mocks = _run(lambda: svc.cloud_service(_spec()))
    ingress = mocks.by_type()[INGRESS][0].inputs
    meta = ingress["metadata"]
    assert meta["name"] == "paas-ws-acme-cache"
    assert meta["namespace"] == "paas-ws-acme"
    assert meta["labels"][svc.INSTANCE_LABEL] == "paas-ws-acme-cache"
    assert meta["annotations"] == {
        svc.ENTRYPOINTS_ANNOTATION: "websecure",
        svc.ISSUER_ANNOTATION: "letsencrypt-staging",
        svc.SKIP_AWAIT_ANNOTATION: "true",
    }
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "traefik"
    assert spec["tls"] == [{"hosts": ["cache.apps.example.com"], "secretName": "paas-ws-acme-cache-tls"}]
    rule = spec["rules"][0]
    assert rule["host"] == "cache.apps.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "paas-ws-acme-cache", "port": {"number": 6379}}


def test_no_ingress_and_no_dns_when_ingress_is_off() -> None:
    cloudflare = svc.CloudflareSpec(api_token="cf-token-123", zone_id="zone1", target="apps.example.com")
    mocks = _run(lambda: svc.cloud_service(_spec(ingress=None, cloudflare=cloudflare)))
    assert sorted(mocks.by_type()) == sorted(["pulumi:providers:kubernetes", RELEASE])


def test_no_dns_record_without_cloudflare() -> None:
    types = [r.typ for r in _run(lambda: svc.cloud_service(_spec())).resources]
    assert DNS not in types
    assert not any(t.startswith("pulumi:providers:cloudflare") for t in types)


def test_dns_record_when_cloudflare_is_configured() -> None:
    cloudflare = svc.CloudflareSpec(api_token="cf-token-123", zone_id="zone1", target="apps.example.com")
    mocks = _run(lambda: svc.cloud_service(_spec(cloudflare=cloudflare)))
    by_type = mocks.by_type()
    record = by_type[DNS][0].inputs
    assert record["zoneId"] == "zone1"
    assert record["name"] == "cache.apps.example.com"
    assert record["type"] == "CNAME"
    assert record["content"] == "apps.example.com"
    assert record["proxied"] is True
    provider = by_type["pulumi:providers:cloudflare"][0].inputs
    assert _is_secret(provider["apiToken"])
    assert _reveal(provider["apiToken"]) == "cf-token-123"


def test_repository_chart_sets_repository_opts() -> None:
    chart = svc.ChartSpec(chart="postgresql", version="15.5.0", repo="https://charts.example.com")
    release = _run(lambda: svc.cloud_service(_spec(chart=chart))).by_type()[RELEASE][0].inputs
    assert release["chart"] == "postgresql"
    assert release["repositoryOpts"] == {"repo": "https://charts.example.com"}

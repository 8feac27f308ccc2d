"""The smoke program under Pulumi mocks: its resources, their names and namespaces, its outputs."""

from __future__ import annotations

from pathlib import Path

import pulumi
import pytest

from stacks.smoke import CONFIGMAP_NAME, TOKEN_SECRET_NAME, SmokeSpec, _image, smoke
from tests.support import run_under_mocks

CHART = str(Path(__file__).resolve().parents[2] / "catalog" / "charts" / "hello")
RELEASE = "kubernetes:helm.sh/v3:Release"
SECRET_SIG = "4dabf18193072939515e22adb298388d"  # Pulumi's marker for a secret value on the wire


def _secret(value: object) -> object:
    """The plaintext of a secret-marked input; fails when the input was not marked secret."""
    assert isinstance(value, dict) and value.get(SECRET_SIG) == "1b47061264138c4ac30d75fd1eb44270", value
    return value["value"]


class _Mocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources.append(args)
        outputs = dict(args.inputs)
        if args.typ == RELEASE:
            outputs["status"] = {"name": args.inputs["name"], "status": "deployed", "revision": 1}
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}


def _run(spec: SmokeSpec) -> _Mocks:
    mocks = _Mocks()
    run_under_mocks(lambda: smoke(spec), mocks)
    return mocks


def _by_type(mocks: _Mocks) -> dict[str, list[pulumi.runtime.MockResourceArgs]]:
    found: dict[str, list[pulumi.runtime.MockResourceArgs]] = {}
    for res in mocks.resources:
        found.setdefault(res.typ, []).append(res)
    return found


def _spec(**overrides) -> SmokeSpec:
    values: dict = {"kubeconfig": "apiVersion: v1\nkind: Config\n", "chart_path": CHART, "namespace": "smoke-a"}
    values.update(overrides)
    return SmokeSpec(**values)


def test_declares_provider_namespace_configmap_and_release() -> None:
    mocks = _run(_spec())
    by_type = _by_type(mocks)
    assert sorted(by_type) == sorted(
        ["pulumi:providers:kubernetes", "kubernetes:core/v1:Namespace", "kubernetes:core/v1:ConfigMap", RELEASE]
    )
    provider = by_type["pulumi:providers:kubernetes"][0]
    assert provider.name == "cluster"
    assert _secret(provider.inputs["kubeconfig"]) == "apiVersion: v1\nkind: Config\n"

    namespace = by_type["kubernetes:core/v1:Namespace"][0]
    assert namespace.inputs["metadata"]["name"] == "smoke-a"

    configmap = by_type["kubernetes:core/v1:ConfigMap"][0]
    assert configmap.inputs["metadata"]["name"] == CONFIGMAP_NAME
    assert configmap.inputs["metadata"]["namespace"] == "smoke-a"
    assert configmap.inputs["data"] == {"greeting": "hello from kaiden"}

    release = by_type[RELEASE][0]
    assert release.inputs["name"] == "hello"
    assert release.inputs["namespace"] == "smoke-a"
    assert release.inputs["chart"] == CHART
    assert release.inputs["values"]["image"] == {"repository": "registry.local/kaiden/hello", "tag": "1.0.0"}
    assert release.inputs["values"]["replicaCount"] == 1
    assert release.inputs["values"]["config"] == {"GREETING": "hello from kaiden"}


def test_every_kubernetes_object_uses_the_explicit_provider() -> None:
    mocks = _run(_spec())
    for res in mocks.resources:
        if res.typ.startswith("kubernetes:"):
            assert res.provider is not None and "::cluster::" in res.provider, res.typ


def test_spec_drives_names_values_and_the_optional_token_secret() -> None:
    spec = _spec(
        namespace="other",
        release_name="web",
        image="registry.local:5000/team/app:2.1",
        replicas=3,
        settings={"mode": "fast"},
        api_token="tok-123456",
    )
    mocks = _run(spec)
    by_type = _by_type(mocks)
    release = by_type[RELEASE][0]
    assert release.inputs["name"] == "web"
    assert release.inputs["namespace"] == "other"
    assert release.inputs["values"]["image"] == {"repository": "registry.local:5000/team/app", "tag": "2.1"}
    assert release.inputs["values"]["replicaCount"] == 3
    assert release.inputs["values"]["config"] == {"MODE": "fast"}
    secret = by_type["kubernetes:core/v1:Secret"][0]
    assert secret.inputs["metadata"] == {
        "name": TOKEN_SECRET_NAME,
        "namespace": "other",
        "labels": {"app.kubernetes.io/part-of": "kaiden-smoke"},
    }
    assert _secret(secret.inputs["stringData"]) == {"token": "tok-123456"}


def test_no_token_secret_without_a_token() -> None:
    mocks = _run(_spec())
    assert "kubernetes:core/v1:Secret" not in _by_type(mocks)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("nginx", {"repository": "nginx", "tag": "latest"}),
        ("nginx:1.27", {"repository": "nginx", "tag": "1.27"}),
        ("localhost:5000/nginx", {"repository": "localhost:5000/nginx", "tag": "latest"}),
        ("localhost:5000/nginx:1.0", {"repository": "localhost:5000/nginx", "tag": "1.0"}),
    ],
)
def test_image_reference_split(image: str, expected: dict[str, str]) -> None:
    assert _image(image) == expected


def test_chart_is_ours_and_complete() -> None:
    chart = Path(CHART)
    assert (chart / "Chart.yaml").read_text().startswith("apiVersion: v2")
    templates = {p.name for p in (chart / "templates").iterdir()}
    assert {"deployment.yaml", "service.yaml", "configmap.yaml"} <= templates
    deployment = (chart / "templates" / "deployment.yaml").read_text()
    for needle in ("readinessProbe", "livenessProbe", "resources", "replicas", "configMapRef"):
        assert needle in deployment

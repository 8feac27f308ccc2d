"""The platform program under Pulumi mocks: its components, with in-cluster or external stores."""

from __future__ import annotations

import pulumi
import pytest

from stacks.platform import PlatformSpec, platform
from tests.support import run_under_mocks


class _Mocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources.append(args)
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}


def _run(spec: PlatformSpec) -> _Mocks:
    mocks = _Mocks()
    run_under_mocks(lambda: platform(spec), mocks)
    return mocks


def _spec(**overrides) -> PlatformSpec:
    values = dict(
        image="kaiden:test",
        hostname="kaiden.example.com",
        secret_key="s3cret-key",
        encryption_key="enc-key",
        pulumi_passphrase="pass-phrase",
    )
    values.update(overrides)
    return PlatformSpec(**values)


@pytest.mark.parametrize("external", [False, True])
def test_platform_declares_components(external: bool) -> None:
    spec = _spec(database_url="postgresql+psycopg://db/kaiden", redis_url="redis://r:6379/0") if external else _spec()
    mocks = _run(spec)
    by_type: dict[str, list[str]] = {}
    for res in mocks.resources:
        by_type.setdefault(res.typ, []).append(res.name)
    assert sorted(by_type["kubernetes:apps/v1:Deployment"]) == ["gateway", "portal", "worker"]
    assert sorted(by_type["kubernetes:core/v1:Service"]) == (
        ["gateway", "portal"] if external else ["gateway", "portal", "postgresql", "redis"]
    )
    assert ("kubernetes:apps/v1:StatefulSet" in by_type) is (not external)
    ingress = next(r for r in mocks.resources if r.typ == "kubernetes:networking.k8s.io/v1:Ingress")
    assert ingress.inputs["spec"]["rules"][0]["host"] == "kaiden.example.com"
    deployments = {r.name: r for r in mocks.resources if r.typ == "kubernetes:apps/v1:Deployment"}
    assert deployments["portal"].inputs["spec"]["replicas"] == 2
    command = deployments["worker"].inputs["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command == ["kaiden", "worker"]

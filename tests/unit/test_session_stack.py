"""The support-session stack under Pulumi mocks: tunnel, ingress, DNS, Access, secrets, outputs, destroy order."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pytest
from pulumi.runtime.mocks import MockMonitor

from stacks import support_session as ss

PROVIDER = "pulumi:providers:cloudflare"
TUNNEL = "cloudflare:index/zeroTrustTunnelCloudflared:ZeroTrustTunnelCloudflared"
CONFIG = "cloudflare:index/zeroTrustTunnelCloudflaredConfig:ZeroTrustTunnelCloudflaredConfig"
POLICY = "cloudflare:index/zeroTrustAccessPolicy:ZeroTrustAccessPolicy"
APP = "cloudflare:index/zeroTrustAccessApplication:ZeroTrustAccessApplication"
DNS = "cloudflare:index/dnsRecord:DnsRecord"
TOKEN_CALL = "cloudflare:index/getZeroTrustTunnelCloudflaredToken:getZeroTrustTunnelCloudflaredToken"

# How the SDK marks a secret value in serialized resource inputs.
SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"

SESSION_ID = "0f8e4c3a-1b2d-4e5f-8a9b-0c1d2e3f4a5b"
ACCOUNT = "699d98642c564d2e855e9661899b7252"
ZONE = "023e105f4ecef8ad9ca31a8372d0c353"
DOMAIN = "support.example.com"
EMAIL = "dana.engineer@example.com"
API_TOKEN = "cf-api-token-abc123"
TUNNEL_TOKEN = "eyJhIjoiYWNjb3VudCIsInQiOiJ0dW5uZWwiLCJzIjoic2VjcmV0In0="
WEB_HOST = f"sess-{SESSION_ID}.{DOMAIN}"
SSH_HOST = f"sess-{SESSION_ID}-ssh.{DOMAIN}"


def _spec(**overrides: Any) -> ss.SessionStackSpec:
    values: dict[str, Any] = {
        "session_id": SESSION_ID,
        "account_id": ACCOUNT,
        "zone_id": ZONE,
        "support_domain": DOMAIN,
        "engineer_email": EMAIL,
        "session_duration": "2h",
        "api_token": API_TOKEN,
    }
    values.update(overrides)
    return ss.SessionStackSpec(**values)


def _is_secret(value: object) -> bool:
    return isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG


class _Mocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []
        self.calls: list[pulumi.runtime.MockCallArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources.append(args)
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.calls.append(args)
        if args.token == TOKEN_CALL:
            return {"accountId": args.args["accountId"], "tunnelId": args.args["tunnelId"], "token": TUNNEL_TOKEN}
        return {}


@dataclass
class _Run:
    mocks: _Mocks
    outputs: dict[str, tuple[Any, bool]]  # export name → (value, is secret)
    dependencies: dict[str, set[str]] = field(default_factory=dict)  # resource name → names it depends on
    urns: dict[str, str] = field(default_factory=dict)  # resource name → URN

    def one(self, typ: str) -> dict[str, Any]:
        found = [r for r in self.mocks.resources if r.typ == typ]
        assert len(found) == 1, f"{typ}: {len(found)} resources"
        return found[0].inputs

    def named(self, name: str) -> pulumi.runtime.MockResourceArgs:
        return next(r for r in self.mocks.resources if r.name == name)

    def of_type(self, typ: str) -> list[pulumi.runtime.MockResourceArgs]:
        return [r for r in self.mocks.resources if r.typ == typ]

    def depends_on(self, name: str) -> set[str]:
        """Every resource `name` depends on, directly or through others."""
        seen: set[str] = set()
        todo = list(self.dependencies[name])
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(self.dependencies.get(current, ()))
        return seen

    def destroy_order(self) -> list[str]:
        """An order the engine may delete in: nothing goes before what depends on it (reverse topological)."""
        created: list[str] = []
        pending = dict(self.dependencies)
        while pending:
            ready = sorted(name for name, deps in pending.items() if deps <= set(created))
            assert ready, f"dependency cycle among {sorted(pending)}"
            created.extend(ready)
            for name in ready:
                del pending[name]
        return created[::-1]


def _run(spec: ss.SessionStackSpec, monkeypatch: pytest.MonkeyPatch) -> _Run:
    """Run the program under mocks; collect its exports (with secretness) and the engine-level dependencies."""
    mocks = _Mocks()
    exports: dict[str, Any] = {}
    run = _Run(mocks=mocks, outputs={})
    monkeypatch.setattr(pulumi, "export", lambda name, value: exports.__setitem__(name, value))

    register = MockMonitor.RegisterResource

    def recording_register(monitor: MockMonitor, request: Any) -> Any:
        # `dependencies` is what the engine stores in the state and orders a destroy by.
        response = register(monitor, request)
        run.urns[request.name] = response.urn
        run.dependencies[request.name] = set(request.dependencies)
        return response

    monkeypatch.setattr(MockMonitor, "RegisterResource", recording_register)
    pulumi.runtime.set_mocks(mocks, project="kaiden", stack="test", preview=False)

    async def settle() -> None:
        for name, value in exports.items():
            output = pulumi.Output.from_input(value)
            run.outputs[name] = (await output.future(), await output.is_secret())

    @pulumi.runtime.test
    def program():
        ss.support_session(spec)
        return pulumi.Output.from_input(settle())

    program()
    by_urn = {urn: name for name, urn in run.urns.items()}
    run.dependencies = {name: {by_urn[urn] for urn in deps if urn in by_urn} for name, deps in run.dependencies.items()}
    return run


# ---------------------------------------------------------------- the spec


def test_spec_defaults_and_derived_names() -> None:
    spec = _spec()
    assert spec.services == ("ssh", "web")
    assert (spec.ssh_port, spec.web_port) == (22, 7681)
    assert spec.login_method_ids == ()
    assert spec.stack_name == f"sess-{SESSION_ID}"
    assert spec.hostnames == {"ssh": SSH_HOST, "web": WEB_HOST}
    assert spec.public_hostname == WEB_HOST
    assert spec.access_session_duration == "120m"


def test_spec_normalizes_uuid_domain_case_and_sequences() -> None:
    spec = _spec(
        session_id=uuid.UUID(SESSION_ID),
        support_domain="Support.Example.COM",
        services=["web", "ssh", "web"],
        login_method_ids=["idp-1"],
    )
    assert spec.session_id == SESSION_ID
    assert spec.support_domain == DOMAIN
    assert spec.services == ("ssh", "web")
    assert spec.login_method_ids == ("idp-1",)
    assert hash(spec) == hash(_spec(login_method_ids=("idp-1",)))


def test_the_api_token_stays_out_of_the_repr() -> None:
    assert API_TOKEN not in repr(_spec())


@pytest.mark.parametrize(
    ("value", "expected"),
    [(120, "120m"), (5, "5m"), ("2h", "120m"), ("90m", "90m"), ("1h30m", "90m"), (" 3H ", "180m"), ("0h45m", "45m")],
)
def test_cloudflare_duration(value: int | str, expected: str) -> None:
    assert ss.cloudflare_duration(value) == expected


@pytest.mark.parametrize(
    ("overrides", "field_name"),
    [
        ({"session_id": "Sess_1"}, "session_id"),
        ({"session_id": ""}, "session_id"),
        ({"session_id": "abc-"}, "session_id"),
        ({"session_id": "x" * 60}, "session_id"),
        ({"account_id": ""}, "account_id"),
        ({"zone_id": "zone id"}, "zone_id"),
        ({"support_domain": "localhost"}, "support_domain"),
        ({"support_domain": "-bad.example.com"}, "support_domain"),
        ({"support_domain": "under_score.example.com"}, "support_domain"),
        ({"support_domain": "example.com."}, "support_domain"),
        ({"support_domain": ("a" * 63 + ".") * 4 + "example.com"}, "support_domain"),
        # valid alone (216 characters), too long once `sess-<uuid>-ssh.` is in front of it
        ({"support_domain": ("a" * 63 + ".") * 3 + "b" * 20 + ".com"}, "support_domain"),
        ({"engineer_email": "dana"}, "engineer_email"),
        ({"engineer_email": "dana@localhost"}, "engineer_email"),
        ({"engineer_email": "da na@example.com"}, "engineer_email"),
        ({"engineer_email": "a@b@example.com"}, "engineer_email"),
        ({"engineer_email": "dana@example.com,eve@example.com"}, "engineer_email"),
        ({"services": ()}, "services"),
        ({"services": ("ssh", "rdp")}, "services"),
        ({"services": "ssh"}, "services"),
        ({"ssh_port": 0}, "ssh_port"),
        ({"web_port": 70000}, "web_port"),
        ({"web_port": True}, "web_port"),
        ({"session_duration": 0}, "session_duration"),
        ({"session_duration": "2 hours"}, "session_duration"),
        ({"session_duration": "90"}, "session_duration"),
        ({"session_duration": ""}, "session_duration"),
        ({"session_duration": 1.5}, "session_duration"),
        ({"login_method_ids": "idp-1"}, "login_method_ids"),
        ({"login_method_ids": ("idp-1", "")}, "login_method_ids"),
        ({"login_method_ids": ("idp-1", "idp-1")}, "login_method_ids"),
        ({"api_token": " "}, "api_token"),
    ],
)
def test_invalid_specs_raise_naming_the_field(overrides: dict[str, Any], field_name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field_name}:"):
        _spec(**overrides)


# ---------------------------------------------------------------- resources


def test_every_resource_is_declared_with_the_explicit_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(_spec(), monkeypatch)
    assert sorted(r.typ for r in run.mocks.resources) == sorted([PROVIDER, TUNNEL, CONFIG, POLICY, APP, DNS, DNS])
    provider_urn = run.urns["cloudflare"]
    for res in run.mocks.resources:
        if res.typ != PROVIDER:
            assert res.provider == f"{provider_urn}::cloudflare-id", res.name
    assert [call.provider for call in run.mocks.calls if call.token == TOKEN_CALL] == [f"{provider_urn}::cloudflare-id"]


def test_the_provider_gets_the_api_token_as_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    token = _run(_spec(), monkeypatch).one(PROVIDER)["apiToken"]
    assert _is_secret(token)
    assert token["value"] == API_TOKEN


def test_the_tunnel_is_remotely_managed_and_named_after_the_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    tunnel = _run(_spec(), monkeypatch).one(TUNNEL)
    assert tunnel == {"accountId": ACCOUNT, "name": f"kaiden-sess-{SESSION_ID}", "configSrc": "cloudflare"}


def test_the_tunnel_config_belongs_to_the_tunnel(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _run(_spec(), monkeypatch).one(CONFIG)
    assert config["accountId"] == ACCOUNT
    assert config["tunnelId"] == "tunnel-id"


@pytest.mark.parametrize(
    ("services", "expected"),
    [
        (("ssh",), [{"hostname": SSH_HOST, "service": "ssh://localhost:22"}]),
        (("web",), [{"hostname": WEB_HOST, "service": "http://localhost:7681"}]),
        (
            ("web", "ssh"),
            [
                {"hostname": SSH_HOST, "service": "ssh://localhost:22"},
                {"hostname": WEB_HOST, "service": "http://localhost:7681"},
            ],
        ),
    ],
)
def test_ingress_rules_end_with_the_404_catch_all(
    services: tuple[str, ...], expected: list[dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _run(_spec(services=services), monkeypatch).one(CONFIG)
    assert config["config"]["ingresses"] == [*expected, {"service": "http_status:404"}]


def test_ingress_uses_the_local_ports_given(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _run(_spec(ssh_port=2222, web_port=8080), monkeypatch).one(CONFIG)
    services = [rule["service"] for rule in config["config"]["ingresses"]]
    assert services == ["ssh://localhost:2222", "http://localhost:8080", "http_status:404"]


@pytest.mark.parametrize(
    ("services", "hosts"),
    [
        (("ssh",), {"ssh": SSH_HOST}),
        (("web",), {"web": WEB_HOST}),
        (("ssh", "web"), {"ssh": SSH_HOST, "web": WEB_HOST}),
    ],
)
def test_one_proxied_cname_per_hostname_to_the_tunnel(
    services: tuple[str, ...], hosts: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _run(_spec(services=services), monkeypatch)
    records = {r.name: r.inputs for r in run.of_type(DNS)}
    assert sorted(records) == sorted(f"dns-{service}" for service in hosts)
    for service, host in hosts.items():
        record = records[f"dns-{service}"]
        assert record["zoneId"] == ZONE
        assert record["name"] == host
        assert record["type"] == "CNAME"
        assert record["content"] == "tunnel-id.cfargotunnel.com"
        assert record["proxied"] is True
        assert record["ttl"] == 1


def test_the_access_policy_allows_only_the_engineer(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = _run(_spec(), monkeypatch).one(POLICY)
    assert policy["accountId"] == ACCOUNT
    assert policy["decision"] == "allow"
    assert policy["includes"] == [{"email": {"email": EMAIL}}]
    assert "excludes" not in policy
    assert "requires" not in policy
    assert EMAIL in policy["name"]


def test_the_access_application_covers_the_hostnames_and_attaches_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    app = _run(_spec(), monkeypatch).one(APP)
    assert app["accountId"] == ACCOUNT
    assert "zoneId" not in app  # account-level, like the reusable policy it uses
    assert app["type"] == "self_hosted"
    assert app["domain"] == WEB_HOST
    assert app["destinations"] == [{"type": "public", "uri": SSH_HOST}, {"type": "public", "uri": WEB_HOST}]
    assert app["policies"] == [{"id": "access-policy-id", "precedence": 1}]
    assert app["sessionDuration"] == "120m"
    assert app["appLauncherVisible"] is False


def test_session_duration_in_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    app = _run(_spec(session_duration=45), monkeypatch).one(APP)
    assert app["sessionDuration"] == "45m"


def test_no_login_methods_means_every_login_method(monkeypatch: pytest.MonkeyPatch) -> None:
    app = _run(_spec(), monkeypatch).one(APP)
    assert "allowedIdps" not in app
    assert "autoRedirectToIdentity" not in app


def test_login_methods_restrict_the_identity_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    app = _run(_spec(login_method_ids=("idp-github", "idp-okta")), monkeypatch).one(APP)
    assert app["allowedIdps"] == ["idp-github", "idp-okta"]
    assert app["autoRedirectToIdentity"] is False


def test_a_single_login_method_skips_the_chooser(monkeypatch: pytest.MonkeyPatch) -> None:
    app = _run(_spec(login_method_ids=("idp-okta",)), monkeypatch).one(APP)
    assert app["allowedIdps"] == ["idp-okta"]
    assert app["autoRedirectToIdentity"] is True


# ---------------------------------------------------------------- outputs


def test_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(_spec(), monkeypatch)
    assert run.outputs == {
        "tunnel_id": ("tunnel-id", False),
        "tunnel_token": (TUNNEL_TOKEN, True),
        "public_hostname": (WEB_HOST, False),
        "hostnames": ({"ssh": SSH_HOST, "web": WEB_HOST}, False),
        "dns_record_id": ("dns-web-id", False),
        "access_app_id": ("access-app-id", False),
        "access_policy_id": ("access-policy-id", False),
    }
    (call,) = [c for c in run.mocks.calls if c.token == TOKEN_CALL]
    assert call.args == {"accountId": ACCOUNT, "tunnelId": "tunnel-id"}


def test_an_ssh_only_session_is_public_on_its_ssh_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(_spec(services=("ssh",)), monkeypatch)
    assert run.outputs["public_hostname"] == (SSH_HOST, False)
    assert run.outputs["dns_record_id"] == ("dns-ssh-id", False)
    assert run.one(APP)["domain"] == SSH_HOST


def test_the_tunnel_token_appears_in_no_resource_input(monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(_spec(), monkeypatch)
    assert all(TUNNEL_TOKEN not in str(r.inputs) for r in run.mocks.resources)


# ---------------------------------------------------------------- destroy order


def test_dependencies_delete_dns_then_app_then_policy_then_config_then_tunnel(monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(_spec(), monkeypatch)
    assert {"tunnel", "tunnel-config"} <= run.depends_on("access-policy")
    assert {"access-policy", "tunnel-config", "tunnel"} <= run.depends_on("access-app")
    for record in ("dns-ssh", "dns-web"):
        assert {"tunnel"} <= run.dependencies[record]  # the CNAME points at the tunnel
        assert {"access-app", "access-policy", "tunnel-config", "tunnel"} <= run.depends_on(record)
    assert "tunnel" in run.dependencies["tunnel-config"]
    assert run.dependencies["tunnel"] == set()

    order = [name for name in run.destroy_order() if name != "cloudflare"]
    assert order[:2] == ["dns-web", "dns-ssh"]
    assert order[2:] == ["access-app", "access-policy", "tunnel-config", "tunnel"]

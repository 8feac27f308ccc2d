"""The support-session stack `sess-<id>` (Cloudflare mode): a tunnel to one node, its ingress, DNS and Access.

A pure function of `SessionStackSpec`. One hostname per service, so each one speaks one protocol:
`sess-<id>.<support domain>` → the agent's web terminal (`http://localhost:<web port>`) and
`sess-<id>-ssh.<support domain>` → `ssh://localhost:<ssh port>`; only the session's services get a
hostname, and the tunnel's ingress always ends with the `http_status:404` catch-all. `public_hostname`
is the web hostname, or the ssh one for an ssh-only session. One Access application covers the
hostnames, with one reusable policy that allows the engineer's email and nobody else.

The tunnel is remotely managed (`config_src = "cloudflare"`): Cloudflare generates its secret and the
connector token is read back with `getZeroTrustTunnelCloudflaredToken`, so no secret is made here.

Create order (destroy is the reverse): tunnel → tunnel config → Access policy → Access application → DNS.
DNS goes first on destroy and last on create, so a hostname never resolves to the tunnel without Access
in front of it (not even after a destroy that failed half way, or while an unreachable agent's
cloudflared still runs); the application goes before the policy because it references the policy
(Cloudflare refuses to delete a policy still in use).
"""

from __future__ import annotations

import re
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import pulumi

with warnings.catch_warnings():
    # The package's __init__ imports its deprecated v4 aliases (AccessApplication, Tunnel, …), each of which
    # warns on import; we use none of them, and a warnings-as-errors run must not fail on our import.
    warnings.simplefilter("ignore", DeprecationWarning)
    import pulumi_cloudflare as cloudflare

SERVICES = ("ssh", "web")  # canonical order: ingress rules and hostnames follow it
DEFAULT_SSH_PORT = 22
DEFAULT_WEB_PORT = 7681  # the agent's local web terminal
CATCH_ALL_SERVICE = "http_status:404"
TUNNEL_DOMAIN = "cfargotunnel.com"
POLICY_PRECEDENCE = 1

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_EMAIL_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_CLOUDFLARE_ID = re.compile(r"^[A-Za-z0-9-]+$")
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?$")


def stack_name(session_id: str | uuid.UUID) -> str:
    return f"sess-{session_id}"


def is_hostname(value: str) -> bool:
    """RFC 1123: dot-separated labels of letters, digits and inner hyphens, ≤ 63 each, ≤ 253 in all."""
    if not value or len(value) > 253:
        return False
    return all(_LABEL.match(label) for label in value.lower().split("."))


def is_email(value: str) -> bool:
    """A plain `local@domain` address: dot-atom local part (≤ 64), a hostname with at least two labels."""
    local, at, domain = value.rpartition("@")
    return bool(at) and len(local) <= 64 and bool(_EMAIL_LOCAL.match(local)) and "." in domain and is_hostname(domain)


def cloudflare_duration(value: int | str) -> str:
    """Minutes (`120`) or a duration (`"2h"`, `"90m"`, `"1h30m"`) → Cloudflare's string in minutes (`"120m"`)."""
    if isinstance(value, bool):
        raise ValueError("session_duration: minutes (int) or a duration such as '2h' or '90m'")
    if isinstance(value, int):
        minutes = value
    elif isinstance(value, str):
        match = _DURATION.match(value.strip().lower())
        if match is None or not any(match.groups()):
            raise ValueError(f"session_duration: {value!r} is not minutes or a duration such as '2h' or '90m'")
        hours, mins = (int(part) if part else 0 for part in match.groups())
        minutes = hours * 60 + mins
    else:
        raise ValueError("session_duration: minutes (int) or a duration such as '2h' or '90m'")
    if minutes < 1:
        raise ValueError("session_duration: must be at least one minute")
    return f"{minutes}m"


def _port(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{name}: a TCP port 1-65535, got {value!r}")


def _cloudflare_id(name: str, value: object) -> None:
    if not isinstance(value, str) or not _CLOUDFLARE_ID.match(value):
        raise ValueError(f"{name}: a Cloudflare id (letters, digits, hyphens), got {value!r}")


def _strings(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"{name}: a sequence of strings, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class SessionStackSpec:
    """Everything the session stack declares. `api_token` is the Cloudflare provider's credential (made secret)."""

    session_id: str
    account_id: str
    zone_id: str
    support_domain: str
    engineer_email: str
    session_duration: int | str  # minutes, or "2h" / "90m"; see `access_session_duration`
    api_token: pulumi.Input[str] = field(repr=False)
    services: tuple[str, ...] = SERVICES
    ssh_port: int = DEFAULT_SSH_PORT
    web_port: int = DEFAULT_WEB_PORT
    login_method_ids: tuple[str, ...] = ()  # Access identity provider ids; empty: every login method

    def __post_init__(self) -> None:
        # Normalize (frozen, hence object.__setattr__): a UUID id as text, the domain lower case, sequences as
        # tuples (services in canonical order, without repeats) so that equal specs compare and hash equal.
        if isinstance(self.session_id, uuid.UUID):
            object.__setattr__(self, "session_id", str(self.session_id))
        session_id = self.session_id
        if not isinstance(session_id, str) or not all(
            _LABEL.match(label) for label in (f"sess-{session_id}", f"sess-{session_id}-ssh")
        ):
            raise ValueError(f"session_id: lower-case letters, digits and inner hyphens, got {session_id!r}")
        _cloudflare_id("account_id", self.account_id)
        _cloudflare_id("zone_id", self.zone_id)

        if not isinstance(self.support_domain, str) or "." not in self.support_domain:
            raise ValueError(f"support_domain: a DNS name such as support.example.com, got {self.support_domain!r}")
        object.__setattr__(self, "support_domain", self.support_domain.lower())
        if not is_hostname(self.support_domain) or not is_hostname(f"sess-{session_id}-ssh.{self.support_domain}"):
            raise ValueError(f"support_domain: not a valid (RFC 1123) host name: {self.support_domain!r}")

        if not isinstance(self.engineer_email, str) or not is_email(self.engineer_email):
            raise ValueError(f"engineer_email: not an email address: {self.engineer_email!r}")

        services = _strings("services", self.services)
        unknown = [service for service in services if service not in SERVICES]
        if not services or unknown:
            raise ValueError(f"services: a non-empty subset of {list(SERVICES)}, got {list(services)!r}")
        object.__setattr__(self, "services", tuple(s for s in SERVICES if s in services))

        _port("ssh_port", self.ssh_port)
        _port("web_port", self.web_port)
        cloudflare_duration(self.session_duration)  # raises naming the field

        login_methods = _strings("login_method_ids", self.login_method_ids)
        for method in login_methods:
            if not isinstance(method, str) or not _CLOUDFLARE_ID.match(method):
                raise ValueError(f"login_method_ids: not an identity provider id: {method!r}")
        if len(set(login_methods)) != len(login_methods):
            raise ValueError(f"login_method_ids: repeated ids in {list(login_methods)!r}")
        object.__setattr__(self, "login_method_ids", login_methods)

        if isinstance(self.api_token, str) and not self.api_token.strip():
            raise ValueError("api_token: empty")

    @property
    def stack_name(self) -> str:
        return stack_name(self.session_id)

    @property
    def hostnames(self) -> dict[str, str]:
        """Service → public hostname, for the session's services only."""
        names = {
            "web": f"sess-{self.session_id}.{self.support_domain}",
            "ssh": f"sess-{self.session_id}-ssh.{self.support_domain}",
        }
        return {service: names[service] for service in self.services}

    @property
    def primary_service(self) -> str:
        return "web" if "web" in self.services else "ssh"

    @property
    def public_hostname(self) -> str:
        return self.hostnames[self.primary_service]

    @property
    def access_session_duration(self) -> str:
        return cloudflare_duration(self.session_duration)

    def origin(self, service: str) -> str:
        """Where cloudflared on the node sends a service's traffic."""
        if service == "ssh":
            return f"ssh://localhost:{self.ssh_port}"
        return f"http://localhost:{self.web_port}"

    def ingress_rules(self) -> list[dict[str, str]]:
        """The tunnel's ingress: one rule per hostname, then the mandatory catch-all."""
        rules = [{"hostname": host, "service": self.origin(service)} for service, host in self.hostnames.items()]
        return [*rules, {"service": CATCH_ALL_SERVICE}]


def support_session(spec: SessionStackSpec) -> None:
    """Declare the tunnel, its config, the Access policy and application, the DNS records; export the session's ids."""
    provider = cloudflare.Provider("cloudflare", api_token=pulumi.Output.secret(spec.api_token))

    def after(*resources: pulumi.Resource) -> pulumi.ResourceOptions:
        # Explicit edges even where an input already implies one: the destroy order is part of the design.
        return pulumi.ResourceOptions(provider=provider, depends_on=list(resources))

    tunnel = cloudflare.ZeroTrustTunnelCloudflared(
        "tunnel",
        account_id=spec.account_id,
        name=f"kaiden-{spec.stack_name}",
        config_src="cloudflare",
        opts=pulumi.ResourceOptions(provider=provider),
    )
    config = cloudflare.ZeroTrustTunnelCloudflaredConfig(
        "tunnel-config",
        account_id=spec.account_id,
        tunnel_id=tunnel.id,
        config={"ingresses": spec.ingress_rules()},
        opts=after(tunnel),
    )
    policy = cloudflare.ZeroTrustAccessPolicy(
        "access-policy",
        account_id=spec.account_id,
        name=f"kaiden {spec.stack_name}: {spec.engineer_email}",
        decision="allow",
        includes=[{"email": {"email": spec.engineer_email}}],
        opts=after(config),
    )
    app_args: dict[str, object] = {
        "account_id": spec.account_id,
        "name": f"kaiden {spec.stack_name}",
        "type": "self_hosted",
        "domain": spec.public_hostname,
        "destinations": [{"type": "public", "uri": host} for host in spec.hostnames.values()],
        "session_duration": spec.access_session_duration,
        "app_launcher_visible": False,  # a per-session app has no place in everyone's launcher
        "policies": [{"id": policy.id, "precedence": POLICY_PRECEDENCE}],
    }
    if spec.login_method_ids:
        app_args["allowed_idps"] = list(spec.login_method_ids)
        # With a single login method there is nothing to choose: go straight to it.
        app_args["auto_redirect_to_identity"] = len(spec.login_method_ids) == 1
    app = cloudflare.ZeroTrustAccessApplication("access-app", **app_args, opts=after(policy))

    records = {
        service: cloudflare.DnsRecord(
            f"dns-{service}",
            zone_id=spec.zone_id,
            name=host,
            type="CNAME",
            content=pulumi.Output.concat(tunnel.id, f".{TUNNEL_DOMAIN}"),
            proxied=True,
            ttl=1,  # automatic: required for proxied records
            comment=f"kaiden support session {spec.session_id} ({service})",
            opts=after(app, tunnel),
        )
        for service, host in spec.hostnames.items()
    }

    token = cloudflare.get_zero_trust_tunnel_cloudflared_token_output(
        account_id=spec.account_id,
        tunnel_id=tunnel.id,
        opts=pulumi.InvokeOutputOptions(provider=provider),
    )

    pulumi.export("tunnel_id", tunnel.id)
    pulumi.export("tunnel_token", pulumi.Output.secret(token.token))
    pulumi.export("public_hostname", spec.public_hostname)
    pulumi.export("hostnames", spec.hostnames)
    pulumi.export("dns_record_id", records[spec.primary_service].id)
    pulumi.export("access_app_id", app.id)
    pulumi.export("access_policy_id", policy.id)

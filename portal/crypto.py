"""Secrets at rest and in logs: Fernet-encrypted column types, token hashing, and `redact()`.

The key is installed on an engine (`install_encryption(engine, settings.encryption_key)`), never
read from the environment here; an encrypted column used on an engine without a key fails loudly
instead of storing plain text.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Dialect, Text, TypeDecorator
from sqlalchemy.engine import Engine

REDACTED = "********"

_SECRET_NAME = re.compile(
    r"passw|passphrase|secret|token|api[_-]?key|private[_-]?key|credential|encryption[_-]?key|authorization|cookie",
    re.IGNORECASE,
)
_DIALECT_ATTR = "kaiden_fernet"


class EncryptionNotConfigured(RuntimeError):
    """An encrypted column was used on an engine that has no key installed."""


def make_fernet(key: str) -> MultiFernet:
    """A MultiFernet from `key`; several comma-separated keys allow rotation (the first encrypts)."""
    keys = [part.strip() for part in key.split(",") if part.strip()]
    if not keys:
        raise ValueError("encryption key is empty")
    return MultiFernet([Fernet(part.encode()) for part in keys])


def install_encryption(engine: Engine, key: str) -> None:
    """Make encrypted columns usable on `engine` with `key` (call once per engine, e.g. in create_app)."""
    setattr(engine.dialect, _DIALECT_ATTR, make_fernet(key))


def _fernet_for(dialect: Dialect) -> MultiFernet:
    fernet = getattr(dialect, _DIALECT_ATTR, None)
    if fernet is None:
        raise EncryptionNotConfigured(
            "no encryption key on this engine: call portal.crypto.install_encryption(engine, settings.encryption_key)"
        )
    return fernet


def encrypt_text(fernet: MultiFernet, value: str) -> str:
    return fernet.encrypt(value.encode()).decode()


def decrypt_text(fernet: MultiFernet, token: str) -> str:
    try:
        return fernet.decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise EncryptionNotConfigured("stored secret cannot be decrypted with the configured key") from exc


class EncryptedText(TypeDecorator[str]):
    """A string stored Fernet-encrypted (TEXT in the database)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return encrypt_text(_fernet_for(dialect), str(value))

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return decrypt_text(_fernet_for(dialect), value)


class EncryptedJSON(TypeDecorator[Any]):
    """A JSON document stored Fernet-encrypted (TEXT in the database). Assign a new object to change it."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return encrypt_text(_fernet_for(dialect), json.dumps(value, sort_keys=True, separators=(",", ":")))

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return json.loads(decrypt_text(_fernet_for(dialect), value))


def is_secret_name(name: str) -> bool:
    """True when a key looks like it holds a secret (password, token, api_key, ...)."""
    return bool(_SECRET_NAME.search(name))


def redact(value: Any, secret_keys: Iterable[str] = ()) -> Any:
    """A copy of `value` with secrets replaced by `REDACTED`, for logs and API echoes.

    A dict entry is redacted when its key (or, for nested dicts, its dotted path) is in
    `secret_keys` — e.g. the password-type Helm value keys of a template — or looks secret by
    name. Lists and nested dicts are walked; other values are returned unchanged.
    """
    keys = set(secret_keys)
    return _redact(value, keys, "")


def _redact(value: Any, keys: set[str], path: str) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            dotted = f"{path}.{key}" if path else str(key)
            if dotted in keys or str(key) in keys or is_secret_name(str(key)):
                out[key] = REDACTED if item is not None else None
            else:
                out[key] = _redact(item, keys, dotted)
        return out
    if isinstance(value, list | tuple):
        return [_redact(item, keys, path) for item in value]
    return value


@dataclass(frozen=True)
class IssuedToken:
    """A freshly generated bearer secret: show `token` once, store `prefix` and `hash` only."""

    token: str
    prefix: str
    hash: str


def hash_token(token: str) -> str:
    """SHA-256 hex of a high-entropy token (API tokens, cluster API keys)."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_prefix(token: str) -> str:
    """The non-secret leading part of a token, shown in lists and used to narrow lookups."""
    kind, _, rest = token.partition("_")
    return f"{kind}_{rest[:8]}" if rest else token[:12]


def new_token(kind: str = "kdn") -> IssuedToken:
    """Generate `<kind>_<43 random url-safe chars>` with its prefix and hash."""
    token = f"{kind}_{secrets.token_urlsafe(32)}"
    return IssuedToken(token=token, prefix=token_prefix(token), hash=hash_token(token))

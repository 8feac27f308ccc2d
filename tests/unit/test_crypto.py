"""Secrets at rest (encrypted column types, key rotation), token hashing and log redaction."""

from __future__ import annotations

import json

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import StatementError

from portal.crypto import (
    REDACTED,
    EncryptedJSON,
    EncryptedText,
    EncryptionNotConfigured,
    hash_token,
    install_encryption,
    is_secret_name,
    new_token,
    redact,
    token_prefix,
)

metadata = MetaData()
secrets_table = Table(
    "secrets",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("doc", EncryptedJSON),
    Column("token", EncryptedText),
)


@pytest.fixture()
def engine() -> Engine:
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    yield engine
    engine.dispose()


def _raw(engine: Engine) -> tuple[str, str]:
    with engine.connect() as conn:
        return tuple(conn.execute(text("SELECT doc, token FROM secrets")).one())


def test_values_round_trip_and_are_ciphertext_at_rest(engine: Engine) -> None:
    key = Fernet.generate_key().decode()
    install_encryption(engine, key)
    with engine.begin() as conn:
        conn.execute(insert(secrets_table).values(id=1, doc={"auth.password": "hunter2", "n": [1, 2]}, token="tok-123"))
    with engine.connect() as conn:
        row = conn.execute(select(secrets_table)).one()
    assert row.doc == {"auth.password": "hunter2", "n": [1, 2]} and row.token == "tok-123"
    doc, token = _raw(engine)
    assert "hunter2" not in doc and "tok-123" not in token
    assert json.loads(Fernet(key.encode()).decrypt(doc.encode())) == {"auth.password": "hunter2", "n": [1, 2]}


def test_null_stays_null(engine: Engine) -> None:
    install_encryption(engine, Fernet.generate_key().decode())
    with engine.begin() as conn:
        conn.execute(insert(secrets_table).values(id=1, doc=None, token=None))
    assert _raw(engine) == (None, None)


def test_without_a_key_nothing_is_written_in_clear(engine: Engine) -> None:
    with pytest.raises(StatementError) as caught, engine.begin() as conn:
        conn.execute(insert(secrets_table).values(id=1, token="plain"))
    assert isinstance(caught.value.orig, EncryptionNotConfigured)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM secrets")).scalar() == 0


def test_key_rotation_reads_old_values_and_writes_with_the_new_key(engine: Engine) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    install_encryption(engine, old)
    with engine.begin() as conn:
        conn.execute(insert(secrets_table).values(id=1, token="before"))
    install_encryption(engine, f"{new},{old}")
    with engine.begin() as conn:
        assert conn.execute(select(secrets_table.c.token)).scalar() == "before"
        conn.execute(insert(secrets_table).values(id=2, token="after"))
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT token FROM secrets WHERE id = 2")).scalar()
    assert Fernet(new.encode()).decrypt(stored.encode()) == b"after"


def test_a_wrong_key_fails_loudly(engine: Engine) -> None:
    install_encryption(engine, Fernet.generate_key().decode())
    with engine.begin() as conn:
        conn.execute(insert(secrets_table).values(id=1, token="x"))
    install_encryption(engine, Fernet.generate_key().decode())
    with pytest.raises(EncryptionNotConfigured), engine.connect() as conn:
        conn.execute(select(secrets_table.c.token)).scalar()


def test_an_empty_key_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError):
        install_encryption(engine, " , ")


def test_redact_masks_secret_names_and_given_keys_without_mutating() -> None:
    original = {
        "auth": {"postgresPassword": "pw", "database": "shop"},
        "auth.rootPass": "flat",
        "api_key": "k",
        "items": [{"token": "t", "name": "a"}, "plain"],
        "count": 3,
        "none_password": None,
    }
    result = redact(original, {"auth.rootPass"})
    assert result == {
        "auth": {"postgresPassword": REDACTED, "database": "shop"},
        "auth.rootPass": REDACTED,
        "api_key": REDACTED,
        "items": [{"token": REDACTED, "name": "a"}, "plain"],
        "count": 3,
        "none_password": None,
    }
    assert original["auth"]["postgresPassword"] == "pw"


def test_redact_by_dotted_path_of_nested_values() -> None:
    assert redact({"primary": {"rootUser": "admin"}}, {"primary.rootUser"}) == {"primary": {"rootUser": REDACTED}}
    assert redact("just text") == "just text"


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True),
        ("auth.postgresPassword", True),
        ("client_secret", True),
        ("tunnel_token", True),
        ("apiKey", True),
        ("size", False),
        ("database", False),
        ("username", False),
    ],
)
def test_secret_names(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_tokens_are_random_and_only_their_hash_and_prefix_are_kept() -> None:
    issued = new_token("kdn")
    other = new_token("kdn")
    assert issued.token != other.token and issued.token.startswith("kdn_") and len(issued.token) > 40
    assert issued.hash == hash_token(issued.token) and len(issued.hash) == 64
    assert issued.prefix == token_prefix(issued.token) == issued.token[:12]
    assert issued.token not in issued.hash

"""Authentication: passwords, login/logout pages with CSRF, session-cookie API calls, bearer tokens."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from portal.auth import passwords
from portal.models import ApiToken, utcnow
from portal.services import identity
from tests import factories

PASSWORD = factories.DEFAULT_PASSWORD


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html) or re.search(
        r'name="csrf-token" content="([^"]+)"', html
    )
    assert match, "no CSRF token in the page"
    return match.group(1)


def login(client, email: str, password: str = PASSWORD, next_url: str | None = None):
    page = client.get("/login")
    token = csrf_from(page.get_data(as_text=True))
    url = "/login" + (f"?next={next_url}" if next_url else "")
    return client.post(url, data={"email": email, "password": password, "csrf_token": token})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------- passwords


def test_password_hashing_is_argon2_and_salted() -> None:
    first, second = passwords.hash_password("hunter2hunter2"), passwords.hash_password("hunter2hunter2")
    assert first.startswith("$argon2id$") and first != second
    assert passwords.verify_password(first, "hunter2hunter2")
    assert not passwords.verify_password(first, "wrong")
    assert not passwords.verify_password(None, "anything")
    assert not passwords.verify_password("not-a-hash", "anything")


def test_create_admin_stores_only_a_hash(db) -> None:
    admin = identity.create_admin(db, "Root@Example.com", "Root", "a long password")
    assert admin.email == "root@example.com" and admin.role == "admin"
    assert admin.password_hash and "a long password" not in admin.password_hash
    with pytest.raises(Exception, match="already exists"):
        identity.create_admin(db, "root@example.com", "Again", "a long password")
    with pytest.raises(Exception, match="Invalid password"):
        identity.create_admin(db, "short@example.com", "Short", "short")


# ---------------------------------------------------------------- login / logout


def test_login_page_is_a_csrf_protected_form(client, db) -> None:
    user = factories.make_engineer(db)
    db.commit()
    page = client.get("/login")
    assert page.status_code == 200
    assert 'name="csrf_token"' in page.get_data(as_text=True)
    forged = client.post("/login", data={"email": user.email, "password": PASSWORD})
    assert forged.status_code == 400
    assert client.get("/").status_code == 302  # still signed out


def test_login_logout_round_trip(client, db) -> None:
    user = factories.make_engineer(db, name="Ada Lovelace")
    db.commit()
    response = login(client, user.email.upper())
    assert response.status_code == 302 and response.location == "/"
    dashboard = client.get("/")
    assert dashboard.status_code == 200
    html = dashboard.get_data(as_text=True)
    assert "Ada Lovelace" in html and user.email in html
    db.refresh(user)
    assert user.last_login_at is not None

    assert client.post("/logout", data={}).status_code == 400  # no CSRF token: refused
    assert client.get("/").status_code == 200
    token = csrf_from(html)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/").status_code == 302
    assert client.get("/api/v1/me").status_code == 401


def test_wrong_password_unknown_user_and_inactive_user_cannot_log_in(client, db) -> None:
    user = factories.make_engineer(db)
    inactive = factories.make_engineer(db, is_active=False)
    db.commit()
    for email, password in (
        (user.email, "wrong password"),
        ("nobody@example.com", PASSWORD),
        (inactive.email, PASSWORD),
    ):
        response = login(client, email, password)
        assert response.status_code == 200
        assert "Invalid email or password." in response.get_data(as_text=True)
        assert client.get("/api/v1/me").status_code == 401


def test_repeated_failures_block_sign_in_for_that_account_only(client, db, settings) -> None:
    user = factories.make_engineer(db)
    other = factories.make_engineer(db)
    db.commit()
    for _ in range(settings.login_max_failures):
        assert login(client, user.email, "wrong password").status_code == 200
    blocked = login(client, user.email)  # even the right password is refused now, before it is checked
    assert blocked.status_code == 429
    assert "Too many failed sign-ins. Try again in 15 minutes." in blocked.get_data(as_text=True)
    assert 0 < int(blocked.headers["Retry-After"]) <= 15 * 60
    assert client.get("/api/v1/me").status_code == 401
    assert login(client, other.email).status_code == 302  # another account from the same address still works


def test_a_successful_sign_in_clears_the_failure_count(client, db, settings) -> None:
    user = factories.make_engineer(db)
    db.commit()
    for _ in range(settings.login_max_failures - 1):
        login(client, user.email, "wrong password")
    assert login(client, user.email).status_code == 302
    client.post("/logout", data={"csrf_token": csrf_from(client.get("/").get_data(as_text=True))})
    for _ in range(settings.login_max_failures - 1):
        assert login(client, user.email, "wrong password").status_code == 200
    assert login(client, user.email).status_code == 302


def test_login_redirects_only_to_local_paths(client, db) -> None:
    user = factories.make_engineer(db)
    db.commit()
    assert login(client, user.email, next_url="/api/docs").location == "/api/docs"
    client.post("/logout", data={"csrf_token": csrf_from(client.get("/").get_data(as_text=True))})
    assert login(client, user.email, next_url="https://evil.example/").location == "/"
    client.post("/logout", data={"csrf_token": csrf_from(client.get("/").get_data(as_text=True))})
    assert login(client, user.email, next_url="//evil.example/x").location == "/"


def test_anonymous_dashboard_redirects_to_login(client) -> None:
    response = client.get("/")
    assert response.status_code == 302 and response.location.startswith("/login")


# ---------------------------------------------------------------- the session cookie on the API


def test_session_cookie_api_writes_need_the_csrf_header(client, db) -> None:
    user = factories.make_engineer(db)
    db.commit()
    login(client, user.email)
    me = client.get("/api/v1/me")
    assert me.status_code == 200 and me.json["authenticated_by"] == "session"
    refused = client.post("/api/v1/me/tokens", json={"name": "ci"})
    assert refused.status_code == 400 and refused.json["error"]["code"] == "csrf_failed"
    wrong = client.post("/api/v1/me/tokens", json={"name": "ci"}, headers={"X-CSRFToken": "nope"})
    assert wrong.status_code == 400
    token = csrf_from(client.get("/").get_data(as_text=True))
    created = client.post("/api/v1/me/tokens", json={"name": "ci"}, headers={"X-CSRFToken": token})
    assert created.status_code == 201


def test_changing_the_password_ends_other_sessions(app, client, db) -> None:
    user = factories.make_engineer(db)
    db.commit()
    login(client, user.email)
    assert client.get("/api/v1/me").status_code == 200
    db.refresh(user)
    identity.set_password(user, "a brand new password")
    db.commit()
    assert client.get("/api/v1/me").status_code == 401


# ---------------------------------------------------------------- bearer tokens


def test_token_is_shown_once_and_stored_hashed(client, db) -> None:
    user = factories.make_engineer(db)
    _, bootstrap = factories.make_api_token(db, user)
    db.commit()
    created = client.post(
        "/api/v1/me/tokens", json={"name": "laptop", "expires_in_days": 30}, headers=bearer(bootstrap)
    )
    assert created.status_code == 201
    secret = created.json["token"]
    assert secret.startswith("kdn_") and len(secret) > 40
    assert created.json["token_prefix"] == secret[: len(created.json["token_prefix"])]
    row = db.scalars(select(ApiToken).where(ApiToken.name == "laptop")).one()
    assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    listing = client.get("/api/v1/me/tokens", headers=bearer(secret))
    assert listing.status_code == 200
    text = listing.get_data(as_text=True)
    assert secret not in text and row.token_hash not in text
    assert {item["name"] for item in listing.json["items"]} == {"laptop", factories_token_name(db, user)}
    assert all(
        set(item) == {"id", "name", "token_prefix", "created_at", "last_used_at", "expires_at"}
        for item in listing.json["items"]
    )


def factories_token_name(db, user) -> str:
    return db.scalars(select(ApiToken.name).where(ApiToken.user_id == user.id, ApiToken.name != "laptop")).one()


def test_token_use_updates_last_used_at(client, db) -> None:
    user = factories.make_engineer(db)
    row, secret = factories.make_api_token(db, user)
    db.commit()
    assert row.last_used_at is None
    assert client.get("/api/v1/me", headers=bearer(secret)).json["authenticated_by"] == "token"
    db.expire_all()
    assert db.get(ApiToken, row.id).last_used_at is not None


def test_revoked_token_stops_working(client, db) -> None:
    user = factories.make_engineer(db)
    row, secret = factories.make_api_token(db, user)
    _, other = factories.make_api_token(db, user)
    db.commit()
    assert client.delete(f"/api/v1/me/tokens/{row.id}", headers=bearer(other)).status_code == 204
    response = client.get("/api/v1/me", headers=bearer(secret))
    assert response.status_code == 401 and response.json["error"]["code"] == "unauthorized"
    assert client.delete(f"/api/v1/me/tokens/{row.id}", headers=bearer(other)).status_code == 404
    listed = client.get("/api/v1/me/tokens", headers=bearer(other)).json["items"]
    assert str(row.id) not in {item["id"] for item in listed}


def test_cannot_revoke_someone_elses_token(client, db) -> None:
    alice, bob = factories.make_engineer(db), factories.make_engineer(db)
    alice_row, alice_secret = factories.make_api_token(db, alice)
    _, bob_secret = factories.make_api_token(db, bob)
    db.commit()
    assert client.delete(f"/api/v1/me/tokens/{alice_row.id}", headers=bearer(bob_secret)).status_code == 404
    assert client.get("/api/v1/me", headers=bearer(alice_secret)).status_code == 200


@pytest.mark.parametrize(
    "header",
    ["Bearer kdn_not-a-real-token", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer " + "x" * 300, "kdn_abc"],
)
def test_bad_authorization_headers_are_401(client, header) -> None:
    response = client.get("/api/v1/me", headers={"Authorization": header})
    assert response.status_code == 401


def test_expired_token_and_inactive_user_or_customer_are_401(client, db) -> None:
    user = factories.make_user(db)
    _, expired = factories.make_api_token(db, user, expires_at=utcnow() - timedelta(minutes=1))
    _, valid = factories.make_api_token(db, user)
    db.commit()
    assert client.get("/api/v1/me", headers=bearer(expired)).status_code == 401
    assert client.get("/api/v1/me", headers=bearer(valid)).status_code == 200
    user.customer.is_active = False
    db.commit()
    assert client.get("/api/v1/me", headers=bearer(valid)).status_code == 401
    user.customer.is_active = True
    user.is_active = False
    db.commit()
    assert client.get("/api/v1/me", headers=bearer(valid)).status_code == 401


def test_an_invalid_bearer_is_not_rescued_by_a_valid_cookie(client, db) -> None:
    user = factories.make_engineer(db)
    db.commit()
    login(client, user.email)
    assert client.get("/api/v1/me").status_code == 200
    assert client.get("/api/v1/me", headers=bearer("kdn_wrong")).status_code == 401


def test_bearer_writes_need_no_csrf(client, db) -> None:
    user = factories.make_engineer(db)
    _, secret = factories.make_api_token(db, user)
    db.commit()
    assert client.post("/api/v1/me/tokens", json={"name": "x"}, headers=bearer(secret)).status_code == 201


def test_healthz_is_public_and_checks_the_database(client, app, monkeypatch) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}

    from portal import database_of

    database_of(app).engine.dispose()
    monkeypatch.setattr(database_of(app), "sessionmaker", _broken_sessionmaker)
    broken = client.get("/healthz")
    assert broken.status_code == 503
    assert broken.get_json() == {"status": "unavailable"}


def _broken_sessionmaker():
    class _Broken:
        def execute(self, *_args, **_kwargs):
            raise RuntimeError("database down")

        def close(self) -> None:
            return None

        def rollback(self) -> None:
            return None

        def commit(self) -> None:
            return None

    return _Broken()

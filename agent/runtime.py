"""What the controller and the agent share: environment parsing, reconnect backoff, logging setup."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

Config = TypeVar("Config")

SOFTWARE_VERSION = "0.1.0"


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

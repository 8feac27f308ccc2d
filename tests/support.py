"""Small helpers shared by tests: polling for a condition, and running a Pulumi program under mocks."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pulumi

from portal.settings import Settings, process_environment

ROOT = Path(__file__).resolve().parents[1]


def wait_for(predicate: Callable[[], bool], timeout: float = 120, what: str = "condition") -> None:
    """Poll `predicate` once a second until it holds; fail the test naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def run_workers(settings: Settings, count: int = 1, timeout: float = 900) -> None:
    """Run `count` burst workers at once (each exits when the queue is empty); fail on a non-zero exit."""
    command = [sys.executable, "-m", "portal.cli", "worker", "--burst"]
    procs = [subprocess.Popen(command, env=process_environment(settings), cwd=ROOT) for _ in range(count)]
    for proc in procs:
        assert proc.wait(timeout=timeout) == 0


def run_under_mocks(program: Callable[[], None], mocks: pulumi.runtime.Mocks) -> None:
    """Run `program` with `mocks` as the engine; returns once every registration reached the mocks."""
    pulumi.runtime.set_mocks(mocks, project="kaiden", stack="test", preview=False)

    @pulumi.runtime.test
    def _program():
        program()
        return pulumi.Output.from_input(None)

    _program()


async def eventually(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Inside a loop: poll until `predicate()` is truthy and return its value; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def run_async(scenario: Callable[[], Awaitable[None]], timeout: float = 120) -> None:
    """Run `scenario` on a private loop. Not `asyncio.run`: that leaves the thread with no current loop, and
    the Pulumi-mock tests that run later in this process need the implicit one."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(scenario(), timeout))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

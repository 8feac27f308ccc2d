"""Small helpers shared by tests: polling for a condition, and running a Pulumi program under mocks."""

from __future__ import annotations

import time
from collections.abc import Callable

import pulumi


def wait_for(predicate: Callable[[], bool], timeout: float = 120, what: str = "condition") -> None:
    """Poll `predicate` once a second until it holds; fail the test naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def run_under_mocks(program: Callable[[], None], mocks: pulumi.runtime.Mocks) -> None:
    """Run `program` with `mocks` as the engine; returns once every registration reached the mocks."""
    pulumi.runtime.set_mocks(mocks, project="kaiden", stack="test", preview=False)

    @pulumi.runtime.test
    def _program():
        program()
        return pulumi.Output.from_input(None)

    _program()

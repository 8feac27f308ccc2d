"""Pytest plugin for the runtime (issue D1): a real gateway on a free port, controllers and agents — as asyncio
tasks of the real code in a background loop, or as real processes — and a customer cluster to connect.

Registered in tests/conftest.py, so any test (the onboarding tests too) can ask for `gateway`, `loop`,
`connected_cluster` … Every fixture tears down what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent.agent import Agent, AgentConfig
from agent.controller import Controller, ControllerConfig
from portal import database_of
from portal.gateway import Gateway, GatewayConfig
from portal.models import Cluster

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]

# Small intervals so liveness tests take seconds: heartbeat 0.2 s, flush 0.1 s, offline after 1 s (5 missed
# heartbeats: room for a loaded CI machine).
FAST = GatewayConfig(flush_seconds=0.1, offline_after=1.0, sweep_seconds=0.1, key_check_seconds=0.2)
FAST_HEARTBEAT = 0.2


class LoopThread:
    """An asyncio loop in a daemon thread; `run(coro)` waits for the result from test code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="d1-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Start `coro` as a task; returns its concurrent future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(cancel_all(), timeout=10)
            # Wait for `asyncio.to_thread` work (key checks, heartbeat writes) still running: a straggler
            # logging a traceback while the next test builds its app races CPython 3.11's global AST
            # state ("AST constructor recursion depth mismatch", cpython gh-106905).
            self.run(self.loop.shutdown_default_executor(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.loop.close()


@dataclass
class RunningGateway:
    gateway: Gateway
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@dataclass
class Running:
    """A controller or agent running as a task in the loop thread; `stop()` ends it."""

    obj: Any
    stop_event: asyncio.Event
    future: Any
    loop: LoopThread

    def stop(self) -> None:
        self.loop.loop.call_soon_threadsafe(self.stop_event.set)
        self.future.result(timeout=15)


@dataclass
class RuntimeKit:
    """Start controllers and agents against a gateway, stopping them all at teardown."""

    loop: LoopThread
    gateway: RunningGateway
    running: list[Running] = field(default_factory=list)

    def controller(
        self, cluster_id: str, api_key: str, *, reader: Any = None, interval: float = FAST_HEARTBEAT
    ) -> Running:
        config = ControllerConfig(
            cluster_id=cluster_id,
            api_key=api_key,
            cloud_endpoint=self.gateway.url,
            heartbeat_interval=interval,
            listen_host="127.0.0.1",
            listen_port=0,
        )

        async def make() -> Running:
            controller = Controller(config, reader=reader)
            stop = asyncio.Event()
            return Running(controller, stop, self.loop.spawn(controller.run(stop)), self.loop)

        started = self.loop.run(make())
        self.running.append(started)
        wait_until(lambda: started.obj.listen_port is not None, 10, "controller listening")
        return started

    def agent(self, controller: Running, node_name: str, api_key: str) -> Running:
        url = f"ws://127.0.0.1:{controller.obj.listen_port}/agent"
        config = AgentConfig(
            node_name=node_name, controller_url=url, api_key=api_key, host_root=Path("/"), facts_interval=5
        )

        async def make() -> Running:
            agent = Agent(config)
            stop = asyncio.Event()
            return Running(agent, stop, self.loop.spawn(agent.run(stop)), self.loop)

        started = self.loop.run(make())
        self.running.append(started)
        return started

    def stop_all(self) -> None:
        for item in reversed(self.running):
            if not item.future.done():
                with contextlib.suppress(Exception):  # teardown goes on; the loop is cancelled afterwards
                    item.stop()
        self.running.clear()


def wait_until(predicate: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    """Poll every 50 ms (these tests deal in fractions of a second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def cluster_row(app, cluster_id: uuid.UUID | str) -> Cluster:
    with database_of(app).session() as session:
        cluster = session.get(Cluster, uuid.UUID(str(cluster_id)))
        assert cluster is not None
        _ = list(cluster.nodes)
        session.expunge_all()
        return cluster


# ---------------------------------------------------------------- fixtures


@pytest.fixture()
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    try:
        yield thread
    finally:
        thread.close()


@pytest.fixture()
def gateway_config() -> GatewayConfig:
    return FAST


@pytest.fixture()
def gateway(app, settings, loop: LoopThread, gateway_config: GatewayConfig) -> Iterator[RunningGateway]:
    """A real gateway (database + Redis of the test session) on a free port, in the loop thread."""

    async def start() -> RunningGateway:
        gw = Gateway(settings, gateway_config)
        port = await gw.start("127.0.0.1", 0)
        return RunningGateway(gw, port)

    running = loop.run(start())
    try:
        yield running
    finally:
        loop.run(running.gateway.close())


@pytest.fixture()
def runtime(loop: LoopThread, gateway: RunningGateway) -> Iterator[RuntimeKit]:
    kit = RuntimeKit(loop, gateway)
    try:
        yield kit
    finally:
        kit.stop_all()


# ---------------------------------------------------------------- real processes


@dataclass
class Processes:
    """`python -m agent.controller` / `python -m agent.agent` children, terminated at teardown."""

    logs: Path
    children: list[subprocess.Popen] = field(default_factory=list)

    def start(self, module: str, env: dict[str, str], name: str, args: list[str] | None = None) -> subprocess.Popen:
        full = {k: v for k, v in os.environ.items() if not k.startswith("KAIDEN_")}
        full.update(env)
        full.setdefault("LOG_LEVEL", "INFO")
        log = open(self.logs / f"{name}.log", "ab")
        child = subprocess.Popen(
            [sys.executable, "-m", module, *(args or [])], env=full, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.children.append(child)
        return child

    def controller(self, env: dict[str, str], name: str = "controller") -> subprocess.Popen:
        return self.start("agent.controller", env, name)

    def agent(self, env: dict[str, str], name: str) -> subprocess.Popen:
        return self.start("agent.agent", env, name)

    def log_of(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, child: subprocess.Popen) -> None:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def stop_all(self) -> None:
        for child in reversed(self.children):
            self.stop(child)


@pytest.fixture()
def processes(tmp_path: Path) -> Iterator[Processes]:
    running = Processes(tmp_path)
    try:
        yield running
    finally:
        running.stop_all()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

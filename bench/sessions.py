"""Benchmark of relay support sessions: keystroke → echo round trip through the gateway, the controller and the
agent (three processes, loopback), with 1 and with N concurrent sessions, and session start latency: attach →
`ready` (fresh shell and re-attach, one at a time and N at once) and the whole start through the API (POST →
worker → active → attach → `ready`, with `kaiden portal` and `kaiden worker` as processes), and the end (DELETE →
ended).

    python bench/sessions.py [--sessions 50] [--keys 300] [--keys-each 40] [--think-ms 20] [--api-starts 10]
                             [--database-url URL --redis-url URL] [--json FILE]

PostgreSQL and Redis are started privately on free ports (unless URLs are given); `kaiden gateway`,
`python -m agent.controller` and `python -m agent.agent` (SESSION_SHELL=/bin/sh) run as their own processes.
The browser side is this process: websocket clients that do what the portal's terminal page does. Baselines,
measured in the same run with the same client library: a bare websocket echo round trip to another process on
loopback, and a keystroke echo of a local /bin/sh PTY (the kernel's line discipline echoes; no network).
Every loop is bounded; the benchmark exits by itself and stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import pty
import random
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import timedelta
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.gateway import cpu_seconds, free_port, start_services  # noqa: E402

ECHO_TIMEOUT = 10.0  # a keystroke whose echo takes longer counts as lost and stops the phase
SYNC = b"echo s$((40 + 2))s\n"  # typed after a shell starts; its output, not the typed line, holds SYNCED
SYNCED = b"s42s"
LETTERS = b"abcdefghijklmnopqrstuvwxyz"
KILL_LINE = b"\x15"  # Ctrl-U: keeps the shell's line short between keystrokes
KILL_EVERY = 50


# ---------------------------------------------------------------- figures


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(name: str, seconds: list[float], **extra: object) -> dict[str, object]:
    ms = [s * 1000 for s in seconds]
    p50, p95 = percentile(ms, 0.50), percentile(ms, 0.95)
    return {
        "name": name,
        "n": len(ms),
        "p50_ms": round(p50, 3) if p50 is not None else None,
        "p95_ms": round(p95, 3) if p95 is not None else None,
        "max_ms": round(max(ms), 3) if ms else None,
        **extra,
    }


# ---------------------------------------------------------------- world


def prepare_database(database_url: str, count: int) -> dict[str, object]:
    """Schema, one cluster with one node, one ticket, one engineer and `count` active relay sessions."""
    import portal.models  # noqa: F401
    from portal.crypto import new_token
    from portal.db import Base, Database
    from portal.models import (
        ApiToken,
        Cluster,
        Customer,
        Node,
        NodeStatus,
        SessionState,
        SupportSession,
        Ticket,
        User,
        UserRole,
        allocate_ticket_number,
        utcnow,
    )

    database = Database(database_url)
    Base.metadata.create_all(database.engine)
    tag = uuid.uuid4().hex[:8]
    with database.session() as session:
        customer = Customer(name=f"bench-{tag}")
        session.add(customer)
        session.flush()
        cluster = Cluster(customer_id=customer.id, name=f"bench-{tag}")
        key = cluster.issue_api_key().token
        session.add(cluster)
        session.flush()
        node = Node(cluster_id=cluster.id, name=f"bench-node-{tag}", status=NodeStatus.ready)
        engineer = User(role=UserRole.engineer, email=f"bench-{tag}@example.test", name="Bench Engineer")
        # the engineer of the "API call → terminal ready" phase: assigned to the ticket, with a personal token
        assignee = User(role=UserRole.engineer, email=f"bench-{tag}-api@example.test", name="Bench Assignee")
        session.add_all([node, engineer, assignee])
        session.flush()
        issued = new_token("kdn")
        session.add(ApiToken(user_id=assignee.id, name="bench", token_prefix=issued.prefix, token_hash=issued.hash))
        ticket = Ticket(
            customer_id=customer.id,
            cluster_id=cluster.id,
            title="bench",
            description="bench",
            assigned_to_id=assignee.id,
            ticket_number=allocate_ticket_number(session, utcnow()),
        )
        session.add(ticket)
        session.flush()
        rows = [
            SupportSession(
                ticket_id=ticket.id,
                node_id=node.id,
                engineer_id=engineer.id,
                state=SessionState.active,
                started_at=utcnow(),
                expires_at=utcnow() + timedelta(hours=4),
            )
            for _ in range(count)
        ]
        session.add_all(rows)
        session.flush()
        world = {
            "cluster_id": str(cluster.id),
            "key": key,
            "node": node.name,
            "engineer_id": str(engineer.id),
            "sessions": [str(r.id) for r in rows],
            "node_id": str(node.id),
            "ticket_id": str(ticket.id),
            "assignee_token": issued.token,
        }
    database.dispose()
    return world


def place_ticket(redis, session_id: str, user_id: str, cols: int = 80, rows: int = 24) -> str:
    """As `POST /api/v1/sessions/{id}/attach` does: `kaiden:attach:<sha256(ticket)>` → grant, 60 s."""
    ticket = secrets.token_urlsafe(32)
    grant = {"session_id": session_id, "user_id": user_id, "cols": cols, "rows": rows}
    redis.set(f"kaiden:attach:{hashlib.sha256(ticket.encode()).hexdigest()}", json.dumps(grant), ex=60)
    return ticket


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout:g} s waiting for {what} (last error: {last!r})")


# ---------------------------------------------------------------- baselines


def echo_server_main(port: int) -> None:
    """`--echo-server PORT`: a bare websocket echo server (the baseline's other process)."""
    from websockets.asyncio.server import serve

    async def echo(ws) -> None:
        async for message in ws:
            await ws.send(message)

    async def run() -> None:
        async with serve(echo, "127.0.0.1", port, ping_interval=None):
            await asyncio.Event().wait()

    asyncio.run(run())


async def websocket_echo_baseline(url: str, samples: int) -> list[float]:
    from websockets.asyncio.client import connect

    times = []
    async with connect(url, ping_interval=None) as ws:
        for i in range(samples):
            byte = LETTERS[i % len(LETTERS) : i % len(LETTERS) + 1]
            started = time.perf_counter()
            await ws.send(byte)
            await asyncio.wait_for(ws.recv(), ECHO_TIMEOUT)
            times.append(time.perf_counter() - started)
    return times


def pty_echo_baseline(samples: int) -> list[float]:
    """Keystroke → echo of a local /bin/sh on a PTY: what the shell side costs without any relay."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: a plain shell
        os.execvpe("/bin/sh", ["/bin/sh"], {"PATH": os.environ.get("PATH", "/usr/bin:/bin")})  # noqa: S606
    times = []
    try:
        os.write(fd, SYNC)
        _read_until(fd, SYNCED, 10)
        _drain(fd, 0.1)
        for i in range(samples):
            byte = LETTERS[i % len(LETTERS) : i % len(LETTERS) + 1]
            started = time.perf_counter()
            os.write(fd, byte)
            _read_until(fd, byte, ECHO_TIMEOUT)
            times.append(time.perf_counter() - started)
            if (i + 1) % KILL_EVERY == 0:
                os.write(fd, KILL_LINE)
                _drain(fd, 0.05)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    return times


def _read_until(fd: int, needle: bytes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen = b""
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"no {needle!r} from the PTY")
        seen += os.read(fd, 4096)


def _drain(fd: int, quiet: float) -> None:
    while select.select([fd], [], [], quiet)[0]:
        try:
            os.read(fd, 4096)
        except OSError:
            return


# ---------------------------------------------------------------- the browser side


class Terminal:
    """One browser terminal: attach (ticket placed in Redis), then keystrokes timed until their echo."""

    def __init__(self, gateway_url: str, redis, session_id: str, user_id: str) -> None:
        self.gateway_url = gateway_url
        self.redis = redis
        self.session_id = session_id
        self.user_id = user_id
        self.ws = None
        self.typed = 0

    async def attach(self, *, fresh: bool) -> float:
        """Connect and wait for `ready`; seconds from the connect to `ready` (the ticket is placed before)."""
        from websockets.asyncio.client import connect

        ticket = await asyncio.to_thread(place_ticket, self.redis, self.session_id, self.user_id)
        url = f"{self.gateway_url}/api/v1/sessions/{self.session_id}/terminal?ticket={ticket}"
        started = time.perf_counter()
        self.ws = await connect(url, open_timeout=30, ping_interval=None)
        ready = await asyncio.wait_for(self.ws.recv(), 30)
        elapsed = time.perf_counter() - started
        if json.loads(ready) != {"type": "ready"}:
            raise RuntimeError(f"expected ready, got {ready!r}")
        if fresh:  # a fresh shell: let it start and answer, so keystrokes begin from quiet
            await self.ws.send(SYNC)
            await self._until(SYNCED)
            await self._quiet(0.05)
        return elapsed

    async def _until(self, needle: bytes) -> None:
        seen = b""
        deadline = time.monotonic() + ECHO_TIMEOUT
        while needle not in seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"session {self.session_id}: no {needle!r} within {ECHO_TIMEOUT:g} s")
            frame = await asyncio.wait_for(self.ws.recv(), left)
            if isinstance(frame, bytes):
                seen += frame

    async def keystroke(self) -> float:
        byte = LETTERS[self.typed % len(LETTERS) : self.typed % len(LETTERS) + 1]
        self.typed += 1
        started = time.perf_counter()
        await self.ws.send(byte)
        await self._until(byte)
        elapsed = time.perf_counter() - started
        if self.typed % KILL_EVERY == 0:
            await self.ws.send(KILL_LINE)
            await self._quiet(0.05)  # the line's erase echo, before the next keystroke
        return elapsed

    async def _quiet(self, seconds: float) -> None:
        for _ in range(1000):
            try:
                await asyncio.wait_for(self.ws.recv(), seconds)
            except TimeoutError:
                return

    async def type_for(self, count: int, think: float) -> list[float]:
        """`count` keystrokes, `think` apart on average (x0.5 to x1.5, and a random start): sessions typing at once
        do not stay in step, as people do not."""
        rng = random.Random(self.session_id)  # noqa: S311 - pacing, not secrets
        times = []
        if think:
            await asyncio.sleep(rng.uniform(0, think))
        for _ in range(count):
            times.append(await self.keystroke())
            if think:
                await asyncio.sleep(think * rng.uniform(0.5, 1.5))
        return times

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.ws = None


class Usage:
    """CPU seconds of the three processes, and of this client (every browser), over a phase."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.client = time.process_time()
        self.t0 = time.monotonic()

    def percent(self) -> dict[str, float]:
        elapsed = time.monotonic() - self.t0
        used = {name: cpu_seconds(pid) - self.start[name] for name, pid in self.pids.items()}
        used["client"] = time.process_time() - self.client
        return {name: round(100 * seconds / elapsed, 1) for name, seconds in used.items()}


async def run_phases(args, world: dict, gateway_url: str, redis, echo_url: str, pids: dict[str, int]) -> list[dict]:
    results: list[dict] = []
    sessions = world["sessions"]

    print("baseline: bare websocket echo …", flush=True)
    echoes = await websocket_echo_baseline(echo_url, args.keys)
    results.append(summary("baseline: websocket echo, loopback, 2 processes", echoes))

    terminals = [Terminal(gateway_url, redis, sid, world["engineer_id"]) for sid in sessions]
    try:
        print(f"start: {len(terminals)} fresh attaches, one at a time …", flush=True)
        starts = [await t.attach(fresh=True) for t in terminals]
        results.append(summary("start: attach → ready, fresh shell, one at a time", starts))

        print(f"relay: 1 session, {args.keys} keystrokes …", flush=True)
        usage = Usage(pids)
        one = await terminals[0].type_for(args.keys, args.think)
        results.append(summary("relay: keystroke → echo, 1 session", one, cpu_percent=usage.percent()))

        print(f"relay: {len(terminals)} sessions at once, {args.keys_each} keystrokes each …", flush=True)
        usage = Usage(pids)
        started = time.monotonic()
        many = await asyncio.gather(*(t.type_for(args.keys_each, args.think) for t in terminals))
        wall = time.monotonic() - started
        flat = [x for per in many for x in per]
        results.append(
            summary(
                f"relay: keystroke → echo, {len(terminals)} sessions at once",
                flat,
                cpu_percent=usage.percent(),
                keystrokes_per_second=round(len(flat) / wall, 1),
            )
        )

        print("start: re-attach to a live shell, one at a time …", flush=True)
        again = []
        for t in terminals:
            await t.close()
            again.append(await t.attach(fresh=False))
        results.append(summary("start: attach → ready, live shell (re-attach), one at a time", again))

        print(f"start: {len(terminals)} re-attaches at once …", flush=True)
        for t in terminals:
            await t.close()
        burst = await asyncio.gather(*(t.attach(fresh=False) for t in terminals))
        results.append(summary(f"start: attach → ready, live shell, {len(terminals)} at once", list(burst)))
    finally:
        await asyncio.gather(*(t.close() for t in terminals), return_exceptions=True)
    return results


class PortalClient:
    """The REST API over HTTP with a bearer token, as a script or the portal's pages call it."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base.rstrip("/")
        self.token = token

    def __call__(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        import urllib.error
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.base}/api/v1{path}", data=data, method=method)  # noqa: S310 - http on loopback
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


async def api_start_phase(api: PortalClient, world: dict, gateway_url: str, runs: int) -> list[dict]:
    """API call → terminal ready, one session at a time: `POST /tickets/{id}/sessions` (202), the worker's start
    job pings the agent (→ `active`, polled every 10 ms), `POST /sessions/{id}/attach`, the WebSocket until `ready`.
    Each session is then ended through the API (`DELETE` → `ended`, the end job closes the PTY and stores the
    recording), timed too: one open session per node and engineer, so the next start waits for it."""
    from websockets.asyncio.client import connect

    async def call(method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        return await asyncio.to_thread(api, method, path, body)

    async def until_state(session_id: str, states: set[str]) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, body = await call("GET", f"/sessions/{session_id}")
            if status == 200 and body["state"] in states:
                return body["state"]
            await asyncio.sleep(0.01)
        raise RuntimeError(f"session {session_id} not {states} within 60 s")

    totals, accepted, activated, attached, ended = [], [], [], [], []
    for _ in range(runs):
        started = time.perf_counter()
        status, body = await call(
            "POST", f"/tickets/{world['ticket_id']}/sessions", {"node_id": world["node_id"], "duration_minutes": 30}
        )
        if status != 202:
            raise RuntimeError(f"start refused: {status} {body}")
        t_accepted = time.perf_counter()
        session_id = body["session"]["id"]
        if await until_state(session_id, {"active", "failed"}) != "active":
            raise RuntimeError(f"session {session_id} failed to start")
        t_active = time.perf_counter()
        status, body = await call("POST", f"/sessions/{session_id}/attach", {"cols": 80, "rows": 24})
        if status != 201:
            raise RuntimeError(f"attach refused: {status} {body}")
        path = body["url"].split("/api/v1/", 1)[1]
        async with connect(f"{gateway_url}/api/v1/{path}", open_timeout=30, ping_interval=None) as ws:
            ready = json.loads(await asyncio.wait_for(ws.recv(), 30))
            t_ready = time.perf_counter()
            if ready != {"type": "ready"}:
                raise RuntimeError(f"expected ready, got {ready!r}")
            totals.append(t_ready - started)
            accepted.append(t_accepted - started)
            activated.append(t_active - t_accepted)
            attached.append(t_ready - t_active)
            t_end = time.perf_counter()
            status, body = await call("DELETE", f"/sessions/{session_id}")
            if status != 202:
                raise RuntimeError(f"end refused: {status} {body}")
            await until_state(session_id, {"ended"})
            ended.append(time.perf_counter() - t_end)
    return [
        summary("start via the API: POST → terminal ready (total)", totals),
        summary("  of which POST /tickets/{id}/sessions → 202", accepted),
        summary("  of which 202 → active (queue, worker, ping the agent)", activated),
        summary("  of which attach → ready", attached),
        summary("end via the API: DELETE → ended (worker, PTY closed, recording)", ended),
    ]


# ---------------------------------------------------------------- report


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(results: list[dict], args) -> None:
    base = next(r for r in results if r["name"].startswith("baseline: websocket"))
    print()
    print(f"{'measure':<62} {'n':>5} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9} {'p50/ws':>7}")
    for r in results:
        ratio = (r["p50_ms"] / base["p50_ms"]) if r["p50_ms"] and base["p50_ms"] else None
        print(
            f"{r['name']:<62} {r['n']:>5} {r['p50_ms']:>9} {r['p95_ms']:>9} {r['max_ms']:>9} "
            f"{(f'{ratio:.1f}' if ratio is not None else '-'):>7}"
        )
        extra = {k: v for k, v in r.items() if k not in ("name", "n", "p50_ms", "p95_ms", "max_ms")}
        if extra:
            print(f"{'':<4}{json.dumps(extra)}")
    print()
    print("conditions:")
    print(f"  {platform.node()}: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} {platform.release()}")
    print(f"  load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"  python {platform.python_version()}, websockets {metadata.version('websockets')}, "
        f"redis-py {metadata.version('redis')}, SQLAlchemy {metadata.version('SQLAlchemy')}"
    )
    print(
        f"  {args.sessions} sessions; {args.keys} keystrokes on 1 session, {args.keys_each} per session at once; "
        f"think time {args.think * 1000:g} ms (x0.5 to x1.5) between a session's keystrokes; "
        f"recording chunks every {args.chunk_seconds:g} s"
    )
    print(
        "  gateway, controller, agent, portal (waitress), an RQ worker, PostgreSQL, Redis and this client (all the "
        "browsers) share the machine; "
        "every hop is loopback"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=50, help="concurrent sessions (default %(default)s)")
    parser.add_argument("--keys", type=int, default=300, help="keystrokes on one session, and baseline samples")
    parser.add_argument("--keys-each", type=int, default=40, help="keystrokes per session when all type at once")
    parser.add_argument("--think-ms", type=float, default=20.0, help="pause between a session's keystrokes")
    parser.add_argument("--chunk-seconds", type=float, default=2.0, help="the agent's RECORDING_CHUNK_SECONDS")
    parser.add_argument("--api-starts", type=int, default=10, help="sessions started and ended through the API")
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        echo_server_main(args.echo_server)
        return 0
    args.think = args.think_ms / 1000
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: what was started here is stopped

    print("baseline: local PTY echo …", flush=True)
    pty_times = pty_echo_baseline(args.keys)  # first: it forks, before any thread exists

    import redis as redis_lib

    from agent import protocol
    from portal.services.cluster_commands import send_command

    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kaiden-bench-sessions-")))
        if args.database_url and args.redis_url:
            database_url, redis_url = args.database_url, args.redis_url
        else:
            database_url, redis_url = start_services(stack, workdir)
        world = prepare_database(database_url, args.sessions)
        redis = redis_lib.Redis.from_url(redis_url)
        stack.callback(redis.close)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("KAIDEN_")}

        def start(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
            log = open(workdir / f"{name}.log", "wb")  # closed by the stack
            stack.callback(log.close)
            child = subprocess.Popen(argv, env={**base_env, **env}, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
            stack.callback(_stop, child)
            return child

        gateway_port, controller_port, echo_port = free_port(), free_port(), free_port()
        gateway = start(
            "gateway",
            [sys.executable, "-m", "portal.cli", "gateway"],
            {
                "KAIDEN_HOME": str(workdir / "home"),
                "KAIDEN_DATABASE_URL": database_url,
                "KAIDEN_REDIS_URL": redis_url,
                "KAIDEN_GATEWAY_PORT": str(gateway_port),
                "KAIDEN_HEARTBEAT_INTERVAL": "5",
                "KAIDEN_LOG_LEVEL": "WARNING",
            },
        )
        controller = start(
            "controller",
            [sys.executable, "-m", "agent.controller"],
            {
                "CLUSTER_ID": world["cluster_id"],
                "API_KEY": world["key"],
                "CLOUD_ENDPOINT": f"ws://127.0.0.1:{gateway_port}",
                "CONTROLLER_LISTEN": f"127.0.0.1:{controller_port}",
                "HEARTBEAT_INTERVAL": "5",
                "LOG_LEVEL": "WARNING",
            },
        )
        agent = start(
            "agent",
            [sys.executable, "-m", "agent.agent"],
            {
                "NODE_NAME": world["node"],
                "CONTROLLER_URL": f"ws://127.0.0.1:{controller_port}/agent",
                "API_KEY": world["key"],
                "HOST_ROOT": "/",
                "SESSION_SHELL": "/bin/sh",
                "RECORDING_CHUNK_SECONDS": str(args.chunk_seconds),
                "LOG_LEVEL": "WARNING",
            },
        )
        start("echo", [sys.executable, str(Path(__file__).resolve()), "--echo-server", str(echo_port)], {})
        portal_port = free_port()
        portal_env = {
            "KAIDEN_HOME": str(workdir / "home"),
            "KAIDEN_DATABASE_URL": database_url,
            "KAIDEN_REDIS_URL": redis_url,
            "KAIDEN_PORT": str(portal_port),
            "KAIDEN_GATEWAY_PORT": str(gateway_port),
            "KAIDEN_LOG_LEVEL": "WARNING",
        }
        start("portal", [sys.executable, "-m", "portal.cli", "portal"], portal_env)
        start("worker", [sys.executable, "-m", "portal.cli", "worker"], portal_env)
        ping = protocol.Ping(payload=protocol.PingPayload(node_name=world["node"]))
        wait_for(
            lambda: isinstance(send_command(redis, world["cluster_id"], ping, timeout=2), protocol.Pong),
            60,
            "the agent to answer a ping through gateway and controller",
        )
        wait_for(lambda: _port_open(echo_port), 30, "the echo server")
        wait_for(lambda: _port_open(portal_port), 60, "the portal")
        print(f"gateway :{gateway_port}, controller :{controller_port}, agent on {world['node']}: up", flush=True)
        pids = {"gateway": gateway.pid, "controller": controller.pid, "agent": agent.pid}
        results = asyncio.run(
            run_phases(args, world, f"ws://127.0.0.1:{gateway_port}", redis, f"ws://127.0.0.1:{echo_port}", pids)
        )
        results.insert(1, summary("baseline: local /bin/sh PTY echo (no relay)", pty_times))
        if args.api_starts:
            print(f"start via the API: {args.api_starts} sessions, one at a time …", flush=True)
            api = PortalClient(f"http://127.0.0.1:{portal_port}", world["assignee_token"])
            results += asyncio.run(api_start_phase(api, world, f"ws://127.0.0.1:{gateway_port}", args.api_starts))
        report(results, args)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    return 0


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _stop(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


if __name__ == "__main__":
    raise SystemExit(main())

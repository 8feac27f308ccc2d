"""Benchmark of the gateway: N concurrent simulated controllers (real websocket clients speaking the protocol
module) each sending a heartbeat with a few nodes every interval, N stepping up (100 → 1,000 → 3,000 → 10,000).

    python bench/gateway.py [--steps 100,1000,3000,10000] [--max-n N] [--interval 15] [--window 30] [--nodes 3]
                            [--database-url URL --redis-url URL] [--json FILE]

The gateway runs as its own process (`kaiden gateway`) on PostgreSQL + Redis (started privately on free ports
unless URLs are given). Per step: gateway RSS and CPU, heartbeats processed vs expected, heartbeat processing
p50/p99 (decode+dispatch, and receipt → batch committed), database rows written per second; the N=100 step is
the baseline the others are compared with; "degrades" = processed < 95 % of sent, or commit p99 above the
flush period + 1 s. Prints the conditions it ran under.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent import protocol  # noqa: E402

CONNECT_CONCURRENCY = 100


@dataclass
class Step:
    n: int
    connect_seconds: float
    failed_connections: int
    expected_heartbeats: int
    processed_heartbeats: int
    rss_mib: float
    cpu_percent: float
    handle_p50_ms: float | None
    handle_p99_ms: float | None
    commit_p50_ms: float | None
    commit_p99_ms: float | None
    db_rows_per_second: float
    flushes_per_second: float
    mean_flush_ms: float | None
    degraded: bool = False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------- services


def start_services(stack: ExitStack, workdir: Path) -> tuple[str, str]:
    """A private PostgreSQL and Redis on free ports (as scripts/test does), stopped on exit."""
    pg_bin = Path(sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))[-1]).parent
    as_pg = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
    data = workdir / "pg"
    data.mkdir()
    os.chmod(workdir, 0o755)  # noqa: S103 - the postgres user must reach its data dir
    if os.getuid() == 0:
        shutil.chown(data, "postgres")
    pg_port, redis_port = free_port(), free_port()
    subprocess.run(
        [*as_pg, str(pg_bin / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    options = f"-p {pg_port} -k {data} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off"
    subprocess.run(
        [*as_pg, str(pg_bin / "pg_ctl"), "-D", str(data), "-l", str(data / "log"), "-w", "-o", options, "start"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    stack.callback(
        lambda: subprocess.run(
            [*as_pg, str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            stdout=subprocess.DEVNULL,
            check=False,
        )
    )
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    stack.callback(redis.wait)
    stack.callback(redis.terminate)
    time.sleep(0.5)
    return f"postgresql+psycopg://postgres@127.0.0.1:{pg_port}/postgres", f"redis://127.0.0.1:{redis_port}/0"


def prepare_database(database_url: str, count: int) -> list[tuple[str, str]]:
    """Schema + one customer with `count` clusters; returns (cluster id, API key) pairs."""
    from sqlalchemy import text

    import portal.models  # noqa: F401
    from portal.db import Base, Database
    from portal.models import Cluster, Customer

    database = Database(database_url)
    Base.metadata.create_all(database.engine)
    pairs = []
    with database.session() as session:
        session.execute(text("DELETE FROM clusters"))
        customer = Customer(name=f"bench-{time.time_ns()}")
        session.add(customer)
        session.flush()
        for i in range(count):
            cluster = Cluster(customer_id=customer.id, name=f"bench-{i:05d}")
            issued = cluster.issue_api_key()
            session.add(cluster)
            pairs.append((str(cluster.id), issued.token))
    database.dispose()
    return pairs


# ---------------------------------------------------------------- simulated controllers


class Fleet:
    def __init__(self, url: str, interval: float, nodes: int) -> None:
        self.url = url + "/api/v1/agent/connect"
        self.interval = interval
        self.nodes = nodes
        self.sent = 0
        self.failed = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.stop = asyncio.Event()

    def _heartbeat(self, cluster_id: str) -> str:
        nodes = [
            protocol.NodeReport(
                name=f"node-{i}",
                status="ready",
                agent_status="online",
                agent_version="0.1.0",
                internal_ip=f"10.0.0.{i + 1}",
                cpu_capacity="4",
                memory_capacity="16Gi",
                kubelet_version="v1.36.3",
            )
            for i in range(self.nodes)
        ]
        payload = protocol.HeartbeatPayload(cluster_id=cluster_id, k8s_version="v1.36.3", nodes=nodes)
        return protocol.encode(protocol.Heartbeat(payload=payload))

    async def _controller(self, cluster_id: str, key: str, connected: asyncio.Event) -> None:
        from websockets.asyncio.client import connect

        headers = {"Authorization": f"Bearer {key}", "X-Kaiden-Cluster-Id": cluster_id}
        frame = self._heartbeat(cluster_id)
        hello = protocol.encode(
            protocol.Hello(
                payload=protocol.HelloPayload(role="controller", protocol_versions=[1], software_version="bench")
            )
        )
        try:
            async with connect(self.url, additional_headers=headers, open_timeout=120, ping_interval=None) as ws:
                await ws.send(hello)
                connected.set()
                await asyncio.sleep(random.uniform(0, self.interval))  # noqa: S311 - spread, not secrets
                while not self.stop.is_set():
                    await ws.send(frame)
                    self.sent += 1
                    try:
                        await asyncio.wait_for(self.stop.wait(), timeout=self.interval)
                    except TimeoutError:
                        pass
        except Exception:
            self.failed += 1
            connected.set()

    async def grow(self, pairs: list[tuple[str, str]]) -> float:
        started = time.monotonic()
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(cluster_id: str, key: str) -> None:
            async with gate:
                connected = asyncio.Event()
                self.tasks.append(asyncio.create_task(self._controller(cluster_id, key, connected)))
                await connected.wait()

        await asyncio.gather(*(one(c, k) for c, k in pairs))
        return time.monotonic() - started

    async def close(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# ---------------------------------------------------------------- measuring


def metrics(port: int, window: float) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics?window={window}", timeout=30) as response:
        return json.load(response)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_steps(args: argparse.Namespace, pairs: list[tuple[str, str]], port: int, pid: int) -> list[Step]:
    fleet = Fleet(f"ws://127.0.0.1:{port}", args.interval, args.nodes)
    results: list[Step] = []
    have = 0
    try:
        for n in args.steps:
            connect_seconds = await fleet.grow(pairs[have:n])
            have = n
            print(
                f"  N={n}: {n - fleet.failed} connected in {connect_seconds:.1f} s; settling {args.interval:g} s",
                flush=True,
            )
            await asyncio.sleep(args.interval)  # every new controller has sent at least once
            before, cpu0, sent0, t0 = metrics(port, 1), cpu_seconds(pid), fleet.sent, time.monotonic()
            await asyncio.sleep(args.window)
            after, cpu1, sent1, t1 = metrics(port, args.window), cpu_seconds(pid), fleet.sent, time.monotonic()
            elapsed = t1 - t0
            flushes = after["flushes"] - before["flushes"]
            step = Step(
                n=n,
                connect_seconds=round(connect_seconds, 2),
                failed_connections=fleet.failed,
                expected_heartbeats=sent1 - sent0,
                processed_heartbeats=after["heartbeats"] - before["heartbeats"],
                rss_mib=round(after["rss_kib"] / 1024, 1),
                cpu_percent=round(100 * (cpu1 - cpu0) / elapsed, 1),
                handle_p50_ms=after["handle_ms"]["p50"],
                handle_p99_ms=after["handle_ms"]["p99"],
                commit_p50_ms=after["commit_ms"]["p50"],
                commit_p99_ms=after["commit_ms"]["p99"],
                db_rows_per_second=round((after["rows_written"] - before["rows_written"]) / elapsed, 1),
                flushes_per_second=round(flushes / elapsed, 2),
                mean_flush_ms=round(1000 * (after["flush_seconds_total"] - before["flush_seconds_total"]) / flushes, 1)
                if flushes
                else None,
            )
            budget_ms = 1000 * (args.flush_seconds + 1.0)
            step.degraded = (
                step.processed_heartbeats < 0.95 * step.expected_heartbeats
                or (step.commit_p99_ms or 0) > budget_ms
                or step.failed_connections > 0
            )
            results.append(step)
            print(f"  N={n}: {json.dumps(asdict(step))}", flush=True)
    finally:
        await fleet.close()
    return results


def report(steps: list[Step], args: argparse.Namespace, fd_limit: int) -> None:
    base = steps[0]
    print()
    print(
        f"heartbeat every {args.interval:g} s with {args.nodes} nodes; window {args.window:g} s per step; "
        f"flush every {args.flush_seconds:g} s; baseline = N={base.n}"
    )
    header = (
        "N",
        "RSS MiB",
        "x base",
        "CPU %",
        "hb/s",
        "processed",
        "handle p50/p99 ms",
        "commit p50/p99 ms",
        "DB rows/s",
        "connect s",
        "degraded",
    )
    print(" | ".join(header))
    for s in steps:
        rate = s.processed_heartbeats / args.window
        print(
            " | ".join(
                [
                    str(s.n),
                    f"{s.rss_mib:.0f}",
                    f"{s.rss_mib / base.rss_mib:.2f}",
                    f"{s.cpu_percent:.0f}",
                    f"{rate:.1f}",
                    f"{s.processed_heartbeats}/{s.expected_heartbeats}",
                    f"{s.handle_p50_ms}/{s.handle_p99_ms}",
                    f"{s.commit_p50_ms}/{s.commit_p99_ms}",
                    f"{s.db_rows_per_second:.0f}",
                    f"{s.connect_seconds:.1f}",
                    "yes" if s.degraded else "no",
                ]
            )
        )
    worst = next((s for s in steps if s.degraded), None)
    print(f"degrades at N={worst.n}" if worst else f"no degradation up to N={steps[-1].n}")
    print()
    print("conditions:")
    print(
        f"  python {platform.python_version()}, websockets {metadata.version('websockets')}, "
        f"SQLAlchemy {metadata.version('SQLAlchemy')}, psycopg {metadata.version('psycopg')}"
    )
    print(
        f"  {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, fd limit {fd_limit}"
    )
    print("  the simulated controllers run in this process, on the same CPUs as the gateway and PostgreSQL")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="100,1000,3000,10000", help="comma-separated N values (default %(default)s)")
    parser.add_argument("--max-n", type=int, default=None, help="drop steps above this N")
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between heartbeats")
    parser.add_argument("--window", type=float, default=30.0, help="measured seconds per step")
    parser.add_argument("--nodes", type=int, default=3, help="nodes per heartbeat")
    parser.add_argument("--flush-seconds", type=float, default=1.0)
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.steps = sorted({int(x) for x in args.steps.split(",") if x.strip()})
    if args.max_n:
        args.steps = [n for n in args.steps if n <= args.max_n] or [args.max_n]
    # SIGTERM unwinds like Ctrl-C, so the gateway, PostgreSQL and Redis started here are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    fd_limit = raise_fd_limit()
    if fd_limit < args.steps[-1] + 200:
        print(f"fd limit {fd_limit} is too low for N={args.steps[-1]}; raise `ulimit -Hn`", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kaiden-bench-")))
        if args.database_url and args.redis_url:
            database_url, redis_url = args.database_url, args.redis_url
        else:
            database_url, redis_url = start_services(stack, workdir)
        print(f"registering {args.steps[-1]} clusters …", flush=True)
        pairs = prepare_database(database_url, args.steps[-1])
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KAIDEN_")},
            "KAIDEN_HOME": str(workdir / "home"),
            "KAIDEN_DATABASE_URL": database_url,
            "KAIDEN_REDIS_URL": redis_url,
            "KAIDEN_GATEWAY_PORT": str(port),
            "KAIDEN_HEARTBEAT_INTERVAL": str(int(args.interval)) if args.interval >= 1 else "1",
            "KAIDEN_HEARTBEAT_FLUSH_SECONDS": str(args.flush_seconds),
            "KAIDEN_LOG_LEVEL": "WARNING",
        }
        gateway = subprocess.Popen([sys.executable, "-m", "portal.cli", "gateway"], env=env, cwd=REPO)
        stack.callback(gateway.wait, 30)
        stack.callback(gateway.terminate)
        deadline = time.monotonic() + 60
        while True:
            try:
                metrics(port, 1)
                break
            except OSError:
                if time.monotonic() > deadline or gateway.poll() is not None:
                    print("the gateway did not start", file=sys.stderr)
                    return 1
                time.sleep(0.2)
        print(f"gateway pid {gateway.pid} on port {port}; steps {args.steps}", flush=True)
        steps = asyncio.run(run_steps(args, pairs, port, gateway.pid))
        report(steps, args, fd_limit)
        if args.json:
            args.json.write_text(json.dumps([asdict(s) for s in steps], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

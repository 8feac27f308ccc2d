"""Benchmark of the stack engine: up (cold, warm), preview and destroy of the smoke stack on a local kwok
cluster, against the same operations on an empty program (the fixed cost of one engine operation).

    python -m bench.engine [--runs 5] [--backend URL] [--kubeconfig PATH] [--json FILE]

Prints medians, peak RSS of the pulumi CLI + provider processes, ratios to the baseline, and conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHART = str(REPO / "catalog" / "charts" / "hello")
OPERATIONS = ("up-cold", "up-warm", "preview", "destroy")
SAMPLE_SECONDS = 0.05


@dataclass
class Sample:
    seconds: float
    peak_rss_mb: float


@dataclass
class Series:
    samples: dict[str, list[Sample]] = field(default_factory=lambda: {op: [] for op in OPERATIONS})

    def median(self, op: str) -> float:
        return statistics.median(s.seconds for s in self.samples[op])

    def peak(self, op: str) -> float:
        return max(s.peak_rss_mb for s in self.samples[op])


# --- memory of the engine's child processes --------------------------------------------------------


def _children_table() -> dict[int, list[int]]:
    table: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            table.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    return table


def _rss_mb(pid: int) -> tuple[str, float]:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "", 0.0
    name = next((line.split()[1] for line in status.splitlines() if line.startswith("Name:")), "")
    rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return name, rss / 1024


def engine_rss_mb(root: int) -> float:
    """Summed RSS of the pulumi CLI and provider plugins below `root` (plugins get their own process
    groups but stay our descendants)."""
    table = _children_table()
    total, todo = 0.0, [root]
    while todo:
        for child in table.get(todo.pop(), []):
            todo.append(child)
            name, rss = _rss_mb(child)
            if name.startswith("pulumi"):
                total += rss
    return total


@contextmanager
def peak_rss() -> Iterator[Callable[[], float]]:
    """Sample the engine processes' RSS every SAMPLE_SECONDS while the block runs; yields a getter."""
    peak = [0.0]
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], engine_rss_mb(os.getpid()))
            stop.wait(SAMPLE_SECONDS)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        yield lambda: peak[0]
    finally:
        stop.set()
        thread.join()


# --- the runs ------------------------------------------------------------------------------------


def _empty_program() -> None:
    """The baseline: a program that declares nothing (only the root stack resource exists)."""


def run_series(program_for: Callable[[str], Callable[[], None]], runs: int, settings, label: str) -> Series:
    from portal.infra import engine

    series = Series()
    for index in range(runs):
        stack = f"bench-{label}-{uuid.uuid4().hex[:6]}"
        program = program_for(stack)
        for op in OPERATIONS:
            with peak_rss() as peak:
                started = time.perf_counter()
                if op in ("up-cold", "up-warm"):
                    engine.up(stack, program, settings)
                elif op == "preview":
                    engine.preview(stack, program, settings)
                else:
                    engine.destroy(stack, settings, remove=True)
                elapsed = time.perf_counter() - started
            series.samples[op].append(Sample(elapsed, peak()))
            print(f"  {label:8} run {index + 1}/{runs} {op:8} {elapsed:6.2f}s  peak {peak():6.1f} MiB", flush=True)
    return series


def conditions(settings, kubeconfig: str) -> dict[str, str]:
    from portal.infra import toolchain

    versions = {s.name: s.reported or "-" for s in toolchain.status()}
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), platform.processor())
    backend = settings.pulumi_backend_url.split("://", 1)[0]
    return {
        "pulumi CLI": versions.get("pulumi", "-"),
        "kubernetes provider": versions.get("pulumi-resource-kubernetes", "-"),
        "kube-apiserver": versions.get("kube-apiserver", "-"),
        "kwok": versions.get("kwok", "-"),
        "python pulumi / pulumi-kubernetes": f"{metadata.version('pulumi')} / {metadata.version('pulumi-kubernetes')}",
        "python": platform.python_version(),
        "cpus": f"{os.cpu_count()} x {cpu}",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "backend": backend,
        "cluster": kubeconfig,
    }


def report(smoke, empty, runs: int, info: dict[str, str]) -> dict:
    rows = []
    print(f"\nEngine benchmark: medians of {runs} runs (seconds), peak RSS of pulumi CLI + provider (MiB)\n")
    print(f"{'operation':10} {'smoke':>8} {'empty':>8} {'ratio':>6} {'smoke RSS':>10} {'empty RSS':>10}")
    for op in OPERATIONS:
        s, e = smoke.median(op), empty.median(op)
        rows.append(
            {
                "operation": op,
                "smoke_median_s": round(s, 3),
                "empty_median_s": round(e, 3),
                "ratio": round(s / e, 2) if e else None,
                "smoke_peak_rss_mib": round(smoke.peak(op), 1),
                "empty_peak_rss_mib": round(empty.peak(op), 1),
                "smoke_samples_s": [round(x.seconds, 3) for x in smoke.samples[op]],
                "empty_samples_s": [round(x.seconds, 3) for x in empty.samples[op]],
            }
        )
        print(f"{op:10} {s:8.2f} {e:8.2f} {s / e:6.2f} {smoke.peak(op):10.1f} {empty.peak(op):10.1f}")
    print("\nempty = the same operation on a program that declares nothing: the fixed cost per operation")
    print("(workspace, stack select, CLI start, state read/write, language host, provider start).\n")
    for key, value in info.items():
        print(f"{key:34} {value}")
    return {"runs": runs, "rows": rows, "conditions": info}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per operation (default 5)")
    parser.add_argument("--backend", help="Pulumi backend URL (default: file:// under a temp KAIDEN_HOME)")
    parser.add_argument("--kubeconfig", help="an existing cluster's kubeconfig (default: start a kwok cluster)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    from portal.infra import devcluster
    from portal.settings import load_settings
    from stacks.smoke import SmokeSpec, smoke

    with tempfile.TemporaryDirectory(prefix="kaiden-bench-") as tmp:
        overrides = {"home": str(Path(tmp) / "home"), "secret_key": "bench"}
        if args.backend:
            overrides["pulumi_backend_url"] = args.backend
        settings = load_settings(overrides, environ={})
        cluster_name = None
        if args.kubeconfig:
            kubeconfig = Path(args.kubeconfig)
        else:
            cluster_name = f"bench-{os.getpid()}"
            print(f"starting kwok cluster {cluster_name} …", flush=True)
            kubeconfig = devcluster.create_cluster(cluster_name, nodes=1, root=Path(tmp) / "kwok").kubeconfig
        try:
            text = kubeconfig.read_text()

            def smoke_for(stack: str) -> Callable[[], None]:
                spec = SmokeSpec(kubeconfig=text, chart_path=CHART, namespace=stack)
                return lambda: smoke(spec)

            info = conditions(settings, str(kubeconfig) if args.kubeconfig else f"kwok {cluster_name} (1 node)")
            print("baseline (empty program):", flush=True)
            empty = run_series(lambda _stack: _empty_program, args.runs, settings, "empty")
            print("smoke program:", flush=True)
            smoke_series = run_series(smoke_for, args.runs, settings, "smoke")
            figures = report(smoke_series, empty, args.runs, info)
            if args.json:
                args.json.write_text(json.dumps(figures, indent=2))
        finally:
            if cluster_name:
                devcluster.delete_cluster(cluster_name, root=Path(tmp) / "kwok")
    return 0


if __name__ == "__main__":
    sys.exit(main())

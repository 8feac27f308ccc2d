"""Local Kubernetes clusters for development and tests: kwokctl's binary runtime on our built binaries.

State lives in kwok's own layout under $KAIDEN_HOME/kwok (KWOK_WORKDIR); see docs/toolchain.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import click

from portal.infra import toolchain

DEFAULT_NAME = "kaiden"
NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
CLUSTER_BINARIES = {
    "--etcd-binary": "etcd",
    "--kube-apiserver-binary": "kube-apiserver",
    "--kube-controller-manager-binary": "kube-controller-manager",
    "--kube-scheduler-binary": "kube-scheduler",
    "--kwok-controller-binary": "kwok",
}
LOG_LINES = 20
LOG_MARKER = "kaiden simulated container log"
CREATE_TIMEOUT = 180
STOP_TIMEOUT = 30
NODE_IPS_PARAM = '.nodeIPs=["127.0.0.1"]'
# Simulated clusters have no storage provisioner: a pool of pre-made volumes of a default class lets
# PersistentVolumeClaims (chart PVCs, StatefulSet volume claims) bind as they would on a real cluster.
STORAGE_CLASS = "kaiden-local"
PV_POOL = 64
PV_SIZE = "50Gi"
T = TypeVar("T")


class ClusterError(toolchain.ToolchainError):
    """A local cluster could not be created, reached or removed."""


@dataclass(frozen=True)
class Cluster:
    """A running local cluster: `kubeconfig` is an admin kubeconfig for it."""

    name: str
    kubeconfig: Path
    workdir: Path
    server: str = ""
    log_file: Path | None = None


def workdir() -> Path:
    """KWOK_WORKDIR for our clusters: $KAIDEN_HOME/kwok (KAIDEN_HOME defaults to ./.kaiden)."""
    home = Path(os.environ.get("KAIDEN_HOME", ".kaiden")).expanduser()
    return (home / "kwok").resolve()


def _root(root: Path | None) -> Path:
    return (root or workdir()).resolve()


def cluster_env(root: Path | None = None) -> dict[str, str]:
    """Environment for kwokctl: our bin dir first on PATH (its kubectl), kwok state under `root`."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(toolchain.bin_dir()), env.get("PATH", os.defpath)])
    env["KWOK_WORKDIR"] = str(_root(root))
    return env


def _check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise ClusterError(f"invalid cluster name {name!r}: lowercase letters, digits and '-', at most 40")


def _run(args: list[str], root: Path | None, timeout: float = 120, check: bool = True) -> str:
    try:
        proc = subprocess.run(args, env=cluster_env(root), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{' '.join(args[:5])} timed out after {timeout}s") from exc
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(args[:5])} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def _kwokctl(name: str, *args: str, root: Path | None = None, timeout: float = 120, check: bool = True) -> str:
    return _run([str(toolchain.tool_path("kwokctl")), "--name", name, *args], root, timeout, check)


def kubectl(name: str, *args: str, root: Path | None = None, timeout: float = 60) -> str:
    """Run our kubectl against a local cluster and return its stdout."""
    return _run(
        [str(toolchain.tool_path("kubectl")), "--kubeconfig", str(kubeconfig(name, root)), *args], root, timeout
    )


def _extras_dir(name: str, root: Path | None) -> Path:
    return _root(root) / "kaiden" / name


def kubeconfig(name: str = DEFAULT_NAME, root: Path | None = None) -> Path:
    """Path of the admin kubeconfig kwokctl wrote for a cluster."""
    path = _root(root) / "clusters" / name / "kubeconfig.yaml"
    if not path.is_file():
        raise ClusterError(f"cluster {name!r} does not exist (no {path})")
    return path


def write_log_file(path: Path, lines: int = LOG_LINES) -> Path:
    """Write a container log in CRI format (what kwok serves for `kubectl logs`)."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    content = "".join(
        f"{(start + timedelta(seconds=i)).strftime('%Y-%m-%dT%H:%M:%S.%fZ')} stdout F {LOG_MARKER} line {i + 1}\n"
        for i in range(lines)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


def kwok_config(log_file: Path, exec_dir: Path) -> str:
    """kwokctl config: components listen on loopback only; every container's log is `log_file`;
    exec runs locally."""
    return f"""\
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  bindAddress: 127.0.0.1
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterLogs
metadata:
  name: kaiden-logs
spec:
  logs:
  - logsFile: {log_file}
    follow: true
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterExec
metadata:
  name: kaiden-exec
spec:
  execs:
  - local:
      workDir: {exec_dir}
"""


def _server(config: Path) -> str:
    match = re.search(r"server:\s*(\S+)", config.read_text())
    return match.group(1) if match else ""


def list_clusters(root: Path | None = None) -> list[str]:
    """Names of the local clusters under the work dir (running or stopped)."""
    clusters = _root(root) / "clusters"
    if not clusters.is_dir():
        return []
    return sorted(p.name for p in clusters.iterdir() if (p / "kwok.yaml").is_file())


def _cluster(name: str, root: Path | None) -> Cluster:
    config = kubeconfig(name, root)
    log_file = _extras_dir(name, root) / "container.log"
    return Cluster(name, config, _root(root) / "clusters" / name, _server(config), log_file)


def create_cluster(name: str = DEFAULT_NAME, nodes: int = 1, root: Path | None = None) -> Cluster:
    """Start (or reuse) a cluster with `nodes` Ready simulated nodes; nothing is downloaded."""
    _check_name(name)
    if nodes < 0:
        raise ClusterError("nodes must be >= 0")
    if name in list_clusters(root):
        _kwokctl(name, "start", "cluster", "--wait", f"{CREATE_TIMEOUT}s", root=root, timeout=CREATE_TIMEOUT + 30)
    else:
        extras = _extras_dir(name, root)
        log_file = write_log_file(extras / "container.log")
        (extras / "exec").mkdir(parents=True, exist_ok=True)
        config = extras / "kwok.yaml"
        config.write_text(kwok_config(log_file, extras / "exec"))
        args = ["create", "cluster", "--runtime", "binary", "--config", str(config), "--kubeconfig="]
        for flag, tool in CLUSTER_BINARIES.items():
            args += [flag, str(toolchain.tool_path(tool).resolve())]
        args += ["--wait", f"{CREATE_TIMEOUT}s"]
        try:
            _kwokctl(name, *args, root=root, timeout=CREATE_TIMEOUT + 60)
        except ClusterError:
            _kwokctl(name, "delete", "cluster", root=root, check=False)
            raise
    if nodes:
        # kwok's node template addresses nodes in 192.0.2.0/24 and 2001:db8::/64; keep them on loopback
        # so nothing (logs, exec, metrics) ever dials outside this machine.
        _kwokctl(name, "scale", "node", "--replicas", str(nodes), "--param", NODE_IPS_PARAM, root=root)
        kubectl(name, "wait", "--for=condition=Ready", "node", "--all", "--timeout=120s", root=root, timeout=150)
    storage = _extras_dir(name, root) / "storage.yaml"
    storage.write_text(storage_manifest())
    kubectl(name, "apply", "--server-side", "-f", str(storage), root=root, timeout=120)
    return _cluster(name, root)


def storage_manifest(pool: int = PV_POOL, size: str = PV_SIZE) -> str:
    """The default StorageClass (no provisioner, immediate binding) and `pool` volumes of `size` for it."""
    documents = [
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n"
        f"  name: {STORAGE_CLASS}\n"
        '  annotations: {storageclass.kubernetes.io/is-default-class: "true"}\n'
        "provisioner: kubernetes.io/no-provisioner\nvolumeBindingMode: Immediate\nreclaimPolicy: Retain\n"
    ]
    for index in range(pool):
        documents.append(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n"
            f"  name: {STORAGE_CLASS}-{index:03d}\n"
            f"  labels: {{app.kubernetes.io/managed-by: kaiden-devcluster}}\n"
            f"spec:\n  storageClassName: {STORAGE_CLASS}\n  capacity: {{storage: {size}}}\n"
            "  accessModes: [ReadWriteOnce, ReadWriteMany, ReadOnlyMany]\n"
            "  persistentVolumeReclaimPolicy: Retain\n"
            f"  hostPath: {{path: /var/lib/kaiden-devcluster/{index:03d}, type: DirectoryOrCreate}}\n"
        )
    return "---\n".join(documents)


def stop_cluster(name: str = DEFAULT_NAME, root: Path | None = None) -> None:
    """Stop a cluster's processes, keeping its state for the next `create_cluster`; missing is not an error."""
    _check_name(name)
    cluster_dir = _root(root) / "clusters" / name
    if cluster_dir.exists():
        pids = _pids(cluster_dir)
        _kwokctl(name, "stop", "cluster", root=root)
        _wait_exited(pids)


def delete_cluster(name: str = DEFAULT_NAME, root: Path | None = None) -> None:
    """Stop a cluster's processes and remove its state; a missing cluster is not an error."""
    _check_name(name)
    cluster_dir = _root(root) / "clusters" / name
    if cluster_dir.exists():
        pids = _pids(cluster_dir)
        _kwokctl(name, "delete", "cluster", root=root)
        _wait_exited(pids)
    shutil.rmtree(_extras_dir(name, root), ignore_errors=True)


def _pids(cluster_dir: Path) -> list[int]:
    pids = []
    for pid_file in (cluster_dir / "pids").glob("*.pid"):
        with contextlib.suppress(OSError, ValueError):
            pids.append(int(pid_file.read_text().strip()))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie has exited; its parent just has not reaped it
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _wait_exited(pids: list[int]) -> None:
    """kwokctl returns once it has signalled the components; wait until their ports are free."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise ClusterError(f"cluster processes {pids} still running {STOP_TIMEOUT}s after delete")
        time.sleep(0.2)


# --- command line ------------------------------------------------------------------------------


@click.group("dev")
def dev_cli() -> None:
    """Development helpers."""


@dev_cli.group("cluster")
def cluster_cli() -> None:
    """Local kwok clusters on the pinned toolchain."""


def _guard(fn: Callable[..., T], *args: object) -> T:
    try:
        return fn(*args)
    except toolchain.ToolchainError as exc:
        raise click.ClickException(str(exc)) from exc


@cluster_cli.command("up")
@click.option("--name", default=DEFAULT_NAME, show_default=True)
@click.option("--nodes", default=1, show_default=True, type=click.IntRange(0))
def up_command(name: str, nodes: int) -> None:
    """Create (or restart) a cluster with NODES simulated nodes."""
    cluster = _guard(create_cluster, name, nodes)
    click.echo(f"cluster {cluster.name} up at {cluster.server}")
    click.echo(f"export KUBECONFIG={cluster.kubeconfig}")


@cluster_cli.command("down")
@click.option("--name", default=DEFAULT_NAME, show_default=True)
def down_command(name: str) -> None:
    """Delete a cluster and its state."""
    _guard(delete_cluster, name)
    click.echo(f"cluster {name} deleted")


@cluster_cli.command("kubeconfig")
@click.option("--name", default=DEFAULT_NAME, show_default=True)
def kubeconfig_command(name: str) -> None:
    """Print the path of a cluster's kubeconfig."""
    click.echo(_guard(kubeconfig, name))


@cluster_cli.command("list")
def list_command() -> None:
    """List local clusters."""
    for name in list_clusters():
        click.echo(name)


if __name__ == "__main__":
    dev_cli()

"""The engine for real: `pulumi up` of the smoke stack on the local kwok cluster, conflicts, SIGKILL recovery,
destroy, the operators' CLI view, and the PostgreSQL DIY backend.

Run as a script (`python -m tests.integration.test_engine worker '<json>'`) it is the child process whose
`up` the recovery tests kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pulumi
import pytest

from portal.errors import ConflictError, NotFound
from portal.infra import engine, toolchain
from portal.infra.engine import Progress, Secret
from portal.settings import Settings, load_settings
from stacks.smoke import CONFIGMAP_NAME, TOKEN_SECRET_NAME, SmokeSpec, smoke
from tests.support import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = str(REPO / "catalog" / "charts" / "hello")
PASSPHRASE = "integration-passphrase-5f2c"
TOKEN = "tok-integration-8d1e77"
RELEASE = "hello"
FULLNAME = f"{RELEASE}-hello"  # the chart's object names
SMOKE_RESOURCES = 4  # provider, namespace, configmap, release (+ the token Secret when given)


# --- helpers shared by the tests and the worker --------------------------------------------------


def engine_settings(home: Path, backend_url: str | None = None) -> Settings:
    overrides: dict[str, Any] = {"home": str(home), "pulumi_passphrase": PASSPHRASE, "secret_key": "test"}
    if backend_url:
        overrides["pulumi_backend_url"] = backend_url
    return load_settings(overrides, environ={})


def smoke_program(kubeconfig: str, namespace: str, api_token: str | None = None, pause: float = 0) -> Callable:
    spec = SmokeSpec(kubeconfig=kubeconfig, chart_path=CHART, namespace=namespace, api_token=api_token)
    if not pause:
        return functools.partial(smoke, spec)

    def slow_program() -> None:
        # Keeps the update (and the stack lock) open for `pause` seconds after declaring everything: an
        # output that resolves late. Not `time.sleep`, which would block the SDK's event loop, so nothing
        # would register until the pause ended and an idle machine could finish the update before the test acts.
        smoke(spec)
        pulumi.export("held", pulumi.Output.from_input(asyncio.sleep(pause, result="held")))

    return slow_program


def _worker(args: dict[str, Any]) -> None:
    """Child process: run one `up`, printing each progress record as a JSON line."""

    def progress_handler(p: Progress) -> None:
        print(json.dumps({"event": p.event, "urn": p.urn, "type": p.resource_type, "op": p.operation}), flush=True)

    settings = engine_settings(Path(args["home"]), args.get("backend"))
    program = smoke_program(Path(args["kubeconfig"]).read_text(), args["namespace"], pause=args.get("pause", 0))
    print(json.dumps({"event": "starting", "pid": os.getpid()}), flush=True)
    result = engine.up(args["stack"], program, settings, progress_callback=progress_handler)
    print(json.dumps({"event": "finished", "changes": dict(result.changes)}), flush=True)


class Child:
    """An `up` running in its own process group (as an RQ work horse does), watched line by line."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.test_engine", "worker", json.dumps(args)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with_json = line.strip()
            if with_json.startswith("{"):
                self.lines.put(json.loads(with_json))

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                item = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise AssertionError(f"worker exited ({self.proc.returncode}): {self.stderr()}") from None
                continue
            self.seen.append(item)
            if predicate(item):
                return item
        raise AssertionError(f"worker never reached the kill point; saw {self.seen}")

    def stderr(self) -> str:
        return self.proc.stderr.read()[-3000:] if self.proc.stderr else ""

    def kill_tree(self) -> None:
        """SIGKILL the worker, the pulumi CLI and the provider plugins (which pulumi puts in their own
        process groups): what a machine or container dying does."""
        victims = _descendants(self.proc.pid)
        os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)

    def kill_group(self) -> list[int]:
        """SIGKILL the worker's process group only, as RQ kills a work horse; returns the pids of
        descendants that survive it (pulumi's provider plugins, in their own process groups)."""
        before = _descendants(self.proc.pid)
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        time.sleep(0.5)
        return [pid for pid in before if engine.probe_process(pid) is not None]

    def finish(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.kill_tree()


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


# --- cluster checks ------------------------------------------------------------------------------


class ClusterView:
    """What is really in the cluster, read with the kubernetes Python client."""

    def __init__(self, kubeconfig: Path) -> None:
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)

    def namespace_exists(self, name: str) -> bool:
        return any(ns.metadata.name == name for ns in self.core.list_namespace().items)

    def names(self, namespace: str) -> dict[str, set[str]]:
        return {
            "configmaps": {c.metadata.name for c in self.core.list_namespaced_config_map(namespace).items},
            "secrets": {s.metadata.name for s in self.core.list_namespaced_secret(namespace).items},
            "services": {s.metadata.name for s in self.core.list_namespaced_service(namespace).items},
            "deployments": {d.metadata.name for d in self.apps.list_namespaced_deployment(namespace).items},
        }

    def releases(self, namespace: str) -> list[dict[str, str]]:
        items = self.core.list_namespaced_secret(namespace, label_selector=f"owner=helm,name={RELEASE}").items
        return [dict(s.metadata.labels) for s in items]

    def ready_pods(self, namespace: str) -> list[str]:
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/instance={RELEASE}").items
        return [
            p.metadata.name
            for p in pods
            if p.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
        ]

    def pods(self, namespace: str) -> list[str]:
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/instance={RELEASE}").items
        return [p.metadata.name for p in pods]

    def assert_converged(self, namespace: str, with_token: bool = False) -> None:
        """Exactly the smoke objects, the release deployed once, one Ready pod: nothing orphaned."""
        assert self.namespace_exists(namespace)
        names = self.names(namespace)
        assert names["configmaps"] == {"kube-root-ca.crt", CONFIGMAP_NAME, FULLNAME}
        assert names["services"] == {FULLNAME}
        assert names["deployments"] == {FULLNAME}
        releases = self.releases(namespace)
        assert [r["status"] for r in releases][-1:] == ["deployed"], releases
        assert all(r["status"] in ("deployed", "superseded", "uninstalled") for r in releases), releases
        helm_secrets = {f"sh.helm.release.v1.{RELEASE}.v{r['version']}" for r in releases}
        expected_secrets = helm_secrets | ({TOKEN_SECRET_NAME} if with_token else set())
        assert names["secrets"] == expected_secrets
        data = self.core.read_namespaced_config_map(CONFIGMAP_NAME, namespace).data
        assert data == {"greeting": "hello from kaiden"}
        assert self.core.read_namespaced_config_map(FULLNAME, namespace).data == {"GREETING": "hello from kaiden"}
        deployment = self.apps.read_namespaced_deployment(FULLNAME, namespace)
        assert deployment.spec.replicas == 1
        wait_for(lambda: deployment_ready(self, namespace), 120, "the Deployment to be ready")
        wait_for(lambda: len(self.pods(namespace)) == 1, 120, "exactly one pod")
        assert len(self.ready_pods(namespace)) == 1


def deployment_ready(view: ClusterView, namespace: str) -> bool:
    status = view.apps.read_namespaced_deployment(FULLNAME, namespace).status
    return (status.ready_replicas or 0) == 1


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(platform_cluster) -> Any:
    return platform_cluster


@pytest.fixture(scope="module")
def view(cluster) -> ClusterView:
    return ClusterView(cluster.kubeconfig)


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    return tmp_path / "kaiden-home"


def _cleanup(stack: str, settings: Settings, view: ClusterView, namespace: str) -> None:
    """Teardown that never leaves a stack or a namespace behind, even after a failed test."""
    try:
        engine.recover(stack, settings)
        engine.destroy(stack, settings, remove=True)
    except Exception as exc:  # best effort; the namespace is removed below regardless
        logging.getLogger(__name__).warning("cleanup of stack %s: %s", stack, exc)
    if view.namespace_exists(namespace):
        view.core.delete_namespace(namespace)


def _names() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return f"smoke-{suffix}", f"smoke-{suffix}"


# --- the tests -----------------------------------------------------------------------------------


def test_up_preview_outputs_destroy_and_cli_view(cluster, view: ClusterView, home: Path) -> None:
    settings = engine_settings(home)
    stack, namespace = _names()
    kubeconfig = cluster.kubeconfig.read_text()
    program = smoke_program(kubeconfig, namespace, api_token=TOKEN)
    progress: list[Progress] = []
    config = {"kaiden:owner": "integration", "kaiden:token": Secret(TOKEN)}
    try:
        result = engine.up(stack, program, settings, config=config, progress_callback=progress.append)
        assert result.kind == "update" and result.result == "succeeded"
        assert result.changes == {"create": SMOKE_RESOURCES + 2}  # + the Secret and the root stack
        assert result.outputs["namespace"] == namespace
        assert result.outputs["release_status"] == "deployed"
        assert result.outputs["revision"] == 1
        assert isinstance(result.outputs["api_token"], Secret) and result.outputs["api_token"].reveal() == TOKEN
        assert result.public_outputs()["api_token"] == "[secret]"
        assert not any(TOKEN in line or PASSPHRASE in line for line in result.log)
        done = [p for p in progress if p.event == "resource-done"]
        assert len(done) == SMOKE_RESOURCES + 1 and done[-1].done == done[-1].total == SMOKE_RESOURCES + 1
        assert {p.operation for p in done} == {"create"}
        view.assert_converged(namespace, with_token=True)
        assert not (home / "workspaces" / stack).exists()  # workspace removed after the operation

        again = engine.up(stack, program, settings, config=config)
        assert again.changes == {"same": SMOKE_RESOURCES + 2}

        preview = engine.preview(stack, program, settings, config=config)
        assert preview.kind == "preview" and preview.changes == {"same": SMOKE_RESOURCES + 2}

        current = engine.outputs(stack, settings)
        assert current["release"] == RELEASE and isinstance(current["api_token"], Secret)

        refreshed = engine.refresh(stack, settings)
        assert refreshed.kind == "refresh"

        listed = _cli_stack_ls(settings)
        assert f"organization/kaiden/{stack}" in listed or stack in listed

        gone = engine.destroy(stack, settings)
        assert gone.changes.get("delete") == SMOKE_RESOURCES + 2
        wait_for(lambda: not view.namespace_exists(namespace), 120, "the namespace to be deleted")
        engine.cancel(stack, settings)  # no lock held: a harmless no-op
        engine.remove(stack, settings)
        assert stack not in {name.rsplit("/", 1)[-1] for name in _cli_stack_ls(settings)}
        with pytest.raises(NotFound):
            engine.outputs(stack, settings)
    finally:
        _cleanup(stack, settings, view, namespace)


def _cli_stack_ls(settings: Settings) -> list[str]:
    """`pulumi stack ls --all` with the plain CLI: only the backend URL and the passphrase, as an operator has."""
    env = {
        "PATH": f"{toolchain.bin_dir()}:{os.environ.get('PATH', '')}",
        "HOME": os.environ.get("HOME", "/root"),
        "PULUMI_HOME": str(toolchain.default_pulumi_home()),
        "PULUMI_BACKEND_URL": settings.pulumi_backend_url,
        "PULUMI_CONFIG_PASSPHRASE": settings.pulumi_passphrase,
        "PULUMI_SKIP_UPDATE_CHECK": "true",
    }
    proc = subprocess.run(
        [str(toolchain.tool_path("pulumi")), "stack", "ls", "--all", "--json"],
        cwd=settings.home,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return [item["name"] for item in json.loads(proc.stdout or "[]")]


def test_second_update_on_a_locked_stack_fails_fast(cluster, view: ClusterView, home: Path) -> None:
    settings = engine_settings(home)
    stack, namespace = _names()
    child = Child(
        {"home": str(home), "stack": stack, "namespace": namespace, "kubeconfig": str(cluster.kubeconfig), "pause": 40}
    )
    try:
        child.wait_for(lambda item: item.get("event") == "resource-done")  # the lock is held from here on
        started = time.monotonic()
        with pytest.raises(ConflictError) as caught:
            engine.up(stack, smoke_program(cluster.kubeconfig.read_text(), namespace), settings)
        elapsed = time.monotonic() - started
        assert elapsed < 30, f"conflict took {elapsed:.1f}s"
        assert caught.value.code == "stack_locked" and "still running" in caught.value.message
        assert child.finish() == 0, child.stderr()  # the first update was not disturbed
        view.assert_converged(namespace)
    finally:
        child.finish()
        _cleanup(stack, settings, view, namespace)


def _is_start(rtype: str) -> Callable[[dict[str, Any]], bool]:
    return lambda item: item.get("event") == "resource-started" and item.get("type") == rtype


def _is_done(rtype: str) -> Callable[[dict[str, Any]], bool]:
    return lambda item: item.get("event") == "resource-done" and item.get("type") == rtype


KILL_POINTS: dict[str, tuple[Callable[[dict[str, Any]], bool], float]] = {
    # name: (when the worker reports this, then wait this many seconds, then SIGKILL the whole tree)
    "namespace-creating": (_is_start("kubernetes:core/v1:Namespace"), 0.0),
    "configmap-creating": (_is_start("kubernetes:core/v1:ConfigMap"), 0.0),
    "release-installing": (_is_start("kubernetes:helm.sh/v3:Release"), 0.3),
    "release-waiting": (_is_start("kubernetes:helm.sh/v3:Release"), 2.0),
    "release-done": (_is_done("kubernetes:helm.sh/v3:Release"), 0.0),
}


def _describe(report: engine.Recovery | None) -> str:
    if report is None:
        return "no recovery needed"

    def short(urns: list[str]) -> list[str]:
        return [u.rsplit("::", 1)[-1] for u in urns]

    pending = [f"{t} {u.rsplit('::', 1)[-1]}" for t, u in report.pending]
    return (
        f"stale locks {len(report.stale_locks)}, pending {pending}, "
        f"rolled back {short(report.rolled_back)}, cleared {short(report.cleared)}"
    )


# Each round shifts the kill 0.7 s later, so repeated rounds hit different moments of the same step.
KILL_ROUNDS = int(os.environ.get("KAIDEN_KILL_ROUNDS", "2"))


@pytest.mark.parametrize("round_", range(KILL_ROUNDS))
@pytest.mark.parametrize("kill_point", list(KILL_POINTS))
def test_sigkill_mid_update_then_next_up_recovers(
    cluster, view: ClusterView, home: Path, kill_point: str, round_: int
) -> None:
    settings = engine_settings(home)
    stack, namespace = _names()
    predicate, delay = KILL_POINTS[kill_point]
    delay += 0.7 * round_
    args = {"home": str(home), "stack": stack, "namespace": namespace, "kubeconfig": str(cluster.kubeconfig)}
    args["pause"] = 60  # the update stays open past every kill point, however fast the cluster answers
    child = Child(args)
    try:
        child.wait_for(predicate)
        time.sleep(delay)
        child.kill_tree()
        assert child.proc.returncode == -signal.SIGKILL

        lock_dir = home / "pulumi-state" / ".pulumi" / "locks" / "organization" / "kaiden" / stack
        locked = any(lock_dir.glob("*.json"))
        if kill_point in ("namespace-creating", "configmap-creating", "release-installing"):
            assert locked, "the CLI must have held the lock when it was killed"

        notes: list[Progress] = []
        program = smoke_program(cluster.kubeconfig.read_text(), namespace)
        result = engine.up(stack, program, settings, progress_callback=notes.append)
        report = result.recovery
        if locked:
            assert report is not None and report.stale_locks, f"no stale lock found; log: {result.log[-20:]}"
        if report is not None:
            assert all(v.stale and "is gone" in v.reason for v in report.stale_locks)
        summary = _describe(report)
        print(f"\nkill at {kill_point} +{delay:.1f}s: {summary}; converged in {result.duration:.1f}s")
        view.assert_converged(namespace)
        assert result.outputs["release_status"] == "deployed"

        again = engine.up(stack, program, settings)  # converged: nothing left to do, no pending operations
        assert again.changes == {"same": SMOKE_RESOURCES + 1} and again.recovery is None
    finally:
        child.finish(timeout=5)
        _cleanup(stack, settings, view, namespace)
    wait_for(lambda: not view.namespace_exists(namespace), 120, "the namespace to be deleted")


def test_rq_style_kill_leaves_an_orphan_plugin_that_recovery_reaps(cluster, view: ClusterView, home: Path) -> None:
    settings = engine_settings(home)
    stack, namespace = _names()
    child = Child({"home": str(home), "stack": stack, "namespace": namespace, "kubeconfig": str(cluster.kubeconfig)})
    survivors: list[int] = []
    try:
        child.wait_for(_is_start("kubernetes:helm.sh/v3:Release"))
        time.sleep(0.3)
        survivors = child.kill_group()
        orphans = [pid for pid in survivors if (engine.probe_process(pid) or engine.ProcessInfo("", 0)).name]
        assert orphans, "expected the provider plugin to outlive the worker's process group"

        result = engine.up(stack, smoke_program(cluster.kubeconfig.read_text(), namespace), settings)
        report = result.recovery
        assert report is not None and report.stale_locks
        assert set(orphans) <= set(report.reaped)
        assert all(engine.probe_process(pid) is None for pid in orphans)
        print(f"\nRQ-style kill: {_describe(report)}, reaped plugins {report.reaped}")
        view.assert_converged(namespace)
    finally:
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        child.finish(timeout=5)
        _cleanup(stack, settings, view, namespace)


# --- the PostgreSQL DIY backend -------------------------------------------------------------------


def pulumi_postgres_url(database_url: str, table: str) -> str:
    """Pulumi's DIY backend URL for a SQLAlchemy-style `postgresql+psycopg://user[:pw]@host:port/db` URL."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    auth = url.username or ""
    if url.password:
        auth += f":{url.password}"
    query = dict(url.query)
    query.setdefault("sslmode", "disable")
    query["table"] = table
    params = "&".join(f"{k}={v}" for k, v in sorted(query.items()))
    return f"postgres://{auth}@{url.host or 'localhost'}:{url.port or 5432}/{url.database}?{params}"


@pytest.fixture()
def postgres_backend() -> Iterator[str]:
    database_url = os.environ.get("KAIDEN_TEST_DATABASE_URL", "")
    if not database_url.startswith("postgresql"):
        reason = "KAIDEN_TEST_DATABASE_URL (postgresql+psycopg://…) is not set: the postgres backend test needs it"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    table = f"pulumi_state_{uuid.uuid4().hex[:8]}"
    try:
        yield pulumi_postgres_url(database_url, table)
    finally:
        import psycopg
        from sqlalchemy.engine import make_url

        url = make_url(database_url)
        with psycopg.connect(
            host=url.host, port=url.port, user=url.username, password=url.password, dbname=url.database
        ) as conn:
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')


def test_pulumi_postgres_url() -> None:
    assert pulumi_postgres_url("postgresql+psycopg://kaiden@db:5433/ci", "t1") == (
        "postgres://kaiden@db:5433/ci?sslmode=disable&table=t1"
    )
    assert pulumi_postgres_url("postgresql://u:p@h/d?sslmode=require", "t") == (
        "postgres://u:p@h:5432/d?sslmode=require&table=t"
    )


def test_up_and_destroy_on_the_postgres_backend(cluster, view: ClusterView, home: Path, postgres_backend: str) -> None:
    settings = engine_settings(home, backend_url=postgres_backend)
    stack, namespace = _names()
    program = smoke_program(cluster.kubeconfig.read_text(), namespace, api_token=TOKEN)
    try:
        result = engine.up(stack, program, settings, config={"kaiden:token": Secret(TOKEN)})
        assert result.changes == {"create": SMOKE_RESOURCES + 2}
        assert result.outputs["release_status"] == "deployed"
        view.assert_converged(namespace, with_token=True)
        assert stack in {name.rsplit("/", 1)[-1] for name in _cli_stack_ls(settings)}
        assert engine.up(stack, program, settings).changes == {"same": SMOKE_RESOURCES + 2}

        gone = engine.destroy(stack, settings, remove=True)
        assert gone.changes.get("delete") == SMOKE_RESOURCES + 2
        wait_for(lambda: not view.namespace_exists(namespace), 120, "the namespace to be deleted")
        assert stack not in {name.rsplit("/", 1)[-1] for name in _cli_stack_ls(settings)}
    finally:
        _cleanup(stack, settings, view, namespace)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
    _worker(json.loads(sys.argv[2]))

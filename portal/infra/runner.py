"""The one module that runs Ansible: `ansible_runner.run` on our playbooks in a private, per-run directory.

Callers (jobs) get a small result and a stream of already-redacted progress records; they never see
raw Ansible events, so a secret that reaches an event (a module echoing its input) is scrubbed here,
before anything is logged or stored.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PLAYBOOKS_DIR = Path(__file__).resolve().parents[2] / "playbooks"
REDACTED = "[redacted]"
_RESULT_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
    "runner_item_on_failed": "failed",
}


@dataclass(frozen=True)
class TaskEvent:
    """One step of a run, safe to store: a task started, or a task finished on a host."""

    kind: str  # "start" | "ok" | "changed" | "failed" | "unreachable" | "skipped"
    task: str
    host: str = ""
    message: str = ""
    started: int = 0  # tasks started so far
    total: int = 0  # tasks in the playbook (an estimate: loops and skipped plays differ)

    def line(self) -> str:
        if self.kind == "start":
            return f"TASK [{self.task}]"
        text = f"  {self.kind}: {self.host}" if self.host else f"  {self.kind}"
        return f"{text} — {self.message}" if self.message else text


@dataclass
class PlaybookResult:
    status: str  # ansible-runner's: successful, failed, canceled, timeout
    rc: int
    stats: dict[str, int] = field(default_factory=dict)  # totals over hosts: ok, changed, failures, ...
    failure: str | None = None  # the first failing task and its message (redacted)

    @property
    def ok(self) -> bool:
        return self.status == "successful"


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every non-trivial secret value replaced."""
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def count_tasks(playbook: Path) -> int:
    """Tasks declared in a playbook (pre_tasks, tasks, post_tasks, handlers not counted)."""
    plays = yaml.safe_load(playbook.read_text()) or []
    return sum(len(play.get(part) or []) for play in plays for part in ("pre_tasks", "tasks", "post_tasks"))


@contextmanager
def private_dir(prefix: str = "kaiden-ansible-") -> Iterator[Path]:
    """A 0700 scratch directory for one run (kubeconfig and bundle files go here, 0600); removed after."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_secret_file(directory: Path, name: str, content: str) -> Path:
    """Write `content` to `directory/name` with mode 0600 (created so, never world-readable)."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    return path


def _stdout_tail(runner: Any, secrets: list[str], lines: int = 5) -> str:
    """Ansible's error lines (or its last lines), redacted; best effort: the artifacts may be gone."""
    try:
        with runner.stdout as handle:
            text = handle.read()[-20_000:]
    except Exception:  # diagnostics only: the artifacts may be gone
        return ""
    found = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in found if line.startswith(("ERROR", "[ERROR]", "fatal:"))]
    kept = errors[-lines:] or found[-lines:]  # ansible's error lines say why; else its last lines
    return redact(" | ".join(kept), secrets)[:2000]


def _message(result: dict[str, Any]) -> str:
    if result.get("censored"):
        return "output hidden (no_log)"
    parts = [str(result[key]) for key in ("msg", "stderr", "reason") if result.get(key)]
    return " ".join(parts)[:2000]


def run_playbook(
    playbook: str,
    *,
    workdir: Path,
    extravars: dict[str, Any],
    secrets: Iterable[str] = (),
    event_callback: Callable[[TaskEvent], None] | None = None,
    cancel_callback: Callable[[], bool] | None = None,
    timeout: int | None = None,
    check: bool = False,
) -> PlaybookResult:
    """Run `playbooks/<playbook>` against localhost (our own Python, so `kubernetes.core` finds its
    libraries), reporting redacted `TaskEvent`s; `check` is a dry run (`--check`). Secrets belong in
    files under `workdir`, not in `extravars` (ansible-runner writes extravars to `workdir/env`).
    """
    import ansible_runner

    secrets = [s for s in secrets if s]
    path = PLAYBOOKS_DIR / playbook
    total = count_tasks(path)
    started = 0
    failure: str | None = None
    stats: dict[str, int] = {}  # from the playbook_on_stats event (events are not kept on disk)

    def event_handler(event: dict[str, Any]) -> bool:
        nonlocal started, failure
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        task = redact(str(data.get("task") or ""), secrets)
        record: TaskEvent | None = None
        if kind == "playbook_on_stats":
            for name in ("ok", "changed", "failures", "dark", "skipped", "ignored", "rescued"):
                per_host = data.get(name) or {}
                stats[name] = sum(int(count) for count in per_host.values()) if isinstance(per_host, dict) else 0
        elif kind == "playbook_on_task_start":
            started += 1
            record = TaskEvent("start", task, started=started, total=total)
        elif kind in _RESULT_EVENTS:
            result = data.get("res") or {}
            outcome = _RESULT_EVENTS[kind]
            if outcome == "ok" and result.get("changed"):
                outcome = "changed"
            message = redact(_message(result), secrets)
            if outcome == "failed" and data.get("ignore_errors"):
                outcome = "failed (ignored)"
            elif outcome in ("failed", "unreachable") and failure is None:
                failure = f"{task}: {message}" if message else task
            record = TaskEvent(outcome, task, str(data.get("host", "")), message, started, total)
        if record is not None and event_callback is not None:
            event_callback(record)
        return False  # do not keep event files: they could hold module arguments

    bin_dir = str(Path(sys.executable).parent)
    envvars = {
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", os.defpath)]),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
        "ANSIBLE_HOME": str(workdir / "ansible-home"),
    }
    inventory = {
        "all": {
            "hosts": {
                "localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
            }
        }
    }
    runner = ansible_runner.run(
        private_data_dir=str(workdir),
        project_dir=str(PLAYBOOKS_DIR),
        playbook=playbook,
        inventory=inventory,
        extravars=extravars,
        envvars=envvars,
        event_handler=event_handler,
        cancel_callback=cancel_callback,
        quiet=True,
        timeout=timeout,
        rotate_artifacts=1,
        cmdline="--check" if check else None,
    )
    if runner.status != "successful" and failure is None:
        # no task failed: ansible itself stopped (killed, crashed, refused its input); its last words say why
        exit_text = "killed by a signal" if runner.rc is None else f"exit {runner.rc}"
        failure = (
            f"the playbook ended with status {runner.status} ({exit_text}) after {started} of {total} tasks started"
        )
        tail = _stdout_tail(runner, secrets)
        if tail:
            failure += f"; last output: {tail}"
    return PlaybookResult(status=runner.status, rc=runner.rc, stats=stats, failure=failure)

"""The engine's pure logic: progress from events, error mapping, summaries, lock staleness, recovery flow.

No CLI runs here: the Automation API's Stack is replaced by a fake at the engine's seam (`_Run.stack`).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from portal.errors import ConflictError, InfrastructureError, ValidationError
from portal.infra import engine
from portal.infra.engine import (
    Diagnostic,
    EngineResult,
    LockHolder,
    ProcessInfo,
    Progress,
    ProgressTracker,
    Scrubber,
    Secret,
    StackRef,
    error_summary,
    judge_lock,
    parse_lock_holders,
    pending_create_id,
    probe_process,
)
from portal.settings import load_settings

auto = engine.auto  # the engine is the one module importing the Automation API; tests borrow its handle

NS_URN = "urn:pulumi:dev::kaiden::kubernetes:core/v1:Namespace::namespace"
CM_URN = "urn:pulumi:dev::kaiden::kubernetes:core/v1:ConfigMap::settings"
REL_URN = "urn:pulumi:dev::kaiden::kubernetes:helm.sh/v3:Release::hello"
HOST = "worker-1"
LOCK_TIME = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


def _event(seq: int, **payload: Any) -> auto.EngineEvent:
    return auto.EngineEvent.from_json({"sequence": seq, "timestamp": 0, **payload})


def _step(op: str, urn: str, rtype: str) -> dict[str, Any]:
    return {"metadata": {"op": op, "urn": urn, "type": rtype, "provider": ""}}


def _events() -> list[auto.EngineEvent]:
    stack = "urn:pulumi:dev::kaiden::pulumi:pulumi:Stack::kaiden-dev"
    return [
        _event(1, preludeEvent={"config": {}}),
        _event(2, resourcePreEvent=_step("create", stack, "pulumi:pulumi:Stack")),
        _event(3, resourcePreEvent=_step("create", NS_URN, "kubernetes:core/v1:Namespace")),
        _event(4, resOutputsEvent=_step("create", NS_URN, "kubernetes:core/v1:Namespace")),
        _event(5, resourcePreEvent=_step("create", CM_URN, "kubernetes:core/v1:ConfigMap")),
        _event(6, resourcePreEvent=_step("create", REL_URN, "kubernetes:helm.sh/v3:Release")),
        _event(7, diagnosticEvent={"message": "\x1b[1mwaiting for pods\x1b[0m", "color": "never",
                                   "severity": "info", "urn": REL_URN, "ephemeral": True}),
        _event(8, resOutputsEvent=_step("create", CM_URN, "kubernetes:core/v1:ConfigMap")),
        _event(9, diagnosticEvent={"message": "release failed: timed out\n", "color": "never",
                                   "severity": "error", "urn": REL_URN}),
        _event(10, resOpFailedEvent={**_step("create", REL_URN, "kubernetes:helm.sh/v3:Release"), "status": 1,
                                     "steps": 1}),
        _event(11, diagnosticEvent={"message": "debug noise", "color": "never", "severity": "debug"}),
        _event(12, summaryEvent={"maybeCorrupt": False, "durationSeconds": 3,
                                 "resourceChanges": {"create": 2, "same": 1}, "PolicyPacks": {}}),
    ]  # fmt: skip


# --- progress -------------------------------------------------------------------------------


def test_tracker_counts_resources_and_reports_each_step() -> None:
    seen: list[Progress] = []
    tracker = ProgressTracker("dev", "update", seen.append)
    for event in _events():
        tracker.handle_event(event)

    started = [p for p in seen if p.event == "resource-started"]
    assert [p.urn for p in started] == [NS_URN, CM_URN, REL_URN]  # the root stack resource is not counted
    assert [(p.done, p.total) for p in started] == [(0, 1), (1, 2), (1, 3)]
    done = [p for p in seen if p.event == "resource-done"]
    assert [(p.urn, p.operation, p.resource_type) for p in done] == [
        (NS_URN, "create", "kubernetes:core/v1:Namespace"),
        (CM_URN, "create", "kubernetes:core/v1:ConfigMap"),
    ]
    failed = [p for p in seen if p.event == "resource-failed"]
    assert [(p.urn, p.done, p.total) for p in failed] == [(REL_URN, 3, 3)]
    assert tracker.failed == {REL_URN}

    diagnostics = [p.diagnostic for p in seen if p.event == "diagnostic"]
    assert diagnostics == [
        Diagnostic("info", "waiting for pods", REL_URN, True),
        Diagnostic("error", "release failed: timed out", REL_URN, False),
    ]
    assert tracker.diagnostics == [Diagnostic("error", "release failed: timed out", REL_URN, False)]
    assert tracker.errors() == tracker.diagnostics

    summary = [p for p in seen if p.event == "summary"]
    assert summary[0].changes == {"create": 2, "same": 1}
    assert tracker.changes == {"create": 2, "same": 1}


def test_tracker_total_never_below_the_expected_total() -> None:
    seen: list[Progress] = []
    tracker = ProgressTracker("dev", "update", seen.append, expected_total=5)
    tracker.handle_event(_event(1, resourcePreEvent=_step("same", NS_URN, "kubernetes:core/v1:Namespace")))
    assert (seen[-1].done, seen[-1].total) == (0, 5)


def test_a_failing_callback_does_not_break_the_tracker() -> None:
    def broken(_: Progress) -> None:
        raise RuntimeError("boom")

    tracker = ProgressTracker("dev", "update", broken)
    for event in _events():
        tracker.handle_event(event)
    assert tracker.done == 3


# --- secrets and messages --------------------------------------------------------------------


def test_secret_never_shows_its_value() -> None:
    secret = Secret("hunter2-password")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret) and "hunter2" not in f"{secret}"
    assert secret.reveal() == "hunter2-password"
    assert secret == Secret("hunter2-password")


def test_result_public_outputs_redact_secrets() -> None:
    result = EngineResult("dev", "update", "succeeded", {"create": 2, "same": 1}, {"a": 1, "t": Secret("x")}, 1.0)
    assert result.public_outputs() == {"a": 1, "t": "[secret]"}
    assert result.changed == 2


def test_scrubber_replaces_secrets_and_their_long_lines() -> None:
    kubeconfig = "apiVersion: v1\nclient-key-data: QUJDREVGR0hJSktMTU5PUA==\n"
    scrub = Scrubber(["pass-phrase-1", kubeconfig, "abc"])
    text = "pass-phrase-1 used; key client-key-data: QUJDREVGR0hJSktMTU5PUA== leaked; abc stays"
    assert scrub(text) == "[secret] used; key [secret] leaked; abc stays"


def test_error_summary_prefers_error_diagnostics_and_scrubs() -> None:
    diags = [
        Diagnostic("warning", "deprecated"),
        Diagnostic("error", "helm install failed: token tok-SECRET rejected", REL_URN),
        Diagnostic("error", "update failed"),
    ]
    message = error_summary("error: update failed", diags, Scrubber(["tok-SECRET"]))
    assert message == "hello: helm install failed: token [secret] rejected; update failed"


def test_error_summary_falls_back_to_cli_error_lines() -> None:
    stderr = "some noise\nerror: could not reach the backend: dial tcp 127.0.0.1:5\n"
    assert error_summary(stderr, [], Scrubber()) == "could not reach the backend: dial tcp 127.0.0.1:5"
    assert error_summary("", [], Scrubber()) == "unknown error"
    assert len(error_summary("error: " + "x" * 5000, [], Scrubber())) == engine.MAX_MESSAGE


def test_stack_ref_validates_names() -> None:
    assert str(StackRef("svc-acme-blog")) == "svc-acme-blog"
    for bad in ("", "-x", "a/b", "a b", "x" * 101):
        with pytest.raises(ValidationError):
            StackRef(bad)


# --- locks ------------------------------------------------------------------------------------

LOCK_ERROR = (
    "error: the stack is currently locked by 2 lock(s). Either wait for the other process(es) to end or "
    "delete the lock file with `pulumi cancel`.\n"
    "  file:///var/kaiden/pulumi-state/.pulumi/locks/organization/kaiden/dev/0f1e.json: created by "
    "root@worker-1 (pid 4242) at 2026-06-01T12:00:00Z\n"
    "  postgres://****:****@db:5432/kaiden/.pulumi/locks/organization/kaiden/dev/77aa.json: created by "
    "kaiden@other-host (pid 17) at 2026-06-01T13:30:00+02:00\n"
)


def test_parse_lock_holders_from_the_diy_error() -> None:
    holders = parse_lock_holders(LOCK_ERROR)
    assert [(h.user, h.host, h.pid) for h in holders] == [("root", "worker-1", 4242), ("kaiden", "other-host", 17)]
    assert holders[0].created == LOCK_TIME
    assert holders[1].created == datetime(2026, 6, 1, 11, 30, tzinfo=UTC)
    assert holders[0].location.endswith("/dev/0f1e.json")
    assert parse_lock_holders("error: something else") == []


def _holder(host: str = HOST, pid: int = 4242, created: datetime | None = LOCK_TIME) -> LockHolder:
    return LockHolder("loc", "root", host, pid, created)


@pytest.mark.parametrize(
    ("process", "stale", "reason"),
    [
        (None, True, "gone"),
        (ProcessInfo("bash", LOCK_TIME.timestamp() - 100), True, "not the pulumi CLI"),
        (ProcessInfo("pulumi", LOCK_TIME.timestamp() + 60), True, "pid reused"),
        (ProcessInfo("pulumi", LOCK_TIME.timestamp() - 5), False, "still running"),
        (ProcessInfo("pulumi", LOCK_TIME.timestamp() + 1), False, "still running"),  # within clock slack
        (ProcessInfo("", 0.0), False, "still running"),  # exists, nothing else known
    ],
)
def test_judge_lock_on_this_host(process: ProcessInfo | None, stale: bool, reason: str) -> None:
    verdict = judge_lock(_holder(), hostname=HOST, probe=lambda pid: process)
    assert verdict.stale is stale
    assert reason in verdict.reason


def test_judge_lock_of_another_host_is_live_unless_too_old() -> None:
    def probe(pid: int) -> ProcessInfo | None:
        raise AssertionError("must not probe local pids for a foreign lock")

    holder = _holder(host="other-host")
    assert not judge_lock(holder, hostname=HOST, probe=probe).stale
    later = LOCK_TIME + timedelta(hours=2)
    assert not judge_lock(holder, hostname=HOST, probe=probe, now=later, foreign_max_age=3 * 3600).stale
    verdict = judge_lock(holder, hostname=HOST, probe=probe, now=later, foreign_max_age=3600)
    assert verdict.stale and "7200s old" in verdict.reason


def test_probe_process_sees_this_process_and_not_a_dead_pid() -> None:
    me = probe_process(os.getpid())
    assert me is not None
    assert me.name == Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    assert me.started <= time.time()
    assert probe_process(2**22 + 12345) is None  # above pid_max: never a live process


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (["/x/pulumi-resource-kubernetes", "127.0.0.1:41234"], ("127.0.0.1", 41234)),
        (["pulumi-resource-kubernetes", "--logtostderr", "-v=9", "localhost:80"], ("127.0.0.1", 80)),
        (["pulumi-resource-kubernetes", "[::1]:5000"], ("::1", 5000)),
        (["pulumi-resource-kubernetes", "--version"], None),
        (["pulumi-resource-kubernetes", "10.0.0.1:80"], None),  # never a local engine
    ],
)
def test_plugin_engine_address(cmdline: list[str], expected: tuple[str, int] | None) -> None:
    assert engine.plugin_engine_address(cmdline) == expected


# --- pending operations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ({"type": "kubernetes:core/v1:Namespace", "inputs": {"metadata": {"name": "smoke"}}}, "smoke"),
        (
            {"type": "kubernetes:core/v1:ConfigMap", "inputs": {"metadata": {"name": "cm", "namespace": "smoke"}}},
            "smoke/cm",
        ),
        ({"type": engine.HELM_RELEASE_TYPE, "inputs": {"name": "hello", "namespace": "smoke"}}, "smoke/hello"),
        ({"type": "pulumi:providers:kubernetes", "inputs": {}}, None),
        ({"type": "kubernetes:helm.sh/v3:Chart", "inputs": {"name": "x"}}, None),
        ({"type": "cloudflare:index/record:Record", "inputs": {"name": "x"}}, None),
        ({"type": "kubernetes:core/v1:ConfigMap", "inputs": {"metadata": {}}}, None),
    ],
)
def test_pending_create_id(resource: dict[str, Any], expected: str | None) -> None:
    assert pending_create_id(resource) == expected


def test_repair_file_backend_removes_only_damaged_sidecars(tmp_path: Path) -> None:
    stacks = tmp_path / ".pulumi" / "stacks" / "kaiden"
    locks = tmp_path / ".pulumi" / "locks" / "organization" / "kaiden" / "dev"
    stacks.mkdir(parents=True)
    locks.mkdir(parents=True)
    (stacks / "dev.json").write_text("{}")
    (stacks / "dev.json.attrs").write_text("")  # truncated by a SIGKILL
    (stacks / "dev.json.bak.attrs").write_text('{"user.cache_control": ""}')
    (stacks / "other.json.attrs").write_text("")  # another stack: not ours to touch
    (locks / "a.json.attrs").write_text('{"user.content_type": "appl')
    removed = engine.repair_file_backend(f"file://{tmp_path}", "dev")
    assert sorted(removed) == ["a.json.attrs", "dev.json.attrs"]
    assert (stacks / "dev.json.bak.attrs").exists() and (stacks / "other.json.attrs").exists()
    assert (stacks / "dev.json").read_text() == "{}"
    assert engine.repair_file_backend("postgres://u@h/db", "dev") == []


# --- the operation flow against a fake stack ---------------------------------------------------


def _command_result(stderr: str, code: int = 255) -> auto.CommandResult:
    return auto.CommandResult(stdout="", stderr=stderr, code=code)


class FakeWorkspace:
    def __init__(self, owner: FakeStack, work_dir: str) -> None:
        self.work_dir = work_dir
        self.owner = owner

    def remove_stack(self, name: str, force: bool = False) -> None:
        self.owner.calls.append(("remove", name))


class FakeStack:
    """Stands in for `auto.Stack`: scripted failures for `up`, a state with pending operations."""

    name = "dev"

    def __init__(
        self,
        up_errors: list[Exception] | None = None,
        pending: list[dict] | None = None,
        missing: set[str] | None = None,
    ) -> None:
        self.up_errors = list(up_errors or [])
        self.missing = missing or set()  # objects an interrupted create never made
        self.calls: list[tuple] = []
        self.state: dict[str, Any] = {"resources": [{"urn": "urn:root"}], "pending_operations": list(pending or [])}
        self.workspace: FakeWorkspace | None = None

    def up(self, on_event=None, on_output=None, **kwargs):
        self.calls.append(("up",))
        if on_output:
            on_output("Updating (dev): secret-value-123 is hidden")
        if self.up_errors:
            raise self.up_errors.pop(0)
        on_event(_event(1, resourcePreEvent=_step("create", NS_URN, "kubernetes:core/v1:Namespace")))
        on_event(_event(2, resOutputsEvent=_step("create", NS_URN, "kubernetes:core/v1:Namespace")))
        on_event(_event(3, summaryEvent={"maybeCorrupt": False, "durationSeconds": 1,
                                         "resourceChanges": {"create": 1}, "PolicyPacks": {}}))  # fmt: skip
        summary = auto.UpdateSummary("update", datetime.now(UTC), "", {}, {}, "succeeded")
        outputs = {"ns": auto.OutputValue("smoke", False), "token": auto.OutputValue("t0k", True)}
        return auto.UpResult("", "", summary, outputs)

    def cancel(self) -> None:
        self.calls.append(("cancel",))

    def export_stack(self):
        self.calls.append(("export",))
        return auto.Deployment(version=3, deployment=dict(self.state))

    def import_stack(self, state) -> None:
        deployment = state.deployment
        self.calls.append(
            ("import", [r["urn"] for r in deployment["resources"]], len(deployment["pending_operations"]))
        )
        self.state = dict(deployment)

    def refresh(self, clear_pending_creates=None, **kwargs):
        """Adopted creates whose object exists stay; `--clear-pending-creates` drops the other creates."""
        self.calls.append(("refresh", clear_pending_creates))
        self.state["resources"] = [r for r in self.state["resources"] if r["urn"] not in self.missing]
        if clear_pending_creates:
            self.state["pending_operations"] = [
                op for op in self.state["pending_operations"] if op["type"] != "creating"
            ]
        return None

    def destroy(self, target=None, target_dependents=None, **kwargs):
        self.calls.append(("destroy", tuple(target or ())))
        self.state["resources"] = [r for r in self.state["resources"] if r["urn"] not in (target or ())]


@pytest.fixture()
def settings(tmp_path: Path):
    return load_settings(
        {"home": str(tmp_path / "home"), "pulumi_passphrase": "pass-phrase-xyz", "secret_key": "k"},
        environ={},
    )


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch):
    """Route the engine to a FakeStack; returns a setter for the stack the next operation gets."""
    holder: dict[str, FakeStack] = {}
    env = {"PULUMI_HOME": "/nonexistent", "PULUMI_BACKEND_URL": "file:///nonexistent/state"}
    monkeypatch.setattr(engine, "engine_env", lambda settings: env)
    monkeypatch.setattr(engine._Run, "workspace", lambda self, work_dir: str(work_dir))

    def stack(self, work_dir: str, create: bool) -> FakeStack:
        fake_stack = holder["stack"]
        fake_stack.workspace = FakeWorkspace(fake_stack, work_dir)
        assert Path(work_dir).is_dir()
        holder["work_dir"] = work_dir
        return fake_stack

    monkeypatch.setattr(engine._Run, "stack", stack)

    def use(fake_stack: FakeStack) -> dict[str, Any]:
        holder["stack"] = fake_stack
        return holder

    return use


def _program() -> None:
    raise AssertionError("the fake stack never runs the program")


def _locked_by(pid: int, host: str | None = None) -> Exception:
    import socket

    host = host or socket.gethostname()
    message = (
        "error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or "
        f"delete the lock file with `pulumi cancel`.\n  file:///s/.pulumi/locks/organization/kaiden/dev/a.json: "
        f"created by root@{host} (pid {pid}) at {datetime.now(UTC).isoformat(timespec='seconds')}"
    )
    return auto.ConcurrentUpdateError(_command_result(message))


def test_up_returns_a_typed_summary_and_cleans_its_workspace(fake, settings) -> None:
    state = fake(FakeStack())
    seen: list[Progress] = []
    result = engine.up(
        "dev", _program, settings, config={"k": Secret("secret-value-123")}, progress_callback=seen.append
    )
    assert result.kind == "update" and result.result == "succeeded"
    assert result.changes == {"create": 1}
    assert result.outputs["ns"] == "smoke" and isinstance(result.outputs["token"], Secret)
    assert result.public_outputs() == {"ns": "smoke", "token": "[secret]"}
    assert result.recovery is None
    assert result.log == ("Updating (dev): [secret] is hidden",)  # secret config values never reach the log
    assert [(p.event, p.done, p.total) for p in seen] == [
        ("resource-started", 0, 1),
        ("resource-done", 1, 1),
        ("summary", 1, 1),
    ]
    assert not Path(state["work_dir"]).exists()
    assert result.duration >= 0


def test_live_lock_is_a_conflict_without_touching_the_lock(fake, settings, monkeypatch) -> None:
    stack = FakeStack(up_errors=[_locked_by(4242)])
    fake(stack)
    monkeypatch.setattr(engine, "probe_process", lambda pid: ProcessInfo("pulumi", time.time() - 60))
    started = time.monotonic()
    with pytest.raises(ConflictError) as caught:
        engine.up("dev", _program, settings)
    assert time.monotonic() - started < 5
    assert caught.value.code == "stack_locked"
    assert "pid 4242" in caught.value.message and "still running" in caught.value.message
    assert stack.calls == [("up",)]  # no cancel, no retry


def test_foreign_lock_is_a_conflict(fake, settings) -> None:
    stack = FakeStack(up_errors=[_locked_by(17, host="elsewhere")])
    fake(stack)
    with pytest.raises(ConflictError, match="another host"):
        engine.up("dev", _program, settings)
    assert ("cancel",) not in stack.calls


def test_stale_lock_is_cancelled_and_the_update_retried(fake, settings) -> None:
    stack = FakeStack(up_errors=[_locked_by(2**22 + 999)])  # a pid that cannot exist
    fake(stack)
    seen: list[Progress] = []
    result = engine.up("dev", _program, settings, progress_callback=seen.append)
    assert stack.calls == [("up",), ("cancel",), ("export",), ("up",)]
    assert result.recovery is not None and len(result.recovery.stale_locks) == 1
    assert "is gone" in result.recovery.stale_locks[0].reason
    assert result.recovery.pending == []
    assert any(p.event == "recovery" and "stale lock" in (p.message or "") for p in seen)


def test_stale_lock_with_pending_operations_is_fully_recovered(fake, settings) -> None:
    pending = [
        {"type": "creating", "resource": {"urn": NS_URN, "type": "kubernetes:core/v1:Namespace",
                                          "inputs": {"metadata": {"name": "smoke"}}}},
        {"type": "creating", "resource": {"urn": REL_URN, "type": engine.HELM_RELEASE_TYPE,
                                          "inputs": {"name": "hello", "namespace": "smoke"}}},
        {"type": "creating", "resource": {"urn": "urn:x::cloudflare:index/record:Record::dns",
                                          "type": "cloudflare:index/record:Record", "inputs": {}}},
        {"type": "updating", "resource": {"urn": CM_URN, "type": "kubernetes:core/v1:ConfigMap", "inputs": {}}},
    ]  # fmt: skip
    stack = FakeStack(up_errors=[_locked_by(2**22 + 999)], pending=pending, missing={REL_URN})
    fake(stack)
    result = engine.up("dev", _program, settings)
    kinds = [c[0] for c in stack.calls]
    assert kinds == ["up", "cancel", "export", "import", "refresh", "export", "destroy", "export", "import", "up"]
    # 1. the Kubernetes creates are adopted (their IDs derived from inputs), the others stay pending
    adopt = stack.calls[3]
    assert adopt == ("import", ["urn:root", NS_URN, REL_URN], 2)
    # 2. refresh clears the unknowable create; the release never came into being, so it drops out
    assert stack.calls[4] == ("refresh", True)
    # 3. the interrupted create that exists is rolled back; 4. the leftover pending update is dropped
    assert stack.calls[6] == ("destroy", (NS_URN,))
    assert stack.calls[8] == ("import", ["urn:root"], 0)
    report = result.recovery
    assert report is not None
    assert report.imported == [NS_URN] and report.rolled_back == [NS_URN]
    assert report.cleared == ["urn:x::cloudflare:index/record:Record::dns", REL_URN]
    assert report.dropped == [CM_URN]
    assert len(report.pending) == 4


def test_adopt_pending_creates_turns_them_into_resources() -> None:
    deployment = {
        "resources": [{"urn": "urn:root"}],
        "pending_operations": [
            {"type": "creating", "resource": {"urn": NS_URN, "inputs": {"metadata": {"name": "smoke"}}}},
            {"type": "deleting", "resource": {"urn": CM_URN}},
        ],
    }
    adopted, urns = engine.adopt_pending_creates(deployment, {NS_URN: "smoke"})
    assert urns == [NS_URN]
    assert adopted["resources"][-1] == {
        "urn": NS_URN,
        "id": "smoke",
        "inputs": {"metadata": {"name": "smoke"}},
        "outputs": {"metadata": {"name": "smoke"}},
    }
    assert adopted["pending_operations"] == [{"type": "deleting", "resource": {"urn": CM_URN}}]
    assert len(deployment["resources"]) == 1  # the input is not modified


def test_only_one_recovery_attempt(fake, settings) -> None:
    stack = FakeStack(up_errors=[_locked_by(2**22 + 999), _locked_by(2**22 + 998)])
    fake(stack)
    with pytest.raises(ConflictError):
        engine.up("dev", _program, settings)
    assert [c[0] for c in stack.calls].count("up") == 2


def test_recover_false_never_touches_a_stale_lock(fake, settings) -> None:
    stack = FakeStack(up_errors=[_locked_by(2**22 + 999)])
    fake(stack)
    with pytest.raises(ConflictError, match="is gone"):
        engine.up("dev", _program, settings, recover=False)
    assert ("cancel",) not in stack.calls


def test_command_error_becomes_a_readable_infrastructure_error(fake, settings) -> None:
    stderr = "error: update failed\nerror: kubeconfig token secret-value-123 was rejected by the API server"
    state = fake(FakeStack(up_errors=[auto.CommandError(_command_result(stderr))]))
    with pytest.raises(InfrastructureError) as caught:
        engine.up("dev", _program, settings, config={"token": Secret("secret-value-123")})
    message = caught.value.message
    assert message.startswith("pulumi update of stack dev failed: update failed; kubeconfig token [secret]")
    assert "secret-value-123" not in message and "pass-phrase-xyz" not in message
    assert caught.value.log == ("Updating (dev): [secret] is hidden",)  # type: ignore[attr-defined]
    assert not Path(state["work_dir"]).exists()


def test_inline_programs_run_one_at_a_time_per_process(fake, settings) -> None:
    fake(FakeStack())
    assert engine._INLINE_LOCK.acquire(blocking=False)
    try:
        with pytest.raises(ConflictError, match="inline"):
            engine.up("dev", _program, settings)
    finally:
        engine._INLINE_LOCK.release()

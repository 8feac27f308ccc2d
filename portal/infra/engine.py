"""The stack engine: the only module that drives Pulumi's Automation API (up, preview, refresh, destroy, ...).

One fresh workspace directory per operation, progress from engine events, conflicts and stale-lock recovery.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pulumi import automation as auto

from portal.errors import ConflictError, InfrastructureError, NotFound, ValidationError
from portal.infra import toolchain
from portal.settings import Settings

log = logging.getLogger(__name__)

PROJECT = "kaiden"
STACK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
REDACTED = "[secret]"
ROOT_TYPE = "pulumi:pulumi:Stack"
HELM_RELEASE_TYPE = "kubernetes:helm.sh/v3:Release"
MAX_MESSAGE = 2000
# Tolerance between a lock's timestamp (whole seconds) and its process's start time (clock ticks).
LOCK_CLOCK_SLACK = 2.0

OperationKind = Literal["update", "preview", "refresh", "destroy"]
ProgramFn = Callable[[], None]


# --- public data types ----------------------------------------------------------------------


@dataclass(frozen=True)
class StackRef:
    """A stack of the `kaiden` project, by its short name (e.g. `svc-acme-blog`, `sess-42`)."""

    name: str

    def __post_init__(self) -> None:
        if not STACK_NAME.match(self.name):
            raise ValidationError(f"invalid stack name {self.name!r}", fields={"stack": "invalid"})

    def __str__(self) -> str:
        return self.name


class Secret:
    """A value that must never be shown: config marked secret, or a secret stack output."""

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    def reveal(self) -> Any:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("secret", repr(self._value)))


ConfigInput = str | Secret


@dataclass(frozen=True)
class Diagnostic:
    """One engine diagnostic (severity is "error", "warning", "info" or "info#err")."""

    severity: str
    message: str
    urn: str | None = None
    ephemeral: bool = False


@dataclass(frozen=True)
class Progress:
    """What the progress callback receives. `event` says what happened; counts are for the whole operation.

    event: "resource-started" | "resource-done" | "resource-failed" | "diagnostic" | "summary" | "recovery"
    """

    stack: str
    kind: OperationKind
    event: str
    done: int
    total: int
    urn: str | None = None
    resource_type: str | None = None
    operation: str | None = None
    diagnostic: Diagnostic | None = None
    changes: Mapping[str, int] | None = None
    message: str | None = None


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class LockHolder:
    """One lock on a stack, as the DIY backend reports it (`created by user@host (pid N) at T`)."""

    location: str
    user: str
    host: str
    pid: int
    created: datetime | None


@dataclass(frozen=True)
class LockVerdict:
    holder: LockHolder
    stale: bool
    reason: str


@dataclass
class Recovery:
    """What recovery did to a stack before the operation went ahead."""

    stale_locks: list[LockVerdict] = field(default_factory=list)
    pending: list[tuple[str, str]] = field(default_factory=list)  # (operation type, urn)
    imported: list[str] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    reaped: list[int] = field(default_factory=list)  # pids of orphaned provider plugins killed

    @property
    def acted(self) -> bool:
        return bool(self.stale_locks or self.pending)


@dataclass(frozen=True)
class EngineResult:
    """The final summary of one operation. Secret outputs are `Secret` instances."""

    stack: str
    kind: OperationKind
    result: str  # "succeeded" (failures raise)
    changes: Mapping[str, int]
    outputs: Mapping[str, Any]
    duration: float
    diagnostics: tuple[Diagnostic, ...] = ()
    log: tuple[str, ...] = ()
    recovery: Recovery | None = None

    def public_outputs(self) -> dict[str, Any]:
        """Outputs safe to show or store in clear: secrets replaced by a placeholder."""
        return {k: REDACTED if isinstance(v, Secret) else v for k, v in self.outputs.items()}

    @property
    def changed(self) -> int:
        return sum(n for op, n in self.changes.items() if op != "same")


# --- progress from engine events ----------------------------------------------------------


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|<\{%[^%]*%\}>")


def strip_ansi(text: str) -> str:
    """Remove terminal colour codes and Pulumi's colour tags from a message."""
    return _ANSI.sub("", text)


class ProgressTracker:
    """Turns the engine's event stream into `Progress` records and the final counts.

    `total` is the number of resources the engine has announced so far (it only learns them as the
    program registers them), never less than `expected_total` when the caller knows better.
    """

    def __init__(
        self,
        stack: str,
        kind: OperationKind,
        callback: ProgressCallback | None = None,
        expected_total: int | None = None,
    ) -> None:
        self.stack = stack
        self.kind = kind
        self.callback = callback
        self.expected_total = expected_total or 0
        self.started: dict[str, str] = {}  # urn -> op
        self.finished: set[str] = set()
        self.failed: set[str] = set()
        self.diagnostics: list[Diagnostic] = []
        self.changes: dict[str, int] | None = None
        self.cancelled = False
        self._lock = threading.Lock()

    @property
    def done(self) -> int:
        return len(self.finished)

    @property
    def total(self) -> int:
        return max(len(self.started), self.expected_total, len(self.finished))

    def _emit(self, event: str, **fields: Any) -> None:
        if self.callback is None:
            return
        progress = Progress(self.stack, self.kind, event, self.done, self.total, **fields)
        try:
            self.callback(progress)
        except Exception:  # a broken callback must not break the operation
            log.exception("progress callback failed for %s", self.stack)

    def handle_event(self, event: auto.EngineEvent) -> None:
        """Consume one engine event (called from the Automation API's event thread)."""
        with self._lock:
            self._handle(event)

    def _handle(self, event: auto.EngineEvent) -> None:
        if event.resource_pre_event is not None:
            meta = event.resource_pre_event.metadata
            if meta.type == ROOT_TYPE:
                return
            self.started.setdefault(meta.urn, _op(meta.op))
            self._emit("resource-started", urn=meta.urn, resource_type=meta.type, operation=_op(meta.op))
        elif event.res_outputs_event is not None:
            meta = event.res_outputs_event.metadata
            if meta.type == ROOT_TYPE:
                return
            self.started.setdefault(meta.urn, _op(meta.op))
            self.finished.add(meta.urn)
            self._emit("resource-done", urn=meta.urn, resource_type=meta.type, operation=_op(meta.op))
        elif event.res_op_failed_event is not None:
            meta = event.res_op_failed_event.metadata
            self.started.setdefault(meta.urn, _op(meta.op))
            self.failed.add(meta.urn)
            self.finished.add(meta.urn)
            self._emit("resource-failed", urn=meta.urn, resource_type=meta.type, operation=_op(meta.op))
        elif event.diagnostic_event is not None:
            diag = event.diagnostic_event
            if diag.severity == "debug":
                return
            message = strip_ansi(diag.message or "").strip()
            if not message:
                return
            item = Diagnostic(diag.severity, message, diag.urn or None, bool(diag.ephemeral))
            if not item.ephemeral:
                self.diagnostics.append(item)
            self._emit("diagnostic", urn=item.urn, diagnostic=item)
        elif event.summary_event is not None:
            self.changes = {_op(op): int(n) for op, n in (event.summary_event.resource_changes or {}).items()}
            self._emit("summary", changes=dict(self.changes))
        elif event.cancel_event is not None:
            self.cancelled = True

    def notify(self, event: str, message: str) -> None:
        """Emit an engine-level note (e.g. recovery steps) through the same callback."""
        self._emit(event, message=message)

    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]


def _op(op: Any) -> str:
    return str(getattr(op, "value", op))


# --- secrets and error messages -------------------------------------------------------------


class Scrubber:
    """Replaces known secret strings (passphrase, secret config values) in text that leaves the engine."""

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        needles: set[str] = set()
        for secret in secrets:
            if not secret or len(secret) < 4:
                continue
            needles.add(secret)
            needles.update(line.strip() for line in secret.splitlines() if len(line.strip()) >= 12)
        self._needles = sorted(needles, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, REDACTED)
        return text


_ERROR_LINE = re.compile(r"^\s*error:\s*(.+)$", re.IGNORECASE)


def error_summary(stderr: str, diagnostics: Sequence[Diagnostic], scrub: Callable[[str], str]) -> str:
    """A readable, secret-free message for a failed operation: error diagnostics first, else CLI errors."""
    parts: list[str] = []
    for diag in diagnostics:
        if diag.severity != "error":
            continue
        text = diag.message.strip()
        name = diag.urn.rsplit("::", 1)[-1] if diag.urn else ""
        text = f"{name}: {text}" if name else text
        if text not in parts:
            parts.append(text)
    if not parts:
        for line in stderr.splitlines():
            match = _ERROR_LINE.match(strip_ansi(line))
            if match and match.group(1).strip() not in parts:
                parts.append(match.group(1).strip())
    if not parts:
        tail = [strip_ansi(line).strip() for line in stderr.splitlines() if line.strip()]
        parts = tail[-3:] or ["unknown error"]
    message = scrub("; ".join(parts))
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


def _command_stderr(exc: BaseException) -> str:
    """The CLI's stderr inside an Automation API CommandError (its str() holds code/stdout/stderr)."""
    text = str(exc)
    marker = "\n stderr: "
    return text.split(marker, 1)[1] if marker in text else text


# --- locks: who holds them, and whether they are stale ---------------------------------------


LOCK_LINE = re.compile(
    r"^\s*(?P<location>\S.*?): created by (?P<user>[^\s@]*)@(?P<host>\S+) \(pid (?P<pid>\d+)\) at (?P<at>\S+)\s*$",
    re.MULTILINE,
)


def parse_lock_holders(text: str) -> list[LockHolder]:
    """Lock holders listed in a DIY backend's "the stack is currently locked by N lock(s)" error."""
    holders = []
    for match in LOCK_LINE.finditer(strip_ansi(text)):
        created: datetime | None
        try:
            created = datetime.fromisoformat(match.group("at"))
        except ValueError:
            created = None
        if created is not None and created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        user, host, pid = match.group("user"), match.group("host"), int(match.group("pid"))
        holders.append(LockHolder(match.group("location"), user, host, pid, created))
    return holders


@dataclass(frozen=True)
class ProcessInfo:
    """A running process: its command name and start time (seconds since the epoch)."""

    name: str
    started: float


def _boot_time() -> float:
    with open("/proc/stat") as handle:
        for line in handle:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def probe_process(pid: int) -> ProcessInfo | None:
    """Name and start time of a local process, or None when no such process exists (Linux /proc)."""
    proc = Path("/proc") / str(pid)
    try:
        stat = (proc / "stat").read_text()
        name = (proc / "comm").read_text().strip()
    except FileNotFoundError:
        return None
    except OSError:
        # No /proc (or no access): fall back to "exists, start unknown".
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ProcessInfo("", 0.0)
    # After the ")" that closes the command name: field 3 (state) and field 22 (start, clock ticks since boot).
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # killed, not yet reaped: as good as gone
        return None
    ticks = int(fields[19])
    return ProcessInfo(name, _boot_time() + ticks / os.sysconf("SC_CLK_TCK"))


def judge_lock(
    holder: LockHolder,
    *,
    hostname: str | None = None,
    probe: Callable[[int], ProcessInfo | None] | None = None,
    now: datetime | None = None,
    foreign_max_age: float | None = None,
) -> LockVerdict:
    """Decide whether a lock's owner is gone (stale) or may still be running (live).

    Same host: stale when the pid is gone, or now belongs to a process that is not `pulumi`, or to one
    started after the lock was written (pid reuse). Another host: live, unless `foreign_max_age`
    seconds have passed since the lock was written (we cannot see other machines' processes).
    """
    local = hostname or socket.gethostname()
    if holder.host != local:
        if foreign_max_age is not None and holder.created is not None:
            age = ((now or datetime.now(UTC)) - holder.created).total_seconds()
            if age > foreign_max_age:
                reason = f"held by {holder.host}, {age:.0f}s old (limit {foreign_max_age:.0f}s)"
                return LockVerdict(holder, True, reason)
        return LockVerdict(holder, False, f"held by pid {holder.pid} on another host ({holder.host})")
    info = (probe or probe_process)(holder.pid)
    if info is None:
        return LockVerdict(holder, True, f"pid {holder.pid} on this host is gone")
    if info.name and not info.name.startswith("pulumi"):
        return LockVerdict(holder, True, f"pid {holder.pid} is now {info.name!r}, not the pulumi CLI")
    if holder.created is not None and info.started > holder.created.timestamp() + LOCK_CLOCK_SLACK:
        return LockVerdict(holder, True, f"pid {holder.pid} started after the lock was taken (pid reused)")
    return LockVerdict(holder, False, f"pid {holder.pid} ({info.name or 'unknown'}) is still running")


# --- orphaned provider plugins ----------------------------------------------------------------

_ENGINE_ADDRESS = re.compile(r"^(127\.0\.0\.1|localhost|\[::1\]):(\d+)$")


def plugin_engine_address(cmdline: Sequence[str]) -> tuple[str, int] | None:
    """The engine address a provider plugin was started with (`pulumi-resource-x [flags] 127.0.0.1:PORT`)."""
    for arg in cmdline[1:]:
        match = _ENGINE_ADDRESS.match(arg)
        if match:
            host = match.group(1).strip("[]")
            return ("127.0.0.1" if host == "localhost" else host), int(match.group(2))
    return None


def _engine_alive(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1.0):
            return True
    except ConnectionRefusedError:
        return False
    except OSError:
        return True  # unsure (timeout, unreachable): never kill on doubt


def reap_orphan_plugins() -> list[int]:
    """SIGKILL provider plugins whose pulumi engine is gone; returns their pids.

    pulumi starts plugins in their own process groups, so killing a worker's process group (what RQ
    does) leaves them running — still mid-operation (e.g. a Helm install) — until their 5-minute health
    check notices. A plugin is an orphan when nothing listens any more on the engine address it was
    given; only then is it killed, and only plugins of our own user.
    """
    killed = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if not (entry / "comm").read_text().startswith("pulumi-resource"):
                continue
            if entry.stat().st_uid != os.getuid():
                continue
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        address = plugin_engine_address(cmdline)
        if address is None or _engine_alive(address):
            continue
        with contextlib.suppress(OSError):
            os.kill(int(entry.name), signal.SIGKILL)
            killed.append(int(entry.name))
    return killed


# --- pending operations ---------------------------------------------------------------------


def pending_create_id(resource: Mapping[str, Any]) -> str | None:
    """The provider ID an interrupted create would have had, when it can be known from its inputs.

    Kubernetes objects: `namespace/name` (or `name` when cluster-scoped); Helm releases the same
    from the release's own name/namespace. Other providers assign IDs server-side: None.
    """
    rtype = str(resource.get("type", ""))
    inputs = resource.get("inputs") or {}
    if not rtype.startswith("kubernetes:") or rtype.startswith("pulumi:providers:"):
        return None
    if rtype == HELM_RELEASE_TYPE:
        name, namespace = inputs.get("name"), inputs.get("namespace")
    elif rtype.startswith("kubernetes:helm.sh/") or rtype.startswith("kubernetes:yaml"):
        return None  # component resources: nothing to import
    else:
        metadata = inputs.get("metadata") or {}
        name, namespace = metadata.get("name"), metadata.get("namespace")
    if not isinstance(name, str) or not name:
        return None
    return f"{namespace}/{name}" if isinstance(namespace, str) and namespace else name


def pending_operations(deployment: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The pending operations recorded in an exported deployment."""
    return list((deployment or {}).get("pending_operations") or [])


def state_urns(deployment: Mapping[str, Any] | None) -> set[str]:
    return {str(r.get("urn")) for r in (deployment or {}).get("resources") or []}


# --- workspace and environment ----------------------------------------------------------------


_COMMANDS: dict[str, auto.PulumiCommand] = {}
_COMMANDS_LOCK = threading.Lock()
_INLINE_LOCK = threading.Lock()  # the Python SDK runs one inline program per process at a time


def _pulumi_command() -> auto.PulumiCommand:
    """Our pinned CLI (checked once per process against the SDK's minimum version)."""
    root = str(toolchain.bin_dir().parent)
    with _COMMANDS_LOCK:
        if root not in _COMMANDS:
            toolchain.tool_path("pulumi")
            _COMMANDS[root] = auto.PulumiCommand(root=root)
        return _COMMANDS[root]


def _backend_url(settings: Settings) -> str:
    url = settings.pulumi_backend_url
    if url.startswith("file://"):
        Path(urlsplit(url).path or url.removeprefix("file://")).mkdir(parents=True, exist_ok=True, mode=0o700)
    return url


def engine_env(settings: Settings) -> dict[str, str]:
    """Environment of every CLI run: the toolchain's (bin dir on PATH, private PULUMI_HOME, no
    downloads) plus our backend and passphrase."""
    env = toolchain.engine_env()
    for name in ("PULUMI_CONFIG_PASSPHRASE_FILE", "PULUMI_ACCESS_TOKEN"):
        env.pop(name, None)
    env["PULUMI_CONFIG_PASSPHRASE"] = settings.pulumi_passphrase
    env["PULUMI_BACKEND_URL"] = _backend_url(settings)
    env.setdefault("PULUMI_SKIP_UPDATE_CHECK", "true")
    return env


def _workspaces_root(settings: Settings, stack: str) -> Path:
    return settings.home / "workspaces" / stack


@contextlib.contextmanager
def _workspace_dir(settings: Settings, stack: str) -> Iterator[Path]:
    """A fresh directory for one operation, removed afterwards (even when the operation fails)."""
    path = _workspaces_root(settings, stack) / uuid.uuid4().hex
    path.mkdir(parents=True, mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # only when no other operation's dir is left


class _Run:
    """One operation's context: workspace, stack, output capture, tracker, scrubber."""

    def __init__(
        self,
        ref: StackRef,
        kind: OperationKind,
        settings: Settings,
        program: ProgramFn | None,
        config: Mapping[str, ConfigInput] | None,
        progress_callback: ProgressCallback | None,
        expected_total: int | None,
    ) -> None:
        self.ref = ref
        self.kind = kind
        self.settings = settings
        self.program = program
        self.config = dict(config or {})
        secrets = [settings.pulumi_passphrase]
        secrets += [str(v.reveal()) for v in self.config.values() if isinstance(v, Secret)]
        self.scrub = Scrubber(secrets)
        self.tracker = ProgressTracker(ref.name, kind, progress_callback, expected_total)
        self.lines: list[str] = []
        self.env = engine_env(settings)

    def capture(self, line: str) -> None:
        self.lines.append(self.scrub(strip_ansi(line)))

    def workspace(self, work_dir: Path) -> auto.LocalWorkspace:
        return auto.LocalWorkspace(
            work_dir=str(work_dir),
            pulumi_home=self.env["PULUMI_HOME"],
            program=self.program,
            env_vars=self.env,
            secrets_provider="passphrase",
            project_settings=auto.ProjectSettings(
                name=PROJECT,
                runtime="python",
                backend=auto.ProjectBackend(url=self.env["PULUMI_BACKEND_URL"]),
            ),
            pulumi_command=_pulumi_command(),
        )

    def stack(self, workspace: auto.LocalWorkspace, create: bool) -> auto.Stack:
        for attempt in range(2):
            try:
                if create:
                    stack = auto.Stack.create_or_select(self.ref.name, workspace)
                else:
                    stack = auto.Stack.select(self.ref.name, workspace)
                break
            except auto.StackNotFoundError as exc:
                raise NotFound(f"stack {self.ref.name} does not exist") from exc
            except auto.CommandError as exc:
                repaired = attempt == 0 and repair_file_backend(self.env["PULUMI_BACKEND_URL"], self.ref.name)
                if not repaired:
                    raise self.failure(exc, "selecting the stack") from exc
                self.tracker.notify("recovery", f"removed damaged blob metadata: {', '.join(repaired)}")
        if self.config:
            values = {
                key: auto.ConfigValue(str(v.reveal()), secret=True)
                if isinstance(v, Secret)
                else auto.ConfigValue(str(v))
                for key, v in self.config.items()
            }
            try:
                stack.set_all_config(values)
            except auto.CommandError as exc:
                raise self.failure(exc, "setting config") from exc
        return stack

    def streams(self) -> dict[str, Any]:
        return {"on_output": self.capture, "on_error": self.capture, "color": "never"}

    def failure(self, exc: BaseException, doing: str | None = None) -> InfrastructureError:
        what = doing or f"pulumi {self.kind}"
        message = error_summary(_command_stderr(exc), self.tracker.diagnostics, self.scrub)
        error = InfrastructureError(f"{what} of stack {self.ref.name} failed: {message}")
        error.log = tuple(self.lines)  # type: ignore[attr-defined]
        return error

    def conflict(self, verdicts: Sequence[LockVerdict]) -> ConflictError:
        if verdicts:
            who = "; ".join(f"{v.holder.user}@{v.holder.host} pid {v.holder.pid}: {v.reason}" for v in verdicts)
        else:
            who = "holder unknown"
        error = ConflictError(f"stack {self.ref.name} is locked by another operation ({who})", code="stack_locked")
        error.log = tuple(self.lines)  # type: ignore[attr-defined]
        return error


# --- recovery ---------------------------------------------------------------------------------


def _recover_stack(stack: auto.Stack, run: _Run, verdicts: Sequence[LockVerdict], report: Recovery) -> None:
    """Pulumi's documented recovery after a killed CLI: drop the stale lock (`pulumi cancel`), then resolve
    pending operations — interrupted creates are imported when they exist and rolled back (destroyed),
    so the retried operation recreates them cleanly; other pending operations are cleared by refresh."""
    if verdicts:
        report.stale_locks.extend(verdicts)
        run.tracker.notify("recovery", "removing stale lock: " + "; ".join(v.reason for v in verdicts))
        reaped = reap_orphan_plugins()  # they could still be changing resources under the dead CLI
        if reaped:
            report.reaped.extend(reaped)
            run.tracker.notify("recovery", f"killed {len(reaped)} orphaned provider plugin(s): {reaped}")
        try:
            stack.cancel()  # DIY backends: deletes every lock file of the stack
        except auto.CommandError as exc:
            raise run.failure(exc, "cancel") from exc
        _clean_stale_workspaces(run, verdicts, stack.workspace.work_dir)
    _resolve_pending(stack, run, report)


def _clean_stale_workspaces(run: _Run, verdicts: Sequence[LockVerdict], current: str) -> None:
    """Remove workspace dirs that killed operations left behind (last written before the stale lock)."""
    times = [v.holder.created.timestamp() for v in verdicts if v.holder.created is not None]
    if not times:
        return
    newest = max(times)
    root = _workspaces_root(run.settings, run.ref.name)
    for entry in root.glob("*"):
        with contextlib.suppress(OSError):
            if entry.is_dir() and str(entry) != current and entry.stat().st_mtime < newest:
                shutil.rmtree(entry, ignore_errors=True)


def _export(stack: auto.Stack, run: _Run) -> Mapping[str, Any]:
    try:
        return stack.export_stack().deployment or {}
    except auto.CommandError as exc:
        raise run.failure(exc, "exporting state") from exc


def adopt_pending_creates(deployment: Mapping[str, Any], ids: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """A copy of `deployment` where each pending create named in `ids` (urn -> provider ID) becomes a
    resource with that ID (outputs = its inputs until refresh reads the real object). Returns the copy and
    the adopted URNs. This is what `refresh --import-pending-creates` should do; Pulumi 3.259 drops them."""
    resources = [dict(r) for r in deployment.get("resources") or []]
    kept, adopted = [], []
    for op in pending_operations(deployment):
        resource = dict(op.get("resource") or {})
        urn = str(resource.get("urn"))
        if op.get("type") == "creating" and urn in ids:
            resource["id"] = ids[urn]
            resource.setdefault("outputs", dict(resource.get("inputs") or {}))
            resources.append(resource)  # nothing in the state can depend on a never-finished create
            adopted.append(urn)
        else:
            kept.append(op)
    cleaned = dict(deployment)
    cleaned["resources"] = resources
    cleaned["pending_operations"] = kept
    return cleaned, adopted


def _import(stack: auto.Stack, run: _Run, deployment: Mapping[str, Any], doing: str) -> None:
    try:
        stack.import_stack(auto.Deployment(version=3, deployment=dict(deployment)))
    except auto.CommandError as exc:
        raise run.failure(exc, doing) from exc


def _resolve_pending(stack: auto.Stack, run: _Run, report: Recovery) -> None:
    deployment = _export(stack, run)
    pending = pending_operations(deployment)
    if not pending:
        return
    report.pending.extend((str(op.get("type")), str((op.get("resource") or {}).get("urn"))) for op in pending)
    run.tracker.notify("recovery", f"{len(pending)} pending operation(s) from an interrupted run")
    ids: dict[str, str] = {}
    for op in pending:
        resource = op.get("resource") or {}
        if op.get("type") != "creating":
            continue
        resource_id = pending_create_id(resource)
        if resource_id is None:
            report.cleared.append(str(resource.get("urn")))
        else:
            ids[str(resource.get("urn"))] = resource_id
    if ids:
        adopted_state, adopted = adopt_pending_creates(deployment, ids)
        _import(stack, run, adopted_state, "adopting interrupted creates")
    else:
        adopted = []
    # Refresh reads every resource back: adopted creates whose object never came into being drop out of
    # the state, pending updates/deletes are resolved, remaining (unknowable) creates are cleared.
    try:
        stack.refresh(clear_pending_creates=True, show_secrets=False, **run.streams())
    except auto.CommandError as exc:
        raise run.failure(exc, "refresh (clearing pending operations)") from exc

    deployment = _export(stack, run)
    present = state_urns(deployment)
    imported = [urn for urn in adopted if urn in present]
    report.imported.extend(imported)
    report.cleared.extend(urn for urn in adopted if urn not in present)
    if imported:
        # An interrupted create is rolled back, not trusted: e.g. a Helm release killed mid-install
        # stays "pending-install" forever and blocks every later upgrade.
        run.tracker.notify("recovery", f"rolling back {len(imported)} interrupted create(s)")
        try:
            stack.destroy(target=imported, target_dependents=True, show_secrets=False, **run.streams())
        except auto.CommandError as exc:
            raise run.failure(exc, "rolling back interrupted creates") from exc
        report.rolled_back.extend(imported)
        deployment = _export(stack, run)
    leftover = pending_operations(deployment)
    if leftover:
        # Last resort, also documented by Pulumi: export the state, drop the pending operations, import it.
        report.dropped.extend(str((op.get("resource") or {}).get("urn")) for op in leftover)
        cleaned = dict(deployment)
        cleaned["pending_operations"] = []
        _import(stack, run, cleaned, "importing state without pending operations")


def repair_file_backend(backend_url: str, stack: str) -> list[str]:
    """Remove damaged `.attrs` sidecars of a stack's checkpoint and lock files in a `file://` backend.

    The file backend (gocloud fileblob) writes each blob atomically (temp file + rename) but its `.attrs`
    metadata sidecar in place, so a SIGKILL can leave it empty: the CLI then fails with "failed to load
    checkpoint: EOF". A missing sidecar is fine (default attributes), so removing an empty or unreadable one
    repairs the stack without touching state. Returns the names removed.
    """
    if not backend_url.startswith("file://"):
        return []
    root = Path(urlsplit(backend_url).path) / ".pulumi"
    candidates = [*(root / "stacks" / PROJECT).glob(f"{stack}.json*.attrs")]
    candidates += (root / "locks" / "organization" / PROJECT / stack).glob("*.attrs")
    removed = []
    for path in candidates:
        try:
            json.loads(path.read_text() or "!")
        except (OSError, ValueError):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path.name)
    return removed


# --- running operations -------------------------------------------------------------------


_PENDING_WARNING = "pending operations from previous deployment"


def _as_ref(stack: StackRef | str) -> StackRef:
    return stack if isinstance(stack, StackRef) else StackRef(stack)


def _outputs(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: Secret(v.value) if v.secret else v.value for k, v in raw.items()}


def _execute(
    run: _Run,
    operate: Callable[[auto.Stack], Any],
    *,
    create: bool = True,
    recover: bool = True,
    locks: bool = True,
    foreign_lock_max_age: float | None = None,
) -> tuple[Any, Recovery | None, float]:
    """Run `operate` on a fresh workspace, mapping errors and recovering once from a stale lock."""
    started = time.monotonic()
    report: Recovery | None = None
    inline = run.program is not None
    if inline and not _INLINE_LOCK.acquire(blocking=False):
        raise ConflictError("another inline Pulumi program is running in this process", code="engine_busy")
    try:
        with _workspace_dir(run.settings, run.ref.name) as work_dir:
            stack = run.stack(run.workspace(work_dir), create)
            for attempt in range(2):
                try:
                    outcome = operate(stack)
                except auto.ConcurrentUpdateError as exc:
                    verdicts = [
                        judge_lock(h, foreign_max_age=foreign_lock_max_age)
                        for h in parse_lock_holders(_command_stderr(exc))
                    ]
                    stale = bool(verdicts) and all(v.stale for v in verdicts)
                    if not (locks and recover and stale and attempt == 0):
                        raise run.conflict(verdicts) from exc
                    report = report or Recovery()
                    _recover_stack(stack, run, verdicts, report)
                    continue
                except auto.CommandError as exc:
                    if recover and attempt == 0 and repair_file_backend(run.env["PULUMI_BACKEND_URL"], run.ref.name):
                        continue  # a killed run left a damaged lock/checkpoint sidecar; removed, so retry
                    interrupted = any(_PENDING_WARNING in line for line in run.lines)
                    if not (locks and recover and interrupted and attempt == 0):
                        raise run.failure(exc) from exc
                    report = report or Recovery()
                    _recover_stack(stack, run, [], report)
                    continue
                if locks and recover and any(_PENDING_WARNING in line for line in run.lines):
                    report = report or Recovery()  # succeeded despite pending ops: clear them now
                    _recover_stack(stack, run, [], report)
                return outcome, report, time.monotonic() - started
            raise AssertionError("unreachable")  # pragma: no cover
    finally:
        if inline:
            _INLINE_LOCK.release()


def _result(
    run: _Run,
    outputs: Mapping[str, Any],
    fallback: Mapping[str, Any] | None,
    report: Recovery | None,
    duration: float,
) -> EngineResult:
    changes = run.tracker.changes
    if changes is None:
        changes = {_op(k): int(v) for k, v in (fallback or {}).items()}
    return EngineResult(
        stack=run.ref.name,
        kind=run.kind,
        result="succeeded",
        changes=changes,
        outputs=outputs,
        duration=duration,
        diagnostics=tuple(run.tracker.diagnostics),
        log=tuple(run.lines),
        recovery=report,
    )


def up(
    stack: StackRef | str,
    program: ProgramFn,
    settings: Settings,
    *,
    config: Mapping[str, ConfigInput] | None = None,
    progress_callback: ProgressCallback | None = None,
    expected_total: int | None = None,
    refresh: bool = False,
    recover: bool = True,
    foreign_lock_max_age: float | None = None,
) -> EngineResult:
    """Create or update the stack so it matches `program` (a closure over a typed spec)."""
    run = _Run(_as_ref(stack), "update", settings, program, config, progress_callback, expected_total)

    def operate(s: auto.Stack) -> auto.UpResult:
        return s.up(on_event=run.tracker.handle_event, show_secrets=False, refresh=refresh or None, **run.streams())

    res, report, duration = _execute(run, operate, recover=recover, foreign_lock_max_age=foreign_lock_max_age)
    return _result(run, _outputs(res.outputs), res.summary.resource_changes, report, duration)


def preview(
    stack: StackRef | str,
    program: ProgramFn,
    settings: Settings,
    *,
    config: Mapping[str, ConfigInput] | None = None,
    progress_callback: ProgressCallback | None = None,
    expected_total: int | None = None,
) -> EngineResult:
    """What `up` would change, without changing anything (takes no lock on DIY backends)."""
    run = _Run(_as_ref(stack), "preview", settings, program, config, progress_callback, expected_total)

    def operate(s: auto.Stack) -> auto.PreviewResult:
        return s.preview(on_event=run.tracker.handle_event, **run.streams())

    res, report, duration = _execute(run, operate, locks=False)
    return _result(run, {}, res.change_summary, report, duration)


def refresh(
    stack: StackRef | str,
    settings: Settings,
    *,
    config: Mapping[str, ConfigInput] | None = None,
    progress_callback: ProgressCallback | None = None,
    clear_pending_creates: bool = False,
    recover: bool = True,
) -> EngineResult:
    """Read every resource back from its provider and adopt the differences into the state."""
    run = _Run(_as_ref(stack), "refresh", settings, None, config, progress_callback, None)

    def operate(s: auto.Stack) -> auto.RefreshResult:
        return s.refresh(
            on_event=run.tracker.handle_event,
            show_secrets=False,
            clear_pending_creates=clear_pending_creates or None,
            **run.streams(),
        )

    res, report, duration = _execute(run, operate, create=False, recover=recover)
    return _result(run, {}, res.summary.resource_changes, report, duration)


def destroy(
    stack: StackRef | str,
    settings: Settings,
    *,
    config: Mapping[str, ConfigInput] | None = None,
    progress_callback: ProgressCallback | None = None,
    expected_total: int | None = None,
    remove: bool = False,
    recover: bool = True,
) -> EngineResult:
    """Delete every resource of the stack; with `remove`, also delete the (then empty) stack itself."""
    run = _Run(_as_ref(stack), "destroy", settings, None, config, progress_callback, expected_total)

    def operate(s: auto.Stack) -> auto.DestroyResult:
        result = s.destroy(on_event=run.tracker.handle_event, show_secrets=False, **run.streams())
        if remove:
            s.workspace.remove_stack(s.name)
        return result

    res, report, duration = _execute(run, operate, create=False, recover=recover)
    return _result(run, {}, res.summary.resource_changes, report, duration)


def outputs(stack: StackRef | str, settings: Settings) -> dict[str, Any]:
    """The stack's current outputs; secret ones as `Secret`."""
    run = _Run(_as_ref(stack), "update", settings, None, None, None, None)
    raw, _, _ = _execute(run, lambda s: s.outputs(), create=False, locks=False)
    return _outputs(raw)


def cancel(stack: StackRef | str, settings: Settings) -> None:
    """`pulumi cancel`: drop the stack's lock(s) unconditionally. An operator's tool: prefer `recover`."""
    run = _Run(_as_ref(stack), "update", settings, None, None, None, None)
    _execute(run, lambda s: s.cancel(), create=False, locks=False)


def recover(
    stack: StackRef | str,
    settings: Settings,
    *,
    progress_callback: ProgressCallback | None = None,
    foreign_lock_max_age: float | None = None,
) -> Recovery:
    """Repair a stack: a refresh (which takes the lock, so stale locks are found and removed, live ones
    raise ConflictError), then any pending operations are resolved. Returns what was done."""
    run = _Run(_as_ref(stack), "refresh", settings, None, None, progress_callback, None)
    report = Recovery()

    def operate(s: auto.Stack) -> None:
        s.refresh(on_event=run.tracker.handle_event, show_secrets=False, **run.streams())
        _resolve_pending(s, run, report)

    _, found, _ = _execute(run, operate, create=False, foreign_lock_max_age=foreign_lock_max_age)
    if found is not None:
        report.stale_locks[:0] = found.stale_locks
        for name in ("pending", "imported", "cleared", "rolled_back", "dropped", "reaped"):
            getattr(report, name)[:0] = getattr(found, name)
    return report


def remove(stack: StackRef | str, settings: Settings, *, force: bool = False) -> None:
    """Delete the stack from the backend; without `force` it must hold no resources."""
    run = _Run(_as_ref(stack), "destroy", settings, None, None, None, None)

    def operate(s: auto.Stack) -> None:
        s.workspace.remove_stack(s.name, force=force)

    _execute(run, operate, create=False)

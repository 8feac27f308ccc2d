"""Relay support sessions on the node: one PTY shell per session, its output sent up as `terminal_data`, and the
session's asciicast recording (agent/recording.py) sent as `recording_chunk`. Contract: docs/sessions.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import logging
import os
import pwd
import shutil
import signal
import struct
import subprocess
import termios
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent import protocol
from agent.recording import CHUNK_BYTES, TERM, Recorder

log = logging.getLogger("kaiden.agent.terminal")

READ_BYTES = 16 * 1024  # one read of the PTY, and the most raw bytes in one terminal_data frame
MAX_PENDING_INPUT = 1024 * 1024  # input the shell has not read yet; more is dropped
MAX_DRAIN_BYTES = 4 * 1024 * 1024  # output still read after the shell exited
HANGUP_GRACE = 2.0  # SIGHUP, then SIGKILL to the shell's process group
KILL_WAIT = 10.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME")  # nothing else: API_KEY stays with us
REMEMBERED_ENDED = 1024


class TerminalError(Exception):
    """A terminal command that cannot be carried out; the message is for the engineer."""


class SessionNotFound(TerminalError):
    """No terminal (or no live shell) for that session."""


class FrameSink(Protocol):
    """Where frames go up (the agent's outbox): in order, with backpressure."""

    def put(self, message: protocol._Message) -> None: ...

    @property
    def congested(self) -> bool: ...

    async def wait_relieved(self) -> None: ...


# ---------------------------------------------------------------- which shell


@dataclass(frozen=True)
class ShellCommand:
    argv: tuple[str, ...]
    shell: str  # the shell itself (the recording's SHELL)
    host: bool  # entered the host's namespaces


def in_host_namespaces(proc: Path = Path("/proc")) -> bool:
    """True in a privileged pod sharing the host's PID namespace: PID 1 is the host's init, whose mount namespace
    we may read and which differs from ours. Unreadable (not privileged) or equal (our own PID 1): False."""
    try:
        return os.readlink(proc / "1/ns/mnt") != os.readlink(proc / "self/ns/mnt")
    except OSError:
        return False


def shell_command(
    session_shell: str | None = None,
    login_shell: str | None = None,
    *,
    host_namespaces: Callable[[], bool] = in_host_namespaces,
    which: Callable[[str], str | None] = shutil.which,
    exists: Callable[[str], bool] = os.path.exists,
) -> ShellCommand:
    """`nsenter -t 1 -m -u -i -n -p -- <shell> -l` on the host when we can, else `<shell> -l` here.

    The shell: SESSION_SHELL; on the host bash if it has one, else sh; here $SHELL, else /bin/bash.
    """
    nsenter = which("nsenter") if host_namespaces() else None
    if nsenter:
        shell = session_shell or ("/bin/bash" if exists("/proc/1/root/bin/bash") else "/bin/sh")
        return ShellCommand((nsenter, "-t", "1", "-m", "-u", "-i", "-n", "-p", "--", shell, "-l"), shell, True)
    shell = session_shell or login_shell or "/bin/bash"
    return ShellCommand((shell, "-l"), shell, False)


def shell_environment(session_id: str, command: ShellCommand, base: Mapping[str, str]) -> dict[str, str]:
    """A small environment for the shell: never the agent's own (its API key)."""
    env = {name: base[name] for name in PASSED_ENV if base.get(name)}
    if command.host:  # the host's root shell: our container's PATH and HOME mean nothing there
        env.update(PATH=DEFAULT_PATH, HOME="/root", USER="root", LOGNAME="root")
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", _home())
    env.setdefault("LANG", "C.UTF-8")
    env.update(TERM=TERM, SHELL=command.shell, KAIDEN_SESSION_ID=session_id)
    return env


def _home() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir or "/"
    except KeyError:
        return "/"


# ---------------------------------------------------------------- one shell on a PTY


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_terminal() -> None:  # in the child, after setsid: the PTY becomes its controlling terminal (job control)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyProcess:
    """A shell on a PTY, read and written without blocking through the event loop.

    `on_output(bytes)` gets what it prints; `on_exit()` runs once the shell has ended and was reaped, after the
    last of its output. It is a session leader, so its process group is the shell's pid.
    """

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        master: int,
        on_output: Callable[[bytes], None],
        on_exit: Callable[[], None],
    ) -> None:
        self._process = process
        self.pid = process.pid
        self._master: int | None = master
        self._on_output = on_output
        self._on_exit_callback = on_exit
        self._loop = asyncio.get_running_loop()
        self._input = bytearray()
        self._writing = False
        self._reading = False
        self._pidfd: int | None = None
        self._poll: asyncio.TimerHandle | None = None
        self.exited = asyncio.Event()
        self.returncode: int | None = None
        os.set_blocking(master, False)
        self.resume_reading()
        self._watch_exit()

    @classmethod
    def spawn(
        cls,
        argv: tuple[str, ...] | list[str],
        env: Mapping[str, str],
        cols: int,
        rows: int,
        *,
        on_output: Callable[[bytes], None],
        on_exit: Callable[[], None],
        cwd: str | None = None,
    ) -> PtyProcess:
        """Start it (OSError or SubprocessError when it cannot start)."""
        master, slave = os.openpty()
        try:
            _set_size(master, cols, rows)
            process = subprocess.Popen(
                list(argv),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=dict(env),
                cwd=cwd if cwd and os.path.isdir(cwd) else "/",
                start_new_session=True,
                preexec_fn=_take_terminal,  # only an ioctl, right before exec
                close_fds=True,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        return cls(process, master, on_output, on_exit)

    @property
    def alive(self) -> bool:
        return not self.exited.is_set()

    # ------------------------------------------------------------ output

    def pause_reading(self) -> None:
        if self._reading and self._master is not None:
            self._loop.remove_reader(self._master)
            self._reading = False

    def resume_reading(self) -> None:
        if not self._reading and self._master is not None:
            self._loop.add_reader(self._master, self._read)
            self._reading = True

    def _read(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, READ_BYTES)
        except BlockingIOError:
            return
        except OSError:  # EIO: nobody holds the PTY's other end any more; the exit watch finishes the job
            self.pause_reading()
            return
        if not data:
            self.pause_reading()
            return
        self._on_output(data)

    # ------------------------------------------------------------ input and size

    def write(self, data: bytes) -> None:
        if self._master is None:
            raise SessionNotFound("the shell has exited")
        room = MAX_PENDING_INPUT - len(self._input)
        if len(data) > room:
            log.warning("terminal input dropped: the shell is not reading (%d bytes pending)", len(self._input))
            data = data[: max(0, room)]
        self._input += data
        self._write_pending()

    def _write_pending(self) -> None:
        while self._input and self._master is not None:
            try:
                written = os.write(self._master, self._input)
            except BlockingIOError:
                break
            except OSError:  # the PTY is going away with its shell
                self._input.clear()
                break
            del self._input[:written]
        if self._input and not self._writing and self._master is not None:
            self._loop.add_writer(self._master, self._write_pending)
            self._writing = True
        elif not self._input and self._writing:
            if self._master is not None:
                self._loop.remove_writer(self._master)
            self._writing = False

    def resize(self, cols: int, rows: int) -> None:
        if self._master is not None:
            with contextlib.suppress(OSError):
                _set_size(self._master, cols, rows)  # the kernel sends SIGWINCH to the foreground job

    # ------------------------------------------------------------ ending

    def _watch_exit(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # no pidfd (old kernel): look every 100 ms
            self._poll = self._loop.call_later(0.1, self._poll_exit)
        else:
            self._loop.add_reader(self._pidfd, self._exited)

    def _poll_exit(self) -> None:
        try:  # WNOWAIT: stays a zombie, so its pid (and process group id) cannot be reused before we reap it
            ended = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            ended = True
        if ended:
            self._exited()
        else:
            self._poll = self._loop.call_later(0.1, self._poll_exit)

    def _exited(self) -> None:
        if self.exited.is_set():
            return
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None
        self._drain()
        self.returncode = self._process.wait()  # it has ended: this only reaps it
        self._close_master()
        self.exited.set()
        self._on_exit_callback()

    def _drain(self) -> None:
        """What the shell printed just before it ended, still in the PTY."""
        drained = 0
        while self._master is not None and drained < MAX_DRAIN_BYTES:
            try:
                data = os.read(self._master, READ_BYTES)
            except OSError:  # EAGAIN (nothing more for now) or EIO (nothing more at all)
                return
            if not data:
                return
            drained += len(data)
            self._on_output(data)

    def _close_master(self) -> None:
        if self._master is None:
            return
        self.pause_reading()
        if self._writing:
            self._loop.remove_writer(self._master)
            self._writing = False
        os.close(self._master)  # the PTY hangs up: what is left of the session gets SIGHUP
        self._master = None
        self._input.clear()

    def signal_group(self, sig: int) -> None:
        if not self.exited.is_set():  # not reaped yet, so the group id is still this session's
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    async def terminate(self, grace: float = HANGUP_GRACE) -> None:
        """End the shell and its process group: SIGHUP, SIGKILL after `grace`; returns once it is reaped."""
        if self.exited.is_set():
            return
        self.signal_group(signal.SIGHUP)
        try:
            await asyncio.wait_for(self.exited.wait(), grace)
            return
        except TimeoutError:
            pass
        self.signal_group(signal.SIGKILL)
        try:
            await asyncio.wait_for(self.exited.wait(), KILL_WAIT)
        except TimeoutError:  # unkillable (stuck in the kernel): reap it in a thread, keep the loop going
            log.warning("shell %s did not end after SIGKILL; waiting for it in the background", self.pid)
            await asyncio.to_thread(self._process.wait)
            self._exited()


# ---------------------------------------------------------------- sessions


@dataclass(eq=False)
class _Session:
    session_id: str
    recorder: Recorder
    process: PtyProcess | None = None
    resume: asyncio.Task[None] | None = None


class TerminalManager:
    """The node's terminals, one per support session, and their recordings.

    `open` starts a shell (or, when one is running, only resizes it: a browser reload re-attaches), `write` and
    `resize` act on it, `close` ends the session: shell killed, last chunk (`final`) sent. A shell that exits on
    its own sends `terminal_close` (reason "exited") and the next `open` starts a new one in the same recording.
    Frames go to `sink`; recording chunks every `chunk_seconds` and whenever 64 KiB are pending.
    """

    def __init__(
        self,
        sink: FrameSink,
        *,
        command: Callable[[], ShellCommand] = shell_command,
        chunk_seconds: float = 2.0,
        base_env: Mapping[str, str] | None = None,
        hangup_grace: float = HANGUP_GRACE,
    ) -> None:
        self._sink = sink
        self._command = command
        self._chunk_seconds = chunk_seconds
        self._base_env = base_env
        self._hangup_grace = hangup_grace
        self._sessions: dict[str, _Session] = {}
        self._closing: dict[str, asyncio.Future[None]] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()  # closed by the cloud: no new shell, no new recording
        self._flusher: asyncio.Task[None] | None = None

    def running(self, session_id: str) -> bool:
        """A live shell for that session?"""
        session = self._sessions.get(session_id)
        return session is not None and session.process is not None and session.process.alive

    def recorder(self, session_id: str) -> Recorder | None:
        session = self._sessions.get(session_id)
        return session.recorder if session is not None else None

    # ------------------------------------------------------------ commands

    def open(
        self,
        session_id: str,
        cols: int = 80,
        rows: int = 24,
        record_input: bool = False,
        *,
        recording_seq: int = 0,
        recording_elapsed: float = 0.0,
    ) -> bool:
        """Make sure the session has a live shell of that size; True when one was started (TerminalError else).
        A session new to this agent continues the cloud's recording at `recording_seq` (see TerminalOpenPayload)."""
        if session_id in self._ended:
            raise TerminalError(f"session {session_id} has ended")
        session = self._sessions.get(session_id)
        if session is not None and session.process is not None and session.process.alive:
            self.resize(session_id, cols, rows)
            return False
        command = self._command()
        if session is None:
            recorder = Recorder(
                session_id,
                cols,
                rows,
                record_input=record_input,
                shell_path=command.shell,
                continue_at=recording_seq,
                elapsed=recording_elapsed,
            )
            session = _Session(session_id, recorder)
        env = shell_environment(session_id, command, os.environ if self._base_env is None else self._base_env)
        try:
            process = PtyProcess.spawn(
                command.argv,
                env,
                cols,
                rows,
                on_output=lambda data: self._output(session, data),
                on_exit=lambda: self._exited(session),
                cwd=env.get("HOME"),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc.__class__.__name__
            log.warning("session %s: cannot start the shell %s: %s", session_id, command.argv[0], reason)
            raise TerminalError(f"cannot start the shell {command.argv[0]}: {reason}") from exc
        session.recorder.resize(cols, rows)  # a new shell of another size in the same recording
        session.process = process
        self._sessions[session_id] = session
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_periodically())
        log.info("session %s: shell %s started (pid %s)", session_id, command.shell, process.pid)
        return True

    def write(self, session_id: str, data: bytes) -> None:
        process = self._live(session_id)
        self._sessions[session_id].recorder.input(data)
        process.write(data)

    def resize(self, session_id: str, cols: int, rows: int) -> None:
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFound(f"no terminal for session {session_id}")
        if session.process is not None and session.process.alive:  # else the next open brings its size
            session.recorder.resize(cols, rows)
            session.process.resize(cols, rows)

    async def close(self, session_id: str) -> None:
        """End the session (from the cloud): kill its shell, send the recording's final chunk. Idempotent."""
        if session_id in self._closing:
            await asyncio.shield(self._closing[session_id])
            return
        self._ended[session_id] = None
        while len(self._ended) > REMEMBERED_ENDED:
            self._ended.popitem(last=False)
        session = self._sessions.get(session_id)
        if session is None:
            return
        done = asyncio.get_running_loop().create_future()
        self._closing[session_id] = done
        try:
            await self._stop(session)
            self._send_chunks(session.recorder, final=True)
            log.info("session %s: terminal closed, recording final at chunk %s", session_id, session.recorder.seq - 1)
        finally:
            self._sessions.pop(session_id, None)
            del self._closing[session_id]
            done.set_result(None)

    async def close_all(self, reason: str = "agent_stopped") -> None:
        """The agent is stopping: kill every shell, send what the recordings hold (not final: the session goes on
        in the cloud), tell the cloud with `terminal_close` (`reason`)."""
        if self._closing:
            await asyncio.gather(*(asyncio.shield(f) for f in self._closing.values()), return_exceptions=True)
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        for session_id, session in list(self._sessions.items()):
            was_running = session.process is not None and session.process.alive
            await self._stop(session)
            self._send_chunks(session.recorder)
            if was_running:
                self._sink.put(
                    protocol.TerminalClose(payload=protocol.TerminalClosePayload(session_id=session_id, reason=reason))
                )
        self._sessions.clear()

    def flush(self) -> None:
        """Send every recording's pending lines."""
        for session in list(self._sessions.values()):
            self._send_chunks(session.recorder)

    # ------------------------------------------------------------ internals

    def _live(self, session_id: str) -> PtyProcess:
        session = self._sessions.get(session_id)
        if session is None or session_id in self._ended:
            raise SessionNotFound(f"no terminal for session {session_id}")
        if session.process is None or not session.process.alive:
            raise SessionNotFound(f"the shell of session {session_id} has exited: open the terminal again")
        return session.process

    async def _stop(self, session: _Session) -> None:
        if session.resume is not None:
            session.resume.cancel()
            await asyncio.gather(session.resume, return_exceptions=True)
            session.resume = None
        process = session.process
        if process is not None:
            session.process = None  # its exit is ours: no "exited" message
            await process.terminate(self._hangup_grace)

    def _send_chunks(self, recorder: Recorder, final: bool = False) -> None:
        for chunk in recorder.take_chunks(final):
            self._sink.put(protocol.RecordingChunk(payload=chunk))

    def _output(self, session: _Session, data: bytes) -> None:
        session.recorder.output(data)
        for start in range(0, len(data), READ_BYTES):
            encoded = base64.b64encode(data[start : start + READ_BYTES]).decode("ascii")
            self._sink.put(
                protocol.TerminalData(payload=protocol.TerminalDataPayload(session_id=session.session_id, data=encoded))
            )
        if session.recorder.pending_bytes >= CHUNK_BYTES:
            self._send_chunks(session.recorder)
        process = session.process
        if self._sink.congested and process is not None and process.alive and session.resume is None:
            process.pause_reading()  # the shell blocks on a full PTY until the frames before it went out
            session.resume = asyncio.get_running_loop().create_task(self._resume_when_relieved(session, process))

    async def _resume_when_relieved(self, session: _Session, process: PtyProcess) -> None:
        await self._sink.wait_relieved()
        session.resume = None
        if session.process is process and process.alive:
            process.resume_reading()

    def _exited(self, session: _Session) -> None:
        if session.process is None or session.process.alive:  # ended by `close` (it says so itself), or not ours
            return
        if session.resume is not None:
            session.resume.cancel()
            session.resume = None
        code = session.process.returncode
        session.process = None
        log.info("session %s: the shell exited (%s)", session.session_id, code)
        payload = protocol.TerminalClosePayload(session_id=session.session_id, reason="exited")
        self._sink.put(protocol.TerminalClose(payload=payload))

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._chunk_seconds)
            self.flush()

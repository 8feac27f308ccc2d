"""Cloudflare-transport support sessions on the node: one `cloudflared tunnel run` per session, its token in the
environment only, its log watched for the first registered connection. Contract: docs/sessions.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import re
import shutil
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agent import protocol

log = logging.getLogger("kaiden.agent.tunnel")

READY_MARKER = "Registered tunnel connection"
STOP_GRACE = 5.0  # SIGTERM, then SIGKILL
LINE_LIMIT = 1024 * 1024
REDACTED = "[redacted]"
# Cloudflare tunnel tokens are base64 JSON ("eyJ…"); their secret is 32 random bytes in base64.
_TOKENISH = re.compile(r"eyJ[A-Za-z0-9+/_=-]{8,}|[A-Za-z0-9+/_-]{40,}={0,2}")


class TunnelStartError(Exception):
    """cloudflared could not be started; the message (naming the binary) went up as `tunnel_error` too."""


def _secrets_of(token: str) -> list[str]:
    """The token and, when it decodes as a tunnel token, the secret inside it."""
    found = [token] if token else []
    try:
        decoded = json.loads(base64.b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        return found
    if isinstance(decoded, dict) and isinstance(decoded.get("s"), str) and decoded["s"]:
        found.append(decoded["s"])
    return found


def redact(text: str, token: str) -> str:
    """`text` without the token, its secret, or anything else that looks like one."""
    for secret in _secrets_of(token):
        text = text.replace(secret, REDACTED)
    return _TOKENISH.sub(REDACTED, text)


def resolve_binary(binary: str, path: str | None = None) -> str:
    """The executable to run: CLOUDFLARED_PATH as a path, or a name looked up on PATH (TunnelStartError if none)."""
    if os.sep in binary:
        if os.path.isfile(binary) and os.access(binary, os.X_OK):
            return binary
        raise TunnelStartError(f"cloudflared not found or not executable at {binary} (CLOUDFLARED_PATH)")
    found = shutil.which(binary, path=path)
    if found is None:
        raise TunnelStartError(f"cloudflared binary {binary!r} not found on PATH (set CLOUDFLARED_PATH)")
    return found


@dataclass(eq=False)
class _Tunnel:
    session_id: str
    public_hostname: str
    token: str = field(repr=False)
    process: asyncio.subprocess.Process
    ready: bool = False
    stopping: bool = False
    watcher: asyncio.Task[None] | None = None


class TunnelManager:
    """The node's tunnels, one per session. `start` spawns cloudflared (the caller acks right after), `stop` ends it.

    Frames go out through `send`: `tunnel_ready` at the first "Registered tunnel connection" line, `tunnel_error`
    when it cannot start or exits without being asked (its last log line, redacted).
    """

    def __init__(
        self,
        send: Callable[[protocol._Message], None],
        *,
        binary: str = "cloudflared",
        stop_grace: float = STOP_GRACE,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self._send = send
        self._binary = binary
        self._stop_grace = stop_grace
        self._base_env = base_env
        self._tunnels: dict[str, _Tunnel] = {}

    def running(self, session_id: str) -> bool:
        tunnel = self._tunnels.get(session_id)
        return tunnel is not None and tunnel.process.returncode is None

    async def start(self, payload: protocol.StartTunnelPayload) -> None:
        """Spawn the session's cloudflared; returns once it runs. A running one is kept (tunnel_ready again if
        it was ready). Raises TunnelStartError after sending `tunnel_error` when it cannot start."""
        session_id = payload.session_id
        current = self._tunnels.get(session_id)
        if current is not None and current.process.returncode is None and not current.stopping:
            if current.ready:
                self._ready(current)
            return
        base = os.environ if self._base_env is None else self._base_env
        token = payload.tunnel_token.get_secret_value()
        env = {k: v for k, v in base.items() if k not in ("API_KEY", "TUNNEL_TOKEN")}
        env["TUNNEL_TOKEN"] = token  # never on argv: /proc/<pid>/cmdline is world-readable
        try:
            binary = resolve_binary(self._binary, base.get("PATH"))
            process = await asyncio.create_subprocess_exec(
                binary,
                "tunnel",
                "--no-autoupdate",
                "run",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,  # it logs on stderr; stdout too, to miss nothing
                env=env,
                limit=LINE_LIMIT,
                start_new_session=True,  # its own process group: stop ends whatever it started
            )
        except (TunnelStartError, OSError) as exc:
            if isinstance(exc, OSError):
                message = f"cannot start cloudflared {self._binary}: {exc.strerror or exc.__class__.__name__}"
            else:
                message = str(exc)
            log.warning("session %s: %s", session_id, message)
            self._error(session_id, message)
            raise TunnelStartError(message) from exc
        tunnel = _Tunnel(session_id, payload.public_hostname or f"sess-{session_id}", token, process)
        tunnel.watcher = asyncio.get_running_loop().create_task(self._watch(tunnel))
        self._tunnels[session_id] = tunnel
        log.info("session %s: cloudflared started (pid %s)", session_id, process.pid)

    async def stop(self, session_id: str) -> None:
        """Terminate the session's cloudflared (SIGTERM, SIGKILL after the grace); returns once it is reaped."""
        tunnel = self._tunnels.get(session_id)
        if tunnel is None:
            return
        tunnel.stopping = True
        if tunnel.process.returncode is None:
            self._signal(tunnel, signal.SIGTERM)
            try:
                await asyncio.wait_for(tunnel.process.wait(), self._stop_grace)
            except TimeoutError:
                self._signal(tunnel, signal.SIGKILL)
                await tunnel.process.wait()
        if tunnel.watcher is not None:
            try:  # the log ends with the process group; something else holding the pipe must not hold us
                await asyncio.wait_for(asyncio.shield(tunnel.watcher), self._stop_grace)
            except TimeoutError:
                tunnel.watcher.cancel()
                await asyncio.gather(tunnel.watcher, return_exceptions=True)
        if self._tunnels.get(session_id) is tunnel:
            del self._tunnels[session_id]
        log.info("session %s: cloudflared stopped (%s)", session_id, tunnel.process.returncode)

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(session_id) for session_id in list(self._tunnels)))

    # ------------------------------------------------------------ internals

    def _signal(self, tunnel: _Tunnel, sig: int) -> None:
        if tunnel.process.returncode is None:  # not reaped: its process group id is still its own
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(tunnel.process.pid, sig)

    def _ready(self, tunnel: _Tunnel) -> None:
        payload = protocol.TunnelReadyPayload(session_id=tunnel.session_id, public_hostname=tunnel.public_hostname)
        self._send(protocol.TunnelReady(payload=payload))

    def _error(self, session_id: str, message: str) -> None:
        payload = protocol.TunnelErrorPayload(session_id=session_id, error=message[:1000])
        self._send(protocol.TunnelError(payload=payload))

    async def _watch(self, tunnel: _Tunnel) -> None:
        stream = tunnel.process.stdout
        last = ""
        while stream is not None:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than LINE_LIMIT: skipped
                last = "(an overlong log line)"
                continue
            if not raw:
                break
            line = redact(raw.decode("utf-8", "replace").strip(), tunnel.token)
            if not line:
                continue
            last = line
            log.debug("session %s: cloudflared: %s", tunnel.session_id, line)
            if not tunnel.ready and READY_MARKER in line:
                tunnel.ready = True
                log.info("session %s: tunnel ready (%s)", tunnel.session_id, tunnel.public_hostname)
                self._ready(tunnel)
        code = await tunnel.process.wait()
        if tunnel.stopping:
            return
        when = "after the tunnel was ready" if tunnel.ready else "before the tunnel was ready"
        message = f"cloudflared exited with code {code} {when}: {last or '(no output)'}"
        log.warning("session %s: %s", tunnel.session_id, message)
        self._error(tunnel.session_id, message)
        if self._tunnels.get(tunnel.session_id) is tunnel:
            del self._tunnels[tunnel.session_id]

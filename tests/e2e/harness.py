"""What the browser tests share: `kaiden up` as a subprocess on a fresh data dir, and the artifacts they keep
for CI (numbered screenshots, the processes' logs) in `$KAIDEN_ARTIFACTS_DIR`."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tests.e2e.test_embedded_up import Portal, _free_port, _wait_http

REPO = Path(__file__).resolve().parents[2]


def artifacts_dir() -> Path:
    path = Path(os.environ.get("KAIDEN_ARTIFACTS_DIR") or REPO / "test-artifacts" / "e2e")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _drain(stream, sink) -> None:
    for line in stream:
        sink.write(line)
        sink.flush()


@contextlib.contextmanager
def kaiden_up(home: Path, *, env: dict[str, str] | None = None, log_name: str = "kaiden-up.log") -> Iterator[Portal]:
    """`kaiden up` (local simulated cluster, worker, gateway, portal) on `home`, until the portal answers; stopped
    with SIGTERM (its handler stops the worker, gateway and cluster) at the end, its log kept as `log_name`."""
    port, gateway_port = _free_port(), _free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("KAIDEN_")}
    full.update(KAIDEN_HOME=str(home), KAIDEN_PORT=str(port), KAIDEN_GATEWAY_PORT=str(gateway_port), **(env or {}))
    kaiden_bin = Path(sys.executable).with_name("kaiden")
    home.parent.mkdir(parents=True, exist_ok=True)
    log_path = home.parent / "kaiden-up.log"
    log = open(log_path, "w")  # closed in finally; the processes write to it
    proc = subprocess.Popen([str(kaiden_bin), "up"], env=full, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
    portal = Portal(url="", home=home, gateway_port=gateway_port)
    drain = None
    try:
        deadline = time.monotonic() + 300  # the cluster starts before the portal
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            portal.output.append(line.rstrip())
            match = re.search(r"Kaiden is up: (http://\S+)", line)
            if match:
                portal.url = match.group(1)
                break
        assert portal.url, "kaiden up never printed its URL:\n" + "\n".join(portal.output)
        # Keep draining stdout (the worker logs there too): a full pipe would block it mid-deploy.
        drain = threading.Thread(target=_drain, args=(proc.stdout, log), daemon=True)
        drain.start()
        _wait_http(portal.url + "login")
        yield portal
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        if drain is not None:
            drain.join(timeout=10)
        log.close()
        (artifacts_dir() / log_name).write_text(log_path.read_text(errors="replace")[-200_000:])


class Shots:
    """Numbered screenshots of one test, so the steps read in order in the artifacts folder."""

    def __init__(self, name: str) -> None:
        self.name, self.count = name, 0

    def __call__(self, page, step: str) -> Path:
        self.count += 1
        path = artifacts_dir() / f"{self.name}-{self.count:02d}-{step}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 0
        return path

"""README command 1 for real: `kaiden up` on an empty data dir serves the portal with demo data, and
people can sign in through a real browser (Debian's Chromium driven by Playwright)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@dataclass
class Portal:
    url: str
    home: Path
    gateway_port: int = 0
    output: list[str] = field(default_factory=list)

    def password_of(self, email: str) -> str:
        for line in self.output:
            match = re.search(rf"{re.escape(email)}\s+password: (\S+)", line)
            if match:
                return match.group(1)
        raise AssertionError(f"no password printed for {email}:\n" + "\n".join(self.output))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory, toolchain: Path) -> Iterator[Portal]:
    home = tmp_path_factory.mktemp("embedded") / "kaiden-home"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAIDEN_")}
    gateway_port = _free_port()
    env.update(KAIDEN_HOME=str(home), KAIDEN_PORT=str(port), KAIDEN_GATEWAY_PORT=str(gateway_port))
    kaiden = Path(sys.executable).with_name("kaiden")
    proc = subprocess.Popen(
        [str(kaiden), "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    portal = Portal(url="", home=home, gateway_port=gateway_port)
    try:
        deadline = time.monotonic() + 120
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
        _wait_http(portal.url + "login")
        yield portal
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_http(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback)
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield instance
        instance.close()


def test_first_run_prints_admin_and_demo_users_once(portal: Portal) -> None:
    text = "\n".join(portal.output)
    assert "admin@kaiden.example" in text
    assert "alice@acme.example" in text and "engineer@kaiden.example" in text
    assert (portal.home / "kaiden.db").exists()
    assert oct((portal.home / "secret_key").stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    ("email", "expected"),
    [("admin@kaiden.example", "admin"), ("alice@acme.example", "Acme Corp"), ("engineer@kaiden.example", "engineer")],
)
def test_login_in_a_browser(portal: Portal, browser, email: str, expected: str) -> None:
    from playwright.sync_api import expect

    page = browser.new_page()
    try:
        page.goto(portal.url)
        assert "/login" in page.url  # pages require a session
        page.fill("#email", email)
        page.fill("#password", "wrong-password")
        page.click("button[type=submit]")
        expect(page.locator("[role=alert]")).to_contain_text("Invalid email or password")
        page.fill("#email", email)
        page.fill("#password", portal.password_of(email))
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r".*/$"))
        body = page.inner_text("body")
        assert email in body
        assert expected in body
        page.click("text=Sign out")
        page.wait_for_url(re.compile(r".*/login.*"))
    finally:
        page.close()


def test_api_answers_json_errors(portal: Portal) -> None:
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(portal.url + "api/v1/me", timeout=5)  # noqa: S310 (loopback)
    assert caught.value.code == 401
    assert b'"error"' in caught.value.read()


def test_gateway_and_worker_run_beside_the_portal(portal: Portal) -> None:
    _wait_http(f"http://127.0.0.1:{portal.gateway_port}/healthz")
    import redis
    from rq import Worker

    redis_line = next(line for line in portal.output if line.startswith("redis: "))
    connection = redis.Redis.from_url(redis_line.split(" ", 1)[1])
    deadline = time.monotonic() + 30
    while not Worker.all(connection=connection):
        assert time.monotonic() < deadline, "no RQ worker registered"
        time.sleep(0.5)


def test_local_simulated_cluster_runs_while_up(portal: Portal) -> None:
    """`kaiden up` starts the local cluster services deploy to (kubeconfig handed to the worker)."""
    from kubernetes import client, config

    line = next((line for line in portal.output if line.startswith("cluster: kaiden-local at ")), None)
    assert line, "kaiden up did not report its local cluster:\n" + "\n".join(portal.output)
    kubeconfig = re.search(r"\(kubeconfig (\S+)\)", line).group(1)
    assert Path(kubeconfig).is_relative_to(portal.home)
    nodes = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig)).list_node().items
    assert len(nodes) == 2
    assert all(any(c.type == "Ready" and c.status == "True" for c in n.status.conditions) for n in nodes)
    classes = client.StorageV1Api(config.new_client_from_config(config_file=kubeconfig)).list_storage_class().items
    assert [c.metadata.name for c in classes] == ["kaiden-local"]

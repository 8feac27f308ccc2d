"""Remote Support in a real browser: ticket → Start support session → terminal → echo → End session → replay.

`kaiden up` runs as a subprocess on an empty data dir (portal, worker, gateway, the local simulated
cluster). As the administrator the test registers a customer cluster through the API and runs that
cluster's real controller (`python -m agent.controller`, reading the nodes of `kaiden up`'s kwok
cluster) and one real agent (`python -m agent.agent`, shell `/bin/sh`) against the gateway, waits for
the node to come online and files a ticket assigned to the demo engineer. Then Debian's Chromium,
driven by Playwright, signs in as the engineer and goes through a whole session; the demo customer
sees the live banner meanwhile. A screenshot per step goes to `$KAIDEN_ARTIFACTS_DIR`.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from portal.demo import DEMO_CUSTOMER, DEMO_CUSTOMER_USER, DEMO_ENGINEER
from tests.e2e.harness import REPO, Shots, artifacts_dir, kaiden_up
from tests.e2e.test_embedded_up import BROWSER_ARGS, CHROMIUM, Portal, _free_port, _wait_http

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ADMIN_EMAIL = "admin@kaiden.example"
STEP_TIMEOUT_MS = 20_000
SESSION_TIMEOUT_MS = 90_000  # start (worker → ping the agent) or end (terminal_close, last recording chunk)
ONLINE_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def kaiden(tmp_path_factory: pytest.TempPathFactory, toolchain: Path) -> Iterator[Portal]:
    """`kaiden up` with its local simulated cluster, on a fresh data dir; stopped (cluster too) at the end."""
    home = tmp_path_factory.mktemp("support-ui") / "kaiden-home"
    # the controller below heartbeats every second
    with kaiden_up(home, env={"KAIDEN_HEARTBEAT_INTERVAL": "2"}, log_name="support-kaiden-up.log") as portal:
        _wait_http(f"http://127.0.0.1:{portal.gateway_port}/healthz")
        yield portal


def _admin_password(portal: Portal) -> str:
    for line in portal.output:
        match = re.search(rf"{re.escape(ADMIN_EMAIL)}\s+password: (\S+)", line)
        if match:
            return match.group(1)
    raise AssertionError("no administrator password printed:\n" + "\n".join(portal.output))


class Api:
    """The REST API as one signed-in user: a form sign-in, then a personal bearer token for every call."""

    def __init__(self, base: str, email: str, password: str) -> None:
        self.base = base.rstrip("/")
        jar = http.cookiejar.CookieJar()
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        page = browser.open(self.base + "/login", timeout=10).read().decode()
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
        form = urllib.parse.urlencode({"email": email, "password": password, "csrf_token": csrf}).encode()
        browser.open(self.base + "/login", data=form, timeout=10)
        home = browser.open(self.base + "/", timeout=10).read().decode()
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', home).group(1)
        request = urllib.request.Request(  # noqa: S310 (loopback http)
            self.base + "/api/v1/me/tokens",
            data=json.dumps({"name": f"e2e-{uuid.uuid4().hex[:6]}"}).encode(),
            headers={"Content-Type": "application/json", "X-CSRFToken": csrf},
            method="POST",
        )
        self.token = json.loads(browser.open(request, timeout=10).read())["token"]

    def __call__(self, method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(  # noqa: S310 (loopback http)
            self.base + "/api/v1" + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310 (loopback)
                text = response.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from None
        return json.loads(text) if text else {}


@dataclass
class SupportSetup:
    api: Api
    cluster_id: str
    node_name: str
    node_id: str
    ticket_id: str
    ticket_number: str
    logs: Path


def _kubeconfig_of(portal: Portal) -> str:
    line = next((line for line in portal.output if line.startswith("cluster: kaiden-local at ")), None)
    assert line, "kaiden up did not report its local cluster:\n" + "\n".join(portal.output)
    return re.search(r"\(kubeconfig (\S+)\)", line).group(1)


def _start(module: str, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if not k.startswith("KAIDEN_")}
    full.update(env, LOG_LEVEL="INFO")
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module], env=full, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )


def _stop(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@pytest.fixture(scope="module")
def support(kaiden: Portal) -> Iterator[SupportSetup]:
    """A registered cluster of the demo customer with a live controller and agent, and a ticket for the engineer."""
    from kubernetes import client, config

    api = Api(kaiden.url, ADMIN_EMAIL, _admin_password(kaiden))
    customers = api("GET", "/customers?per_page=100")["items"]
    customer = next(c for c in customers if c["name"] == DEMO_CUSTOMER)
    suffix = uuid.uuid4().hex[:6]
    registered = api("POST", "/clusters", {"name": f"e2e-support-{suffix}", "customer_id": customer["id"]})
    cluster_id, key = registered["id"], registered["api_key"]

    kubeconfig = _kubeconfig_of(kaiden)
    core = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    node_name = sorted(n.metadata.name for n in core.list_node().items)[0]
    controller_port = _free_port()
    logs = artifacts_dir()
    children = [
        _start(
            "agent.controller",
            {
                "CLUSTER_ID": cluster_id,
                "API_KEY": key,
                "CLOUD_ENDPOINT": f"ws://127.0.0.1:{kaiden.gateway_port}",
                "HEARTBEAT_INTERVAL": "1",
                "CONTROLLER_LISTEN": f"127.0.0.1:{controller_port}",
                "KUBECONFIG": kubeconfig,
            },
            logs / "support-controller.log",
        ),
        _start(
            "agent.agent",
            {
                "NODE_NAME": node_name,
                "CONTROLLER_URL": f"ws://127.0.0.1:{controller_port}/agent",
                "API_KEY": key,
                "HOST_ROOT": "/nonexistent-host-root",
                "SESSION_SHELL": "/bin/sh",
                "RECORDING_CHUNK_SECONDS": "1",
            },
            logs / "support-agent.log",
        ),
    ]
    try:
        deadline = time.monotonic() + ONLINE_TIMEOUT_S
        node = None
        while time.monotonic() < deadline:
            cluster = api("GET", f"/clusters/{cluster_id}")
            nodes = api("GET", f"/clusters/{cluster_id}/nodes?per_page=100")
            items = nodes["items"] if isinstance(nodes, dict) else nodes
            node = next((n for n in items if n["name"] == node_name), None)
            if (
                cluster["status"] == "online"
                and node
                and node["status"] == "ready"
                and node["agent_status"] == "online"
            ):
                break
            assert all(child.poll() is None for child in children), "the controller or the agent exited (see logs)"
            time.sleep(0.5)
        else:
            raise AssertionError(f"node {node_name} never came online: cluster {cluster}, node {node}")

        engineers = api("GET", f"/users?role=engineer&search={urllib.parse.quote(DEMO_ENGINEER[0])}")["items"]
        ticket = api(
            "POST",
            "/tickets",
            {
                "title": f"Disk pressure on {node_name} ({suffix})",
                "description": "Created by the support-session browser test.",
                "priority": "high",
                "cluster_id": cluster_id,
                "node_id": node["id"],
                "customer_id": customer["id"],
                "assigned_to": engineers[0]["id"],
            },
        )
        yield SupportSetup(api, cluster_id, node_name, node["id"], ticket["id"], ticket["ticket_number"], logs)
    finally:
        for child in reversed(children):
            _stop(child)


@pytest.fixture()
def browser(kaiden: Portal, request: pytest.FixtureRequest):
    """Chromium; every page opened through `browser.open(name)` logs its console and fails the test on page errors."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        console: list[str] = []
        pages: list = []

        def open_page(who: str):
            context = instance.new_context(base_url=kaiden.url, viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.on("console", lambda message: console.append(f"{who} {message.type}: {message.text}"))
            page.on("pageerror", lambda error: console.append(f"{who} pageerror: {error}"))
            pages.append((who, page))
            return page

        try:
            yield open_page
        finally:
            (artifacts_dir() / f"{request.node.name}.console.log").write_text("\n".join(console))
            for who, page in pages:
                page.screenshot(path=str(artifacts_dir() / f"{request.node.name}-{who}-last.png"), full_page=True)
            instance.close()
        assert not [line for line in console if " pageerror: " in line], console


def _sign_in(page, kaiden: Portal, email: str, password: str) -> None:
    page.goto(kaiden.url + "login")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))


def _screen_text(page, selector: str) -> str:
    """What an xterm.js terminal shows: the text of its rendered rows."""
    return page.locator(f"{selector} .xterm-rows").inner_text()


def test_engineer_runs_a_session_and_replays_it(kaiden: Portal, support: SupportSetup, browser) -> None:
    from playwright.sync_api import expect

    shot = Shots("support-session")
    page = browser("engineer")
    _sign_in(page, kaiden, DEMO_ENGINEER[0], kaiden.password_of(DEMO_ENGINEER[0]))

    # The ticket from the list; its sessions card has the start form with the online node picked.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Tickets").click()
    page.get_by_role("link", name=support.ticket_number).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(support.ticket_number)
    form = page.locator("#start-session-form")
    expect(form).to_be_visible()
    expect(page.get_by_label("Node")).to_have_value(support.node_id)
    expect(form.locator(f'option[value="{support.node_id}"]')).to_contain_text("ready · agent online")
    expect(page.get_by_label("SSH (terminal)")).to_be_checked()
    shot(page, "ticket-start-form")

    # A duration below the minimum comes back from the API as a field error next to the field.
    page.get_by_label("Duration (minutes)").fill("1")
    page.get_by_role("button", name="Start support session").click()
    expect(form.locator('[data-error-for="duration_minutes"]')).to_be_visible()
    expect(page.get_by_label("Duration (minutes)")).to_have_attribute("aria-invalid", "true")
    assert "/tickets/" in page.url
    shot(page, "start-field-error")

    # Start → the session page follows the start, then the terminal attaches.
    page.get_by_label("Duration (minutes)").fill("15")
    page.get_by_role("button", name="Start support session").click()
    page.wait_for_url(re.compile(r".*/sessions/[0-9a-f-]{36}.*"))
    session_id = re.search(r"/sessions/([0-9a-f-]{36})", page.url).group(1)
    expect(page.get_by_role("heading", level=1)).to_contain_text(support.node_name)
    shot(page, "session-starting")
    terminal = page.locator("#terminal")
    expect(terminal).to_have_attribute("data-state", "ready", timeout=SESSION_TIMEOUT_MS)
    expect(page.locator("#session-state")).to_have_text("active")
    expect(page.locator('[data-field="engineer"]')).to_have_text(DEMO_ENGINEER[1])
    shot(page, "terminal-ready")

    # Meanwhile the customer sees the live banner on their ticket, and the session without a terminal.
    customer = browser("customer")
    _sign_in(customer, kaiden, DEMO_CUSTOMER_USER[0], kaiden.password_of(DEMO_CUSTOMER_USER[0]))
    customer.goto(f"/tickets/{support.ticket_id}")
    expect(customer.locator("#live-session-banner")).to_contain_text("Live session in progress")
    shot(customer, "customer-live-banner")
    customer.locator("#live-session-banner").get_by_role("link", name="Session details").click()
    expect(customer.locator("#session-state")).to_have_text("active")
    expect(customer.locator("#terminal")).to_have_count(0)

    # A second start on the same node (another tab of the engineer's) is refused, linking the open session.
    again = browser("engineer-again")
    _sign_in(again, kaiden, DEMO_ENGINEER[0], kaiden.password_of(DEMO_ENGINEER[0]))
    again.goto(f"/tickets/{support.ticket_id}")
    again.get_by_role("button", name="Start support session").click()
    expect(again.locator("#start-session-error")).to_contain_text("open")
    expect(again.locator("#open-session-link")).to_have_attribute("href", f"/sessions/{session_id}")
    shot(again, "second-start-refused")

    # Type into the terminal; the shell's output shows in xterm's rows.
    marker = f"kaiden-{uuid.uuid4().hex[:10]}"
    terminal.click()
    page.keyboard.type(f"echo {marker}", delay=20)
    page.keyboard.press("Enter")
    page.wait_for_function(
        """([marker]) => {
             const rows = document.querySelector("#terminal .xterm-rows");
             return rows && rows.innerText.split(marker).length > 2;
           }""",
        arg=[marker],
        timeout=STEP_TIMEOUT_MS,
    )
    screen = _screen_text(page, "#terminal")
    assert re.search(rf"^{re.escape(marker)}\s*$", screen, re.MULTILINE), screen  # the output line, not just the echo
    shot(page, "terminal-echo")

    # End session, through the confirmation dialog; the page follows the end until "ended".
    page.get_by_role("button", name="End session").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    shot(page, "end-confirm")
    dialog.get_by_role("button", name="End session").click()
    expect(page.locator("#session-state")).to_have_text("ended", timeout=SESSION_TIMEOUT_MS)
    expect(page.locator("#terminal")).to_have_count(0)
    shot(page, "session-ended")

    # The ticket lists the ended session with its replay link; the banner is gone for the customer.
    page.goto(f"/tickets/{support.ticket_id}")
    row = page.locator(f'tr[data-id="{session_id}"]')
    expect(row.locator(".status")).to_have_text("ended")
    replay_link = row.get_by_role("link", name="Replay recording")
    expect(replay_link).to_be_visible(timeout=STEP_TIMEOUT_MS)
    shot(page, "ticket-sessions")
    customer.goto(f"/tickets/{support.ticket_id}")
    expect(customer.locator("#live-session-banner")).to_have_count(0)

    # Replay at 4x speed: the recording shows the echoed text.
    replay_link.click()
    player = page.locator("#replay")
    expect(player).to_have_attribute("data-state", "ready", timeout=STEP_TIMEOUT_MS)
    page.get_by_label("Speed").select_option("4")
    page.get_by_role("button", name="Play").click()
    expect(player).to_have_attribute("data-state", "ended", timeout=SESSION_TIMEOUT_MS)
    replayed = _screen_text(page, "#replay-screen")
    assert marker in replayed, replayed
    shot(page, "replayed")

    answer = support.api("GET", f"/sessions/{session_id}")
    assert answer["state"] == "ended" and answer["recording_url"], answer

"""Cloud Services in a real browser: marketplace → search → configure → launch → running → delete.

`kaiden up` runs as a subprocess on an empty data dir (so with the local simulated cluster, a
worker and the catalog); Debian's Chromium is driven by Playwright as the demo customer user.
A screenshot per step goes to `$KAIDEN_ARTIFACTS_DIR` (default `test-artifacts/e2e/` in the
repo) for CI to keep; every step asserts on what the page shows.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from portal.demo import DEMO_CUSTOMER_USER, DEMO_WORKSPACE
from tests.e2e.harness import Shots, artifacts_dir, kaiden_up
from tests.e2e.test_embedded_up import BROWSER_ARGS, CHROMIUM, Portal

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

APP = "Redis"  # from the catalog: small chart, one required password
DEPLOY_TIMEOUT_MS = 8 * 60 * 1000  # a cold first `pulumi up` (plugins, workspace stack, release) on 2 shared cores
STEP_TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def kaiden(tmp_path_factory: pytest.TempPathFactory, toolchain: Path) -> Iterator[Portal]:
    """`kaiden up` with its local simulated cluster, on a fresh data dir; stopped (cluster too) at the end."""
    with kaiden_up(tmp_path_factory.mktemp("cloud-ui") / "kaiden-home") as portal:
        assert any(line.startswith("cluster: kaiden-local at ") for line in portal.output), portal.output
        yield portal


@pytest.fixture()
def page(kaiden: Portal, request: pytest.FixtureRequest):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        context = browser.new_context(base_url=kaiden.url, viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(STEP_TIMEOUT_MS)
        console: list[str] = []
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
        try:
            yield page
        finally:
            (artifacts_dir() / f"{request.node.name}.console.log").write_text("\n".join(console))
            page.screenshot(path=str(artifacts_dir() / f"{request.node.name}-last.png"), full_page=True)
            browser.close()
        assert not [line for line in console if line.startswith("pageerror")], console


def _sign_in(page, kaiden: Portal) -> None:
    email = DEMO_CUSTOMER_USER[0]
    page.goto(kaiden.url + "login")
    page.fill("#email", email)
    page.fill("#password", kaiden.password_of(email))
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))


def _api_get(page, path: str) -> dict:
    """GET an API path with the browser's session (what the page's scripts see)."""
    answer = page.request.get(path)
    assert answer.ok, (path, answer.status, answer.text())
    return json.loads(answer.text())


def test_marketplace_to_running_service_and_delete(kaiden: Portal, page) -> None:
    from playwright.sync_api import expect

    shot = functools.partial(Shots("cloud-services"), page)
    _sign_in(page, kaiden)
    workspace_name = DEMO_WORKSPACE[0]

    # Workspace dashboard from the navigation: empty, inviting the first deploy.
    page.get_by_role("navigation", name="Main").get_by_role("link", name=workspace_name).click()
    expect(page.get_by_role("heading", name=workspace_name, level=1)).to_be_visible()
    expect(page.get_by_text("Deploy your first service")).to_be_visible()
    shot("dashboard-empty")

    # + Add Service → service selection → marketplace.
    page.get_by_role("link", name="+ Add Service").click()
    expect(page.get_by_role("heading", name="What do you want to add?")).to_be_visible()
    shot("service-selection")
    page.get_by_role("link", name="Open the marketplace").click()
    expect(page.get_by_role("heading", name="Application Marketplace")).to_be_visible()
    cards = page.locator("#market-results .app-card")
    expect(cards.first).to_be_visible()
    catalog_size = cards.count()
    assert catalog_size >= 4, catalog_size
    shot("marketplace")

    # Category filter, then search as you type (debounced, through the API; no page load).
    page.locator(".category-filter").get_by_role("button", name="Database").click()
    expect(page.locator(".category-filter [aria-pressed=true]")).to_have_text("Database")
    expect(cards.filter(has_text=APP)).to_have_count(1)
    expect(page.locator("#market-results .app-card .muted.small").first).to_have_text("Database")
    page.locator(".category-filter").get_by_role("button", name="All").click()
    expect(cards).to_have_count(catalog_size)
    url_before = page.url
    page.get_by_label("Search apps").press_sequentially("redi", delay=60)
    expect(cards).to_have_count(1)
    expect(cards.first.locator(".app-name")).to_have_text(APP)
    assert "search=redi" in page.url and page.url.split("?")[0] == url_before.split("?")[0]
    shot("marketplace-search")

    # Configure: reference id derived from the name and checked as the user types. Redis has no web UI,
    # so it gets no subdomain (the subdomain check is exercised on an app with one, below).
    cards.first.get_by_role("link", name=f"Add {APP}").click()
    expect(page.get_by_role("heading", name=f"Configure {APP}")).to_be_visible()
    suffix = uuid.uuid4().hex[:6]
    page.get_by_label("Application name").fill(f"Cache E2E {suffix}")
    reference = f"cache-e2e-{suffix}"
    expect(page.get_by_label("Reference ID")).to_have_value(reference)
    expect(page.locator("#svc-reference-status")).to_contain_text("Available")
    expect(page.locator("#no-subdomain")).to_be_visible()
    expect(page.get_by_label("Private network")).not_to_be_checked()
    shot("configure")

    # Client-side hint first: the required password is missing.
    page.get_by_role("button", name="Launch application").click()
    password = page.locator('#configure-form [data-key][required][data-type="password"]').first
    expect(page.locator(f'[data-error-for="values.{password.get_attribute("data-key")}"]')).to_have_text("required")
    expect(password).to_have_attribute("aria-invalid", "true")
    _fill_required(page)
    expect(page.locator("#svc-cost")).to_contain_text("$")
    shot("configure-ready")

    # Launch → progress bar driven by the operation's events → the service page, running.
    page.get_by_role("button", name="Launch application").click()
    progress = page.locator("#launch-progress")
    expect(progress).to_be_visible()
    expect(progress.get_by_role("progressbar")).to_be_visible()
    shot("launch-progress")
    _wait_for_page_or_error(page, "/services/", "#launch-progress")
    service_id = re.search(r"/services/([0-9a-f-]{36})", page.url).group(1)
    expect(page.locator("#service-state")).to_have_text("Running")
    expect(page.get_by_role("heading", level=1)).to_contain_text(f"Cache E2E {suffix}")
    expect(page.locator("#helm-revision")).to_have_text("1")
    expect(page.locator("#activity-list")).to_contain_text("deployed")
    service = _api_get(page, f"/api/v1/services/{service_id}")
    assert service["state"] == "running" and service["reference_id"] == reference
    assert "auth.password" in service["secret_keys_set"]
    shot("service-running")

    # Configuration tab: the password is "set", never shown.
    page.get_by_role("tab", name="Configuration").click()
    expect(page.locator('#current-values tr[data-key="auth.password"]')).to_contain_text("set")
    assert "E2e-" not in page.content()
    shot("service-configuration")

    # Upgrade: edit a value → preview (values diff + plan) → apply → revision 2.
    page.get_by_role("button", name="Edit").click()
    page.get_by_label("Max Memory").select_option("512mb")
    page.get_by_role("button", name="Preview changes").click()
    preview = page.locator("#preview-result")
    expect(preview).to_be_visible(timeout=DEPLOY_TIMEOUT_MS)
    expect(page.locator("#preview-diff")).to_contain_text("maxmemory")
    expect(page.locator("#preview-diff")).to_contain_text("512mb")
    expect(page.locator("#preview-plan")).to_contain_text("to update")
    assert "E2e-" not in page.content()
    shot("upgrade-preview")
    page.get_by_role("button", name="Apply upgrade").click()
    expect(page.locator("#operation-panel")).to_be_visible()
    expect(page.get_by_role("button", name="Edit")).to_be_disabled()  # one operation at a time
    shot("upgrade-progress")
    expect(page.locator("#helm-revision")).to_have_text("2", timeout=DEPLOY_TIMEOUT_MS)
    expect(page.locator("#service-state")).to_have_text("Running")
    expect(page.locator('#current-values tr[data-key="maxmemory"]')).to_contain_text("512mb")
    shot("upgraded")

    # Rollback from the header dropdown to revision 1 → a new revision 3 with revision 1's values.
    page.locator("#rollback-menu summary").click()
    page.get_by_label("Roll back to revision").select_option("1")
    page.get_by_role("button", name="Roll back", exact=True).click()
    expect(page.locator("#operation-panel")).to_be_visible()
    expect(page.locator("#helm-revision")).to_have_text("3", timeout=DEPLOY_TIMEOUT_MS)
    expect(page.locator("#service-state")).to_have_text("Running")
    expect(page.locator('#current-values tr[data-key="maxmemory"]')).to_contain_text("256mb")
    answer = _api_get(page, f"/api/v1/services/{service_id}/revisions")
    revisions = answer["items"] if isinstance(answer, dict) else answer  # a list (contract) or a page
    assert [r["revision"] for r in revisions][:3] == [3, 2, 1]
    assert revisions[0]["kind"] == "rollback" and revisions[0]["source_revision"] == 1
    shot("rolled-back")

    # Back on the dashboard the card shows its badge.
    page.get_by_role("link", name=workspace_name).first.click()
    card = page.locator(f'[data-service-id="{service_id}"]')
    expect(card.locator(".state")).to_have_text("Running")
    shot("dashboard-running")

    # Delete through the modal: typing the reference id enables the button; volumes not kept.
    card.get_by_role("link", name=f"Cache E2E {suffix}").click()
    page.get_by_role("button", name="Delete", exact=True).click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    confirm = dialog.get_by_role("button", name="Delete service")
    expect(confirm).to_be_disabled()
    page.keyboard.press("Escape")  # keyboard-usable: Escape closes, focus back on the opener
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("button", name="Delete", exact=True)).to_be_focused()
    page.get_by_role("button", name="Delete", exact=True).click()
    dialog.get_by_label("Type").fill("wrong")
    expect(confirm).to_be_disabled()
    dialog.get_by_label("Type").fill(reference)
    expect(confirm).to_be_enabled()
    dialog.get_by_label("Keep volumes").uncheck()
    shot("delete-modal")
    confirm.click()
    expect(page.locator("#operation-panel")).to_be_visible()
    shot("delete-progress")
    _wait_for_page_or_error(page, "/workspaces/", "#operation-panel")
    expect(page.locator(f'[data-service-id="{service_id}"]')).to_have_count(0)
    expect(page.get_by_text("Deploy your first service")).to_be_visible()
    assert _api_get(page, f"/api/v1/services/{service_id}")["state"] == "deleted"
    shot("dashboard-after-delete")


def test_subdomain_is_checked_as_you_type_and_the_server_decides(kaiden: Portal, page) -> None:
    """An app with a web UI: subdomain derived and checked live; the server refuses a reserved one."""
    from playwright.sync_api import expect

    shot = functools.partial(Shots("subdomain-check"), page)
    _sign_in(page, kaiden)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Marketplace").click()
    page.get_by_label("Search apps").fill("grafana")
    card = page.locator("#market-results .app-card", has_text="Grafana")
    expect(page.locator("#market-results .app-card")).to_have_count(1)
    card.get_by_role("link", name="Add Grafana").click()
    expect(page.get_by_role("heading", name="Configure Grafana")).to_be_visible()
    suffix = uuid.uuid4().hex[:6]
    page.get_by_label("Application name").fill(f"Dash {suffix}")
    subdomain = page.get_by_label("Subdomain")
    expect(subdomain).to_have_value(f"dash-{suffix}")
    status = page.locator("#svc-subdomain-status")
    expect(status).to_contain_text("Available")
    shot("available")
    subdomain.fill("Bad_Name")
    expect(status).to_contain_text("✗ lowercase")
    subdomain.fill("admin")
    expect(status).to_contain_text("✗ reserved")
    shot("reserved")

    # The client does not block a reserved name; the server refuses it and nothing is created.
    _fill_required(page)
    page.get_by_role("button", name="Launch application").click()
    error = page.locator('[data-error-for="subdomain"]')
    expect(error).to_have_text("reserved")
    expect(subdomain).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#form-error")).to_be_visible()
    expect(page.locator("#launch-progress")).to_be_hidden()
    workspace_id = page.locator("#configure-form").get_attribute("data-workspace-id")
    listed = _api_get(page, f"/api/v1/workspaces/{workspace_id}/services?include_deleted=true")
    assert all(item["name"] != f"Dash {suffix}" for item in listed["items"])
    shot("server-error")

    # Private services get no public address: the subdomain is switched off.
    page.get_by_label("Private network").check()
    expect(subdomain).to_be_disabled()
    expect(status).to_contain_text("no public address")


def _wait_for_page_or_error(page, path_prefix: str, panel: str) -> None:
    """Wait until the operation's page moves on to `path_prefix`, failing at once with its error if it fails."""
    page.wait_for_function(
        """([prefix, panel]) => location.pathname.startsWith(prefix)
             || !(document.querySelector(panel + " .progress-error") || {hidden: true}).hidden""",
        arg=[path_prefix, panel],
        timeout=DEPLOY_TIMEOUT_MS,
    )
    if not page.url.split("://", 1)[1].split("/", 1)[1].startswith(path_prefix.lstrip("/")):
        raise AssertionError("the operation failed: " + page.locator(f"{panel} .progress-error").inner_text())


def _fill_required(page) -> None:
    """Fill every required generated value: passwords with a random secret, empty text with `e2e`."""
    required = page.locator("#configure-form [data-key][required]")
    assert required.count() >= 1
    for index in range(required.count()):
        field = required.nth(index)
        if field.get_attribute("data-type") == "password":
            field.fill("E2e-" + uuid.uuid4().hex)
        elif field.input_value() == "":
            field.fill("e2e")

"""Cloud Services pages through the Flask test client: who sees what, forms generated from value specs, no secrets."""

from __future__ import annotations

import re

import pytest

from portal.models import AppCategory, ServiceState, WorkspaceRole
from tests import factories

SECRET = "s3cret-Pa55word-never-shown"
SPECS = {
    "required": [
        {"key": "auth.password", "label": "Admin Password", "type": "password", "required": True},
        {"key": "auth.database", "label": "Database Name", "type": "text", "default": "app_db", "required": True},
    ],
    "optional": [
        {"key": "replicas", "label": "Replicas", "type": "number", "default": 1, "help": "How many pods"},
        {"key": "metrics.enabled", "label": "Metrics", "type": "boolean", "default": False},
        {"key": "size", "label": "Storage Size", "type": "select", "default": "8Gi", "options": ["8Gi", "16Gi"]},
        {"key": "extra.note", "label": "Note", "type": "text", "placeholder": "anything"},
    ],
}


def login(client, user) -> None:
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    answer = client.post(
        "/login", data={"email": user.email, "password": factories.DEFAULT_PASSWORD, "csrf_token": token}
    )
    assert answer.status_code == 302, answer.get_data(as_text=True)


@pytest.fixture()
def world(db):
    """A workspace with an owner, a viewer, an outsider of the same customer, another tenant and staff."""
    workspace = factories.make_workspace(db, name="Acme Apps", slug="acme-apps")
    owner = factories.make_member(db, workspace, role=WorkspaceRole.owner).user
    viewer = factories.make_member(db, workspace, role=WorkspaceRole.viewer).user
    outsider = factories.make_user(db, customer=workspace.customer)
    foreigner = factories.make_member(db, role=WorkspaceRole.owner).user
    engineer = factories.make_engineer(db)
    template = factories.make_template(
        db,
        slug="testdb",
        name="TestDB",
        helm_value_specs=SPECS,
        category=AppCategory.database,
        tags=["sql", "database"],
        monthly_price=12,
    )
    other = factories.make_template(
        db, slug="flowy", name="Flowy", category=AppCategory.automation, tags=["workflow"], monthly_price=0
    )
    db.commit()
    return {
        "workspace": workspace,
        "owner": owner,
        "viewer": viewer,
        "outsider": outsider,
        "foreigner": foreigner,
        "engineer": engineer,
        "template": template,
        "other": other,
    }


def _service(db, world, **kw):
    service = factories.make_service(
        db,
        world["workspace"],
        world["template"],
        values={"auth.password": SECRET, "auth.database": "shop_db", "replicas": 2, "metrics.enabled": True},
        **kw,
    )
    db.commit()
    return service


# ---------------------------------------------------------------- workspace dashboard


def test_empty_workspace_invites_the_first_deploy(client, world) -> None:
    login(client, world["owner"])
    page = client.get(f"/workspaces/{world['workspace'].id}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "Deploy your first service" in html
    assert f"/workspaces/{world['workspace'].id}/services/new" in html
    assert "+ Add Service" in html


def test_dashboard_shows_service_cards_with_status_badges(client, db, world) -> None:
    running = _service(db, world, name="Shop DB", state=ServiceState.running, public_url="https://shop.apps.localhost")
    _service(db, world, name="Broken DB", state=ServiceState.error, error_message="image pull failed")
    login(client, world["owner"])
    html = client.get("/workspaces/acme-apps").get_data(as_text=True)  # by slug too
    assert "Deploy your first service" not in html
    assert "Shop DB" in html and "Broken DB" in html
    assert 'class="state state-running"' in html and 'class="state state-error"' in html
    assert f"/services/{running.id}" in html
    assert "image pull failed" in html
    assert "+ Add Service" in html


def test_viewers_see_the_dashboard_without_deploy_actions(client, world) -> None:
    login(client, world["viewer"])
    html = client.get(f"/workspaces/{world['workspace'].id}").get_data(as_text=True)
    assert "Deploy your first service" in html
    assert "+ Add Service" not in html
    assert client.get(f"/workspaces/{world['workspace'].id}/services/new").status_code == 403
    assert client.get(f"/workspaces/{world['workspace'].id}/services/new/testdb").status_code == 403


@pytest.mark.parametrize("who", ["outsider", "foreigner"])
def test_outsiders_get_404_everywhere(client, db, world, who) -> None:
    service = _service(db, world)
    login(client, world[who])
    ws = world["workspace"].id
    for url in (
        f"/workspaces/{ws}",
        "/workspaces/acme-apps",
        f"/workspaces/{ws}/services/new",
        f"/workspaces/{ws}/services/new/testdb",
        f"/services/{service.id}",
        f"/marketplace?workspace={ws}",
    ):
        answer = client.get(url)
        assert answer.status_code == 404, url
        assert "Shop" not in answer.get_data(as_text=True)


def test_staff_engineer_reads_but_cannot_deploy_or_delete(client, db, world) -> None:
    service = _service(db, world, state=ServiceState.running)
    login(client, world["engineer"])
    assert client.get(f"/workspaces/{world['workspace'].id}").status_code == 200
    html = client.get(f"/services/{service.id}").get_data(as_text=True)
    assert 'id="delete-button"' not in html and 'id="rollback-menu"' not in html
    assert client.get(f"/workspaces/{world['workspace'].id}/services/new/testdb").status_code == 403


def test_pages_require_a_session(client, world) -> None:
    answer = client.get(f"/workspaces/{world['workspace'].id}")
    assert answer.status_code == 302 and "/login" in answer.headers["Location"]
    assert client.get("/marketplace").status_code == 302


def test_navigation_links_workspaces_and_marketplace(client, world) -> None:
    login(client, world["owner"])
    html = client.get("/").get_data(as_text=True)
    nav = html.split('<nav aria-label="Main">', 1)[1].split("</nav>", 1)[0]
    assert f'href="/workspaces/{world["workspace"].id}"' in nav
    assert 'href="/marketplace"' in nav


# ---------------------------------------------------------------- selection and marketplace


def test_service_selection_leads_to_the_marketplace(client, world) -> None:
    login(client, world["owner"])
    ws = world["workspace"].id
    html = client.get(f"/workspaces/{ws}/services/new").get_data(as_text=True)
    assert "Cloud Services" in html
    assert f"/marketplace?workspace={ws}" in html


def test_marketplace_cards_search_and_categories(client, world) -> None:
    login(client, world["owner"])
    ws = world["workspace"].id
    html = client.get(f"/marketplace?workspace={ws}").get_data(as_text=True)
    for label in ("All", "AI &amp; LLM", "Automation", "Database", "Analytics", "DevOps", "Web", "Container"):
        assert f">{label}</a>" in html
    assert "TestDB" in html and "Flowy" in html
    assert "$12/mo" in html and "Free" in html
    assert f'href="/workspaces/{ws}/services/new/testdb"' in html
    assert 'aria-label="Add TestDB"' in html
    assert '<label for="market-search">' in html

    found = client.get(f"/marketplace?workspace={ws}&search=SQL").get_data(as_text=True)
    assert "TestDB" in found and "Flowy" not in found
    automation = client.get(f"/marketplace?workspace={ws}&category=automation").get_data(as_text=True)
    assert "Flowy" in automation and "TestDB" not in automation
    assert 'data-category="automation" aria-pressed="true"' in automation


def test_marketplace_without_workspace_uses_a_deployable_one(app, client, world) -> None:
    login(client, world["owner"])
    html = client.get("/marketplace").get_data(as_text=True)
    assert f'href="/workspaces/{world["workspace"].id}/services/new/testdb"' in html
    viewer = app.test_client()
    login(viewer, world["viewer"])
    viewer_html = viewer.get("/marketplace").get_data(as_text=True)
    assert "TestDB" in viewer_html and "/services/new/testdb" not in viewer_html


# ---------------------------------------------------------------- configure


def test_configure_form_is_generated_from_the_value_specs(client, world) -> None:
    login(client, world["owner"])
    answer = client.get(f"/workspaces/{world['workspace'].id}/services/new/testdb")
    html = answer.get_data(as_text=True)
    assert answer.status_code == 200
    for group in SPECS.values():
        for spec in group:
            assert f'data-key="{spec["key"]}"' in html, spec["key"]
            assert f'data-error-for="values.{spec["key"]}"' in html
            assert spec["label"] in html
    required_part, advanced_part = html.split('<details class="advanced">', 1)
    assert 'data-key="auth.password"' in required_part and 'data-key="replicas"' in advanced_part
    assert re.search(r'<input type="password"[^>]*data-key="auth.password"', html)
    assert re.search(r'<input type="number"[^>]*data-key="replicas"[^>]*value="1"', html, re.S)
    assert re.search(r'<input type="checkbox"[^>]*data-key="metrics.enabled"', html)
    assert re.search(r'<option value="8Gi"\s+selected>', html)
    assert 'value="app_db"' in html and 'placeholder="anything"' in html and "How many pods" in html
    assert "$12/mo" in html  # estimated monthly cost
    for field in ("svc-name", "svc-reference", "svc-subdomain", "svc-private"):
        assert f'for="{field}"' in html and f'id="{field}"' in html
    password_input = re.search(r"<input type=\"password\"[^>]*>", html, re.S).group(0)
    assert "value=" not in password_input


def test_every_generated_input_has_a_label(client, world) -> None:
    login(client, world["owner"])
    html = client.get(f"/workspaces/{world['workspace'].id}/services/new/testdb").get_data(as_text=True)
    ids = re.findall(r'<(?:input|select)[^>]*\bid="([^"]+)"', html)
    hidden = set(re.findall(r'<input type="hidden"[^>]*\bid="([^"]+)"', html))
    assert ids
    for ident in set(ids) - hidden:
        assert f'for="{ident}"' in html, ident


def test_apps_without_web_ui_get_no_subdomain_field(client, db, world) -> None:
    factories.make_template(db, slug="cache", name="Cache", ingress_enabled=False, default_port=6379)
    db.commit()
    login(client, world["owner"])
    html = client.get(f"/workspaces/{world['workspace'].id}/services/new/cache").get_data(as_text=True)
    assert 'id="svc-subdomain"' not in html and 'id="no-subdomain"' in html and "port 6379" in html
    assert 'id="svc-private"' in html and 'id="svc-reference"' in html


def test_every_input_of_the_service_page_has_a_label(client, db, world) -> None:
    service = _service(db, world, state=ServiceState.running, helm_revision=2)
    factories.make_revision(db, service, revision=1, chart_version="15.4.0")
    db.commit()
    login(client, world["owner"])
    html = client.get(f"/services/{service.id}").get_data(as_text=True)
    ids = set(re.findall(r'<(?:input|select)[^>]*\bid="([^"]+)"', html))
    assert {"rollback-revision", "delete-confirm", "delete-keep-volumes", "chart-version"} <= ids
    for ident in ids:
        assert f'for="{ident}"' in html, ident


def test_configure_unknown_or_inactive_template_is_404(client, db, world) -> None:
    world["other"].is_active = False
    db.commit()
    login(client, world["owner"])
    assert client.get(f"/workspaces/{world['workspace'].id}/services/new/nope").status_code == 404
    assert client.get(f"/workspaces/{world['workspace'].id}/services/new/flowy").status_code == 404


# ---------------------------------------------------------------- service detail


def test_service_detail_header_tabs_and_no_secret(client, db, world) -> None:
    service = _service(
        db,
        world,
        name="Shop DB",
        state=ServiceState.running,
        public_url="https://shop.apps.localhost",
        helm_revision=2,
        helm_release_name="paas-ws-acme-apps-shop",
    )
    factories.make_revision(db, service, revision=1, values={"auth.database": "old_db"}, chart_version="15.4.0")
    factories.make_revision(db, service, revision=2, kind="upgrade", chart_version="15.5.0")
    factories.make_activity(db, service, event_type="deployed", message="Deployed revision 1")
    db.commit()
    login(client, world["owner"])
    answer = client.get(f"/services/{service.id}")
    html = answer.get_data(as_text=True)
    assert answer.status_code == 200
    assert SECRET not in html
    assert "Shop DB" in html and f"#{service.deployment_id}" in html
    assert 'id="service-state"' in html and "state-running" in html
    assert 'id="open-web-ui" href="https://shop.apps.localhost"' in html
    assert 'role="tab"' in html and ">Overview</a>" in html and ">Configuration</a>" in html
    assert re.findall(r'role="tab"[^>]*aria-controls="([^"]+)"', html) == ["overview", "configuration"]
    # Rollback lists the earlier revision only; the delete modal asks for the reference id.
    assert '<option value="1">' in html and '<option value="2">' not in html
    assert 'id="delete-dialog"' in html and f"Type <code>{service.reference_id}</code>" in html
    assert 'id="delete-keep-volumes"' in html
    assert "Deployed revision 1" in html and "paas-ws-acme-apps-shop" in html
    # Configuration: password as "set", plain values shown, edit form with every spec key.
    row = re.search(r'<tr data-key="auth.password">.*?</tr>', html, re.S).group(0)
    assert ">set<" in row
    assert "shop_db" in html
    assert re.search(r'<tr data-key="metrics.enabled">.*?<code>true</code>', html, re.S)
    for group in SPECS.values():
        for spec in group:
            assert f'data-key="{spec["key"]}"' in html
    for password_input in re.findall(r'<input type="password"[^>]*>', html, re.S):
        assert "value=" not in password_input


def test_service_detail_password_not_set_and_viewer_is_read_only(client, db, world) -> None:
    service = factories.make_service(db, world["workspace"], world["template"], values={"auth.database": "x"})
    db.commit()
    login(client, world["viewer"])
    html = client.get(f"/services/{service.id}").get_data(as_text=True)
    row = re.search(r'<tr data-key="auth.password">.*?</tr>', html, re.S).group(0)
    assert ">not set<" in row
    assert 'id="delete-button"' not in html and 'id="edit-values"' not in html and 'id="rollback-menu"' not in html


def test_service_detail_attaches_to_the_running_operation(client, db, world) -> None:
    service = _service(db, world, state=ServiceState.deploying)
    operation = factories.make_operation(db, service, kind="service.deploy", state="running", progress=40)
    operation.step = "creating Deployment paas-x"
    db.commit()
    login(client, world["owner"])
    html = client.get(f"/services/{service.id}").get_data(as_text=True)
    assert f'data-operation-id="{operation.id}"' in html
    assert "creating Deployment paas-x" in html and 'aria-valuenow="40"' in html
    assert "Deploying…" in html


def test_missing_service_is_404(client, world) -> None:
    login(client, world["owner"])
    assert client.get("/services/00000000-0000-0000-0000-000000000001").status_code == 404
    assert client.get("/workspaces/not-a-workspace").status_code == 404


def test_static_scripts_are_served_as_modules(client) -> None:
    for name in ("api", "operations", "marketplace", "configure", "service", "workspace"):
        answer = client.get(f"/static/js/{name}.js")
        assert answer.status_code == 200, name
        assert "javascript" in answer.headers["Content-Type"]
        assert b"http://" not in answer.data and b"https://" not in answer.data  # nothing loaded from elsewhere

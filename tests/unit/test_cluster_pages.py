"""Cluster pages: list and detail for the cluster's customer and staff (not for other tenants), registration
showing the key once, key rotation, onboarding commands, and the polling script they load."""

from __future__ import annotations

import re

from sqlalchemy import select

from portal.models import Cluster, ClusterStatus, utcnow
from portal.services import clusters
from tests import factories
from tests.unit.test_auth import csrf_from, login


def _signed_in(client, db, user):
    db.commit()
    assert login(client, user.email).status_code == 302
    return client


def test_list_and_detail_render_for_the_owner(client, db):
    customer = factories.make_customer(db)
    user = factories.make_user(db, customer=customer)
    cluster = factories.make_cluster(
        db, customer, name="prod-eu", status=ClusterStatus.online, k8s_version="v1.36.3", node_count=3
    )
    cluster.last_heartbeat = utcnow()
    factories.make_node(db, cluster, name="worker-a", internal_ip="10.1.2.3", agent_version="0.1.0")
    factories.make_cluster(db, name="someone-elses")
    _signed_in(client, db, user)

    page = client.get("/clusters")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "prod-eu" in html and "someone-elses" not in html
    assert 'class="status status-online"' in html and "v1.36.3" in html
    assert 'data-poll="/api/v1/clusters?per_page=200"' in html and "clusters.js" in html

    detail = client.get(f"/clusters/{cluster.id}")
    html = detail.get_data(as_text=True)
    assert detail.status_code == 200
    assert "worker-a" in html and "10.1.2.3" in html and "0.1.0" in html and "16Gi" in html
    assert f'data-poll="/api/v1/clusters/{cluster.id}/nodes?per_page=200"' in html
    assert "X-Kaiden-Cluster-Key: &lt;API_KEY&gt;" in html  # instructions, with a placeholder, never a key
    assert f"/api/v1/clusters/{cluster.id}/install.yaml" in html
    assert "Rotate API key" in html


def test_pages_hidden_from_other_tenants(client, db):
    cluster = factories.make_cluster(db, name="theirs")
    _signed_in(client, db, factories.make_user(db))
    assert client.get(f"/clusters/{cluster.id}").status_code == 404
    assert "theirs" not in client.get("/clusters").get_data(as_text=True)
    token = csrf_from(client.get("/clusters").get_data(as_text=True))
    old_hash = cluster.api_key_hash
    assert client.post(f"/clusters/{cluster.id}/rotate-key", data={"csrf_token": token}).status_code == 404
    db.expire_all()
    assert db.get(Cluster, cluster.id).api_key_hash == old_hash


def test_anonymous_visitors_are_sent_to_login(client, db):
    cluster = factories.make_cluster(db)
    db.commit()
    for url in ("/clusters", f"/clusters/{cluster.id}", "/clusters/new"):
        response = client.get(url)
        assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_engineers_read_but_do_not_register_or_rotate(client, db):
    cluster = factories.make_cluster(db, name="seen-by-staff")
    _signed_in(client, db, factories.make_engineer(db))
    assert "seen-by-staff" in client.get("/clusters").get_data(as_text=True)
    html = client.get(f"/clusters/{cluster.id}").get_data(as_text=True)
    assert "Rotate API key" not in html
    assert client.get("/clusters/new").status_code == 403
    token = csrf_from(html)
    assert client.post(f"/clusters/{cluster.id}/rotate-key", data={"csrf_token": token}).status_code == 403


def test_register_shows_the_key_once(client, db):
    user = factories.make_user(db)
    _signed_in(client, db, user)
    form = client.get("/clusters/new")
    assert form.status_code == 200
    response = client.post(
        "/clusters/new",
        data={"name": "edge-1", "description": "", "csrf_token": csrf_from(form.get_data(as_text=True))},
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    key = re.search(r'<code id="api-key" class="secret">(kdc_[^<]+)</code>', html).group(1)
    cluster = db.scalars(select(Cluster).where(Cluster.name == "edge-1")).one()
    assert cluster.customer_id == user.customer_id
    assert clusters.authenticate_cluster_key(db, key).id == cluster.id
    assert f"X-Kaiden-Cluster-Key: {key}" in html  # the kubectl command
    assert f"-e api_key={key}" in html and f"-e cluster_id={cluster.id}" in html  # the playbook command
    # the key is not on any later page
    for url in ("/clusters", f"/clusters/{cluster.id}"):
        assert key not in client.get(url).get_data(as_text=True)


def test_register_errors_are_shown_and_change_nothing(client, db):
    user = factories.make_user(db)
    factories.make_cluster(db, user.customer, name="taken")
    _signed_in(client, db, user)
    token = csrf_from(client.get("/clusters/new").get_data(as_text=True))
    duplicate = client.post("/clusters/new", data={"name": "taken", "csrf_token": token})
    assert duplicate.status_code == 422
    assert "Name taken." in duplicate.get_data(as_text=True)
    empty = client.post("/clusters/new", data={"name": "", "csrf_token": token})
    assert empty.status_code == 422 and "field-error" in empty.get_data(as_text=True)
    assert len(db.scalars(select(Cluster)).all()) == 1


def test_admin_registers_for_a_customer(client, db):
    customer = factories.make_customer(db, name="Acme")
    _signed_in(client, db, factories.make_admin(db))
    html = client.get("/clusters/new").get_data(as_text=True)
    assert "Acme" in html
    token = csrf_from(html)
    missing = client.post("/clusters/new", data={"name": "a1", "customer_id": "", "csrf_token": token})
    assert missing.status_code == 422 and "Choose a customer." in missing.get_data(as_text=True)
    ok = client.post("/clusters/new", data={"name": "a1", "customer_id": str(customer.id), "csrf_token": token})
    assert ok.status_code == 200 and "kdc_" in ok.get_data(as_text=True)
    assert db.scalars(select(Cluster).where(Cluster.name == "a1")).one().customer_id == customer.id


def test_rotate_from_the_page(client, db):
    user = factories.make_user(db)
    cluster = factories.make_cluster(db, user.customer)
    old_key = cluster.plain_api_key
    _signed_in(client, db, user)
    token = csrf_from(client.get(f"/clusters/{cluster.id}").get_data(as_text=True))
    response = client.post(f"/clusters/{cluster.id}/rotate-key", data={"csrf_token": token})
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and "previous key stopped working" in html
    new_key = re.search(r'<code id="api-key" class="secret">(kdc_[^<]+)</code>', html).group(1)
    db.expire_all()
    assert clusters.authenticate_cluster_key(db, old_key) is None
    assert clusters.authenticate_cluster_key(db, new_key).id == cluster.id
    # without the CSRF token nothing rotates
    assert client.post(f"/clusters/{cluster.id}/rotate-key", data={}).status_code in (400, 422)
    db.expire_all()
    assert clusters.authenticate_cluster_key(db, new_key).id == cluster.id


def test_polling_script_is_served(client):
    script = client.get("/static/clusters.js")
    assert script.status_code == 200
    body = script.get_data(as_text=True)
    assert "fetch(url" in body and "innerHTML" not in body  # data is inserted as text, never as markup


KUBECONFIG = (
    "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
    "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
    "users: [{name: u, user: {token: page-secret-token-42424242}}]\n"
    "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
)


def test_onboard_from_the_page_queues_an_operation_and_shows_it(app, client, db):
    from portal import redis_of
    from portal.models import Operation

    user = factories.make_user(db)
    cluster = factories.make_cluster(db, user.customer)
    key = cluster.plain_api_key
    _signed_in(client, db, user)
    redis_of(app).flushdb()
    page = client.get(f"/clusters/{cluster.id}").get_data(as_text=True)
    assert "Onboard from the portal" in page and 'name="kubeconfig"' in page
    token = csrf_from(page)

    bad = client.post(f"/clusters/{cluster.id}/onboard", data={"kubeconfig": "a: 1", "csrf_token": token})
    assert bad.status_code == 422 and "must be a kubeconfig with clusters" in bad.get_data(as_text=True)
    wrong_key = client.post(
        f"/clusters/{cluster.id}/onboard", data={"kubeconfig": KUBECONFIG, "api_key": "kdc_no", "csrf_token": token}
    )
    assert wrong_key.status_code == 422 and "is not this cluster&#39;s current key" in wrong_key.get_data(as_text=True)
    assert db.query(Operation).count() == 0

    started = client.post(
        f"/clusters/{cluster.id}/onboard", data={"kubeconfig": KUBECONFIG, "api_key": key, "csrf_token": token}
    )
    assert started.status_code == 302 and started.headers["Location"].endswith("#onboard-run")
    operation = db.query(Operation).one()
    assert operation.kind == "cluster.onboard" and operation.params["kubeconfig"] == "[redacted]"
    assert len(redis_of(app).keys("rq:job:*")) == 1
    shown = client.get(f"/clusters/{cluster.id}").get_data(as_text=True)
    assert f'data-poll="/api/v1/operations/{operation.id}"' in shown and "status-queued" in shown
    assert "page-secret-token" not in shown

    busy = client.post(
        f"/clusters/{cluster.id}/onboard", data={"kubeconfig": KUBECONFIG, "api_key": key, "csrf_token": token}
    )
    assert busy.status_code == 409 and "already being onboarded" in busy.get_data(as_text=True)


def test_engineers_cannot_onboard_from_the_page(client, db):
    from portal.models import Operation

    cluster = factories.make_cluster(db)
    _signed_in(client, db, factories.make_engineer(db))
    page = client.get(f"/clusters/{cluster.id}").get_data(as_text=True)
    assert 'name="kubeconfig"' not in page
    response = client.post(
        f"/clusters/{cluster.id}/onboard", data={"kubeconfig": KUBECONFIG, "csrf_token": csrf_from(page)}
    )
    assert response.status_code == 403
    assert db.query(Operation).count() == 0

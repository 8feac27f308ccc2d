"""The REST route layer on toy routes: validation, pagination, errors, transactions, OpenAPI, docs page."""

from __future__ import annotations

import uuid
from typing import Literal

import pytest
from pydantic import Field
from sqlalchemy import select

from portal.api import mount, routes
from portal.api.framework import (
    PUBLIC,
    PageQuery,
    RequestModel,
    ResponseModel,
    Router,
    expected_version,
)
from portal.api.openapi import build_document
from portal.errors import ConflictError, NotFound
from portal.models import Customer
from portal.services import check_version
from tests import factories

toy = Router("toy", tags=["Toy"])


class ItemIn(RequestModel):
    name: str = Field(min_length=1, max_length=10)
    size: Literal["s", "m", "l"] = "m"
    count: int = Field(1, ge=1, le=5)


class ItemOut(ResponseModel):
    name: str
    size: str
    count: int


class ItemFilter(PageQuery):
    tags: list[str] | None = None
    flag: bool | None = None


class OperationOut(ResponseModel):
    id: str
    state: str


class CustomerOut(ResponseModel):
    id: uuid.UUID
    name: str
    version: int


class Rename(RequestModel):
    name: str = Field(min_length=1, max_length=50)
    version: int | None = None


@toy.post("/toy/items", body=ItemIn, response=ItemOut, auth=PUBLIC)
def create_item(body: ItemIn) -> ItemIn:
    """Echo the validated item."""
    return body


@toy.get("/toy/items", query=ItemFilter, response=ItemOut, paginated=True, auth=PUBLIC)
def list_items(query: ItemFilter):
    """Twenty-three items; echoes the tags filter in the name."""
    label = ",".join(query.tags or []) or "x"
    return [{"name": f"{label}{i}"[:10], "size": "s", "count": 1} for i in range(23)]


@toy.post("/toy/jobs", response=OperationOut, status=202, auth=PUBLIC)
def start_job() -> dict:
    return {"id": "op-1", "state": "queued"}


@toy.delete("/toy/things/<uuid:thing_id>", status=204, auth=PUBLIC)
def delete_thing(thing_id: uuid.UUID) -> None:
    return None


@toy.get("/toy/boom", auth=PUBLIC)
def boom() -> None:
    raise RuntimeError("secret database password in this message")


@toy.get("/toy/missing", auth=PUBLIC)
def missing() -> None:
    raise NotFound("No such toy.")


@toy.post("/toy/customers", body=Rename, response=CustomerOut, auth=PUBLIC)
def create_then_maybe_fail(session, body: Rename) -> Customer:
    """Writes a customer, then fails when the name says so: nothing may be left behind."""
    customer = Customer(name=body.name)
    session.add(customer)
    session.flush()
    if body.name.startswith("fail"):
        raise ConflictError("Refused after writing.", code="refused")
    return customer


@toy.post("/toy/customers-unflushed", body=Rename, response=CustomerOut, auth=PUBLIC)
def create_unflushed(session, body: Rename) -> dict:
    """Adds without flushing: a duplicate name only fails at commit time."""
    session.add(Customer(name=body.name))
    return {"id": uuid.uuid4(), "name": body.name, "version": 1}


@toy.patch("/toy/customers/<uuid:customer_id>", body=Rename, response=CustomerOut, auth=PUBLIC)
def rename(session, customer_id: uuid.UUID, body: Rename) -> Customer:
    customer = session.get(Customer, customer_id)
    if customer is None:
        raise NotFound("Customer not found.")
    check_version(customer, expected_version(body.version))
    customer.name = body.name
    return customer


@toy.get("/toy/secure")
def secure(actor) -> dict:
    return {"email": actor.email}


@pytest.fixture()
def toy_app(app):
    table = mount(app, [toy], "toy_api")
    app.extensions["kaiden.api_routes"] = [*routes(app), *table]
    return app


@pytest.fixture()
def toy_client(toy_app):
    return toy_app.test_client()


def test_valid_body_is_validated_and_serialized(toy_client) -> None:
    response = toy_client.post("/api/v1/toy/items", json={"name": " abc ", "count": 2})
    assert response.status_code == 201
    assert response.json == {"name": "abc", "size": "m", "count": 2}


def test_invalid_body_gives_field_level_messages(toy_client) -> None:
    response = toy_client.post("/api/v1/toy/items", json={"name": "x" * 11, "size": "xl", "count": 9, "admin": True})
    assert response.status_code == 422
    error = response.json["error"]
    assert error["code"] == "validation_error"
    assert error["fields"] == {
        "name": "must be at most 10 characters",
        "size": "must be one of: s, m or l",
        "count": "must be at most 5",
        "admin": "is not allowed",
    }


def test_missing_and_empty_fields(toy_client) -> None:
    assert toy_client.post("/api/v1/toy/items", json={}).json["error"]["fields"] == {"name": "is required"}
    assert toy_client.post("/api/v1/toy/items", json={"name": "  "}).json["error"]["fields"] == {
        "name": "must not be empty"
    }


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": "name=x", "content_type": "application/x-www-form-urlencoded"}, 400, "expected_json"),
        ({"data": "{not json", "content_type": "application/json"}, 400, "invalid_json"),
        ({"json": ["a", "list"]}, 422, "validation_error"),
    ],
)
def test_body_that_is_not_a_json_object(toy_client, kwargs, status, code) -> None:
    response = toy_client.post("/api/v1/toy/items", **kwargs)
    assert response.status_code == status
    assert response.json["error"]["code"] == code


def test_pagination_envelope_and_limits(toy_client) -> None:
    first = toy_client.get("/api/v1/toy/items").json
    assert (first["page"], first["per_page"], first["total"], len(first["items"])) == (1, 50, 23, 23)
    page = toy_client.get("/api/v1/toy/items?page=3&per_page=10").json
    assert (page["page"], page["per_page"], page["total"], len(page["items"])) == (3, 10, 23, 3)
    beyond = toy_client.get("/api/v1/toy/items?page=9&per_page=10").json
    assert beyond["items"] == [] and beyond["total"] == 23
    too_big = toy_client.get("/api/v1/toy/items?per_page=201")
    assert too_big.status_code == 422
    assert too_big.json["error"]["fields"] == {"per_page": "must be at most 200"}
    assert toy_client.get("/api/v1/toy/items?page=0").json["error"]["fields"] == {"page": "must be at least 1"}
    assert toy_client.get("/api/v1/toy/items?colour=red").json["error"]["fields"] == {"colour": "is not allowed"}
    assert toy_client.get("/api/v1/toy/items?flag=maybe").json["error"]["fields"] == {"flag": "must be true or false"}


def test_list_query_parameters_accept_commas_and_repeats(toy_client) -> None:
    assert toy_client.get("/api/v1/toy/items?tags=a,b").json["items"][0]["name"] == "a,b0"
    assert toy_client.get("/api/v1/toy/items?tags=a&tags=b").json["items"][0]["name"] == "a,b0"


def test_202_wraps_the_operation(toy_client) -> None:
    response = toy_client.post("/api/v1/toy/jobs")
    assert response.status_code == 202
    assert response.json == {"operation": {"id": "op-1", "state": "queued"}}


def test_204_has_an_empty_body(toy_client) -> None:
    response = toy_client.delete(f"/api/v1/toy/things/{uuid.uuid4()}")
    assert response.status_code == 204
    assert response.data == b""


def test_unexpected_exception_is_a_generic_500(toy_client) -> None:
    response = toy_client.get("/api/v1/toy/boom")
    assert response.status_code == 500
    assert response.json == {"error": {"code": "internal_error", "message": "Internal server error.", "fields": {}}}
    assert b"secret" not in response.data


def test_kaiden_and_http_errors_use_the_envelope(toy_client) -> None:
    missing = toy_client.get("/api/v1/toy/missing")
    assert missing.status_code == 404
    assert missing.json["error"] == {"code": "not_found", "message": "No such toy.", "fields": {}}
    unknown = toy_client.get("/api/v1/no/such/route")
    assert unknown.status_code == 404 and unknown.json["error"]["code"] == "not_found"
    wrong_method = toy_client.put("/api/v1/toy/items", json={})
    assert wrong_method.status_code == 405 and wrong_method.json["error"]["code"] == "method_not_allowed"
    bad_uuid = toy_client.delete("/api/v1/toy/things/not-a-uuid")
    assert bad_uuid.status_code == 404


def test_pages_get_an_html_error_page(toy_client) -> None:
    response = toy_client.get("/no/such/page")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert b"Not found." in response.data


def test_login_is_required_by_default(toy_client) -> None:
    response = toy_client.get("/api/v1/toy/secure")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_failed_request_writes_nothing(toy_app, toy_client, db) -> None:
    assert toy_client.post("/api/v1/toy/customers", json={"name": "kept"}).status_code == 201
    refused = toy_client.post("/api/v1/toy/customers", json={"name": "fail-me"})
    assert refused.status_code == 409 and refused.json["error"]["code"] == "refused"
    names = set(db.scalars(select(Customer.name)))
    assert names == {"kept"}


def test_a_failing_commit_is_a_409_not_a_half_success(toy_client, db) -> None:
    assert toy_client.post("/api/v1/toy/customers-unflushed", json={"name": "dup"}).status_code == 201
    again = toy_client.post("/api/v1/toy/customers-unflushed", json={"name": "dup"})
    assert again.status_code == 409
    assert again.json["error"]["code"] == "conflict"
    assert "UNIQUE" not in again.get_data(as_text=True).upper()
    assert db.scalar(select(Customer.name).where(Customer.name == "dup")) == "dup"


def test_optimistic_locking_with_version_and_if_match(toy_client, db) -> None:
    customer = factories.make_customer(db, name="v1")
    db.commit()
    url = f"/api/v1/toy/customers/{customer.id}"
    ok = toy_client.patch(url, json={"name": "v2", "version": 1})
    assert ok.status_code == 200 and ok.json["version"] == 2
    assert ok.headers["ETag"] == '"2"'
    stale = toy_client.patch(url, json={"name": "v3", "version": 1})
    assert stale.status_code == 409 and stale.json["error"]["code"] == "stale"
    assert toy_client.patch(url, json={"name": "v3"}, headers={"If-Match": '"1"'}).status_code == 409
    assert toy_client.patch(url, json={"name": "v3"}, headers={"If-Match": '"2"'}).status_code == 200
    bad = toy_client.patch(url, json={"name": "v4"}, headers={"If-Match": "*"})
    assert bad.status_code == 400 and bad.json["error"]["code"] == "invalid_if_match"


def test_declarations_are_checked_at_import_time() -> None:
    router = Router("bad")
    with pytest.raises(TypeError, match="unknown parameters"):
        router.get("/x")(lambda request: None)
    with pytest.raises(TypeError, match="must accept"):
        router.get("/x/<uuid:x_id>")(lambda: None)
    with pytest.raises(TypeError, match="PageQuery"):
        router.get("/x", paginated=True, response=ItemOut)(lambda: None)
    with pytest.raises(TypeError, match="no body"):
        router.get("/x", body=ItemIn)
    with pytest.raises(ValueError, match="exactly one method"):
        router.route("/x", methods=["GET", "POST"])


def test_openapi_document_comes_from_the_same_models(toy_app) -> None:
    document = build_document(toy_app)
    assert document["openapi"] == "3.1.0"
    assert set(document["components"]["securitySchemes"]) == {"bearerAuth", "cookieAuth"}
    create = document["paths"]["/api/v1/toy/items"]["post"]
    assert create["security"] == []
    body_schema = create["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema == {"$ref": "#/components/schemas/ItemIn"}
    item_in = document["components"]["schemas"]["ItemIn"]
    assert item_in["properties"]["name"]["maxLength"] == 10
    assert item_in["additionalProperties"] is False
    assert {"201", "400", "422"} <= set(create["responses"])
    listing = document["paths"]["/api/v1/toy/items"]["get"]
    params = {p["name"]: p for p in listing["parameters"]}
    assert params["per_page"]["schema"]["maximum"] == 200
    assert params["tags"]["explode"] is False
    page_ref = listing["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    page_schema = document["components"]["schemas"][page_ref.rsplit("/", 1)[1]]
    assert page_schema["required"] == ["items", "page", "per_page", "total"]
    accepted = document["paths"]["/api/v1/toy/jobs"]["post"]["responses"]["202"]
    accepted_ref = accepted["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert document["components"]["schemas"][accepted_ref]["required"] == ["operation"]
    secure = document["paths"]["/api/v1/toy/secure"]["get"]
    assert "security" not in secure and {"401", "403"} <= set(secure["responses"])
    thing = document["paths"]["/api/v1/toy/things/{thing_id}"]["delete"]
    assert thing["parameters"][0]["schema"] == {"type": "string", "format": "uuid"}
    assert "content" not in thing["responses"]["204"]


def test_openapi_json_endpoint_and_docs_page(client) -> None:
    document = client.get("/api/v1/openapi.json")
    assert document.status_code == 200
    paths = document.json["paths"]
    assert "/api/v1/workspaces/{workspace_id}/members/{user_id}" in paths
    page = client.get("/api/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/api/v1/workspaces/{workspace_id}" in html and "WorkspaceOut" in html
    assert "<script" not in html  # no third-party (or any) JavaScript


def test_every_route_is_in_the_table_and_the_document(app) -> None:
    table = routes(app)
    document = build_document(app)
    documented = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    assert {(r.method, r.path) for r in table} == documented
    assert all(r.path.startswith("/api/v1/") for r in table)
    public = {(r.method, r.path) for r in table if r.auth is PUBLIC}
    # login is required everywhere else; the cluster routes authenticate with the cluster's API key instead
    assert public == {
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/api/v1/clusters/{cluster_id}/install.yaml"),
        ("GET", "/api/v1/clusters/{cluster_id}/status"),
    }

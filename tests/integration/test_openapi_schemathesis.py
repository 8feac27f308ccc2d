"""Property-based run of the OpenAPI document (schemathesis) over every implemented operation.

Each operation gets up to `MAX_EXAMPLES` generated requests with an admin token, through WSGI (no
server). Path parameters are either random or the ids of real rows, so handlers run past their
lookups. Asserted: no 5xx, statuses/content types/bodies/headers conform to the document.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from portal import database_of
from tests import factories

MAX_EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def known_ids(session) -> tuple[dict[str, Any], str]:
    """Real rows whose ids the generated requests may use; returns (ids by parameter name, admin token)."""
    admin = factories.make_admin(session)
    _, token = factories.make_api_token(session, admin)
    spare, _ = factories.make_api_token(session, admin)
    customer = factories.make_customer(session)
    owner = factories.make_user(session, customer=customer)
    member = factories.make_user(session, customer=customer)
    workspace = factories.make_workspace(session, customer=customer)
    factories.make_member(session, workspace=workspace, user=owner, role="owner")
    factories.make_member(session, workspace=workspace, user=member, role="member")
    ids: dict[str, Any] = {
        "customer_id": customer.id,
        "workspace_id": workspace.id,
        "user_id": member.id,
        "token_id": spare.id,
    }
    # Domain objects: add their ids here (cluster_id, ticket_id, service_id, ...) so those handlers are exercised.
    cluster = factories.make_cluster(session, customer)
    ticket = factories.make_ticket(session, cluster=cluster)
    support_session = factories.make_session(session, ticket=ticket, node=factories.make_node(session, cluster))
    operation = factories.make_operation(session, factories.make_service(session, workspace))
    template = factories.make_template(session)
    service = factories.make_service(session, workspace, template, state="running", helm_revision=1)
    factories.make_revision(session, service)
    ids["service_id"] = service.id
    ids.update(
        cluster_id=cluster.id,
        ticket_id=ticket.id,
        session_id=support_session.id,
        operation_id=operation.id,
        template_ref=template.slug,
    )
    return {name: str(value) for name, value in ids.items()}, token


def test_api_conforms_to_its_document(app) -> None:
    with database_of(app).session() as session:
        ids, token = known_ids(session)
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)

    @schema.hook
    def flatmap_path_parameters(context, path_parameters: dict[str, Any] | None):
        if not path_parameters:
            return st.just(path_parameters)
        real = {name: ids.get(name, value) for name, value in path_parameters.items()}
        return st.sampled_from([path_parameters, real])

    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, "the document lost operations"
    for operation in operations:

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def run(case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            run()
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)

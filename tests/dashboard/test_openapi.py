"""schemathesis against the live API: every operation of the OpenAPI document, fuzzed, must answer
within its documented statuses, content types and schemas, and never with a server error.

Two kinds of input are left out of the "schema-valid data must be accepted" check only (every
other check still applies): pagination cursors, opaque tokens the API hands out, where a string no
schema can tell from a real one is rightly refused with a 400 (test_api covers that); and request
orders, whose cross-field rules (not both maximum prices zero, a duration the offers allow) a JSON
schema cannot state and are answered with a 422 (tests/matching covers them).
"""

from __future__ import annotations

from urllib.parse import urlencode

import schemathesis
from hypothesis import HealthCheck, assume, settings
from schemathesis.checks import positive_data_acceptance

from dashboard import openapi
from tests.dashboard.conftest import Api

schema = schemathesis.openapi.from_dict(openapi.document())
_PAGINATED = ("/v1/usage", "/v1/ledger", "/v1/orders", "/v1/deals", "/v1/withdrawals", "/v1/invoices")


@schema.parametrize()
# derandomize: the same examples on every run (they change with the document), so a run answers for
# the code and not for the draw; a random draw once took a missing-Authorization case as invalid data
# although the test sends the header itself.
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_openapi_document(case: schemathesis.Case, api: Api) -> None:
    # A made-up Content-Length or Transfer-Encoding is refused by aiohttp's HTTP parser with its
    # own 400 before any handler runs: HTTP framing, not this API's contract, so not drawn here.
    assume(not {name.lower() for name in (case.headers or {})} & {"content-length", "transfer-encoding"})
    # Likewise a request line past aiohttp's 8,190-byte limit gets its parser's plain 400.
    assume(len(urlencode(case.query or {}, doseq=True)) + len(case.formatted_path) < 8000)
    paginated = case.operation.path in _PAGINATED and "cursor" in (case.query or {})
    order = case.operation.path in ("/v1/requests", "/v1/packages")
    case.call_and_validate(
        base_url=api.url,
        headers={"Authorization": f"Bearer {api.key}"},
        excluded_checks=[positive_data_acceptance] if paginated or order else None,
    )


def test_the_served_document_is_the_one_tested(api: Api) -> None:
    with api.client() as client:
        assert client.get("/openapi.json").json() == openapi.document()

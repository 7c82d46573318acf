"""OpenAPI entries of the API node's own endpoints: liveness (``/healthz``), readiness (``/readyz``)
and the operator's Prometheus metrics (``/metrics``), which the deployment rather than an account
calls. Merged by ``openapi.document()``.
"""

from __future__ import annotations

from typing import Any

from dashboard.openapi_base import _AUTH_ERRORS, _SECURED, _json

PATHS: dict[str, Any] = {
    "/healthz": {"get": {"operationId": "healthz", "responses": {"200": _json("alive", {"type": "object"})}}},
    "/readyz": {
        "get": {
            "operationId": "readyz",
            "responses": {
                "200": _json("PostgreSQL and Redis answer", {"type": "object"}),
                "503": _json("a backing service does not answer", {"type": "object"}),
            },
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Operator: Prometheus metrics of this API node",
            "description": "Requests by route template and status, their latency, the ledger's "
            "balances per account kind and the open deals, in the Prometheus text format "
            "(OpenMetrics when the Accept header asks for it). Needs an API key with the "
            "operator scope, which only `ipsx key create --scopes operator` grants.",
            "security": _SECURED,
            "responses": {
                "200": {
                    "description": "the metrics",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **_AUTH_ERRORS,
            },
        }
    },
}

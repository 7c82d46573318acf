"""The OpenAPI 3.1 document of the REST API, served at ``/openapi.json``.

It is the contract the API tests hold the server to (schemathesis fuzzes every operation with it),
so a route added without its entry fails them. This module only assembles the document: each
area's paths and component schemas live in its own module (``openapi_accounts``, ``openapi_orders``,
``openapi_deals``, ``openapi_market``, ``openapi_payments``, ``openapi_withdrawals``,
``openapi_node``, ``openapi_rules``, ``openapi_resellers``) or next to its routes
(``routes_inspect``), all written with the shared vocabulary of ``openapi_base``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dashboard import (
    openapi_accounts,
    openapi_base,
    openapi_deals,
    openapi_market,
    openapi_node,
    openapi_orders,
    openapi_payments,
    openapi_resellers,
    openapi_rules,
    openapi_withdrawals,
    routes_inspect,
)

_SCHEMAS = (
    openapi_base.SCHEMAS,
    openapi_accounts.SCHEMAS,
    openapi_deals.SCHEMAS,
    openapi_orders.SCHEMAS,
    openapi_market.SCHEMAS,
    openapi_payments.SCHEMAS,
    openapi_withdrawals.SCHEMAS,
)
_PATHS = (
    openapi_node.PATHS,
    openapi_accounts.PATHS,
    openapi_orders.PATHS,
    openapi_deals.PATHS,
    openapi_market.PATHS,
    openapi_payments.PATHS,
    openapi_withdrawals.PATHS,
    openapi_rules.PATHS,
    routes_inspect.PATHS,
    openapi_resellers.PATHS,
)


def document() -> dict[str, Any]:
    """The whole document, built afresh: every area's paths and component schemas merged.

    Raises ``ValueError`` if two areas define the same path or schema, which a plain merge would
    resolve silently by dropping one.
    """
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "IPSX API",
            "version": "1",
            "description": "Accounts, API keys, balances, usage, ledger and market of the IP Sharing "
            "Exchange. "
            "Errors are RFC 9457 problem details. Amounts are exact base units (18 decimals).",
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a session token from /v1/auth/siwe, or an API key secret (ipsx_…)",
                }
            },
            "schemas": _merged("schema", _SCHEMAS),
        },
        "paths": _merged("path", _PATHS),
    }


def _merged(kind: str, parts: tuple[Mapping[str, Any], ...]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in parts:
        for name, entry in part.items():
            if name in merged:
                raise ValueError(f"the OpenAPI {kind} {name} is defined twice")
            merged[name] = entry
    return merged

"""The vocabulary every part of the OpenAPI document is written in.

Response and body builders (``_problem``, ``_json``, ``_ref``, ``_object_body``, ``_page``), the
error sets operations share (authentication, JSON bodies, paging), the paging and Idempotency-Key
parameters, the bearer security requirement, and the two component schemas every area refers to:
``Problem`` (RFC 9457 problem details) and ``Amount``. The area modules (``openapi_accounts`` …)
and the route modules that carry their own entries build on these; ``openapi.document()`` merges
``SCHEMAS`` into the document's components.
"""

from __future__ import annotations

from typing import Any

from pool.countries import COUNTRY_CODES

_PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": _PROBLEM}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object_body(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object", "required": required, "properties": properties}}
        },
    }


def _page(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": _ref(item)},
            "next_cursor": {"type": ["string", "null"]},
        },
    }


_SECURED: list[dict[str, list[str]]] = [{"bearer": []}]
_AUTH_ERRORS = {
    "401": _problem("no valid session token or API key"),
    "403": _problem("the API key lacks the scope this operation needs"),
}
_BODY_ERRORS = {
    "400": _problem("the body is not a JSON object"),
    "413": _problem("the body is too large"),
    "415": _problem("the body is not application/json"),
    "422": _problem("a field has the wrong type or size"),
}
_PAGE_PARAMS = [
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50},
    },
    {
        "name": "cursor",
        "in": "query",
        "required": False,
        "description": "opaque: the next_cursor of the previous page",
        "schema": {"type": "string", "maxLength": 512},
    },
]
_PAGE_ERRORS = {**_AUTH_ERRORS, "400": _problem("bad limit or cursor, or an unknown query parameter")}
_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "the same key from the same account places the order once; a retry gets it back",
    "schema": {"type": "string", "pattern": "^[ -~]{1,200}$"},
}

_STR = {"type": "string"}
COUNTRY: dict[str, Any] = {"enum": list(COUNTRY_CODES), "description": "ISO 3166-1 alpha-2 country code"}
_NULLABLE_STR = {"type": ["string", "null"]}

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": _STR,
            "title": _STR,
            "status": {"type": "integer"},
            "detail": _STR,
            "field": _STR,
            "request_id": _STR,
        },
    },
    "Amount": {
        "type": "object",
        "description": "Exact base units (18 decimals) as a decimal string, and the same in IPSX.",
        "required": ["base_units", "ipsx"],
        "properties": {"base_units": {"type": "string", "pattern": "^-?[0-9]+$"}, "ipsx": _STR},
    },
}

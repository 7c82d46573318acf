"""The OpenAPI 3.1 document of the REST API, served at ``/openapi.json``.

It is the contract the API tests hold the server to (schemathesis fuzzes every operation with it),
so a route added without its entry here fails them.
"""

from __future__ import annotations

from typing import Any

_PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": _PROBLEM}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_AUTH_ERRORS = {"401": _problem("no valid session token or API key")}
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
_BODY_ERRORS = {
    "400": _problem("the body is not a JSON object"),
    "413": _problem("the body is too large"),
    "415": _problem("the body is not application/json"),
    "422": _problem("a field has the wrong type or size"),
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


_STR = {"type": "string"}
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
    "Account": {
        "type": "object",
        "required": ["name", "address", "created_at"],
        "properties": {"name": _STR, "address": _STR, "created_at": _STR},
    },
    "Me": {
        "type": "object",
        "required": ["account", "key_id", "balance"],
        "properties": {
            "account": _ref("Account"),
            "key_id": _NULLABLE_STR,
            "balance": {
                "type": "object",
                "required": ["available", "reserved", "earned"],
                "properties": {
                    "available": _ref("Amount"),
                    "reserved": _ref("Amount"),
                    "earned": _ref("Amount"),
                },
            },
        },
    },
    "ApiKey": {
        "type": "object",
        "required": ["key_id", "label", "created_at", "revoked_at"],
        "properties": {"key_id": _STR, "label": _STR, "created_at": _STR, "revoked_at": _NULLABLE_STR},
    },
    "NewApiKey": {
        "allOf": [
            _ref("ApiKey"),
            {
                "type": "object",
                "required": ["secret"],
                "properties": {"secret": {"type": "string", "description": "shown once, never stored"}},
            },
        ]
    },
    "Bytes": {
        "type": "object",
        "required": ["up", "down"],
        "properties": {"up": {"type": "integer"}, "down": {"type": "integer"}},
    },
    "UsageItem": {
        "type": "object",
        "required": ["event_id", "exit_id", "protocol", "target", "outcome", "opened_at", "closed_at"],
        "properties": {
            "event_id": _STR,
            "deal_id": _NULLABLE_STR,
            "exit_id": _STR,
            "protocol": _STR,
            "target": _STR,
            "outcome": _STR,
            "opened_at": _STR,
            "closed_at": _STR,
            "gateway_bytes": _ref("Bytes"),
            "agent_bytes": {"oneOf": [_ref("Bytes"), {"type": "null"}]},
        },
    },
    "LedgerEntry": {
        "type": "object",
        "required": ["id", "kind", "debit", "credit", "amount", "reference", "created_at"],
        "properties": {
            "id": {"type": "integer"},
            "kind": _STR,
            "debit": _STR,
            "credit": _STR,
            "amount": _ref("Amount"),
            "reference": _NULLABLE_STR,
            "created_at": _STR,
        },
    },
}


def document() -> dict[str, Any]:
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "IPSX API",
            "version": "1",
            "description": "Accounts, API keys, balances, usage and ledger of the IP Sharing Exchange. "
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
            "schemas": SCHEMAS,
        },
        "paths": {
            "/healthz": {
                "get": {"operationId": "healthz", "responses": {"200": _json("alive", {"type": "object"})}}
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "responses": {
                        "200": _json("PostgreSQL and Redis answer", {"type": "object"}),
                        "503": _json("a backing service does not answer", {"type": "object"}),
                    },
                }
            },
            "/v1/auth/nonce": {
                "post": {
                    "operationId": "authNonce",
                    "summary": "A single-use nonce for a Sign-In with Ethereum message",
                    "responses": {
                        "201": _json(
                            "the nonce, and the domain and chain the message must name",
                            {
                                "type": "object",
                                "required": ["nonce", "domain", "chain_id", "expires_in"],
                                "properties": {
                                    "nonce": _STR,
                                    "domain": _STR,
                                    "chain_id": {"type": "integer"},
                                    "expires_in": {"type": "integer"},
                                },
                            },
                        )
                    },
                }
            },
            "/v1/auth/siwe": {
                "post": {
                    "operationId": "authSiwe",
                    "summary": "Exchange a signed EIP-4361 message for a session token",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["message", "signature"],
                                    "properties": {
                                        "message": {"type": "string", "maxLength": 4096},
                                        "signature": {"type": "string", "maxLength": 200},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(
                            "signed in",
                            {
                                "type": "object",
                                "required": ["token", "token_type", "expires_in", "account"],
                                "properties": {
                                    "token": _STR,
                                    "token_type": {"const": "Bearer"},
                                    "expires_in": {"type": "integer"},
                                    "account": _ref("Account"),
                                },
                            },
                        ),
                        **_BODY_ERRORS,
                        "401": _problem(
                            "not an EIP-4361 message, or wrong signature, nonce, domain, chain or time"
                        ),
                    },
                }
            },
            "/v1/me": {
                "get": {
                    "operationId": "me",
                    "security": secured,
                    "responses": {"200": _json("the caller and its balances", _ref("Me")), **_AUTH_ERRORS},
                }
            },
            "/v1/keys": {
                "get": {
                    "operationId": "listKeys",
                    "security": secured,
                    "responses": {
                        "200": _json(
                            "the caller's keys, revoked ones included",
                            {
                                "type": "object",
                                "required": ["items"],
                                "properties": {"items": {"type": "array", "items": _ref("ApiKey")}},
                            },
                        ),
                        **_AUTH_ERRORS,
                    },
                },
                "post": {
                    "operationId": "createKey",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"label": {"type": "string", "pattern": "^[ -~]{0,100}$"}},
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": _json("the new key; its secret is shown only now", _ref("NewApiKey")),
                        **_BODY_ERRORS,
                        **_AUTH_ERRORS,
                    },
                },
            },
            "/v1/keys/{key_id}": {
                "delete": {
                    "operationId": "revokeKey",
                    "security": secured,
                    "parameters": [{"name": "key_id", "in": "path", "required": True, "schema": _STR}],
                    "responses": {
                        "204": {"description": "revoked"},
                        "404": _problem("no live key of the caller has this id"),
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/v1/usage": {
                "get": {
                    "operationId": "usage",
                    "security": secured,
                    "parameters": _PAGE_PARAMS,
                    "responses": {
                        "200": _json("metered streams, newest first", _page("UsageItem")),
                        **_PAGE_ERRORS,
                    },
                }
            },
            "/v1/ledger": {
                "get": {
                    "operationId": "ledger",
                    "security": secured,
                    "parameters": _PAGE_PARAMS,
                    "responses": {
                        "200": _json(
                            "ledger entries of the caller's accounts, newest first", _page("LedgerEntry")
                        ),
                        **_PAGE_ERRORS,
                    },
                }
            },
        },
    }

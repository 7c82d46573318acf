"""OpenAPI entries of accounts (the routes in ``routes.py``): Sign-In with Ethereum, the caller and
its balances, API keys, and the account's records, metered usage and the ledger statement; with
their component schemas (``Account``, ``Me``, ``ApiKey``, ``NewApiKey``, ``Bytes``, ``UsageItem``,
``LedgerEntry``). Merged by ``openapi.document()``.
"""

from __future__ import annotations

from typing import Any

from dashboard import auth, key_rules
from dashboard.openapi_base import (
    _AUTH_ERRORS,
    _BODY_ERRORS,
    _NULLABLE_STR,
    _PAGE_ERRORS,
    _PAGE_PARAMS,
    _SECURED,
    _STR,
    _json,
    _page,
    _problem,
    _ref,
)

# Signing in is limited per client address (auth_nonce_limit, auth_siwe_limit per auth_window).
_TOO_MANY_SIGN_INS = {
    **_problem("too many of these requests from the client's address; retry after Retry-After seconds"),
    "headers": {
        "Retry-After": {
            "required": True,
            "description": "seconds until the client's address may try again",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
}

SCHEMAS: dict[str, Any] = {
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
        "required": ["key_id", "label", "scopes", "created_at", "revoked_at"],
        "properties": {
            "key_id": _STR,
            "label": _STR,
            "scopes": {
                "type": "array",
                "items": {"enum": ["proxy", "read", "trade", "keys", "withdraw", "operator"]},
            },
            "spend_limit": {"oneOf": [_ref("Amount"), {"type": "null"}]},
            "rules": {"oneOf": [key_rules.SCHEMA, {"type": "null"}]},
            "parent_key_id": _NULLABLE_STR,
            "created_at": _STR,
            "revoked_at": _NULLABLE_STR,
        },
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

PATHS: dict[str, Any] = {
    "/v1/auth/nonce": {
        "post": {
            "operationId": "authNonce",
            "summary": "A single-use nonce for a Sign-In with Ethereum message",
            "description": "The nonce signs in once, within expires_in seconds. A client address may "
            "ask for a limited number per window; past it the answer is 429.",
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
                ),
                "429": _TOO_MANY_SIGN_INS,
            },
        }
    },
    "/v1/auth/siwe": {
        "post": {
            "operationId": "authSiwe",
            "summary": "Exchange a signed EIP-4361 message for a session token",
            "description": "A client address may make a limited number of attempts per window, "
            "signed in or refused alike; past it the answer is 429.",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["message", "signature"],
                            "properties": {
                                "message": {"type": "string", "maxLength": auth.MAX_MESSAGE},
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
                "401": _problem("not an EIP-4361 message, or wrong signature, nonce, domain, chain or time"),
                "429": _TOO_MANY_SIGN_INS,
            },
        }
    },
    "/v1/me": {
        "get": {
            "operationId": "me",
            "security": _SECURED,
            "responses": {"200": _json("the caller and its balances", _ref("Me")), **_AUTH_ERRORS},
        }
    },
    "/v1/keys": {
        "get": {
            "operationId": "listKeys",
            "description": "A wallet session or a top-level key lists every key of the account; "
            "a sub-key lists only itself.",
            "security": _SECURED,
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
            "security": _SECURED,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "label": {"type": "string", "pattern": "^[ -~]{0,100}$"},
                                "scopes": {
                                    "type": "array",
                                    "items": {"enum": ["proxy", "read", "trade", "keys", "withdraw"]},
                                    "minItems": 1,
                                    "uniqueItems": True,
                                },
                                "spend_limit": {"type": "string", "pattern": "^[1-9][0-9]{0,76}$"},
                                "rules": key_rules.SCHEMA,
                            },
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
            "description": "A wallet session or a top-level key revokes any key of the account "
            "(with its sub-keys); a sub-key revokes only itself.",
            "security": _SECURED,
            "parameters": [{"name": "key_id", "in": "path", "required": True, "schema": _STR}],
            "responses": {
                "204": {"description": "revoked"},
                "404": _problem("no live key the caller may revoke has this id"),
                **_AUTH_ERRORS,
            },
        }
    },
    "/v1/usage": {
        "get": {
            "operationId": "usage",
            "security": _SECURED,
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
            "security": _SECURED,
            "parameters": _PAGE_PARAMS,
            "responses": {
                "200": _json("ledger entries of the caller's accounts, newest first", _page("LedgerEntry")),
                **_PAGE_ERRORS,
            },
        }
    },
}

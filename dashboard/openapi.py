"""The OpenAPI 3.1 document of the REST API, served at ``/openapi.json``.

It is the contract the API tests hold the server to (schemathesis fuzzes every operation with it),
so a route added without its entry here fails them.
"""

from __future__ import annotations

from typing import Any

from dashboard import key_rules

_PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": _PROBLEM}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_AUTH_ERRORS = {
    "401": _problem("no valid session token or API key"),
    "403": _problem("the API key lacks the scope this operation needs"),
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
_BASE_UNITS = {
    "description": "base units (18 decimals), as a decimal string or an integer",
    "anyOf": [{"type": "string", "pattern": "^[0-9]{1,78}$"}, {"type": "integer", "minimum": 0}],
}
_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "the same key from the same account places the order once; a retry gets it back",
    "schema": {"type": "string", "pattern": "^[ -~]{1,200}$"},
}
_MARKET_ERRORS = {
    "403": _problem("the exit belongs to another provider"),
    "404": _problem("no live exit has this id"),
    "409": _problem("an order with this id exists, or the book changed meanwhile"),
    "503": _problem("no API node runs the market right now"),
}
_BODY_ERRORS = {
    "400": _problem("the body is not a JSON object"),
    "413": _problem("the body is too large"),
    "415": _problem("the body is not application/json"),
    "422": _problem("a field has the wrong type or size"),
}


_SCHEDULE = {
    "type": "string",
    "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$",
    "description": "the daily UTC window the offer trades in (22:00-07:00 wraps midnight); its deals end "
    "before the window closes",
}
_UNIX_TIME = {
    "type": "number",
    "minimum": 0,
    "maximum": 10**11,
    "description": "unix seconds; starts_at to expires_at is the time frame a request's deals may open in",
}
_WITHDRAWAL_ID = {
    "name": "withdrawal_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}


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


_STR = {"type": "string"}
_NULLABLE_STR = {"type": ["string", "null"]}
_HASH = {"type": "string", "pattern": "^0x[0-9a-f]{64}$"}
_DIGITS = {"type": "string", "pattern": "^[0-9]+$"}
_ANCHOR_RECORD = {
    "version": {"const": 1},
    "deal_id": _STR,
    "requester": _STR,
    "provider": _STR,
    "exit_id": _STR,
    "price_per_gb": _DIGITS,
    "price_per_hour": _DIGITS,
    "billable_bytes": {"type": "integer", "minimum": 0},
    "charge": _DIGITS,
    "commission": _DIGITS,
    "settled_at": {"type": "integer", "minimum": 0},
}
_ANCHOR_PROOF = {
    "deal_id": _STR,
    "record": {"type": "object", "required": list(_ANCHOR_RECORD), "properties": _ANCHOR_RECORD},
    "encoded_record": {"type": "string", "pattern": "^0x([0-9a-f]{2})*$"},
    "leaf": _HASH,
    "leaf_index": {"type": "integer", "minimum": 0},
    "proof": {"type": "array", "items": _HASH},
    "batch_id": {"type": "integer", "minimum": 1},
    "root": _HASH,
    "record_count": {"type": "integer", "minimum": 1},
    "contract": {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"},
    "chain_id": {"type": "integer"},
    "tx_hash": _HASH,
    "block_number": {"type": "integer", "minimum": 0},
}

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
    "Deal": {
        "type": "object",
        "required": ["deal_id", "role", "state", "exit_id", "price_per_gb", "price_per_hour", "reserve"],
        "properties": {
            "deal_id": _STR,
            "role": {"enum": ["requester", "provider"]},
            "state": {
                "enum": [
                    "proposed",
                    "active",
                    "completed",
                    "cancelled",
                    "expired",
                    "disputed",
                    "resolved",
                    "settled",
                ]
            },
            "exit_id": _STR,
            "requester": _STR,
            "provider": _STR,
            "spot": {"type": "boolean"},
            "price_per_gb": _ref("Amount"),
            "price_per_hour": _ref("Amount"),
            "reserve": _ref("Amount"),
            "charge": {"oneOf": [_ref("Amount"), {"type": "null"}]},
            "commission": {"oneOf": [_ref("Amount"), {"type": "null"}]},
            "billable_bytes": {"type": ["integer", "null"]},
            "created_at": _STR,
            "transitions": {"type": "array", "items": {"type": "object"}},
        },
    },
    "AnchorProof": {
        "type": "object",
        "description": "A settled deal's inclusion proof in a batch anchored on DealAnchor. The leaf is "
        "keccak256(keccak256(encoded_record)); encoded_record is the ABI encoding of the record's fields "
        "(version, deal_id, requester, provider, exit_id, price_per_gb, price_per_hour, billable_bytes, "
        "charge, commission, settled_at), built from the deal as the books hold it now.",
        "required": list(_ANCHOR_PROOF),
        "properties": _ANCHOR_PROOF,
    },
    "Order": {
        "type": "object",
        "required": ["order_id", "side", "state", "filled", "terms", "created_at"],
        "properties": {
            "order_id": _STR,
            "side": {"enum": ["offer", "request"]},
            "state": {"enum": ["open", "done", "cancelled", "expired"]},
            "filled": {"type": "integer"},
            "terms": {"type": "object"},
            "created_at": _STR,
        },
    },
    "Placed": {
        "type": "object",
        "required": ["order_id", "side"],
        "properties": {
            "order_id": _STR,
            "side": {"enum": ["offer", "request"]},
            "resting": {"type": "boolean"},
            "deals": {"type": "array", "items": {"type": "object"}},
            "stopped_for_funds": {"type": "boolean"},
            "replayed": {"type": "boolean"},
            "state": _STR,
            "filled": {"type": "integer"},
            "deal_ids": {"type": "array", "items": _STR},
        },
    },
    "Exit": {
        "type": "object",
        "required": ["exit_id", "bind", "country", "region", "city", "asn", "type"],
        "properties": {
            "exit_id": _STR,
            "bind": _STR,
            "country": _STR,
            "region": _STR,
            "city": _STR,
            "asn": {"type": "integer"},
            "type": {"enum": ["residential", "mobile", "datacenter"]},
            "health": _ref("ExitHealth"),
        },
    },
    "ExitHealth": {
        "type": "object",
        "description": "decayed over the last minutes, over every gateway node",
        "required": ["state", "success_rate", "dial_latency_ms", "throughput_bps", "recent_errors"],
        "properties": {
            "state": {"enum": ["healthy", "degraded", "quarantined", "probing"]},
            "success_rate": {"type": ["number", "null"], "description": "dials that got through"},
            "attempts": {"type": "number"},
            "dial_latency_ms": {"type": ["number", "null"]},
            "throughput_bps": {"type": ["number", "null"], "description": "bits per second of stream time"},
            "stream_success_rate": {"type": ["number", "null"]},
            "quarantined_until": {"type": ["number", "null"], "description": "unix seconds"},
            "trips": {"type": "integer"},
            "recent_errors": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Channel": {
        "type": "object",
        "required": ["channel_id", "role", "sender", "receiver", "deposit", "state", "proof_balance"],
        "properties": {
            "channel_id": _STR,
            "role": {"enum": ["requester", "provider"]},
            "sender": _STR,
            "receiver": _STR,
            "deposit": _ref("Amount"),
            "state": {"enum": ["open", "closing", "settled"]},
            "proof_balance": _ref("Amount"),
            "proof_signature": {
                "type": ["string", "null"],
                "description": "the sender's balance proof of proof_balance: on a payout channel, the "
                "operator's promise the provider can close the channel with",
            },
            "closing_balance": {"oneOf": [_ref("Amount"), {"type": "null"}]},
            "settle_after": {"type": ["integer", "null"]},
        },
    },
    "Invoice": {
        "type": "object",
        "required": ["invoice_id", "channel_id", "amount", "cumulative", "deal_ids", "state", "created_at"],
        "properties": {
            "invoice_id": {"type": "integer"},
            "channel_id": _STR,
            "amount": _ref("Amount"),
            "cumulative": _ref("Amount"),
            "deal_ids": {"type": "array", "items": _STR},
            "state": {"enum": ["open", "paid"]},
            "created_at": _STR,
            "paid_at": _NULLABLE_STR,
        },
    },
    "Withdrawal": {
        "type": "object",
        "required": ["withdrawal_id", "source", "amount", "address", "state", "created_at"],
        "properties": {
            "withdrawal_id": {"type": "integer"},
            "source": {"enum": ["balance", "earnings"]},
            "amount": _ref("Amount"),
            "address": {"type": "string", "description": "the account's wallet, where the tokens go"},
            "state": {"enum": ["pending", "completed", "rejected", "cancelled"]},
            "tx_hash": _NULLABLE_STR,
            "reason": _NULLABLE_STR,
            "key_id": _NULLABLE_STR,
            "created_at": _STR,
            "resolved_at": _NULLABLE_STR,
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
    """The whole document: the paths below and those of the route modules with their own entries."""
    from dashboard import openapi_rules, routes_inspect, routes_resellers  # they import this module's helpers

    doc = _document()
    doc["paths"].update(openapi_rules.PATHS)
    doc["paths"].update(routes_inspect.PATHS)
    doc["paths"].update(routes_resellers.PATHS)
    return doc


def _document() -> dict[str, Any]:
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
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
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Operator: Prometheus metrics of this API node",
                    "description": "Requests by route template and status, their latency, the ledger's "
                    "balances per account kind and the open deals, in the Prometheus text format "
                    "(OpenMetrics when the Accept header asks for it). Needs an API key with the "
                    "operator scope, which only `ipsx key create --scopes operator` grants.",
                    "security": secured,
                    "responses": {
                        "200": {
                            "description": "the metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_AUTH_ERRORS,
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
            "/v1/offers": {
                "post": {
                    "operationId": "placeOffer",
                    "summary": "Offer one of your live exits",
                    "security": secured,
                    "parameters": [_IDEMPOTENCY],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["exit_id"],
                                    "properties": {
                                        "exit_id": {"type": "string", "maxLength": 128},
                                        "price_per_gb": _BASE_UNITS,
                                        "price_per_hour": _BASE_UNITS,
                                        "min_duration_s": {"type": "integer", "minimum": 5},
                                        "max_duration_s": {"type": "integer", "maximum": 2592000},
                                        "protocols": {
                                            "type": "array",
                                            "items": {"enum": ["http", "https", "socks5"]},
                                            "minItems": 1,
                                        },
                                        "sharing": {"enum": ["dedicated", "shared", "both"]},
                                        "shared_capacity": {
                                            "type": "integer",
                                            "minimum": 1,
                                            "maximum": 10000,
                                        },
                                        "schedule": _SCHEDULE,
                                        "expires_at": _UNIX_TIME,
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": _json("placed, with the deals it opened", _ref("Placed")),
                        "200": _json("this Idempotency-Key's order, placed before", _ref("Placed")),
                        **_BODY_ERRORS,
                        **_AUTH_ERRORS,
                        **_MARKET_ERRORS,
                    },
                }
            },
            "/v1/requests": {
                "post": {
                    "operationId": "placeRequest",
                    "summary": "Ask for IPs: filters, count, duration, traffic allowance, max prices",
                    "description": "Each deal it opens reserves its cost at the offer's prices from "
                    "your balance; what cannot be filled rests on the book unless rest is false.",
                    "security": secured,
                    "parameters": [_IDEMPOTENCY],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "filters": {
                                            "type": "object",
                                            "properties": {
                                                "country": {"type": "string", "pattern": "^[a-z]{2}$"},
                                                "type": {"enum": ["residential", "mobile", "datacenter"]},
                                                "protocol": {"enum": ["http", "https", "socks5"]},
                                            },
                                        },
                                        "ips": {"type": "integer", "minimum": 1, "maximum": 10000},
                                        "duration_s": {"type": "integer", "minimum": 5, "maximum": 2592000},
                                        "traffic_bytes": {"type": "integer", "minimum": 0},
                                        "max_price_per_gb": _BASE_UNITS,
                                        "max_price_per_hour": _BASE_UNITS,
                                        "dedicated": {"type": "boolean"},
                                        "rest": {"type": "boolean"},
                                        "starts_at": _UNIX_TIME,
                                        "expires_at": _UNIX_TIME,
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": _json("placed, with the deals it opened", _ref("Placed")),
                        "200": _json("this Idempotency-Key's order, placed before", _ref("Placed")),
                        **_BODY_ERRORS,
                        **_AUTH_ERRORS,
                        **_MARKET_ERRORS,
                    },
                }
            },
            "/v1/packages": {
                "post": {
                    "operationId": "placePackage",
                    "summary": "Buy a package: IPs for a duration with a total traffic allowance",
                    "description": "Placed as the request order it maps onto: each IP's deal gets an "
                    "even share of the traffic, rounded up; it rests unless rest is false.",
                    "security": secured,
                    "parameters": [_IDEMPOTENCY],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "filters": {"type": "object"},
                                        "count": {"type": "integer", "minimum": 1, "maximum": 10000},
                                        "duration_s": {"type": "integer", "minimum": 5, "maximum": 2592000},
                                        "total_traffic_bytes": {"type": "integer", "minimum": 0},
                                        "max_price_per_gb": _BASE_UNITS,
                                        "max_price_per_hour": _BASE_UNITS,
                                        "dedicated": {"type": "boolean"},
                                        "rest": {"type": "boolean"},
                                        "starts_at": _UNIX_TIME,
                                        "expires_at": _UNIX_TIME,
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": _json("placed, with the deals it opened", _ref("Placed")),
                        "200": _json("this Idempotency-Key's order, placed before", _ref("Placed")),
                        **_BODY_ERRORS,
                        **_AUTH_ERRORS,
                        **_MARKET_ERRORS,
                    },
                }
            },
            "/v1/orders": {
                "get": {
                    "operationId": "listOrders",
                    "security": secured,
                    "parameters": _PAGE_PARAMS,
                    "responses": {"200": _json("your orders, newest first", _page("Order")), **_PAGE_ERRORS},
                }
            },
            "/v1/orders/{order_id}": {
                "patch": {
                    "operationId": "amendOrder",
                    "summary": "Change an open order's prices (offer) or IPs and max prices (request)",
                    "description": "A changed price re-queues the order (it loses time priority) and "
                    "may trade at once; fewer IPs keep it.",
                    "security": secured,
                    "parameters": [{"name": "order_id", "in": "path", "required": True, "schema": _STR}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "price_per_gb": _BASE_UNITS,
                                        "price_per_hour": _BASE_UNITS,
                                        "ips": {"type": "integer", "minimum": 1, "maximum": 10000},
                                        "max_price_per_gb": _BASE_UNITS,
                                        "max_price_per_hour": _BASE_UNITS,
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json("amended, with the deals it opened", {"type": "object"}),
                        "404": _problem("you have no open order with this id"),
                        "503": _problem("no API node runs the market right now"),
                        **_BODY_ERRORS,
                        **_AUTH_ERRORS,
                    },
                },
                "delete": {
                    "operationId": "cancelOrder",
                    "security": secured,
                    "parameters": [{"name": "order_id", "in": "path", "required": True, "schema": _STR}],
                    "responses": {
                        "204": {"description": "cancelled"},
                        "404": _problem("you have no open order with this id"),
                        "503": _problem("no API node runs the market right now"),
                        **_AUTH_ERRORS,
                    },
                },
            },
            "/v1/deals": {
                "get": {
                    "operationId": "listDeals",
                    "security": secured,
                    "parameters": _PAGE_PARAMS,
                    "responses": {
                        "200": _json("your deals as requester or provider, newest first", _page("Deal")),
                        **_PAGE_ERRORS,
                    },
                }
            },
            "/v1/deals/{deal_id}": {
                "get": {
                    "operationId": "getDeal",
                    "security": secured,
                    "parameters": [{"name": "deal_id", "in": "path", "required": True, "schema": _STR}],
                    "responses": {
                        "200": _json("the deal and every transition, with who caused it", _ref("Deal")),
                        "404": _problem("you have no deal with this id"),
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/v1/deals/{deal_id}/reports": {
                "post": {
                    "operationId": "reportOnDeal",
                    "summary": "Report on your deal as its provider (ready, serving, stopped) or "
                    "requester (accepted, ok, complaint); either may cancel it before it is active",
                    "description": "A complaint disputes the deal: its reserve stays held until an "
                    "operator decides what it bills.",
                    "security": secured,
                    "parameters": [{"name": "deal_id", "in": "path", "required": True, "schema": _STR}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["report"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "report": {
                                            "type": "string",
                                            "enum": [
                                                "ready",
                                                "serving",
                                                "stopped",
                                                "accepted",
                                                "ok",
                                                "complaint",
                                                "cancel",
                                            ],
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json("the deal's state after the report", {"type": "object"}),
                        "404": _problem("you are no party to an open deal with this id"),
                        "409": _problem("the deal's state does not take this report"),
                        "503": _problem("no API node runs the market right now"),
                        **_BODY_ERRORS,
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/v1/deals/{deal_id}/anchor": {
                "get": {
                    "operationId": "getDealAnchor",
                    "summary": "A settled deal's record and its inclusion proof in a batch anchored on-chain",
                    "description": "For the deal's requester or provider, or an operator key. Check it "
                    "with `ipsx verify DEAL`, or with DealAnchor.verify(batch_id, leaf, proof).",
                    "security": secured,
                    "parameters": [{"name": "deal_id", "in": "path", "required": True, "schema": _STR}],
                    "responses": {
                        "200": _json("the record, leaf, proof and anchored batch", _ref("AnchorProof")),
                        "404": _problem("you have no deal with this id in an anchored batch (yet)"),
                        "409": _problem("the deal is no longer a settled deal"),
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/v1/deals/{deal_id}/resolution": {
                "post": {
                    "operationId": "resolveDispute",
                    "summary": "Operator: decide what a disputed deal bills; the market then settles it",
                    "description": "Needs an API key with the operator scope, which only "
                    "`ipsx key create --scopes operator` grants.",
                    "security": secured,
                    "parameters": [{"name": "deal_id", "in": "path", "required": True, "schema": _STR}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {
                                            "type": "object",
                                            "required": ["bill"],
                                            "additionalProperties": False,
                                            "properties": {
                                                "bill": {
                                                    "type": "string",
                                                    "enum": ["gateway", "agent", "lower", "none"],
                                                }
                                            },
                                        },
                                        {
                                            "type": "object",
                                            "required": ["billable_bytes"],
                                            "additionalProperties": False,
                                            "properties": {
                                                "billable_bytes": {"type": "integer", "minimum": 0}
                                            },
                                        },
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json("the deal, resolved", {"type": "object"}),
                        "404": _problem("no deal has this id"),
                        "409": _problem("the deal is not disputed"),
                        "503": _problem("no API node runs the market right now"),
                        **_BODY_ERRORS,
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/v1/me/preferences": {
                "get": {
                    "operationId": "getPreferences",
                    "security": secured,
                    "responses": {
                        "200": _json("your defaults for traffic without an order", {"type": "object"}),
                        **_AUTH_ERRORS,
                    },
                },
                "put": {
                    "operationId": "putPreferences",
                    "summary": "Set the most your spot deals may cost per GB (null: the market's default)",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "spot_max_price_per_gb": {
                                            "oneOf": [
                                                {"type": "string", "pattern": "^[1-9][0-9]{0,77}$"},
                                                {"type": "null"},
                                            ]
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json("the preferences now", {"type": "object"}),
                        **_BODY_ERRORS,
                        **_AUTH_ERRORS,
                    },
                },
            },
            "/v1/profiles/{name}": {
                "get": {
                    "operationId": "profile",
                    "summary": "An account's record as provider and requester, from its deals' outcomes",
                    "security": secured,
                    "parameters": [{"name": "name", "in": "path", "required": True, "schema": _STR}],
                    "responses": {
                        "200": _json(
                            "deals, settlements, disputes, bytes and the provider rating; the money "
                            "(earned, spent) only for the account itself and the operator, else null",
                            {"type": "object", "required": ["name", "provider", "requester"]},
                        ),
                        "404": _problem("no deals are recorded for this account"),
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/v1/market/depth": {
                "get": {
                    "operationId": "marketDepth",
                    "summary": "Public: resting offers with room, by price level",
                    "parameters": [
                        {
                            "name": "country",
                            "in": "query",
                            "schema": {"type": "string", "pattern": "^[a-z]{2}$"},
                        },
                        {
                            "name": "type",
                            "in": "query",
                            "schema": {"enum": ["residential", "mobile", "datacenter"]},
                        },
                    ],
                    "responses": {
                        "200": _json("price levels", {"type": "object", "required": ["levels"]}),
                        "400": _problem("a bad filter or an unknown parameter"),
                        "503": _problem("no API node runs the market right now"),
                    },
                }
            },
            "/v1/market/prices": {
                "get": {
                    "operationId": "marketPrices",
                    "summary": "Public: median deal prices per country and IP type over 24 hours",
                    "responses": {
                        "200": _json(
                            "the price index", {"type": "object", "required": ["window_hours", "index"]}
                        ),
                        "400": _problem("an unknown parameter"),
                    },
                }
            },
            "/v1/exits": {
                "get": {
                    "operationId": "myExits",
                    "summary": "Your live exits as a provider (what your agents declared), to offer them",
                    "security": secured,
                    "responses": {
                        "200": _json(
                            "every live exit of the caller's wallet",
                            {
                                "type": "object",
                                "required": ["items"],
                                "properties": {"items": {"type": "array", "items": _ref("Exit")}},
                            },
                        ),
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/v1/orders/{order_id}/pac": {
                "get": {
                    "operationId": "orderPac",
                    "summary": "The PAC file URL of a request order, for browsers and OS proxy settings",
                    "security": secured,
                    "parameters": [
                        {"name": "order_id", "in": "path", "required": True, "schema": _STR},
                    ],
                    "responses": {
                        "200": _json(
                            "the capability URL of the PAC file, and the proxy user name to give",
                            {
                                "type": "object",
                                "required": ["order_id", "pac_url", "proxy", "proxy_username"],
                                "properties": {
                                    "order_id": _STR,
                                    "pac_url": _STR,
                                    "proxy": _STR,
                                    "proxy_username": _STR,
                                },
                            },
                        ),
                        "404": _problem("no order of the caller has this id"),
                        "409": _problem("the order is an offer"),
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/pac/{account}/{order_id}/{token}.pac": {
                "get": {
                    "operationId": "pacFile",
                    "summary": "Public: an order's PAC file, to whoever holds its capability URL",
                    "parameters": [
                        {"name": name, "in": "path", "required": True, "schema": _STR}
                        for name in ("account", "order_id", "token")
                    ],
                    "responses": {
                        "200": {
                            "description": "the proxy auto-config script",
                            "content": {"application/x-ns-proxy-autoconfig": {"schema": _STR}},
                        },
                        "404": _problem("no PAC file at this URL"),
                    },
                }
            },
            "/v1/payments/domain": {
                "get": {
                    "operationId": "paymentDomain",
                    "summary": "Public: the EIP-712 domain balance proofs are signed for",
                    "responses": {
                        "200": _json(
                            "the chain id and the PaymentChannels contract",
                            {
                                "type": "object",
                                "required": ["chain_id", "verifying_contract"],
                                "properties": {"chain_id": {"type": "integer"}, "verifying_contract": _STR},
                            },
                        ),
                        "503": _problem("this API node takes no channel payments"),
                    },
                }
            },
            "/v1/channels": {
                "get": {
                    "operationId": "myChannels",
                    "summary": "Your open payment channels, as the chain watcher confirmed them",
                    "security": secured,
                    "responses": {
                        "200": _json(
                            "the caller's channels",
                            {
                                "type": "object",
                                "required": ["items"],
                                "properties": {"items": {"type": "array", "items": _ref("Channel")}},
                            },
                        ),
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/v1/channels/{channel_id}/consent": {
                "post": {
                    "operationId": "channelConsent",
                    "summary": "The operator's consent to close your requester channel cooperatively",
                    "description": "Given once every invoice is paid, at the balance of your latest proof, "
                    "which it returns with it: submit both to cooperativeClose (ipsx channel close).",
                    "security": secured,
                    "parameters": [{"name": "channel_id", "in": "path", "required": True, "schema": _STR}],
                    "responses": {
                        "200": _json(
                            "the balance, your proof of it and the operator's consent",
                            {
                                "type": "object",
                                "required": [
                                    "channel_id",
                                    "balance",
                                    "balance_signature",
                                    "consent_signature",
                                ],
                                "properties": {
                                    "channel_id": _STR,
                                    "balance": _ref("Amount"),
                                    "balance_signature": _NULLABLE_STR,
                                    "consent_signature": _STR,
                                },
                            },
                        ),
                        "404": _problem("no requester channel of the caller has this id"),
                        "409": _problem("the channel is closing or settled, or invoices are unpaid"),
                        "503": _problem("this API node does not sign for the operator"),
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/v1/invoices": {
                "get": {
                    "operationId": "listInvoices",
                    "summary": "What your settled deals cost, billed to your channel, newest first",
                    "security": secured,
                    "parameters": _PAGE_PARAMS,
                    "responses": {"200": _json("the caller's invoices", _page("Invoice")), **_PAGE_ERRORS},
                }
            },
            "/v1/invoices/{invoice_id}/payment": {
                "post": {
                    "operationId": "payInvoice",
                    "summary": "Pay an invoice with your balance proof of its cumulative amount",
                    "description": "The proof is your EIP-712 BalanceProof(channelId, balance) signature "
                    "for the domain of /v1/payments/domain; it pays this invoice and every earlier one of "
                    "the channel.",
                    "security": secured,
                    "parameters": [
                        {
                            "name": "invoice_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 1},
                        }
                    ],
                    "requestBody": _object_body(
                        ["signature"], {"signature": {"type": "string", "pattern": "^0x[0-9a-fA-F]{130}$"}}
                    ),
                    "responses": {
                        "200": _json("the invoice, paid", _ref("Invoice")),
                        "404": _problem("no invoice of the caller has this id"),
                        "422": _problem("the balance proof was refused (reason says why)"),
                        "503": _problem("this API node takes no channel payments"),
                        **_BODY_ERRORS,
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/v1/withdrawals": {
                "get": {
                    "operationId": "listWithdrawals",
                    "security": secured,
                    "parameters": _PAGE_PARAMS,
                    "responses": {
                        "200": _json("the caller's withdrawals, newest first", _page("Withdrawal")),
                        **_PAGE_ERRORS,
                    },
                },
                "post": {
                    "operationId": "requestWithdrawal",
                    "summary": "Reserve funds to be sent to your wallet address (needs the withdraw scope)",
                    "security": secured,
                    "parameters": [
                        {**_IDEMPOTENCY, "description": "the same key from the same account asks once"}
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["amount"],
                                    "properties": {
                                        "amount": {"type": "string", "pattern": "^[1-9][0-9]{0,77}$"},
                                        "source": {"enum": ["balance", "earnings"], "default": "balance"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": _json("the withdrawal, pending", _ref("Withdrawal")),
                        "200": _json(
                            "the withdrawal this Idempotency-Key already asked for", _ref("Withdrawal")
                        ),
                        "402": _problem("the balance or earnings do not cover the amount"),
                        "409": _problem("the Idempotency-Key was used for another withdrawal"),
                        **_BODY_ERRORS,
                        **_AUTH_ERRORS,
                    },
                },
            },
            "/v1/withdrawals/{withdrawal_id}": {
                "parameters": [_WITHDRAWAL_ID],
                "get": {
                    "operationId": "getWithdrawal",
                    "security": secured,
                    "responses": {
                        "200": _json("the withdrawal", _ref("Withdrawal")),
                        "404": _problem("no withdrawal of the caller has this id"),
                        **_AUTH_ERRORS,
                    },
                },
                "delete": {
                    "operationId": "cancelWithdrawal",
                    "summary": "Take back a pending withdrawal (needs the withdraw scope)",
                    "security": secured,
                    "responses": {
                        "200": _json("the withdrawal, cancelled", _ref("Withdrawal")),
                        "404": _problem("no withdrawal of the caller has this id"),
                        "409": _problem("the withdrawal is no longer pending"),
                        **_AUTH_ERRORS,
                    },
                },
            },
            "/v1/withdrawals/{withdrawal_id}/completion": {
                "post": {
                    "operationId": "completeWithdrawal",
                    "summary": "Operator: the tokens were sent in this transaction",
                    "security": secured,
                    "parameters": [_WITHDRAWAL_ID],
                    "requestBody": _object_body(
                        ["tx_hash"], {"tx_hash": {"type": "string", "pattern": "^0x[0-9a-fA-F]{64}$"}}
                    ),
                    "responses": {
                        "200": _json("the withdrawal, completed", _ref("Withdrawal")),
                        "404": _problem("no withdrawal has this id"),
                        "409": _problem("the withdrawal is no longer pending"),
                        **_BODY_ERRORS,
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/v1/withdrawals/{withdrawal_id}/rejection": {
                "post": {
                    "operationId": "rejectWithdrawal",
                    "summary": "Operator: refuse the withdrawal; its funds go back",
                    "security": secured,
                    "parameters": [_WITHDRAWAL_ID],
                    "requestBody": _object_body(
                        ["reason"], {"reason": {"type": "string", "minLength": 1, "maxLength": 200}}
                    ),
                    "responses": {
                        "200": _json("the withdrawal, rejected", _ref("Withdrawal")),
                        "404": _problem("no withdrawal has this id"),
                        "409": _problem("the withdrawal is no longer pending"),
                        **_BODY_ERRORS,
                        **_AUTH_ERRORS,
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

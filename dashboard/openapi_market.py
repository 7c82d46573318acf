"""OpenAPI entries of the market around orders and deals (``routes_market.py``): the caller's spot
preferences, accounts' profiles, the public depth and price index, and a provider's live exits
with their health (the ``Exit`` and ``ExitHealth`` schemas). Merged by ``openapi.document()``.
"""

from __future__ import annotations

from typing import Any

from dashboard.openapi_base import _AUTH_ERRORS, _BODY_ERRORS, _SECURED, _STR, COUNTRY, _json, _problem, _ref

SCHEMAS: dict[str, Any] = {
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
}

PATHS: dict[str, Any] = {
    "/v1/me/preferences": {
        "get": {
            "operationId": "getPreferences",
            "security": _SECURED,
            "responses": {
                "200": _json("your defaults for traffic without an order", {"type": "object"}),
                **_AUTH_ERRORS,
            },
        },
        "put": {
            "operationId": "putPreferences",
            "summary": "Set the most your spot deals may cost per GB (null: the market's default)",
            "security": _SECURED,
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
            "security": _SECURED,
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
                    "schema": COUNTRY,
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
                "200": _json("the price index", {"type": "object", "required": ["window_hours", "index"]}),
                "400": _problem("an unknown parameter"),
            },
        }
    },
    "/v1/exits": {
        "get": {
            "operationId": "myExits",
            "summary": "Your live exits as a provider (what your agents declared), to offer them",
            "security": _SECURED,
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
}

"""OpenAPI entries of market orders (``routes_orders.py``): placing offers, requests and packages
(with an Idempotency-Key), listing, amending and cancelling orders, and a request order's PAC file;
with the ``Order`` and ``Placed`` schemas and the order terms' field schemas (prices in base
units, schedule, time frame). Merged by ``openapi.document()``.
"""

from __future__ import annotations

from typing import Any

from dashboard.openapi_base import (
    _AUTH_ERRORS,
    _BODY_ERRORS,
    _IDEMPOTENCY,
    _PAGE_ERRORS,
    _PAGE_PARAMS,
    _SECURED,
    _STR,
    COUNTRY,
    _json,
    _page,
    _problem,
    _ref,
)

_BASE_UNITS = {
    "description": "base units (18 decimals), as a decimal string or an integer",
    "anyOf": [{"type": "string", "pattern": "^[0-9]{1,78}$"}, {"type": "integer", "minimum": 0}],
}
_MARKET_ERRORS = {
    "403": _problem("the exit belongs to another provider"),
    "404": _problem("no live exit has this id"),
    "409": _problem("an order with this id exists, or the book changed meanwhile"),
    "503": _problem("no API node runs the market right now"),
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

SCHEMAS: dict[str, Any] = {
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
}

PATHS: dict[str, Any] = {
    "/v1/offers": {
        "post": {
            "operationId": "placeOffer",
            "summary": "Offer one of your live exits",
            "security": _SECURED,
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
            "security": _SECURED,
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
                                        "country": COUNTRY,
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
            "security": _SECURED,
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
            "security": _SECURED,
            "parameters": _PAGE_PARAMS,
            "responses": {"200": _json("your orders, newest first", _page("Order")), **_PAGE_ERRORS},
        }
    },
    "/v1/orders/{order_id}": {
        "patch": {
            "operationId": "amendOrder",
            "summary": "Change an open order's prices (offer) or IPs and max prices (request)",
            "description": "A changed price re-queues the order (it loses time priority) and "
            "may trade at once; fewer IPs keep it. The deals it opens count against the key the "
            "order was placed with, so a key with a spend limit amends only its own requests.",
            "security": _SECURED,
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
                "403": _problem("a key with a spend limit amends only the requests placed with it"),
                "404": _problem("you have no open order with this id"),
                "503": _problem("no API node runs the market right now"),
                **_BODY_ERRORS,
                **_AUTH_ERRORS,
            },
        },
        "delete": {
            "operationId": "cancelOrder",
            "security": _SECURED,
            "parameters": [{"name": "order_id", "in": "path", "required": True, "schema": _STR}],
            "responses": {
                "204": {"description": "cancelled"},
                "404": _problem("you have no open order with this id"),
                "503": _problem("no API node runs the market right now"),
                **_AUTH_ERRORS,
            },
        },
    },
    "/v1/orders/{order_id}/pac": {
        "get": {
            "operationId": "orderPac",
            "summary": "The PAC file URL of a request order, for browsers and OS proxy settings",
            "security": _SECURED,
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
}

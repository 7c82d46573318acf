"""OpenAPI entries of the reseller API (``routes_resellers``, ``routes_reseller_subusers``,
``routes_reseller_reports``): the reseller's settings, its sub-users with their limits, their API
keys and transfers, and the monthly usage report; every operation may answer 403 for an account
that is no reseller. No component schemas of its own. Merged by ``openapi.document()``.
"""

from __future__ import annotations

from typing import Any

from billing import resellers
from dashboard.openapi_base import _AUTH_ERRORS, _BODY_ERRORS, _PAGE_PARAMS, _SECURED, _json, _problem, _ref

_NOT_RESELLER = {
    **_AUTH_ERRORS,
    "403": _problem("the key lacks the scope, or the account is not a reseller"),
}
_NAME_PARAM = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9_]{1,32}$"},
    "description": "the sub-user's name: its proxy user name on the reseller's listener",
}
_UNKNOWN = {"404": _problem("the caller has no sub-user by this name")}
_AMOUNT_OR_NULL = {"oneOf": [_ref("Amount"), {"type": "null"}]}
_QUOTA = {"type": ["integer", "null"], "minimum": 0, "maximum": 2**63 - 1, "description": "bytes per month"}
_LIMIT = {
    "type": ["string", "null"],
    "pattern": "^[0-9]{1,78}$",
    "description": "base units per month: settled charges, markups and open deals' traffic",
}
_RESELLER = {
    "type": "object",
    "required": ["name", "brand", "header_token", "markup_bps", "endpoint", "markup_earned", "created_at"],
    "properties": {
        "name": {"type": "string"},
        "brand": {"type": "string"},
        "header_token": {"type": "string", "description": "the X-<token>-* headers of the listener"},
        "markup_bps": {"type": "integer", "description": "basis points of each settled charge"},
        "endpoint": {
            "type": "object",
            "properties": {"host": {"type": ["string", "null"]}, "port": {"type": ["integer", "null"]}},
        },
        "markup_earned": _ref("Amount"),
        "created_at": {"type": "string"},
    },
}
_SUBUSER = {
    "type": "object",
    "required": ["name", "quota_bytes", "spend_limit", "suspended", "created_at"],
    "properties": {
        "name": {"type": "string"},
        "quota_bytes": {"type": ["integer", "null"]},
        "spend_limit": _AMOUNT_OR_NULL,
        "suspended": {"type": "boolean"},
        "created_at": {"type": "string"},
        "balance": {"type": "object"},
        "month": {
            "type": ["object", "null"],
            "properties": {
                "used_bytes": {"type": "integer"},
                "spent": _ref("Amount"),
                "refusal": {"enum": ["suspended", "quota_exceeded", "spend_limit_reached", None]},
            },
        },
    },
}
_KEYS = {
    "type": "object",
    "required": ["items"],
    "properties": {"items": {"type": "array", "items": _ref("ApiKey")}},
}
_USAGE_ROW = {
    "type": "object",
    "properties": {
        "streams": {"type": "integer"},
        "bytes": {"type": "object"},
        "charged": _ref("Amount"),
        "markup": {"type": "object"},
    },
}


def _body(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return {"required": True, "content": {"application/json": {"schema": schema}}}


PATHS: dict[str, Any] = {
    "/v1/reseller": {
        "get": {
            "operationId": "getReseller",
            "summary": "Reseller: your brand, markup, endpoint and markup earned",
            "security": _SECURED,
            "responses": {"200": _json("the reseller", _RESELLER), **_NOT_RESELLER},
        },
        "put": {
            "operationId": "updateReseller",
            "summary": "Reseller: change your brand or markup (needs the keys scope)",
            "security": _SECURED,
            "requestBody": _body(
                {
                    "brand": {"type": "string", "minLength": 1, "maxLength": 64},
                    "markup_bps": {"type": "integer", "minimum": 0, "maximum": 100_000},
                }
            ),
            "responses": {"200": _json("the reseller", _RESELLER), **_BODY_ERRORS, **_NOT_RESELLER},
        },
    },
    "/v1/reseller/subusers": {
        "get": {
            "operationId": "listSubusers",
            "summary": "Reseller: your sub-users, by name",
            "security": _SECURED,
            "parameters": _PAGE_PARAMS,
            "responses": {
                "200": _json(
                    "a page of sub-users",
                    {
                        "type": "object",
                        "required": ["items", "next_cursor"],
                        "properties": {
                            "items": {"type": "array", "items": _SUBUSER},
                            "next_cursor": {"type": ["string", "null"]},
                        },
                    },
                ),
                "400": _problem("bad limit or cursor, or an unknown query parameter"),
                **_NOT_RESELLER,
            },
        },
        "post": {
            "operationId": "createSubuser",
            "summary": "Reseller: a new sub-user (needs the keys scope)",
            "security": _SECURED,
            "requestBody": _body(
                {"name": _NAME_PARAM["schema"], "quota_bytes": _QUOTA, "spend_limit": _LIMIT}, ["name"]
            ),
            "responses": {
                "201": _json("the sub-user", _SUBUSER),
                "409": _problem("the caller has a sub-user by this name"),
                **_BODY_ERRORS,
                **_NOT_RESELLER,
            },
        },
    },
    "/v1/reseller/subusers/{name}": {
        "parameters": [_NAME_PARAM],
        "get": {
            "operationId": "getSubuser",
            "summary": "Reseller: a sub-user, its balance and its month so far",
            "security": _SECURED,
            "responses": {"200": _json("the sub-user", _SUBUSER), **_UNKNOWN, **_NOT_RESELLER},
        },
        "patch": {
            "operationId": "updateSubuser",
            "summary": "Reseller: set a sub-user's quota and spend limit, suspend or resume it (keys scope)",
            "security": _SECURED,
            "requestBody": _body(
                {"quota_bytes": _QUOTA, "spend_limit": _LIMIT, "suspended": {"type": "boolean"}}
            ),
            "responses": {
                "200": _json("the sub-user", _SUBUSER),
                **_UNKNOWN,
                **_BODY_ERRORS,
                **_NOT_RESELLER,
            },
        },
    },
    "/v1/reseller/subusers/{name}/keys": {
        "parameters": [_NAME_PARAM],
        "get": {
            "operationId": "listSubuserKeys",
            "summary": "Reseller: a sub-user's API keys (needs the keys scope)",
            "security": _SECURED,
            "responses": {
                "200": _json("its keys, revoked ones included", _KEYS),
                **_UNKNOWN,
                **_NOT_RESELLER,
            },
        },
        "post": {
            "operationId": "createSubuserKey",
            "summary": "Reseller: a new key of a sub-user, its credential on your listener (keys scope)",
            "security": _SECURED,
            "requestBody": _body(
                {
                    "label": {"type": "string", "pattern": "^[ -~]{0,100}$"},
                    "scopes": {
                        "type": "array",
                        "items": {"enum": sorted(resellers.SUBUSER_SCOPES)},
                        "minItems": 1,
                        "uniqueItems": True,
                    },
                }
            ),
            "responses": {
                "201": _json(
                    "the key; its secret is shown only now, and proxy_password, the same without the "
                    "platform's prefix: what the sub-user gives as its password on your listener",
                    {
                        "allOf": [
                            _ref("NewApiKey"),
                            {
                                "type": "object",
                                "required": ["proxy_password"],
                                "properties": {"proxy_password": {"type": "string"}},
                            },
                        ]
                    },
                ),
                **_UNKNOWN,
                **_BODY_ERRORS,
                **_NOT_RESELLER,
            },
        },
    },
    "/v1/reseller/subusers/{name}/keys/{key_id}": {
        "delete": {
            "operationId": "revokeSubuserKey",
            "summary": "Reseller: revoke a sub-user's key (needs the keys scope)",
            "security": _SECURED,
            "parameters": [
                _NAME_PARAM,
                {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "responses": {
                "204": {"description": "revoked"},
                "404": _problem("no such sub-user, or it has no live key with this id"),
                **_NOT_RESELLER,
            },
        }
    },
    "/v1/reseller/subusers/{name}/transfers": {
        "post": {
            "operationId": "transferToSubuser",
            "summary": "Reseller: move funds to a sub-user's balance or back (needs the trade scope)",
            "security": _SECURED,
            "parameters": [
                _NAME_PARAM,
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "the same key moves the funds once; a retry is answered 200, "
                    "the key reused for another sub-user, direction or amount 409",
                    "schema": {"type": "string", "pattern": "^[ -~]{1,200}$"},
                },
            ],
            "requestBody": _body(
                {
                    "amount": {
                        "type": "string",
                        "pattern": "^[1-9][0-9]{0,77}$",
                        "description": "base units",
                    },
                    "to": {"enum": ["subuser", "reseller"]},
                },
                ["amount", "to"],
            ),
            "responses": {
                "201": _json("moved", {"type": "object", "required": ["to", "amount", "replayed"]}),
                "200": _json("this Idempotency-Key moved it already", {"type": "object"}),
                "402": _problem("the paying side's balance does not cover the amount"),
                "409": _problem("this Idempotency-Key was used for another transfer"),
                **_UNKNOWN,
                **_BODY_ERRORS,
                **_NOT_RESELLER,
            },
        }
    },
    "/v1/reseller/usage": {
        "get": {
            "operationId": "resellerUsage",
            "summary": "Reseller: each sub-user's traffic, charges and markup in one calendar month (UTC)",
            "security": _SECURED,
            "parameters": [
                {
                    "name": "month",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "pattern": "^[12][0-9]{3}-(0[1-9]|1[0-2])$"},
                    "description": "YYYY-MM; default the current month",
                }
            ],
            "responses": {
                "200": _json(
                    "the month's report",
                    {
                        "type": "object",
                        "required": ["month", "items", "totals"],
                        "properties": {
                            "month": {"type": "string"},
                            "items": {"type": "array", "items": _USAGE_ROW},
                            "totals": {"type": "object"},
                        },
                    },
                ),
                "400": _problem("a bad month or an unknown parameter"),
                **_NOT_RESELLER,
            },
        }
    },
}

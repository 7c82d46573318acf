"""The REST API of white-label resellers: their settings, sub-users, keys, funds and reports.

Every route here is the calling reseller's own: an account that is no reseller is answered 403,
and a sub-user is looked up among the caller's sub-users only, so another reseller's sub-user of
the same name is a 404, never its data. A sub-user's own key reaches its own data through the
ordinary routes (``/v1/me``, ``/v1/usage``, ``/v1/ledger``, …), which are scoped to the caller's
account. Reading needs the ``read`` scope, managing sub-users and their keys ``keys``, moving
funds ``trade``. ``PATHS`` holds these routes' OpenAPI entries, for ``dashboard.openapi`` to merge.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from typing import Any

from aiohttp import web

from billing import holds, ledger, reseller_terms, resellers
from billing.errors import InsufficientFunds, InvalidAccount, InvalidAmount
from billing.resellers import KEEP, Reseller, Subuser
from dashboard import auth
from dashboard.appkeys import PG, SETTINGS
from dashboard.openapi_base import _AUTH_ERRORS, _BODY_ERRORS, _PAGE_PARAMS, _json, _problem, _ref
from dashboard.pages import encode_cursor, page_params
from dashboard.problems import Problem, field, json_response, read_json
from dashboard.routes import _key_json, amount_json, idempotency_reference

routes = web.RouteTableDef()

_NAME = re.compile(r"[a-z0-9_]{1,32}")
_KEY_ID = re.compile(r"[0-9a-f]{12}")
_MONTH = re.compile(r"([12][0-9]{3})-(0[1-9]|1[0-2])")
_LABEL = re.compile(r"[ -~]{0,100}")


async def _reseller(request: web.Request, scope: str = "read") -> Reseller:
    """The calling account as a reseller whose key has ``scope``: Problem 401 for no valid
    credentials, 403 ``not_a_reseller`` for any other account, 403 for a key without the scope."""
    caller = await auth.authenticate(request, request.app[PG], request.app[SETTINGS])
    reseller = await resellers.reseller_of(request.app[PG], caller.account.id)
    if reseller is None:
        raise Problem(403, "not_a_reseller", "this account is not a white-label reseller")
    caller.require(scope)
    return reseller


async def _subuser(request: web.Request, reseller: Reseller) -> Subuser:
    name = request.match_info["name"]
    if not _NAME.fullmatch(name):
        raise Problem(404, "not_found", "you have no sub-user by this name")
    try:
        return await resellers.get_subuser(request.app[PG], reseller.account_id, name)
    except resellers.UnknownSubuser:
        raise Problem(404, "not_found", "you have no sub-user by this name") from None


def _reseller_json(reseller: Reseller, earned: int) -> dict[str, Any]:
    return {
        "name": reseller.name,
        "brand": reseller.brand,
        "header_token": reseller.header_token,
        "markup_bps": reseller.markup_bps,
        "endpoint": {"host": reseller.endpoint_host, "port": reseller.endpoint_port},
        "markup_earned": amount_json(earned),
        "created_at": reseller.created_at.isoformat(),
    }


def _subuser_json(sub: Subuser) -> dict[str, Any]:
    return {
        "name": sub.name,
        "quota_bytes": sub.quota_bytes,
        "spend_limit": None if sub.spend_limit is None else amount_json(sub.spend_limit),
        "suspended": sub.suspended,
        "created_at": sub.created_at.isoformat(),
    }


def _limits(body: dict[str, Any]) -> dict[str, Any]:
    """``quota_bytes`` (an integer or null) and ``spend_limit`` (digits or null) when given."""
    out: dict[str, Any] = {}
    if "quota_bytes" in body:
        quota = body["quota_bytes"]
        if quota is not None and (not isinstance(quota, int) or isinstance(quota, bool)):
            raise Problem(
                422, "invalid_field", "'quota_bytes' must be an integer or null", field="quota_bytes"
            )
        out["quota_bytes"] = quota
    if "spend_limit" in body:
        limit = body["spend_limit"]
        if limit is not None and not (
            isinstance(limit, str) and limit.isascii() and limit.isdigit() and len(limit) <= 78
        ):
            raise Problem(
                422, "invalid_field", "'spend_limit' must be base units, as digits", field="spend_limit"
            )
        out["spend_limit"] = None if limit is None else int(limit)
    return out


def _invalid(error: resellers.InvalidReseller | InvalidAccount) -> Problem:
    return Problem(422, "invalid_field", error.reason, field=error.field)


@routes.get("/v1/reseller")
async def get_reseller(request: web.Request) -> web.Response:
    reseller = await _reseller(request)
    earned = await reseller_terms.markup_earned(request.app[PG], reseller.account_id)
    return json_response(_reseller_json(reseller, earned))


@routes.put("/v1/reseller")
async def put_reseller(request: web.Request) -> web.Response:
    """Change the brand or the markup (the endpoint is the operator's: ``ipsx reseller update``)."""
    reseller = await _reseller(request, "keys")
    body = await read_json(request)
    if set(body) - {"brand", "markup_bps"}:
        raise Problem(422, "invalid_field", "only 'brand' and 'markup_bps' may be changed")
    brand = field(body, "brand", str, optional=True, max_len=64)
    markup = field(body, "markup_bps", int, optional=True)
    try:
        reseller = await resellers.update_reseller(
            request.app[PG], reseller.account_id, brand=brand, markup_bps=markup
        )
    except resellers.InvalidReseller as error:
        raise _invalid(error) from None
    earned = await reseller_terms.markup_earned(request.app[PG], reseller.account_id)
    return json_response(_reseller_json(reseller, earned))


@routes.get("/v1/reseller/subusers")
async def list_subusers(request: web.Request) -> web.Response:
    reseller = await _reseller(request)
    limit, cursor = page_params(request, request.app[SETTINGS].page_limit)
    if cursor is not None and (len(cursor) != 1 or not isinstance(cursor[0], str)):
        raise Problem(400, "bad_cursor", "the cursor is not one this API handed out")
    subs = await resellers.list_subusers(
        request.app[PG], reseller.account_id, after=None if cursor is None else cursor[0], limit=limit
    )
    next_cursor = encode_cursor([subs[-1].name]) if len(subs) == limit else None
    return json_response({"items": [_subuser_json(sub) for sub in subs], "next_cursor": next_cursor})


@routes.post("/v1/reseller/subusers")
async def create_subuser(request: web.Request) -> web.Response:
    reseller = await _reseller(request, "keys")
    body = await read_json(request)
    name = field(body, "name", str, max_len=32)
    limits = _limits(body)
    try:
        sub = await resellers.create_subuser(request.app[PG], reseller.account_id, name, **limits)
    except (resellers.InvalidReseller, InvalidAccount) as error:
        raise _invalid(error) from None
    except resellers.SubuserExists:
        raise Problem(409, "subuser_exists", "you have a sub-user by this name") from None
    return json_response(_subuser_json(sub), 201)


@routes.get("/v1/reseller/subusers/{name}")
async def get_subuser(request: web.Request) -> web.Response:
    """The sub-user, its balance and its month so far against its limits."""
    reseller = await _reseller(request)
    sub = await _subuser(request, reseller)
    pool = request.app[PG]
    standing = await reseller_terms.standing(pool, sub.account_name)
    account = ledger.requester_account(sub.account_name)
    month: dict[str, Any] | None = None
    if standing is not None:
        month = {
            "used_bytes": standing.used_bytes,
            "spent": amount_json(standing.spent),
            "refusal": standing.refusal,
        }
    return json_response(
        {
            **_subuser_json(sub),
            "balance": {
                "available": amount_json(await ledger.balance(pool, account)),
                "reserved": amount_json(await holds.reserved(pool, account)),
            },
            "month": month,
        }
    )


@routes.patch("/v1/reseller/subusers/{name}")
async def update_subuser(request: web.Request) -> web.Response:
    """Set the quota and the spend limit (null: none), suspend or resume."""
    reseller = await _reseller(request, "keys")
    sub = await _subuser(request, reseller)
    body = await read_json(request)
    if set(body) - {"quota_bytes", "spend_limit", "suspended"}:
        raise Problem(
            422, "invalid_field", "only 'quota_bytes', 'spend_limit' and 'suspended' may be changed"
        )
    limits = _limits(body)
    suspended = field(body, "suspended", bool, optional=True)
    try:
        sub = await resellers.update_subuser(
            request.app[PG],
            reseller.account_id,
            sub.name,
            quota_bytes=limits.get("quota_bytes", KEEP),
            spend_limit=limits.get("spend_limit", KEEP),
            suspended=suspended,
        )
    except resellers.InvalidReseller as error:
        raise _invalid(error) from None
    return json_response(_subuser_json(sub))


@routes.get("/v1/reseller/subusers/{name}/keys")
async def list_subuser_keys(request: web.Request) -> web.Response:
    reseller = await _reseller(request, "keys")
    sub = await _subuser(request, reseller)
    keys = await resellers.list_subuser_keys(request.app[PG], reseller.account_id, sub.name)
    return json_response({"items": [_key_json(key) for key in keys]})


@routes.post("/v1/reseller/subusers/{name}/keys")
async def create_subuser_key(request: web.Request) -> web.Response:
    """A new key of the sub-user: its credential on the reseller's listener (scopes proxy, read,
    keys; default proxy and read). The secret is shown once."""
    reseller = await _reseller(request, "keys")
    sub = await _subuser(request, reseller)
    body = await read_json(request)
    label = field(body, "label", str, optional=True, max_len=100) or ""
    if not _LABEL.fullmatch(label):
        raise Problem(422, "invalid_field", "'label' must be printable ASCII", field="label")
    scopes = field(body, "scopes", list, optional=True)
    if scopes is not None and (
        not scopes or not all(isinstance(scope, str) for scope in scopes) or len(set(scopes)) != len(scopes)
    ):
        raise Problem(422, "invalid_field", "'scopes' must be a list of distinct strings", field="scopes")
    try:
        new = await resellers.create_subuser_key(
            request.app[PG],
            reseller.account_id,
            sub.name,
            label=label,
            scopes=resellers.DEFAULT_SUBUSER_SCOPES if scopes is None else frozenset(scopes),
        )
    except InvalidAccount as error:
        raise _invalid(error) from None
    return json_response(
        {
            **_key_json(new.key),
            "secret": new.secret,
            "proxy_password": reseller_terms.proxy_password(new.secret),
        },
        201,
    )


@routes.delete("/v1/reseller/subusers/{name}/keys/{key_id}")
async def revoke_subuser_key(request: web.Request) -> web.Response:
    reseller = await _reseller(request, "keys")
    sub = await _subuser(request, reseller)
    key_id = request.match_info["key_id"]
    if not _KEY_ID.fullmatch(key_id) or not await resellers.revoke_subuser_key(
        request.app[PG], reseller.account_id, sub.name, key_id
    ):
        raise Problem(404, "not_found", "this sub-user has no live key with this id")
    return web.Response(status=204)


@routes.post("/v1/reseller/subusers/{name}/transfers")
async def transfer(request: web.Request) -> web.Response:
    """Move funds from the reseller's balance to the sub-user's (``to: subuser``) or back
    (``to: reseller``). An Idempotency-Key makes a retry move nothing twice."""
    reseller = await _reseller(request, "trade")
    sub = await _subuser(request, reseller)
    body = await read_json(request)
    amount = field(body, "amount", str, max_len=80)
    to = field(body, "to", str, max_len=16)
    if to not in ("subuser", "reseller"):
        raise Problem(422, "invalid_field", "'to' must be 'subuser' or 'reseller'", field="to")
    if not (amount.isascii() and amount.isdigit()) or int(amount) == 0:
        raise Problem(422, "invalid_field", "'amount' must be positive base units, as digits", field="amount")
    reference = idempotency_reference(request, reseller.name) or secrets.token_hex(16)
    try:
        moved = await resellers.transfer(
            request.app[PG],
            reseller.account_id,
            sub.name,
            ledger.Amount(int(amount)),
            to_subuser=to == "subuser",
            reference=reference,
        )
    except InvalidAmount as error:
        raise Problem(422, "invalid_field", error.reason, field="amount") from None
    except InsufficientFunds:
        payer = "your" if to == "subuser" else "the sub-user's"
        raise Problem(402, "insufficient_funds", f"{payer} balance does not cover the amount") from None
    available = await ledger.balance(request.app[PG], ledger.requester_account(sub.account_name))
    return json_response(
        {
            "to": to,
            "amount": amount_json(int(amount)),
            "replayed": not moved,
            "subuser_available": amount_json(available),
        },
        201 if moved else 200,
    )


def _month(request: web.Request) -> tuple[str, dt.datetime, dt.datetime]:
    unknown = sorted(set(request.query) - {"month"})
    if unknown:
        raise Problem(400, "unknown_parameter", f"unknown query parameter {unknown[0][:40]!r}")
    text = request.query.get("month")
    if text is None:
        start = reseller_terms.month_start(dt.datetime.now(dt.UTC))
    else:
        found = _MONTH.fullmatch(text)
        if found is None:
            raise Problem(400, "bad_month", "month must be YYYY-MM")
        start = dt.datetime(int(found.group(1)), int(found.group(2)), 1, tzinfo=dt.UTC)
    return f"{start:%Y-%m}", start, reseller_terms.next_month(start)


@routes.get("/v1/reseller/usage")
async def usage(request: web.Request) -> web.Response:
    """Each sub-user's traffic, settled charges and the markup it paid, in one calendar month."""
    reseller = await _reseller(request)
    month, start, end = _month(request)
    rows = await reseller_terms.usage_report(request.app[PG], reseller.account_id, start, end)
    items = [
        {
            "name": row.name,
            "streams": row.streams,
            "bytes": {"up": row.bytes_up, "down": row.bytes_down},
            "charged": amount_json(row.charged),
            "markup": {"due": amount_json(row.markup_due), "charged": amount_json(row.markup_charged)},
        }
        for row in rows
    ]
    totals = {
        "streams": sum(row.streams for row in rows),
        "bytes": {"up": sum(row.bytes_up for row in rows), "down": sum(row.bytes_down for row in rows)},
        "charged": amount_json(sum(row.charged for row in rows)),
        "markup": {
            "due": amount_json(sum(row.markup_due for row in rows)),
            "charged": amount_json(sum(row.markup_charged for row in rows)),
        },
    }
    return json_response({"month": month, "items": items, "totals": totals})


# -- OpenAPI -----------------------------------------------------------------------------------

_SECURED: list[dict[str, list[str]]] = [{"bearer": []}]
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
                    "description": "the same key moves the funds once; a retry is answered 200",
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

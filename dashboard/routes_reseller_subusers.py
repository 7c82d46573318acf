"""The reseller API's sub-user routes: listing, creating, reading (with its balance and its month
against its limits) and changing the calling reseller's sub-users, their API keys (listing, a new
key with its proxy password, revoking), and moving funds between the reseller and a sub-user.

Who may call them, and the 403 and 404 they answer, is in ``routes_resellers``; their OpenAPI
entries are in ``openapi_resellers``.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from aiohttp import web

from billing import holds, ledger, reseller_terms, resellers
from billing.errors import InsufficientFunds, InvalidAccount, InvalidAmount
from billing.resellers import KEEP, Reseller, Subuser
from dashboard.appkeys import PG, SETTINGS
from dashboard.pages import encode_cursor, page_params
from dashboard.problems import Problem, field, json_response, read_json
from dashboard.routes import _key_json, amount_json, idempotency_reference
from dashboard.routes_resellers import calling_reseller, invalid_problem, reseller_and_caller

routes = web.RouteTableDef()

_NAME = re.compile(r"[a-z0-9_]{1,32}")
_KEY_ID = re.compile(r"[0-9a-f]{12}")
_LABEL = re.compile(r"[ -~]{0,100}")


async def _subuser(request: web.Request, reseller: Reseller) -> Subuser:
    name = request.match_info["name"]
    if not _NAME.fullmatch(name):
        raise Problem(404, "not_found", "you have no sub-user by this name")
    try:
        return await resellers.get_subuser(request.app[PG], reseller.account_id, name)
    except resellers.UnknownSubuser:
        raise Problem(404, "not_found", "you have no sub-user by this name") from None


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


@routes.get("/v1/reseller/subusers")
async def list_subusers(request: web.Request) -> web.Response:
    reseller = await calling_reseller(request)
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
    reseller = await calling_reseller(request, "keys")
    body = await read_json(request)
    name = field(body, "name", str, max_len=32)
    limits = _limits(body)
    try:
        sub = await resellers.create_subuser(request.app[PG], reseller.account_id, name, **limits)
    except (resellers.InvalidReseller, InvalidAccount) as error:
        raise invalid_problem(error) from None
    except resellers.SubuserExists:
        raise Problem(409, "subuser_exists", "you have a sub-user by this name") from None
    return json_response(_subuser_json(sub), 201)


@routes.get("/v1/reseller/subusers/{name}")
async def get_subuser(request: web.Request) -> web.Response:
    """The sub-user, its balance and its month so far against its limits."""
    reseller = await calling_reseller(request)
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
    reseller = await calling_reseller(request, "keys")
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
        raise invalid_problem(error) from None
    return json_response(_subuser_json(sub))


@routes.get("/v1/reseller/subusers/{name}/keys")
async def list_subuser_keys(request: web.Request) -> web.Response:
    reseller = await calling_reseller(request, "keys")
    sub = await _subuser(request, reseller)
    keys = await resellers.list_subuser_keys(request.app[PG], reseller.account_id, sub.name)
    return json_response({"items": [_key_json(key) for key in keys]})


@routes.post("/v1/reseller/subusers/{name}/keys")
async def create_subuser_key(request: web.Request) -> web.Response:
    """A new key of the sub-user: its credential on the reseller's listener (scopes proxy, read,
    keys; default proxy and read). The secret is shown once."""
    reseller = await calling_reseller(request, "keys")
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
        raise invalid_problem(error) from None
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
    reseller = await calling_reseller(request, "keys")
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
    reseller, caller = await reseller_and_caller(request, "trade")
    if caller.key is not None and caller.key.spend_limit is not None:
        # Funds given to a sub-user are spent through the sub-user's own keys, which this key's
        # limit does not cover.
        raise Problem(
            403, "spend_limited_key", "a key with a spend limit cannot move funds to or from sub-users"
        )
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
    except resellers.ReferenceReused:
        raise Problem(409, "conflict", "this idempotency key was used for another transfer") from None
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

"""The REST API's handlers: accounts and keys, balances, usage and the ledger statement."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from billing import accounts, holds, ledger
from billing.accounts import Account, ApiKey
from billing.errors import InvalidAccount
from dashboard import auth
from dashboard.appkeys import PG, REDIS, SETTINGS
from dashboard.auth import Principal
from dashboard.key_rules import rules_json, rules_text
from dashboard.pages import encode_cursor, id_cursor, page_params, time_cursor
from dashboard.problems import Problem, field, json_response, read_json

routes = web.RouteTableDef()

_KEY_ID = re.compile(r"[0-9a-f]{12}")
_LABEL = re.compile(r"[ -~]{0,100}")  # printable ASCII, as the OpenAPI document says


def amount_json(value: int) -> dict[str, str]:
    """Money in the API: exact base units as a string, and the decimal IPSX form for people."""
    return {"base_units": str(value), "ipsx": ledger.format_amount(ledger.Amount(value))}


def _account_json(account: Account) -> dict[str, Any]:
    return {"name": account.name, "address": account.address, "created_at": account.created_at.isoformat()}


def _key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "label": key.label,
        "scopes": sorted(key.scopes),
        "spend_limit": None if key.spend_limit is None else amount_json(key.spend_limit),
        "rules": rules_json(key.rules),
        "parent_key_id": key.parent_key_id,
        "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


async def authorized(request: web.Request, scope: str = "read") -> Principal:
    """The authenticated caller, whose key must have ``scope``; Problem 401 or 403 otherwise."""
    caller = await auth.authenticate(request, request.app[PG], request.app[SETTINGS])
    caller.require(scope)
    return caller


def idempotency_reference(request: web.Request, account: str) -> str | None:
    """What the request's ``Idempotency-Key`` names for ``account`` (an order id, a withdrawal's
    reference): the same key from the same account names the same one, so a retry is answered
    with what the first call did. ``None`` without the header; Problem 400 for a bad key."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= 200 or not key.isprintable():
        raise Problem(400, "bad_idempotency_key", "Idempotency-Key must be 1 to 200 printable characters")
    return "k" + hashlib.sha256(f"{account}\n{key}".encode()).hexdigest()[:40]


def _services(request: web.Request) -> tuple[asyncpg.Pool, Redis]:
    return request.app[PG], request.app[REDIS]


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    pool, redis = _services(request)
    checks: dict[str, str] = {}
    try:
        await pool.fetchval("SELECT 1")
        checks["postgres"] = "ok"
    except (OSError, asyncpg.PostgresError):
        checks["postgres"] = "unavailable"
    try:
        await redis.ping()
        checks["redis"] = "ok"
    except Exception:  # redis-py raises its own ConnectionError family
        checks["redis"] = "unavailable"
    ready = all(value == "ok" for value in checks.values())
    return json_response(
        {"status": "ready" if ready else "not_ready", "checks": checks}, 200 if ready else 503
    )


@routes.post("/v1/auth/nonce")
async def nonce(request: web.Request) -> web.Response:
    _, redis = _services(request)
    settings = request.app[SETTINGS]
    await auth.count_auth_call(request, "nonce")
    return json_response(
        {
            "nonce": await auth.new_nonce(redis, settings),
            "domain": settings.siwe_domain,
            "chain_id": settings.chain_id,
            "expires_in": int(settings.nonce_ttl),
        },
        201,
    )


@routes.post("/v1/auth/siwe")
async def sign_in(request: web.Request) -> web.Response:
    pool, redis = _services(request)
    settings = request.app[SETTINGS]
    # Before the body is read: a refused or malformed attempt counts as much as a good one.
    await auth.count_auth_call(request, "siwe")
    body = await read_json(request)
    message = field(body, "message", str, max_len=auth.MAX_MESSAGE)
    signature = field(body, "signature", str, max_len=200)
    token, account = await auth.sign_in(pool, redis, settings, message, signature)
    return json_response(
        {
            "token": token,
            "token_type": "Bearer",
            "expires_in": int(settings.token_ttl),
            "account": _account_json(account),
        }
    )


@routes.get("/v1/me")
async def me(request: web.Request) -> web.Response:
    caller = await authorized(request)
    pool = request.app[PG]
    requester = ledger.requester_account(caller.account.name)
    return json_response(
        {
            "account": _account_json(caller.account),
            "key_id": caller.key_id,
            "balance": {
                "available": amount_json(await ledger.balance(pool, requester)),
                "reserved": amount_json(await holds.reserved(pool, requester)),
                "earned": amount_json(
                    await ledger.balance(pool, ledger.provider_account(caller.account.name))
                ),
            },
        }
    )


@routes.get("/v1/keys")
async def list_keys(request: web.Request) -> web.Response:
    caller = await authorized(request, "keys")
    keys = await accounts.list_keys(request.app[PG], caller.account.name)
    return json_response({"items": [_key_json(key) for key in keys if caller.manages(key.key_id)]})


@routes.post("/v1/keys")
async def create_key(request: web.Request) -> web.Response:
    """A new key; made with a key, it is that key's sub-key (never wider, revoked with it)."""
    caller = await authorized(request, "keys")
    body = await read_json(request)
    label = field(body, "label", str, optional=True, max_len=accounts.MAX_LABEL_LEN) or ""
    if not _LABEL.fullmatch(label):
        raise Problem(422, "invalid_field", "'label' must be printable ASCII", field="label")
    scopes = field(body, "scopes", list, optional=True)
    if scopes is not None and (
        not all(isinstance(scope, str) for scope in scopes) or len(set(scopes)) != len(scopes)
    ):
        raise Problem(422, "invalid_field", "'scopes' must be a list of distinct strings", field="scopes")
    lacking = accounts.GRANTABLE - (caller.key.scopes if caller.key else accounts.GRANTABLE)
    if scopes is not None and set(scopes) & lacking:
        raise Problem(
            403, "insufficient_scope", "a key cannot make a key with scopes it lacks", field="scopes"
        )
    limit = field(body, "spend_limit", str, optional=True, max_len=80)
    if limit is not None and not (limit.isascii() and limit.isdigit()):
        raise Problem(
            422, "invalid_field", "'spend_limit' must be base units, as digits", field="spend_limit"
        )
    rules = rules_text(field(body, "rules", dict, optional=True))
    try:
        new = await accounts.create_key(
            request.app[PG],
            account_name=caller.account.name,
            label=label,
            rules=rules,
            scopes=frozenset(scopes)
            if scopes is not None
            else (caller.key.scopes if caller.key else accounts.SCOPES),
            spend_limit=None if limit is None else int(limit),
            parent=caller.key,
        )
    except InvalidAccount as error:
        raise Problem(422, "invalid_field", error.reason, field=error.field) from None
    return json_response({**_key_json(new.key), "secret": new.secret}, 201)


@routes.delete("/v1/keys/{key_id}")
async def revoke_key(request: web.Request) -> web.Response:
    caller = await authorized(request, "keys")
    key_id = request.match_info["key_id"]
    if (
        not _KEY_ID.fullmatch(key_id)
        or not caller.manages(key_id)
        or not await accounts.revoke_key(request.app[PG], key_id, account_id=caller.account.id)
    ):
        raise Problem(404, "not_found", "no live key of yours has this id")
    return web.Response(status=204)


@routes.get("/v1/usage")
async def usage(request: web.Request) -> web.Response:
    """The caller's metered streams, newest first, with both meters side by side."""
    caller = await authorized(request)
    limit, cursor = page_params(request, request.app[SETTINGS].page_limit)
    after_time, after_id = time_cursor(cursor)
    rows = await request.app[PG].fetch(
        """
        SELECT event_id, deal_id, exit_id, protocol, target, outcome, opened_at, closed_at,
               gateway_bytes_up, gateway_bytes_down, agent_bytes_up, agent_bytes_down
        FROM metered_streams
        WHERE requester = $1 AND ($2::timestamptz IS NULL OR (closed_at, event_id) < ($2, $3))
        ORDER BY closed_at DESC, event_id DESC
        LIMIT $4
        """,
        caller.account.name,
        after_time,
        after_id,
        limit,
    )
    items = [
        {
            **{k: row[k] for k in ("event_id", "deal_id", "exit_id", "protocol", "target", "outcome")},
            "opened_at": row["opened_at"].isoformat(),
            "closed_at": row["closed_at"].isoformat(),
            "gateway_bytes": {"up": row["gateway_bytes_up"], "down": row["gateway_bytes_down"]},
            "agent_bytes": None
            if row["agent_bytes_up"] is None
            else {"up": row["agent_bytes_up"], "down": row["agent_bytes_down"]},
        }
        for row in rows
    ]
    last = rows[-1] if len(rows) == limit else None
    next_cursor = None if last is None else encode_cursor([last["closed_at"].isoformat(), last["event_id"]])
    return json_response({"items": items, "next_cursor": next_cursor})


@routes.get("/v1/ledger")
async def statement(request: web.Request) -> web.Response:
    """Entries touching the caller's ledger accounts (requester, its holds, provider), newest first."""
    caller = await authorized(request)
    limit, cursor = page_params(request, request.app[SETTINGS].page_limit)
    before = id_cursor(cursor)
    requester = ledger.requester_account(caller.account.name)
    own = [requester, holds.hold_account(requester), ledger.provider_account(caller.account.name)]
    rows = await request.app[PG].fetch(
        """
        SELECT t.id, t.debit_account, t.credit_account, t.amount::text AS amount, t.kind,
               m.reference, t.created_at
        FROM ledger_transfers t JOIN ledger_movements m ON m.id = t.movement_id
        WHERE (t.debit_account = ANY($1::text[]) OR t.credit_account = ANY($1::text[]))
          AND ($2::bigint IS NULL OR t.id < $2)
        ORDER BY t.id DESC
        LIMIT $3
        """,
        own,
        before,
        limit,
    )
    items = [
        {
            "id": row["id"],
            "kind": row["kind"],
            "debit": row["debit_account"],
            "credit": row["credit_account"],
            "amount": amount_json(int(row["amount"])),
            "reference": row["reference"],
            "created_at": row["created_at"].isoformat(),
        }
        for row in rows
    ]
    next_cursor = encode_cursor([rows[-1]["id"]]) if len(rows) == limit else None
    return json_response({"items": items, "next_cursor": next_cursor})

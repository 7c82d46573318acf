"""The REST API's exit bans: a requester keeps an exit away from its connections to a domain.

The same bans as the gateway's ``X-IPSX-Ban`` header (``pool.bans``), for clients that cannot
send a header on the next request: ban a sticky session's current exit, or an exit by the id a
response's ``X-IPSX-Exit`` gave; list the bans in force for a domain; lift one early. Keys with
the ``proxy`` scope may do this (a scraper's own key), as may a signed-in session.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from dashboard.appkeys import REDIS
from dashboard.problems import Problem, field, json_response, read_json
from dashboard.routes import authorized
from pool.bans import DEFAULT_BAN_TTL, MAX_BAN_TTL, BanBook, domain_of

routes = web.RouteTableDef()

_DOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")
_SESSION = re.compile(r"[A-Za-z0-9]{1,32}")
_EXIT_ID = re.compile(r"[0-9a-f]{16}")


def _domain(text: str, name: str = "domain") -> str:
    value = text.lower().rstrip(".") if text.isascii() else ""
    if not _DOMAIN.fullmatch(value):
        raise Problem(422, "invalid_field", f"'{name}' must be a host name or an IP address", field=name)
    return domain_of(value)


def _ttl(body: dict[str, Any]) -> int:
    ttl = body.get("ttl")
    if ttl is None and "ttl" not in body:
        return DEFAULT_BAN_TTL
    if isinstance(ttl, float) and ttl.is_integer():  # JSON's 60.0 is the integer 60
        ttl = int(ttl)
    if type(ttl) is not int or not 1 <= ttl <= MAX_BAN_TTL:
        reason = f"'ttl' must be whole seconds from 1 to {MAX_BAN_TTL}"
        raise Problem(422, "invalid_field", reason, field="ttl")
    return int(ttl)


def _book(request: web.Request) -> BanBook:
    return BanBook(request.app[REDIS], cache_ttl=0)


async def _record(request: web.Request, account: str, domain: str, exit_id: str, ttl: int) -> web.Response:
    until = await _book(request).ban(account, domain, exit_id, ttl)
    return json_response({"exit_id": exit_id, "domain": domain, "until": until}, status=201)


@routes.post("/v1/sessions/{session}/ban")
async def ban_session_exit(request: web.Request) -> web.Response:
    """Ban the exit the caller's sticky session is bound to for a domain; the session's next
    connection moves to another exit."""
    caller = await authorized(request, "proxy")
    session = request.match_info["session"]
    if not _SESSION.fullmatch(session):
        raise Problem(404, "not_found", "no session has this id")
    body = await read_json(request)
    domain = _domain(field(body, "domain", str, max_len=253))
    ttl = _ttl(body)
    exit_id = await _book(request).session_exit(caller.account.name, session)
    if exit_id is None:
        raise Problem(404, "not_found", "this session is not bound to an exit (it expired or never ran)")
    return await _record(request, caller.account.name, domain, exit_id, ttl)


@routes.post("/v1/bans")
async def ban_exit(request: web.Request) -> web.Response:
    """Ban an exit, by the id a response's ``X-IPSX-Exit`` named, for a domain."""
    caller = await authorized(request, "proxy")
    body = await read_json(request)
    exit_id = field(body, "exit_id", str, max_len=16)
    if not _EXIT_ID.fullmatch(exit_id):
        reason = "'exit_id' must be the 16 hex digits of X-IPSX-Exit"
        raise Problem(422, "invalid_field", reason, field="exit_id")
    domain = _domain(field(body, "domain", str, max_len=253))
    return await _record(request, caller.account.name, domain, exit_id, _ttl(body))


@routes.get("/v1/bans")
async def list_bans(request: web.Request) -> web.Response:
    """The caller's bans in force recorded for one domain (``?domain=``)."""
    caller = await authorized(request, "proxy")
    unknown = sorted(set(request.query) - {"domain"})
    if unknown or len(request.query.getall("domain", [])) > 1:
        shown = unknown[0][:40] if unknown else "domain"
        raise Problem(400, "unknown_parameter", f"unknown or repeated query parameter {shown!r}")
    domain = _domain(request.query.get("domain", ""))
    listed = await _book(request).listed(caller.account.name, domain)
    bans = [{"exit_id": exit_id, "until": until} for exit_id, until in sorted(listed.items())]
    return json_response({"domain": domain, "bans": bans})


@routes.delete("/v1/bans/{domain}/{exit_id}")
async def lift_ban(request: web.Request) -> web.Response:
    """End one of the caller's bans early."""
    caller = await authorized(request, "proxy")
    domain = _domain(request.match_info["domain"])
    exit_id = request.match_info["exit_id"]
    if not _EXIT_ID.fullmatch(exit_id) or not await _book(request).lift(caller.account.name, domain, exit_id):
        raise Problem(404, "not_found", "no ban of this exit for this domain")
    return web.Response(status=204)

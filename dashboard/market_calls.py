"""Reaching the market from a route, for ``routes_orders``, ``routes_deals`` and ``routes_market``.

The market runs in the memory of one API node (``dashboard.leader``): on any other node a market
call is forwarded to that node and its answer passed back as it is (``forward_to_market``). The
market's refusals become problem details (``refusal_problem``).
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from dashboard.appkeys import HTTP, SEAT
from dashboard.problems import Problem
from matching.errors import InvalidOrder, MatchingError
from matching.market import MarketRefused

FORWARDED = "X-IPSX-Forwarded"  # a market call one API node passed to the market's node
_FORWARDED_HEADERS = ("Authorization", "Idempotency-Key", "Content-Type")


async def forward_to_market(request: web.Request) -> web.Response:
    """Pass a market call to the API node that runs the market, and its answer back as it is."""
    leader = None if FORWARDED in request.headers else await request.app[SEAT].leader_url()
    if leader is None:
        raise Problem(503, "market_unavailable", "no API node runs the market right now; try again shortly")
    headers = {name: value for name in _FORWARDED_HEADERS if (value := request.headers.get(name))}
    headers[FORWARDED] = "1"
    body = await request.read()
    try:
        async with request.app[HTTP].request(
            request.method, leader + request.path_qs, data=body, headers=headers, allow_redirects=False
        ) as answer:
            payload = await answer.read()
            content_type = answer.headers.get("Content-Type", "application/json")
            status = answer.status
    except (aiohttp.ClientError, TimeoutError):
        raise Problem(503, "market_unavailable", "the market's API node did not answer; try again") from None
    return web.Response(status=status, body=payload, headers={"Content-Type": content_type})


def refusal_problem(error: Exception) -> Problem:
    """The problem a refused market call is answered with: a ``MarketRefused`` carries its own
    status; an invalid order, any other ``MatchingError`` and terms of the wrong shape (the
    ``TypeError`` or ``ValueError`` building them raised) are 422."""
    if isinstance(error, MarketRefused):
        return Problem(error.status, error.code, error.detail)
    if isinstance(error, InvalidOrder):
        return Problem(422, "invalid_order", str(error), field=error.field)
    if isinstance(error, MatchingError):
        return Problem(422, "refused", str(error))
    # A TypeError or ValueError from terms of the wrong shape: say so, not what Python said.
    return Problem(422, "invalid_order", "the order's terms are malformed")

"""The REST API of white-label resellers (``/v1/reseller/*``): who may call it, and the reseller's
own settings (its brand and markup, with the markup it earned).

Every reseller route is the calling reseller's own: an account that is no reseller is answered
403 (``calling_reseller``), and a sub-user is looked up among the caller's sub-users only, so
another reseller's sub-user of the same name is a 404, never its data. A sub-user's own key
reaches its own data through the ordinary routes (``/v1/me``, ``/v1/usage``, ``/v1/ledger``, …),
which are scoped to the caller's account. Reading needs the ``read`` scope, managing sub-users and
their keys ``keys``, moving funds ``trade``. The sub-users, their keys and transfers are in
``routes_reseller_subusers``, the monthly report in ``routes_reseller_reports``, and the OpenAPI
entries of all of them in ``openapi_resellers``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from billing import reseller_terms, resellers
from billing.errors import InvalidAccount
from billing.resellers import Reseller
from dashboard import auth
from dashboard.appkeys import PG, SETTINGS
from dashboard.problems import Problem, field, json_response, read_json
from dashboard.routes import amount_json

routes = web.RouteTableDef()


async def calling_reseller(request: web.Request, scope: str = "read") -> Reseller:
    """The calling account as a reseller whose key has ``scope``: Problem 401 for no valid
    credentials, 403 ``not_a_reseller`` for any other account, 403 for a key without the scope."""
    return (await reseller_and_caller(request, scope))[0]


async def reseller_and_caller(request: web.Request, scope: str = "read") -> tuple[Reseller, auth.Principal]:
    """:func:`calling_reseller`, and who calls: the wallet session or the API key."""
    caller = await auth.authenticate(request, request.app[PG], request.app[SETTINGS])
    reseller = await resellers.reseller_of(request.app[PG], caller.account.id)
    if reseller is None:
        raise Problem(403, "not_a_reseller", "this account is not a white-label reseller")
    caller.require(scope)
    return reseller, caller


def invalid_problem(error: resellers.InvalidReseller | InvalidAccount) -> Problem:
    """The 422 ``invalid_field`` problem for a value the reseller rules refused, naming its field."""
    return Problem(422, "invalid_field", error.reason, field=error.field)


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


@routes.get("/v1/reseller")
async def get_reseller(request: web.Request) -> web.Response:
    reseller = await calling_reseller(request)
    earned = await reseller_terms.markup_earned(request.app[PG], reseller.account_id)
    return json_response(_reseller_json(reseller, earned))


@routes.put("/v1/reseller")
async def put_reseller(request: web.Request) -> web.Response:
    """Change the brand or the markup (the endpoint is the operator's: ``ipsx reseller update``)."""
    reseller = await calling_reseller(request, "keys")
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
        raise invalid_problem(error) from None
    earned = await reseller_terms.markup_earned(request.app[PG], reseller.account_id)
    return json_response(_reseller_json(reseller, earned))

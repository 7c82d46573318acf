"""The reseller's forms: make a sub-user with its first key, set its quota and spend limit,
suspend or resume it, move funds to it or back, make and revoke its keys, and change the brand
and the markup. Each is a POST with the session's CSRF token and the scope the REST API asks for
the same change (``keys``; ``trade`` to move funds), calls the function of ``billing.resellers``
that ``/v1/reseller/*`` calls, and reaches only the signed-in reseller's own sub-users.

A new key's secret is on the answer to its form only: with the proxy password (the secret
without the platform's prefix) and the proxy URLs of the reseller's endpoint, never in a URL,
never stored.
"""

from __future__ import annotations

import re
from typing import Any, Final

from aiohttp import web
from multidict import MultiDictProxy

from billing import ledger, reseller_terms, resellers
from billing.accounts import NewKey
from billing.errors import InsufficientFunds, InvalidAccount, InvalidAmount
from billing.resellers import Reseller, Subuser
from dashboard.appkeys import PG, SETTINGS
from dashboard.problems import Problem
from dashboard.web import reseller_data as data
from dashboard.web.guard import decimal_units, posted, text, whole_number
from dashboard.web.render import page, redirect, render
from dashboard.web.reseller import KEY_ID, own_subuser, reseller_of
from dashboard.web.session import WebSession
from matching.settlement import MAX_MARKUP_BPS

routes = web.RouteTableDef()

_LABEL: Final = re.compile(r"[ -~]{0,100}", re.ASCII)
_REFERENCE: Final = re.compile(r"w[0-9a-f]{32}", re.ASCII)
Form = MultiDictProxy[str | Any]


async def _posted(request: web.Request, scope: str) -> tuple[WebSession, Reseller, Form]:
    session, form = await posted(request, scope)
    return session, await reseller_of(request, session, scope), form


def _limits(form: Form) -> tuple[int | None, int | None]:
    """``(quota_bytes, spend_limit)`` from the decimal GB and IPSX fields; empty is no limit."""
    quota = text(form, "quota_gb")
    limit = text(form, "spend_limit")
    return (
        None if not quota else decimal_units(quota, "quota_gb", data.GB_DECIMALS),
        None if not limit else decimal_units(limit, "spend_limit", ledger.DECIMALS),
    )


def _invalid(error: resellers.InvalidReseller | InvalidAccount) -> Problem:
    return Problem(422, "invalid_field", f"{error.field}: {error.reason}")


def _scopes(form: Form) -> frozenset[str]:
    scopes = frozenset(value for value in form.getall("scopes", []) if isinstance(value, str))
    if not scopes:
        raise Problem(422, "invalid_field", "pick at least one scope")
    if not scopes <= resellers.SUBUSER_SCOPES:
        raise Problem(422, "invalid_field", "a sub-user's key may have the proxy, read and keys scopes only")
    return scopes


def _label(form: Form) -> str:
    label = text(form, "label")
    if not _LABEL.fullmatch(label):
        raise Problem(422, "invalid_field", "the label must be printable ASCII")
    return label


def _key_created(
    request: web.Request, session: WebSession, reseller: Reseller, sub: Subuser, new: NewKey, *, first: bool
) -> web.Response:
    endpoint = data.endpoint(reseller, request.app[SETTINGS].proxy_address)
    password = reseller_terms.proxy_password(new.secret)
    return render(
        request,
        "reseller_key_created.html",
        {
            "reseller": reseller,
            "sub": sub,
            "key": new.key,
            "secret": new.secret,
            "password": password,
            "endpoint": endpoint,
            "proxy_url": endpoint.http_url(sub.name, password),
            "socks_url": endpoint.socks_url(sub.name, password),
            "targeted_url": endpoint.http_url(f"{sub.name}-country-us-session-s1", password),
            "first": first,
        },
        status=201,
        session=session,
    )


@routes.post("/web/reseller/subusers", name="web-reseller-subuser-create")
@page
async def create_subuser(request: web.Request) -> web.StreamResponse:
    """A new sub-user and its first key (scopes proxy and read)."""
    session, reseller, form = await _posted(request, "keys")
    name = text(form, "name", required=True).lower()
    quota, limit = _limits(form)
    label = _label(form)
    pool = request.app[PG]
    try:
        sub = await resellers.create_subuser(
            pool, reseller.account_id, name, quota_bytes=quota, spend_limit=limit
        )
    except (resellers.InvalidReseller, InvalidAccount) as error:
        raise _invalid(error) from None
    except resellers.SubuserExists:
        raise Problem(409, "subuser_exists", f"you have a sub-user named {name!r} already") from None
    new = await resellers.create_subuser_key(pool, reseller.account_id, sub.name, label=label)
    return _key_created(request, session, reseller, sub, new, first=True)


@routes.post("/web/reseller/subusers/{name}/limits", name="web-reseller-subuser-limits")
@page
async def set_limits(request: web.Request) -> web.StreamResponse:
    _, reseller, form = await _posted(request, "keys")
    sub = await own_subuser(request, reseller)
    quota, limit = _limits(form)
    try:
        await resellers.update_subuser(
            request.app[PG], reseller.account_id, sub.name, quota_bytes=quota, spend_limit=limit
        )
    except resellers.InvalidReseller as error:
        raise _invalid(error) from None
    return redirect(f"/web/reseller/subusers/{sub.name}?saved=limits")


async def _set_suspended(request: web.Request, suspended: bool) -> web.Response:
    _, reseller, form = await _posted(request, "keys")
    sub = await own_subuser(request, reseller)
    await resellers.update_subuser(request.app[PG], reseller.account_id, sub.name, suspended=suspended)
    state = "suspended" if suspended else "resumed"
    if form.get("back") == "list":
        return redirect(f"/web/reseller?{state}={sub.name}")
    return redirect(f"/web/reseller/subusers/{sub.name}?state={state}")


@routes.post("/web/reseller/subusers/{name}/suspend", name="web-reseller-subuser-suspend")
@page
async def suspend(request: web.Request) -> web.StreamResponse:
    """Refuse the sub-user's new streams on the reseller's listener (within seconds)."""
    return await _set_suspended(request, True)


@routes.post("/web/reseller/subusers/{name}/resume", name="web-reseller-subuser-resume")
@page
async def resume(request: web.Request) -> web.StreamResponse:
    return await _set_suspended(request, False)


@routes.post("/web/reseller/subusers/{name}/transfers", name="web-reseller-subuser-transfer")
@page
async def transfer(request: web.Request) -> web.StreamResponse:
    """Move IPSX from the reseller's balance to the sub-user's, or back. The form's reference
    (drawn when the page was rendered) makes a re-sent form move nothing twice."""
    session, reseller, form = await _posted(request, "trade")
    key = session.principal.key
    if key is not None and key.spend_limit is not None:  # as POST /v1/reseller/subusers/{name}/transfers
        raise Problem(
            403, "spend_limited_key", "a key with a spend limit cannot move funds to or from sub-users"
        )
    sub = await own_subuser(request, reseller)
    amount = decimal_units(text(form, "amount", required=True), "amount", ledger.DECIMALS)
    if amount == 0:
        raise Problem(422, "invalid_field", "the amount must be more than 0")
    direction = text(form, "direction")
    if direction not in ("to-subuser", "to-reseller"):
        raise Problem(422, "invalid_field", "'direction' must be to-subuser or to-reseller")
    reference = text(form, "reference")
    if not _REFERENCE.fullmatch(reference):
        raise Problem(422, "invalid_field", "the form's reference is malformed: reload the page")
    try:
        moved = await resellers.transfer(
            request.app[PG],
            reseller.account_id,
            sub.name,
            ledger.Amount(amount),
            to_subuser=direction == "to-subuser",
            reference=reference,
        )
    except InvalidAmount as error:
        raise Problem(422, "invalid_field", f"amount: {error.reason}") from None
    except InsufficientFunds:
        payer = "your" if direction == "to-subuser" else "the sub-user's"
        raise Problem(402, "insufficient_funds", f"{payer} balance does not cover the amount") from None
    except resellers.ReferenceReused:  # the form sent again with other values: reload the page
        raise Problem(
            409, "conflict", "this form was sent already with other values; reload the page"
        ) from None
    return redirect(f"/web/reseller/subusers/{sub.name}?transfer={direction if moved else 'replayed'}")


@routes.post("/web/reseller/subusers/{name}/keys", name="web-reseller-subuser-key-create")
@page
async def create_key(request: web.Request) -> web.StreamResponse:
    session, reseller, form = await _posted(request, "keys")
    sub = await own_subuser(request, reseller)
    label, scopes = _label(form), _scopes(form)
    try:
        new = await resellers.create_subuser_key(
            request.app[PG], reseller.account_id, sub.name, label=label, scopes=scopes
        )
    except InvalidAccount as error:
        raise _invalid(error) from None
    return _key_created(request, session, reseller, sub, new, first=False)


@routes.post("/web/reseller/subusers/{name}/keys/{key_id}/revoke", name="web-reseller-subuser-key-revoke")
@page
async def revoke_key(request: web.Request) -> web.StreamResponse:
    _, reseller, _ = await _posted(request, "keys")
    sub = await own_subuser(request, reseller)
    key_id = request.match_info["key_id"]
    if not KEY_ID.fullmatch(key_id) or not await resellers.revoke_subuser_key(
        request.app[PG], reseller.account_id, sub.name, key_id
    ):
        raise Problem(404, "not_found", "this sub-user has no live key with this id")
    return redirect(f"/web/reseller/subusers/{sub.name}?revoked={key_id}")


@routes.post("/web/reseller/settings", name="web-reseller-settings-save")
@page
async def save_settings(request: web.Request) -> web.StreamResponse:
    """The brand and the markup; the endpoint stays the operator's (``ipsx reseller update``)."""
    _, reseller, form = await _posted(request, "keys")
    brand = text(form, "brand", required=True)
    markup = whole_number(text(form, "markup_bps", required=True), "markup_bps", 0, MAX_MARKUP_BPS)
    try:
        await resellers.update_reseller(request.app[PG], reseller.account_id, brand=brand, markup_bps=markup)
    except resellers.InvalidReseller as error:
        raise _invalid(error) from None
    return redirect("/web/reseller/settings?saved=1")

"""Signing in to the dashboard: with a wallet (EIP-4361, through the same nonces and checks as
``POST /v1/auth/siwe``), with an API key's secret, or, when the API runs for ``ipsx demo``, with
one click as the demo account. Each attempt counts against the client's sign-in rate limit."""

from __future__ import annotations

import datetime as dt

from aiohttp import web
from eth_utils.address import is_address, to_checksum_address
from siwe import SiweMessage

from billing import accounts, resellers
from billing.accounts import ApiKey
from dashboard import auth
from dashboard.appkeys import PG, REDIS, SETTINGS
from dashboard.problems import Problem, field, json_response, read_json
from dashboard.web import session as sessions
from dashboard.web.render import page, redirect, render

routes = web.RouteTableDef()

HOME = "/web/overview"
STATEMENT = "Sign in to the IPSX dashboard"


@routes.get("/", name="web-root")
@page
async def root(request: web.Request) -> web.StreamResponse:
    found = await sessions.current(request)
    raise web.HTTPSeeOther(HOME if found is not None else "/signin")


@routes.get("/signin", name="web-signin")
@page
async def signin_page(request: web.Request) -> web.StreamResponse:
    if await sessions.current(request) is not None:
        raise web.HTTPSeeOther(HOME)
    settings = request.app[SETTINGS]
    token = sessions.signin_token(request)
    response = render(
        request,
        "signin.html",
        {
            "demo_account": settings.web_demo_account,
            "signin_token": token,
            "chain_id": settings.chain_id,
        },
    )
    sessions.remember_signin_token(response, request, token)
    return response


def _signed_in(request: web.Request, token: str) -> web.Response:
    response = redirect(HOME)
    sessions.set_session(response, request, token)
    return response


@routes.post("/signin/key", name="web-signin-key")
@page
async def signin_with_key(request: web.Request) -> web.StreamResponse:
    """Sign in with an API key's secret: the session has that key's scopes. A key without the
    ``read`` scope is refused (403): the pages read what ``GET /v1/*`` would refuse it, and a
    proxy-only key's secret is the proxy password, written into proxy URLs and browsers. A
    white-label sub-user's key is refused (403): it belongs to its reseller's customer."""
    form = await request.post()
    token = form.get("signin_token")
    sessions.check_signin_token(request, token if isinstance(token, str) else None)
    await sessions.count_signin(request)
    secret = form.get("secret", "")
    pool = request.app[PG]
    key = (
        await accounts.authenticate_secret(pool, secret.strip())
        if isinstance(secret, str) and 0 < len(secret) <= 100
        else None
    )
    account = None if key is None else await accounts.get_account(pool, key.account_name)
    if key is None or account is None:
        raise Problem(401, "unauthorized", "unknown or revoked API key")
    await _refuse_subuser(request, key)
    if "read" not in key.scopes:
        raise Problem(
            403,
            "insufficient_scope",
            "this API key lacks the 'read' scope, so it cannot open the dashboard; sign in with a key"
            " that has it, or with your wallet",
        )
    return _signed_in(request, sessions.issue(request.app[SETTINGS], account, via="key", key=key))


async def _refuse_subuser(request: web.Request, key: ApiKey) -> None:
    """Problem 403 for a white-label sub-user's key: its customer signs in where its reseller
    says (the reseller's own site, under its brand), never into the IPSX dashboard."""
    if key.reseller_id is None:
        return
    reseller = await resellers.reseller_of(request.app[PG], key.reseller_id)
    brand = reseller.brand if reseller is not None else "your proxy provider"
    raise Problem(
        403, "subuser_key", f"this key belongs to a customer of {brand}; sign in where {brand} tells you"
    )


@routes.post("/signin/demo", name="web-signin-demo")
@page
async def signin_as_demo(request: web.Request) -> web.StreamResponse:
    """One click into the demo account, when the API runs with a demo account."""
    settings = request.app[SETTINGS]
    if settings.web_demo_account is None:
        raise Problem(404, "not_found", "this dashboard has no demo login")
    form = await request.post()
    token = form.get("signin_token")
    sessions.check_signin_token(request, token if isinstance(token, str) else None)
    await sessions.count_signin(request)
    account = await accounts.get_account(request.app[PG], settings.web_demo_account)
    if account is None:
        raise Problem(503, "demo_unavailable", "the demo account does not exist yet; is the demo running?")
    return _signed_in(request, sessions.issue(settings, account, via="demo"))


@routes.post("/signin/siwe/message", name="web-signin-siwe-message")
async def siwe_message(request: web.Request) -> web.Response:
    """The EIP-4361 message for the wallet to sign, naming a fresh nonce (JSON in and out)."""
    body = await read_json(request)
    sessions.check_signin_token(request, request.headers.get(sessions.CSRF_HEADER))
    await auth.count_auth_call(request, "nonce")  # it mints a nonce, as POST /v1/auth/nonce does
    address = field(body, "address", str, max_len=42)
    if not is_address(address):
        raise Problem(422, "invalid_field", "'address' must be a 0x address", field="address")
    settings = request.app[SETTINGS]
    nonce = await auth.new_nonce(request.app[REDIS], settings)
    now = dt.datetime.now(dt.UTC)
    message = SiweMessage(
        domain=settings.siwe_domain,
        address=to_checksum_address(address),
        statement=STATEMENT,
        uri=str(request.url.with_path("/").with_query(None)),
        version="1",
        chain_id=settings.chain_id,
        nonce=nonce,
        issued_at=now.isoformat().replace("+00:00", "Z"),
        expiration_time=(now + dt.timedelta(seconds=settings.nonce_ttl)).isoformat().replace("+00:00", "Z"),
    )
    return json_response({"message": message.prepare_message()})


@routes.post("/signin/siwe", name="web-signin-siwe")
async def signin_with_wallet(request: web.Request) -> web.Response:
    """The signed message: checked as ``POST /v1/auth/siwe`` checks it; sets the session cookie."""
    body = await read_json(request)
    sessions.check_signin_token(request, request.headers.get(sessions.CSRF_HEADER))
    await sessions.count_signin(request)
    message = field(body, "message", str, max_len=auth.MAX_MESSAGE)
    signature = field(body, "signature", str, max_len=200)
    pool, redis, settings = request.app[PG], request.app[REDIS], request.app[SETTINGS]
    _, account = await auth.sign_in(pool, redis, settings, message, signature)
    response = json_response({"next": HOME, "account": account.name})
    sessions.set_session(response, request, sessions.issue(settings, account, via="wallet"))
    return response


@routes.post("/signout", name="web-signout")
@page
async def signout(request: web.Request) -> web.StreamResponse:
    found = await sessions.current(request)
    if found is not None:
        form = await request.post()
        presented = form.get(sessions.CSRF_FIELD)
        sessions.check_csrf(found, presented if isinstance(presented, str) else None)
    response = redirect("/signin")
    sessions.clear_session(response)
    return response

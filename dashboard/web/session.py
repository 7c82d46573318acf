"""Web sessions: a signed JWT in an HttpOnly, SameSite=Strict cookie, a CSRF token per session, and
a rate limit on sign-in attempts.

The cookie's token is not a REST API bearer token: its audience is ``<jwt_audience>-web``, so
:func:`dashboard.auth.authenticate` refuses it, and a REST token is refused here. It names the
account's wallet address (``sub``), how the session was opened (``via``: ``wallet``, ``key`` or
``demo``), the API key for a key sign-in (``kid``: the session has that key's scopes and ends when
the key is revoked) and the session's CSRF token (``csrf``), which every form of the pages carries
back and every cookie-authenticated POST must present (:func:`check_csrf`).

Sign-in forms are not yet in a session: they carry a token that a short-lived cookie of its own
(``ipsx_signin``) repeats, so a page elsewhere cannot sign a browser into the attacker's account.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Final

import jwt
from aiohttp import web

from billing import accounts
from billing.accounts import Account, ApiKey
from dashboard.appkeys import PG, REDIS, SETTINGS
from dashboard.auth import Principal, client_of, limit_attempts
from dashboard.problems import Problem
from dashboard.settings import ApiSettings

COOKIE: Final = "ipsx_session"
SIGNIN_COOKIE: Final = "ipsx_signin"
CSRF_FIELD: Final = "_csrf"
CSRF_HEADER: Final = "X-CSRF-Token"
VIA: Final = frozenset({"wallet", "key", "demo"})
_SIGNIN_TTL: Final = 30 * 60  # seconds a sign-in form's token lasts
_SIGNIN_KEY: Final = "ipsx:web:signin:{}"  # Redis: sign-in attempts per client address and window


@dataclass(frozen=True, slots=True)
class WebSession:
    """A signed-in browser: who (with the key's scopes for a key sign-in), and its CSRF token."""

    principal: Principal
    csrf: str
    via: str

    @property
    def account(self) -> Account:
        return self.principal.account

    def can(self, scope: str) -> bool:
        return self.principal.key is None or scope in self.principal.key.scopes


# The request's session once looked up (None: none or invalid), so a page reads the cookie once.
SESSION: Final = web.RequestKey["WebSession | None"]("ipsx_web_session")


def _audience(settings: ApiSettings) -> str:
    return settings.jwt_audience + "-web"


def issue(settings: ApiSettings, account: Account, *, via: str, key: ApiKey | None = None) -> str:
    """A session token for ``account``; ``key`` for a key sign-in (``via="key"``)."""
    if via not in VIA or (via == "key") != (key is not None):
        raise ValueError("a key session names its key, and only a key session does")
    now = int(time.time())
    claims = {
        "sub": account.address,
        "name": account.name,
        "aud": _audience(settings),
        "iss": settings.jwt_issuer,
        "iat": now,
        "exp": now + int(settings.web_session_ttl),
        "via": via,
        "csrf": secrets.token_urlsafe(24),
    }
    if key is not None:
        claims["kid"] = key.key_id
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


async def current(request: web.Request) -> WebSession | None:
    """The request's session, or ``None`` without a valid one (no cookie, a bad or expired token,
    an account that is gone, a key that was revoked). Cached on the request."""
    if SESSION in request:
        return request[SESSION]
    found = await _load(request)
    request[SESSION] = found
    return found


async def _load(request: web.Request) -> WebSession | None:
    token = request.cookies.get(COOKIE, "")
    if not token or len(token) > 4096:
        return None
    settings = request.app[SETTINGS]
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=["HS256"],
            audience=_audience(settings),
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iat", "sub", "aud", "iss", "via", "csrf"]},
        )
    except jwt.InvalidTokenError:
        return None
    via, csrf = claims.get("via"), claims.get("csrf")
    if via not in VIA or not isinstance(csrf, str) or not csrf:
        return None
    pool = request.app[PG]
    account = await accounts.get_account_by_address(pool, str(claims["sub"]))
    if account is None:
        return None
    key = None
    if via == "key":
        key = await live_key(request, account, str(claims.get("kid", "")))
        # A white-label sub-user's key never opens the IPSX-branded pages, whenever it signed in.
        if key is None or key.reseller_id is not None:
            return None
    return WebSession(Principal(account, key), csrf, str(via))


async def live_key(request: web.Request, account: Account, key_id: str) -> ApiKey | None:
    """The account's key ``key_id`` if it is live."""
    for key in await accounts.list_keys(request.app[PG], account.name):
        if key.key_id == key_id and key.revoked_at is None:
            return key
    return None


def _secure(request: web.Request) -> bool:
    """Whether cookies get the Secure flag: over https, or behind a TLS-terminating proxy when
    the API's ``public_url`` is an https URL."""
    public = request.app[SETTINGS].public_url or ""
    return request.secure or public.startswith("https://")


def set_session(response: web.StreamResponse, request: web.Request, token: str) -> None:
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(request.app[SETTINGS].web_session_ttl),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=_secure(request),
    )
    response.del_cookie(SIGNIN_COOKIE, path="/")


def clear_session(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path="/")


def check_csrf(session: WebSession, presented: str | None) -> None:
    """Raise Problem 403 unless ``presented`` is the session's CSRF token."""
    if not presented or not hmac.compare_digest(presented.encode(), session.csrf.encode()):
        raise Problem(403, "csrf_refused", "this form is stale or came from another site: reload the page")


def signin_token(request: web.Request) -> str:
    """The sign-in forms' token: the one the browser's sign-in cookie holds, or a new one (which
    :func:`remember_signin_token` then sets)."""
    token = request.cookies.get(SIGNIN_COOKIE, "")
    if 16 <= len(token) <= 64 and token.isascii() and token.replace("-", "").replace("_", "").isalnum():
        return token
    return secrets.token_urlsafe(24)


def remember_signin_token(response: web.StreamResponse, request: web.Request, token: str) -> None:
    response.set_cookie(
        SIGNIN_COOKIE,
        token,
        max_age=_SIGNIN_TTL,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=_secure(request),
    )


def check_signin_token(request: web.Request, presented: str | None) -> None:
    """Raise Problem 403 unless a sign-in form's token matches the browser's sign-in cookie."""
    expected = request.cookies.get(SIGNIN_COOKIE, "")
    if not expected or not presented or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise Problem(403, "csrf_refused", "the sign-in form expired or came from another site: reload it")


async def count_signin(request: web.Request) -> None:
    """Count one sign-in attempt of the client's address; Problem 429 past the limit.

    The address is the connection's peer, or behind a reverse proxy named with
    ``--trusted-proxy`` the client its X-Forwarded-For names (``dashboard.remote``).
    """
    settings = request.app[SETTINGS]
    key = _SIGNIN_KEY.format(client_of(request.remote))
    window = max(1, int(settings.web_signin_window))
    await limit_attempts(request.app[REDIS], key, settings.web_signin_limit, window, "sign-in attempts")

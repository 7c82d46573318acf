"""Who is calling: Sign-In with Ethereum (EIP-4361) for people, API keys for programs.

Signing in is two calls: ``POST /v1/auth/nonce`` hands out a single-use nonce (kept in Redis for
``nonce_ttl``), and ``POST /v1/auth/siwe`` takes the EIP-4361 message naming it, signed by the
wallet, and answers with a short-lived JWT (HS256, audience and issuer checked). A wallet signing
in for the first time gets an account. Both calls count against limits per client address
(``auth_nonce_limit``, ``auth_siwe_limit`` per ``auth_window``, counted under :data:`ATTEMPTS_KEY`),
which also bound the unused nonces one address holds. Every other call carries ``Authorization:
Bearer <token>``, where the token is that JWT or an API key secret (``ipsx_…``).
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

import asyncpg
import jwt
import siwe
from aiohttp import web
from redis.asyncio import Redis

from billing import accounts
from billing.accounts import Account, ApiKey
from billing.errors import AccountExists
from dashboard.appkeys import REDIS, SETTINGS
from dashboard.problems import Problem
from dashboard.settings import ApiSettings

_NONCE_KEY = "ipsx:api:nonce:{}"
ATTEMPTS_KEY = "ipsx:api:auth:{}:{}"  # Redis: requests of a call (nonce, siwe) per client address and window
_BEARER = {"WWW-Authenticate": 'Bearer realm="ipsx"'}
# A real EIP-4361 message is a few hundred characters (ours: about 350); this leaves room for a
# long statement and a few resources, and nothing for a parser to chew on for long.
MAX_MESSAGE = 2048
_HEADER = " wants you to sign in with your Ethereum account:"


async def limit_attempts(redis: Redis, key: str, limit: int, window: int, what: str) -> None:
    """Count one attempt under ``key``, whose window of ``window`` seconds its first attempt opens;
    Problem 429 past ``limit`` attempts, with Retry-After the seconds left in the window.

    INCR and TTL run in one transaction; the expiry is set apart when the key has none, so a
    window is opened exactly once and a key that lost its expiry (a client gone between the two
    calls) gets one back at its next attempt instead of counting for ever.
    """
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.pttl(key)
        count, left_ms = await pipe.execute()
    if left_ms < 0:
        await redis.expire(key, window)
        left_ms = window * 1000
    left = max(1, -(-int(left_ms) // 1000))  # whole seconds, rounded up: never "wait 0 seconds"
    if int(count) > limit:
        raise Problem(
            429,
            "too_many_sign_ins",
            f"too many {what} from your address; wait {left} seconds",
            headers={"Retry-After": str(left)},
        )


def client_of(remote: str | None) -> str:
    """Whom the limits of a request from the peer address ``remote`` count against: that address,
    or for IPv6 its /64 (one host commonly holds a whole /64, and would get a counter per address
    otherwise)."""
    remote = remote or "?"
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # an IPv4 client of a dual-stack socket
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


async def count_auth_call(request: web.Request, call: str) -> None:
    """Count one ``nonce`` or ``siwe`` call (the API's or the web sign-in's) of the client's
    address against ``auth_nonce_limit`` / ``auth_siwe_limit`` per ``auth_window``.

    The address is the connection's peer: an X-Forwarded-For header is believed only from the
    proxies the operator trusts (``dashboard.remote``), since a client could name a new address
    each time.
    """
    settings = request.app[SETTINGS]
    limit = settings.auth_nonce_limit if call == "nonce" else settings.auth_siwe_limit
    key = ATTEMPTS_KEY.format(call, client_of(request.remote))
    window = max(1, int(settings.auth_window))
    await limit_attempts(request.app[REDIS], key, limit, window, "sign-in requests")


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: its account, and the API key it used (``None`` when signed in with a wallet,
    which may do everything its account may)."""

    account: Account
    key: ApiKey | None = None

    @property
    def key_id(self) -> str | None:
        return None if self.key is None else self.key.key_id

    def require(self, scope: str) -> None:
        """Raise Problem 403 unless the caller's key has ``scope``. The operator scope is never
        implied: a wallet session does not have it, only a key the operator's CLI made."""
        if scope == accounts.OPERATOR and (self.key is None or scope not in self.key.scopes):
            raise Problem(403, "insufficient_scope", "this needs an operator API key", scope=scope)
        if self.key is not None and scope not in self.key.scopes:
            raise Problem(403, "insufficient_scope", f"this API key lacks the {scope!r} scope", scope=scope)

    def manages(self, key_id: str) -> bool:
        """Whether the caller may see and revoke the key ``key_id`` of its account: a wallet
        session and a top-level key manage every key of the account, a sub-key only itself
        (sub-keys make no keys, ``billing.accounts``, so nothing hangs below one)."""
        return self.key is None or self.key.parent_key_id is None or key_id == self.key.key_id


def unauthorized(detail: str) -> Problem:
    return Problem(401, "unauthorized", detail, headers=_BEARER)


async def new_nonce(redis: Redis, settings: ApiSettings) -> str:
    nonce = str(siwe.generate_nonce())
    await redis.set(_NONCE_KEY.format(nonce), "1", ex=int(settings.nonce_ttl))
    return nonce


async def sign_in(
    pool: asyncpg.Pool, redis: Redis, settings: ApiSettings, message: str, signature: str
) -> tuple[str, Account]:
    """Check a signed EIP-4361 message; returns a session token and the (maybe new) account.

    Raises Problem 401 for a message that does not parse (it cannot sign anyone in), a wrong
    signature, an unknown or used nonce, another domain or chain, or an expired message.
    """
    parsed = parse_message(message, settings.siwe_domain)
    if int(parsed.chain_id) != settings.chain_id:
        raise unauthorized(
            f"the message is for chain {parsed.chain_id}, this service is on {settings.chain_id}"
        )
    # The nonce is spent whatever happens next, so a captured message cannot be tried twice.
    if not await redis.getdel(_NONCE_KEY.format(parsed.nonce)):
        raise unauthorized("unknown, expired or already used nonce")
    try:
        parsed.verify(signature, domain=settings.siwe_domain, nonce=parsed.nonce)
    except siwe.VerificationError as error:
        raise unauthorized(f"sign-in refused: {type(error).__name__}") from None
    except Exception:  # a malformed signature
        raise unauthorized("sign-in refused: bad signature") from None
    account = await _account_for(pool, parsed.address)
    return issue_token(settings, account), account


def parse_message(message: str, domain: str) -> siwe.SiweMessage:
    """``message`` parsed as an EIP-4361 message for ``domain``, its signature not yet checked.

    Raises Problem 401: ``malformed_siwe_message`` for a message that is too long, does not open
    with the EIP-4361 header line or does not parse, ``unauthorized`` for one naming another
    domain. The cheap checks come first, and the parser is siwe's regular expression: its ABNF
    parser takes seconds over a few hostile kilobytes, on the event loop, for anyone.
    """
    malformed = Problem(
        401, "malformed_siwe_message", "the message is not an EIP-4361 message", headers=_BEARER
    )
    if len(message) > MAX_MESSAGE:
        raise malformed
    first, newline, _ = message.partition("\n")
    if not newline or not first.endswith(_HEADER):
        raise malformed
    if first != domain + _HEADER:
        raise unauthorized("sign-in refused: DomainMismatch")
    try:
        return siwe.SiweMessage.from_message(message, abnf=False)
    except Exception:  # the parser and the model's validators raise several types
        raise malformed from None


async def _account_for(pool: asyncpg.Pool, address: str) -> Account:
    try:
        return await accounts.account_for_address(pool, address)
    except AccountExists:
        raise Problem(409, "account_conflict", "no free account name for this address") from None


def issue_token(settings: ApiSettings, account: Account) -> str:
    now = int(time.time())
    claims = {
        "sub": account.address,
        "name": account.name,
        "aud": settings.jwt_audience,
        "iss": settings.jwt_issuer,
        "iat": now,
        "exp": now + int(settings.token_ttl),
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


async def authenticate(request: web.Request, pool: asyncpg.Pool, settings: ApiSettings) -> Principal:
    """The caller of ``request``; raises Problem 401 unless it carries a valid token or key."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token or len(token) > 4096:
        raise unauthorized("send Authorization: Bearer <session token or API key>")
    token = token.strip()
    if token.startswith("ipsx_"):
        key = await accounts.authenticate_secret(pool, token)
        if key is None:
            raise unauthorized("unknown or revoked API key")
        account = await accounts.get_account(pool, key.account_name)
        if account is None:
            raise unauthorized("unknown or revoked API key")
        return Principal(account, key)
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=["HS256"],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iat", "sub", "aud", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise unauthorized("the session token has expired; sign in again") from None
    except jwt.InvalidTokenError:
        raise unauthorized("invalid session token") from None
    account = await accounts.get_account_by_address(pool, str(claims["sub"]))
    if account is None:
        raise unauthorized("the account of this token no longer exists")
    return Principal(account)

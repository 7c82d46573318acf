"""Accounts, API keys and the cached credential check the gateway calls on every new client.

An API key's secret is ``ipsx_<key_id>_<random>``: the key id (12 lower-case hex characters) finds
the row, and only ``sha256(secret)`` is stored, compared in constant time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from eth_utils.address import is_checksum_address, to_checksum_address

from billing.errors import AccountExists, AccountsUnavailable, InvalidAccount, UnknownAccount

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}", re.ASCII)
_NAME = re.compile(r"[a-z0-9_]{1,32}", re.ASCII)
_KEY_ID = re.compile(r"[0-9a-f]{12}", re.ASCII)
# secrets.token_urlsafe(24) is 32 characters of the URL-safe base64 alphabet.
_SECRET = re.compile(r"ipsx_([0-9a-f]{12})_[A-Za-z0-9_-]{32}", re.ASCII)
_SECRET_MAX_LEN = 64
MAX_LABEL_LEN = 100
_NEW_KEY_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    address: str  # checksummed 0x address
    name: str  # matches [a-z0-9_]{1,32}
    created_at: datetime


SCOPES = frozenset({"proxy", "read", "trade", "keys"})
WITHDRAW = "withdraw"  # request withdrawals to the account's wallet; only on keys that ask for it
OPERATOR = "operator"  # decides disputed deals; granted by the operator's command line only
GRANTABLE = SCOPES | {WITHDRAW}
"""What a key may do: ``proxy`` use the gateways, ``read`` read the API, ``trade`` place and cancel
orders, ``keys`` make and revoke (sub-)keys; these are a new key's scopes unless it asks for
others. ``withdraw`` requests withdrawals and is given only to a key that asks for it. A session
from signing in with the wallet may do all of these; the operator scope is never implied."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    account_id: int
    account_name: str
    label: str
    created_at: datetime
    revoked_at: datetime | None  # the key's, or its parent's when that was revoked first
    scopes: frozenset[str] = SCOPES
    spend_limit: int | None = None  # base units the deals opened through the key may cost at most
    parent_key_id: str | None = None
    # A white-label sub-user's key: its reseller's account id and the name the reseller knows it
    # by (its proxy user name on the reseller's listener); None for an ordinary account's key.
    reseller_id: int | None = None
    subuser: str | None = None
    # Standing rules every connection made with the key gets unless it says otherwise, in the proxy
    # user name's grammar without the account ("retryon-403,429-maxretries-2"); None: none.
    rules: str | None = None


MAX_RULES_LEN = 200


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just created; ``secret`` is shown to its owner once and is never stored."""

    key: ApiKey
    secret: str = field(repr=False)


def normalize_address(text: str) -> str:
    """The EIP-55 checksummed form of an Ethereum address; raises ``InvalidAccount(field="address")``.

    All-lower and all-upper hex are accepted; mixed case must carry a valid checksum.
    """
    address = text.strip() if isinstance(text, str) else ""
    if not _ADDRESS.fullmatch(address):
        raise InvalidAccount("address", "not a 0x-prefixed 20-byte hex address")
    digits = address[2:]
    # eth_utils.is_address accepts any case; mixed case is a checksum and must be right.
    if digits not in (digits.lower(), digits.upper()) and not is_checksum_address(address):
        raise InvalidAccount("address", "mixed-case address with a wrong checksum")
    return str(to_checksum_address(address))


def validate_name(text: str) -> str:
    """The lower-cased account name; raises ``InvalidAccount(field="name")``.

    Names are 1-32 ASCII letters, digits or ``_``; ``-`` is excluded because it separates the
    targeting keys in proxy usernames (``alice-country-de``).
    """
    if not isinstance(text, str) or not text.isascii():
        raise InvalidAccount("name", "must be 1-32 characters among a-z, 0-9 and _")
    name = text.lower()
    if not _NAME.fullmatch(name):
        raise InvalidAccount("name", "must be 1-32 characters among a-z, 0-9 and _")
    return name


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def _account(row: Any) -> Account:
    return Account(id=row["id"], address=row["address"], name=row["name"], created_at=row["created_at"])


def _api_key(row: Any) -> ApiKey:
    return ApiKey(
        key_id=row["key_id"],
        account_id=row["account_id"],
        account_name=row["account_name"],
        label=row["label"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        scopes=frozenset(row["scopes"]),
        spend_limit=None if row["spend_limit"] is None else int(row["spend_limit"]),
        parent_key_id=row["parent_key_id"],
        reseller_id=row["reseller_id"],
        subuser=row["subuser"],
        rules=row["rules"],
    )


async def create_account(pool: asyncpg.Pool | asyncpg.Connection, *, address: str, name: str) -> Account:
    """Create an account; raises ``InvalidAccount`` or ``AccountExists`` (``.field`` says which).

    ``pool`` may be a connection inside a transaction (a reseller's sub-user is made with its
    account at once); the caller then wraps the call in a savepoint to retry on ``AccountExists``.
    """
    address = normalize_address(address)
    name = validate_name(name)
    try:
        row = await pool.fetchrow(
            "INSERT INTO accounts (address, name) VALUES ($1, $2) RETURNING id, address, name, created_at",
            address,
            name,
        )
    except asyncpg.UniqueViolationError as exc:
        raise AccountExists("address" if "address" in (exc.constraint_name or "") else "name") from None
    return _account(row)


async def get_account(pool: asyncpg.Pool, name: str) -> Account | None:
    """The account called ``name`` (any case), or ``None`` when there is none or the name is invalid."""
    try:
        name = validate_name(name)
    except InvalidAccount:
        return None
    row = await pool.fetchrow("SELECT id, address, name, created_at FROM accounts WHERE name = $1", name)
    return None if row is None else _account(row)


async def get_account_by_address(pool: asyncpg.Pool, address: str) -> Account | None:
    """The account of wallet ``address`` (any case), or ``None`` when there is none or it is invalid."""
    try:
        address = normalize_address(address)
    except InvalidAccount:
        return None
    row = await pool.fetchrow(
        "SELECT id, address, name, created_at FROM accounts WHERE address = $1", address
    )
    return None if row is None else _account(row)


async def account_for_address(pool: asyncpg.Pool, address: str) -> Account:
    """The account of a wallet address, created when it has none (a first sign-in, a first
    channel on-chain) with the name ``w_`` and the address's first 8 hex digits (12, 16, then 40
    when taken). Raises ``InvalidAccount`` for a malformed address, ``AccountExists`` (field
    ``name``) in the unlikely case that every name is taken."""
    account = await get_account_by_address(pool, address)
    if account is not None:
        return account
    digits = normalize_address(address).lower().removeprefix("0x")
    for length in (8, 12, 16, 40):
        try:
            return await create_account(pool, address=address, name=f"w_{digits[:length]}")
        except AccountExists as exists:
            if exists.field == "address":  # created by a concurrent caller
                found = await get_account_by_address(pool, address)
                if found is not None:
                    return found
    raise AccountExists("name")


async def list_accounts(pool: asyncpg.Pool) -> list[Account]:
    """Every account, oldest first."""
    rows = await pool.fetch("SELECT id, address, name, created_at FROM accounts ORDER BY id")
    return [_account(row) for row in rows]


_KEY_COLUMNS = """
    k.key_id, k.account_id, a.name AS account_name, k.label, k.created_at,
    COALESCE(k.revoked_at, p.revoked_at) AS revoked_at, k.scopes, k.spend_limit::text AS spend_limit,
    k.parent_key_id, s.reseller_id, s.name AS subuser, k.rules
"""
_KEY_TABLES = (
    "api_keys k JOIN accounts a ON a.id = k.account_id LEFT JOIN api_keys p ON p.key_id = k.parent_key_id"
    " LEFT JOIN reseller_subusers s ON s.account_id = k.account_id"
)


def _check_key_terms(
    scopes: frozenset[str],
    spend_limit: int | None,
    parent: ApiKey | None,
    account_id: int,
    grantable: frozenset[str],
) -> None:
    if not scopes or not scopes <= grantable:
        raise InvalidAccount("scopes", f"must be a non-empty subset of {', '.join(sorted(grantable))}")
    if OPERATOR in scopes and parent is not None:
        raise InvalidAccount("scopes", "a sub-key cannot have the operator scope")
    if spend_limit is not None and (
        not isinstance(spend_limit, int) or isinstance(spend_limit, bool) or not 0 < spend_limit < 10**78
    ):
        raise InvalidAccount("spend_limit", "must be a positive number of base units")
    if parent is None:
        return
    if parent.account_id != account_id or parent.revoked_at is not None:
        raise InvalidAccount("parent", "the parent key is not a live key of this account")
    if parent.parent_key_id is not None:
        raise InvalidAccount("parent", "a sub-key cannot make keys")
    if not scopes <= parent.scopes:
        raise InvalidAccount("scopes", "a sub-key cannot have scopes its parent lacks")
    if parent.spend_limit is not None and (spend_limit is None or spend_limit > parent.spend_limit):
        raise InvalidAccount("spend_limit", "a sub-key's spend limit cannot exceed its parent's")


async def create_key(
    pool: asyncpg.Pool,
    *,
    account_name: str,
    label: str = "",
    scopes: frozenset[str] = SCOPES,
    spend_limit: int | None = None,
    parent: ApiKey | None = None,
    operator: bool = False,
    rules: str | None = None,
) -> NewKey:
    """Create an API key for an account, or a sub-key of ``parent`` (never wider than it).

    ``operator`` lets ``scopes`` include the operator scope (the operator's command line only).
    ``rules`` are the key's standing rules, already checked by the caller against the gateway's
    grammar (``gateway.targeting.parse_rules``). Raises ``UnknownAccount``, or ``InvalidAccount``
    with ``field`` ``label``, ``scopes``, ``spend_limit``, ``rules`` or ``parent``.
    """
    if not isinstance(label, str) or len(label) > MAX_LABEL_LEN or not label.isprintable():
        raise InvalidAccount("label", f"must be printable and at most {MAX_LABEL_LEN} characters")
    if rules is not None and (not isinstance(rules, str) or not 0 < len(rules) <= MAX_RULES_LEN):
        raise InvalidAccount("rules", f"must be 1 to {MAX_RULES_LEN} characters")
    account = await get_account(pool, account_name)
    if account is None:
        raise UnknownAccount(account_name)
    if parent is not None:  # as it is now, not as the caller last saw it
        row = await pool.fetchrow(
            f"SELECT {_KEY_COLUMNS} FROM {_KEY_TABLES} WHERE k.key_id = $1",  # noqa: S608
            parent.key_id,
        )
        if row is None:
            raise InvalidAccount("parent", "the parent key is not a live key of this account")
        parent = _api_key(row)
    grantable = GRANTABLE | {OPERATOR} if operator else GRANTABLE
    _check_key_terms(frozenset(scopes), spend_limit, parent, account.id, grantable)
    for _ in range(_NEW_KEY_ATTEMPTS):
        key_id = secrets.token_hex(6)
        secret = f"ipsx_{key_id}_{secrets.token_urlsafe(24)}"
        try:
            row = await pool.fetchrow(
                """
                INSERT INTO api_keys (key_id, account_id, label, secret_sha256, scopes, spend_limit,
                                      parent_key_id, rules)
                VALUES ($1, $2, $3, $4, $6::text[], $7::numeric, $8, $9)
                RETURNING key_id, account_id, $5::text AS account_name, label, created_at, revoked_at,
                          scopes, spend_limit::text AS spend_limit, parent_key_id, rules,
                          (SELECT reseller_id FROM reseller_subusers WHERE account_id = $2) AS reseller_id,
                          (SELECT name FROM reseller_subusers WHERE account_id = $2) AS subuser
                """,
                key_id,
                account.id,
                label,
                _digest(secret),
                account.name,
                sorted(scopes),
                spend_limit,
                None if parent is None else parent.key_id,
                rules,
            )
        except asyncpg.UniqueViolationError:
            continue  # a 48-bit key id collided; draw another
        return NewKey(key=_api_key(row), secret=secret)
    raise RuntimeError("could not draw an unused API key id")


async def revoke_key(pool: asyncpg.Pool, key_id: str, *, account_id: int | None = None) -> bool:
    """Revoke a key (its sub-keys stop working with it); ``True`` when this call revoked it,
    ``False`` if unknown or already revoked.

    With ``account_id`` only a key of that account is revoked (another's counts as unknown).
    """
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        return False
    row = await pool.fetchrow(
        "UPDATE api_keys SET revoked_at = now()"
        " WHERE key_id = $1 AND revoked_at IS NULL AND ($2::bigint IS NULL OR account_id = $2)"
        " RETURNING key_id",
        key_id,
        account_id,
    )
    return row is not None


async def list_keys(pool: asyncpg.Pool, account_name: str) -> list[ApiKey]:
    """The account's keys, revoked ones included, oldest first; raises ``UnknownAccount``."""
    account = await get_account(pool, account_name)
    if account is None:
        raise UnknownAccount(account_name)
    rows = await pool.fetch(
        f"SELECT {_KEY_COLUMNS} FROM {_KEY_TABLES}"  # noqa: S608
        " WHERE k.account_id = $1 ORDER BY k.created_at, k.key_id",
        account.id,
    )
    return [_api_key(row) for row in rows]


async def authenticate(pool: asyncpg.Pool, account_name: str, secret: str) -> ApiKey | None:
    """The live key ``secret`` belongs to, if it belongs to ``account_name``; else ``None``.

    Never raises for bad input: a malformed name or secret, an unknown or revoked key, or another
    account's key all give ``None``. A white-label sub-user's key gives ``None`` too: it proxies
    on its reseller's listener only, by the name its reseller gave it
    (``billing.reseller_terms.subuser_lookup``). Database errors do propagate.
    """
    try:
        name = validate_name(account_name)
    except InvalidAccount:
        return None
    key = await authenticate_secret(pool, secret)
    if key is None or key.account_name != name or key.reseller_id is not None:
        return None
    return key


async def authenticate_secret(pool: asyncpg.Pool, secret: str) -> ApiKey | None:
    """The live key whose secret is ``secret`` (the key id inside it finds the row), or ``None``.

    Never raises for bad input; database errors propagate.
    """
    if not isinstance(secret, str) or len(secret) > _SECRET_MAX_LEN:
        return None
    match = _SECRET.fullmatch(secret)
    if match is None:
        return None
    row = await pool.fetchrow(
        f"SELECT {_KEY_COLUMNS}, k.secret_sha256"  # noqa: S608
        f" FROM {_KEY_TABLES} WHERE k.key_id = $1",
        match.group(1),
    )
    if row is None or not hmac.compare_digest(bytes(row["secret_sha256"]), _digest(secret)):
        return None
    return None if row["revoked_at"] is not None else _api_key(row)


_CacheKey = tuple[str, bytes]
Lookup = Callable[[asyncpg.Pool, str, str], Awaitable[ApiKey | None]]
"""How a :class:`KeyCache` checks credentials it has no fresh answer for: ``(pool, name, secret)``
to the live key or ``None``, like :func:`authenticate` (the default)."""


class KeyCache:
    """The gateway's credential check: :func:`authenticate` behind a small TTL cache.

    Entries are keyed by ``(account_name, sha256(secret))`` so the cache never holds a secret.
    Accepted credentials are cached ``ttl`` seconds (a revoked key keeps working that long at
    most), refused ones ``negative_ttl`` seconds. Concurrent checks of the same uncached
    credentials share one database query. When ``max_entries`` is reached the oldest entry goes.
    ``lookup`` answers what the cache cannot (a reseller's listener checks its sub-users'
    credentials with ``billing.reseller_terms.subuser_lookup``).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        ttl: float = 30.0,
        negative_ttl: float = 2.0,
        max_entries: int = 100_000,
        lookup: Lookup | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._pool = pool
        self._lookup_key: Lookup = authenticate if lookup is None else lookup
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max_entries = max_entries
        self._entries: OrderedDict[_CacheKey, tuple[float, ApiKey | None]] = OrderedDict()
        self._inflight: dict[_CacheKey, asyncio.Task[ApiKey | None]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every cached answer (queries in flight still complete)."""
        self._entries.clear()

    async def check(self, account_name: str, secret: str) -> ApiKey | None:
        """Like :func:`authenticate`, answered from the cache while fresh.

        Raises AccountsUnavailable when the database cannot be asked.
        """
        if not isinstance(account_name, str) or not isinstance(secret, str) or len(secret) > _SECRET_MAX_LEN:
            return None
        cache_key = (account_name, _digest(secret))
        entry = self._entries.get(cache_key)
        if entry is not None:
            expires_at, answer = entry
            if time.monotonic() < expires_at:
                return answer
            del self._entries[cache_key]
        task = self._inflight.get(cache_key)
        if task is None:
            task = asyncio.create_task(self._lookup(cache_key, account_name, secret))
            # Mark a failure as retrieved even when every waiter was cancelled.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._inflight[cache_key] = task
        # shield: one cancelled caller must not cancel the query the others wait for.
        return await asyncio.shield(task)

    async def _lookup(self, cache_key: _CacheKey, account_name: str, secret: str) -> ApiKey | None:
        try:
            answer = await self._lookup_key(self._pool, account_name, secret)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise AccountsUnavailable() from exc  # nothing cached: the next check asks again
        finally:
            del self._inflight[cache_key]
        ttl = self._ttl if answer is not None else self._negative_ttl
        self._entries[cache_key] = (time.monotonic() + ttl, answer)
        self._entries.move_to_end(cache_key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return answer

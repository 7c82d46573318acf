"""White-label resellers: brand and markup, sub-users, their standing, markup and usage reports.

A **reseller** is an account the operator flagged as one (:func:`create_reseller`). It has a brand,
shown to its customers on its own gateway listener (``ipsx gateway --reseller-port NAME=PORT``)
instead of IPSX, and a markup in basis points of every settled charge of its sub-users.

A **sub-user** is an account of its own — its ledger balance, API keys, usage and deals are those
of any account, under an internal name (``s_`` and 10 hex digits) and a wallet address derived
from it that no one holds a key to (so it can neither sign in nor withdraw) — owned by one
reseller, which knows it by a name unique among its sub-users. On the reseller's listener a client
authenticates as ``<name>[-targeting…]:<proxy password>`` (:func:`subuser_lookup`; the password
is the key's secret without its ``ipsx_`` prefix, :func:`proxy_password`); nowhere else
does a sub-user's key proxy (``billing.accounts.authenticate`` refuses it). The reseller funds its
sub-users from its own balance (:func:`transfer`) and sets a monthly traffic quota (bytes) and spend
limit (base units: what settled charges, markups and the carried traffic of open deals cost this
calendar month, UTC) per sub-user; :func:`standing` says when either is reached or the sub-user is
suspended, and the listener refuses new streams then (:class:`StandingCache`).

When a sub-user's deal settles, :func:`charge_markup_in` moves the reseller's markup
(``matching.settlement.markup``) from the sub-user's balance to the reseller's earnings
(``provider:<reseller>``), in the settlement's transaction, once per deal.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import hashlib
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from eth_utils.address import to_checksum_address

from billing import accounts, ledger
from billing.accounts import ApiKey, Lookup, NewKey, validate_name
from billing.errors import (
    AccountExists,
    AccountsUnavailable,
    BillingError,
    InvalidAccount,
    InvalidAmount,
    UnknownAccount,
)
from billing.ledger import MAX_AMOUNT, Amount, Leg, post_in
from matching.settlement import BPS, KIND_MARKUP, MAX_MARKUP_BPS, Markup, markup

SUBUSER_SCOPES = frozenset({"proxy", "read", "keys"})  # what a sub-user's key may be given
DEFAULT_SUBUSER_SCOPES = frozenset({"proxy", "read"})
KIND_FUNDING = "reseller_funding"  # reseller -> sub-user
KIND_REFUND = "reseller_refund"  # sub-user -> reseller
MAX_BYTES = 2**63 - 1
_BRAND = re.compile(r"[A-Za-z0-9][ !#-\[\]-~]{0,63}", re.ASCII)  # printable ASCII but " and \
_HOST = re.compile(r"[a-z0-9.-]{1,253}", re.ASCII)
_NEW_NAME_ATTEMPTS = 5
_SECRET_PREFIX = "ipsx_"  # noqa: S105 -- the prefix of every API key secret (billing.accounts), no secret
_LIVE_DEALS = ("proposed", "active", "completed", "disputed", "resolved")


class ResellerError(BillingError):
    """Base class of the reseller errors."""


class NotAReseller(ResellerError, LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"{name!r} is not a reseller")
        self.name = name


class UnknownSubuser(ResellerError, LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no sub-user named {name!r}")
        self.name = name


class SubuserExists(ResellerError):
    def __init__(self, name: str) -> None:
        super().__init__(f"a sub-user named {name!r} exists")
        self.name = name


class InvalidReseller(ResellerError, ValueError):
    """A reseller's or sub-user's setting is not acceptable; ``field`` says which."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"invalid {field}: {reason}")
        self.field = field
        self.reason = reason


class _Keep(enum.Enum):
    KEEP = "keep"


KEEP = _Keep.KEEP  # a setting left as it is (``None`` means "no limit")


@dataclass(frozen=True, slots=True)
class Reseller:
    account_id: int
    name: str  # the reseller's account name
    brand: str  # printable ASCII without '"' or '\', 1-64 characters
    markup_bps: int  # of each settled charge of its sub-users; 10 000 = 100 %
    endpoint_host: str | None  # the hostname its customers use (a load balancer routes it)
    endpoint_port: int | None
    created_at: dt.datetime

    @property
    def header_token(self) -> str:
        """The brand as a header-name token: ``X-<token>-Error`` on the reseller's listener."""
        return "".join(c for c in self.brand if c.isascii() and c.isalnum())[:32] or "Proxy"


@dataclass(frozen=True, slots=True)
class Subuser:
    account_id: int
    reseller_id: int
    name: str  # unique among the reseller's sub-users: its proxy user name on the listener
    account_name: str  # the internal account name (ledger, usage, deals)
    quota_bytes: int | None  # per calendar month (UTC); None: no quota
    spend_limit: int | None  # base units per calendar month; None: no limit
    suspended: bool
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Standing:
    """A sub-user's month so far against its limits."""

    suspended: bool
    used_bytes: int
    quota_bytes: int | None
    spent: int  # base units: settled charges + markups + open deals' carried traffic (with markup)
    spend_limit: int | None

    @property
    def refusal(self) -> str | None:
        """Why new streams are refused: ``suspended``, ``quota_exceeded``,
        ``spend_limit_reached``; ``None`` when they are not."""
        if self.suspended:
            return "suspended"
        if self.quota_bytes is not None and self.used_bytes >= self.quota_bytes:
            return "quota_exceeded"
        if self.spend_limit is not None and self.spent >= self.spend_limit:
            return "spend_limit_reached"
        return None


def validate_brand(text: object) -> str:
    """The brand, stripped; raises ``InvalidReseller(field="brand")``."""
    brand = text.strip() if isinstance(text, str) else ""
    if not _BRAND.fullmatch(brand):
        raise InvalidReseller("brand", "1-64 printable ASCII characters without '\"' or '\\'")
    return brand


def _check_markup(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_MARKUP_BPS:
        raise InvalidReseller("markup_bps", f"must be an integer from 0 to {MAX_MARKUP_BPS}")
    return value


def _check_limit(field: str, value: object, limit: int) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise InvalidReseller(field, "must be null or a non-negative integer")
    return value


def _check_endpoint(host: object, port: object) -> None:
    if host is not None and (not isinstance(host, str) or not _HOST.fullmatch(host)):
        raise InvalidReseller("endpoint_host", "must be a lower-case host name")
    if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536):
        raise InvalidReseller("endpoint_port", "must be a port number")


def month_start(at: dt.datetime) -> dt.datetime:
    """The first instant of ``at``'s calendar month, UTC."""
    at = at.astimezone(dt.UTC)
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(start: dt.datetime) -> dt.datetime:
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


def _subuser_address(internal: str) -> str:
    # 20 bytes of a hash: an address whose key no one holds, so the account never signs in.
    digest = hashlib.sha256(b"ipsx:reseller-subuser:" + internal.encode()).hexdigest()
    return str(to_checksum_address("0x" + digest[:40]))


# -- resellers ---------------------------------------------------------------------------------

_RESELLER = """
SELECT r.account_id, a.name, r.brand, r.markup_bps, r.endpoint_host, r.endpoint_port, r.created_at
FROM resellers r JOIN accounts a ON a.id = r.account_id
"""


def _reseller(row: asyncpg.Record) -> Reseller:
    return Reseller(*row)


async def create_reseller(
    pool: asyncpg.Pool,
    account_name: str,
    *,
    brand: str,
    markup_bps: int = 0,
    endpoint_host: str | None = None,
    endpoint_port: int | None = None,
) -> Reseller:
    """Flag an account as a reseller. Raises ``UnknownAccount``, ``InvalidReseller`` (a bad
    setting, an account that is a sub-user or already a reseller)."""
    brand = validate_brand(brand)
    _check_markup(markup_bps)
    _check_endpoint(endpoint_host, endpoint_port)
    account = await accounts.get_account(pool, account_name)
    if account is None:
        raise UnknownAccount(account_name)
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval("SELECT 1 FROM reseller_subusers WHERE account_id = $1", account.id):
            raise InvalidReseller("account", "a sub-user cannot be a reseller")
        created = await conn.fetchval(
            "INSERT INTO resellers (account_id, brand, markup_bps, endpoint_host, endpoint_port)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (account_id) DO NOTHING RETURNING 1",
            account.id,
            brand,
            markup_bps,
            endpoint_host,
            endpoint_port,
        )
        if not created:
            raise InvalidReseller("account", "already a reseller")
        row = await conn.fetchrow(_RESELLER + " WHERE r.account_id = $1", account.id)
    return _reseller(row)


async def update_reseller(
    pool: asyncpg.Pool,
    reseller_id: int,
    *,
    brand: str | None = None,
    markup_bps: int | None = None,
    endpoint_host: str | None = None,
    endpoint_port: int | None = None,
) -> Reseller:
    """Change the settings given (``None``: unchanged); raises ``InvalidReseller`` or
    ``NotAReseller``. A new brand reaches a gateway listener when the gateway restarts; a new
    markup applies to the deals settled from now on."""
    if brand is not None:
        brand = validate_brand(brand)
    if markup_bps is not None:
        _check_markup(markup_bps)
    _check_endpoint(endpoint_host, endpoint_port)
    updated = await pool.fetchval(
        """
        UPDATE resellers SET brand = COALESCE($2, brand), markup_bps = COALESCE($3, markup_bps),
            endpoint_host = COALESCE($4, endpoint_host), endpoint_port = COALESCE($5, endpoint_port),
            updated_at = now()
        WHERE account_id = $1 RETURNING account_id
        """,
        reseller_id,
        brand,
        markup_bps,
        endpoint_host,
        endpoint_port,
    )
    if updated is None:
        raise NotAReseller(str(reseller_id))
    row = await pool.fetchrow(_RESELLER + " WHERE r.account_id = $1", reseller_id)
    return _reseller(row)


async def get_reseller(pool: asyncpg.Pool, account_name: str) -> Reseller | None:
    """The reseller whose account is called ``account_name``, or ``None``."""
    try:
        name = validate_name(account_name)
    except InvalidAccount:
        return None
    row = await pool.fetchrow(_RESELLER + " WHERE a.name = $1", name)
    return None if row is None else _reseller(row)


async def reseller_of(pool: asyncpg.Pool, account_id: int) -> Reseller | None:
    """The reseller of account ``account_id`` (itself), or ``None`` if it is not one."""
    row = await pool.fetchrow(_RESELLER + " WHERE r.account_id = $1", account_id)
    return None if row is None else _reseller(row)


async def list_resellers(pool: asyncpg.Pool) -> list[Reseller]:
    return [_reseller(row) for row in await pool.fetch(_RESELLER + " ORDER BY a.name")]


# -- sub-users ---------------------------------------------------------------------------------

_SUBUSER = """
SELECT s.account_id, s.reseller_id, s.name, a.name AS account_name, s.quota_bytes,
       s.spend_limit::text AS spend_limit, s.suspended_at IS NOT NULL AS suspended, s.created_at
FROM reseller_subusers s JOIN accounts a ON a.id = s.account_id
"""


def _subuser(row: asyncpg.Record) -> Subuser:
    limit = row["spend_limit"]
    return Subuser(
        account_id=row["account_id"],
        reseller_id=row["reseller_id"],
        name=row["name"],
        account_name=row["account_name"],
        quota_bytes=row["quota_bytes"],
        spend_limit=None if limit is None else int(limit),
        suspended=row["suspended"],
        created_at=row["created_at"],
    )


async def create_subuser(
    pool: asyncpg.Pool,
    reseller_id: int,
    name: str,
    *,
    quota_bytes: int | None = None,
    spend_limit: int | None = None,
) -> Subuser:
    """A new sub-user of the reseller, with its account (no key yet: :func:`create_subuser_key`).

    Raises ``InvalidAccount(field="name")``, ``InvalidReseller`` for a bad limit,
    ``NotAReseller``, ``SubuserExists``.
    """
    name = validate_name(name)
    quota_bytes = _check_limit("quota_bytes", quota_bytes, MAX_BYTES)
    spend_limit = _check_limit("spend_limit", spend_limit, MAX_AMOUNT)
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT 1 FROM resellers WHERE account_id = $1", reseller_id):
            raise NotAReseller(str(reseller_id))
        if await conn.fetchval(
            "SELECT 1 FROM reseller_subusers WHERE reseller_id = $1 AND name = $2", reseller_id, name
        ):
            raise SubuserExists(name)
        for _ in range(_NEW_NAME_ATTEMPTS):
            internal = f"s_{secrets.token_hex(5)}"
            try:
                async with conn.transaction():  # a savepoint: a taken name is tried again
                    account = await accounts.create_account(
                        conn, address=_subuser_address(internal), name=internal
                    )
            except AccountExists:
                continue
            break
        else:
            raise RuntimeError("could not draw an unused internal account name")
        try:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO reseller_subusers (account_id, reseller_id, name, quota_bytes, spend_limit)"
                    " VALUES ($1, $2, $3, $4, $5::numeric)",
                    account.id,
                    reseller_id,
                    name,
                    quota_bytes,
                    spend_limit,
                )
        except asyncpg.UniqueViolationError:  # made meanwhile by a concurrent call
            raise SubuserExists(name) from None
        row = await conn.fetchrow(_SUBUSER + " WHERE s.account_id = $1", account.id)
    return _subuser(row)


async def get_subuser(pool: asyncpg.Pool, reseller_id: int, name: str) -> Subuser:
    """The reseller's sub-user called ``name``; raises ``UnknownSubuser`` (another reseller's
    sub-user of that name is unknown here too)."""
    row = await pool.fetchrow(
        _SUBUSER + " WHERE s.reseller_id = $1 AND s.name = $2", reseller_id, name.lower()[:64]
    )
    if row is None:
        raise UnknownSubuser(name[:64])
    return _subuser(row)


async def list_subusers(
    pool: asyncpg.Pool, reseller_id: int, *, after: str | None = None, limit: int = 100
) -> list[Subuser]:
    """The reseller's sub-users by name, those after ``after`` (a page's last name)."""
    rows = await pool.fetch(
        _SUBUSER + " WHERE s.reseller_id = $1 AND ($2::text IS NULL OR s.name > $2) ORDER BY s.name LIMIT $3",
        reseller_id,
        after,
        limit,
    )
    return [_subuser(row) for row in rows]


async def update_subuser(
    pool: asyncpg.Pool,
    reseller_id: int,
    name: str,
    *,
    quota_bytes: int | _Keep | None = KEEP,
    spend_limit: int | _Keep | None = KEEP,
    suspended: bool | None = None,
) -> Subuser:
    """Set the sub-user's quota and spend limit (``None``: none; ``KEEP``: unchanged) and suspend
    or resume it. Raises ``InvalidReseller`` or ``UnknownSubuser``."""
    sub = await get_subuser(pool, reseller_id, name)
    quota = sub.quota_bytes if quota_bytes is KEEP else _check_limit("quota_bytes", quota_bytes, MAX_BYTES)
    limit = sub.spend_limit if spend_limit is KEEP else _check_limit("spend_limit", spend_limit, MAX_AMOUNT)
    if suspended is not None and not isinstance(suspended, bool):
        raise InvalidReseller("suspended", "must be true or false")
    await pool.execute(
        """
        UPDATE reseller_subusers SET quota_bytes = $2, spend_limit = $3::numeric,
            suspended_at = CASE WHEN $4::boolean IS NULL THEN suspended_at
                                WHEN $4 THEN COALESCE(suspended_at, now()) END
        WHERE account_id = $1
        """,
        sub.account_id,
        quota,
        limit,
        suspended,
    )
    return await get_subuser(pool, reseller_id, sub.name)


async def create_subuser_key(
    pool: asyncpg.Pool,
    reseller_id: int,
    name: str,
    *,
    label: str = "",
    scopes: frozenset[str] = DEFAULT_SUBUSER_SCOPES,
) -> NewKey:
    """A new API key of the sub-user (scopes among ``SUBUSER_SCOPES``). Raises
    ``UnknownSubuser``, ``InvalidAccount`` for a bad label or scopes."""
    sub = await get_subuser(pool, reseller_id, name)
    if not scopes or not scopes <= SUBUSER_SCOPES:
        raise InvalidAccount("scopes", f"must be a non-empty subset of {', '.join(sorted(SUBUSER_SCOPES))}")
    return await accounts.create_key(pool, account_name=sub.account_name, label=label, scopes=scopes)


async def list_subuser_keys(pool: asyncpg.Pool, reseller_id: int, name: str) -> list[ApiKey]:
    sub = await get_subuser(pool, reseller_id, name)
    return await accounts.list_keys(pool, sub.account_name)


async def revoke_subuser_key(pool: asyncpg.Pool, reseller_id: int, name: str, key_id: str) -> bool:
    """Revoke one of the sub-user's keys; ``False`` when it has no live key by that id."""
    sub = await get_subuser(pool, reseller_id, name)
    return await accounts.revoke_key(pool, key_id, account_id=sub.account_id)


async def transfer(
    pool: asyncpg.Pool, reseller_id: int, name: str, amount: Amount, *, to_subuser: bool, reference: str
) -> bool:
    """Move ``amount`` from the reseller's balance to the sub-user's (``to_subuser``) or back;
    idempotent by ``reference`` (per reseller): ``False`` when it was used already. Raises
    ``UnknownSubuser``, ``InsufficientFunds`` and ``InvalidAmount`` as ``billing.ledger`` does."""
    sub = await get_subuser(pool, reseller_id, name)
    reseller = await pool.fetchval("SELECT name FROM accounts WHERE id = $1", reseller_id)
    if not isinstance(reference, str) or not 1 <= len(reference) <= 200:
        raise InvalidAmount("the reference must be 1-200 characters")
    ours, theirs = ledger.requester_account(reseller), ledger.requester_account(sub.account_name)
    leg = Leg(ours, theirs, amount) if to_subuser else Leg(theirs, ours, amount)
    kind = KIND_FUNDING if to_subuser else KIND_REFUND
    return (
        await ledger.post(pool, [leg], kind=kind, reference=f"reseller:{reseller_id}:{reference}") is not None
    )


# -- what the gateway checks -------------------------------------------------------------------


def proxy_password(secret: str) -> str:
    """What a sub-user gives as its password on its reseller's listener: its key's secret
    without the platform's ``ipsx_`` prefix (the whole secret is accepted too)."""
    return secret.removeprefix(_SECRET_PREFIX)


def full_secret(password: str) -> str:
    """The key secret a listener password stands for (see :func:`proxy_password`)."""
    return password if password.startswith(_SECRET_PREFIX) else _SECRET_PREFIX + password


def subuser_lookup(reseller_id: int) -> Lookup:
    """The credential check of reseller ``reseller_id``'s listener, for ``KeyCache(lookup=…)``:
    ``(pool, name, secret)`` to the live key of the reseller's sub-user called ``name``, else
    ``None`` (an ordinary account's key, another reseller's sub-user's, a wrong secret)."""

    async def lookup(pool: asyncpg.Pool, name: str, secret: str) -> ApiKey | None:
        try:
            name = validate_name(name)
        except InvalidAccount:
            return None
        key = await accounts.authenticate_secret(pool, full_secret(secret))
        if key is None or key.reseller_id != reseller_id or key.subuser != name:
            return None
        return key

    return lookup


_STANDING = """
WITH sub AS (
    SELECT s.account_id, a.name, s.quota_bytes, s.spend_limit, s.suspended_at, r.markup_bps
    FROM reseller_subusers s JOIN accounts a ON a.id = s.account_id
    JOIN resellers r ON r.account_id = s.reseller_id
    WHERE a.name = $1
)
SELECT sub.quota_bytes, sub.spend_limit::text AS spend_limit, sub.suspended_at IS NOT NULL AS suspended,
       sub.markup_bps,
       (SELECT COALESCE(SUM(u.bytes_up + u.bytes_down), 0) FROM usage_events u
         WHERE u.requester = sub.name AND u.closed_at >= $2)::text AS used_bytes,
       (SELECT COALESCE(SUM(d.charge), 0) FROM deals d
         WHERE d.requester = sub.name AND d.state = 'settled' AND d.updated_at >= $2)::text AS settled,
       (SELECT COALESCE(SUM(m.charged), 0) FROM reseller_markups m
         WHERE m.subuser_id = sub.account_id AND m.created_at >= $2)::text AS markups,
       (SELECT COALESCE(SUM(div(d.price_per_gb * c.bytes + 999999999, 1000000000)), 0)
          FROM deals d CROSS JOIN LATERAL (
              SELECT COALESCE(SUM(u.bytes_up + u.bytes_down), 0) AS bytes FROM usage_events u
              WHERE u.deal_id = d.deal_id) c
         WHERE d.requester = sub.name AND d.state = ANY($3::text[]))::text AS open_cost
FROM sub
"""


async def standing(
    pool: asyncpg.Pool, account_name: str, *, now: dt.datetime | None = None
) -> Standing | None:
    """The sub-user ``account_name``'s (internal name) month so far, or ``None`` for an account
    that is no sub-user. Open deals count what their carried traffic costs at their price per GB
    (time charges count once settled), with the markup at its current rate."""
    start = month_start(now or dt.datetime.now(dt.UTC))
    row = await pool.fetchrow(_STANDING, account_name, start, list(_LIVE_DEALS))
    if row is None:
        return None
    open_cost = int(row["open_cost"])
    open_cost += markup(Amount(min(open_cost, MAX_AMOUNT)), row["markup_bps"], MAX_AMOUNT).due
    limit = row["spend_limit"]
    return Standing(
        suspended=row["suspended"],
        used_bytes=int(row["used_bytes"]),
        quota_bytes=row["quota_bytes"],
        spent=int(row["settled"]) + int(row["markups"]) + open_cost,
        spend_limit=None if limit is None else int(limit),
    )


class StandingCache:
    """The listener's view of its sub-users' standing: :func:`standing` at most every ``ttl``
    seconds per sub-user. When the database does not answer, the last answer stands; with none,
    ``AccountsUnavailable`` is raised."""

    def __init__(self, pool: asyncpg.Pool, *, ttl: float = 5.0, max_entries: int = 100_000) -> None:
        self._pool = pool
        self._ttl = ttl
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, str | None]] = {}
        self._inflight: dict[str, asyncio.Task[str | None]] = {}

    async def refusal(self, account_name: str) -> str | None:
        """:attr:`Standing.refusal` of the sub-user (``None`` for an account that is none)."""
        entry = self._entries.get(account_name)
        if entry is not None and time.monotonic() < entry[0]:
            return entry[1]
        task = self._inflight.get(account_name)
        if task is None:
            task = asyncio.create_task(self._lookup(account_name))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._inflight[account_name] = task
        return await asyncio.shield(task)

    async def _lookup(self, account_name: str) -> str | None:
        try:
            found = await standing(self._pool, account_name)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            stale = self._entries.get(account_name)
            if stale is not None:
                return stale[1]
            raise AccountsUnavailable() from exc
        finally:
            del self._inflight[account_name]
        answer = None if found is None else found.refusal
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[account_name] = (time.monotonic() + self._ttl, answer)
        return answer


# -- settlement --------------------------------------------------------------------------------


async def markups_of(pool: asyncpg.Pool, names: Sequence[str]) -> dict[str, int]:
    """The markup (basis points) each sub-user among the account ``names`` pays its reseller;
    accounts that are no sub-user are left out. The market holds a sub-user's orders to what its
    balance covers with the markup on top, so the markup charged at settlement is never short."""
    rows = await pool.fetch(
        "SELECT a.name, r.markup_bps FROM accounts a JOIN reseller_subusers s ON s.account_id = a.id"
        " JOIN resellers r ON r.account_id = s.reseller_id WHERE a.name = ANY($1::text[])",
        list(names),
    )
    return {row["name"]: row["markup_bps"] for row in rows}


def spendable(balance: int, markup_bps: int) -> int:
    """The largest charge ``balance`` covers together with its markup of ``markup_bps``: ``c``
    with ``c + c * markup_bps // 10_000 <= balance`` (``matching.settlement.markup`` rounds down),
    i.e. ``c * (10_000 + markup_bps) < (balance + 1) * 10_000``."""
    return ((balance + 1) * BPS - 1) // (BPS + markup_bps)


async def charge_markup_in(
    conn: asyncpg.Connection, deal_id: str, requester: str, charge: Amount
) -> Markup | None:
    """Charge the reseller's markup on a settled deal of its sub-user ``requester``, on ``conn``
    inside the settlement's transaction (after its hold is resolved). ``None`` when the requester
    is no sub-user, the charge is 0, or the deal's markup was charged already (idempotent).

    Moves ``markup.charged`` from ``requester:<sub-user>`` to ``provider:<reseller>`` (the
    reseller's earnings) as one movement referenced ``markup:<deal_id>`` and records the markup.
    """
    if charge <= 0:
        return None
    terms = await conn.fetchrow(
        "SELECT s.account_id, s.reseller_id, r.markup_bps, ra.name AS reseller"
        " FROM accounts a JOIN reseller_subusers s ON s.account_id = a.id"
        " JOIN resellers r ON r.account_id = s.reseller_id JOIN accounts ra ON ra.id = r.account_id"
        " WHERE a.name = $1",
        requester,
    )
    if terms is None:
        return None
    payer = ledger.requester_account(requester)
    # Locked: the balance read is the one the markup leg debits.
    available = await conn.fetchval(
        "SELECT balance::text FROM ledger_balances WHERE account = $1 FOR UPDATE", payer
    )
    owed = markup(charge, terms["markup_bps"], 0 if available is None else int(available))
    recorded = await conn.fetchval(
        "INSERT INTO reseller_markups (deal_id, reseller_id, subuser_id, charge, markup_bps, due, charged)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (deal_id) DO NOTHING RETURNING 1",
        deal_id,
        terms["reseller_id"],
        terms["account_id"],
        int(charge),
        owed.markup_bps,
        int(owed.due),
        int(owed.charged),
    )
    if not recorded:
        return None
    if owed.charged > 0:
        earnings = ledger.provider_account(terms["reseller"])
        await post_in(
            conn, [Leg(payer, earnings, owed.charged)], kind=KIND_MARKUP, reference=f"markup:{deal_id}"
        )
    return owed


# -- reports -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubuserUsage:
    name: str
    streams: int
    bytes_up: int
    bytes_down: int
    charged: int  # settled charges (the provider's price and the commission), base units
    markup_due: int
    markup_charged: int  # what the reseller earned from this sub-user


_USAGE = """
SELECT s.name,
       COALESCE(u.streams, 0) AS streams, COALESCE(u.up, 0)::text AS up, COALESCE(u.down, 0)::text AS down,
       COALESCE(d.charged, 0)::text AS charged,
       COALESCE(m.due, 0)::text AS due, COALESCE(m.charged, 0)::text AS markup
FROM reseller_subusers s JOIN accounts a ON a.id = s.account_id
LEFT JOIN LATERAL (
    SELECT count(*) AS streams, SUM(bytes_up) AS up, SUM(bytes_down) AS down FROM usage_events
    WHERE requester = a.name AND closed_at >= $2 AND closed_at < $3) u ON true
LEFT JOIN LATERAL (
    SELECT SUM(charge) AS charged FROM deals
    WHERE requester = a.name AND state = 'settled' AND updated_at >= $2 AND updated_at < $3) d ON true
LEFT JOIN LATERAL (
    SELECT SUM(due) AS due, SUM(charged) AS charged FROM reseller_markups
    WHERE subuser_id = s.account_id AND created_at >= $2 AND created_at < $3) m ON true
WHERE s.reseller_id = $1 AND ($4::text[] IS NULL OR s.name = ANY($4::text[]))
ORDER BY s.name
"""


async def usage_report(
    pool: asyncpg.Pool,
    reseller_id: int,
    start: dt.datetime,
    end: dt.datetime,
    *,
    names: Sequence[str] | None = None,
) -> list[SubuserUsage]:
    """Each of the reseller's sub-users' (or those in ``names``) traffic, settled charges and
    markup from ``start`` (inclusive) to ``end``, by name."""
    rows = await pool.fetch(_USAGE, reseller_id, start, end, None if names is None else list(names))
    return [
        SubuserUsage(
            name=row["name"],
            streams=row["streams"],
            bytes_up=int(row["up"]),
            bytes_down=int(row["down"]),
            charged=int(row["charged"]),
            markup_due=int(row["due"]),
            markup_charged=int(row["markup"]),
        )
        for row in rows
    ]


async def markup_earned(pool: asyncpg.Pool, reseller_id: int) -> Amount:
    """Every markup the reseller was paid, since it became one."""
    total = await pool.fetchval(
        "SELECT COALESCE(SUM(charged), 0)::text FROM reseller_markups WHERE reseller_id = $1", reseller_id
    )
    return Amount(int(total))

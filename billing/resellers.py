"""White-label resellers: brand and markup, sub-users, their keys, and the funds between them.

A **reseller** is an account the operator flagged as one (:func:`create_reseller`). It has a brand,
shown to its customers on its own gateway listener (``ipsx gateway --reseller-port NAME=PORT``)
instead of IPSX, and a markup in basis points of every settled charge of its sub-users.

A **sub-user** is an account of its own — its ledger balance, API keys, usage and deals are those
of any account, under an internal name (``s_`` and 10 hex digits) and a wallet address derived
from it that no one holds a key to (so it can neither sign in nor withdraw) — owned by one
reseller, which knows it by a name unique among its sub-users and makes and revokes its keys
(:func:`create_subuser_key`). The reseller funds its sub-users from its own balance
(:func:`transfer`) and sets a monthly traffic quota (bytes) and spend limit (base units) per
sub-user, or suspends it (:func:`update_subuser`).

How a sub-user's key is checked on the listener, its standing against those limits, the markup it
pays and the usage report are ``billing.reseller_terms``.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import re
import secrets
from dataclasses import dataclass

import asyncpg
from eth_utils.address import to_checksum_address

from billing import accounts, ledger
from billing.accounts import ApiKey, NewKey, validate_name
from billing.errors import AccountExists, BillingError, InvalidAccount, InvalidAmount, UnknownAccount
from billing.ledger import MAX_AMOUNT, Amount, Leg
from matching.settlement import MAX_MARKUP_BPS

SUBUSER_SCOPES = frozenset({"proxy", "read", "keys"})  # what a sub-user's key may be given
DEFAULT_SUBUSER_SCOPES = frozenset({"proxy", "read"})
KIND_FUNDING = "reseller_funding"  # reseller -> sub-user
KIND_REFUND = "reseller_refund"  # sub-user -> reseller
MAX_BYTES = 2**63 - 1
_BRAND = re.compile(r"[A-Za-z0-9][ !#-\[\]-~]{0,63}", re.ASCII)  # printable ASCII but " and \
_HOST = re.compile(r"[a-z0-9.-]{1,253}", re.ASCII)
_NEW_NAME_ATTEMPTS = 5


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


class ReferenceReused(ResellerError):
    """The idempotency reference was used for a transfer with other terms (another sub-user,
    direction or amount): nothing was moved."""

    def __init__(self) -> None:
        super().__init__("this reference was used for a transfer with other terms")


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


# The legs of the movement a reference names (``billing.ledger`` writes them; read back here
# because the reference alone does not say what it moved).
_MOVED = """
SELECT m.kind, t.debit_account, t.credit_account, t.amount::text AS amount
FROM ledger_movements m JOIN ledger_transfers t ON t.movement_id = m.id
WHERE m.reference = $1 ORDER BY t.id
"""


async def transfer(
    pool: asyncpg.Pool, reseller_id: int, name: str, amount: Amount, *, to_subuser: bool, reference: str
) -> bool:
    """Move ``amount`` from the reseller's balance to the sub-user's (``to_subuser``) or back;
    idempotent by ``reference`` (per reseller): ``False`` when that very transfer (same sub-user,
    direction and amount) was made with it already, and nothing moved now. Raises
    ``ReferenceReused`` when the reference was used for another transfer, ``UnknownSubuser``,
    ``InsufficientFunds`` and ``InvalidAmount`` as ``billing.ledger`` does."""
    sub = await get_subuser(pool, reseller_id, name)
    reseller = await pool.fetchval("SELECT name FROM accounts WHERE id = $1", reseller_id)
    if not isinstance(reference, str) or not 1 <= len(reference) <= 200:
        raise InvalidAmount("the reference must be 1-200 characters")
    ours, theirs = ledger.requester_account(reseller), ledger.requester_account(sub.account_name)
    leg = Leg(ours, theirs, amount) if to_subuser else Leg(theirs, ours, amount)
    kind = KIND_FUNDING if to_subuser else KIND_REFUND
    reference = f"reseller:{reseller_id}:{reference}"
    async with pool.acquire() as conn, conn.transaction():
        if await ledger.post_in(conn, [leg], kind=kind, reference=reference) is not None:
            return True
        # A concurrent first use has committed by now (the insert waited for it): its legs show.
        moved = await conn.fetch(_MOVED, reference)
    stored = [(row["kind"], row["debit_account"], row["credit_account"], int(row["amount"])) for row in moved]
    if stored != [(kind, leg.debit, leg.credit, int(amount))]:
        raise ReferenceReused()
    return False

"""What a reseller's sub-users may do and what they pay: the listener's credential check, their
standing against their limits, the reseller's markup, and the usage report.

On the reseller's listener a client authenticates as ``<name>[-targeting…]:<proxy password>``
(:func:`subuser_lookup`; the password is the key's secret without its ``ipsx_`` prefix,
:func:`proxy_password`); nowhere else does a sub-user's key proxy (``billing.accounts.authenticate``
refuses it). A sub-user's monthly traffic quota (bytes) and spend limit (base units: what settled
charges, markups and the carried traffic of open deals cost this calendar month, UTC) are set by
its reseller (``billing.resellers``); :func:`standing` says when either is reached or the sub-user
is suspended, and the listener refuses new streams then (:class:`StandingCache`).

When a sub-user's deal settles, :func:`charge_markup_in` moves the reseller's markup
(``matching.settlement.markup``) from the sub-user's balance to the reseller's earnings
(``provider:<reseller>``), in the settlement's transaction, once per deal.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from billing import accounts, ledger
from billing.accounts import ApiKey, Lookup, validate_name
from billing.errors import AccountsUnavailable, InvalidAccount
from billing.ledger import MAX_AMOUNT, Amount, Leg, post_in
from matching.settlement import KIND_MARKUP, Markup, markup

_SECRET_PREFIX = "ipsx_"  # noqa: S105 -- the prefix of every API key secret (billing.accounts), no secret
_LIVE_DEALS = ("proposed", "active", "completed", "disputed", "resolved")


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

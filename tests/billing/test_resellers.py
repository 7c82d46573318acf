"""White-label resellers on the real PostgreSQL: tenancy, credentials, standing, the markup charged
at settlement (exact, double-entry, once per deal) and the usage report."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing import accounts, holds, ledger, reseller_terms, resellers
from billing.accounts import KeyCache
from billing.errors import HoldResolved, InsufficientFunds, InvalidAccount, UnknownAccount
from billing.ledger import COMMISSION, Amount, provider_account, requester_account
from billing.resellers import (
    InvalidReseller,
    NotAReseller,
    Reseller,
    Subuser,
    SubuserExists,
    UnknownSubuser,
)
from matching.deal_errors import InvalidSettlementInput
from matching.settlement import (
    KIND_MARKUP,
    Markup,
    SettlementAccounts,
    billable_seconds,
    covered_charge,
    hold_payouts,
    markup,
    settle,
)

IPSX = 10**18
GB = 10**9
ONE_IPSX = Amount(IPSX)
TWO_IPSX = Amount(2 * IPSX)
NOTHING = Amount(0)
NOW = dt.datetime.now(dt.UTC)
ACCOUNTS = SettlementAccounts(
    reserve=lambda name: holds.hold_account(requester_account(name)),
    available=requester_account,
    payout=provider_account,
    commission=COMMISSION,
)


@dataclass(frozen=True)
class Terms:
    """What settlement reads from a deal."""

    deal_id: str
    requester: str
    provider: str = "prov"
    price_per_gb: Amount = ONE_IPSX
    price_per_hour: Amount = NOTHING
    reserve: Amount = TWO_IPSX
    duration_s: int = 600
    activated_at: int | None = 1_700_000_000
    ended_at: int | None = 1_700_000_060


async def _reseller(
    pool: asyncpg.Pool, name: str = "acme", digit: str = "a", *, markup_bps: int = 2500, funds: int = 100
) -> Reseller:
    await accounts.create_account(pool, address="0x" + digit * 40, name=name)
    await ledger.credit_account(pool, name, Amount(funds * IPSX), f"fund-{name}")
    return await resellers.create_reseller(pool, name, brand=f"{name.title()} Proxy", markup_bps=markup_bps)


async def _funded_subuser(
    pool: asyncpg.Pool, reseller: Reseller, name: str, amount: int, **limits: int
) -> Subuser:
    sub = await resellers.create_subuser(pool, reseller.account_id, name, **limits)
    if amount:
        await resellers.transfer(
            pool, reseller.account_id, name, Amount(amount), to_subuser=True, reference=f"fund-{name}"
        )
    return sub


async def _settle(pool: asyncpg.Pool, terms: Terms, billable_bytes: int) -> Markup | None:
    """What the market does when a deal settles: resolve its hold, then charge the markup, in one
    transaction."""
    settlement = settle(terms, billable_bytes, billable_seconds(terms), 1_000)
    async with pool.acquire() as conn, conn.transaction():
        await holds.resolve_in(conn, terms.deal_id, hold_payouts(settlement, ACCOUNTS))
        return await reseller_terms.charge_markup_in(conn, terms.deal_id, terms.requester, settlement.charge)


async def _total(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT COALESCE(SUM(balance), 0)::text FROM ledger_balances"))


async def _usage(
    pool: asyncpg.Pool,
    requester: str,
    up: int,
    down: int,
    *,
    deal_id: str | None = None,
    at: dt.datetime = NOW,
) -> None:
    await pool.execute(
        "INSERT INTO usage_events (event_id, deal_id, requester, provider, exit_id, node, protocol, target,"
        " bytes_up, bytes_down, opened_at, closed_at, outcome, attempts)"
        " VALUES ($1, $2, $3, 'prov', 'exit-1', 'gw-1', 'connect', 'example.com:443',"
        " $4, $5, $6, $6, 'ok', 1)",
        uuid.uuid4().hex,
        deal_id,
        requester,
        up,
        down,
        at,
    )


async def _deal(pool: asyncpg.Pool, requester: str, state: str, *, charge: int | None = None) -> str:
    deal_id = f"d{uuid.uuid4().hex[:12]}"
    await pool.execute(
        "INSERT INTO deals (deal_id, request_id, offer_id, requester, provider, exit_id, price_per_gb,"
        " price_per_hour, reserve, duration_s, traffic_bytes, dedicated, state, record, charge)"
        " VALUES ($1, 'r1', 'o1', $2, 'prov', 'exit-1', $3, 0, $3, 600, 0, false, $4, '{}'::jsonb, $5)",
        deal_id,
        requester,
        IPSX,
        state,
        charge,
    )
    return deal_id


# -- the markup at settlement ------------------------------------------------------------------


async def test_charge_markup_in_call_charges_subuser_and_credits_reseller_exactly(pool: asyncpg.Pool) -> None:
    acme = await _reseller(pool)
    bob = await _funded_subuser(pool, acme, "bob", 10 * IPSX)
    await holds.reserve(pool, requester_account(bob.account_name), Amount(2 * IPSX), "deal-1")

    owed = await _settle(pool, Terms("deal-1", bob.account_name), 700_000_001)

    charge = -(-IPSX * 700_000_001 // GB)  # 0.700000001 IPSX, rounded up
    commission = charge * 1_000 // 10_000
    due = charge * 2_500 // 10_000
    assert owed is not None and (owed.due, owed.charged, owed.shortfall) == (due, due, 0)
    assert await ledger.balance(pool, requester_account(bob.account_name)) == 10 * IPSX - charge - due
    assert await holds.reserved(pool, requester_account(bob.account_name)) == 0
    assert await ledger.balance(pool, provider_account("prov")) == charge - commission
    assert await ledger.balance(pool, COMMISSION) == commission
    assert await ledger.balance(pool, provider_account("acme")) == due
    assert await ledger.balance(pool, requester_account("acme")) == 90 * IPSX
    legs = await pool.fetch(
        "SELECT debit_account, credit_account, amount::text AS amount FROM ledger_transfers WHERE kind = $1",
        KIND_MARKUP,
    )
    assert [tuple(leg) for leg in legs] == [
        (requester_account(bob.account_name), provider_account("acme"), str(due))
    ]
    assert await ledger.check_balances(pool) == {}
    assert await _total(pool) == 0
    assert await reseller_terms.markup_earned(pool, acme.account_id) == due


async def test_charge_markup_in_call_is_idempotent_with_the_settlement(pool: asyncpg.Pool) -> None:
    acme = await _reseller(pool)
    bob = await _funded_subuser(pool, acme, "bob", 10 * IPSX)
    await holds.reserve(pool, requester_account(bob.account_name), Amount(2 * IPSX), "deal-2")
    terms = Terms("deal-2", bob.account_name)
    first = await _settle(pool, terms, GB // 2)
    assert first is not None and first.charged > 0
    before = await pool.fetch("SELECT account, balance::text FROM ledger_balances ORDER BY account")

    with pytest.raises(HoldResolved):  # the hold resolves once: the whole retry rolls back
        await _settle(pool, terms, GB // 2)
    async with pool.acquire() as conn, conn.transaction():  # the markup alone, again
        assert (
            await reseller_terms.charge_markup_in(conn, "deal-2", bob.account_name, Amount(IPSX // 2)) is None
        )

    assert await pool.fetch("SELECT account, balance::text FROM ledger_balances ORDER BY account") == before
    assert await pool.fetchval("SELECT count(*) FROM reseller_markups WHERE deal_id = 'deal-2'") == 1
    assert await pool.fetchval("SELECT count(*) FROM ledger_movements WHERE reference = 'markup:deal-2'") == 1
    assert await ledger.check_balances(pool) == {}


async def test_charge_markup_in_call_records_a_shortfall_rather_than_overdraw(pool: asyncpg.Pool) -> None:
    acme = await _reseller(pool)
    bob = await _funded_subuser(pool, acme, "bob", IPSX)
    await holds.reserve(pool, requester_account(bob.account_name), Amount(IPSX), "deal-3")

    owed = await _settle(pool, Terms("deal-3", bob.account_name, reserve=Amount(IPSX)), 2 * GB)

    # The charge took the whole reserve (capped) and bob has nothing left for the markup.
    assert owed is not None and owed.due == IPSX // 4 and owed.charged == 0 and owed.shortfall == IPSX // 4
    assert await ledger.balance(pool, requester_account(bob.account_name)) == 0
    assert await ledger.balance(pool, provider_account("acme")) == 0
    row = await pool.fetchrow(
        "SELECT due::text, charged::text FROM reseller_markups WHERE deal_id = 'deal-3'"
    )
    assert tuple(row) == (str(IPSX // 4), "0")
    assert await _total(pool) == 0


async def test_charge_markup_in_call_ignores_ordinary_requesters(pool: asyncpg.Pool) -> None:
    await _reseller(pool)
    await accounts.create_account(pool, address="0x" + "c" * 40, name="carol")
    await ledger.credit_account(pool, "carol", Amount(5 * IPSX), "fund-carol")
    await holds.reserve(pool, requester_account("carol"), Amount(2 * IPSX), "deal-4")

    assert await _settle(pool, Terms("deal-4", "carol"), GB) is None
    assert await ledger.balance(pool, requester_account("carol")) == 4 * IPSX
    assert await pool.fetchval("SELECT count(*) FROM reseller_markups") == 0


async def test_markup_call_rounds_down_and_caps_at_the_balance() -> None:
    assert markup(Amount(7), 2_500, 10) == Markup(Amount(7), 2_500, Amount(1), Amount(1))
    capped = markup(Amount(10 * IPSX), 15_000, IPSX)
    assert (capped.due, capped.charged, capped.shortfall) == (15 * IPSX, IPSX, 14 * IPSX)
    with pytest.raises(InvalidSettlementInput, match="markup_bps"):
        markup(Amount(1), 100_001, 0)
    with pytest.raises(InvalidSettlementInput, match="charge"):
        markup(Amount(-1), 100, 0)


@given(
    charge=st.integers(0, 10**30),
    bps=st.integers(0, 100_000),
    available=st.integers(0, 10**31),
)
def test_markup_call_invariants(charge: int, bps: int, available: int) -> None:
    owed = markup(Amount(charge), bps, available)
    assert owed.due * 10_000 <= charge * bps < (owed.due + 1) * 10_000
    assert owed.charged + owed.shortfall == owed.due
    assert 0 <= owed.charged <= available


def test_covered_charge_call_leaves_the_markup_covered_to_the_base_unit() -> None:
    cases = [(12_500, 2500), (12_499, 2500), (10**18, 1), (10**18 + 7, 333), (7, 10_000), (0, 300), (5, 0)]
    for balance_, bps in cases:
        spend = covered_charge(balance_, bps)
        assert spend + markup(Amount(spend), bps, balance_).due <= balance_
        assert spend + 1 + markup(Amount(spend + 1), bps, balance_).due > balance_  # the largest such


# -- tenancy -----------------------------------------------------------------------------------


async def test_create_subuser_call_names_are_unique_per_reseller(pool: asyncpg.Pool) -> None:
    acme = await _reseller(pool)
    other = await _reseller(pool, "globex", "b")
    bob = await resellers.create_subuser(pool, acme.account_id, "Bob", quota_bytes=GB)
    with pytest.raises(SubuserExists):
        await resellers.create_subuser(pool, acme.account_id, "bob")
    their_bob = await resellers.create_subuser(pool, other.account_id, "bob")

    assert bob.name == their_bob.name == "bob"
    assert bob.account_name != their_bob.account_name and bob.account_name.startswith("s_")
    assert (await resellers.get_subuser(pool, acme.account_id, "bob")).account_id == bob.account_id
    assert (await resellers.get_subuser(pool, other.account_id, "bob")).account_id == their_bob.account_id
    await resellers.create_subuser(pool, acme.account_id, "dave")
    with pytest.raises(UnknownSubuser):  # acme's sub-user is no business of globex's
        await resellers.get_subuser(pool, other.account_id, "dave")
    assert [s.name for s in await resellers.list_subusers(pool, other.account_id)] == ["bob"]
    with pytest.raises(InvalidAccount):
        await resellers.create_subuser(pool, acme.account_id, "bad-name")
    with pytest.raises(InvalidReseller, match="quota_bytes"):
        await resellers.create_subuser(pool, acme.account_id, "erin", quota_bytes=-1)


async def test_create_reseller_call_refuses_what_cannot_be_one(pool: asyncpg.Pool) -> None:
    acme = await _reseller(pool)
    bob = await resellers.create_subuser(pool, acme.account_id, "bob")
    with pytest.raises(InvalidReseller, match="sub-user"):
        await resellers.create_reseller(pool, bob.account_name, brand="Bob Net")
    with pytest.raises(InvalidReseller, match="already"):
        await resellers.create_reseller(pool, "acme", brand="Acme Again")
    with pytest.raises(UnknownAccount):
        await resellers.create_reseller(pool, "nobody", brand="Nobody")
    await accounts.create_account(pool, address="0x" + "d" * 40, name="dan")
    with pytest.raises(InvalidReseller, match="brand"):
        await resellers.create_reseller(pool, "dan", brand='Dan "Proxies"')
    with pytest.raises(InvalidReseller, match="markup_bps"):
        await resellers.create_reseller(pool, "dan", brand="Dan", markup_bps=100_001)
    with pytest.raises(NotAReseller):
        await resellers.create_subuser(pool, (await accounts.get_account(pool, "dan")).id, "x")  # type: ignore[union-attr]


async def test_subuser_keys_only_the_resellers_own(pool: asyncpg.Pool) -> None:
    acme = await _reseller(pool)
    await resellers.create_subuser(pool, acme.account_id, "bob")
    await resellers.create_subuser(pool, acme.account_id, "dave")
    key = await resellers.create_subuser_key(pool, acme.account_id, "bob", label="laptop")
    assert key.key.scopes == frozenset({"proxy", "read"}) and key.key.subuser == "bob"
    assert key.key.reseller_id == acme.account_id
    with pytest.raises(InvalidAccount, match="scopes"):
        await resellers.create_subuser_key(pool, acme.account_id, "bob", scopes=frozenset({"trade"}))
    # dave's reseller cannot revoke bob's key through dave
    assert await resellers.revoke_subuser_key(pool, acme.account_id, "dave", key.key.key_id) is False
    assert await resellers.revoke_subuser_key(pool, acme.account_id, "bob", key.key.key_id) is True
    listed = await resellers.list_subuser_keys(pool, acme.account_id, "bob")
    assert [k.key_id for k in listed] == [key.key.key_id] and listed[0].revoked_at is not None


async def test_transfer_call_moves_funds_once_per_reference(pool: asyncpg.Pool) -> None:
    acme = await _reseller(pool, funds=3)
    bob = await resellers.create_subuser(pool, acme.account_id, "bob")
    assert await resellers.transfer(
        pool, acme.account_id, "bob", Amount(2 * IPSX), to_subuser=True, reference="t1"
    )
    assert not await resellers.transfer(
        pool, acme.account_id, "bob", Amount(2 * IPSX), to_subuser=True, reference="t1"
    )
    with pytest.raises(InsufficientFunds):
        await resellers.transfer(
            pool, acme.account_id, "bob", Amount(2 * IPSX), to_subuser=True, reference="t2"
        )
    assert await resellers.transfer(
        pool, acme.account_id, "bob", Amount(IPSX), to_subuser=False, reference="t3"
    )
    assert await ledger.balance(pool, requester_account(bob.account_name)) == IPSX
    assert await ledger.balance(pool, requester_account("acme")) == 2 * IPSX
    assert await _total(pool) == 0


# -- credentials -------------------------------------------------------------------------------


async def test_subuser_lookup_call_accepts_its_own_subusers_only(pool: asyncpg.Pool) -> None:
    acme = await _reseller(pool)
    other = await _reseller(pool, "globex", "b")
    bob = await resellers.create_subuser(pool, acme.account_id, "bob")
    secret = (await resellers.create_subuser_key(pool, acme.account_id, "bob")).secret
    await resellers.create_subuser(pool, other.account_id, "bob")
    await accounts.create_account(pool, address="0x" + "c" * 40, name="carol")
    carol = (await accounts.create_key(pool, account_name="carol")).secret

    acme_listener = reseller_terms.subuser_lookup(acme.account_id)
    found = await acme_listener(pool, "BOB", secret)
    assert found is not None and found.account_name == bob.account_name
    password = reseller_terms.proxy_password(secret)
    assert not password.startswith("ipsx") and await acme_listener(pool, "bob", password) == found
    assert await acme_listener(pool, bob.account_name, secret) is None  # the internal name is no user name
    assert await acme_listener(pool, "carol", carol) is None  # an ordinary account's key
    assert await reseller_terms.subuser_lookup(other.account_id)(pool, "bob", secret) is None  # globex's bob
    # The main port's check never accepts a sub-user's key, by either name.
    assert await accounts.authenticate(pool, bob.account_name, secret) is None
    assert await accounts.authenticate(pool, "bob", secret) is None
    assert await accounts.authenticate(pool, "carol", carol) is not None
    cached = KeyCache(pool, lookup=acme_listener)
    assert (await cached.check("bob", secret)) == found


# -- standing ----------------------------------------------------------------------------------


async def test_standing_call_counts_the_months_traffic_against_the_quota(pool: asyncpg.Pool) -> None:
    acme = await _reseller(pool)
    bob = await resellers.create_subuser(pool, acme.account_id, "bob", quota_bytes=1_000)
    await _usage(pool, bob.account_name, 400, 500)
    await _usage(
        pool, bob.account_name, 10**6, 0, at=reseller_terms.month_start(NOW) - dt.timedelta(seconds=1)
    )
    standing = await reseller_terms.standing(pool, bob.account_name)
    assert standing is not None and standing.used_bytes == 900 and standing.refusal is None

    await _usage(pool, bob.account_name, 100, 0)
    standing = await reseller_terms.standing(pool, bob.account_name)
    assert standing is not None and standing.used_bytes == 1_000 and standing.refusal == "quota_exceeded"
    next_month = reseller_terms.next_month(reseller_terms.month_start(NOW))
    fresh = await reseller_terms.standing(pool, bob.account_name, now=next_month)
    assert fresh is not None and fresh.used_bytes == 0 and fresh.refusal is None
    await resellers.update_subuser(pool, acme.account_id, "bob", suspended=True)
    standing = await reseller_terms.standing(pool, bob.account_name)
    assert standing is not None and standing.refusal == "suspended"
    await resellers.update_subuser(pool, acme.account_id, "bob", suspended=False, quota_bytes=None)
    standing = await reseller_terms.standing(pool, bob.account_name)
    assert standing is not None and standing.refusal is None
    assert await reseller_terms.standing(pool, "acme") is None  # no sub-user


async def test_standing_call_counts_charges_markups_and_open_traffic_against_the_spend_limit(
    pool: asyncpg.Pool,
) -> None:
    acme = await _reseller(pool)  # 25 % markup
    bob = await _funded_subuser(pool, acme, "bob", 10 * IPSX)
    settled = await _deal(pool, bob.account_name, "settled", charge=IPSX // 10)
    await pool.execute(
        "INSERT INTO reseller_markups (deal_id, reseller_id, subuser_id, charge, markup_bps, due, charged)"
        " VALUES ($1, $2, $3, $4, 2500, $5, $5)",
        settled,
        acme.account_id,
        bob.account_id,
        IPSX // 10,
        IPSX // 40,
    )
    active = await _deal(pool, bob.account_name, "active")
    await _usage(pool, bob.account_name, 100_000_000, 100_000_001, deal_id=active)  # at 1 IPSX/GB
    open_cost = -(-IPSX * 200_000_001 // GB)
    spent = IPSX // 10 + IPSX // 40 + open_cost + open_cost * 2_500 // 10_000

    standing = await reseller_terms.standing(pool, bob.account_name)
    assert standing is not None and standing.spent == spent and standing.refusal is None
    await resellers.update_subuser(pool, acme.account_id, "bob", spend_limit=spent)
    standing = await reseller_terms.standing(pool, bob.account_name)
    assert standing is not None and standing.refusal == "spend_limit_reached"
    await resellers.update_subuser(pool, acme.account_id, "bob", spend_limit=spent + 1)
    standing = await reseller_terms.standing(pool, bob.account_name)
    assert standing is not None and standing.refusal is None


async def test_standing_cache_call_keeps_an_answer_for_its_ttl(pool: asyncpg.Pool) -> None:
    acme = await _reseller(pool)
    bob = await resellers.create_subuser(pool, acme.account_id, "bob", quota_bytes=0)
    cache = reseller_terms.StandingCache(pool, ttl=3600)
    assert await cache.refusal(bob.account_name) == "quota_exceeded"
    await resellers.update_subuser(pool, acme.account_id, "bob", quota_bytes=None)
    assert await cache.refusal(bob.account_name) == "quota_exceeded"  # still the cached answer
    assert await reseller_terms.StandingCache(pool, ttl=0).refusal(bob.account_name) is None
    assert await cache.refusal("carol") is None  # not a sub-user: nothing to refuse


# -- reports -----------------------------------------------------------------------------------


async def test_usage_report_call_sums_each_subuser_of_the_reseller_only(pool: asyncpg.Pool) -> None:
    acme = await _reseller(pool)
    other = await _reseller(pool, "globex", "b")
    bob = await _funded_subuser(pool, acme, "bob", 10 * IPSX)
    dave = await resellers.create_subuser(pool, acme.account_id, "dave")
    eve = await resellers.create_subuser(pool, other.account_id, "eve")
    await _usage(pool, bob.account_name, 100, 200)
    await _usage(pool, bob.account_name, 1, 2)
    await _usage(pool, eve.account_name, 5_000, 5_000)
    await holds.reserve(pool, requester_account(bob.account_name), Amount(2 * IPSX), "deal-9")
    owed = await _settle(pool, Terms("deal-9", bob.account_name), GB)
    assert owed is not None

    start = reseller_terms.month_start(NOW)
    rows = await reseller_terms.usage_report(pool, acme.account_id, start, reseller_terms.next_month(start))
    assert [(r.name, r.streams, r.bytes_up, r.bytes_down, r.markup_charged) for r in rows] == [
        ("bob", 2, 101, 202, owed.charged),
        (dave.name, 0, 0, 0, 0),
    ]
    assert rows[0].markup_due == owed.due == IPSX // 4
    earlier = await reseller_terms.usage_report(pool, acme.account_id, start - dt.timedelta(days=40), start)
    assert [(r.streams, r.markup_charged) for r in earlier] == [(0, 0), (0, 0)]

"""Accounts, API keys, the credential check and its cache, and the migrations, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from billing import db
from billing.accounts import (
    KeyCache,
    authenticate,
    create_account,
    create_key,
    get_account,
    list_accounts,
    list_keys,
    normalize_address,
    revoke_key,
    validate_name,
)
from billing.errors import AccountExists, AccountsUnavailable, BillingError, InvalidAccount, UnknownAccount

ALICE = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # the EIP-55 reference address
BOB = "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359"

MIGRATIONS = [
    "001_accounts",
    "002_usage",
    "003_ledger",
    "004_ledger_movements",
    "005_market",
    "006_key_scopes",
    "007_order_keys",
    "008_preferences",
    "009_operator_scope",
    "010_withdrawals",
    "011_channels",
    "012_invoices",
    "013_anchors",
    "014_inspection_cas",
    "015_resellers",
    "016_key_rules",
    "017_usage_time_index",
    "018_deals_settled_index",
    "019_inspection_ca_sealed",
    "020_withdrawal_transfers",
    "021_transfer_replacements",
    "022_order_queue",
    "023_channel_consent",
    "024_deals_request_index",
    "025_consent_expiry",
    "026_chain_cursor_time",
    "027_channels_domains",
]


async def test_migrate_call_is_idempotent(fresh_database_url: str) -> None:
    pool = await db.connect(fresh_database_url, max_size=2)
    try:
        assert await db.migrate(pool) == MIGRATIONS
        assert await db.migrate(pool) == []
        versions = await pool.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [row["version"] for row in versions] == MIGRATIONS
    finally:
        await pool.close()


async def test_migrate_concurrent_applies_each_once(fresh_database_url: str) -> None:
    pools = [await db.connect(fresh_database_url, max_size=1) for _ in range(3)]
    try:
        results = await asyncio.gather(*(db.migrate(pool) for pool in pools))
        applied = [version for result in results for version in result]
        assert sorted(applied) == MIGRATIONS
    finally:
        for pool in pools:
            await pool.close()


async def test_migrate_session_database_has_nothing_left(pool: asyncpg.Pool) -> None:
    assert await db.migrate(pool) == []


def test_migration_files_refuses_misnamed(tmp_path: Path) -> None:
    (tmp_path / "001_ok.sql").write_text("SELECT 1")
    (tmp_path / "2_bad.sql").write_text("SELECT 1")
    with pytest.raises(ValueError, match=r"2_bad\.sql"):
        db.migration_files(tmp_path)


def test_migration_files_refuses_duplicate_numbers(tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("SELECT 1")
    (tmp_path / "001_b.sql").write_text("SELECT 1")
    with pytest.raises(ValueError, match="001"):
        db.migration_files(tmp_path)


def test_normalize_address_call() -> None:
    assert normalize_address(ALICE.lower()) == ALICE
    assert normalize_address(ALICE) == ALICE
    assert normalize_address(f" {ALICE} ") == ALICE


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0x",
        "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        ALICE[:-1],
        ALICE + "0",
        ALICE.replace("a", "A", 1),  # broken checksum
        "0x" + "g" * 40,
        None,
    ],
)
def test_normalize_address_refuses(text: Any) -> None:
    with pytest.raises(InvalidAccount) as info:
        normalize_address(text)
    assert info.value.field == "address"
    assert isinstance(info.value, ValueError)


def test_validate_name_call() -> None:
    assert validate_name("Alice_01") == "alice_01"
    assert validate_name("x" * 32) == "x" * 32


@pytest.mark.parametrize(
    "text", ["", "x" * 33, "alice-country", "al ice", "ålice", "\u212aate", "alice\n", "a.b", None]
)
def test_validate_name_refuses(text: Any) -> None:
    with pytest.raises(InvalidAccount) as info:
        validate_name(text)
    assert info.value.field == "name"


async def test_create_account_state(pool: asyncpg.Pool) -> None:
    account = await create_account(pool, address=ALICE.lower(), name="Alice")
    assert (account.address, account.name) == (ALICE, "alice")
    assert await get_account(pool, "ALICE") == account
    assert await get_account(pool, "nobody") is None
    assert await get_account(pool, "not-a-name") is None
    bob = await create_account(pool, address=BOB, name="bob")
    assert await list_accounts(pool) == [account, bob]


async def test_create_account_refuses_duplicates(pool: asyncpg.Pool) -> None:
    await create_account(pool, address=ALICE, name="alice")
    with pytest.raises(AccountExists) as by_name:
        await create_account(pool, address=BOB, name="ALICE")
    assert by_name.value.field == "name"
    with pytest.raises(AccountExists) as by_address:
        await create_account(pool, address=ALICE.lower(), name="other")
    assert by_address.value.field == "address"
    assert isinstance(by_address.value, BillingError)


async def test_create_account_refuses_bad_input(pool: asyncpg.Pool) -> None:
    with pytest.raises(InvalidAccount):
        await create_account(pool, address="0x1234", name="alice")
    with pytest.raises(InvalidAccount):
        await create_account(pool, address=ALICE, name="a-b")
    assert await list_accounts(pool) == []


async def test_create_key_call(pool: asyncpg.Pool) -> None:
    account = await create_account(pool, address=ALICE, name="alice")
    new = await create_key(pool, account_name="Alice", label="scraper")
    assert re.fullmatch(r"ipsx_[0-9a-f]{12}_[A-Za-z0-9_-]{32}", new.secret)
    assert new.secret.split("_", 2)[1] == new.key.key_id
    assert new.key.account_id == account.id
    assert new.key.account_name == "alice"
    assert new.key.label == "scraper"
    assert new.key.revoked_at is None
    assert new.secret not in repr(new)
    assert new.secret not in str(new)


async def test_create_key_stores_only_the_hash(pool: asyncpg.Pool) -> None:
    await create_account(pool, address=ALICE, name="alice")
    new = await create_key(pool, account_name="alice")
    row = await pool.fetchrow("SELECT * FROM api_keys WHERE key_id = $1", new.key.key_id)
    assert bytes(row["secret_sha256"]) == hashlib.sha256(new.secret.encode()).digest()
    random_part = new.secret[len("ipsx_000000000000_") :]
    for value in row.values():
        text = value.hex() if isinstance(value, bytes) else str(value)
        assert new.secret not in text
        assert random_part not in text
    assert new.secret.encode() not in bytes(row["secret_sha256"])


async def test_create_key_refuses_unknown_account_and_bad_label(pool: asyncpg.Pool) -> None:
    with pytest.raises(UnknownAccount) as info:
        await create_key(pool, account_name="ghost")
    assert info.value.name == "ghost"
    assert isinstance(info.value, LookupError)
    await create_account(pool, address=ALICE, name="alice")
    with pytest.raises(InvalidAccount) as bad_label:
        await create_key(pool, account_name="alice", label="x" * 101)
    assert bad_label.value.field == "label"


async def test_only_the_operator_command_line_grants_the_operator_scope(pool: asyncpg.Pool) -> None:
    await create_account(pool, address=ALICE, name="alice")
    with pytest.raises(InvalidAccount) as refused:
        await create_key(pool, account_name="alice", scopes=frozenset({"operator"}))
    assert refused.value.field == "scopes"
    operator = await create_key(pool, account_name="alice", scopes=frozenset({"operator"}), operator=True)
    assert operator.key.scopes == frozenset({"operator"})
    stored = await pool.fetchval("SELECT scopes FROM api_keys WHERE key_id = $1", operator.key.key_id)
    assert stored == ["operator"]
    with pytest.raises(InvalidAccount) as sub_key:
        await create_key(
            pool, account_name="alice", scopes=frozenset({"operator"}), parent=operator.key, operator=True
        )
    assert sub_key.value.field == "scopes"
    with pytest.raises(asyncpg.CheckViolationError):  # the database refuses unknown scopes too
        await pool.execute(
            "UPDATE api_keys SET scopes = ARRAY['root'] WHERE key_id = $1", operator.key.key_id
        )


async def test_authenticate_call(pool: asyncpg.Pool) -> None:
    await create_account(pool, address=ALICE, name="alice")
    await create_account(pool, address=BOB, name="bob")
    alice_key = await create_key(pool, account_name="alice")
    bob_key = await create_key(pool, account_name="bob")

    found = await authenticate(pool, "alice", alice_key.secret)
    assert found == alice_key.key
    assert await authenticate(pool, "ALICE", alice_key.secret) == alice_key.key
    # The right key id with another random part.
    forged = alice_key.secret[:-4] + ("AAAA" if not alice_key.secret.endswith("AAAA") else "BBBB")
    assert await authenticate(pool, "alice", forged) is None
    # Another account's valid secret.
    assert await authenticate(pool, "alice", bob_key.secret) is None
    assert await authenticate(pool, "bob", alice_key.secret) is None
    assert await authenticate(pool, "nobody", alice_key.secret) is None


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("alice", ""),
        ("alice", "ipsx_"),
        ("alice", "ipsx_zzzzzzzzzzzz_" + "a" * 32),
        ("alice", "ipsx_000000000000_" + "a" * 32),
        ("alice", "ipsx_000000000000_" + "a" * 31),
        ("alice", "x" * 10_000),
        ("alice", "ipsx_000000000000_" + "é" * 32),
        ("alice", "\x00"),
        ("al-ice", "ipsx_000000000000_" + "a" * 32),
        ("", ""),
        (None, None),
        ("alice", b"ipsx_000000000000_" + b"a" * 32),
    ],
)
async def test_authenticate_garbage_gives_none(pool: asyncpg.Pool, name: Any, secret: Any) -> None:
    await create_account(pool, address=ALICE, name="alice")
    await create_key(pool, account_name="alice")
    assert await authenticate(pool, name, secret) is None


async def test_revoke_key_state(pool: asyncpg.Pool) -> None:
    await create_account(pool, address=ALICE, name="alice")
    first = await create_key(pool, account_name="alice", label="one")
    second = await create_key(pool, account_name="alice", label="two")
    assert await revoke_key(pool, first.key.key_id) is True
    assert await revoke_key(pool, first.key.key_id) is False
    assert await revoke_key(pool, "000000000000") is False
    assert await revoke_key(pool, "'; DROP TABLE api_keys; --") is False
    assert await authenticate(pool, "alice", first.secret) is None
    assert await authenticate(pool, "alice", second.secret) == second.key
    keys = await list_keys(pool, "alice")
    assert [key.key_id for key in keys] == [first.key.key_id, second.key.key_id]
    by_id = {key.key_id: key for key in keys}
    assert by_id[first.key.key_id].revoked_at is not None
    assert by_id[second.key.key_id].revoked_at is None


async def test_list_keys_refuses_unknown_account(pool: asyncpg.Pool) -> None:
    with pytest.raises(UnknownAccount):
        await list_keys(pool, "ghost")


class CountingPool:
    """Passes every query to the real pool, counting ``fetchrow`` calls."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.fetchrows = 0

    async def fetchrow(self, *args: Any) -> Any:
        self.fetchrows += 1
        await asyncio.sleep(0.05)  # keep the query in flight while the others arrive
        return await self.pool.fetchrow(*args)


async def test_key_cache_caches_until_ttl(pool: asyncpg.Pool) -> None:
    await create_account(pool, address=ALICE, name="alice")
    new = await create_key(pool, account_name="alice")
    cache = KeyCache(pool, ttl=0.3)
    assert await cache.check("alice", new.secret) == new.key
    assert await revoke_key(pool, new.key.key_id)
    # Still within ttl: the cached answer, so no query was made.
    assert await cache.check("alice", new.secret) == new.key
    await asyncio.sleep(0.35)
    assert await cache.check("alice", new.secret) is None


async def test_key_cache_negative_ttl(pool: asyncpg.Pool) -> None:
    await create_account(pool, address=ALICE, name="alice")
    counting = CountingPool(pool)
    cache = KeyCache(counting, negative_ttl=0.2)
    secret = "ipsx_000000000000_" + "a" * 32
    assert await cache.check("alice", secret) is None
    assert await cache.check("alice", secret) is None
    assert counting.fetchrows == 1
    await asyncio.sleep(0.25)
    assert await cache.check("alice", secret) is None
    assert counting.fetchrows == 2


async def test_key_cache_shares_concurrent_lookups(pool: asyncpg.Pool) -> None:
    await create_account(pool, address=ALICE, name="alice")
    new = await create_key(pool, account_name="alice")
    counting = CountingPool(pool)
    cache = KeyCache(counting)
    answers = await asyncio.gather(*(cache.check("alice", new.secret) for _ in range(20)))
    assert answers == [new.key] * 20
    assert counting.fetchrows == 1


async def test_key_cache_survives_a_cancelled_caller(pool: asyncpg.Pool) -> None:
    await create_account(pool, address=ALICE, name="alice")
    new = await create_key(pool, account_name="alice")
    counting = CountingPool(pool)
    cache = KeyCache(counting)
    first = asyncio.create_task(cache.check("alice", new.secret))
    second = asyncio.create_task(cache.check("alice", new.secret))
    await asyncio.sleep(0.01)
    first.cancel()
    assert await second == new.key
    with pytest.raises(asyncio.CancelledError):
        await first
    assert counting.fetchrows == 1


async def test_key_cache_never_holds_the_secret(pool: asyncpg.Pool) -> None:
    await create_account(pool, address=ALICE, name="alice")
    new = await create_key(pool, account_name="alice")
    cache = KeyCache(pool)
    await cache.check("alice", new.secret)
    await cache.check("alice", new.secret + "x")
    state = repr(vars(cache))
    random_part = new.secret[len("ipsx_000000000000_") :]
    assert new.secret not in state
    assert random_part not in state
    assert random_part.encode() not in state.encode()
    keys = list(cache._entries)
    assert ("alice", hashlib.sha256(new.secret.encode()).digest()) in keys
    assert all(isinstance(digest, bytes) and len(digest) == 32 for _, digest in keys)


async def test_key_cache_evicts_oldest(pool: asyncpg.Pool) -> None:
    await create_account(pool, address=ALICE, name="alice")
    keys = [await create_key(pool, account_name="alice") for _ in range(3)]
    counting = CountingPool(pool)
    cache = KeyCache(counting, max_entries=2)
    for new in keys:
        assert await cache.check("alice", new.secret) == new.key
    assert len(cache) == 2
    assert counting.fetchrows == 3
    await cache.check("alice", keys[2].secret)  # newest: still cached
    assert counting.fetchrows == 3
    await cache.check("alice", keys[0].secret)  # oldest: evicted, queried again
    assert counting.fetchrows == 4


async def test_key_cache_garbage_gives_none(pool: asyncpg.Pool) -> None:
    cache = KeyCache(pool)
    assert await cache.check("alice", "x" * 100_000) is None
    assert await cache.check(None, None) is None  # type: ignore[arg-type]
    assert len(cache) == 0


async def test_key_cache_refuses_zero_entries(pool: asyncpg.Pool) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        KeyCache(pool, max_entries=0)


async def test_key_cache_says_unavailable_when_the_database_is_gone(database_url: str) -> None:
    with socket.socket() as probe:  # a local port where no database listens
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    parts = urlsplit(database_url)
    dead = urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{dead_port}"))
    unreachable = await db.connect(dead, min_size=0, max_size=1)
    try:
        cache = KeyCache(unreachable)
        with pytest.raises(AccountsUnavailable):
            await cache.check("anyone", "ipsx_0123456789ab_" + "x" * 32)
        assert len(cache) == 0  # nothing cached: the next check asks the database again
    finally:
        await unreachable.close()

"""API key scopes, spend limits and sub-keys on the real PostgreSQL."""

from __future__ import annotations

import asyncpg
import pytest

from billing.accounts import SCOPES, authenticate_secret, create_account, create_key, list_keys, revoke_key
from billing.errors import InvalidAccount

ALICE = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"


@pytest.fixture
async def alice(pool: asyncpg.Pool) -> str:
    await create_account(pool, address=ALICE, name="alice")
    return "alice"


async def test_a_key_has_every_scope_and_no_limit_by_default(pool: asyncpg.Pool, alice: str) -> None:
    new = await create_key(pool, account_name=alice)
    assert (new.key.scopes, new.key.spend_limit, new.key.parent_key_id) == (SCOPES, None, None)
    assert await authenticate_secret(pool, new.secret) == new.key


async def test_scopes_and_limit_are_stored_and_read_back(pool: asyncpg.Pool, alice: str) -> None:
    new = await create_key(pool, account_name=alice, scopes=frozenset({"proxy"}), spend_limit=5 * 10**18)
    found = await authenticate_secret(pool, new.secret)
    assert found is not None
    assert (found.scopes, found.spend_limit) == (frozenset({"proxy"}), 5 * 10**18)


@pytest.mark.parametrize(
    ("scopes", "limit", "field"),
    [
        (frozenset(), None, "scopes"),
        (frozenset({"admin"}), None, "scopes"),
        (SCOPES, 0, "spend_limit"),
        (SCOPES, -1, "spend_limit"),
        (SCOPES, 10**78, "spend_limit"),
    ],
)
async def test_bad_terms_are_refused(
    pool: asyncpg.Pool, alice: str, scopes: frozenset[str], limit: int | None, field: str
) -> None:
    with pytest.raises(InvalidAccount) as info:
        await create_key(pool, account_name=alice, scopes=scopes, spend_limit=limit)
    assert info.value.field == field
    assert await list_keys(pool, alice) == []


async def test_a_sub_key_is_never_wider_than_its_parent(pool: asyncpg.Pool, alice: str) -> None:
    parent = (
        await create_key(pool, account_name=alice, scopes=frozenset({"proxy", "keys"}), spend_limit=100)
    ).key
    child = await create_key(
        pool, account_name=alice, scopes=frozenset({"proxy"}), spend_limit=40, parent=parent
    )
    assert child.key.parent_key_id == parent.key_id
    with pytest.raises(InvalidAccount) as wider:
        await create_key(
            pool, account_name=alice, scopes=frozenset({"proxy", "trade"}), spend_limit=1, parent=parent
        )
    assert wider.value.field == "scopes"
    for limit in (None, 101):
        with pytest.raises(InvalidAccount) as dearer:
            await create_key(
                pool, account_name=alice, scopes=frozenset({"proxy"}), spend_limit=limit, parent=parent
            )
        assert dearer.value.field == "spend_limit"
    with pytest.raises(InvalidAccount) as grandchild:
        await create_key(
            pool, account_name=alice, scopes=frozenset({"proxy"}), spend_limit=1, parent=child.key
        )
    assert grandchild.value.field == "parent"


async def test_revoking_a_parent_stops_its_sub_keys(pool: asyncpg.Pool, alice: str) -> None:
    parent = await create_key(pool, account_name=alice)
    child = await create_key(pool, account_name=alice, scopes=frozenset({"read"}), parent=parent.key)
    assert await authenticate_secret(pool, child.secret) is not None
    assert await revoke_key(pool, parent.key.key_id)
    assert await authenticate_secret(pool, child.secret) is None
    assert await authenticate_secret(pool, parent.secret) is None
    with pytest.raises(InvalidAccount) as revoked_parent:
        await create_key(pool, account_name=alice, scopes=frozenset({"read"}), parent=parent.key)
    assert revoked_parent.value.field == "parent"


async def test_the_database_refuses_unknown_scopes(pool: asyncpg.Pool, alice: str) -> None:
    new = await create_key(pool, account_name=alice)
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("UPDATE api_keys SET scopes = ARRAY['root'] WHERE key_id = $1", new.key.key_id)

"""Per-account inspection CAs (``gateway.inspect.ca``) on a real PostgreSQL, the on/off switch
(``gateway.inspect.state``) on the real Redis, and leaf certificates minted from a CA by mitmproxy."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID
from mitmproxy.certs import Cert, CertStore
from redis.asyncio import Redis

from billing import accounts, db
from gateway.inspect import ca, keys, state
from gateway.inspect.settings import InspectSettings
from tests.billing.conftest import create_and_migrate, drop_database


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    name = f"ipsx_test_inspect_{os.getpid()}"
    yield asyncio.run(create_and_migrate(name))
    asyncio.run(drop_database(name))


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.connect(database_url, max_size=4)
    await pool.execute("TRUNCATE accounts, inspection_cas RESTART IDENTITY CASCADE")
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
def authority() -> ca.Authority:
    cert_pem, key_pem = ca.new_authority("alice")
    return ca.Authority(1, cert_pem, key_pem)


def test_new_authority_call(authority: ca.Authority) -> None:
    cert = authority.certificate
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (constraints.critical, constraints.value.ca, constraints.value.path_length) == (True, True, 0)
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "IPSX inspection CA for alice"
    assert authority.private_key().public_key() == cert.public_key()
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == ca.VALIDITY
    assert cert.not_valid_before_utc < dt.datetime.now(dt.UTC)
    assert authority.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert len(authority.fingerprint) == 64 and int(authority.fingerprint, 16) >= 0


def test_authority_repr_never_shows_the_key(authority: ca.Authority) -> None:
    assert "PRIVATE" not in repr(authority)
    assert authority.key_pem.decode() not in repr(authority)


def test_leaf_minted_by_mitmproxy_chains_to_its_ca_only(authority: ca.Authority) -> None:
    store = CertStore(authority.private_key(), Cert(authority.certificate), None, None)  # type: ignore[arg-type]
    leaf = x509.load_pem_x509_certificate(
        store.get_cert("shop.example", [x509.DNSName("shop.example")]).cert.to_pem()
    )
    other = ca.Authority(2, *ca.new_authority("bob"))
    leaf.verify_directly_issued_by(authority.certificate)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["shop.example"]
    with pytest.raises((InvalidSignature, ValueError)):
        leaf.verify_directly_issued_by(other.certificate)


async def _account(pool: asyncpg.Pool, name: str, byte: str) -> accounts.Account:
    return await accounts.create_account(pool, address="0x" + byte * 20, name=name)


async def test_authority_for_call_makes_one_and_keeps_it(pool: asyncpg.Pool) -> None:
    alice = await _account(pool, "alice", "a1")
    assert await ca.find_authority(pool, alice.id) is None
    made = await ca.authority_for(pool, alice.id, alice.name)
    again = await ca.authority_for(pool, alice.id, alice.name)
    assert made.cert_pem == again.cert_pem and made.key_pem == again.key_pem
    assert made.created_at is not None
    assert "for alice" in made.certificate.subject.rfc4514_string()


async def test_authority_for_call_concurrent_callers_get_the_same_ca(pool: asyncpg.Pool) -> None:
    bob = await _account(pool, "bob", "b2")
    made = await asyncio.gather(*(ca.authority_for(pool, bob.id, bob.name) for _ in range(3)))
    assert len({authority.fingerprint for authority in made}) == 1
    assert await pool.fetchval("SELECT count(*) FROM inspection_cas") == 1


async def test_authority_for_call_accounts_differ(pool: asyncpg.Pool) -> None:
    alice, bob = await _account(pool, "alice", "a1"), await _account(pool, "bob", "b2")
    first = await ca.authority_for(pool, alice.id, alice.name)
    second = await ca.authority_for(pool, bob.id, bob.name)
    assert first.fingerprint != second.fingerprint


SECRET = "inspection-ca-secret-for-tests"


async def test_authority_for_call_with_a_secret_stores_the_key_sealed(pool: asyncpg.Pool) -> None:
    alice = await _account(pool, "alice", "aa")
    made = await ca.authority_for(pool, alice.id, alice.name, secret=SECRET)
    stored = await pool.fetchval("SELECT key_pem FROM inspection_cas WHERE account_id = $1", alice.id)
    assert stored.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----") and made.sealed
    # The database alone does not give the key; the secret does, and it is the CA's.
    with pytest.raises(ca.CaKeyLocked, match="IPSX_INSPECT_CA_SECRET"):
        made.private_key()
    with pytest.raises(ca.CaKeyLocked, match="does not open"):
        made.private_key("another-secret-of-enough-length")
    assert made.private_key(SECRET).public_key() == made.certificate.public_key()
    again = await ca.authority_for(pool, alice.id, alice.name, secret=SECRET)
    assert (again.cert_pem, again.key_pem) == (made.cert_pem, made.key_pem)  # sealed once


async def test_authority_for_call_seals_a_key_stored_before_the_secret(pool: asyncpg.Pool) -> None:
    alice = await _account(pool, "alice", "aa")
    plain = await ca.authority_for(pool, alice.id, alice.name)
    assert not plain.sealed and plain.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    sealed = await ca.authority_for(pool, alice.id, alice.name, secret=SECRET)
    # The same CA (clients that installed it keep trusting it), its key now sealed in the table.
    assert sealed.sealed and sealed.fingerprint == plain.fingerprint
    stored = await pool.fetchval("SELECT key_pem FROM inspection_cas WHERE account_id = $1", alice.id)
    assert stored == sealed.key_pem.decode() and "BEGIN PRIVATE KEY" not in stored
    assert sealed.private_key(SECRET).private_numbers() == plain.private_key().private_numbers()


def test_inspect_settings_refuse_a_short_ca_secret() -> None:
    with pytest.raises(ValueError, match="at least 16 characters"):
        InspectSettings(redis_url="redis://x", database_url="postgresql://x", ca_secret="short")
    settings = InspectSettings(redis_url="redis://x", database_url="postgresql://x", ca_secret=SECRET)
    assert SECRET not in repr(settings)


async def test_authority_for_call_unknown_account(pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await ca.authority_for(pool, 999, "ghost")


async def test_set_enabled_call_state(redis: Redis) -> None:
    assert await state.is_enabled(redis, "alice") is False  # off unless turned on
    await state.set_enabled(redis, "alice", True)
    assert await state.is_enabled(redis, "alice") is True
    assert await state.is_enabled(redis, "bob") is False
    assert await redis.get(keys.enabled("alice")) == b"1"
    await state.set_enabled(redis, "alice", False)
    assert await state.is_enabled(redis, "alice") is False
    assert await redis.exists(keys.enabled("alice")) == 0

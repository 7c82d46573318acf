"""PostgreSQL access for billing: the connection pool and the forward-only migrations.

Migrations are ``migrations/NNN_name.sql`` files applied in order of their number, each in its own
transaction, and recorded in ``schema_migrations`` under their stem (``001_accounts``). Each package
that owns tables keeps its files in its own ``migrations/`` folder (``billing/``, ``matching/``);
the numbers are one sequence across them. Several
processes may call :func:`migrate` at once: a transaction-scoped advisory lock serialises them and
each file is applied exactly once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Every package's migrations, in no particular order: the file numbers order them.
MIGRATIONS_DIRS = (MIGRATIONS_DIR, Path(__file__).parent.parent / "matching" / "migrations")

_MIGRATION_NAME = re.compile(r"[0-9]{3}_[a-z0-9_]+\.sql", re.ASCII)

# A fixed 64-bit key for pg_advisory_xact_lock, derived from a name so it cannot clash by accident
# with a small integer chosen by another package.
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"ipsx.billing.migrate").digest()[:8], "big", signed=True)

_CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     TEXT PRIMARY KEY,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


async def connect(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """Open a connection pool on ``dsn``; the caller closes it with ``await pool.close()``."""
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size)


def migration_files(*directories: Path) -> list[Path]:
    """The migration files in ``directories`` (default: every package's), in the order they apply.

    Raises ``ValueError`` when a ``.sql`` file is misnamed or two files share a number, since
    either would make the order ambiguous.
    """
    files = sorted(
        (path for directory in directories or MIGRATIONS_DIRS for path in directory.glob("*.sql")),
        key=lambda path: path.name,
    )
    numbers: set[str] = set()
    for path in files:
        if not _MIGRATION_NAME.fullmatch(path.name):
            raise ValueError(f"migration file name must look like 001_name.sql: {path.name}")
        number = path.name[:3]
        if number in numbers:
            raise ValueError(f"two migrations are numbered {number}")
        numbers.add(number)
    return files


async def migrate(pool: asyncpg.Pool, *, directories: tuple[Path, ...] = MIGRATIONS_DIRS) -> list[str]:
    """Apply the migrations not applied yet; return the versions applied by this call, in order."""
    applied: list[str] = []
    async with pool.acquire() as conn:
        for path in migration_files(*directories):
            version = path.stem
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
                await conn.execute(_CREATE_MIGRATIONS_TABLE)
                done = await conn.fetchval("SELECT 1 FROM schema_migrations WHERE version = $1", version)
                if done:
                    continue
                await conn.execute(path.read_text(encoding="utf-8"))
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            log.info("applied migration %s", version)
            applied.append(version)
    return applied


async def pending_migrations(pool: asyncpg.Pool) -> list[str]:
    """The migrations not applied to ``pool``'s database yet, in order (all of them on a database
    IPSX never migrated); changes nothing."""
    known = await pool.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    rows = await pool.fetch("SELECT version FROM schema_migrations") if known else []
    done = {row["version"] for row in rows}
    return [path.stem for path in migration_files() if path.stem not in done]


_DATABASE_NAME = re.compile(r"[A-Za-z0-9_]{1,63}")


async def ensure_database(dsn: str) -> None:
    """Create the database named in ``dsn`` if the server does not have it yet.

    Connects to the server's ``postgres`` database to create it; raises ValueError for a name
    that is not letters, digits and ``_``.
    """
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    if not _DATABASE_NAME.fullmatch(name):
        raise ValueError("the database name must be letters, digits and '_'")
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:
            pass  # created meanwhile by another process
        finally:
            await admin.close()
    else:
        await conn.close()


async def open_migrated(dsn: str, *, max_size: int = 10) -> asyncpg.Pool:
    """A pool on ``dsn``'s database, created and migrated first if needed."""
    await ensure_database(dsn)
    pool = await connect(dsn, min_size=1, max_size=max_size)
    try:
        await migrate(pool)
    except BaseException:
        await pool.close()
        raise
    return pool


def _advisory_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


async def advisory_lock_in(conn: asyncpg.Connection, name: str) -> None:
    """Wait for the PostgreSQL advisory lock ``name`` (hashed to its 64-bit key) and hold it until
    the transaction ``conn`` is in ends."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _advisory_key(name))


@contextlib.asynccontextmanager
async def try_advisory_lock(pool: asyncpg.Pool, name: str) -> AsyncIterator[bool]:
    """Whether this process alone holds the PostgreSQL advisory lock ``name`` (hashed to its 64-bit
    key) for the block; it is held on one pooled connection, so a crashed process's lock goes with
    its connection."""
    key = _advisory_key(name)
    async with pool.acquire() as conn:
        alone = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))
        try:
            yield alone
        finally:
            if alone:
                await conn.execute("SELECT pg_advisory_unlock($1)", key)

"""The operator's chain commands: ``ipsx chain`` (``deploy`` is :mod:`ipsx.chain_deploy`'s),
``ipsx chain watch``, ``ipsx chain anchor`` and ``ipsx reconcile``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from typing import Final

import asyncpg
from web3 import Web3

from billing import db
from billing.anchoring import Anchorer, AnchorError, AnchorSettings
from billing.chain import ChainSettings, ChainWatcher, DeepReorg
from billing.reconcile import Report, format_report, reconcile
from ipsx import runtime
from ipsx.chain_access import (
    CONNECTION_ERRORS,
    DeploymentFile,
    node,
    operator_key,
    quiet_providers,
    rpc_url,
    shown,
)
from ipsx.chain_deploy import deploy_command
from ipsx.commands import UsageError
from ipsx.settings import Environment

log = logging.getLogger(__name__)

EXIT_DEEP_REORG: Final = 3  # `ipsx chain watch` stopped because the chain reorganised too deep
EXIT_ANCHOR_CONFLICT: Final = 3  # `ipsx chain anchor` stopped: the chain and the database disagree


def cmd_chain(args: argparse.Namespace, env: Environment) -> None:
    quiet_providers(args)
    if args.action == "deploy":
        deploy_command(args)
    elif args.action == "anchor":
        anchor_command(args, env)
    else:
        watch_command(args, env)


async def open_pool(dsn: str, max_size: int) -> asyncpg.Pool:
    """The migrated database (``IPSX_DATABASE_URL``); ``UsageError`` when it cannot be opened.
    The message never shows the URL, which may hold a password."""
    try:
        return await db.open_migrated(dsn, max_size=max_size)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise UsageError(f"cannot open the database (IPSX_DATABASE_URL): {error}") from None


# ---- ipsx chain watch ----------------------------------------------------------------------------


def watch_command(args: argparse.Namespace, env: Environment) -> None:
    record = DeploymentFile.load(args.deployment)
    account = operator_key(args.key)
    if account.address != Web3.to_checksum_address(record.operator):
        raise UsageError(
            f"the key is {account.address}'s but {record.path} names {record.operator} as the operator"
        )
    if args.confirmations < 0 or args.poll <= 0 or args.db_pool < 1:
        raise UsageError("--confirmations must be >= 0, --poll and --db-pool positive")
    url = rpc_url(args)
    settings = ChainSettings(
        channels_address=record.channels,
        operator_key="0x" + account.key.hex(),
        rpc_url=url,
        confirmations=args.confirmations,
        poll_interval=args.poll,
        start_block=record.block,
    )
    stopped: list[DeepReorg] = []

    async def main(stop: asyncio.Event) -> None:
        async with node(url, record):
            pass  # only its checks: the watcher makes its own connection
        pool = await open_pool(env.database, args.db_pool)
        try:
            async with ChainWatcher(pool, settings) as watcher:
                log.info(
                    "watching PaymentChannels %s on chain %d from block %d, %d confirmations, operator %s",
                    record.channels, record.chain_id, record.block, args.confirmations, watcher.operator,
                )  # fmt: skip
                try:
                    await watcher.run(stop)
                except DeepReorg as reorg:
                    stopped.append(reorg)
                else:
                    log.info("chain watcher stopped")
        finally:
            await pool.close()

    runtime.run(main)
    if stopped:
        print(
            f"ipsx chain watch: stopped, the chain was reorganised deeper than the confirmations: "
            f"{stopped[0]}. Check the books with `ipsx reconcile` before starting it again.",
            file=sys.stderr,
        )
        sys.exit(EXIT_DEEP_REORG)


# ---- ipsx reconcile ------------------------------------------------------------------------------


def cmd_reconcile(args: argparse.Namespace, env: Environment) -> None:
    quiet_providers(args)
    record = DeploymentFile.load(args.deployment)
    url = rpc_url(args)
    if args.block is not None and args.block < 0:
        raise UsageError("--block must be >= 0")

    async def go() -> Report:
        async with node(url, record) as w3:
            pool = await open_pool(env.database, 2)
            try:
                return await reconcile(
                    pool, w3, record.channels, record.token, block=args.block, anchor_address=record.anchor
                )
            except CONNECTION_ERRORS as error:
                raise UsageError(f"reading the chain at {shown(url)} failed: {error}") from None
            finally:
                await pool.close()

    report = asyncio.run(go())
    print(format_report(report))
    if not report.ok:
        sys.exit(1)


# ---- ipsx chain anchor ---------------------------------------------------------------------------


def anchor_command(args: argparse.Namespace, env: Environment) -> None:
    record = DeploymentFile.load(args.deployment)
    account = operator_key(args.key)
    if args.interval <= 0 or args.max_batch < 1 or args.db_pool < 1:
        raise UsageError("--interval, --max-batch and --db-pool must be positive")
    if args.confirmations < 0:
        raise UsageError("--confirmations must be >= 0")
    url = rpc_url(args)
    settings = AnchorSettings(
        anchor_address=record.anchor,
        operator_key="0x" + account.key.hex().removeprefix("0x"),
        rpc_url=url,
        interval=args.interval,
        max_batch=args.max_batch,
        confirmations=args.confirmations,
    )
    stopped: list[AnchorError] = []

    async def main(stop: asyncio.Event) -> None:
        async with node(url, record):
            pass  # only its checks: the anchorer makes its own connection
        pool = await open_pool(env.database, args.db_pool)
        try:
            async with Anchorer(pool, settings) as anchorer:
                owner = await anchorer.owner()
                if owner != anchorer.operator:
                    raise UsageError(
                        f"DealAnchor {record.anchor} is owned by {owner}, not by the key's {account.address}"
                    )
                log.info("anchoring to DealAnchor %s every %s s, %d deals per batch at most, "
                         "%d confirmations", record.anchor, args.interval, args.max_batch,
                         args.confirmations)  # fmt: skip
                try:
                    poll = min(args.interval, _CONFIRMATION_POLL)
                    await (_anchor_once(anchorer, stop, poll) if args.once else anchorer.run(stop))
                except AnchorError as error:
                    stopped.append(error)
        except CONNECTION_ERRORS as error:
            raise UsageError(f"anchoring failed: {type(error).__name__}: {error}") from None
        finally:
            await pool.close()

    runtime.run(main)
    if stopped:
        print(f"ipsx chain anchor: stopped: {stopped[0]}", file=sys.stderr)
        sys.exit(EXIT_ANCHOR_CONFLICT)


_CONFIRMATION_POLL = 2.0  # seconds between looks at the chain while a batch gets its confirmations


async def _anchor_once(anchorer: Anchorer, stop: asyncio.Event, poll: float) -> None:
    batch = await anchorer.anchor_once()
    shown: int | None = None
    while batch is not None and not batch.anchored and not stop.is_set():
        if batch.mined_in != shown:
            shown = batch.mined_in
            print(f"batch {batch.batch_id} mined in block {batch.mined_in}, tx {batch.tx_hash}: "
                  "waiting for its confirmations", flush=True)  # fmt: skip
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), poll)
        batch = await anchorer.anchor_once()
    if batch is not None and not batch.anchored:
        print(f"stopped before batch {batch.batch_id} had its confirmations; the next run records it")
    elif batch is None:
        print("nothing to anchor (no settled deal outside a batch, or another anchorer is at work)")
    else:
        print(f"batch {batch.batch_id} anchored: {batch.record_count} deals, root {batch.root}, "
              f"tx {batch.tx_hash}")  # fmt: skip

"""The operator's chain commands: ``ipsx chain`` (``deploy`` is :mod:`ipsx.chain_deploy`'s),
``ipsx chain watch`` (with ``--send-withdrawals``, the chain payer beside the watcher),
``ipsx chain anchor``, ``ipsx chain withdrawals`` and ``ipsx reconcile``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import sys
from typing import Final

import asyncpg
from web3 import Web3

from billing import db, withdrawal_transfers, withdrawals
from billing.anchoring import Anchorer, AnchorError, AnchorSettings
from billing.chain import ChainSettings, ChainWatcher, DeepReorg, record_domain
from billing.errors import InvalidAmount
from billing.ledger import Amount, format_amount, parse_amount
from billing.reconcile import Report, format_report, reconcile
from billing.transfer_fees import GWEI, gwei
from billing.withdrawal_sender import SenderSettings, WithdrawalSender
from ipsx import runtime
from ipsx.chain_access import (
    CONNECTION_ERRORS,
    DeploymentFile,
    channels_domain,
    node,
    operator_key,
    quiet_providers,
    rpc_url,
    shown,
    wei_of,
)
from ipsx.chain_deploy import deploy_command
from ipsx.commands import DATABASE_UNUSABLE, UsageError, unusable
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
    elif args.action == "withdrawals":
        withdrawals_command(args, env)
    else:
        watch_command(args, env)


async def open_pool(dsn: str, max_size: int, *, migrate: bool = True) -> asyncpg.Pool:
    """The database of ``IPSX_DATABASE_URL``, created and migrated first if needed, or with
    ``migrate=False`` (a check that only reads) as it is: ``UsageError`` unless it exists with
    every migration applied. ``UsageError`` when it cannot be opened, created or migrated; the
    message never shows the URL's password."""
    try:
        if migrate:
            return await db.open_migrated(dsn, max_size=max_size)
        pool = await db.connect(dsn, max_size=max_size)
    except asyncpg.InvalidCatalogNameError as error:
        raise UsageError(f"{error}: is IPSX_DATABASE_URL the network's database?") from None
    except (*DATABASE_UNUSABLE, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise unusable("the database", dsn, "IPSX_DATABASE_URL", error) from None
    try:
        pending = await db.pending_migrations(pool)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as error:
        await pool.close()
        raise unusable("the database", dsn, "IPSX_DATABASE_URL", error) from None
    except BaseException:
        await pool.close()
        raise
    if pending:
        await pool.close()
        raise UsageError(
            f"the database of IPSX_DATABASE_URL lacks {len(pending)} migration(s) (from {pending[0]}):"
            " is it the network's database? `ipsx migrate` brings an older one up to date"
        )
    return pool


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
    key = "0x" + account.key.hex().removeprefix("0x")
    settings = ChainSettings(
        channels_address=record.channels,
        operator_key=key,
        rpc_url=url,
        confirmations=args.confirmations,
        poll_interval=args.poll,
        start_block=record.block,
    )
    sending = _sender_settings(args, record.token, key, url)
    stopped: list[DeepReorg] = []

    async def main(stop: asyncio.Event) -> None:
        async with node(url, record) as w3:  # its checks: the watcher makes its own connection
            _, problem = await channels_domain(w3, url, record)
        # The sender holds one connection for its lock and uses another meanwhile.
        pool = await open_pool(env.database, args.db_pool + (2 if sending else 0))
        try:
            # What the API nodes read before they sign a closing consent: they cannot ask the chain.
            await record_domain(pool, record.channels, problem)
            async with ChainWatcher(pool, settings) as watcher:
                log.info(
                    "watching PaymentChannels %s on chain %d from block %d, %d confirmations, operator %s",
                    record.channels, record.chain_id, record.block, args.confirmations, watcher.operator,
                )  # fmt: skip
                payer = None if sending is None else asyncio.create_task(_send(pool, sending, stop))
                try:
                    await watcher.run(stop)
                except DeepReorg as reorg:
                    stopped.append(reorg)
                else:
                    log.info("chain watcher stopped")
                finally:
                    stop.set()  # a watcher that stopped on a deep reorg stops the sender too
                    if payer is not None:
                        await payer
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


def _sender_settings(args: argparse.Namespace, token: str, key: str, url: str) -> SenderSettings | None:
    """The chain payer's settings with ``--send-withdrawals``, else ``None``; raises
    ``UsageError`` for a bad limit."""
    if not args.send_withdrawals:
        for given, flag in ((args.approval_above, "approval-above"), (args.bump_after, "bump-after"),
                            (args.max_fee_gwei, "max-fee-gwei")):  # fmt: skip
            if given is not None:
                raise UsageError(f"--{flag} applies to --send-withdrawals")
        return None
    if args.max_withdrawals < 1:
        raise UsageError("--max-withdrawals must be positive")
    if args.bump_after is not None and args.bump_after < 1:
        raise UsageError("--bump-after must be at least 1 block")
    limit = None
    if args.approval_above is not None:
        try:
            limit = int(parse_amount(args.approval_above))
        except InvalidAmount as error:
            raise UsageError(f"--approval-above: {error}") from None
    settings = SenderSettings(
        token_address=token,
        operator_key=key,
        rpc_url=url,
        confirmations=args.confirmations,
        poll_interval=args.poll,
        approval_above=limit,
        max_batch=args.max_withdrawals,
    )
    # What is not given keeps SenderSettings' default.
    if args.bump_after is not None:
        settings = dataclasses.replace(settings, bump_after=args.bump_after)
    if args.max_fee_gwei is not None:
        settings = dataclasses.replace(
            settings, max_fee=wei_of(args.max_fee_gwei, GWEI, "--max-fee-gwei", "gwei")
        )
    return settings


async def _send(pool: asyncpg.Pool, settings: SenderSettings, stop: asyncio.Event) -> None:
    async with WithdrawalSender(pool, settings) as sender:
        limit = "none" if settings.approval_above is None else format_amount(Amount(settings.approval_above))
        log.info("sending withdrawals in IPSX %s from %s, %d confirmations, approval needed above: %s; "
                 "fees bumped after %d blocks unmined, up to %s gwei per gas", sender.token, sender.operator,
                 settings.confirmations, limit, settings.bump_after, gwei(settings.max_fee))  # fmt: skip
        await sender.run(stop)
        log.info("withdrawal sender stopped")


# ---- ipsx chain withdrawals ----------------------------------------------------------------------

_OPEN: Final = ("pending", "sending", "failed")


def withdrawals_command(args: argparse.Namespace, env: Environment) -> None:
    if args.limit < 1:
        raise UsageError("--limit must be positive")
    states: tuple[str | None, ...] = (
        _OPEN if args.state == "open" else (None,) if args.state == "all" else (args.state,)
    )

    limit = args.limit

    async def go() -> list[str]:
        pool = await open_pool(env.database, 2)
        try:
            found = [w for state in states for w in await withdrawals.listing(pool, state=state, limit=limit)]
            found = sorted(found, key=lambda w: w.id, reverse=True)[:limit]
            lines = []
            for w in found:
                lines.append(_withdrawal_line(w))
                for t in await withdrawal_transfers.transfers(pool, w.id):
                    lines.extend(_transfer_lines(t))
            return lines
        finally:
            await pool.close()

    print("\n".join(asyncio.run(go())) or "no withdrawals")


def _withdrawal_line(w: withdrawals.Withdrawal) -> str:
    line = f"withdrawal {w.id}  {w.state:9}  {format_amount(w.amount)} IPSX of {w.account} ({w.source})"
    line += f" to {w.address}"
    if w.approved_at is not None:
        line += "  approved"
    if w.tx_hash:
        line += f"  tx {w.tx_hash}"
    if w.reason:
        line += f"  ({w.reason})"
    return line


def _transfer_lines(t: withdrawal_transfers.Transfer) -> list[str]:
    """The transfer, then each of its versions (the first signature, then each fee replacement)."""
    line = f"  transfer nonce {t.nonce}  {t.state}"
    if t.block_number is not None:
        line += f"  block {t.block_number}"
    if len(t.versions) > 1:
        line += f"  bumped {len(t.versions) - 1}x"
    lines = [line]
    for v in t.versions:
        line = f"    version {v.version}  {v.tx_hash}  "
        if v.fees.legacy:
            line += f"gas price {gwei(v.fees.max_fee)} gwei"
        else:
            line += f"max fee {gwei(v.fees.max_fee)} gwei  tip {gwei(v.fees.priority_fee)} gwei"
        line += f"  broadcasts {v.broadcasts}"
        if v.signed_block is not None:
            line += f"  signed at block {v.signed_block}"
        if v.tx_hash == t.mined_hash:
            line += "  mined"
        if v.last_error:
            line += f"  last error: {v.last_error}"
        lines.append(line)
    return lines


# ---- ipsx reconcile ------------------------------------------------------------------------------


def cmd_reconcile(args: argparse.Namespace, env: Environment) -> None:
    quiet_providers(args)
    record = DeploymentFile.load(args.deployment)
    url = rpc_url(args)
    if args.block is not None and args.block < 0:
        raise UsageError("--block must be >= 0")

    async def go() -> Report:
        async with node(url, record) as w3:
            pool = await open_pool(env.database, 2, migrate=False)
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

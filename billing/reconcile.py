"""Reconciliation: do the ledger and the channels table agree with the chain, to the base unit?

The chain is read at one block, by default the watcher's cursor (the last block it applied), so
a watcher that lags by its confirmations is not a mismatch. Checked:

- every channel in the table against ``getChannel`` (state, deposit, closing balance);
- per requester channel, the ``deposit`` movements referencing its logs against the deposit and
  top-ups its logs carry; per settled channel, the ``refund`` or ``payout`` movement against the
  ``ChannelSettled`` amounts, and that the requester paid at least the proof IPSX held;
- the token balance of the PaymentChannels contract against the deposits of channels not settled
  (this assumes the contract only holds IPSX's channels: others' would show as a mismatch);
- all ``deposit`` movements from the chain against all on-chain deposits of requester channels,
  and the ``external:chain`` balance against what the chain says moved in and out
  (-deposits + refunds + payouts + completed withdrawals).

Shortfalls the treasury covered at settlement are listed; they are not mismatches.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3 import AsyncWeb3

from billing import channels
from billing.chain import cursor_name, log_reference, read_cursor
from billing.channels import Channel
from billing.ledger import Amount, balance, format_amount
from billing.withdrawals import CHAIN
from contracts import load

MAX_RANGE: Final = 2_000
_ZERO_ADDRESS: Final = "0x" + "00" * 20
_CHAIN_KINDS: Final = ("deposit", "refund", "payout", "unpaid_usage", "overpaid_payout")


@dataclass(frozen=True, slots=True)
class Check:
    """One comparison: ``expected`` is what the chain says, ``actual`` what IPSX's books say."""

    name: str
    expected: int | str
    actual: int | str
    ok: bool


@dataclass(frozen=True, slots=True)
class Shortfall:
    """At a settlement, ``account`` had less than left the books; the treasury covered ``amount``."""

    channel_id: str
    account: str
    kind: str  # unpaid_usage | overpaid_payout
    amount: Amount


@dataclass(frozen=True, slots=True)
class Report:
    block: int  # the chain was read at this block
    checks: tuple[Check, ...]
    shortfalls: tuple[Shortfall, ...] = ()

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]


@dataclass
class _OnChain:
    """What one channel's logs say, up to the reconciled block."""

    deposits: list[tuple[str, int]] = field(default_factory=list)  # (reference, amount)
    settlement: tuple[str, int, int] | None = None  # (reference, paid, refunded)


def _equal(name: str, expected: int | str, actual: int | str) -> Check:
    return Check(name, expected, actual, expected == actual)


async def _chain_logs(
    w3: AsyncWeb3[Any], contract: Any, ids: set[str], start: int, end: int, max_range: int
) -> dict[str, _OnChain]:
    names = ("ChannelOpened", "ChannelToppedUp", "ChannelSettled")
    events = {HexBytes(getattr(contract.events, name)().topic): name for name in names}
    views: dict[str, _OnChain] = defaultdict(_OnChain)
    for first in range(start, end + 1, max_range):
        entries = await w3.eth.get_logs(
            {
                "address": contract.address,
                "fromBlock": first,
                "toBlock": min(end, first + max_range - 1),
                "topics": [list(events)],
            }
        )
        for entry in entries:
            if entry.get("removed", False):
                continue
            name = events[HexBytes(entry["topics"][0])]
            args = getattr(contract.events, name)().process_log(entry)["args"]
            channel_id = channels.channel_key(bytes(args["channelId"]))
            if channel_id not in ids:
                continue
            view, reference = views[channel_id], log_reference(entry)
            if name == "ChannelOpened":
                view.deposits.append((reference, int(args["deposit"])))
            elif name == "ChannelToppedUp":
                view.deposits.append((reference, int(args["amount"])))
            else:
                view.settlement = (reference, int(args["paid"]), int(args["refunded"]))
    return views


async def _chain_legs(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    # Read-only, across the ledger's tables: the movements the watcher makes, with their legs.
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT m.reference, m.kind, t.debit_account, t.credit_account, t.amount::text AS amount"
        " FROM ledger_movements m JOIN ledger_transfers t ON t.movement_id = m.id"
        " WHERE m.kind = ANY($1::text[])",
        list(_CHAIN_KINDS),
    )
    return rows


async def _completed_withdrawals(pool: asyncpg.Pool) -> int:
    total = await pool.fetchval(
        "SELECT COALESCE(SUM(amount), 0)::text FROM withdrawals WHERE state = 'completed'"
    )
    return int(total)


def _chain_state(on_chain: Any, view: _OnChain) -> str:
    sender, settle_after = on_chain[0], int(on_chain[1])
    if sender == _ZERO_ADDRESS:
        return "settled" if view.settlement is not None else "absent"
    return "open" if settle_after == 0 else "closing"


def _channel_checks(
    channel: Channel, on_chain: Any, view: _OnChain, legs: dict[str, list[asyncpg.Record]]
) -> Iterable[Check]:
    label = f"channel {channel.channel_id[:10]}"
    yield _equal(f"{label}: state", _chain_state(on_chain, view), channel.state)
    if channel.state != "settled":
        yield _equal(f"{label}: deposit", int(on_chain[3]), int(channel.deposit))
    if channel.state == "closing":
        closing = -1 if channel.closing_balance is None else int(channel.closing_balance)
        yield _equal(f"{label}: closing balance", int(on_chain[4]), closing)
    if channel.role == "requester":
        credited = sum(
            int(leg["amount"])
            for reference, _ in view.deposits
            for leg in legs.get(reference, [])
            if leg["kind"] == "deposit"
        )
        yield _equal(f"{label}: deposits credited", sum(amount for _, amount in view.deposits), credited)
    if view.settlement is None:
        return
    reference, paid, refunded = view.settlement
    yield _equal(
        f"{label}: settlement recorded",
        f"paid {paid}, refunded {refunded}",
        f"paid {channel.paid}, refunded {channel.refunded}",
    )
    kind, amount = ("refund", refunded) if channel.role == "requester" else ("payout", paid)
    moved = sum(int(leg["amount"]) for leg in legs.get(reference, []) if leg["kind"] == kind)
    yield _equal(f"{label}: {kind} in the ledger", amount, moved)
    if channel.role == "requester":
        held = int(channel.proof_balance)  # a lower payment means a stale close went uncountered
        yield Check(f"{label}: paid at least the proof held", paid, held, paid >= held)


async def reconcile(
    pool: asyncpg.Pool,
    w3: AsyncWeb3[Any],
    channels_address: str,
    token_address: str,
    *,
    block: int | None = None,
    max_range: int = MAX_RANGE,
    anchor_address: str | None = None,
) -> Report:
    """Compare the ledger and the channels table with the chain at ``block`` (default: the
    watcher's cursor, else the latest block); see the module docstring for the checks. With
    ``anchor_address`` (the DealAnchor), each anchored batch is checked too: its root, count and
    totals on-chain against the database, and its totals against the deals it holds now."""
    address = to_checksum_address(channels_address)
    if block is None:
        cursor = await read_cursor(pool, cursor_name(address))
        block = await w3.eth.block_number if cursor is None else cursor[0]
    contract = w3.eth.contract(address=address, abi=load("PaymentChannels").abi)
    token = w3.eth.contract(address=to_checksum_address(token_address), abi=load("IPSXToken").abi)
    table = await channels.listing(pool, contract=address)
    views: dict[str, _OnChain] = defaultdict(_OnChain)
    if table:
        start = min(channel.opened_block for channel in table)
        ids = {channel.channel_id for channel in table}
        views.update(await _chain_logs(w3, contract, ids, start, block, max_range))
    legs: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for leg in await _chain_legs(pool):
        legs[leg["reference"]].append(leg)

    checks: list[Check] = []
    settled_ids: dict[str, str] = {}  # settlement reference -> channel id
    for channel in table:
        view = views[channel.channel_id]
        on_chain = await contract.functions.getChannel(channel.id_bytes).call(block_identifier=block)
        checks.extend(_channel_checks(channel, on_chain, view, legs))
        if view.settlement is not None:
            settled_ids[view.settlement[0]] = channel.channel_id

    held = await token.functions.balanceOf(address).call(block_identifier=block)
    open_deposits = sum(int(c.deposit) for c in table if c.state != "settled")
    checks.append(_equal("PaymentChannels token balance", int(held), open_deposits))

    requesters = [views[c.channel_id] for c in table if c.role == "requester"]
    payouts = [views[c.channel_id] for c in table if c.role == "provider"]
    deposited = sum(amount for view in requesters for _, amount in view.deposits)
    all_credited = sum(
        int(leg["amount"])
        for group in legs.values()
        for leg in group
        if leg["kind"] == "deposit" and leg["debit_account"] == CHAIN
    )
    checks.append(_equal("deposits credited (all)", deposited, all_credited))
    refunded = sum(view.settlement[2] for view in requesters if view.settlement is not None)
    paid_out = sum(view.settlement[1] for view in payouts if view.settlement is not None)
    withdrawn = await _completed_withdrawals(pool)
    expected_chain = -deposited + refunded + paid_out + withdrawn
    checks.append(_equal(f"{CHAIN} balance", expected_chain, int(await balance(pool, CHAIN))))

    if anchor_address is not None:
        checks.extend(await _anchor_checks(pool, w3, to_checksum_address(anchor_address), block))

    shortfalls = [
        Shortfall(settled_ids.get(reference.removesuffix(":shortfall"), "?"), leg["credit_account"],
                  leg["kind"], Amount(int(leg["amount"])))
        for reference, group in legs.items()
        for leg in group
        if leg["kind"] in ("unpaid_usage", "overpaid_payout")
    ]  # fmt: skip
    return Report(block=block, checks=tuple(checks), shortfalls=tuple(shortfalls))


async def _anchor_checks(pool: asyncpg.Pool, w3: AsyncWeb3[Any], address: str, block: int) -> list[Check]:
    anchor = w3.eth.contract(address=to_checksum_address(address), abi=load("DealAnchor").abi)
    batches = await pool.fetch(
        """
        SELECT b.batch_id, b.root, b.record_count, b.total_amount::text AS total_amount,
               b.total_bytes::text AS total_bytes, s.charges, s.bytes
        FROM anchor_batches b
        LEFT JOIN LATERAL (
            SELECT COALESCE(sum(d.charge), 0)::text AS charges,
                   COALESCE(sum(d.billable_bytes), 0)::text AS bytes
            FROM anchor_records r JOIN deals d USING (deal_id)
            WHERE r.contract = b.contract AND r.batch_id = b.batch_id
        ) s ON true
        WHERE b.contract = $1 AND b.state = 'anchored' ORDER BY b.batch_id
        """,
        address,
    )
    count = await anchor.functions.batchCount().call(block_identifier=block)
    checks = [_equal("anchored batches on-chain", len(batches), int(count))]
    for row in batches:
        label = f"anchored batch {row['batch_id']}"
        root, records, _, total_amount, total_bytes = await anchor.functions.getBatch(row["batch_id"]).call(
            block_identifier=block
        )
        stored = (row["root"], row["record_count"], int(row["total_amount"]), int(row["total_bytes"]))
        checks.append(_equal(f"{label}: root", stored[0], "0x" + bytes(root).hex()))
        checks.append(_equal(f"{label}: records", stored[1], int(records)))
        checks.append(_equal(f"{label}: total charged", stored[2], int(total_amount)))
        checks.append(_equal(f"{label}: total bytes", stored[3], int(total_bytes)))
        checks.append(_equal(f"{label}: its deals' charges now", stored[2], int(row["charges"])))
        checks.append(_equal(f"{label}: its deals' bytes now", stored[3], int(row["bytes"])))
    return checks


def _show(value: int | str) -> str:
    if isinstance(value, int):
        return f"{value} ({format_amount(Amount(value))} IPSX)"
    return value


def format_report(report: Report) -> str:
    """The report as text for a terminal: a verdict line, then one line per check (mismatches
    first), then the shortfalls."""
    failures = report.failures
    verdict = "OK" if report.ok else f"MISMATCH ({len(failures)} of {len(report.checks)} checks)"
    lines = [f"Reconciliation at block {report.block}: {verdict}"]
    for check in sorted(report.checks, key=lambda c: c.ok):
        mark = "ok      " if check.ok else "MISMATCH"
        lines.append(f"  {mark}  {check.name}: chain {_show(check.expected)}, books {_show(check.actual)}")
    if report.shortfalls:
        lines.append("Shortfalls covered by the treasury:")
        for shortfall in report.shortfalls:
            lines.append(
                f"  channel {shortfall.channel_id}: {shortfall.kind} of {_show(int(shortfall.amount))}"
                f" to {shortfall.account}"
            )
    return "\n".join(lines)

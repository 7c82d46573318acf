"""Fee bumping by the chain payer: a transfer a base-fee spike leaves unmined is replaced by the
same transfer with the same nonce and higher fees, on a real anvil node and a real PostgreSQL
database.

anvil mines only when a test says so (``manual_mining``); a spike is one block whose base fee is
set high (anvil then drops from its pool what no longer pays it, as a node evicts underpriced
transactions). The sender is driven round by round, so nothing depends on timing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from eth_account import Account
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from hexbytes import HexBytes
from hypothesis import given
from hypothesis import strategies as st
from web3.exceptions import TransactionNotFound

from billing import accounts, db, withdrawal_transfers, withdrawals
from billing.ledger import TREASURY, Amount, transfer
from billing.transfer_fees import GWEI, Fees, gwei, replacement_fees, signed_fees, underpriced
from billing.withdrawal_sender import SenderSettings, WithdrawalSender
from billing.withdrawal_transfers import Transfer, transfers
from billing.withdrawals import Withdrawal
from ipsx.chain_commands import _sender_settings
from ipsx.cli import build_parser
from ipsx.commands import UsageError
from tests.billing.test_withdrawal_sender import (
    AMOUNT,
    CONFIRMATIONS,
    account,
    automine,
    posted,
    senders,
    state,
    transfer_logs,
    withdraw,
)

if TYPE_CHECKING:
    from tests.billing.chainstack import ChainStack as Stack

pytest_plugins = ("tests.billing.chainstack",)

BUMP_AFTER = 3  # blocks
SPIKE = 100 * GWEI  # the base fee of the spike block


# ---- the replacement's fees, without a chain ---------------------------------------------------------


def test_replacement_fees_follow_the_chain_when_it_asks_more() -> None:
    previous, needed = Fees(3 * GWEI, GWEI), Fees(201 * GWEI, 2 * GWEI)
    assert replacement_fees(previous, needed, 500 * GWEI) == Fees(201 * GWEI, 2 * GWEI)


def test_replacement_fees_raise_each_fee_by_an_eighth_at_least() -> None:
    previous, needed = Fees(40 * GWEI, 2 * GWEI), Fees(41 * GWEI, GWEI)
    assert replacement_fees(previous, needed, 500 * GWEI) == Fees(45 * GWEI, 2_250_000_000)
    assert replacement_fees(Fees(9, 1), Fees(1, 1), 100) == Fees(11, 2)  # rounded up, never short


def test_replacement_fees_stop_at_the_ceiling() -> None:
    previous, needed = Fees(40 * GWEI, 2 * GWEI), Fees(201 * GWEI, 2 * GWEI)
    assert replacement_fees(previous, needed, 60 * GWEI) == Fees(60 * GWEI, 2_250_000_000)
    assert replacement_fees(previous, needed, 45 * GWEI) == Fees(45 * GWEI, 2_250_000_000)
    assert replacement_fees(previous, needed, 45 * GWEI - 1) is None  # less than +12.5 %: no replacement
    assert replacement_fees(Fees(40, 40), Fees(400, 400), 45) == Fees(45, 45)  # the tip as high as the cap
    assert replacement_fees(Fees(40, 40), Fees(400, 400), 44) is None


def test_replacement_fees_of_a_legacy_transaction_are_one_gas_price() -> None:
    previous, needed = Fees(8 * GWEI, 8 * GWEI, legacy=True), Fees(5 * GWEI, 5 * GWEI, legacy=True)
    assert replacement_fees(previous, needed, 500 * GWEI) == Fees(9 * GWEI, 9 * GWEI, legacy=True)


@given(
    previous_max=st.integers(1, 10**13),
    previous_tip_share=st.integers(0, 100),
    needed_max=st.integers(1, 10**13),
    needed_tip_share=st.integers(0, 100),
    ceiling=st.integers(1, 10**13),
)
def test_replacement_fees_are_always_a_replacement_a_node_takes(
    previous_max: int, previous_tip_share: int, needed_max: int, needed_tip_share: int, ceiling: int
) -> None:
    previous = Fees(previous_max, previous_max * previous_tip_share // 100)
    needed = Fees(needed_max, needed_max * needed_tip_share // 100)
    fees = replacement_fees(previous, needed, ceiling)
    if fees is None:
        assert ceiling * 8 < previous.max_fee * 9 or ceiling * 8 < previous.priority_fee * 9
        return
    assert fees.max_fee * 8 >= previous.max_fee * 9 and fees.priority_fee * 8 >= previous.priority_fee * 9
    assert fees.priority_fee <= fees.max_fee <= ceiling
    assert fees.max_fee >= min(needed.max_fee, ceiling)
    assert not underpriced(fees, needed) or fees.max_fee == ceiling or fees.priority_fee == fees.max_fee


def test_underpriced_compares_the_fee_cap_and_the_tip() -> None:
    needed = Fees(10 * GWEI, GWEI)
    assert not underpriced(Fees(10 * GWEI, GWEI), needed)
    assert underpriced(Fees(10 * GWEI - 1, 2 * GWEI), needed)
    assert underpriced(Fees(20 * GWEI, GWEI - 1), needed)


def test_signed_fees_reads_them_back_from_the_raw_transaction() -> None:
    key = Account.from_key("0x" + "11" * 32)
    common = {"to": key.address, "value": 0, "gas": 21_000, "nonce": 7, "chainId": 31337}
    dynamic = key.sign_transaction({**common, "maxFeePerGas": 30 * GWEI, "maxPriorityFeePerGas": 2 * GWEI})
    legacy = key.sign_transaction({**common, "gasPrice": 12 * GWEI})
    assert signed_fees(bytes(dynamic.raw_transaction)) == Fees(30 * GWEI, 2 * GWEI)
    assert signed_fees(bytes(legacy.raw_transaction)) == Fees(12 * GWEI, 12 * GWEI, legacy=True)
    with pytest.raises(ValueError):
        signed_fees(b"")


@pytest.mark.parametrize(
    "raw",
    [
        b"\xc0",
        b"\xf8\x01",
        b"\x02",
        b"\x02\xc0",
        b"\x02\xc3\x01\x02\x03",
        b"\x7f\x00\x01",
        b"\xde\xad\xbe\xef",
    ],
    ids=[
        "empty-list",
        "truncated-list",
        "type-only",
        "empty-typed",
        "short-typed",
        "unknown-type",
        "garbage",
    ],
)
def test_signed_fees_refuses_bytes_that_are_no_transaction_with_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError, match=r"^not a signed transaction"):
        signed_fees(raw)


# ---- the chain command's options ---------------------------------------------------------------------


def _watch(*options: str) -> Any:
    return build_parser().parse_args(["chain", "watch", *options])


def test_sender_settings_call_takes_the_bumping_options() -> None:
    args = _watch("--send-withdrawals", "--bump-after", "4", "--max-fee-gwei", "2.5")
    settings = _sender_settings(args, "0x" + "22" * 20, "0x" + "11" * 32, "http://127.0.0.1:8545")
    assert settings is not None
    assert (settings.bump_after, settings.max_fee) == (4, 2_500_000_000)
    default = _sender_settings(_watch("--send-withdrawals"), "0x" + "22" * 20, "0x" + "11" * 32, "x")
    assert default is not None
    assert (default.bump_after, default.max_fee) == (15, 500 * GWEI)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--max-fee-gwei", "30"), "--max-fee-gwei applies to --send-withdrawals"),
        (("--bump-after", "3"), "--bump-after applies to --send-withdrawals"),
        (("--send-withdrawals", "--bump-after", "0"), "--bump-after must be at least 1 block"),
        (("--send-withdrawals", "--max-fee-gwei", "lots"), "not a number of gwei"),
        (("--send-withdrawals", "--max-fee-gwei", "0"), "not a positive whole number of wei"),
        (("--send-withdrawals", "--max-fee-gwei", "0.0000000001"), "not a positive whole number of wei"),
        (("--send-withdrawals", "--max-fee-gwei", "inf"), "not a positive whole number of wei"),
    ],
)
def test_sender_settings_call_refuses_bad_bumping_options(options: tuple[str, ...], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        _sender_settings(_watch(*options), "0x" + "22" * 20, "0x" + "11" * 32, "http://127.0.0.1:8545")


def test_watch_help_states_the_defaults_the_sender_uses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _watch("--help")
    text = " ".join(capsys.readouterr().out.split())
    defaults = SenderSettings(token_address="0x" + "22" * 20, operator_key="0x" + "11" * 32)
    assert "--bump-after BLOCKS" in text and f"(default: {defaults.bump_after}, about" in text
    assert "--max-fee-gwei GWEI" in text and f"(default: {defaults.max_fee // GWEI})" in text


# ---- on a real chain ----------------------------------------------------------------------------------


Make = Callable[..., WithdrawalSender]


@pytest.fixture
def stack(chain_stack: Stack) -> Iterator[Stack]:
    """The chain mining only when told (``stack.mine``); afterwards its pool is emptied and the
    base fee the node asks for the next block put back (reverting a snapshot leaves it as is)."""
    w3 = chain_stack.chain.w3
    next_base = int(w3.eth.get_block("pending")["baseFeePerGas"])
    automine(chain_stack, False)
    try:
        yield chain_stack
    finally:
        w3.provider.make_request("anvil_dropAllTransactions", [])  # type: ignore[arg-type]
        w3.provider.make_request("anvil_setNextBlockBaseFeePerGas", [hex(next_base)])  # type: ignore[arg-type]
        automine(chain_stack, True)


@pytest.fixture
async def make_sender(stack: Stack) -> AsyncIterator[Make]:
    async with senders(stack, bump_after=BUMP_AFTER) as make:
        yield make


async def completes_once(
    stack: Stack, sender: WithdrawalSender, withdrawal: Withdrawal, mined: str
) -> Transfer:
    """Check that the transfer version ``mined`` (just mined) completes the withdrawal once it is
    deep enough, and nothing is bumped meanwhile: one ledger posting, one Transfer on-chain.
    Returns the resolved transfer."""
    waiting = await sender.send_once()
    assert (waiting.waiting, waiting.unmined, waiting.bumped, waiting.completed) == (1, 0, [], [])
    stack.mine(CONFIRMATIONS)
    assert (await sender.send_once()).completed == [withdrawal.id]
    completed = await withdrawals.get(stack.pool, withdrawal.id)
    assert completed is not None
    assert (completed.state, completed.tx_hash) == ("completed", mined)
    resolved = await the_transfer(stack, withdrawal)
    assert (resolved.state, resolved.mined_hash) == ("confirmed", mined)
    assert await posted(stack, withdrawal) == 1
    assert len(transfer_logs(stack, stack.requesters[0])) == 1
    return resolved


def base_fee(stack: Stack) -> int:
    return int(stack.chain.w3.eth.get_block("latest")["baseFeePerGas"])


def spike(stack: Stack, base: int = SPIKE) -> None:
    """Mine one block whose base fee is ``base`` (anvil drops what no longer pays it from its pool)."""
    stack.chain.w3.provider.make_request("anvil_setNextBlockBaseFeePerGas", [hex(base)])  # type: ignore[arg-type]
    stack.mine(1)


def pending(stack: Stack, tx_hash: str) -> bool:
    """Whether the node holds the transaction, unmined."""
    try:
        found = stack.chain.w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
    except TransactionNotFound:
        return False
    return found["blockNumber"] is None


def mined_in(stack: Stack, tx_hash: str) -> int | None:
    try:
        receipt = stack.chain.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
    except TransactionNotFound:
        return None
    assert receipt["status"] == 1
    return int(receipt["blockNumber"])


def decoded(raw_tx: bytes) -> dict[str, Any]:
    return TypedTransaction.from_bytes(HexBytes(raw_tx)).as_dict()


async def the_transfer(stack: Stack, withdrawal: Withdrawal) -> Transfer:
    (found,) = await transfers(stack.pool, withdrawal.id)
    return found


async def priced_out(stack: Stack, sender: WithdrawalSender) -> tuple[Withdrawal, Transfer]:
    """A withdrawal sent, then a base-fee spike before its block: its transfer unmined for
    ``BUMP_AFTER`` blocks, out of the node's pool. Returns it and its transfer (one version)."""
    await account(stack, "alice")
    withdrawal = await withdraw(stack, "alice")
    assert (await sender.send_once()).claimed == [withdrawal.id]
    sent = await the_transfer(stack, withdrawal)
    assert pending(stack, sent.latest.tx_hash)
    spike(stack)
    assert not pending(stack, sent.latest.tx_hash)
    stack.mine(BUMP_AFTER - 1)
    assert mined_in(stack, sent.latest.tx_hash) is None
    return withdrawal, sent


async def test_a_transfer_priced_out_by_a_spike_is_replaced_with_the_same_nonce_and_mined(
    stack: Stack, make_sender: Make
) -> None:
    nonce, before = stack.nonce(stack.operator), stack.tokens(stack.requesters[0])
    sender = make_sender()
    await account(stack, "alice")
    withdrawal = await withdraw(stack, "alice")
    assert (await sender.send_once()).claimed == [withdrawal.id]
    original = (await the_transfer(stack, withdrawal)).latest
    spike(stack)

    # Not waited long enough yet: broadcast again (the node refuses it, below the base fee), not bumped.
    early = await sender.send_once()
    assert (early.unmined, early.bumped, early.claimed) == (1, [], [])
    kept = await the_transfer(stack, withdrawal)
    assert [v.tx_hash for v in kept.versions] == [original.tx_hash]
    assert kept.latest.last_error is not None and "base fee" in kept.latest.last_error

    stack.mine(BUMP_AFTER - 1)
    head_base = base_fee(stack)
    bumped = await sender.send_once()
    assert (bumped.bumped, bumped.unmined, bumped.claimed) == ([withdrawal.id], 1, [])
    replaced = await the_transfer(stack, withdrawal)
    first, second = replaced.versions
    assert (first.tx_hash, second.version, replaced.nonce, replaced.state) == (
        original.tx_hash, 1, nonce, "signed",
    )  # fmt: skip
    old, new = decoded(first.raw_tx), decoded(second.raw_tx)
    assert (new["nonce"], new["to"], new["data"], new["value"]) == (nonce, old["to"], old["data"], 0)
    assert second.fees == Fees(2 * head_base + GWEI, GWEI * 9 // 8)  # what the chain asks; the tip +12.5 %
    assert signed_fees(second.raw_tx) == second.fees
    assert second.fees.max_fee * 8 >= first.fees.max_fee * 9
    assert second.signed_block == stack.block()
    assert (second.broadcasts, second.last_error) == (1, None)
    assert pending(stack, second.tx_hash) and not pending(stack, first.tx_hash)

    stack.mine(1)
    assert mined_in(stack, second.tx_hash) == stack.block()
    assert mined_in(stack, first.tx_hash) is None
    assert stack.nonce(stack.operator) == nonce + 1
    resolved = await completes_once(stack, sender, withdrawal, second.tx_hash)
    assert len(resolved.versions) == 2
    assert resolved.block_number == mined_in(stack, second.tx_hash)
    assert stack.tokens(stack.requesters[0]) == before + AMOUNT

    stack.mine(CONFIRMATIONS)
    again = await sender.send_once()
    assert (again.completed, again.bumped, again.claimed) == ([], [], [])
    assert await posted(stack, withdrawal) == 1


async def test_a_version_that_pays_what_the_chain_asks_is_sent_again_not_replaced(
    stack: Stack, make_sender: Make
) -> None:
    sender = make_sender()
    withdrawal, _ = await priced_out(stack, sender)
    assert (await sender.send_once()).bumped == [withdrawal.id]
    replacement = (await the_transfer(stack, withdrawal)).latest
    # The node loses it (restarted with an empty pool) while the base fee falls back.
    stack.chain.w3.provider.make_request("anvil_dropTransaction", [replacement.tx_hash])  # type: ignore[arg-type]
    stack.mine(BUMP_AFTER)
    assert 2 * base_fee(stack) + GWEI <= replacement.fees.max_fee

    again = await sender.send_once()
    assert (again.bumped, again.unmined) == ([], 1)
    resent = await the_transfer(stack, withdrawal)
    assert [(v.version, v.broadcasts) for v in resent.versions] == [(0, 1), (1, 2)]
    assert pending(stack, replacement.tx_hash)
    stack.mine(1 + CONFIRMATIONS)
    assert (await sender.send_once()).completed == [withdrawal.id]
    assert await posted(stack, withdrawal) == 1


@pytest.mark.parametrize("broadcast", [True, False], ids=["replacement-broadcast", "replacement-stored"])
async def test_the_original_mined_after_a_replacement_completes_the_withdrawal_once(
    stack: Stack, make_sender: Make, broadcast: bool
) -> None:
    base = base_fee(stack)
    sender = make_sender()
    withdrawal, sent = await priced_out(stack, sender)
    original = sent.latest
    done = await (sender.send_once() if broadcast else sender.bump())
    assert done.bumped == [withdrawal.id]
    replacement = (await the_transfer(stack, withdrawal)).latest
    assert (replacement.version, replacement.broadcasts) == (1, 1 if broadcast else 0)
    assert pending(stack, replacement.tx_hash) == broadcast

    # Another node kept the original, and it is the one mined once fees come down.
    if broadcast:
        stack.chain.w3.provider.make_request("anvil_dropTransaction", [replacement.tx_hash])  # type: ignore[arg-type]
    spike(stack, base)
    stack.chain.w3.eth.send_raw_transaction(original.raw_tx)
    stack.mine(1)
    assert mined_in(stack, original.tx_hash) == stack.block()

    resolved = await completes_once(stack, sender, withdrawal, original.tx_hash)
    assert [v.tx_hash for v in resolved.versions] == [original.tx_hash, replacement.tx_hash]
    assert mined_in(stack, replacement.tx_hash) is None

    stack.mine(CONFIRMATIONS)
    assert (await sender.send_once()).completed == []
    assert await posted(stack, withdrawal) == 1


async def test_a_restart_after_storing_a_replacement_broadcasts_it_and_no_new_nonce(
    stack: Stack, make_sender: Make
) -> None:
    nonce = stack.nonce(stack.operator)
    crashed = make_sender()
    withdrawal, sent = await priced_out(stack, crashed)
    later = await withdraw(stack, "alice", 3 * 10**18)  # waits behind the stuck nonce

    assert (await crashed.bump()).bumped == [withdrawal.id]  # stored, then the process died
    stored = (await the_transfer(stack, withdrawal)).latest
    assert (stored.version, stored.broadcasts) == (1, 0)
    assert not pending(stack, stored.tx_hash)
    assert stack.chain.w3.eth.get_transaction_count(stack.operator, "pending") == nonce
    await crashed.aclose()

    restarted = make_sender()
    first = await restarted.send_once()
    assert (first.unmined, first.bumped, first.claimed) == (1, [], [])
    assert pending(stack, stored.tx_hash)  # the very bytes stored
    resent = await the_transfer(stack, withdrawal)
    assert [(v.version, v.tx_hash, v.broadcasts) for v in resent.versions] == [
        (0, sent.latest.tx_hash, 1), (1, stored.tx_hash, 1),
    ]  # fmt: skip
    assert HexBytes(stack.chain.w3.keccak(resent.latest.raw_tx)).to_0x_hex() == stored.tx_hash
    assert await state(stack, later) == "pending"

    stack.mine(1)
    assert mined_in(stack, stored.tx_hash) is not None
    assert stack.nonce(stack.operator) == nonce + 1
    stack.mine(CONFIRMATIONS)
    done = await restarted.send_once()
    assert (done.completed, done.claimed) == ([withdrawal.id], [later.id])
    completed = await withdrawals.get(stack.pool, withdrawal.id)
    assert completed is not None and completed.tx_hash == stored.tx_hash
    assert {v.transfer_id for v in resent.versions} == {resent.id}
    assert (await the_transfer(stack, later)).nonce == nonce + 1  # the next nonce went to the next one
    assert await posted(stack, withdrawal) == 1


async def test_the_fee_ceiling_stops_bumping(
    stack: Stack, make_sender: Make, caplog: pytest.LogCaptureFixture
) -> None:
    base = base_fee(stack)
    ceiling = 20 * GWEI
    sender = make_sender(max_fee=ceiling)
    withdrawal, sent = await priced_out(stack, sender)

    at_ceiling = await sender.send_once()
    assert (at_ceiling.bumped, at_ceiling.capped) == ([withdrawal.id], [])
    capped = (await the_transfer(stack, withdrawal)).latest
    assert capped.fees == Fees(ceiling, GWEI * 9 // 8)
    assert capped.last_error is not None  # still below the base fee: the node refuses it for now
    assert "at the fee ceiling of 20 gwei" in caplog.text

    for _ in range(2):
        stack.mine(BUMP_AFTER)
        assert base_fee(stack) > ceiling
        stopped = await sender.send_once()
        assert (stopped.capped, stopped.bumped, stopped.unmined) == ([withdrawal.id], [], 1)
    versions = (await the_transfer(stack, withdrawal)).versions
    assert [v.tx_hash for v in versions] == [sent.latest.tx_hash, capped.tx_hash]
    warnings = [r.getMessage() for r in caplog.records if "leaves no room" in r.getMessage()]
    assert len(warnings) == 1  # once per version, not every round
    assert "it is not bumped" in warnings[0] and "fee ceiling of 20 gwei" in warnings[0]

    spike(stack, base)  # fees come down: the version at the ceiling goes through
    assert (await sender.send_once()).unmined == 1
    assert pending(stack, capped.tx_hash)
    stack.mine(1 + CONFIRMATIONS)
    assert (await sender.send_once()).completed == [withdrawal.id]
    completed = await withdrawals.get(stack.pool, withdrawal.id)
    assert completed is not None and completed.tx_hash == capped.tx_hash
    assert await posted(stack, withdrawal) == 1


async def test_no_withdrawal_is_signed_while_the_chain_asks_more_than_the_ceiling(
    stack: Stack, make_sender: Make, caplog: pytest.LogCaptureFixture
) -> None:
    await account(stack, "alice")
    withdrawal = await withdraw(stack, "alice")
    nonce = stack.nonce(stack.operator)
    asks = 2 * base_fee(stack) + GWEI

    assert (await make_sender(max_fee=asks - 1).send_once()).claimed == []
    assert await state(stack, withdrawal) == "pending"
    assert await transfers(stack.pool, withdrawal.id) == []
    assert stack.chain.w3.eth.get_transaction_count(stack.operator, "pending") == nonce
    assert "above the fee ceiling" in caplog.text

    assert (await make_sender(max_fee=asks).send_once()).claimed == [withdrawal.id]
    assert (await the_transfer(stack, withdrawal)).latest.fees == Fees(asks, GWEI)


async def test_a_nonce_taken_by_another_transaction_drops_every_version(
    stack: Stack, make_sender: Make
) -> None:
    nonce = stack.nonce(stack.operator)
    sender = make_sender()
    withdrawal, _ = await priced_out(stack, sender)
    assert (await sender.bump()).bumped == [withdrawal.id]
    # The operator replaces the nonce by hand, with something else.
    automine(stack, True)
    stack.chain.transact(stack.token.functions.approve(stack.outsider, 1), stack.operator)
    automine(stack, False)
    assert stack.nonce(stack.operator) == nonce + 1

    stack.mine(CONFIRMATIONS)
    done = await sender.send_once()
    assert (done.requeued, done.claimed, done.bumped) == ([withdrawal.id], [withdrawal.id], [])
    dropped, renewed = await transfers(stack.pool, withdrawal.id)
    assert (dropped.state, dropped.mined_hash, len(dropped.versions)) == ("dropped", None, 2)
    assert (renewed.state, renewed.nonce, len(renewed.versions)) == ("signed", nonce + 1, 1)
    stack.mine(1 + CONFIRMATIONS)
    assert (await sender.send_once()).completed == [withdrawal.id]
    assert await posted(stack, withdrawal) == 1
    assert len(transfer_logs(stack, stack.requesters[0])) == 1


async def test_the_listing_shows_every_version_of_a_transfer(
    stack: Stack, make_sender: Make, database_url: str
) -> None:
    sender = make_sender()
    withdrawal, _ = await priced_out(stack, sender)
    assert (await sender.send_once()).bumped == [withdrawal.id]
    stack.mine(1 + CONFIRMATIONS)
    assert (await sender.send_once()).completed == [withdrawal.id]
    resolved = await the_transfer(stack, withdrawal)
    first, second = resolved.versions

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ipsx", "chain", "withdrawals", "--state", "all",
        env={**os.environ, "IPSX_DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0].startswith(f"withdrawal {withdrawal.id}  completed ")
    transfer_line = f"  transfer nonce {resolved.nonce}  confirmed  block {resolved.block_number}  bumped 1x"
    assert lines[1] == transfer_line
    assert lines[2].startswith(
        f"    version 0  {first.tx_hash}  max fee {gwei(first.fees.max_fee)} gwei  tip 1 gwei"
    )
    assert "mined" not in lines[2] and "last error: " in lines[2]
    assert lines[3].startswith(f"    version 1  {second.tx_hash}  max fee ")
    assert "  tip 1.125 gwei  broadcasts 1  " in lines[3]
    assert lines[3].endswith(f"signed at block {second.signed_block}  mined")
    assert len(lines) == 4


# ---- the migration ----------------------------------------------------------------------------------

LEGACY_KEY = Account.from_key("0x" + "33" * 32)


def _signed(nonce: int, **fees: int) -> Any:
    tx = {"to": LEGACY_KEY.address, "value": 0, "gas": 60_000, "chainId": 31337, "data": "0x", "nonce": nonce}
    return LEGACY_KEY.sign_transaction({**tx, **fees})


async def _store_as_020_did(
    pool: asyncpg.Pool, withdrawal: Withdrawal, nonce: int, signed: Any, **row: Any
) -> None:
    """A transfer row as migration 020's table held it (its one transaction in the row)."""
    values = {"state": "signed", "broadcasts": 0, "last_error": None, "block_number": None, **row}
    await pool.execute(
        """
        INSERT INTO withdrawal_transfers (withdrawal_id, chain_id, token, sender, recipient, amount, nonce,
            tx_hash, raw_tx, state, broadcasts, last_error, block_number, resolved_at)
        VALUES ($1, 31337, $2, $2, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                CASE WHEN $7 = 'signed' THEN NULL ELSE now() END)
        """,
        withdrawal.id, LEGACY_KEY.address, int(withdrawal.amount), nonce, HexBytes(signed.hash).to_0x_hex(),
        bytes(signed.raw_transaction), values["state"], values["broadcasts"], values["last_error"],
        values["block_number"],
    )  # fmt: skip


async def test_migration_021_makes_each_stored_transfer_its_version_0(
    fresh_database_url: str, tmp_path: Path
) -> None:
    for path in db.migration_files():
        if int(path.name[:3]) <= 20:
            shutil.copy(path, tmp_path / path.name)
    dynamic = _signed(0, maxFeePerGas=7 * GWEI, maxPriorityFeePerGas=GWEI)
    legacy = _signed(1, gasPrice=5 * GWEI)
    refused = "max fee per gas less than block base fee"
    pool = await db.connect(fresh_database_url, max_size=2)
    try:
        await db.migrate(pool, directories=(tmp_path,))
        await accounts.create_account(pool, address=LEGACY_KEY.address, name="alice")
        await transfer(pool, debit=TREASURY, credit="requester:alice", amount=Amount(10**20), kind="credit")
        unmined, mined = [
            (await withdrawals.request(pool, account_name="alice", amount=Amount(10**18)))[0] for _ in "ab"
        ]
        await _store_as_020_did(pool, unmined, 0, dynamic, last_error=refused)
        await _store_as_020_did(pool, mined, 1, legacy, state="confirmed", broadcasts=2, block_number=40)

        assert "021_transfer_replacements" in await db.migrate(pool)

        (waiting,) = await transfers(pool, unmined.id)
        (v0,) = waiting.versions
        assert (waiting.state, waiting.mined_hash, waiting.block_number) == ("signed", None, None)
        assert (v0.version, v0.tx_hash, v0.raw_tx) == (
            0, HexBytes(dynamic.hash).to_0x_hex(), dynamic.raw_transaction,
        )  # fmt: skip
        assert (v0.broadcasts, v0.last_error, v0.signed_block) == (0, refused, None)
        assert v0.fees == Fees(7 * GWEI, GWEI)  # read from the raw transaction: 020 stored no fees
        (confirmed,) = await transfers(pool, mined.id)
        (l0,) = confirmed.versions
        assert (confirmed.state, confirmed.mined_hash, confirmed.block_number) == (
            "confirmed",
            l0.tx_hash,
            40,
        )
        assert (l0.tx_hash, l0.broadcasts, l0.fees) == (
            HexBytes(legacy.hash).to_0x_hex(), 2, Fees(5 * GWEI, 5 * GWEI, legacy=True),
        )  # fmt: skip

        # A migrated transfer still unmined can be replaced, once per version.
        bump, fees = (
            _signed(0, maxFeePerGas=9 * GWEI, maxPriorityFeePerGas=2 * GWEI),
            Fees(9 * GWEI, 2 * GWEI),
        )
        async with pool.acquire() as conn, conn.transaction():
            replaced = await withdrawal_transfers.store_version_in(conn, waiting, bump, 50)
            assert await withdrawal_transfers.store_version_in(conn, waiting, bump, 50) is None
        assert replaced is not None
        assert [(v.version, v.signed_block) for v in replaced.versions] == [(0, None), (1, 50)]
        assert replaced.latest.fees == fees  # read back from its raw transaction
        resolve = "UPDATE withdrawal_transfers SET state = 'confirmed', resolved_at = now()"
        with pytest.raises(asyncpg.CheckViolationError):  # resolved as mined: by which version?
            await pool.execute(f"{resolve} WHERE id = $1", waiting.id)
        with pytest.raises(asyncpg.ForeignKeyViolationError):  # only by one of its own
            await pool.execute(f"{resolve}, mined_hash = $2 WHERE id = $1", waiting.id, l0.tx_hash)
    finally:
        await pool.close()

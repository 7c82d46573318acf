"""A counter the node lost is sent again, on a real anvil node and a real PostgreSQL database.

When a requester closes a channel below the proof IPSX holds, the chain watcher submits the proof
(the "counter"). If the node drops that transaction from its pool, or another transaction of the
operator (the chain payer, the anchorer) takes its nonce, the counter can never be mined: the
watcher must send it again, else the channel settles at the requester's stale balance.

anvil mines only when a test says so (``stack.mine``); the watcher is driven call by call.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from hexbytes import HexBytes
from web3.exceptions import TransactionNotFound

from billing import channels
from billing.chain import ChainWatcher

if TYPE_CHECKING:
    from tests.billing.chainstack import ChainStack as Stack

pytest_plugins = ("tests.billing.chainstack",)

TOKEN = 10**18
PROOF = 30 * TOKEN  # what the requester signed for
STALE = 0  # what the requester closes at
GWEI = 10**9


def automine(stack: Stack, on: bool) -> None:
    stack.chain.w3.provider.make_request("evm_setAutomine", [on])  # type: ignore[arg-type]


@pytest.fixture
def stack(chain_stack: Stack) -> Iterator[Stack]:
    """The chain with automine on for the setup; afterwards its pool is emptied and automine back on."""
    try:
        yield chain_stack
    finally:
        chain_stack.chain.w3.provider.make_request("anvil_dropAllTransactions", [])  # type: ignore[arg-type]
        automine(chain_stack, True)


async def stale_close(stack: Stack) -> tuple[ChainWatcher, str]:
    """A requester channel with a proof of ``PROOF``, closed at ``STALE`` by the requester, the
    close applied by a watcher; then anvil stops mining on its own. Returns the watcher and the
    channel id."""
    requester = stack.requesters[0]
    channel_id = stack.open(requester, stack.operator, 50 * TOKEN)
    stack.mine()
    watcher = stack.watcher()
    assert await watcher.poll_once() == 1
    signature = stack.sign(requester, channel_id, PROOF)
    await channels.record_proof(stack.pool, channel_id, PROOF, signature, domain=stack.domain)
    stack.close(requester, channel_id, STALE)
    stack.mine()
    automine(stack, False)
    assert await watcher.apply_confirmed() == 1
    return watcher, channel_id


def pending(stack: Stack) -> int:
    """The operator's transactions waiting in the node's pool."""
    w3 = stack.chain.w3
    return int(w3.eth.get_transaction_count(stack.operator, "pending")) - stack.nonce(stack.operator)


def drop(stack: Stack, tx_hash: str) -> None:
    """Evict one transaction from the node's pool, as a node short of room does."""
    stack.chain.w3.provider.make_request("anvil_dropTransaction", [tx_hash])  # type: ignore[arg-type]


async def settles_at_the_proof(stack: Stack, watcher: ChainWatcher, channel_id: str) -> None:
    """Once mined, the counter raised the closing balance to the proof, on-chain and in the
    database, and is not sent again."""
    stack.mine(1)
    assert stack.on_chain(channel_id)[4] == PROOF
    nonce = stack.nonce(stack.operator)
    assert await watcher.counter_stale_closes() == []
    stack.mine()
    assert await watcher.poll_once() == 1  # ClosingBalanceUpdated
    assert (pending(stack), stack.nonce(stack.operator)) == (0, nonce)
    channel = await channels.get(stack.pool, channel_id)
    assert channel is not None
    assert (channel.state, channel.closing_balance) == ("closing", PROOF)


async def test_counter_stale_closes_call_resends_a_counter_the_node_dropped(stack: Stack) -> None:
    watcher, channel_id = await stale_close(stack)
    (first,) = await watcher.counter_stale_closes()
    assert pending(stack) == 1
    assert await watcher.counter_stale_closes() == []  # still in the pool: not sent twice
    assert pending(stack) == 1

    drop(stack, first)
    with pytest.raises(TransactionNotFound):
        stack.chain.w3.eth.get_transaction(HexBytes(first))
    assert pending(stack) == 0

    (again,) = await watcher.counter_stale_closes()
    assert pending(stack) == 1
    assert stack.chain.w3.eth.get_transaction(HexBytes(again))["to"] == stack.channels.address
    await settles_at_the_proof(stack, watcher, channel_id)


async def test_counter_stale_closes_call_resends_a_counter_whose_nonce_another_transaction_took(
    stack: Stack,
) -> None:
    watcher, channel_id = await stale_close(stack)
    (first,) = await watcher.counter_stale_closes()
    counter = stack.chain.w3.eth.get_transaction(HexBytes(first))

    # Another service of the operator signs with the same pending nonce and a higher fee: the
    # node replaces the counter with it, and mines it.
    key = stack.chain.keys[stack.operator]
    other = key.sign_transaction(
        {
            "to": stack.operator,
            "value": 0,
            "gas": 21_000,
            "nonce": counter["nonce"],
            "chainId": stack.chain.chain_id,
            "maxFeePerGas": 10 * int(counter["maxFeePerGas"]) + GWEI,
            "maxPriorityFeePerGas": 10 * int(counter["maxPriorityFeePerGas"]) + GWEI,
        }
    )
    stack.chain.w3.eth.send_raw_transaction(other.raw_transaction)
    stack.mine(1)
    assert stack.nonce(stack.operator) == counter["nonce"] + 1
    assert stack.on_chain(channel_id)[4] == STALE
    with pytest.raises(TransactionNotFound):
        stack.chain.w3.eth.get_transaction_receipt(HexBytes(first))

    (again,) = await watcher.counter_stale_closes()
    assert again != first
    assert stack.chain.w3.eth.get_transaction(HexBytes(again))["nonce"] == counter["nonce"] + 1
    await settles_at_the_proof(stack, watcher, channel_id)

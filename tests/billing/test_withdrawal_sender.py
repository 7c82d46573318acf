"""The chain payer on a real anvil node (the IPSX token deployed) and a real PostgreSQL database.

The chain is driven with synchronous web3 calls and the sender with ``send_once`` / ``claim`` (or
``run`` in a task, for the node outage), so nothing depends on timing: a crash is a sender that
is dropped between two of its steps, and a restart a new one over the same database.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from hexbytes import HexBytes

from billing import accounts, db, holds, withdrawals
from billing.ledger import TREASURY, Amount, balance, check_balances, transfer
from billing.withdrawal_sender import SenderSettings, WithdrawalSender
from billing.withdrawal_transfers import transfers
from billing.withdrawals import CHAIN, Withdrawal, WithdrawalResolved

if TYPE_CHECKING:
    from tests.billing.chainstack import ChainStack as Stack

pytest_plugins = ("tests.billing.chainstack",)

TOKEN = 10**18
CONFIRMATIONS = 3
AMOUNT = 12 * TOKEN + 345  # not a round number: an off-by-anything shows


@pytest.fixture
def stack(chain_stack: Stack) -> Stack:
    return chain_stack


Make = Callable[..., WithdrawalSender]


@contextlib.asynccontextmanager
async def senders(stack: Stack, **defaults: Any) -> AsyncIterator[Make]:
    """Makes new senders over the test's database (or ``pool``), as restarted processes would
    make, with ``defaults`` over the tests' settings; closes them all at the end."""
    made: list[WithdrawalSender] = []

    def make(pool: asyncpg.Pool | None = None, **overrides: Any) -> WithdrawalSender:
        values: dict[str, Any] = {
            "token_address": stack.token.address,
            "operator_key": HexBytes(stack.chain.keys[stack.operator].key).to_0x_hex(),
            "rpc_url": stack.rpc_url,
            "confirmations": CONFIRMATIONS,
            "poll_interval": 0.01,
            **defaults,
            **overrides,
        }
        sender = WithdrawalSender(pool or stack.pool, SenderSettings(**values))
        made.append(sender)
        return sender

    try:
        yield make
    finally:
        for sender in made:
            await sender.aclose()


@pytest.fixture
async def make_sender(stack: Stack) -> AsyncIterator[Make]:
    async with senders(stack) as make:
        yield make


async def account(stack: Stack, name: str, index: int = 0, funds: int = 100 * TOKEN) -> str:
    """An account of requester ``index``'s wallet with ``funds`` on its ledger balance."""
    await accounts.create_account(stack.pool, address=stack.requesters[index], name=name)
    credit = f"requester:{name}"
    await transfer(stack.pool, debit=TREASURY, credit=credit, amount=Amount(funds), kind="credit")
    return name


async def withdraw(stack: Stack, name: str, amount: int = AMOUNT) -> Withdrawal:
    withdrawal, _ = await withdrawals.request(stack.pool, account_name=name, amount=Amount(amount))
    return withdrawal


async def state(stack: Stack, withdrawal: Withdrawal) -> str:
    found = await withdrawals.get(stack.pool, withdrawal.id)
    assert found is not None
    return found.state


def transfer_logs(stack: Stack, recipient: str) -> list[Any]:
    """Every Transfer of IPSX from the operator to ``recipient`` on the chain."""
    event = stack.token.events.Transfer()
    return list(event.get_logs(from_block=0, argument_filters={"from": stack.operator, "to": recipient}))


async def posted(stack: Stack, withdrawal: Withdrawal) -> int:
    """How many ledger movements posted the withdrawal's hold."""
    return int(
        await stack.pool.fetchval(
            "SELECT count(*) FROM ledger_movements WHERE reference = $1",
            f"post:withdrawal:{withdrawal.reference}",
        )
    )


def automine(stack: Stack, on: bool) -> None:
    stack.chain.w3.provider.make_request("evm_setAutomine", [on])  # type: ignore[arg-type]


@pytest.fixture
def manual_mining(stack: Stack) -> Iterator[None]:
    """Transactions wait in the node's pool until a block is mined (``stack.mine``)."""
    automine(stack, False)
    try:
        yield
    finally:
        automine(stack, True)


# ---- a withdrawal sent and completed ----------------------------------------------------------------


async def test_send_once_sends_the_exact_amount_and_posts_the_hold_once(
    stack: Stack, make_sender: Make
) -> None:
    await account(stack, "alice")
    withdrawal = await withdraw(stack, "alice")
    recipient, operator_tokens = stack.requesters[0], stack.tokens(stack.operator)
    before, nonce = stack.tokens(recipient), stack.nonce(stack.operator)
    sender = make_sender()

    first = await sender.send_once()
    assert first.claimed == [withdrawal.id]
    assert await state(stack, withdrawal) == "sending"
    (sent,) = await transfers(stack.pool, withdrawal.id)
    assert (sent.state, sent.nonce, sent.latest.broadcasts, sent.recipient, sent.amount) == (
        "signed", nonce, 1, recipient, AMOUNT,
    )  # fmt: skip
    assert [v.version for v in sent.versions] == [0]
    assert sent.latest.tx_hash == HexBytes(stack.chain.w3.keccak(sent.latest.raw_tx)).to_0x_hex()
    assert sent.mined_hash is None
    assert await balance(stack.pool, CHAIN) == 0  # mined, not confirmed: nothing left the books
    assert await holds.reserved(stack.pool, "requester:alice") == AMOUNT

    stack.mine(CONFIRMATIONS)
    done = await sender.send_once()
    assert done.completed == [withdrawal.id]
    completed = await withdrawals.get(stack.pool, withdrawal.id)
    assert completed is not None
    assert (completed.state, completed.tx_hash) == ("completed", sent.latest.tx_hash)
    (confirmed,) = await transfers(stack.pool, withdrawal.id)
    assert (confirmed.state, confirmed.mined_hash) == ("confirmed", sent.latest.tx_hash)
    assert stack.tokens(recipient) == before + AMOUNT
    assert stack.tokens(stack.operator) == operator_tokens - AMOUNT
    assert stack.nonce(stack.operator) == nonce + 1
    assert [HexBytes(log["transactionHash"]).to_0x_hex() for log in transfer_logs(stack, recipient)] == [
        sent.latest.tx_hash
    ]
    assert await balance(stack.pool, CHAIN) == AMOUNT
    assert await balance(stack.pool, "requester:alice") == 100 * TOKEN - AMOUNT
    assert await holds.reserved(stack.pool, "requester:alice") == 0
    assert await posted(stack, withdrawal) == 1
    assert await check_balances(stack.pool) == {}

    stack.mine(CONFIRMATIONS)
    again = await sender.send_once()
    assert (again.completed, again.claimed) == ([], [])
    assert await posted(stack, withdrawal) == 1
    assert stack.tokens(recipient) == before + AMOUNT


async def test_send_once_completes_only_at_the_confirmation_depth(stack: Stack, make_sender: Make) -> None:
    await account(stack, "alice")
    withdrawal = await withdraw(stack, "alice")
    sender = make_sender(confirmations=5)
    await sender.send_once()
    (sent,) = await transfers(stack.pool, withdrawal.id)
    mined_in = int(stack.chain.w3.eth.get_transaction_receipt(sent.latest.tx_hash)["blockNumber"])  # type: ignore[arg-type]
    for depth in range(5):
        assert stack.block() - mined_in == depth
        round_ = await sender.send_once()
        assert (round_.waiting, round_.completed) == (1, [])
        assert await state(stack, withdrawal) == "sending"
        assert await balance(stack.pool, CHAIN) == 0
        stack.mine(1)
    assert (await sender.send_once()).completed == [withdrawal.id]
    assert await balance(stack.pool, CHAIN) == AMOUNT


# ---- crashes and restarts ------------------------------------------------------------------------------


async def test_restart_after_storing_broadcasts_the_stored_transaction(
    stack: Stack, make_sender: Make
) -> None:
    await account(stack, "alice")
    withdrawal = await withdraw(stack, "alice")
    nonce, before = stack.nonce(stack.operator), stack.tokens(stack.requesters[0])

    crashed = make_sender()
    assert (await crashed.claim()).claimed == [withdrawal.id]  # signed and stored, then the process died
    (stored,) = await transfers(stack.pool, withdrawal.id)
    assert (stored.state, stored.latest.broadcasts) == ("signed", 0)
    assert stack.nonce(stack.operator) == nonce  # nothing reached the node
    await crashed.aclose()

    restarted = make_sender()
    first = await restarted.send_once()
    assert (first.unmined, first.claimed) == (1, [])  # the stored one again, nothing new signed
    mined = stack.chain.w3.eth.get_transaction(stored.latest.tx_hash)  # type: ignore[arg-type]
    assert HexBytes(mined["hash"]).to_0x_hex() == stored.latest.tx_hash
    assert stack.nonce(stack.operator) == nonce + 1

    stack.mine(CONFIRMATIONS)
    assert (await restarted.send_once()).completed == [withdrawal.id]
    assert [t.mined_hash for t in await transfers(stack.pool, withdrawal.id)] == [stored.latest.tx_hash]
    assert len(transfer_logs(stack, stack.requesters[0])) == 1
    assert stack.tokens(stack.requesters[0]) == before + AMOUNT
    assert await posted(stack, withdrawal) == 1


@pytest.mark.usefixtures("manual_mining")
async def test_restart_after_broadcasting_never_sends_a_second_transfer(
    stack: Stack, make_sender: Make
) -> None:
    await account(stack, "alice")
    withdrawal = await withdraw(stack, "alice")
    nonce, before = stack.nonce(stack.operator), stack.tokens(stack.requesters[0])

    crashed = make_sender()
    assert (await crashed.send_once()).claimed == [withdrawal.id]  # broadcast, waiting in the node's pool
    await crashed.aclose()

    restarted = make_sender()
    pending = await restarted.send_once()
    assert (pending.unmined, pending.claimed) == (1, [])
    (sent,) = await transfers(stack.pool, withdrawal.id)
    assert sent.latest.broadcasts == 1  # the node had it: not sent again

    stack.mine(1)
    assert stack.nonce(stack.operator) == nonce + 1
    another = make_sender()
    waiting = await another.send_once()
    assert (waiting.waiting, waiting.claimed, waiting.completed) == (1, [], [])
    stack.mine(CONFIRMATIONS)
    assert (await another.send_once()).completed == [withdrawal.id]
    assert stack.nonce(stack.operator) == nonce + 1
    assert len(transfer_logs(stack, stack.requesters[0])) == 1
    assert stack.tokens(stack.requesters[0]) == before + AMOUNT
    assert len(await transfers(stack.pool, withdrawal.id)) == 1


async def a_sender_is_at_work(pool: asyncpg.Pool) -> bool:
    """Whether an advisory lock is held in the test's database now (a sender's, in these tests)."""
    held = await pool.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    return bool(held)


async def test_two_senders_at_once_send_each_withdrawal_once(
    stack: Stack, make_sender: Make, switch: Switch, database_url: str
) -> None:
    for index, name in enumerate(("alice", "bob", "carol")):
        await account(stack, name, index)
    nonce = stack.nonce(stack.operator)
    other_pool = await db.connect(database_url, max_size=3)  # the second sender is another process
    try:
        first, second = make_sender(rpc_url=switch.url), make_sender(other_pool)
        assert (await first.claim()).claimed == []  # nothing to send yet
        made = [await withdraw(stack, name) for name in ("alice", "bob", "alice", "carol")]

        # The first sender starts a round and stalls on the node, in the middle of it.
        switch.flowing.clear()
        stalled = asyncio.create_task(first.send_once())
        await until(lambda: a_sender_is_at_work(stack.pool))
        meanwhile = await second.send_once()
        assert meanwhile.skipped
        assert [len(await transfers(stack.pool, w.id)) for w in made] == [0, 0, 0, 0]
        switch.flowing.set()
        assert sorted((await stalled).claimed) == [w.id for w in made]

        for _ in range(2):  # then both at once, round after round
            await asyncio.gather(first.send_once(), second.send_once())
            stack.mine(CONFIRMATIONS)
        await asyncio.gather(first.send_once(), second.send_once())
    finally:
        await other_pool.close()

    assert [await state(stack, w) for w in made] == ["completed"] * 4
    assert stack.nonce(stack.operator) == nonce + 4
    assert [len(await transfers(stack.pool, w.id)) for w in made] == [1, 1, 1, 1]
    assert [len(transfer_logs(stack, stack.requesters[i])) for i in range(3)] == [2, 1, 1]
    assert [await posted(stack, w) for w in made] == [1, 1, 1, 1]
    assert await balance(stack.pool, CHAIN) == 4 * AMOUNT


async def test_a_dropped_transfer_is_sent_anew_once_its_nonce_is_taken_deep(
    stack: Stack, make_sender: Make
) -> None:
    await account(stack, "alice")
    withdrawal = await withdraw(stack, "alice")
    sender = make_sender()
    await sender.claim()
    (stale,) = await transfers(stack.pool, withdrawal.id)
    # Before the stored transfer goes out, the operator's wallet sends something else with its nonce.
    stack.chain.transact(stack.token.functions.approve(stack.outsider, 1), stack.operator)

    refused = await sender.send_once()  # not deep yet: kept, broadcast, refused by the node
    assert (refused.unmined, refused.requeued) == (1, [])
    (kept,) = await transfers(stack.pool, withdrawal.id)
    assert (kept.state, kept.latest.broadcasts, kept.latest.last_error is not None) == ("signed", 0, True)
    assert await state(stack, withdrawal) == "sending"

    stack.mine(CONFIRMATIONS)
    renewed = await sender.send_once()
    assert (renewed.requeued, renewed.claimed) == ([withdrawal.id], [withdrawal.id])
    stack.mine(CONFIRMATIONS)
    assert (await sender.send_once()).completed == [withdrawal.id]
    dropped, sent = await transfers(stack.pool, withdrawal.id)
    assert (dropped.state, sent.state) == ("dropped", "confirmed")
    assert dropped.latest.tx_hash == stale.latest.tx_hash
    assert (dropped.mined_hash, sent.mined_hash) == (None, sent.latest.tx_hash)
    assert sent.nonce == stale.nonce + 1
    assert len(transfer_logs(stack, stack.requesters[0])) == 1
    assert await posted(stack, withdrawal) == 1


# ---- failures -----------------------------------------------------------------------------------------


async def test_a_reverted_transfer_fails_and_keeps_the_hold(stack: Stack, make_sender: Make) -> None:
    await account(stack, "alice")
    withdrawal = await withdraw(stack, "alice")
    recipient = stack.requesters[0]
    before = stack.tokens(recipient)
    sender = make_sender()
    stack.chain.transact(stack.token.functions.approve(stack.outsider, 2**256 - 1), stack.operator)
    await sender.claim()
    # The wallet is emptied (by a spender it had approved) between the signature and the broadcast.
    drained = stack.tokens(stack.operator)
    stack.chain.transact(
        stack.token.functions.transferFrom(stack.operator, stack.outsider, drained), stack.outsider
    )

    await sender.send_once()
    (reverted,) = await transfers(stack.pool, withdrawal.id)
    receipt = stack.chain.w3.eth.get_transaction_receipt(reverted.latest.tx_hash)  # type: ignore[arg-type]
    assert receipt["status"] == 0
    assert await state(stack, withdrawal) == "sending"
    stack.mine(CONFIRMATIONS)
    assert (await sender.send_once()).failed == [withdrawal.id]

    failed = await withdrawals.get(stack.pool, withdrawal.id)
    assert failed is not None
    assert (failed.state, failed.tx_hash, failed.resolved_at) == ("failed", None, None)
    assert failed.reason is not None
    assert reverted.latest.tx_hash in failed.reason and "reverted" in failed.reason
    assert (await transfers(stack.pool, withdrawal.id))[0].state == "reverted"
    assert await holds.reserved(stack.pool, "requester:alice") == AMOUNT
    assert await balance(stack.pool, "requester:alice") == 100 * TOKEN - AMOUNT
    assert await balance(stack.pool, CHAIN) == 0
    assert stack.tokens(recipient) == before
    async with stack.pool.acquire() as conn, conn.transaction():
        with pytest.raises(WithdrawalResolved):  # failed is not resolved, but no longer the sender's
            await withdrawals.confirm_in(conn, withdrawal.id, reverted.latest.tx_hash)

    nonce = stack.nonce(stack.operator)
    stack.mine(CONFIRMATIONS)
    assert (await sender.send_once()).claimed == []  # a failed withdrawal waits for the operator
    assert stack.nonce(stack.operator) == nonce

    stack.chain.transact(stack.token.functions.transfer(stack.operator, drained), stack.outsider)
    assert (await withdrawals.approve(stack.pool, withdrawal.id)).state == "pending"
    assert (await sender.send_once()).claimed == [withdrawal.id]
    stack.mine(CONFIRMATIONS)
    assert (await sender.send_once()).completed == [withdrawal.id]
    assert [t.state for t in await transfers(stack.pool, withdrawal.id)] == ["reverted", "confirmed"]
    assert stack.tokens(recipient) == before + AMOUNT
    assert await posted(stack, withdrawal) == 1
    assert await balance(stack.pool, CHAIN) == AMOUNT


async def test_a_wallet_short_of_tokens_signs_nothing(stack: Stack, make_sender: Make) -> None:
    wallet = stack.tokens(stack.operator)
    await account(stack, "alice", funds=wallet + 2 * TOKEN)
    too_big = await withdraw(stack, "alice", wallet + 1)
    fits = await withdraw(stack, "alice", TOKEN)
    nonce = stack.nonce(stack.operator)

    done = await make_sender().send_once()
    assert (done.short, done.claimed) == ([too_big.id], [fits.id])
    assert await state(stack, too_big) == "pending"
    assert await transfers(stack.pool, too_big.id) == []
    assert stack.nonce(stack.operator) == nonce + 1  # only the one that fits went out
    assert await holds.reserved(stack.pool, "requester:alice") == wallet + 1 + TOKEN


async def test_above_the_approval_limit_waits_for_the_operator(stack: Stack, make_sender: Make) -> None:
    await account(stack, "alice")
    small = await withdraw(stack, "alice", 10 * TOKEN)
    large = await withdraw(stack, "alice", 10 * TOKEN + 1)
    sender = make_sender(approval_above=10 * TOKEN)

    assert (await sender.send_once()).claimed == [small.id]
    stack.mine(CONFIRMATIONS)
    assert (await sender.send_once()).claimed == []
    assert await state(stack, large) == "pending"

    approved = await withdrawals.approve(stack.pool, large.id)
    assert (approved.state, approved.approved_at is not None) == ("pending", True)
    assert (await sender.send_once()).claimed == [large.id]
    with pytest.raises(WithdrawalResolved) as info:  # being sent: nobody else may touch it
        await withdrawals.cancel(stack.pool, large.id, account_name="alice")
    assert info.value.state == "sending"
    stack.mine(CONFIRMATIONS)
    assert (await sender.send_once()).completed == [large.id]
    assert len(transfer_logs(stack, stack.requesters[0])) == 2


# ---- a node that goes away ----------------------------------------------------------------------------


class Switch:
    """A TCP forwarder to the node that can be cut: while down it drops every connection, as a
    node that crashed or a network that failed would; while ``flowing`` is clear it holds the
    requests, as a node that stalls would."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.up = True
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.listen_port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            await writer.wait_closed()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writers.update((writer, up_writer))
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, held=True)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, held: bool = False
    ) -> None:
        try:
            while data := await reader.read(65536):
                if held:
                    await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def down(self) -> None:
        self.up = False
        self.flowing.set()
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def close(self) -> None:
        await self.down()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def switch(stack: Stack) -> AsyncIterator[Switch]:
    switch = Switch(int(stack.rpc_url.rsplit(":", 1)[1]))
    await switch.start()
    yield switch
    await switch.close()


async def until(
    condition: Callable[[], Awaitable[bool] | bool], step: Callable[[], object] = lambda: None
) -> None:
    """Wait (the test's timeout bounds it) until ``condition``, doing ``step`` between looks."""
    while True:
        met = condition()
        if await met if inspect.isawaitable(met) else met:
            return
        step()
        await asyncio.sleep(0.01)


async def test_run_survives_the_node_going_away_and_sends_once_it_is_back(
    stack: Stack, make_sender: Make, switch: Switch
) -> None:
    await account(stack, "alice")
    withdrawal = await withdraw(stack, "alice")
    nonce = stack.nonce(stack.operator)
    sender = make_sender(rpc_url=switch.url)
    assert (await sender.claim()).claimed == [withdrawal.id]  # stored; the node goes away before it is sent

    await switch.down()
    stop = asyncio.Event()
    running = asyncio.create_task(sender.run(stop))
    try:
        await until(lambda: sender.stats.errors >= 3 or running.done())
        assert not running.done()  # the failures did not end the loop
        assert await state(stack, withdrawal) == "sending"
        assert stack.nonce(stack.operator) == nonce

        switch.up = True
        await until(lambda: _in_state(stack, withdrawal, "completed"), step=lambda: stack.mine(1))
    finally:
        stop.set()
        await running
    (sent,) = await transfers(stack.pool, withdrawal.id)
    assert sent.state == "confirmed"
    assert stack.nonce(stack.operator) == nonce + 1
    assert len(transfer_logs(stack, stack.requesters[0])) == 1
    assert (sender.stats.completed, sender.stats.errors >= 3) == (1, True)
    assert await posted(stack, withdrawal) == 1


async def _in_state(stack: Stack, withdrawal: Withdrawal, expected: str) -> bool:
    return await state(stack, withdrawal) == expected

"""The chain watcher: confirmed ``PaymentChannels`` logs become channel rows and ledger movements.

Only blocks at least ``confirmations`` deep are applied, in (block, log index) order. Each log is
applied in one PostgreSQL transaction together with its ``chain_logs`` row, so a restart, a
replayed range or a second watcher never applies it twice. The cursor (``chain_cursors``) keeps
the last applied block and its hash; when that hash is no longer the chain's, the chain was
reorganised deeper than the confirmations and the watcher stops (:class:`DeepReorg`) rather than
guess which of its effects still hold.

Money (``external:chain`` is the ledger's image of the chain):

- a requester channel's deposit and top-ups are credited to the requester
  (``external:chain -> requester:<name>``, kind ``deposit``);
- at settlement its refund leaves the books (``requester:<name> -> external:chain``, ``refund``);
  usage beyond what the requester signed for is covered by the treasury first (``unpaid_usage``);
- a payout channel's ``paid`` leaves the provider's earnings (``payout``), the treasury covering
  any excess (``overpaid_payout``); opening it moves nothing (the operator's own wallet funds it).

When a requester starts an uncooperative close below the balance proof IPSX holds, the watcher
submits that proof from the operator's account; it looks for such closes at every poll, so a
restart in the middle of a challenge period still counters. A counter it sent is waited for only
while the node holds it and no other transaction of the operator took its nonce (the anchorer and
the chain payer sign with the same key): one the node dropped or replaced is sent again, else the
channel would settle at the stale balance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, cast

import aiohttp
import asyncpg
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.contract import AsyncContract
from web3.exceptions import BlockNotFound, TransactionNotFound, Web3Exception
from web3.types import LogReceipt

from billing import accounts, channels
from billing.channels import Channel
from billing.ledger import TREASURY, Amount, Leg, post_in, provider_account, requester_account
from billing.operator_node import OperatorNode, failure
from billing.withdrawals import CHAIN
from contracts import load

log = logging.getLogger(__name__)

SECONDS: Final = 1.0
EVENTS: Final = (
    "ChannelOpened",
    "ChannelToppedUp",
    "ChannelCloseRequested",
    "ClosingBalanceUpdated",
    "ChannelSettled",
)


class _Counter(NamedTuple):
    """A counter this process sent: the proof's balance, the transaction and its nonce."""

    balance: int
    tx_hash: str
    nonce: int


class DeepReorg(RuntimeError):
    """Block ``block``, applied with hash ``stored_hash``, is now ``chain_hash`` (``None``: gone):
    the chain was reorganised deeper than the confirmations. Nothing more is applied until an
    operator looks (the effects already applied may belong to the abandoned branch)."""

    def __init__(self, block: int, stored_hash: str, chain_hash: str | None) -> None:
        now = chain_hash or "no such block"
        super().__init__(f"block {block} was applied as {stored_hash} but the chain now has {now}")
        self.block = block
        self.stored_hash = stored_hash
        self.chain_hash = chain_hash


@dataclass(frozen=True, slots=True)
class ChainSettings:
    """How the watcher reaches the chain and how cautious it is."""

    channels_address: str  # the PaymentChannels contract
    operator_key: str = field(repr=False)  # hex private key of the operator (the hub)
    rpc_url: str = "http://127.0.0.1:8545"
    web3_factory: Callable[[], AsyncWeb3[Any]] | None = None  # instead of rpc_url; the caller closes it
    confirmations: int = 6  # blocks on top of a log's block before it is applied
    poll_interval: float = 5 * SECONDS
    start_block: int = 0  # where a watcher with no cursor starts (the contract's deployment block)
    max_range: int = 2_000  # blocks per eth_getLogs

    def __post_init__(self) -> None:
        if self.confirmations < 0 or self.max_range < 1 or self.start_block < 0:
            raise ValueError("confirmations and start_block must be >= 0, max_range >= 1")


def cursor_name(channels_address: str) -> str:
    """The ``chain_cursors`` row of the watcher of one PaymentChannels contract."""
    return f"channels:{to_checksum_address(channels_address)}"


async def read_cursor(pool: asyncpg.Pool, name: str) -> tuple[int, str] | None:
    """The last applied block and its hash, or ``None`` before the first range is applied."""
    row = await pool.fetchrow("SELECT block, block_hash FROM chain_cursors WHERE name = $1", name)
    return None if row is None else (int(row["block"]), row["block_hash"])


async def _save_cursor(pool: asyncpg.Pool, name: str, block: int, block_hash: str, block_time: int) -> None:
    # The block's timestamp ends the freezes of the closing consents that expired before it
    # (billing.channels.FROZEN).
    await pool.execute(
        "INSERT INTO chain_cursors (name, block, block_hash, block_time) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (name) DO UPDATE SET block = $2, block_hash = $3, block_time = $4, updated_at = now()",
        name,
        block,
        block_hash,
        block_time,
    )


async def record_domain(pool: asyncpg.Pool, channels_address: str, problem: str | None) -> None:
    """Keep what the watcher read of the contract's EIP-712 domain: ``problem`` is None when it
    takes the proofs and consents this IPSX signs, else why not (``contracts.proofs``)."""
    await pool.execute(
        "INSERT INTO channels_domains (address, problem) VALUES ($1, $2)"
        " ON CONFLICT (address) DO UPDATE SET problem = $2, checked_at = now()",
        to_checksum_address(channels_address),
        problem,
    )


async def domain_problem(pool: asyncpg.Pool, channels_address: str) -> str | None:
    """Why the contract refuses this IPSX's proofs and consents, as its watcher last read it; None
    when it takes them or no watcher has read it yet (an API node cannot ask the chain itself)."""
    return cast(
        str | None,
        await pool.fetchval(
            "SELECT problem FROM channels_domains WHERE address = $1", to_checksum_address(channels_address)
        ),
    )


def log_reference(log_entry: LogReceipt | dict[str, Any]) -> str:
    """The ledger reference of the movement a log causes: ``chain:<tx hash>:<log index>``."""
    return f"chain:{HexBytes(log_entry['transactionHash']).to_0x_hex()}:{int(log_entry['logIndex'])}"


async def _locked_balance(conn: asyncpg.Connection, account: str) -> int:
    # Locks the balance row so no charge takes the funds between this read and the refund.
    value = await conn.fetchval(
        "SELECT balance::text FROM ledger_balances WHERE account = $1 FOR UPDATE", account
    )
    return 0 if value is None else int(value)


async def _leave_books(
    conn: asyncpg.Connection, account: str, amount: int, reference: str, kinds: tuple[str, str]
) -> None:
    """``amount`` leaves ``account`` for the chain; a shortfall is first covered by the treasury."""
    if amount <= 0:
        return
    kind, shortfall_kind = kinds
    shortfall = amount - await _locked_balance(conn, account)
    if shortfall > 0:
        log.warning("%s: %s short by %d base units, covered by the treasury", reference, account, shortfall)
        await post_in(
            conn,
            [Leg(TREASURY, account, Amount(shortfall))],
            kind=shortfall_kind,
            reference=f"{reference}:shortfall",
        )
    await post_in(conn, [Leg(account, CHAIN, Amount(amount))], kind=kind, reference=reference)


def _owner(channel: Channel) -> str:
    """The name of the account the channel serves (the watcher always records one)."""
    if channel.account_name is None:
        raise RuntimeError(f"channel {channel.channel_id} has no account")
    return channel.account_name


class ChainWatcher(OperatorNode):
    """Applies the confirmed logs of one PaymentChannels contract; see the module docstring.

    Drive it with :meth:`run`, or step by step with :meth:`poll_once`. Close it with
    :meth:`aclose` (or ``async with``) when it made its own web3 connection.
    """

    def __init__(self, pool: asyncpg.Pool, settings: ChainSettings) -> None:
        super().__init__(
            rpc_url=settings.rpc_url, operator_key=settings.operator_key, web3_factory=settings.web3_factory
        )
        self._pool = pool
        self._settings = settings
        self._address = to_checksum_address(settings.channels_address)
        self._contract: AsyncContract = self._w3.eth.contract(
            address=self._address, abi=load("PaymentChannels").abi
        )
        self._cursor = cursor_name(self._address)
        self._events = {HexBytes(getattr(self._contract.events, name)().topic): name for name in EVENTS}
        # channel id -> the counter this process sent, maybe still pending
        self._countered: dict[str, _Counter] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set (at least once). A failing node or database is logged and
        retried at the next poll; a :class:`DeepReorg` ends the loop, raised."""
        while True:
            try:
                await self.poll_once()
            except (  # DeepReorg is none of these: it ends the loop
                OSError,
                aiohttp.ClientError,
                Web3Exception,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
            ) as exc:
                log.warning("chain watcher poll failed, retrying: %s", failure(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._settings.poll_interval)
            if stop.is_set():
                return

    async def poll_once(self) -> int:
        """Apply what became confirmed, then counter stale closes; returns the logs applied.

        Raises :class:`DeepReorg`.
        """
        applied = await self.apply_confirmed()
        await self.counter_stale_closes()
        return applied

    async def apply_confirmed(self) -> int:
        """Apply the logs of every block confirmed since the cursor; returns how many."""
        safe = await self._w3.eth.block_number - self._settings.confirmations
        cursor = await read_cursor(self._pool, self._cursor)
        if cursor is not None:
            await self._check_hash(*cursor)
        start = self._settings.start_block if cursor is None else cursor[0] + 1
        applied = 0
        while start <= safe:
            end = min(safe, start + self._settings.max_range - 1)
            end_block = await self._block(end)
            if end_block is None:
                raise DeepReorg(end, "(a block the node had a moment ago)", None)
            end_hash, end_time = end_block
            logs = await self._w3.eth.get_logs(
                {"address": self._address, "fromBlock": start, "toBlock": end, "topics": [list(self._events)]}
            )
            # A reorg while the logs were read would mix branches: the range's last block must not move.
            await self._check_hash(end, end_hash)
            for entry in sorted(logs, key=lambda e: (e["blockNumber"], e["logIndex"])):
                if not entry.get("removed", False):
                    applied += await self._apply(entry)
            await _save_cursor(self._pool, self._cursor, end, end_hash, end_time)
            start = end + 1
        return applied

    async def _block(self, number: int) -> tuple[str, int] | None:
        """Block ``number``'s hash and timestamp; None when the chain is shorter than that."""
        try:
            block = await self._w3.eth.get_block(number)
        except BlockNotFound:
            return None
        return HexBytes(block["hash"]).to_0x_hex(), int(block["timestamp"])

    async def _block_hash(self, number: int) -> str | None:
        found = await self._block(number)
        return None if found is None else found[0]

    async def _check_hash(self, block: int, stored_hash: str) -> None:
        found = await self._block_hash(block)
        if found != stored_hash:
            log.error("deep reorg: block %d applied as %s, now %s; stopping", block, stored_hash, found)
            raise DeepReorg(block, stored_hash, found)

    # ---- applying one log --------------------------------------------------------------------

    async def _apply(self, entry: LogReceipt) -> int:
        """Apply one log with its ``chain_logs`` row; 1 when applied, 0 when not ours or seen."""
        name = self._events[HexBytes(entry["topics"][0])]
        args = dict(getattr(self._contract.events, name)().process_log(entry)["args"])
        channel_id = channels.channel_key(bytes(args["channelId"]))
        owner = None
        if name == "ChannelOpened":
            role = self._role(args["sender"], args["receiver"])
            if role is None:
                return 0  # a channel between two others on the same contract
            # Outside the transaction: creating the account is idempotent and commits on its own.
            owner = await accounts.account_for_address(
                self._pool, args["sender" if role == "requester" else "receiver"]
            )
        async with self._pool.acquire() as conn, conn.transaction():
            channel = None if name == "ChannelOpened" else await channels.lock_in(conn, channel_id)
            if name != "ChannelOpened" and channel is None:
                return 0
            first = await conn.fetchval(
                "INSERT INTO chain_logs (tx_hash, log_index, block_number, block_hash, event)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1",
                HexBytes(entry["transactionHash"]).to_0x_hex(),
                int(entry["logIndex"]),
                int(entry["blockNumber"]),
                HexBytes(entry["blockHash"]).to_0x_hex(),
                name,
            )
            if first is None:
                return 0
            reference = log_reference(entry)
            if owner is not None:
                await self._opened(conn, channel_id, args, owner, int(entry["blockNumber"]), reference)
            elif channel is not None:
                await self._changed(conn, name, channel, args, reference)
        return 1

    def _role(self, sender: str, receiver: str) -> str | None:
        if receiver == self.operator:
            return "requester"
        if sender == self.operator:
            return "provider"
        return None

    async def _opened(
        self,
        conn: asyncpg.Connection,
        channel_id: str,
        args: dict[str, Any],
        owner: accounts.Account,
        block: int,
        reference: str,
    ) -> None:
        role = "requester" if args["receiver"] == self.operator else "provider"
        await channels.open_in(
            conn,
            channel_id=channel_id,
            contract=self._address,
            sender=args["sender"],
            receiver=args["receiver"],
            role=role,
            account_id=owner.id,
            deposit=int(args["deposit"]),
            opened_block=block,
        )
        if role == "requester":
            credit = requester_account(owner.name)
            await post_in(
                conn, [Leg(CHAIN, credit, Amount(int(args["deposit"])))], kind="deposit", reference=reference
            )
        log.info("channel %s opened (%s), deposit %d", channel_id, role, int(args["deposit"]))

    async def _changed(
        self, conn: asyncpg.Connection, name: str, channel: Channel, args: dict[str, Any], reference: str
    ) -> None:
        if name == "ChannelToppedUp":
            await channels.update_in(conn, channel, deposit=int(args["deposit"]))
            if channel.role == "requester":
                leg = Leg(CHAIN, requester_account(_owner(channel)), Amount(int(args["amount"])))
                await post_in(conn, [leg], kind="deposit", reference=reference)
        elif name == "ChannelCloseRequested":
            balance, settle_after = int(args["balance"]), int(args["settleAfter"])
            await channels.update_in(
                conn, channel, state="closing", closing_balance=balance, settle_after=settle_after
            )
            if (
                channel.role == "requester"
                and args["closer"] == channel.sender
                and balance < channel.proof_balance
            ):
                log.warning(
                    "channel %s: requester closes at %d, below the proof held (%d)",
                    channel.channel_id, balance, channel.proof_balance,
                )  # fmt: skip
        elif name == "ClosingBalanceUpdated":
            await channels.update_in(conn, channel, state="closing", closing_balance=int(args["balance"]))
        elif name == "ChannelSettled":
            await self._settled(conn, channel, int(args["paid"]), int(args["refunded"]), reference)

    async def _settled(
        self, conn: asyncpg.Connection, channel: Channel, paid: int, refunded: int, reference: str
    ) -> None:
        await channels.update_in(conn, channel, state="settled", paid=paid, refunded=refunded)
        if channel.role == "requester":
            account = requester_account(_owner(channel))
            await _leave_books(conn, account, refunded, reference, ("refund", "unpaid_usage"))
        else:
            account = provider_account(_owner(channel))
            await _leave_books(conn, account, paid, reference, ("payout", "overpaid_payout"))
        log.info("channel %s settled: paid %d, refunded %d", channel.channel_id, paid, refunded)

    # ---- countering stale closes -------------------------------------------------------------

    async def counter_stale_closes(self) -> list[str]:
        """Submit the held proof on every requester channel being closed below it while its
        challenge period runs; returns the hashes of the transactions sent.

        A counter already on-chain (mined, maybe not yet confirmed) or still pending is not sent
        again; one the node refuses, that reverted, that the node dropped or that another
        transaction replaced (its nonce taken) is logged and tried at the next poll.
        """
        latest = await self._w3.eth.get_block("latest")
        now, head = int(latest["timestamp"]), int(latest["number"])
        sent = []
        for channel in await channels.stale_closes(self._pool, now=now):
            if await self._counter_pending(channel, head):
                continue
            on_chain = await self._contract.functions.getChannel(channel.id_bytes).call()
            settle_after, closing_balance = int(on_chain[1]), int(on_chain[4])
            if settle_after == 0 or closing_balance >= channel.proof_balance:
                continue  # settled, or countered already and waiting for confirmation
            try:
                counter = await self._submit_proof(channel)
            except (Web3Exception, ValueError) as exc:
                log.error("channel %s: could not submit the held proof: %s", channel.channel_id, exc)
                continue
            self._countered[channel.channel_id] = counter
            log.warning(
                "channel %s: countered a close at %d with the proof of %d (tx %s, nonce %d)",
                channel.channel_id, closing_balance, channel.proof_balance, counter.tx_hash, counter.nonce,
            )  # fmt: skip
            sent.append(counter.tx_hash)
        return sent

    async def _counter_pending(self, channel: Channel, head: int) -> bool:
        """Whether this process sent this counter already and it is mined with status 1, or may
        still be (``head``: the latest block, read before this call)."""
        counter = self._countered.get(channel.channel_id)
        if counter is None or counter.balance != channel.proof_balance:
            return False
        try:
            receipt = await self._w3.eth.get_transaction_receipt(HexBytes(counter.tx_hash))
        except TransactionNotFound:
            if await self._known(counter.tx_hash) and not await self._nonce_taken(
                counter.nonce, head, self._settings.confirmations
            ):
                return True  # not mined yet
            del self._countered[channel.channel_id]
            log.error(
                "channel %s: the counter %s (nonce %d) was dropped by the node or replaced by another "
                "transaction; sending it again",
                channel.channel_id, counter.tx_hash, counter.nonce,
            )  # fmt: skip
            return False
        if receipt["status"] == 1:
            return True
        log.error("channel %s: the counter %s reverted; sending it again", channel.channel_id,
                  counter.tx_hash)  # fmt: skip
        return False

    async def _submit_proof(self, channel: Channel) -> _Counter:
        if channel.proof_signature is None:
            raise ValueError("no proof held")
        call = self._contract.functions.submitProof(
            channel.id_bytes, int(channel.proof_balance), bytes.fromhex(channel.proof_signature[2:])
        )
        nonce = await self._w3.eth.get_transaction_count(self.operator, "pending")
        tx = await call.build_transaction(
            {"from": self.operator, "nonce": nonce, "chainId": await self._w3.eth.chain_id}
        )
        signed = self._operator.sign_transaction(tx)  # type: ignore[arg-type]
        tx_hash = await self._w3.eth.send_raw_transaction(signed.raw_transaction)
        return _Counter(int(channel.proof_balance), HexBytes(tx_hash).to_0x_hex(), int(nonce))

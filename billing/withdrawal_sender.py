"""The chain payer: each withdrawal's IPSX is sent on-chain from the operator's wallet, and the
withdrawal completed only once that transfer is confirmed.

A round (:meth:`WithdrawalSender.send_once`), run by one sender at a time (a PostgreSQL advisory
lock per operator address and chain), does two things:

1. **Follow** every stored transfer not yet resolved, in nonce order. A transfer is one nonce and
   every version signed with it (the first, then each fee replacement, see below); any of them may
   be the one mined, so the receipts of all of them decide:

   - none yet: broadcast the newest stored version again unless the node has it pending; but if
     the operator's nonce at the block ``confirmations`` deep is past the transfer's, another
     transaction took that nonce and no version can ever be mined: the transfer is ``dropped``
     and the withdrawal goes back to ``pending`` (nothing moved, so a new transfer is safe);
   - none yet, and the newest version has waited ``bump_after`` blocks since it was signed but
     offers less than the chain now asks (a max fee below twice the latest base fee plus the
     node's suggested tip, or a tip below that tip): it is **replaced**. The same ``transfer``
     call with the same nonce is signed again with both fees raised to what the chain asks, and
     by 12.5 % at least (nodes take a replacement only 10 % above the transaction it replaces),
     but never above ``max_fee``; a version already too close to that ceiling is left as it is
     (a warning says so) until fees come down. The replacement is stored as the transfer's next
     version in one PostgreSQL transaction, and only after that commit broadcast;
   - one mined but shallower than ``confirmations``: wait;
   - one mined with status 1 and exactly one Transfer log of the token, from the operator, to the
     withdrawal's address, of its amount: the withdrawal is completed (the hold posted to
     ``external:chain``, the mined version's hash recorded, on the transfer and the withdrawal),
     in the same transaction as the transfer row;
   - status 0: the withdrawal is ``failed`` (the hold kept, the reason visible to its owner and
     the operator, who approves it again, completes it by hand or rejects it); so is a status 1
     whose logs are not the one Transfer asked for (``mismatch``, logged as an error).

2. **Claim** new withdrawals, only when no stored transfer is still unmined (a stuck one holds
   every later nonce anyway) and the chain asks no more than ``max_fee``: up to ``max_batch``
   pending withdrawals, oldest first, those above ``approval_above`` only once approved, as far as
   the wallet's IPSX and ETH (gas at the fee cap) cover them; a withdrawal that does not fit is left
   pending and logged. For each, the ERC-20 ``transfer`` is signed with the next nonce (from the
   node's pending count for the operator, never below a nonce already stored: a node that counts
   fewer is out of sync, and nothing is sent) and stored, raw bytes and hash, in the same
   PostgreSQL transaction that moves the withdrawal to ``sending``. Only after that commit is it
   broadcast.

So a crash at any point leaves either nothing signed, or stored transactions of which the next
round broadcasts the newest again, byte for byte: one nonce per withdrawal at a time, and a new one
only when no version of the old one can ever be mined. At most one transfer lands per withdrawal.

Limits: fees rise only up to ``max_fee`` (``--max-fee-gwei``): above it a transfer waits for fees
to come down. A transfer signed with another operator key is left to that key's sender. The node
must be one consistent view of the chain (one node, not a pool of nodes behind a load balancer that
may answer two calls from two heights): a dropped transfer is decided from its receipts and the
nonce.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import asyncpg
from eth_account.datastructures import SignedTransaction
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.contract import AsyncContract
from web3.exceptions import TransactionNotFound, Web3Exception, Web3RPCError

from billing import db, withdrawal_transfers, withdrawals
from billing.operator_node import OperatorNode, failure
from billing.transfer_fees import GWEI, Fees, gwei, replacement_fees, underpriced
from billing.withdrawal_transfers import Transfer, Version
from contracts import load

log = logging.getLogger(__name__)

SECONDS: Final = 1.0
BLOCKS: Final = 1
TRANSFER_GAS: Final = 100_000  # an OpenZeppelin ERC-20 transfer takes about 52,000 at most
_ERRORS: Final = (OSError, aiohttp.ClientError, TimeoutError, Web3Exception, asyncpg.PostgresError,
                  asyncpg.InterfaceError)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SenderSettings:
    """Where the token is, whose wallet pays, and how cautious the sender is."""

    token_address: str  # the IPSXToken contract
    operator_key: str = field(repr=False)  # hex private key of the wallet that pays withdrawals
    rpc_url: str = "http://127.0.0.1:8545"
    web3_factory: Callable[[], AsyncWeb3[Any]] | None = None  # instead of rpc_url; the caller closes it
    confirmations: int = 6  # blocks on top of a transfer's block before its withdrawal completes
    poll_interval: float = 5 * SECONDS
    approval_above: int | None = None  # base units; a larger withdrawal waits for the operator's approval
    max_batch: int = 20  # withdrawals signed per round at most
    gas_limit: int = TRANSFER_GAS
    rpc_timeout: float = 30 * SECONDS
    # A version of a transfer unmined this many blocks after it was signed is replaced with higher
    # fees if the chain now asks more than it offers (15 blocks: 3 minutes on Ethereum).
    bump_after: int = 15 * BLOCKS
    max_fee: int = 500 * GWEI  # wei per gas: the ceiling no transfer nor replacement offers more than

    def __post_init__(self) -> None:
        if self.confirmations < 0 or self.max_batch < 1 or self.gas_limit < 21_000:
            raise ValueError("confirmations must be >= 0, max_batch >= 1, gas_limit >= 21000")
        if self.poll_interval <= 0 or self.rpc_timeout <= 0:
            raise ValueError("poll_interval and rpc_timeout must be positive")
        if self.approval_above is not None and self.approval_above < 0:
            raise ValueError("approval_above must be >= 0 base units")
        if self.bump_after < 1 or self.max_fee < 1:
            raise ValueError("bump_after must be >= 1 block, max_fee >= 1 wei")


# ---- the sender -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Round:
    """What one round did; withdrawal ids in each list."""

    completed: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)  # their transfer was dropped
    claimed: list[int] = field(default_factory=list)  # signed and stored this round
    bumped: list[int] = field(default_factory=list)  # their transfer got a replacement this round
    capped: list[int] = field(default_factory=list)  # their transfer is priced out, at the fee ceiling
    unmined: int = 0  # stored transfers the chain has not mined yet (claiming waits for them)
    waiting: int = 0  # mined transfers short of their confirmations
    short: list[int] = field(default_factory=list)  # left pending: the wallet cannot cover them now
    skipped: bool = False  # another sender is at work


@dataclass(slots=True)
class SenderStats:
    """What the sender did since it started."""

    rounds: int = 0  # by run
    errors: int = 0  # rounds of run that failed (node or database unreachable)
    completed: int = 0
    failed: int = 0
    bumped: int = 0  # replacements signed and stored


class WithdrawalSender(OperatorNode):
    """Sends the withdrawals from one operator wallet; see the module docstring.

    Drive it with :meth:`run`, or step by step with :meth:`send_once` (or :meth:`claim` and
    :meth:`bump`, which only sign and store). Close it with :meth:`aclose` (or ``async with``).
    """

    def __init__(self, pool: asyncpg.Pool, settings: SenderSettings) -> None:
        super().__init__(
            rpc_url=settings.rpc_url,
            operator_key=settings.operator_key,
            web3_factory=settings.web3_factory,
            rpc_timeout=settings.rpc_timeout,
        )
        self._pool = pool
        self._settings = settings
        self.token: ChecksumAddress = to_checksum_address(settings.token_address)
        self._token: AsyncContract = self._w3.eth.contract(address=self.token, abi=load("IPSXToken").abi)
        self._transfer_topic = HexBytes(self._token.events.Transfer().topic)
        self._chain_id: int | None = None
        self._capped: set[int] = set()  # versions the ceiling stopped, already warned about
        self.stats = SenderStats()

    async def run(self, stop: asyncio.Event) -> None:
        """A round every ``poll_interval`` until ``stop`` is set (at least one). A node or database
        that fails is logged and retried at the next round: the loop never ends on its own."""
        while True:
            try:
                await self.send_once()
            except _ERRORS as exc:
                self.stats.errors += 1
                log.warning("withdrawal sender round failed, retrying: %s", failure(exc))
            self.stats.rounds += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._settings.poll_interval)
            if stop.is_set():
                return

    async def send_once(self) -> Round:
        """Follow the stored transfers (replacing those priced out), then claim, store and broadcast
        new ones; see the module docstring. Returns what was done (``skipped`` when another sender
        holds the lock)."""
        return await self._round(self._send)

    async def claim(self) -> Round:
        """Only claim, sign and store new transfers, without broadcasting them (what a sender that
        stops right after its commit leaves behind)."""
        return await self._round(self._claim)

    async def bump(self) -> Round:
        """Only follow the stored transfers, signing and storing the replacements that are due, but
        broadcast nothing, neither them nor stored versions the node lacks (what a sender that stops
        right after storing a replacement leaves behind)."""
        return await self._round(functools.partial(self._follow, send=False))

    async def _round(self, step: Callable[[Round], Awaitable[object]]) -> Round:
        """Run ``step`` as this sender's round, unless another sender holds the lock (``skipped``)."""
        done = Round()
        async with self._exclusive() as alone:
            if alone:
                await step(done)
            else:
                done.skipped = True
        return done

    async def _send(self, done: Round) -> None:
        await self._follow(done, send=True)
        if done.unmined == 0:
            for transfer in await self._claim(done):
                await self._broadcast(transfer, transfer.latest)

    async def _chain(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(await self._w3.eth.chain_id)
        return self._chain_id

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[bool]:
        """Whether this is the only sender of the wallet on this chain now (an advisory lock held
        on one connection for the round; a crashed process's lock goes with its connection)."""
        name = f"ipsx.billing.withdrawal_sender:{await self._chain()}:{self.operator}"
        async with db.try_advisory_lock(self._pool, name) as alone:
            yield alone

    # ---- following the stored transfers ------------------------------------------------------

    async def _follow(self, done: Round, *, send: bool) -> None:
        head = int(await self._w3.eth.block_number)
        for transfer in await withdrawal_transfers.unresolved(self._pool, await self._chain(), self.operator):
            found = await self._mined(transfer)
            if found is None:
                # The receipts are asked again after the nonce: had one of our versions taken it,
                # its receipt would show now, so a second "none" means another transaction did.
                taken = await self._nonce_taken(transfer.nonce, head, self._settings.confirmations)
                if taken and await self._mined(transfer) is None:
                    await self._drop(transfer, done)
                    continue
                done.unmined += 1
                if send and not await self._known(transfer.latest.tx_hash):
                    await self._broadcast(transfer, transfer.latest)
                if not taken:
                    await self._bump(transfer, head, done, send=send)
                continue
            version, receipt = found
            block = int(receipt["blockNumber"])
            if head - block < self._settings.confirmations:
                done.waiting += 1
                log.debug("withdrawal %d: transfer %s mined in block %d, %d of %d confirmations",
                          transfer.withdrawal_id, version.tx_hash, block, max(head - block, 0),
                          self._settings.confirmations)  # fmt: skip
                continue
            await self._settle(transfer, version, receipt, block, done)

    async def _mined(self, transfer: Transfer) -> tuple[Version, Any] | None:
        """The version of the transfer that is mined and its receipt; ``None`` while none is (at
        most one can be: they share a nonce). The newest, likeliest, is asked first."""
        for version in reversed(transfer.versions):
            receipt = await self._receipt(version.tx_hash)
            if receipt is not None:
                return version, receipt
        return None

    async def _receipt(self, tx_hash: str) -> Any:
        try:
            return await self._w3.eth.get_transaction_receipt(HexBytes(tx_hash))
        except TransactionNotFound:
            return None

    async def _drop(self, transfer: Transfer, done: Round) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            if not await withdrawal_transfers.resolve_in(conn, transfer, "dropped", None, None):
                return
            await withdrawals.requeue_in(conn, transfer.withdrawal_id)
        done.requeued.append(transfer.withdrawal_id)
        log.warning("withdrawal %d: nonce %d was taken by another transaction, so transfer %s (%d "
                    "versions) can never be mined; the withdrawal is pending again", transfer.withdrawal_id,
                    transfer.nonce, transfer.latest.tx_hash, len(transfer.versions))  # fmt: skip

    async def _settle(
        self, transfer: Transfer, version: Version, receipt: Any, block: int, done: Round
    ) -> None:
        """Resolve a transfer whose ``version`` is mined ``confirmations`` deep, with its withdrawal."""
        if int(receipt["status"]) != 1:
            state, reason = "reverted", f"the transfer {version.tx_hash} reverted in block {block}"
        elif not self._moved_exactly(transfer, receipt):
            state, reason = "mismatch", f"the transfer {version.tx_hash} did not move exactly what was asked"
        else:
            state, reason = "confirmed", None
        async with self._pool.acquire() as conn, conn.transaction():
            if not await withdrawal_transfers.resolve_in(conn, transfer, state, block, version):
                return
            if reason is None:
                await withdrawals.confirm_in(conn, transfer.withdrawal_id, version.tx_hash)
            else:
                await withdrawals.fail_in(conn, transfer.withdrawal_id, reason)
        if reason is None:
            done.completed.append(transfer.withdrawal_id)
            self.stats.completed += 1
            log.info("withdrawal %d completed: %d base units to %s in %s (version %d, block %d)",
                     transfer.withdrawal_id, transfer.amount, transfer.recipient, version.tx_hash,
                     version.version, block)  # fmt: skip
        else:
            done.failed.append(transfer.withdrawal_id)
            self.stats.failed += 1
            log.error("withdrawal %d failed, its funds still held: %s; approve it to send it again, or "
                      "reject it", transfer.withdrawal_id, reason)  # fmt: skip

    def _moved_exactly(self, transfer: Transfer, receipt: Any) -> bool:
        """Whether the receipt holds one Transfer of the token, and it is the one asked for."""
        if receipt.get("to") is None or to_checksum_address(receipt["to"]) != self.token:
            return False
        moves = [
            entry
            for entry in receipt["logs"]
            if to_checksum_address(entry["address"]) == self.token
            and entry["topics"]
            and HexBytes(entry["topics"][0]) == self._transfer_topic
        ]
        if len(moves) != 1:
            return False
        args = self._token.events.Transfer().process_log(moves[0])["args"]
        moved = (to_checksum_address(args["from"]), to_checksum_address(args["to"]), int(args["value"]))
        return moved == (to_checksum_address(transfer.sender), transfer.recipient, transfer.amount)

    # ---- replacing a transfer priced out -----------------------------------------------------

    async def _bump(self, transfer: Transfer, head: int, done: Round, *, send: bool) -> None:
        """Replace the transfer's newest version when it is due (see the module docstring): sign
        the same call with the same nonce and higher fees, store it, then broadcast it if ``send``."""
        latest, ceiling = transfer.latest, self._settings.max_fee
        if latest.signed_block is not None and head - latest.signed_block < self._settings.bump_after:
            return
        needed, _ = await self._fees()
        if not underpriced(latest.fees, needed):
            return
        if int(await self._w3.eth.get_transaction_count(self.operator, head)) > transfer.nonce:
            return  # the nonce is mined already: following decides whose it is, a replacement cannot help
        fees = replacement_fees(latest.fees, needed, ceiling)
        if fees is None:
            done.capped.append(transfer.withdrawal_id)
            if latest.id not in self._capped:
                self._capped.add(latest.id)
                log.warning("withdrawal %d: transfer %s (nonce %d) offers %s gwei per gas, the chain asks "
                            "%s: it is not bumped, the fee ceiling of %s gwei leaves no room for a "
                            "replacement; it waits for fees to come down (or a higher --max-fee-gwei)",
                            transfer.withdrawal_id, latest.tx_hash, transfer.nonce, gwei(latest.fees.max_fee),
                            gwei(needed.max_fee), gwei(ceiling))  # fmt: skip
            return
        ether = int(await self._w3.eth.get_balance(self.operator))
        if ether < self._settings.gas_limit * fees.max_fee:
            log.warning("withdrawal %d: transfer %s is priced out but the operator wallet %s has %d wei, "
                        "less than the gas of a replacement at %s gwei: it is not bumped until it is "
                        "topped up", transfer.withdrawal_id, latest.tx_hash, self.operator, ether,
                        gwei(fees.max_fee))  # fmt: skip
            return
        # the very call of version 0: its token even if the sender now runs with another deployment
        signed = self._sign(
            transfer.token, transfer.recipient, transfer.amount, transfer.nonce, transfer.chain_id, fees
        )
        async with self._pool.acquire() as conn, conn.transaction():
            bumped = await withdrawal_transfers.store_version_in(conn, transfer, signed, head)
        if bumped is None:
            return  # resolved or replaced by another sender meanwhile
        done.bumped.append(transfer.withdrawal_id)
        self.stats.bumped += 1
        log.info("withdrawal %d: transfer %s (nonce %d) offers %s gwei per gas but the chain asks %s "
                 "(tip %s): replaced by version %d, %s, at %s gwei (tip %s)", transfer.withdrawal_id,
                 latest.tx_hash, transfer.nonce, gwei(latest.fees.max_fee), gwei(needed.max_fee),
                 gwei(needed.priority_fee), bumped.latest.version, bumped.latest.tx_hash,
                 gwei(fees.max_fee), gwei(fees.priority_fee))  # fmt: skip
        if fees.max_fee >= ceiling:
            log.warning("withdrawal %d: transfer %s is at the fee ceiling of %s gwei per gas: it will not "
                        "be bumped again", transfer.withdrawal_id, bumped.latest.tx_hash,
                        gwei(ceiling))  # fmt: skip
        if send:
            await self._broadcast(bumped, bumped.latest)

    # ---- claiming, signing, broadcasting -----------------------------------------------------

    async def _claim(self, done: Round) -> list[Transfer]:
        """Sign and store transfers for the withdrawals the wallet covers; returns them, unsent."""
        if not await withdrawals.listing(self._pool, state="pending", limit=1):
            return []  # nothing waits: no need to ask the node anything
        if not await self._token.functions.canTransfer(self.operator).call():
            log.warning("the token does not let %s transfer yet (the sale is not finalized): "
                        "no withdrawal is sent", self.operator)  # fmt: skip
            return []
        fees, block = await self._fees()
        if fees.max_fee > self._settings.max_fee:
            log.warning("the chain asks %s gwei per gas (twice the base fee plus the tip), above the fee "
                        "ceiling of %s gwei: no withdrawal is sent until fees come down",
                        gwei(fees.max_fee), gwei(self._settings.max_fee))  # fmt: skip
            return []
        tokens = int(await self._token.functions.balanceOf(self.operator).call())
        ether = int(await self._w3.eth.get_balance(self.operator))
        gas_cost = self._settings.gas_limit * fees.max_fee
        chain_id = await self._chain()
        pending_nonce = int(await self._w3.eth.get_transaction_count(self.operator, "pending"))
        stored: list[Transfer] = []
        async with self._pool.acquire() as conn, conn.transaction():
            nonce = pending_nonce
            stored_next = await withdrawal_transfers.next_stored_nonce_in(conn, chain_id, self.operator)
            if stored_next > nonce:
                # Every transfer stored is resolved here, so the node knows all their nonces; one
                # that does not (reset, or still syncing) would leave a gap no transfer fills.
                log.error("the node counts %d transactions of %s but this database stored transfers up "
                          "to nonce %d: is the node synced, on the right chain? Nothing is sent",
                          nonce, self.operator, stored_next - 1)  # fmt: skip
                return []
            candidates = await withdrawals.claimable_in(
                conn, limit=self._settings.max_batch, approval_above=self._settings.approval_above
            )
            for withdrawal in candidates:
                if withdrawal.amount > tokens or gas_cost > ether:
                    done.short.append(withdrawal.id)
                    continue
                recipient = to_checksum_address(withdrawal.address)
                signed = self._sign(self.token, recipient, int(withdrawal.amount), nonce, chain_id, fees)
                transfer = await withdrawal_transfers.store_in(
                    conn, withdrawal, chain_id, self.token, self.operator, nonce, signed, block
                )
                stored.append(transfer)
                await withdrawals.claim_in(conn, withdrawal.id)
                tokens -= int(withdrawal.amount)
                ether -= gas_cost
                nonce += 1
        for transfer in stored:
            done.claimed.append(transfer.withdrawal_id)
            log.info("withdrawal %d: transfer of %d base units to %s signed with nonce %d as %s",
                     transfer.withdrawal_id, transfer.amount, transfer.recipient, transfer.nonce,
                     transfer.latest.tx_hash)  # fmt: skip
        if done.short:
            log.warning("the operator wallet %s has %d base units of IPSX and %d wei left for more "
                        "transfers: withdrawals %s wait for it to be topped up", self.operator, tokens,
                        ether, ", ".join(map(str, done.short)))  # fmt: skip
        return stored

    async def _fees(self) -> tuple[Fees, int]:
        """What the chain asks now: EIP-1559 fees (twice the latest base fee plus the node's
        suggested tip), or the gas price before it; and the latest block's number."""
        latest = await self._w3.eth.get_block("latest")
        base = latest.get("baseFeePerGas")
        if base is None:
            price = int(await self._w3.eth.gas_price)
            return Fees(price, price, legacy=True), int(latest["number"])
        tip = int(await self._w3.eth.max_priority_fee)
        return Fees(2 * int(base) + tip, tip), int(latest["number"])

    def _sign(
        self, token: str, recipient: str, amount: int, nonce: int, chain_id: int, fees: Fees
    ) -> SignedTransaction:
        """``token``'s ERC-20 ``transfer(recipient, amount)`` from the operator, with this nonce and fees."""
        data = self._token.encode_abi("transfer", args=[to_checksum_address(recipient), amount])
        tx = {
            "to": to_checksum_address(token),
            "data": data,
            "value": 0,
            "gas": self._settings.gas_limit,
            "nonce": nonce,
            "chainId": chain_id,
            **fees.fields(),
        }
        return self._operator.sign_transaction(tx)

    async def _broadcast(self, transfer: Transfer, version: Version) -> bool:
        """Send the stored raw transaction of ``version``; ``False`` when the node refused it
        (recorded, and tried again next round). A node that cannot be reached raises."""
        try:
            await self._w3.eth.send_raw_transaction(version.raw_tx)
        except Web3RPCError as error:  # e.g. nonce too low, already known, fee below the base fee
            message = str(error)[:200]
            await withdrawal_transfers.note_broadcast(self._pool, version, message)
            log.warning("withdrawal %d: the node refused transfer %s (version %d): %s",
                        transfer.withdrawal_id, version.tx_hash, version.version, message)  # fmt: skip
            return False
        await withdrawal_transfers.note_broadcast(self._pool, version, None)
        log.info("withdrawal %d: transfer %s broadcast (nonce %d, version %d)", transfer.withdrawal_id,
                 version.tx_hash, transfer.nonce, version.version)  # fmt: skip
        return True

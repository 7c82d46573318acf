"""A real chain for the billing tests: anvil with the IPSX token and PaymentChannels, and helpers to
drive it while a :class:`ChainWatcher` follows it into the session's PostgreSQL database.

Loaded as a pytest plugin by the modules that need it (``pytest_plugins``; they import it only
for type checking, so that pytest rewrites its asserts). anvil is started once
per session on a free loopback port; every test runs inside an anvil snapshot reverted after it,
with the channel tables emptied first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from eth_typing import ChecksumAddress

from billing.chain import ChainSettings, ChainWatcher
from contracts import proofs
from contracts.deploy import deploy_contract
from tests.contracts.chain import Chain, anvil_chain, events

TOKEN = 10**18
CONFIRMATIONS = 3
CHALLENGE_PERIOD = 1000  # seconds
FUNDS = 10_000 * TOKEN
CHANNEL_TABLES = "channels, chain_logs, chain_cursors"


@dataclass
class Contracts:
    token: Any
    channels: Any


@dataclass
class ChainStack:
    """The chain, the contracts, who is who, and the watchers a test started (closed after it)."""

    chain: Chain
    token: Any
    channels: Any
    pool: asyncpg.Pool
    watchers: list[ChainWatcher] = field(default_factory=list)

    @property
    def operator(self) -> ChecksumAddress:
        return self.chain.accounts[2]

    @property
    def requesters(self) -> list[ChecksumAddress]:
        return self.chain.accounts[3:6]

    @property
    def provider(self) -> ChecksumAddress:
        return self.chain.accounts[6]

    @property
    def outsider(self) -> ChecksumAddress:
        return self.chain.accounts[7]

    @property
    def domain(self) -> proofs.ChannelDomain:
        return proofs.ChannelDomain(chain_id=self.chain.chain_id, verifying_contract=self.channels.address)

    @property
    def rpc_url(self) -> str:
        return str(self.chain.w3.provider.endpoint_uri)  # type: ignore[attr-defined]

    def settings(self, **overrides: Any) -> ChainSettings:
        values: dict[str, Any] = {
            "channels_address": self.channels.address,
            "operator_key": self.chain.keys[self.operator].key.to_0x_hex(),
            "rpc_url": self.rpc_url,
            "confirmations": CONFIRMATIONS,
            "poll_interval": 0.01,
        }
        values.update(overrides)
        return ChainSettings(**values)

    def watcher(self, **overrides: Any) -> ChainWatcher:
        """A new watcher over the test's database, as a restarted process would make."""
        watcher = ChainWatcher(self.pool, self.settings(**overrides))
        self.watchers.append(watcher)
        return watcher

    def block(self) -> int:
        return int(self.chain.w3.eth.block_number)

    def mine(self, blocks: int = CONFIRMATIONS) -> None:
        """Mine ``blocks`` empty blocks (by default enough to confirm the latest one)."""
        self.chain.w3.provider.make_request("anvil_mine", [hex(blocks)])  # type: ignore[arg-type]

    def open(self, sender: str, receiver: str, deposit: int) -> str:
        """Open a channel; returns its id as 0x-hex."""
        receipt = self.chain.transact(self.channels.functions.open(receiver, deposit), sender)
        (opened,) = events(self.channels, "ChannelOpened", receipt)
        return "0x" + bytes(opened["channelId"]).hex()

    def top_up(self, sender: str, channel_id: str, amount: int) -> None:
        self.chain.transact(self.channels.functions.topUp(bytes.fromhex(channel_id[2:]), amount), sender)

    def sign(self, signer: str, channel_id: str, balance: int) -> bytes:
        """``signer``'s balance proof of ``balance`` on the channel."""
        key = self.chain.keys[signer].key
        return proofs.sign_balance_proof(self.domain, bytes.fromhex(channel_id[2:]), balance, key)

    def cooperative_close(self, sender: str, receiver: str, channel_id: str, balance: int) -> Any:
        raw_id = bytes.fromhex(channel_id[2:])
        expires_at = self.chain.now() + 3600
        key = self.chain.keys[receiver].key
        consent = proofs.sign_closing_consent(self.domain, raw_id, balance, expires_at, key)
        proof = self.sign(sender, channel_id, balance)
        call = self.channels.functions.cooperativeClose(raw_id, balance, expires_at, proof, consent)
        return self.chain.transact(call, sender)

    def close(self, closer: str, channel_id: str, balance: int, proof: bytes = b"") -> None:
        """Start an uncooperative close (the sender states ``balance``; the receiver shows ``proof``)."""
        call = self.channels.functions.uncooperativeClose(bytes.fromhex(channel_id[2:]), balance, proof)
        self.chain.transact(call, closer)

    def settle(self, channel_id: str) -> Any:
        """Let the challenge period pass and settle."""
        self.chain.travel(CHALLENGE_PERIOD + 1)
        return self.chain.transact(
            self.channels.functions.settle(bytes.fromhex(channel_id[2:])), self.outsider
        )

    def on_chain(self, channel_id: str) -> Any:
        """``getChannel``: (sender, settleAfter, receiver, deposit, closingBalance)."""
        return self.channels.functions.getChannel(bytes.fromhex(channel_id[2:])).call()

    def tokens(self, address: str) -> int:
        return int(self.token.functions.balanceOf(address).call())

    def nonce(self, address: str) -> int:
        return int(self.chain.w3.eth.get_transaction_count(address))  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def billing_anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    with anvil_chain(tmp_path_factory.mktemp("billing-anvil")) as chain:
        yield chain


@pytest.fixture(scope="session")
def billing_contracts(billing_anvil: Chain) -> Contracts:
    """The token (transfers unlocked) and PaymentChannels; requesters and the operator are funded
    and have approved the channels contract."""
    chain = billing_anvil
    deployer, sale, *others = chain.accounts[:5]
    token = deploy_contract(chain.w3, "IPSXToken", sale, *others[:3], sender=deployer)
    chain.transact(token.functions.enableTransfers(), sale)
    channels = deploy_contract(chain.w3, "PaymentChannels", token.address, CHALLENGE_PERIOD, sender=deployer)
    for holder in chain.accounts[2:6]:  # the operator and the requesters
        chain.transact(token.functions.transfer(holder, FUNDS), sale)
        chain.transact(token.functions.approve(channels.address, 2**256 - 1), holder)
    return Contracts(token, channels)


@pytest.fixture
async def chain_stack(
    billing_anvil: Chain, billing_contracts: Contracts, pool: asyncpg.Pool
) -> AsyncIterator[ChainStack]:
    """The chain (reverted after the test) and the database with empty channel tables."""
    await pool.execute(f"TRUNCATE {CHANNEL_TABLES} RESTART IDENTITY CASCADE")
    with billing_anvil.isolated():
        stack = ChainStack(billing_anvil, billing_contracts.token, billing_contracts.channels, pool)
        try:
            yield stack
        finally:
            for watcher in stack.watchers:
                await watcher.aclose()

"""Random sequences of channel operations conserve tokens (hypothesis state machine on both chains)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from contracts import proofs
from contracts.proofs import ChannelDomain
from tests.contracts.chain import Chain
from tests.contracts.conftest import CHALLENGE_PERIOD, ChannelsEnv

# The next block's timestamp is only known to be later than the latest one; stay clear of the
# deadline by this much so that a step never depends on wall-clock time.
DEADLINE_MARGIN = 30
amounts = st.integers(min_value=1, max_value=10**6)


@dataclass
class Model:
    """What the test expects of one channel."""

    sender: str
    receiver: str
    deposit: int
    signed: int = 0  # highest balance the sender has signed
    settle_after: int = 0  # 0 while open
    closing_balance: int = 0


class ChannelMachine(RuleBasedStateMachine):
    def __init__(self, chain: Chain, env: ChannelsEnv) -> None:
        super().__init__()
        self.chain, self.env = chain, env
        self.snapshot = chain.snapshot()
        self.channels, self.token = env.channels, env.token
        self.domain = ChannelDomain(chain.chain_id, env.channels.address)
        self.people = env.roles.users[:4]
        self.model: dict[bytes, Model] = {}
        self.total = self.holdings()

    def teardown(self) -> None:
        self.chain.revert(self.snapshot)

    # ---- helpers --------------------------------------------------------------------------------

    def balance(self, who: str) -> int:
        return int(self.token.functions.balanceOf(who).call())

    def holdings(self) -> int:
        return sum(self.balance(p) for p in [*self.people, self.channels.address])

    def send(self, fn: Any, sender: str) -> Any:
        return self.chain.transact(fn, sender)

    def key(self, who: str) -> bytes:
        return bytes(self.chain.keys[who].key)  # type: ignore[index]

    def pick(self, data: st.DataObject, open_: bool | None = None, closing: bool | None = None) -> bytes:
        candidates = sorted(
            cid
            for cid, m in self.model.items()
            if (open_ is None or (m.settle_after == 0) == open_)
            and (closing is None or (m.settle_after != 0) == closing)
        )
        return data.draw(st.sampled_from(candidates))

    def has(self, open_: bool) -> bool:
        return any((m.settle_after == 0) == open_ for m in self.model.values())

    def settled(self, cid: bytes, paid: int) -> None:
        m = self.model.pop(cid)
        sender = self.channels.functions.getChannel(cid).call()[0]
        assert sender == "0x" + "0" * 40
        assert paid <= m.deposit

    # ---- rules ----------------------------------------------------------------------------------

    @rule(pair=st.permutations(range(4)), deposit=amounts)
    def open(self, pair: list[int], deposit: int) -> None:
        sender, receiver = self.people[pair[0]], self.people[pair[1]]
        cid = bytes(self.channels.functions.open(receiver, deposit).call({"from": sender}))
        self.send(self.channels.functions.open(receiver, deposit), sender)
        assert cid not in self.model
        self.model[cid] = Model(sender, receiver, deposit)

    @precondition(lambda self: self.has(open_=True))
    @rule(data=st.data(), amount=amounts)
    def top_up(self, data: st.DataObject, amount: int) -> None:
        cid = self.pick(data, open_=True)
        self.send(self.channels.functions.topUp(cid, amount), self.model[cid].sender)
        self.model[cid].deposit += amount

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def sign(self, data: st.DataObject) -> None:
        """The sender pays more off-chain (nothing on-chain)."""
        cid = self.pick(data)
        m = self.model[cid]
        if m.signed < m.deposit:
            m.signed = data.draw(st.integers(m.signed + 1, m.deposit))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def cooperative_close(self, data: st.DataObject) -> None:
        cid = self.pick(data)
        m = self.model[cid]
        proof = proofs.sign_balance_proof(self.domain, cid, m.signed, self.key(m.sender))
        until = self.chain.now() + 3600  # the consent's expiry, an hour ahead of the chain
        consent = proofs.sign_closing_consent(self.domain, cid, m.signed, until, self.key(m.receiver))
        before = self.balance(m.receiver), self.balance(m.sender)
        self.send(self.channels.functions.cooperativeClose(cid, m.signed, until, proof, consent), m.receiver)
        assert self.balance(m.receiver) == before[0] + m.signed
        assert self.balance(m.sender) == before[1] + m.deposit - m.signed
        self.settled(cid, m.signed)
        event("closed cooperatively")

    @precondition(lambda self: self.has(open_=True))
    @rule(data=st.data(), by_receiver=st.booleans())
    def uncooperative_close(self, data: st.DataObject, by_receiver: bool) -> None:
        cid = self.pick(data, open_=True)
        m = self.model[cid]
        if by_receiver:
            balance, closer = m.signed, m.receiver
            sig = proofs.sign_balance_proof(self.domain, cid, balance, self.key(m.sender))
        else:
            # the sender may claim a stale (lower) balance; the receiver can counter it
            balance, closer, sig = data.draw(st.integers(0, m.signed)), m.sender, b""
        receipt = self.send(self.channels.functions.uncooperativeClose(cid, balance, sig), closer)
        stamp = self.chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"]
        m.settle_after, m.closing_balance = stamp + CHALLENGE_PERIOD, balance

    @precondition(lambda self: self.has(open_=False))
    @rule(data=st.data())
    def submit_newer_proof(self, data: st.DataObject) -> None:
        cid = self.pick(data, closing=True)
        m = self.model[cid]
        if m.closing_balance == m.deposit or self.chain.now() + DEADLINE_MARGIN >= m.settle_after:
            return
        if m.signed <= m.closing_balance:
            # a payment signed while the close was pending
            m.signed = data.draw(st.integers(m.closing_balance + 1, m.deposit))
        proof = proofs.sign_balance_proof(self.domain, cid, m.signed, self.key(m.sender))
        self.send(self.channels.functions.submitProof(cid, m.signed, proof), m.receiver)
        m.closing_balance = m.signed
        event("a stale close countered")

    @precondition(lambda self: self.has(open_=False))
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        """Waits out the challenge period if need be, then settles."""
        cid = self.pick(data, closing=True)
        m = self.model[cid]
        if self.chain.now() < m.settle_after:
            self.chain.travel(m.settle_after - self.chain.now())
        before = self.balance(m.receiver), self.balance(m.sender)
        self.send(self.channels.functions.settle(cid), self.people[0])
        assert self.balance(m.receiver) == before[0] + m.closing_balance
        assert self.balance(m.sender) == before[1] + m.deposit - m.closing_balance
        self.settled(cid, m.closing_balance)
        event("settled after a challenge period")

    @rule(seconds=st.sampled_from([1, CHALLENGE_PERIOD // 3, CHALLENGE_PERIOD, 2 * CHALLENGE_PERIOD]))
    def time_passes(self, seconds: int) -> None:
        self.chain.travel(seconds)

    # ---- invariants -----------------------------------------------------------------------------

    @invariant()
    def tokens_are_conserved(self) -> None:
        assert self.holdings() == self.total

    @invariant()
    def contract_holds_the_open_deposits(self) -> None:
        deposits = sum(m.deposit for m in self.model.values())
        assert self.balance(self.channels.address) == deposits
        for cid, m in self.model.items():
            state = tuple(self.channels.functions.getChannel(cid).call())
            assert state == (m.sender, m.settle_after, m.receiver, m.deposit, m.closing_balance)


# eth-tester runs a transaction about four times slower than anvil: fewer examples there.
EXAMPLES = {"anvil": 15, "eth_tester": 5}


@pytest.mark.timeout(120)
def test_random_channel_operations_conserve_tokens(chain: Chain, channels_env: ChannelsEnv) -> None:
    run_state_machine_as_test(
        lambda: ChannelMachine(chain, channels_env),
        settings=settings(
            max_examples=EXAMPLES[chain.name],
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )

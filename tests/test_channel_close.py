"""``ipsx channel close`` as a requester: the balance proof it submits to ``cooperativeClose``
with the operator's consent, on a real chain (the in-process eth-tester, the contracts deployed
from their committed artifacts). The contract wants the sender's own signature even at balance 0,
when the hub holds no proof yet, so the requester's wallet signs it; and it takes the operator's
consent only until the expiry the consent names."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from eth_tester.exceptions import TransactionFailed

from contracts import proofs
from contracts.deploy import deploy_contract
from ipsx.channel_commands import ChannelError, requester_close
from tests.contracts.chain import Chain, eth_tester_chain, events, reverts
from tests.contracts.conftest import roles_of

DEPOSIT = 1000


@dataclass
class Opened:
    chain: Chain
    token: Any
    channels: Any
    requester: LocalAccount
    operator: LocalAccount
    channel_id: bytes

    @property
    def domain(self) -> proofs.ChannelDomain:
        return proofs.ChannelDomain(chain_id=self.chain.chain_id, verifying_contract=self.channels.address)

    def consent(
        self, balance: int, balance_signature: str | None = None, *, expires_at: int | None = None
    ) -> dict[str, Any]:
        """What ``POST /v1/channels/{id}/consent`` answers: the operator's signature of the balance
        and the expiry (by default an hour ahead of the chain)."""
        until = self.chain.now() + 3600 if expires_at is None else expires_at
        signed = proofs.sign_closing_consent(self.domain, self.channel_id, balance, until, self.operator.key)
        return {
            "channel_id": "0x" + self.channel_id.hex(),
            "balance": {"base_units": str(balance)},
            "expires_at": until,
            "balance_signature": balance_signature,
            "consent_signature": "0x" + signed.hex(),
        }


@pytest.fixture(scope="module")
def chain() -> Chain:
    return eth_tester_chain()


@pytest.fixture
def opened(chain: Chain) -> Iterator[Opened]:
    with chain.isolated():
        roles = roles_of(chain)
        token = deploy_contract(
            chain.w3, "IPSXToken", roles.sale, roles.early_adopters, roles.bounty, roles.team,
            sender=roles.deployer,
        )  # fmt: skip
        chain.transact(token.functions.enableTransfers(), roles.sale)
        channels = deploy_contract(chain.w3, "PaymentChannels", token.address, 1000, sender=roles.deployer)
        requester, operator = roles.users[0], roles.users[1]
        chain.transact(token.functions.transfer(requester, 10 * DEPOSIT), roles.sale)
        chain.transact(token.functions.approve(channels.address, DEPOSIT), requester)
        receipt = chain.transact(channels.functions.open(operator, DEPOSIT), requester)
        channel_id = bytes(events(channels, "ChannelOpened", receipt)[0]["channelId"])
        yield Opened(chain, token, channels, chain.keys[requester], chain.keys[operator], channel_id)


def close(opened: Opened, balance: int, expires_at: int, proof: str, consent: str) -> Any:
    call = opened.channels.functions.cooperativeClose(
        opened.channel_id, balance, expires_at, bytes.fromhex(proof[2:]), bytes.fromhex(consent[2:])
    )
    return opened.chain.transact(call, opened.requester.address)


def test_requester_close_call_without_any_proof_held(opened: Opened) -> None:
    before = opened.token.functions.balanceOf(opened.requester.address).call()
    answer = opened.consent(0)
    balance, expires_at, proof, consent = requester_close(
        answer, opened.channel_id, opened.requester, opened.domain
    )
    assert expires_at == answer["expires_at"]
    (settled,) = events(opened.channels, "ChannelSettled", close(opened, balance, expires_at, proof, consent))
    assert (settled["paid"], settled["refunded"]) == (0, DEPOSIT)
    assert opened.token.functions.balanceOf(opened.requester.address).call() == before + DEPOSIT


def test_cooperative_close_call_with_an_empty_proof_reverts(opened: Opened) -> None:
    # What the command sent before: "0x" when the hub held no proof.
    with pytest.raises(TransactionFailed):
        answer = opened.consent(0)
        close(opened, 0, answer["expires_at"], "0x", answer["consent_signature"])


def test_requester_close_call_at_a_balance_the_wallet_signed(opened: Opened) -> None:
    held = "0x" + proofs.sign_balance_proof(opened.domain, opened.channel_id, 300, opened.requester.key).hex()
    answer = requester_close(opened.consent(300, held), opened.channel_id, opened.requester, opened.domain)
    (settled,) = events(opened.channels, "ChannelSettled", close(opened, *answer))
    assert (settled["paid"], settled["refunded"]) == (300, DEPOSIT - 300)


def test_requester_close_call_with_a_consent_past_its_expiry_reverts(opened: Opened) -> None:
    held = "0x" + proofs.sign_balance_proof(opened.domain, opened.channel_id, 300, opened.requester.key).hex()
    expires_at = opened.chain.now() + 600
    answer = requester_close(
        opened.consent(300, held, expires_at=expires_at), opened.channel_id, opened.requester, opened.domain
    )
    opened.chain.travel(601)  # the requester waited, and was invoiced more on the unfrozen channel
    with reverts(opened.channels, "ConsentExpired", expires_at):
        close(opened, *answer)
    assert opened.channels.functions.getChannel(opened.channel_id).call()[3] == DEPOSIT  # still open


def test_requester_close_call_refuses_an_answer_without_expiry(opened: Opened) -> None:
    answer = opened.consent(0)
    del answer["expires_at"]  # what an API from before consents expired answers
    with pytest.raises(ChannelError, match="no expiry"):
        requester_close(answer, opened.channel_id, opened.requester, opened.domain)


@pytest.mark.parametrize("held", [None, "0x" + "00" * 65, "0x1234"])
def test_requester_close_call_refuses_a_balance_the_wallet_never_signed(
    opened: Opened, held: str | None
) -> None:
    with pytest.raises(ChannelError, match="never signed"):
        requester_close(opened.consent(900, held), opened.channel_id, opened.requester, opened.domain)

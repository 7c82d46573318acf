"""``ipsx channel close`` as a requester: the balance proof it submits to ``cooperativeClose``
with the operator's consent, on a real chain (the in-process eth-tester, the contracts deployed
from their committed artifacts). The contract wants the sender's own signature even at balance 0,
when the hub holds no proof yet, so the requester's wallet signs it."""

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
from tests.contracts.chain import Chain, eth_tester_chain, events
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

    def consent(self, balance: int, balance_signature: str | None = None) -> dict[str, Any]:
        """What ``POST /v1/channels/{id}/consent`` answers: the operator's signature of the balance."""
        signed = proofs.sign_closing_consent(self.domain, self.channel_id, balance, self.operator.key)
        return {
            "channel_id": "0x" + self.channel_id.hex(),
            "balance": {"base_units": str(balance)},
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


def close(opened: Opened, balance: int, proof: str, consent: str) -> Any:
    call = opened.channels.functions.cooperativeClose(
        opened.channel_id, balance, bytes.fromhex(proof[2:]), bytes.fromhex(consent[2:])
    )
    return opened.chain.transact(call, opened.requester.address)


def test_requester_close_call_without_any_proof_held(opened: Opened) -> None:
    before = opened.token.functions.balanceOf(opened.requester.address).call()
    balance, proof, consent = requester_close(
        opened.consent(0), opened.channel_id, opened.requester, opened.domain
    )
    (settled,) = events(opened.channels, "ChannelSettled", close(opened, balance, proof, consent))
    assert (settled["paid"], settled["refunded"]) == (0, DEPOSIT)
    assert opened.token.functions.balanceOf(opened.requester.address).call() == before + DEPOSIT


def test_cooperative_close_call_with_an_empty_proof_reverts(opened: Opened) -> None:
    # What the command sent before: "0x" when the hub held no proof.
    with pytest.raises(TransactionFailed):
        close(opened, 0, "0x", opened.consent(0)["consent_signature"])


def test_requester_close_call_at_a_balance_the_wallet_signed(opened: Opened) -> None:
    held = "0x" + proofs.sign_balance_proof(opened.domain, opened.channel_id, 300, opened.requester.key).hex()
    answer = requester_close(opened.consent(300, held), opened.channel_id, opened.requester, opened.domain)
    (settled,) = events(opened.channels, "ChannelSettled", close(opened, *answer))
    assert (settled["paid"], settled["refunded"]) == (300, DEPOSIT - 300)


@pytest.mark.parametrize("held", [None, "0x" + "00" * 65, "0x1234"])
def test_requester_close_call_refuses_a_balance_the_wallet_never_signed(
    opened: Opened, held: str | None
) -> None:
    with pytest.raises(ChannelError, match="never signed"):
        requester_close(opened.consent(900, held), opened.channel_id, opened.requester, opened.domain)

"""PaymentChannels: every function's call, state, events and reverts, on anvil and eth-tester."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from eth_typing import ChecksumAddress

from contracts import proofs
from contracts.deploy import deploy_contract
from contracts.proofs import ChannelDomain
from tests.contracts.chain import Chain, events, reverts
from tests.contracts.conftest import CHALLENGE_PERIOD, TOKEN, USER_FUNDS, ChannelsEnv

DEPOSIT = 100 * TOKEN
NO_SIGNATURE = b""
UNTIL = 4_102_444_800  # 2100-01-01: the expiry of the closing consents of tests about other rules


@dataclass
class Net:
    """The channel contract with a sender, a receiver and an outsider, plus signing helpers."""

    chain: Chain
    env: ChannelsEnv
    domain: ChannelDomain

    @property
    def channels(self) -> Any:
        return self.env.channels

    @property
    def token(self) -> Any:
        return self.env.token

    @property
    def sender(self) -> ChecksumAddress:
        return self.env.roles.users[0]

    @property
    def receiver(self) -> ChecksumAddress:
        return self.env.roles.users[1]

    @property
    def outsider(self) -> ChecksumAddress:
        return self.env.roles.users[2]

    def key(self, who: ChecksumAddress) -> bytes:
        return bytes(self.chain.keys[who].key)

    def open(self, deposit: int = DEPOSIT) -> bytes:
        receipt = self.chain.transact(self.channels.functions.open(self.receiver, deposit), self.sender)
        return bytes(events(self.channels, "ChannelOpened", receipt)[0]["channelId"])

    def proof(self, cid: bytes, balance: int, signer: ChecksumAddress | None = None) -> bytes:
        return proofs.sign_balance_proof(self.domain, cid, balance, self.key(signer or self.sender))

    def consent(
        self, cid: bytes, balance: int, signer: ChecksumAddress | None = None, *, until: int = UNTIL
    ) -> bytes:
        return proofs.sign_closing_consent(
            self.domain, cid, balance, until, self.key(signer or self.receiver)
        )

    def balance(self, who: str) -> int:
        return int(self.token.functions.balanceOf(who).call())

    def state(self, cid: bytes) -> tuple[Any, ...]:
        return tuple(self.channels.functions.getChannel(cid).call())


@pytest.fixture
def net(chain: Chain, channels_env: ChannelsEnv) -> Net:
    return Net(chain, channels_env, ChannelDomain(chain.chain_id, channels_env.channels.address))


ZERO = "0x0000000000000000000000000000000000000000"
EMPTY = (ZERO, 0, ZERO, 0, 0)


# ---- constructor and views ---------------------------------------------------------------------


def test_constructor_state(net: Net) -> None:
    assert net.channels.functions.token().call() == net.token.address
    assert net.channels.functions.challengePeriod().call() == CHALLENGE_PERIOD


@pytest.mark.parametrize("period", [0, 2**32])
def test_constructor_reverts_on_bad_challenge_period(net: Net, period: int) -> None:
    with reverts(net.channels, "InvalidConfig"):
        deploy_contract(net.chain.w3, "PaymentChannels", net.token.address, period, sender=net.sender)


def test_domain_matches_python(net: Net) -> None:
    assert bytes(net.channels.functions.domainSeparator().call()) == net.domain.separator
    fields, name, version, chain_id, contract, _, _ = net.channels.functions.eip712Domain().call()
    assert (name, version, chain_id, contract) == (
        "IPSX PaymentChannels",
        "2",
        net.chain.chain_id,
        net.channels.address,
    )
    assert fields == b"\x0f"


def test_digests_match_python(net: Net) -> None:
    cid = proofs.channel_id(net.sender, net.receiver, 7)
    assert bytes(net.channels.functions.channelId(net.sender, net.receiver, 7).call()) == cid
    balance = 123_456_789
    on_chain = bytes(net.channels.functions.balanceProofDigest(cid, balance).call())
    assert on_chain == proofs.digest(proofs.balance_proof_message(net.domain, cid, balance))
    for expires_at in (0, 1_700_000_000, 2**256 - 1):
        on_chain = bytes(net.channels.functions.closingConsentDigest(cid, balance, expires_at).call())
        assert on_chain == proofs.digest(proofs.closing_consent_message(net.domain, cid, balance, expires_at))
        assert on_chain != bytes(net.channels.functions.balanceProofDigest(cid, balance).call())
    # the expiry is signed: the same consent with another one is another digest
    one, other = (net.channels.functions.closingConsentDigest(cid, balance, t).call() for t in (5, 6))
    assert one != other


# ---- open --------------------------------------------------------------------------------------


def test_open_call(net: Net) -> None:
    cid = net.channels.functions.open(net.receiver, DEPOSIT).call({"from": net.sender})
    assert bytes(cid) == proofs.channel_id(net.sender, net.receiver, 1)


def test_open_state(net: Net) -> None:
    cid = net.open()
    assert net.state(cid) == (net.sender, 0, net.receiver, DEPOSIT, 0)
    assert net.channels.functions.pairNonce(net.sender, net.receiver).call() == 1
    assert net.balance(net.sender) == USER_FUNDS - DEPOSIT
    assert net.balance(net.channels.address) == DEPOSIT


def test_open_event(net: Net) -> None:
    receipt = net.chain.transact(net.channels.functions.open(net.receiver, DEPOSIT), net.sender)
    cid = proofs.channel_id(net.sender, net.receiver, 1)
    assert events(net.channels, "ChannelOpened", receipt) == [
        {"channelId": cid, "sender": net.sender, "receiver": net.receiver, "nonce": 1, "deposit": DEPOSIT}
    ]
    assert events(net.token, "Transfer", receipt) == [
        {"from": net.sender, "to": net.channels.address, "value": DEPOSIT}
    ]


def test_open_twice_gives_distinct_ids(net: Net) -> None:
    first, second = net.open(), net.open(DEPOSIT // 2)
    assert second == proofs.channel_id(net.sender, net.receiver, 2) != first
    assert net.state(first)[3] == DEPOSIT and net.state(second)[3] == DEPOSIT // 2


@pytest.mark.parametrize(
    ("receiver", "deposit", "error"),
    [("zero", DEPOSIT, "InvalidReceiver"), ("self", DEPOSIT, "InvalidReceiver"), ("other", 0, "ZeroAmount")],
)
def test_open_reverts(net: Net, receiver: str, deposit: int, error: str) -> None:
    to = {"zero": ZERO, "self": net.sender, "other": net.receiver}[receiver]
    with reverts(net.channels, error):
        net.channels.functions.open(to, deposit).transact({"from": net.sender})


def test_open_reverts_without_funds(net: Net) -> None:
    with reverts(net.token, "ERC20InsufficientBalance"):
        net.channels.functions.open(net.receiver, USER_FUNDS + 1).transact({"from": net.sender})
    assert net.channels.functions.pairNonce(net.sender, net.receiver).call() == 0


# ---- topUp -------------------------------------------------------------------------------------


def test_top_up_state_and_event(net: Net) -> None:
    cid = net.open()
    receipt = net.chain.transact(net.channels.functions.topUp(cid, 5 * TOKEN), net.sender)
    assert events(net.channels, "ChannelToppedUp", receipt) == [
        {"channelId": cid, "amount": 5 * TOKEN, "deposit": DEPOSIT + 5 * TOKEN}
    ]
    assert net.state(cid)[3] == DEPOSIT + 5 * TOKEN
    assert net.balance(net.channels.address) == DEPOSIT + 5 * TOKEN


def test_top_up_reverts(net: Net) -> None:
    cid = net.open()
    with reverts(net.channels, "NotSender", net.receiver):
        net.channels.functions.topUp(cid, TOKEN).transact({"from": net.receiver})
    with reverts(net.channels, "ZeroAmount"):
        net.channels.functions.topUp(cid, 0).transact({"from": net.sender})
    unknown = proofs.channel_id(net.sender, net.receiver, 99)
    with reverts(net.channels, "ChannelNotFound", unknown):
        net.channels.functions.topUp(unknown, TOKEN).transact({"from": net.sender})
    net.chain.transact(net.channels.functions.uncooperativeClose(cid, 0, NO_SIGNATURE), net.sender)
    with reverts(net.channels, "ChannelIsClosing", cid):
        net.channels.functions.topUp(cid, TOKEN).transact({"from": net.sender})


# ---- cooperativeClose --------------------------------------------------------------------------


def test_cooperative_close_state_and_event(net: Net) -> None:
    cid = net.open()
    paid = 30 * TOKEN + 1
    # Anyone may submit the two signatures: here the outsider pays the gas.
    receipt = net.chain.transact(
        net.channels.functions.cooperativeClose(
            cid, paid, UNTIL, net.proof(cid, paid), net.consent(cid, paid)
        ),
        net.outsider,
    )
    assert events(net.channels, "ChannelSettled", receipt) == [
        {
            "channelId": cid,
            "sender": net.sender,
            "receiver": net.receiver,
            "paid": paid,
            "refunded": DEPOSIT - paid,
            "cooperative": True,
        }
    ]
    assert net.state(cid) == EMPTY
    assert net.balance(net.receiver) == USER_FUNDS + paid
    assert net.balance(net.sender) == USER_FUNDS - paid
    assert net.balance(net.channels.address) == 0


def test_cooperative_close_of_full_deposit_and_of_zero(net: Net) -> None:
    full, empty = net.open(), net.open()
    net.chain.transact(
        net.channels.functions.cooperativeClose(
            full, DEPOSIT, UNTIL, net.proof(full, DEPOSIT), net.consent(full, DEPOSIT)
        ),
        net.receiver,
    )
    net.chain.transact(
        net.channels.functions.cooperativeClose(empty, 0, UNTIL, net.proof(empty, 0), net.consent(empty, 0)),
        net.sender,
    )
    assert net.balance(net.receiver) == USER_FUNDS + DEPOSIT
    assert net.balance(net.sender) == USER_FUNDS - DEPOSIT


def test_cooperative_close_during_challenge_period(net: Net) -> None:
    cid = net.open()
    net.chain.transact(net.channels.functions.uncooperativeClose(cid, 0, NO_SIGNATURE), net.sender)
    net.chain.transact(
        net.channels.functions.cooperativeClose(cid, 10, UNTIL, net.proof(cid, 10), net.consent(cid, 10)),
        net.receiver,
    )
    assert net.state(cid) == EMPTY
    assert net.balance(net.receiver) == USER_FUNDS + 10


def test_cooperative_close_reverts_on_bad_signatures(net: Net) -> None:
    cid = net.open()
    fn = net.channels.functions.cooperativeClose
    good_proof, good_consent = net.proof(cid, 10), net.consent(cid, 10)
    other = ChannelDomain(net.chain.chain_id + 1, net.channels.address)
    cases = {
        # the balance proof signed by someone other than the sender
        "receiver signs proof": (net.proof(cid, 10, net.receiver), good_consent, "InvalidBalanceProof"),
        "outsider signs proof": (net.proof(cid, 10, net.outsider), good_consent, "InvalidBalanceProof"),
        # the closing consent signed by someone other than the receiver
        "sender signs consent": (good_proof, net.consent(cid, 10, net.sender), "InvalidClosingSignature"),
        # one type standing for the other
        "consent as proof": (good_consent, good_consent, "InvalidBalanceProof"),
        "proof as consent": (good_proof, good_proof, "InvalidClosingSignature"),
        # another chain id in the domain
        "wrong chain id": (
            proofs.sign_balance_proof(other, cid, 10, net.key(net.sender)),
            good_consent,
            "InvalidBalanceProof",
        ),
        # signatures for another balance
        "proof of other balance": (net.proof(cid, 11), good_consent, "InvalidBalanceProof"),
        "consent of other balance": (good_proof, net.consent(cid, 9), "InvalidClosingSignature"),
        # a consent signed to expire earlier, presented with the later expiry
        "consent of other expiry": (
            good_proof,
            net.consent(cid, 10, until=UNTIL - 1),
            "InvalidClosingSignature",
        ),
        "malformed": (good_proof[:64], good_consent, "InvalidBalanceProof"),
    }
    for proof, consent, error in cases.values():
        with reverts(net.channels, error):
            fn(cid, 10, UNTIL, proof, consent).transact({"from": net.receiver})
    assert net.state(cid) == (net.sender, 0, net.receiver, DEPOSIT, 0)


def test_cooperative_close_call_in_the_block_the_consent_expires(net: Net) -> None:
    cid = net.open()
    expires_at = net.chain.now() + 500
    net.chain.next_block_at(expires_at)  # the last block the consent is good for
    receipt = net.chain.transact(
        net.channels.functions.cooperativeClose(
            cid, 25, expires_at, net.proof(cid, 25), net.consent(cid, 25, until=expires_at)
        ),
        net.sender,
    )
    assert net.chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"] == expires_at
    (settled,) = events(net.channels, "ChannelSettled", receipt)
    assert (settled["paid"], settled["refunded"], settled["cooperative"]) == (25, DEPOSIT - 25, True)
    assert net.state(cid) == EMPTY


def test_cooperative_close_reverts_once_the_consent_expired(net: Net) -> None:
    cid = net.open()
    expires_at = net.chain.now() + 500
    old_consent = net.consent(cid, 25, until=expires_at)
    net.chain.mine_past(expires_at)
    with reverts(net.channels, "ConsentExpired", expires_at):
        net.channels.functions.cooperativeClose(
            cid, 25, expires_at, net.proof(cid, 25), old_consent
        ).transact({"from": net.sender})
    # nor can the sender move the expiry: the receiver signed it
    with reverts(net.channels, "InvalidClosingSignature"):
        net.channels.functions.cooperativeClose(
            cid, 25, expires_at + 1000, net.proof(cid, 25), old_consent
        ).transact({"from": net.sender})
    assert net.state(cid) == (net.sender, 0, net.receiver, DEPOSIT, 0)
    # The receiver, paid more since, consents again at the new balance: that one closes.
    later = net.chain.now() + 500
    net.chain.transact(
        net.channels.functions.cooperativeClose(
            cid, 60, later, net.proof(cid, 60), net.consent(cid, 60, until=later)
        ),
        net.sender,
    )
    assert net.balance(net.receiver) == USER_FUNDS + 60


def test_cooperative_close_reverts_on_proof_for_another_contract(net: Net) -> None:
    twin = deploy_contract(
        net.chain.w3, "PaymentChannels", net.token.address, CHALLENGE_PERIOD, sender=net.sender
    )
    cid = net.open()
    # Same chain, same channel id, same signers: only the verifying contract differs.
    twin_domain = ChannelDomain(net.chain.chain_id, twin.address)
    proof = proofs.sign_balance_proof(twin_domain, cid, 10, net.key(net.sender))
    consent = proofs.sign_closing_consent(twin_domain, cid, 10, UNTIL, net.key(net.receiver))
    with reverts(net.channels, "InvalidBalanceProof"):
        net.channels.functions.cooperativeClose(cid, 10, UNTIL, proof, net.consent(cid, 10)).transact(
            {"from": net.receiver}
        )
    with reverts(net.channels, "InvalidClosingSignature"):
        net.channels.functions.cooperativeClose(cid, 10, UNTIL, net.proof(cid, 10), consent).transact(
            {"from": net.receiver}
        )


def test_cooperative_close_reverts_above_deposit_and_twice(net: Net) -> None:
    cid = net.open()
    over = DEPOSIT + 1
    with reverts(net.channels, "BalanceExceedsDeposit", over, DEPOSIT):
        net.channels.functions.cooperativeClose(
            cid, over, UNTIL, net.proof(cid, over), net.consent(cid, over)
        ).transact({"from": net.receiver})
    args = (cid, 5, UNTIL, net.proof(cid, 5), net.consent(cid, 5))
    net.chain.transact(net.channels.functions.cooperativeClose(*args), net.receiver)
    with reverts(net.channels, "ChannelNotFound", cid):
        net.channels.functions.cooperativeClose(*args).transact({"from": net.receiver})
    assert net.balance(net.receiver) == USER_FUNDS + 5


def test_high_s_signature_is_rejected_on_chain_and_in_python(net: Net) -> None:
    cid = net.open()
    proof = net.proof(cid, 10)
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s = int.from_bytes(proof[32:64], "big")
    # (r, n - s, flipped v) is the same point's other valid ECDSA signature (malleability).
    twin = proof[:32] + (n - s).to_bytes(32, "big") + bytes([55 - proof[64]])
    with pytest.raises(proofs.InvalidSignatureError) as excinfo:
        proofs.recover_balance_proof_signer(net.domain, cid, 10, twin)
    assert "upper half" in excinfo.value.reason
    with reverts(net.channels, "InvalidBalanceProof"):
        net.channels.functions.cooperativeClose(cid, 10, UNTIL, twin, net.consent(cid, 10)).transact(
            {"from": net.receiver}
        )


# ---- uncooperativeClose ------------------------------------------------------------------------


def test_uncooperative_close_by_sender_state_and_event(net: Net) -> None:
    cid = net.open()
    receipt = net.chain.transact(net.channels.functions.uncooperativeClose(cid, 7, NO_SIGNATURE), net.sender)
    block = net.chain.w3.eth.get_block(receipt["blockNumber"])
    settle_after = block["timestamp"] + CHALLENGE_PERIOD
    assert events(net.channels, "ChannelCloseRequested", receipt) == [
        {"channelId": cid, "closer": net.sender, "balance": 7, "settleAfter": settle_after}
    ]
    assert net.state(cid) == (net.sender, settle_after, net.receiver, DEPOSIT, 7)
    assert net.balance(net.channels.address) == DEPOSIT


def test_uncooperative_close_by_receiver_needs_a_proof(net: Net) -> None:
    cid = net.open()
    fn = net.channels.functions.uncooperativeClose
    with reverts(net.channels, "InvalidBalanceProof"):
        fn(cid, 7, NO_SIGNATURE).transact({"from": net.receiver})
    with reverts(net.channels, "InvalidBalanceProof"):
        fn(cid, 7, net.consent(cid, 7)).transact({"from": net.receiver})
    with reverts(net.channels, "InvalidBalanceProof"):
        fn(cid, 7, net.proof(cid, 7, net.receiver)).transact({"from": net.receiver})
    receipt = net.chain.transact(fn(cid, 7, net.proof(cid, 7)), net.receiver)
    assert events(net.channels, "ChannelCloseRequested", receipt)[0]["closer"] == net.receiver
    assert net.state(cid)[4] == 7


def test_uncooperative_close_reverts(net: Net) -> None:
    cid = net.open()
    fn = net.channels.functions.uncooperativeClose
    with reverts(net.channels, "NotParticipant", net.outsider):
        fn(cid, 0, net.proof(cid, 0)).transact({"from": net.outsider})
    with reverts(net.channels, "BalanceExceedsDeposit", DEPOSIT + 1, DEPOSIT):
        fn(cid, DEPOSIT + 1, NO_SIGNATURE).transact({"from": net.sender})
    net.chain.transact(fn(cid, 0, NO_SIGNATURE), net.sender)
    # double close: a closing channel cannot be closed again, by either side
    with reverts(net.channels, "ChannelIsClosing", cid):
        fn(cid, 0, NO_SIGNATURE).transact({"from": net.sender})
    with reverts(net.channels, "ChannelIsClosing", cid):
        fn(cid, 5, net.proof(cid, 5)).transact({"from": net.receiver})


# ---- submitProof -------------------------------------------------------------------------------


def test_submit_proof_state_and_event(net: Net) -> None:
    cid = net.open()
    settle_after = net.state(cid)[1]
    net.chain.transact(net.channels.functions.uncooperativeClose(cid, 3, NO_SIGNATURE), net.sender)
    settle_after = net.state(cid)[1]
    receipt = net.chain.transact(
        net.channels.functions.submitProof(cid, 40, net.proof(cid, 40)), net.receiver
    )
    assert events(net.channels, "ClosingBalanceUpdated", receipt) == [{"channelId": cid, "balance": 40}]
    assert net.state(cid) == (net.sender, settle_after, net.receiver, DEPOSIT, 40)


def test_submit_proof_reverts(net: Net) -> None:
    cid = net.open()
    fn = net.channels.functions.submitProof
    with reverts(net.channels, "ChannelNotClosing", cid):
        fn(cid, 40, net.proof(cid, 40)).transact({"from": net.receiver})
    net.chain.transact(net.channels.functions.uncooperativeClose(cid, 40, NO_SIGNATURE), net.sender)
    with reverts(net.channels, "StaleProof", 40, 40):
        fn(cid, 40, net.proof(cid, 40)).transact({"from": net.receiver})
    with reverts(net.channels, "StaleProof", 39, 40):
        fn(cid, 39, net.proof(cid, 39)).transact({"from": net.receiver})
    with reverts(net.channels, "NotReceiver", net.sender):
        fn(cid, 50, net.proof(cid, 50)).transact({"from": net.sender})
    with reverts(net.channels, "BalanceExceedsDeposit", DEPOSIT + 1, DEPOSIT):
        fn(cid, DEPOSIT + 1, net.proof(cid, DEPOSIT + 1)).transact({"from": net.receiver})
    with reverts(net.channels, "InvalidBalanceProof"):
        fn(cid, 50, net.consent(cid, 50)).transact({"from": net.receiver})
    with reverts(net.channels, "InvalidBalanceProof"):
        fn(cid, 50, net.proof(cid, 50, net.outsider)).transact({"from": net.receiver})
    settle_after = net.state(cid)[1]
    net.chain.travel(CHALLENGE_PERIOD)
    with reverts(net.channels, "ChallengePeriodOver", settle_after):
        fn(cid, 50, net.proof(cid, 50)).transact({"from": net.receiver})
    assert net.state(cid)[4] == 40


# ---- settle ------------------------------------------------------------------------------------


def test_settle_state_and_event(net: Net) -> None:
    cid = net.open()
    net.chain.transact(net.channels.functions.uncooperativeClose(cid, 3, NO_SIGNATURE), net.sender)
    net.chain.transact(net.channels.functions.submitProof(cid, 60, net.proof(cid, 60)), net.receiver)
    net.chain.travel(CHALLENGE_PERIOD)
    receipt = net.chain.transact(net.channels.functions.settle(cid), net.outsider)
    assert events(net.channels, "ChannelSettled", receipt) == [
        {
            "channelId": cid,
            "sender": net.sender,
            "receiver": net.receiver,
            "paid": 60,
            "refunded": DEPOSIT - 60,
            "cooperative": False,
        }
    ]
    assert net.state(cid) == EMPTY
    assert (net.balance(net.sender), net.balance(net.receiver)) == (USER_FUNDS - 60, USER_FUNDS + 60)
    assert net.balance(net.channels.address) == 0


def test_settle_reverts(net: Net) -> None:
    cid = net.open()
    with reverts(net.channels, "ChannelNotClosing", cid):
        net.channels.functions.settle(cid).transact({"from": net.sender})
    net.chain.transact(net.channels.functions.uncooperativeClose(cid, 3, NO_SIGNATURE), net.sender)
    settle_after = net.state(cid)[1]
    # early settle: the challenge period is still running
    with reverts(net.channels, "ChallengePeriodActive", settle_after):
        net.channels.functions.settle(cid).transact({"from": net.sender})
    net.chain.travel(CHALLENGE_PERIOD // 2)
    with reverts(net.channels, "ChallengePeriodActive", settle_after):
        net.channels.functions.settle(cid).transact({"from": net.sender})
    net.chain.travel(CHALLENGE_PERIOD)
    net.chain.transact(net.channels.functions.settle(cid), net.sender)
    with reverts(net.channels, "ChannelNotFound", cid):
        net.channels.functions.settle(cid).transact({"from": net.sender})
    with reverts(net.channels, "ChannelNotFound", cid):
        net.channels.functions.uncooperativeClose(cid, 3, NO_SIGNATURE).transact({"from": net.sender})


# ---- replay after reopening --------------------------------------------------------------------


def test_proofs_of_a_settled_channel_do_not_work_on_its_successor(net: Net) -> None:
    old = net.open()
    old_proof, old_consent = net.proof(old, 50), net.consent(old, 50)
    net.chain.transact(
        net.channels.functions.cooperativeClose(old, 50, UNTIL, old_proof, old_consent), net.receiver
    )
    new = net.open()
    assert new == proofs.channel_id(net.sender, net.receiver, 2) != old
    # the old id is gone for good
    with reverts(net.channels, "ChannelNotFound", old):
        net.channels.functions.cooperativeClose(old, 50, UNTIL, old_proof, old_consent).transact(
            {"from": net.receiver}
        )
    # and the old signatures do not verify for the new id
    with reverts(net.channels, "InvalidBalanceProof"):
        net.channels.functions.cooperativeClose(new, 50, UNTIL, old_proof, old_consent).transact(
            {"from": net.receiver}
        )
    with reverts(net.channels, "InvalidBalanceProof"):
        net.channels.functions.uncooperativeClose(new, 50, old_proof).transact({"from": net.receiver})
    assert net.balance(net.receiver) == USER_FUNDS + 50

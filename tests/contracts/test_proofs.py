"""contracts.proofs: the Python mirror of the EIP-712 messages (chain-side checks: test_channels)."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from contracts import proofs
from contracts.proofs import ChannelDomain

KEY = bytes(range(1, 33))
SIGNER = Account.from_key(KEY).address
DOMAIN = ChannelDomain(chain_id=31337, verifying_contract="0x5fbdb2315678afecb367f032d93f642f64180aa3")
CHANNEL = proofs.channel_id(SIGNER, "0x70997970C51812dc3A010C7d01b50e0d17dc79C8", 1)


def test_domain_checksums_the_address() -> None:
    assert DOMAIN.verifying_contract == "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    assert ChannelDomain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3") == DOMAIN


BALANCES = (0, 1, 10**18, 2**256 - 1)


def test_fast_balance_proofs_equal_eth_account_typed_data() -> None:
    for balance in BALANCES:
        full = encode_typed_data(
            full_message=proofs.typed_data(proofs.BALANCE_PROOF_TYPE, DOMAIN, CHANNEL, balance)
        )
        assert proofs.balance_proof_message(DOMAIN, CHANNEL, balance) == full


def test_fast_closing_consents_equal_eth_account_typed_data() -> None:
    for balance in BALANCES:
        for expires_at in (0, 1_700_000_000, 2**256 - 1):
            data = proofs.typed_data(proofs.CLOSING_CONSENT_TYPE, DOMAIN, CHANNEL, balance, expires_at)
            assert data["types"]["ClosingConsent"][-1] == {"name": "expiresAt", "type": "uint256"}
            full = encode_typed_data(full_message=data)
            assert proofs.closing_consent_message(DOMAIN, CHANNEL, balance, expires_at) == full


def test_sign_and_recover_round_trip() -> None:
    sig = proofs.sign_balance_proof(DOMAIN, CHANNEL, 42, KEY)
    assert len(sig) == 65 and sig[64] in (27, 28)
    assert proofs.recover_balance_proof_signer(DOMAIN, CHANNEL, 42, sig) == SIGNER
    # the same signature read as another balance, another type, another domain: another address
    assert proofs.recover_balance_proof_signer(DOMAIN, CHANNEL, 43, sig) != SIGNER
    assert proofs.recover_closing_consent_signer(DOMAIN, CHANNEL, 42, 0, sig) != SIGNER
    other = ChannelDomain(1, DOMAIN.verifying_contract)
    assert proofs.recover_balance_proof_signer(other, CHANNEL, 42, sig) != SIGNER
    consent = proofs.sign_closing_consent(DOMAIN, CHANNEL, 42, 1_700_000_000, KEY)
    assert consent != sig
    assert proofs.recover_closing_consent_signer(DOMAIN, CHANNEL, 42, 1_700_000_000, consent) == SIGNER
    # the same consent read with a later expiry is no consent of the signer
    assert proofs.recover_closing_consent_signer(DOMAIN, CHANNEL, 42, 1_700_000_001, consent) != SIGNER


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda s: s[:64], "length 64"),
        (lambda s: s + b"\0", "length 66"),
        (lambda s: s[:64] + b"\x01", "v is 1"),
        (lambda s: s[:32] + b"\xff" * 32 + s[64:], "upper half"),
    ],
)
def test_recover_rejects_what_the_contract_rejects(mangle: object, reason: str) -> None:
    sig = proofs.sign_balance_proof(DOMAIN, CHANNEL, 42, KEY)
    with pytest.raises(proofs.InvalidSignatureError) as excinfo:
        proofs.recover_balance_proof_signer(DOMAIN, CHANNEL, 42, mangle(sig))  # type: ignore[operator]
    assert reason in excinfo.value.reason


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="uint256"):
        proofs.balance_proof_message(DOMAIN, CHANNEL, -1)
    with pytest.raises(ValueError, match="uint256"):
        proofs.balance_proof_message(DOMAIN, CHANNEL, 2**256)
    with pytest.raises(ValueError, match="32 bytes"):
        proofs.balance_proof_message(DOMAIN, CHANNEL[:31], 1)
    with pytest.raises(ValueError, match="primary type"):
        proofs.typed_data("Transfer", DOMAIN, CHANNEL, 1)
    with pytest.raises(ValueError, match="uint256"):
        proofs.closing_consent_message(DOMAIN, CHANNEL, 1, -1)
    with pytest.raises(ValueError, match="needs an expiry"):
        proofs.typed_data(proofs.CLOSING_CONSENT_TYPE, DOMAIN, CHANNEL, 1)
    with pytest.raises(ValueError, match="takes no expiry"):
        proofs.typed_data(proofs.BALANCE_PROOF_TYPE, DOMAIN, CHANNEL, 1, 5)

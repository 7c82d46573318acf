"""The users' payment agents: a requester's pays its invoices with balance proofs within its own
budget (:class:`PaymentAgent`); a provider's keeps the payout proofs the hub signs for it
(:func:`keep_payouts`).

Each pass reads the open invoices of the wallet's channels, oldest first, and checks them against
what the agent itself knows: every invoice must continue the last balance it signed (its
cumulative amount is the previous one plus its own amount), stay within the channel's deposit,
bill at most ``max_invoice``, and keep the total signed since the agent started within
``budget``. It signs the balance of the last invoice that passes (which pays the earlier ones
too) and stops at the first that does not, saying why: a hub that bills too much is never paid
more than the requester agreed to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from billing.ledger import Amount, format_amount
from contracts import proofs
from ipsx.sdk import ApiError, Client

log = logging.getLogger("ipsx.pay")


@dataclass
class PassResult:
    paid: list[dict[str, Any]] = field(default_factory=list)  # the invoices this pass paid (the last one)
    refused: list[tuple[int, str]] = field(default_factory=list)  # (invoice id, why)


class PaymentAgent:
    def __init__(self, client: Client, wallet: LocalAccount, *, max_invoice: int, budget: int) -> None:
        self._client = client
        self._wallet = wallet
        self.max_invoice = max_invoice
        self.budget = budget
        self.spent = 0  # base units signed away since this agent started
        self._domain: proofs.ChannelDomain | None = None

    def _channel_domain(self) -> proofs.ChannelDomain:
        if self._domain is None:
            raw = self._client.payment_domain()
            address = to_checksum_address(raw["verifying_contract"])
            self._domain = proofs.ChannelDomain(chain_id=int(raw["chain_id"]), verifying_contract=address)
        return self._domain

    def pay_once(self) -> PassResult:
        """One pass over the open invoices; see the module docstring for what is checked."""
        result = PassResult()
        mine = {
            c["channel_id"]: c
            for c in self._client.channels()
            if c["role"] == "requester" and c["sender"] == self._wallet.address and c["state"] == "open"
        }
        open_invoices = sorted(
            (i for i in self._client.invoices() if i["state"] == "open"),
            key=lambda i: int(i["cumulative"]["base_units"]),
        )
        by_channel: dict[str, list[dict[str, Any]]] = {}
        for invoice in open_invoices:
            by_channel.setdefault(invoice["channel_id"], []).append(invoice)
        for channel_id, invoices in by_channel.items():
            channel = mine.get(channel_id)
            if channel is None:
                result.refused += [(i["invoice_id"], "not a channel of this wallet") for i in invoices]
                continue
            self._pay_channel(channel, invoices, result)
        return result

    def _pay_channel(
        self, channel: dict[str, Any], invoices: list[dict[str, Any]], result: PassResult
    ) -> None:
        signed = int(channel["proof_balance"]["base_units"])
        deposit = int(channel["deposit"]["base_units"])
        expected, spend, last = signed, self.spent, None
        for invoice in invoices:
            amount, cumulative = (
                int(invoice["amount"]["base_units"]),
                int(invoice["cumulative"]["base_units"]),
            )
            why = None
            if cumulative != expected + amount:
                why = f"its cumulative {cumulative} does not continue the last balance signed ({expected})"
            elif amount > self.max_invoice:
                why = f"it bills {amount}, above the {self.max_invoice} allowed per invoice"
            elif spend + amount > self.budget:
                why = f"it would bring the total signed to {spend + amount}, over the budget {self.budget}"
            elif cumulative > deposit:
                why = f"its cumulative {cumulative} is above the channel's deposit {deposit}"
            if why is not None:
                result.refused.append((invoice["invoice_id"], why))
                log.warning("invoice %s not paid: %s", invoice["invoice_id"], why)
                break
            expected, spend, last = cumulative, spend + amount, invoice
        if last is None:
            return
        signature = proofs.sign_balance_proof(
            self._channel_domain(), bytes.fromhex(channel["channel_id"][2:]), expected, self._wallet.key
        )
        paid = self._client.pay_invoice(last["invoice_id"], "0x" + signature.hex())
        self.spent = spend
        result.paid.append(paid)
        log.info(
            "paid up to invoice %s: balance %d signed on channel %s",
            last["invoice_id"],
            expected,
            channel["channel_id"],
        )


def keep_payouts(client: Client, wallet: LocalAccount, store: Path) -> tuple[dict[str, Any], list[str]]:
    """Check the latest payout proof of each of the wallet's payout channels (the operator's
    EIP-712 signature for that channel, above the one held) and keep the highest in ``store``
    (JSON, mode 0600): with it the provider closes the channel on-chain and is paid. Returns what
    is kept and a line per channel. Raises ``OSError`` when the store cannot be read or written."""
    raw = client.payment_domain()
    domain = proofs.ChannelDomain(
        chain_id=int(raw["chain_id"]), verifying_contract=to_checksum_address(raw["verifying_contract"])
    )
    try:
        kept: dict[str, Any] = json.loads(store.read_text()) if store.exists() else {}
    except ValueError as error:
        raise OSError(f"{store} is not a JSON file of kept proofs ({error})") from None
    lines = []
    for channel in client.channels():
        if channel["role"] != "provider" or channel["receiver"] != wallet.address:
            continue
        channel_id, signature = channel["channel_id"], channel.get("proof_signature")
        balance = int(channel["proof_balance"]["base_units"])
        held = int(kept.get(channel_id, {}).get("balance", 0))
        if signature is None or balance <= held:
            lines.append(f"channel {channel_id}: {format_amount(Amount(held))} IPSX promised, nothing new")
            continue
        try:
            signer = proofs.recover_balance_proof_signer(
                domain, bytes.fromhex(channel_id[2:]), balance, bytes.fromhex(signature[2:])
            )
        except (ValueError, proofs.InvalidSignatureError):
            signer = None
        if signer != channel["sender"]:
            lines.append(f"channel {channel_id}: the proof shown is not the operator's signature; not kept")
            log.warning("payout proof on channel %s not signed by its sender: not kept", channel_id)
            continue
        kept[channel_id] = {"balance": str(balance), "signature": signature, "sender": channel["sender"]}
        lines.append(
            f"channel {channel_id}: {format_amount(Amount(balance))} IPSX promised"
            f" (was {format_amount(Amount(held))}), proof kept"
        )
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps(kept, indent=2))
    store.chmod(0o600)
    return kept, lines


async def keep_payouts_every(
    api_url: str, wallet: LocalAccount, store: Path, interval: float, stop: asyncio.Event
) -> None:
    """The provider agent's side of payouts: :func:`keep_payouts` every ``interval`` seconds
    until ``stop``, signed in with the agent's wallet; failures are logged and retried."""

    def once() -> list[str]:
        return keep_payouts(Client.sign_in(api_url, wallet), wallet, store)[1]

    while not stop.is_set():
        try:
            for line in await asyncio.to_thread(once):
                if "kept" in line:
                    log.info("%s", line)
        except (OSError, ValueError, ApiError) as error:
            log.warning("payout proofs not checked: %s", error)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)

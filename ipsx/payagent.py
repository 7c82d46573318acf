"""The requester's payment agent: pays its invoices with balance proofs, within its own budget.

Each pass reads the open invoices of the wallet's channels, oldest first, and checks them against
what the agent itself knows: every invoice must continue the last balance it signed (its
cumulative amount is the previous one plus its own amount), stay within the channel's deposit,
bill at most ``max_invoice``, and keep the total signed since the agent started within
``budget``. It signs the balance of the last invoice that passes (which pays the earlier ones
too) and stops at the first that does not, saying why: a hub that bills too much is never paid
more than the requester agreed to.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from contracts import proofs
from ipsx.sdk import Client

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

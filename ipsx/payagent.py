"""The users' payment agents: a requester's pays its invoices with balance proofs within its own
budget (:class:`PaymentAgent`); a provider's keeps the payout proofs the hub signs for it
(:func:`keep_payouts`).

Each pass reads the open invoices of the wallet's channels, oldest first, and checks them against
what the agent itself knows: every invoice must continue the channel's balance (its cumulative
amount is the previous one plus its own amount), stay within the channel's deposit, raise the
balance by at most ``max_invoice`` above the last balance the agent signed, and keep the total
signed since the agent started within ``budget``. It signs the balance of the last invoice that
passes (which pays the earlier ones too) and stops at the first that does not, saying why: a hub
that bills too much is never paid more than the requester agreed to.

The hub's word on what was signed is never taken: the agent keeps the highest balance it signed
per channel in its store (JSON, mode 0600, written before the proof is sent) and refuses to pay on
a channel whose proof balance the hub states above it. A channel not in the store is taken at the
hub's balance only when that is 0 or comes with this wallet's own signature of it.
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


DEFAULT_STORE = Path(".ipsx/signed-balances.json")  # next to `ipsx payouts`' .ipsx/payouts.json


class PaymentAgent:
    """A requester's payment agent; ``store`` keeps the balances it signed (``None``: in memory
    only, for one run). Raises ``OSError`` from :meth:`pay_once` when the store cannot be read or
    written (nothing is signed then)."""

    def __init__(
        self,
        client: Client,
        wallet: LocalAccount,
        *,
        max_invoice: int,
        budget: int,
        store: Path | None = DEFAULT_STORE,
    ) -> None:
        self._client = client
        self._wallet = wallet
        self.max_invoice = max_invoice
        self.budget = budget
        self.spent = 0  # base units signed away since this agent started
        self._domain: proofs.ChannelDomain | None = None
        self._store = store
        self._signed: dict[str, int] | None = None  # channel id -> the highest balance signed

    def signed(self, channel_id: str) -> int | None:
        """The highest balance this agent signed on the channel, or ``None`` when it never did."""
        return self._load().get(channel_id)

    def _load(self) -> dict[str, int]:
        if self._signed is None:
            self._signed = {}
            if self._store is not None and self._store.exists():
                try:
                    raw = json.loads(self._store.read_text())
                    self._signed = {str(cid): int(entry["balance"]) for cid, entry in raw.items()}
                except (ValueError, TypeError, KeyError, AttributeError) as error:
                    raise OSError(f"{self._store} is not a store of signed balances ({error})") from None
        return self._signed

    def _remember(self, channel_id: str, balance: int) -> None:
        signed = self._load()
        signed[channel_id] = balance
        if self._store is None:
            return
        self._store.parent.mkdir(parents=True, exist_ok=True)
        partial = self._store.with_name(self._store.name + ".partial")
        partial.write_text(
            json.dumps({cid: {"balance": str(b)} for cid, b in sorted(signed.items())}, indent=2)
        )
        partial.chmod(0o600)
        partial.replace(self._store)  # the store is whole or unchanged, even after a crash

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

    def _known_balance(self, channel: dict[str, Any]) -> tuple[int | None, str | None]:
        """The highest balance this agent signed on ``channel``, or ``None`` and why not to pay."""
        claimed = int(channel["proof_balance"]["base_units"])
        local = self.signed(channel["channel_id"])
        if local is not None:
            if claimed > local:
                return None, f"the hub states a proof of {claimed} on the channel; this agent signed {local}"
            return local, None
        signature = channel.get("proof_signature")
        if claimed == 0:
            return 0, None
        try:
            signer = proofs.recover_balance_proof_signer(
                self._channel_domain(),
                bytes.fromhex(channel["channel_id"][2:]),
                claimed,
                bytes.fromhex(str(signature)[2:]),
            )
        except (ValueError, proofs.InvalidSignatureError):
            signer = None
        if signer != self._wallet.address:
            return None, f"the hub states a proof of {claimed} on the channel without this wallet's signature"
        return claimed, None

    def _pay_channel(
        self, channel: dict[str, Any], invoices: list[dict[str, Any]], result: PassResult
    ) -> None:
        known, why = self._known_balance(channel)
        if known is None:
            result.refused += [(i["invoice_id"], str(why)) for i in invoices]
            log.warning("invoices of channel %s not paid: %s", channel["channel_id"], why)
            return
        deposit = int(channel["deposit"]["base_units"])
        # The hub's balance is at most ``known``: below it, the last proof sent never reached the
        # hub, and signing up to ``known`` again costs nothing new.
        expected, signed, spend, last = int(channel["proof_balance"]["base_units"]), known, self.spent, None
        for invoice in invoices:
            amount, cumulative = (
                int(invoice["amount"]["base_units"]),
                int(invoice["cumulative"]["base_units"]),
            )
            new = max(0, cumulative - signed)  # what signing it gives away beyond what was signed
            why = None
            if cumulative != expected + amount:
                why = f"its cumulative {cumulative} does not continue the channel's balance ({expected})"
            elif new > self.max_invoice:
                why = (
                    f"it bills {new} above the last balance signed ({signed}),"
                    f" above the {self.max_invoice} allowed per invoice"
                )
            elif spend + new > self.budget:
                why = f"it would bring the total signed to {spend + new}, over the budget {self.budget}"
            elif cumulative > deposit:
                why = f"its cumulative {cumulative} is above the channel's deposit {deposit}"
            if why is not None:
                result.refused.append((invoice["invoice_id"], why))
                log.warning("invoice %s not paid: %s", invoice["invoice_id"], why)
                break
            expected, signed, spend, last = cumulative, max(signed, cumulative), spend + new, invoice
        if last is None:
            return
        signature = proofs.sign_balance_proof(
            self._channel_domain(), bytes.fromhex(channel["channel_id"][2:]), expected, self._wallet.key
        )
        if expected > known:
            self._remember(channel["channel_id"], expected)  # before the proof leaves: it binds from then
        self.spent = spend
        paid = self._client.pay_invoice(last["invoice_id"], "0x" + signature.hex())
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

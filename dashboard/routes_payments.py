"""The REST API's payments: the payment-channel domain agents sign for, a requester's channels
and invoices, and paying an invoice with a balance proof."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from eth_account import Account
from eth_utils.address import to_checksum_address

from billing import chain, channels, payments
from billing.channels import Channel, ProofRejected
from billing.payments import ConsentRefused, Invoice, PaymentSettings, UnknownInvoice
from contracts import proofs
from dashboard.appkeys import PG, SETTINGS
from dashboard.pages import encode_cursor, id_cursor, page_params
from dashboard.problems import Problem, field, json_response, read_json
from dashboard.routes import amount_json, authorized
from dashboard.settings import ApiSettings

routes = web.RouteTableDef()

_MAX_ID = 2**63 - 1


def domain_of(settings: ApiSettings) -> proofs.ChannelDomain:
    """The EIP-712 domain balance proofs are signed for; Problem 503 when none is configured."""
    if settings.channels_address is None:
        raise Problem(503, "payments_unavailable", "this API node takes no channel payments")
    address = to_checksum_address(settings.channels_address)
    return proofs.ChannelDomain(chain_id=settings.chain_id, verifying_contract=address)


def payment_settings(settings: ApiSettings) -> PaymentSettings:
    """The invoicer's settings: limits, and the operator's wallet when this node signs payouts."""
    domain = None if settings.channels_address is None else domain_of(settings)
    operator = None if settings.operator_key is None else Account.from_key(settings.operator_key)
    return PaymentSettings(
        unpaid_limit=settings.unpaid_limit,
        interval=settings.invoice_interval,
        consent_ttl=settings.consent_ttl,
        operator=operator,
        domain=domain,
    )


def _invoice_json(invoice: Invoice) -> dict[str, Any]:
    return {
        "invoice_id": invoice.invoice_id,
        "channel_id": invoice.channel_id,
        "amount": amount_json(invoice.amount),
        "cumulative": amount_json(invoice.cumulative),
        "deal_ids": list(invoice.deal_ids),
        "state": invoice.state,
        "created_at": invoice.created_at.isoformat(),
        "paid_at": invoice.paid_at.isoformat() if invoice.paid_at else None,
    }


def _channel_json(channel: Channel) -> dict[str, Any]:
    return {
        "channel_id": channel.channel_id,
        "role": channel.role,
        "sender": channel.sender,
        "receiver": channel.receiver,
        "deposit": amount_json(channel.deposit),
        "state": channel.state,
        "proof_balance": amount_json(channel.proof_balance),
        "proof_signature": channel.proof_signature,
        "closing_balance": None if channel.closing_balance is None else amount_json(channel.closing_balance),
        "consented_balance": (
            amount_json(channel.consented_balance)
            if channel.frozen and channel.consented_balance is not None
            else None
        ),
        "consent_expires_at": channel.consent_expires_at if channel.frozen else None,
        "settle_after": channel.settle_after,
    }


@routes.get("/v1/payments/domain")
async def payment_domain(request: web.Request) -> web.Response:
    """Public: the EIP-712 domain of the PaymentChannels contract balance proofs are signed for."""
    domain = domain_of(request.app[SETTINGS])
    return json_response({"chain_id": domain.chain_id, "verifying_contract": domain.verifying_contract})


@routes.get("/v1/channels")
async def my_channels(request: web.Request) -> web.Response:
    """The caller's open channels, as the chain watcher confirmed them."""
    caller = await authorized(request)
    found = [
        channel
        for role in channels.ROLES
        for channel in await channels.for_account(request.app[PG], caller.account.id, role)
    ]
    return json_response({"items": [_channel_json(channel) for channel in found]})


@routes.get("/v1/invoices")
async def list_invoices(request: web.Request) -> web.Response:
    """The caller's invoices, newest first."""
    caller = await authorized(request)
    limit, cursor = page_params(request, request.app[SETTINGS].page_limit)
    before = id_cursor(cursor)
    items = await payments.listing(request.app[PG], account=caller.account.name, before=before, limit=limit)
    next_cursor = encode_cursor([items[-1].invoice_id]) if len(items) == limit else None
    return json_response({"items": [_invoice_json(item) for item in items], "next_cursor": next_cursor})


@routes.post("/v1/invoices/{invoice_id}/payment")
async def pay_invoice(request: web.Request) -> web.Response:
    """Pay an invoice with the channel sender's balance proof of its cumulative amount."""
    caller = await authorized(request, "trade")
    text = request.match_info["invoice_id"]
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= _MAX_ID:
        raise Problem(404, "not_found", "no invoice of yours has this id")
    domain = domain_of(request.app[SETTINGS])
    body = await read_json(request)
    signature = field(body, "signature", str, max_len=200)
    try:
        invoice = await payments.pay(
            request.app[PG], int(text), signature, account=caller.account.name, domain=domain
        )
    except UnknownInvoice:
        raise Problem(404, "not_found", "no invoice of yours has this id") from None
    except ProofRejected as rejected:
        raise Problem(
            422, "proof_rejected", f"the balance proof was refused: {rejected.reason}", reason=rejected.reason
        ) from None
    return json_response(_invoice_json(invoice))


@routes.post("/v1/channels/{channel_id}/consent")
async def closing_consent(request: web.Request) -> web.Response:
    """The operator's consent to close one of the caller's requester channels cooperatively, at
    the balance B of the latest proof IPSX holds: given once every invoice is paid (and, unless
    another usable channel of the caller remains, no deal is still running), so the chain pays the
    operator exactly what the caller's settled usage cost and refunds the rest at once.

    The consent expires (``expires_at``, the last block timestamp the contract takes it in:
    ``ipsx api --consent-ttl``, an hour by default, from now) and the channel is frozen at B until
    the chain watcher has applied a block stamped after it (``billing.payments.consent``,
    ``billing.channels.FROZEN``): nothing is invoiced on it, no proof above B is accepted on it,
    and a caller with no other usable channel is cut off (402 at the gateways) until it opens
    another or the consent expires unused. Asking again before the expiry returns the same consent;
    after it, a new one.

    Problems: 404 not a requester channel of the caller; 409 ``conflict`` (closing or settled, or
    frozen by a consent given before consents expired), ``unpaid_usage`` (``owed``) or
    ``deals_running`` (``running``); 503 no operator key here, or a contract that would refuse the
    consent (another version, as the chain watcher read it: ``billing.chain.domain_problem``).
    """
    caller = await authorized(request, "trade")
    settings = request.app[SETTINGS]
    domain = domain_of(settings)
    if settings.operator_key is None:
        raise Problem(503, "payments_unavailable", "this API node does not sign for the operator")
    pool = request.app[PG]
    try:
        channel = await channels.get(pool, request.match_info["channel_id"].lower())
    except ValueError:
        channel = None
    if channel is None or channel.account_id != caller.account.id or channel.role != "requester":
        raise Problem(404, "not_found", "no requester channel of yours has this id")
    # Checked before the channel is frozen: a consent the contract refuses would freeze it for nothing.
    refusal = await chain.domain_problem(pool, domain.verifying_contract)
    if refusal is not None:
        raise Problem(
            503,
            "payments_unavailable",
            f"the PaymentChannels contract {domain.verifying_contract} would refuse this consent "
            f"({refusal}); the operator must deploy this IPSX's contracts",
        )
    try:
        frozen = await payments.consent(pool, channel, ttl=payment_settings(settings).consent_ttl)
    except ConsentRefused as refused:
        raise _consent_problem(refused) from None
    if frozen.consented_balance is None:  # consent() always sets it; never sign an open-ended consent
        raise RuntimeError(f"channel {frozen.channel_id} was not frozen")
    if frozen.consent_expires_at is None:  # given before consents expired: the caller holds it already
        raise Problem(409, "conflict", "the channel is frozen by a consent given for good", state="frozen")
    balance, expires_at = int(frozen.consented_balance), frozen.consent_expires_at
    consent = proofs.sign_closing_consent(
        domain, channel.id_bytes, balance, expires_at, Account.from_key(settings.operator_key).key
    )
    return json_response(
        {
            "channel_id": channel.channel_id,
            "balance": amount_json(balance),
            "expires_at": expires_at,
            "balance_signature": frozen.proof_signature,
            "consent_signature": "0x" + consent.hex(),
        }
    )


def _consent_problem(refused: ConsentRefused) -> Problem:
    if refused.reason == "unpaid_usage":
        return Problem(
            409,
            "unpaid_usage",
            f"pay your invoices first: {refused.owed} base units are unpaid",
            owed=str(refused.owed),
        )
    if refused.reason == "deals_running":
        return Problem(
            409,
            "deals_running",
            f"{refused.running} deal(s) of yours still run: wait for them to end, or open another channel",
            running=refused.running,
        )
    return Problem(409, "conflict", f"the channel is {refused.state}", state=refused.state)

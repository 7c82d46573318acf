"""OpenAPI entries of channel payments (``routes_payments.py``): the EIP-712 domain balance proofs
are signed for, the caller's payment channels and the operator's consent to close one, invoices
and paying them with a balance proof; with the ``Channel`` and ``Invoice`` schemas. Merged by
``openapi.document()``.
"""

from __future__ import annotations

from typing import Any

from dashboard.openapi_base import (
    _AUTH_ERRORS,
    _BODY_ERRORS,
    _NULLABLE_STR,
    _PAGE_ERRORS,
    _PAGE_PARAMS,
    _SECURED,
    _STR,
    _json,
    _object_body,
    _page,
    _problem,
    _ref,
)

SCHEMAS: dict[str, Any] = {
    "Channel": {
        "type": "object",
        "required": ["channel_id", "role", "sender", "receiver", "deposit", "state", "proof_balance"],
        "properties": {
            "channel_id": _STR,
            "role": {"enum": ["requester", "provider"]},
            "sender": _STR,
            "receiver": _STR,
            "deposit": _ref("Amount"),
            "state": {"enum": ["open", "closing", "settled"]},
            "proof_balance": _ref("Amount"),
            "proof_signature": {
                "type": ["string", "null"],
                "description": "the sender's balance proof of proof_balance: on a payout channel, the "
                "operator's promise the provider can close the channel with",
            },
            "closing_balance": {"oneOf": [_ref("Amount"), {"type": "null"}]},
            "consented_balance": {
                "oneOf": [_ref("Amount"), {"type": "null"}],
                "description": "the balance the operator consented to close this requester channel at: "
                "the channel is frozen (no more invoices on it, no proof above it accepted) until the "
                "operator's chain watcher has applied a block stamped after consent_expires_at; null: no "
                "consent given, or a later proof replaced it",
            },
            "consent_expires_at": {
                "type": ["integer", "null"],
                "description": "the last block timestamp (unix seconds) at which the contract takes "
                "that consent; null with a consented_balance: a consent given for good, before consents "
                "expired",
            },
            "settle_after": {"type": ["integer", "null"]},
        },
    },
    "Invoice": {
        "type": "object",
        "required": ["invoice_id", "channel_id", "amount", "cumulative", "deal_ids", "state", "created_at"],
        "properties": {
            "invoice_id": {"type": "integer"},
            "channel_id": _STR,
            "amount": _ref("Amount"),
            "cumulative": _ref("Amount"),
            "deal_ids": {"type": "array", "items": _STR},
            "state": {"enum": ["open", "paid"]},
            "created_at": _STR,
            "paid_at": _NULLABLE_STR,
        },
    },
}

PATHS: dict[str, Any] = {
    "/v1/payments/domain": {
        "get": {
            "operationId": "paymentDomain",
            "summary": "Public: the EIP-712 domain balance proofs are signed for",
            "responses": {
                "200": _json(
                    "the chain id and the PaymentChannels contract",
                    {
                        "type": "object",
                        "required": ["chain_id", "verifying_contract"],
                        "properties": {"chain_id": {"type": "integer"}, "verifying_contract": _STR},
                    },
                ),
                "503": _problem("this API node takes no channel payments"),
            },
        }
    },
    "/v1/channels": {
        "get": {
            "operationId": "myChannels",
            "summary": "Your open payment channels, as the chain watcher confirmed them",
            "security": _SECURED,
            "responses": {
                "200": _json(
                    "the caller's channels",
                    {
                        "type": "object",
                        "required": ["items"],
                        "properties": {"items": {"type": "array", "items": _ref("Channel")}},
                    },
                ),
                **_AUTH_ERRORS,
            },
        }
    },
    "/v1/channels/{channel_id}/consent": {
        "post": {
            "operationId": "channelConsent",
            "summary": "The operator's consent to close your requester channel cooperatively",
            "description": "Given once every invoice is paid (and, unless you have another usable "
            "channel, no deal of yours is still running), at the balance of your latest proof, "
            "which it returns with it: submit both, with expires_at, to cooperativeClose (ipsx "
            "channel close) in a block stamped expires_at or earlier (an hour from now by default, ipsx "
            "api --consent-ttl); "
            "later the contract refuses it (ConsentExpired). Until then the channel is frozen at that "
            "balance: nothing more is invoiced on it, no proof above it is accepted, and without "
            "another usable channel you are cut off (402 at the gateways) until you open one. Once the "
            "operator's chain watcher has applied a block stamped after the expiry, the channel is "
            "usable again. Asking again before the expiry "
            "returns the same consent; after it, a new one.",
            "security": _SECURED,
            "parameters": [{"name": "channel_id", "in": "path", "required": True, "schema": _STR}],
            "responses": {
                "200": _json(
                    "the balance, your proof of it and the operator's consent",
                    {
                        "type": "object",
                        "required": [
                            "channel_id",
                            "balance",
                            "expires_at",
                            "balance_signature",
                            "consent_signature",
                        ],
                        "properties": {
                            "channel_id": _STR,
                            "balance": _ref("Amount"),
                            "expires_at": {
                                "type": "integer",
                                "description": "the last block timestamp (unix seconds) the "
                                "contract takes the consent in",
                            },
                            "balance_signature": _NULLABLE_STR,
                            "consent_signature": {
                                "type": "string",
                                "description": "the operator's EIP-712 signature of "
                                "ClosingConsent(channelId, balance, expiresAt)",
                            },
                        },
                    },
                ),
                "404": _problem("no requester channel of the caller has this id"),
                "409": _problem(
                    "the channel is closing, settled or frozen for good by an earlier consent "
                    "(conflict), invoices are unpaid (unpaid_usage) or deals still run with no other "
                    "usable channel (deals_running)"
                ),
                "503": _problem(
                    "this API node does not sign for the operator, or the contract would refuse the "
                    "consent (another version, as the chain watcher read it)"
                ),
                **_AUTH_ERRORS,
            },
        }
    },
    "/v1/invoices": {
        "get": {
            "operationId": "listInvoices",
            "summary": "What your settled deals cost, billed to your channel, newest first",
            "security": _SECURED,
            "parameters": _PAGE_PARAMS,
            "responses": {"200": _json("the caller's invoices", _page("Invoice")), **_PAGE_ERRORS},
        }
    },
    "/v1/invoices/{invoice_id}/payment": {
        "post": {
            "operationId": "payInvoice",
            "summary": "Pay an invoice with your balance proof of its cumulative amount",
            "description": "The proof is your EIP-712 BalanceProof(channelId, balance) signature "
            "for the domain of /v1/payments/domain; it pays this invoice and every earlier one of "
            "the channel.",
            "security": _SECURED,
            "parameters": [
                {
                    "name": "invoice_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 1},
                }
            ],
            "requestBody": _object_body(
                ["signature"], {"signature": {"type": "string", "pattern": "^0x[0-9a-fA-F]{130}$"}}
            ),
            "responses": {
                "200": _json("the invoice, paid", _ref("Invoice")),
                "404": _problem("no invoice of the caller has this id"),
                "422": _problem("the balance proof was refused (reason says why)"),
                "503": _problem("this API node takes no channel payments"),
                **_BODY_ERRORS,
                **_AUTH_ERRORS,
            },
        }
    },
}

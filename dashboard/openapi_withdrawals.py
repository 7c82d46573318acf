"""OpenAPI entries of withdrawals (``routes_withdrawals.py``): asking for one, listing, reading
and cancelling them, and the operator's approval, completion or rejection; with the ``Withdrawal``
schema.
Merged by ``openapi.document()``.
"""

from __future__ import annotations

from typing import Any

from dashboard.openapi_base import (
    _AUTH_ERRORS,
    _BODY_ERRORS,
    _IDEMPOTENCY,
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

_WITHDRAWAL_ID = {
    "name": "withdrawal_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}

SCHEMAS: dict[str, Any] = {
    "Withdrawal": {
        "type": "object",
        "required": ["withdrawal_id", "source", "amount", "address", "state", "created_at"],
        "properties": {
            "withdrawal_id": {"type": "integer"},
            "source": {"enum": ["balance", "earnings"]},
            "amount": _ref("Amount"),
            "address": {"type": "string", "description": "the account's wallet, where the tokens go"},
            "state": {
                "enum": ["pending", "sending", "completed", "failed", "rejected", "cancelled"],
                "description": "sending: its transfer waits for confirmations; failed: the transfer "
                "reverted, the funds are still reserved until the operator approves it again or "
                "rejects it",
            },
            "tx_hash": {**_NULLABLE_STR, "description": "the transfer, once completed"},
            "reason": {**_NULLABLE_STR, "description": "why it was rejected or failed"},
            "key_id": _NULLABLE_STR,
            "created_at": _STR,
            "resolved_at": _NULLABLE_STR,
            "approved_at": {**_NULLABLE_STR, "description": "when the operator approved it"},
        },
    },
}

PATHS: dict[str, Any] = {
    "/v1/withdrawals": {
        "get": {
            "operationId": "listWithdrawals",
            "security": _SECURED,
            "parameters": _PAGE_PARAMS,
            "responses": {
                "200": _json("the caller's withdrawals, newest first", _page("Withdrawal")),
                **_PAGE_ERRORS,
            },
        },
        "post": {
            "operationId": "requestWithdrawal",
            "summary": "Reserve funds to be sent to your wallet address (needs the withdraw scope)",
            "security": _SECURED,
            "parameters": [{**_IDEMPOTENCY, "description": "the same key from the same account asks once"}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["amount"],
                            "properties": {
                                "amount": {"type": "string", "pattern": "^[1-9][0-9]{0,77}$"},
                                "source": {"enum": ["balance", "earnings"], "default": "balance"},
                            },
                        }
                    }
                },
            },
            "responses": {
                "201": _json("the withdrawal, pending", _ref("Withdrawal")),
                "200": _json("the withdrawal this Idempotency-Key already asked for", _ref("Withdrawal")),
                "402": _problem("the balance or earnings do not cover the amount"),
                "409": _problem("the Idempotency-Key was used for another withdrawal"),
                **_BODY_ERRORS,
                **_AUTH_ERRORS,
            },
        },
    },
    "/v1/withdrawals/{withdrawal_id}": {
        "parameters": [_WITHDRAWAL_ID],
        "get": {
            "operationId": "getWithdrawal",
            "security": _SECURED,
            "responses": {
                "200": _json("the withdrawal", _ref("Withdrawal")),
                "404": _problem("no withdrawal of the caller has this id"),
                **_AUTH_ERRORS,
            },
        },
        "delete": {
            "operationId": "cancelWithdrawal",
            "summary": "Take back a pending or failed withdrawal (needs the withdraw scope)",
            "security": _SECURED,
            "responses": {
                "200": _json("the withdrawal, cancelled", _ref("Withdrawal")),
                "404": _problem("no withdrawal of the caller has this id"),
                "409": _problem("the withdrawal is neither pending nor failed"),
                **_AUTH_ERRORS,
            },
        },
    },
    "/v1/withdrawals/{withdrawal_id}/completion": {
        "post": {
            "operationId": "completeWithdrawal",
            "summary": "Operator: the tokens were sent by hand, outside IPSX, in this transaction",
            "security": _SECURED,
            "parameters": [_WITHDRAWAL_ID],
            "requestBody": _object_body(
                ["tx_hash"], {"tx_hash": {"type": "string", "pattern": "^0x[0-9a-fA-F]{64}$"}}
            ),
            "responses": {
                "200": _json("the withdrawal, completed", _ref("Withdrawal")),
                "404": _problem("no withdrawal has this id"),
                "409": _problem("the withdrawal is neither pending nor failed"),
                **_BODY_ERRORS,
                **_AUTH_ERRORS,
            },
        }
    },
    "/v1/withdrawals/{withdrawal_id}/approval": {
        "post": {
            "operationId": "approveWithdrawal",
            "summary": "Operator: let the chain payer send it (above its approval limit, or failed)",
            "security": _SECURED,
            "parameters": [_WITHDRAWAL_ID],
            "responses": {
                "200": _json("the withdrawal, pending and approved", _ref("Withdrawal")),
                "404": _problem("no withdrawal has this id"),
                "409": _problem("the withdrawal is neither pending nor failed"),
                **_AUTH_ERRORS,
            },
        }
    },
    "/v1/withdrawals/{withdrawal_id}/rejection": {
        "post": {
            "operationId": "rejectWithdrawal",
            "summary": "Operator: refuse the withdrawal; its funds go back",
            "security": _SECURED,
            "parameters": [_WITHDRAWAL_ID],
            "requestBody": _object_body(
                ["reason"], {"reason": {"type": "string", "minLength": 1, "maxLength": 200}}
            ),
            "responses": {
                "200": _json("the withdrawal, rejected", _ref("Withdrawal")),
                "404": _problem("no withdrawal has this id"),
                "409": _problem("the withdrawal is neither pending nor failed"),
                **_BODY_ERRORS,
                **_AUTH_ERRORS,
            },
        }
    },
}

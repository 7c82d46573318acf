"""OpenAPI entries of deals (``routes_deals.py``, ``routes_anchors.py``): listing and reading
deals, the parties' reports on them, a settled deal's anchored inclusion proof, and the
operator's resolution of a dispute; with the ``Deal`` and ``AnchorProof`` schemas. Merged by
``openapi.document()``.
"""

from __future__ import annotations

from typing import Any

from dashboard.openapi_base import (
    _AUTH_ERRORS,
    _BODY_ERRORS,
    _PAGE_ERRORS,
    _PAGE_PARAMS,
    _SECURED,
    _STR,
    _json,
    _page,
    _problem,
    _ref,
)

_HASH = {"type": "string", "pattern": "^0x[0-9a-f]{64}$"}
_DIGITS = {"type": "string", "pattern": "^[0-9]+$"}
_ANCHOR_RECORD = {
    "version": {"const": 1},
    "deal_id": _STR,
    "requester": _STR,
    "provider": _STR,
    "exit_id": _STR,
    "price_per_gb": _DIGITS,
    "price_per_hour": _DIGITS,
    "billable_bytes": {"type": "integer", "minimum": 0},
    "charge": _DIGITS,
    "commission": _DIGITS,
    "settled_at": {"type": "integer", "minimum": 0},
}
_ANCHOR_PROOF = {
    "deal_id": _STR,
    "record": {"type": "object", "required": list(_ANCHOR_RECORD), "properties": _ANCHOR_RECORD},
    "encoded_record": {"type": "string", "pattern": "^0x([0-9a-f]{2})*$"},
    "leaf": _HASH,
    "leaf_index": {"type": "integer", "minimum": 0},
    "proof": {"type": "array", "items": _HASH},
    "batch_id": {"type": "integer", "minimum": 1},
    "root": _HASH,
    "record_count": {"type": "integer", "minimum": 1},
    "contract": {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"},
    "chain_id": {"type": "integer"},
    "tx_hash": _HASH,
    "block_number": {"type": "integer", "minimum": 0},
}

SCHEMAS: dict[str, Any] = {
    "Deal": {
        "type": "object",
        "required": ["deal_id", "role", "state", "exit_id", "price_per_gb", "price_per_hour", "reserve"],
        "properties": {
            "deal_id": _STR,
            "role": {"enum": ["requester", "provider"]},
            "state": {
                "enum": [
                    "proposed",
                    "active",
                    "completed",
                    "cancelled",
                    "expired",
                    "disputed",
                    "resolved",
                    "settled",
                ]
            },
            "exit_id": _STR,
            "requester": _STR,
            "provider": _STR,
            "spot": {"type": "boolean"},
            "price_per_gb": _ref("Amount"),
            "price_per_hour": _ref("Amount"),
            "reserve": _ref("Amount"),
            "charge": {"oneOf": [_ref("Amount"), {"type": "null"}]},
            "commission": {"oneOf": [_ref("Amount"), {"type": "null"}]},
            "billable_bytes": {"type": ["integer", "null"]},
            "created_at": _STR,
            "transitions": {"type": "array", "items": {"type": "object"}},
        },
    },
    "AnchorProof": {
        "type": "object",
        "description": "A settled deal's inclusion proof in a batch anchored on DealAnchor. The leaf is "
        "keccak256(keccak256(encoded_record)); encoded_record is the ABI encoding of the record's fields "
        "(version, deal_id, requester, provider, exit_id, price_per_gb, price_per_hour, billable_bytes, "
        "charge, commission, settled_at), built from the deal as the books hold it now.",
        "required": list(_ANCHOR_PROOF),
        "properties": _ANCHOR_PROOF,
    },
}

PATHS: dict[str, Any] = {
    "/v1/deals": {
        "get": {
            "operationId": "listDeals",
            "security": _SECURED,
            "parameters": _PAGE_PARAMS,
            "responses": {
                "200": _json("your deals as requester or provider, newest first", _page("Deal")),
                **_PAGE_ERRORS,
            },
        }
    },
    "/v1/deals/{deal_id}": {
        "get": {
            "operationId": "getDeal",
            "security": _SECURED,
            "parameters": [{"name": "deal_id", "in": "path", "required": True, "schema": _STR}],
            "responses": {
                "200": _json("the deal and every transition, with who caused it", _ref("Deal")),
                "404": _problem("you have no deal with this id"),
                **_AUTH_ERRORS,
            },
        }
    },
    "/v1/deals/{deal_id}/reports": {
        "post": {
            "operationId": "reportOnDeal",
            "summary": "Report on your deal as its provider (ready, serving, stopped) or "
            "requester (accepted, ok, complaint); either may cancel it before it is active",
            "description": "A complaint disputes the deal: its reserve stays held until an "
            "operator decides what it bills.",
            "security": _SECURED,
            "parameters": [{"name": "deal_id", "in": "path", "required": True, "schema": _STR}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["report"],
                            "additionalProperties": False,
                            "properties": {
                                "report": {
                                    "type": "string",
                                    "enum": [
                                        "ready",
                                        "serving",
                                        "stopped",
                                        "accepted",
                                        "ok",
                                        "complaint",
                                        "cancel",
                                    ],
                                }
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": _json("the deal's state after the report", {"type": "object"}),
                "404": _problem("you are no party to an open deal with this id"),
                "409": _problem("the deal's state does not take this report"),
                "503": _problem("no API node runs the market right now"),
                **_BODY_ERRORS,
                **_AUTH_ERRORS,
            },
        }
    },
    "/v1/deals/{deal_id}/anchor": {
        "get": {
            "operationId": "getDealAnchor",
            "summary": "A settled deal's record and its inclusion proof in a batch anchored on-chain",
            "description": "For the deal's requester or provider, or an operator key. Check it "
            "with `ipsx verify DEAL`, or with DealAnchor.verify(batch_id, leaf, proof).",
            "security": _SECURED,
            "parameters": [{"name": "deal_id", "in": "path", "required": True, "schema": _STR}],
            "responses": {
                "200": _json("the record, leaf, proof and anchored batch", _ref("AnchorProof")),
                "404": _problem("you have no deal with this id in an anchored batch (yet)"),
                "409": _problem("the deal is no longer a settled deal"),
                **_AUTH_ERRORS,
            },
        }
    },
    "/v1/deals/{deal_id}/resolution": {
        "post": {
            "operationId": "resolveDispute",
            "summary": "Operator: decide what a disputed deal bills; the market then settles it",
            "description": "Needs an API key with the operator scope, which only "
            "`ipsx key create --scopes operator` grants.",
            "security": _SECURED,
            "parameters": [{"name": "deal_id", "in": "path", "required": True, "schema": _STR}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {
                                    "type": "object",
                                    "required": ["bill"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "bill": {
                                            "type": "string",
                                            "enum": ["gateway", "agent", "lower", "none"],
                                        }
                                    },
                                },
                                {
                                    "type": "object",
                                    "required": ["billable_bytes"],
                                    "additionalProperties": False,
                                    "properties": {"billable_bytes": {"type": "integer", "minimum": 0}},
                                },
                            ]
                        }
                    }
                },
            },
            "responses": {
                "200": _json("the deal, resolved", {"type": "object"}),
                "404": _problem("no deal has this id"),
                "409": _problem("the deal is not disputed"),
                "503": _problem("no API node runs the market right now"),
                **_BODY_ERRORS,
                **_AUTH_ERRORS,
            },
        }
    },
}

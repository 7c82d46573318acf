"""The API's anchoring routes: a settled deal's inclusion proof in a batch anchored on-chain.

The record reveals the deal's prices, so only its requester, its provider or an operator key may
read it. The record served is the deal as the books hold it *now*, encoded canonically; the proof
is the one anchored. So a deal changed after anchoring no longer verifies: that is the point.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from billing import accounts, anchor_proofs
from dashboard.appkeys import PG
from dashboard.path_ids import DEAL_ID, path_id
from dashboard.problems import Problem, json_response
from dashboard.routes import authorized

routes = web.RouteTableDef()

_NOT_FOUND = (
    "you have no deal with this id in an anchored batch (deals are anchored some time after they settle)"
)


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()


@routes.get("/v1/deals/{deal_id}/anchor")
async def deal_anchor(request: web.Request) -> web.Response:
    """The deal's record, leaf and proof, its batch's root, and where the batch was anchored."""
    caller = await authorized(request)
    pool = request.app[PG]
    deal_id = path_id(request, "deal_id", DEAL_ID, _NOT_FOUND)
    operator = caller.key is not None and accounts.OPERATOR in caller.key.scopes
    party = await pool.fetchval(
        "SELECT 1 FROM deals WHERE deal_id = $1 AND (requester = $2 OR provider = $2 OR $3)",
        deal_id,
        caller.account.name,
        operator,
    )
    found = None if party is None else await anchor_proofs.proof_for(pool, deal_id)
    if found is None:
        raise Problem(404, "not_found", _NOT_FOUND)
    record = await anchor_proofs.current_record(pool, deal_id)
    try:
        encoded = None if record is None else record.encode()
    except ValueError:
        encoded = None
    if record is None or encoded is None:
        raise Problem(409, "deal_changed", "the deal is no longer a settled deal: it cannot verify")
    body: dict[str, Any] = {
        "deal_id": deal_id,
        "record": record.to_json(),
        "encoded_record": _hex(encoded),
        "leaf": _hex(found.leaf),
        "leaf_index": found.leaf_index,
        "proof": [_hex(node) for node in found.proof],
        "batch_id": found.batch_id,
        "root": _hex(found.root),
        "record_count": found.record_count,
        "contract": found.contract,
        "chain_id": found.chain_id,
        "tx_hash": found.tx_hash,
        "block_number": found.block_number,
    }
    return json_response(body)

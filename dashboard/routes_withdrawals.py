"""The REST API's withdrawals: an account asks to take funds out to its wallet; the chain payer
sends them (the operator approves those above its limit, or failed ones again), or the operator
completes one by hand (with the transfer's hash); the operator may reject, and the owner cancel,
one that is pending or failed."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from billing import accounts, ledger, withdrawals
from billing.errors import InsufficientFunds, InvalidAmount
from billing.withdrawals import ReferenceReused, UnknownWithdrawal, Withdrawal, WithdrawalResolved
from dashboard.appkeys import PG, SETTINGS
from dashboard.pages import encode_cursor, id_cursor, page_params
from dashboard.problems import Problem, field, json_response, read_json
from dashboard.routes import amount_json, authorized, idempotency_reference

routes = web.RouteTableDef()

_MAX_ID = 2**63 - 1


def _json(withdrawal: Withdrawal) -> dict[str, Any]:
    return {
        "withdrawal_id": withdrawal.id,
        "source": withdrawal.source,
        "amount": amount_json(withdrawal.amount),
        "address": withdrawal.address,
        "state": withdrawal.state,
        "tx_hash": withdrawal.tx_hash,
        "reason": withdrawal.reason,
        "key_id": withdrawal.key_id,
        "created_at": withdrawal.created_at.isoformat(),
        "resolved_at": withdrawal.resolved_at.isoformat() if withdrawal.resolved_at else None,
        "approved_at": withdrawal.approved_at.isoformat() if withdrawal.approved_at else None,
    }


def _withdrawal_id(request: web.Request) -> int:
    text = request.match_info["withdrawal_id"]
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= _MAX_ID:
        raise Problem(404, "not_found", "no withdrawal has this id")
    return int(text)


def _resolved(error: WithdrawalResolved) -> Problem:
    return Problem(409, "conflict", f"the withdrawal is already {error.state}", state=error.state)


@routes.post("/v1/withdrawals")
async def request_withdrawal(request: web.Request) -> web.Response:
    """Reserve an amount of the caller's balance or earnings to be sent to its wallet address."""
    caller = await authorized(request, accounts.WITHDRAW)
    reference = idempotency_reference(request, caller.account.name)
    body = await read_json(request)
    amount = field(body, "amount", str, max_len=80)
    if not (amount.isascii() and amount.isdigit()) or amount.startswith("0"):
        raise Problem(422, "invalid_field", "'amount' must be positive base units, as digits", field="amount")
    source = field(body, "source", str, optional=True, max_len=20) or "balance"
    if source not in withdrawals.SOURCES:
        raise Problem(422, "invalid_field", "'source' must be 'balance' or 'earnings'", field="source")
    try:
        withdrawal, created = await withdrawals.request(
            request.app[PG],
            account_name=caller.account.name,
            amount=ledger.Amount(int(amount)),
            source=source,
            reference=reference,
            key_id=caller.key_id,
        )
    except InvalidAmount as error:
        raise Problem(422, "invalid_field", f"'amount' {error.reason}", field="amount") from None
    except InsufficientFunds as error:
        raise Problem(
            402,
            "insufficient_funds",
            f"the {source} has {error.available} base units available",
            available=str(error.available),
        ) from None
    except ReferenceReused:
        raise Problem(409, "conflict", "this idempotency key was used for another withdrawal") from None
    return json_response(_json(withdrawal), 201 if created else 200)


@routes.get("/v1/withdrawals")
async def list_withdrawals(request: web.Request) -> web.Response:
    """The caller's withdrawals, newest first."""
    caller = await authorized(request)
    limit, cursor = page_params(request, request.app[SETTINGS].page_limit)
    items = await withdrawals.listing(
        request.app[PG],
        account_name=caller.account.name,
        before=id_cursor(cursor),
        limit=limit,
    )
    next_cursor = encode_cursor([items[-1].id]) if len(items) == limit else None
    return json_response({"items": [_json(item) for item in items], "next_cursor": next_cursor})


@routes.get("/v1/withdrawals/{withdrawal_id}")
async def get_withdrawal(request: web.Request) -> web.Response:
    caller = await authorized(request)
    withdrawal = await withdrawals.get(request.app[PG], _withdrawal_id(request))
    if withdrawal is None or withdrawal.account != caller.account.name:
        raise Problem(404, "not_found", "no withdrawal of yours has this id")
    return json_response(_json(withdrawal))


@routes.delete("/v1/withdrawals/{withdrawal_id}")
async def cancel_withdrawal(request: web.Request) -> web.Response:
    """The owner takes back a pending (or failed) withdrawal; its funds are available again."""
    caller = await authorized(request, accounts.WITHDRAW)
    try:
        withdrawal = await withdrawals.cancel(
            request.app[PG], _withdrawal_id(request), account_name=caller.account.name
        )
    except UnknownWithdrawal:
        raise Problem(404, "not_found", "no withdrawal of yours has this id") from None
    except WithdrawalResolved as error:
        raise _resolved(error) from None
    return json_response(_json(withdrawal))


@routes.post("/v1/withdrawals/{withdrawal_id}/completion")
async def complete_withdrawal(request: web.Request) -> web.Response:
    """Operator: the tokens were sent in ``tx_hash``; the funds leave the books."""
    await authorized(request, accounts.OPERATOR)
    body = await read_json(request)
    tx_hash = field(body, "tx_hash", str, max_len=80)
    try:
        withdrawal = await withdrawals.complete(request.app[PG], _withdrawal_id(request), tx_hash)
    except UnknownWithdrawal:
        raise Problem(404, "not_found", "no withdrawal has this id") from None
    except WithdrawalResolved as error:
        raise _resolved(error) from None
    except ValueError as error:
        raise Problem(422, "invalid_field", str(error), field="tx_hash") from None
    return json_response(_json(withdrawal))


@routes.post("/v1/withdrawals/{withdrawal_id}/approval")
async def approve_withdrawal(request: web.Request) -> web.Response:
    """Operator: let the chain payer send the withdrawal (one above its approval limit, or a
    failed one again); it is pending afterwards."""
    await authorized(request, accounts.OPERATOR)
    try:
        withdrawal = await withdrawals.approve(request.app[PG], _withdrawal_id(request))
    except UnknownWithdrawal:
        raise Problem(404, "not_found", "no withdrawal has this id") from None
    except WithdrawalResolved as error:
        raise _resolved(error) from None
    return json_response(_json(withdrawal))


@routes.post("/v1/withdrawals/{withdrawal_id}/rejection")
async def reject_withdrawal(request: web.Request) -> web.Response:
    """Operator: refuse the withdrawal, with a reason its owner sees; the funds go back."""
    await authorized(request, accounts.OPERATOR)
    body = await read_json(request)
    reason = field(body, "reason", str, max_len=withdrawals.MAX_REASON_LEN)
    try:
        withdrawal = await withdrawals.reject(request.app[PG], _withdrawal_id(request), reason)
    except UnknownWithdrawal:
        raise Problem(404, "not_found", "no withdrawal has this id") from None
    except WithdrawalResolved as error:
        raise _resolved(error) from None
    except ValueError as error:
        raise Problem(422, "invalid_field", str(error), field="reason") from None
    return json_response(_json(withdrawal))

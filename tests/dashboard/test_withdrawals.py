"""Withdrawals over the live API (httpx against ``ipsx api``): scopes, funds, idempotency, the
operator's completion and rejection, the owner's cancel, and the ledger they leave behind."""

from __future__ import annotations

import re
import secrets
import subprocess

import asyncpg
import pytest

from tests.dashboard.conftest import Api

IPSX = 10**18
TX = "0x" + "cd" * 32


def new_account(api: Api, *, credit: str = "10") -> tuple[str, str]:
    """A fresh account credited ``credit`` IPSX; returns its name and address."""
    name = f"w{secrets.token_hex(4)}"
    address = "0x" + secrets.token_hex(20)
    api.ipsx("account", "create", "--address", address, "--name", name)
    api.ipsx("account", "credit", name, credit)
    return name, address


def key(api: Api, name: str, scopes: str) -> str:
    found = re.search(r"secret: (\S+)", api.ipsx("key", "create", name, "--scopes", scopes))
    assert found is not None
    return found.group(1)


@pytest.fixture(scope="module")
def operator(api: Api) -> str:
    name, _ = new_account(api, credit="1")
    return key(api, name, "operator,read")


async def ledger_total(api: Api) -> int:
    conn = await asyncpg.connect(api.database_url)
    try:
        return int(await conn.fetchval("SELECT COALESCE(sum(balance), 0) FROM ledger_balances"))
    finally:
        await conn.close()


def test_a_key_needs_the_withdraw_scope_and_no_key_gets_it_unasked(api: Api) -> None:
    name, _ = new_account(api)
    plain = key(api, name, "read,trade,keys")
    with api.client(plain) as client:
        refused = client.post("/v1/withdrawals", json={"amount": str(IPSX)})
        assert refused.status_code == 403
        assert refused.json()["scope"] == "withdraw"
        # A sub-key made by the API without scopes copies its parent's: still no withdraw.
        child = client.post("/v1/keys", json={"label": "child"}).json()
        assert "withdraw" not in child["scopes"]
        # Asking for it from a key that lacks it is refused too.
        assert client.post("/v1/keys", json={"scopes": ["withdraw"]}).status_code == 403


def test_withdrawal_call_reserves_and_the_operator_completes_it(api: Api, operator: str) -> None:
    name, address = new_account(api)
    owner = key(api, name, "read,withdraw")
    with api.client(owner) as client:
        made = client.post("/v1/withdrawals", json={"amount": str(4 * IPSX)})
        assert made.status_code == 201, made.text
        body = made.json()
        assert (body["state"], body["source"], body["amount"]["ipsx"]) == ("pending", "balance", "4")
        assert body["address"].lower() == address.lower()
        me = client.get("/v1/me").json()["balance"]
        assert (me["available"]["ipsx"], me["reserved"]["ipsx"]) == ("6", "4")
        listed = client.get("/v1/withdrawals").json()["items"]
        assert [item["withdrawal_id"] for item in listed] == [body["withdrawal_id"]]
    wid = body["withdrawal_id"]
    with api.client(owner) as client:  # the owner cannot complete its own withdrawal
        assert client.post(f"/v1/withdrawals/{wid}/completion", json={"tx_hash": TX}).status_code == 403
    with api.client(operator) as client:
        done = client.post(f"/v1/withdrawals/{wid}/completion", json={"tx_hash": TX})
        assert done.status_code == 200, done.text
        assert (done.json()["state"], done.json()["tx_hash"]) == ("completed", TX)
        again = client.post(f"/v1/withdrawals/{wid}/rejection", json={"reason": "late"})
        assert (again.status_code, again.json()["state"]) == (409, "completed")
    with api.client(owner) as client:
        me = client.get("/v1/me").json()["balance"]
        assert (me["available"]["ipsx"], me["reserved"]["ipsx"]) == ("6", "0")
        entries = client.get("/v1/ledger").json()["items"]
        assert entries[0]["kind"] == "post" and entries[0]["credit"] == "external:chain"
        assert client.get(f"/v1/withdrawals/{wid}").json()["state"] == "completed"


def test_rejection_and_cancel_give_the_funds_back(api: Api, operator: str) -> None:
    name, _ = new_account(api)
    owner = key(api, name, "read,withdraw")
    with api.client(owner) as client:
        first = client.post("/v1/withdrawals", json={"amount": str(3 * IPSX)}).json()
        second = client.post("/v1/withdrawals", json={"amount": str(2 * IPSX)}).json()
    with api.client(operator) as client:
        rejected = client.post(
            f"/v1/withdrawals/{first['withdrawal_id']}/rejection",
            json={"reason": "address on a sanctions list"},
        )
        assert (rejected.status_code, rejected.json()["reason"]) == (200, "address on a sanctions list")
    with api.client(owner) as client:
        cancelled = client.delete(f"/v1/withdrawals/{second['withdrawal_id']}")
        assert (cancelled.status_code, cancelled.json()["state"]) == (200, "cancelled")
        assert client.delete(f"/v1/withdrawals/{second['withdrawal_id']}").status_code == 409
        me = client.get("/v1/me").json()["balance"]
        assert (me["available"]["ipsx"], me["reserved"]["ipsx"]) == ("10", "0")


def test_the_operator_approves_a_withdrawal_for_the_chain_payer(api: Api, operator: str) -> None:
    name, _ = new_account(api)
    owner = key(api, name, "read,withdraw")
    with api.client(owner) as client:
        made = client.post("/v1/withdrawals", json={"amount": str(IPSX)}).json()
        assert made["approved_at"] is None
        wid = made["withdrawal_id"]
        assert client.post(f"/v1/withdrawals/{wid}/approval").status_code == 403  # not its own to approve
    approved = api.ipsx("withdrawal", "approve", str(wid), "--api", api.url, "--token", operator)
    assert approved.startswith(f"withdrawal {wid}  pending ") and "approved" in approved
    with api.client(owner) as client:
        body = client.get(f"/v1/withdrawals/{wid}").json()
        assert body["state"] == "pending" and body["approved_at"] is not None
    with api.client(operator) as client:
        assert client.post(f"/v1/withdrawals/{wid}/rejection", json={"reason": "no"}).status_code == 200
        late = client.post(f"/v1/withdrawals/{wid}/approval")
        assert (late.status_code, late.json()["state"]) == (409, "rejected")
        assert client.post("/v1/withdrawals/999999999/approval").status_code == 404


def test_withdrawal_above_the_balance_is_402_and_moves_nothing(api: Api) -> None:
    name, _ = new_account(api, credit="1.5")
    owner = key(api, name, "read,withdraw")
    with api.client(owner) as client:
        short = client.post("/v1/withdrawals", json={"amount": str(2 * IPSX)})
        assert short.status_code == 402
        assert short.headers["content-type"] == "application/problem+json"
        assert short.json()["available"] == str(15 * 10**17)
        earnings = client.post("/v1/withdrawals", json={"amount": "1", "source": "earnings"})
        assert (earnings.status_code, earnings.json()["available"]) == (402, "0")
        assert client.get("/v1/withdrawals").json()["items"] == []


@pytest.mark.parametrize(
    "body",
    [{}, {"amount": 5}, {"amount": "0"}, {"amount": "-1"}, {"amount": "01"}, {"amount": "1e18"},
     {"amount": "9" * 81}, {"amount": "1", "source": "treasury"}, {"amount": "1", "source": None},
     {"amount": "\uff11\uff12"}],  # full-width digits: str.isdigit() says yes, the schema says no
)  # fmt: skip
def test_malformed_withdrawal_bodies_are_422(api: Api, body: dict[str, object]) -> None:
    name, _ = new_account(api)
    with api.client(key(api, name, "withdraw,read")) as client:
        answer = client.post("/v1/withdrawals", json=body)
        assert answer.status_code == 422, answer.text
        assert client.get("/v1/withdrawals").json()["items"] == []


def test_an_idempotency_key_asks_once(api: Api) -> None:
    name, _ = new_account(api)
    owner = key(api, name, "read,withdraw")
    with api.client(owner) as client:
        headers = {"Idempotency-Key": "payout-2026-11"}
        first = client.post("/v1/withdrawals", json={"amount": str(IPSX)}, headers=headers)
        retry = client.post("/v1/withdrawals", json={"amount": str(IPSX)}, headers=headers)
        assert (first.status_code, retry.status_code) == (201, 200)
        assert first.json()["withdrawal_id"] == retry.json()["withdrawal_id"]
        other = client.post("/v1/withdrawals", json={"amount": str(2 * IPSX)}, headers=headers)
        assert other.status_code == 409
        assert client.get("/v1/me").json()["balance"]["available"]["ipsx"] == "9"


def test_another_accounts_withdrawal_is_not_found(api: Api, operator: str) -> None:
    name, _ = new_account(api)
    other, _ = new_account(api)
    with api.client(key(api, name, "read,withdraw")) as client:
        wid = client.post("/v1/withdrawals", json={"amount": "5"}).json()["withdrawal_id"]
    with api.client(key(api, other, "read,withdraw")) as client:
        assert client.get(f"/v1/withdrawals/{wid}").status_code == 404
        assert client.delete(f"/v1/withdrawals/{wid}").status_code == 404
        assert client.get("/v1/withdrawals/abc").status_code == 404
    with api.client(operator) as client:
        assert client.post("/v1/withdrawals/999999999/completion", json={"tx_hash": TX}).status_code == 404
        bad = client.post(f"/v1/withdrawals/{wid}/completion", json={"tx_hash": "0x12"})
        assert (bad.status_code, bad.json()["field"]) == (422, "tx_hash")


async def test_the_books_still_sum_to_zero(api: Api, operator: str) -> None:
    name, _ = new_account(api)
    with api.client(key(api, name, "read,withdraw")) as client:
        wid = client.post("/v1/withdrawals", json={"amount": str(IPSX)}).json()["withdrawal_id"]
    with api.client(operator) as client:
        assert client.post(
            f"/v1/withdrawals/{wid}/completion", json={"tx_hash": "0x" + secrets.token_hex(32)}
        )
    assert await ledger_total(api) == 0


def test_the_withdrawal_commands_drive_the_api(api: Api, operator: str) -> None:
    name, address = new_account(api)
    owner = key(api, name, "read,withdraw")
    common = ("--api", api.url, "--token", owner)
    made = api.ipsx("withdrawal", "request", "2.5", *common)
    found = re.match(r"withdrawal ([0-9]+) +pending +2\.5 IPSX from balance to (0x[0-9a-fA-F]{40})", made)
    assert found is not None, made
    wid = found.group(1)
    assert found.group(2).lower() == address.lower()
    tx = "0x" + secrets.token_hex(32)  # a transaction is recorded by one withdrawal only
    completed = api.ipsx("withdrawal", "complete", wid, "--tx", tx, "--api", api.url, "--token", operator)
    assert f"withdrawal {wid}  completed" in completed and tx in completed
    listed = api.ipsx("withdrawal", "list", *common)
    assert listed.startswith(f"withdrawal {wid}  completed  2.5 IPSX")
    with pytest.raises(subprocess.CalledProcessError) as refused:
        api.ipsx("withdrawal", "request", "100", *common)
    assert "402 insufficient_funds" in refused.value.stderr


def test_numbers_in_paths_and_queries_are_ascii_digits_only(api: Api) -> None:
    name, _ = new_account(api)
    with api.client(key(api, name, "read,withdraw,keys")) as client:
        assert client.get("/v1/withdrawals", params={"limit": "\uff15"}).status_code == 400
        assert client.get("/v1/withdrawals/\uff11").status_code == 404
        refused = client.post("/v1/keys", json={"spend_limit": "\uff15"})
        assert (refused.status_code, refused.json()["field"]) == (422, "spend_limit")

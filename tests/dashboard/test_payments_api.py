"""Paying over a channel through the live API: the market's node invoices settled deals, the
requester's payment agent (the SDK's, signing real EIP-712 balance proofs) checks and pays
them within its budget, a bad proof is refused with its reason, and the cut-off list follows."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis
from eth_account import Account

from billing.keys import PAYMENT_CUTOFF
from billing.ledger import TREASURY, Amount, transfer
from contracts import proofs
from ipsx.payagent import PaymentAgent
from ipsx.sdk import ApiError, Client
from tests.dashboard.conftest import CHANNELS_ADDRESS, CONSENT_TTL, OPERATOR_KEY, REDIS_URL, Api

OPERATOR = "0x" + "0f" * 20


class Payer:
    """A requester with a channel to the operator, as the chain watcher would have recorded it."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.wallet = Account.create()
        self.name = f"p{secrets.token_hex(4)}"
        self.channel = "0x" + secrets.token_hex(32)
        api.ipsx("account", "create", "--address", self.wallet.address, "--name", self.name)
        self.sql(
            "INSERT INTO channels (channel_id, contract, sender, receiver, role, account_id, deposit,"
            " opened_block) SELECT $1, $2, $3, $4, 'requester', id, 1000, 1 FROM accounts WHERE name = $5",
            self.channel,
            CHANNELS_ADDRESS,
            self.wallet.address,
            OPERATOR,
            self.name,
        )
        found = api.ipsx("key", "create", self.name)
        self.client = Client(api.url, token=found.split("secret: ")[1].split()[0])

    def sql(self, query: str, *args: object) -> list[asyncpg.Record]:
        async def go() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.api.database_url)
            try:
                return list(await conn.fetch(query, *args))
            finally:
                await conn.close()

        return asyncio.run(go())

    def settle(self, *charges: int) -> None:
        """Deals of this requester, settled by the market for ``charges`` base units, all in one
        statement (so one invoicing pass sees all of them or none)."""
        self.sql(
            "INSERT INTO deals (deal_id, request_id, offer_id, requester, provider, exit_id,"
            " price_per_gb, price_per_hour, reserve, duration_s, traffic_bytes, dedicated, state, record,"
            " charge, commission)"
            " SELECT 'r' || md5(random()::text) || '_1', 'r', 'o', $1, 'bob', 'e1', 1, 0, c, 60, 0, false,"
            " 'settled', '{}', c, 0 FROM unnest($2::numeric[]) AS c",
            self.name,
            list(charges),
        )

    def invoices(self, count: int) -> list[dict[str, object]]:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = list(self.client.invoices())
            if len(found) >= count:
                return found
            time.sleep(0.1)
        raise TimeoutError(f"the market's node made {len(found)} invoice(s), not {count}")


@pytest.fixture
def payer(api: Api) -> Iterator[Payer]:
    yield Payer(api)


def test_the_agent_pays_what_the_hub_invoiced_and_the_cutoff_follows(payer: Payer, tmp_path: Path) -> None:
    payer.settle(300, 400)  # 700 owed: above the 500 the test API allows
    (invoice,) = payer.invoices(1)
    assert (invoice["amount"]["base_units"], invoice["cumulative"]["base_units"]) == ("700", "700")
    cutoff = redis.Redis.from_url(REDIS_URL)
    deadline = time.monotonic() + 20
    while cutoff.hget(PAYMENT_CUTOFF, payer.name) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cutoff.hget(PAYMENT_CUTOFF, payer.name) == b"700"
    agent = PaymentAgent(payer.client, payer.wallet, max_invoice=1000, budget=1000, store=tmp_path / "s.json")
    done = agent.pay_once()
    assert done.refused == [] and [p["state"] for p in done.paid] == ["paid"]
    (channel,) = payer.client.channels()
    assert channel["proof_balance"]["base_units"] == "700"
    deadline = time.monotonic() + 20
    while cutoff.hget(PAYMENT_CUTOFF, payer.name) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cutoff.hget(PAYMENT_CUTOFF, payer.name) is None
    cutoff.close()


def test_the_agent_refuses_an_invoice_beyond_its_budget(payer: Payer, tmp_path: Path) -> None:
    payer.settle(200)
    payer.invoices(1)
    payer.settle(250)
    payer.invoices(2)
    agent = PaymentAgent(payer.client, payer.wallet, max_invoice=1000, budget=300, store=tmp_path / "s.json")
    done = agent.pay_once()  # the first fits the budget, the second would exceed it
    assert [p["cumulative"]["base_units"] for p in done.paid] == ["200"]
    ((refused_id, why),) = done.refused
    assert "over the budget 300" in why
    states = {i["invoice_id"]: i["state"] for i in payer.client.invoices()}
    assert states[refused_id] == "open" and sorted(states.values()) == ["open", "paid"]
    assert agent.spent == 200


def test_a_forged_or_foreign_proof_is_refused_with_its_reason(payer: Payer, api: Api) -> None:
    payer.settle(100)
    (invoice,) = payer.invoices(1)
    stranger = Account.create()
    forged = PaymentAgent(payer.client, stranger, max_invoice=1000, budget=1000, store=None)
    assert forged.pay_once().refused == [(invoice["invoice_id"], "not a channel of this wallet")]
    with pytest.raises(ApiError) as refused:
        payer.client.pay_invoice(int(invoice["invoice_id"]), "0x" + "00" * 65)
    assert (refused.value.status, refused.value.code) == (422, "proof_rejected")
    other = Payer(api)
    with pytest.raises(ApiError) as foreign:
        other.client.pay_invoice(int(invoice["invoice_id"]), "0x" + "00" * 65)
    assert foreign.value.status == 404
    assert payer.client.payment_domain() == {"chain_id": 1, "verifying_contract": CHANNELS_ADDRESS}


def test_a_provider_keeps_the_payout_proofs_the_hub_signs_for_its_earnings(api: Api, tmp_path: Path) -> None:
    key_file = tmp_path / "provider.key"
    address = api.ipsx("wallet", "new", "--out", str(key_file)).split()[1]
    name = f"v{secrets.token_hex(4)}"
    api.ipsx("account", "create", "--address", address, "--name", name)
    channel = "0x" + secrets.token_hex(32)
    operator = Account.from_key(OPERATOR_KEY).address

    async def setup() -> None:
        conn = await asyncpg.connect(api.database_url)
        try:
            await conn.execute(
                "INSERT INTO channels (channel_id, contract, sender, receiver, role, account_id, deposit,"
                " opened_block)"
                " SELECT $1, $2, $3, $4, 'provider', id, 10000, 1 FROM accounts WHERE name = $5",
                channel, CHANNELS_ADDRESS, operator, address, name,
            )  # fmt: skip
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(api.database_url, min_size=1, max_size=1)
        try:
            await transfer(
                pool, debit=TREASURY, credit=f"provider:{name}", amount=Amount(2500), kind="payout"
            )
        finally:
            await pool.close()

    asyncio.run(setup())
    store = tmp_path / "payouts.json"
    command = ["payouts", "--api", api.url, "--key", str(key_file), "--store", str(store)]
    deadline = time.monotonic() + 20
    while "proof kept" not in (out := api.ipsx(*command)):
        assert time.monotonic() < deadline, out
        time.sleep(0.2)
    assert out == f"channel {channel}: 0.0000000000000025 IPSX promised (was 0), proof kept\n"
    kept = json.loads(store.read_text())[channel]
    assert (kept["balance"], kept["sender"]) == ("2500", operator)
    assert store.stat().st_mode & 0o077 == 0
    assert "nothing new" in api.ipsx(*command)
    # The provider's agent keeps them by itself with --payouts-api (even before it reaches a gateway).
    agent_store = tmp_path / "agent-payouts.json"
    agent = subprocess.Popen(
        [sys.executable, "-m", "ipsx", "provide", "--key", str(key_file), "--gateway", "127.0.0.1:1",
         "--payouts-api", api.url, "--payouts-store", str(agent_store), "--payouts-interval", "0.3"],
        env=api.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (agent_store.exists() and channel in agent_store.read_text()):
            assert time.monotonic() < deadline and agent.poll() is None
            time.sleep(0.2)
        assert json.loads(agent_store.read_text())[channel]["balance"] == "2500"
    finally:
        agent.send_signal(signal.SIGTERM)
        _, errors = agent.communicate(timeout=15)
    assert agent.returncode == 0 and b"Traceback" not in errors


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_the_agent_refuses_a_proof_balance_the_hub_inflated(payer: Payer, tmp_path: Path) -> None:
    store = tmp_path / "signed.json"
    agent = PaymentAgent(payer.client, payer.wallet, max_invoice=100, budget=500, store=store)
    payer.settle(50)
    payer.invoices(1)
    assert agent.pay_once().refused == []
    assert json.loads(store.read_text()) == {payer.channel: {"balance": "50"}}
    assert store.stat().st_mode & 0o077 == 0
    # The hub now claims 900 was signed, and bills 10 on top: 910 would be signed for "10".
    payer.sql("UPDATE channels SET proof_balance = 900 WHERE channel_id = $1", payer.channel)
    payer.settle(10)
    (invoice, _) = payer.invoices(2)
    assert invoice["cumulative"]["base_units"] == "910"
    done = agent.pay_once()
    assert done.paid == [] and done.refused == [
        (invoice["invoice_id"], "the hub states a proof of 900 on the channel; this agent signed 50")
    ]
    # A new agent (its store lost) takes no balance the wallet's own signature does not prove.
    fresh = PaymentAgent(payer.client, payer.wallet, max_invoice=100, budget=500, store=tmp_path / "new.json")
    (refused,) = fresh.pay_once().refused
    assert refused == (
        invoice["invoice_id"],
        "the hub states a proof of 900 on the channel without this wallet's signature",
    )
    assert agent.spent == 50 and fresh.spent == 0
    assert (
        payer.sql("SELECT state FROM invoices WHERE invoice_id = $1", invoice["invoice_id"])[0][0] == "open"
    )


def paid_120(payer: Payer, tmp_path: Path) -> PaymentAgent:
    """``payer`` with 120 base units settled, invoiced and paid by its agent (returned)."""
    agent = PaymentAgent(payer.client, payer.wallet, max_invoice=1000, budget=1000, store=tmp_path / "s.json")
    payer.settle(120)
    payer.invoices(1)
    agent.pay_once()
    return agent


def test_a_closing_consent_freezes_the_channel_and_cuts_the_requester_off(
    payer: Payer, tmp_path: Path
) -> None:
    paid_120(payer, tmp_path)
    asked_at = int(time.time())
    consent = payer.client.channel_consent(payer.channel)
    assert consent["balance"]["base_units"] == "120"
    # The operator signed ClosingConsent(channel, 120, expires_at), --consent-ttl ahead.
    expires_at = consent["expires_at"]
    assert asked_at + CONSENT_TTL - 60 <= expires_at <= int(time.time()) + CONSENT_TTL + 60
    domain = proofs.ChannelDomain(chain_id=1, verifying_contract=CHANNELS_ADDRESS)  # type: ignore[arg-type]
    signer = proofs.recover_closing_consent_signer(
        domain,
        bytes.fromhex(payer.channel[2:]),
        120,
        expires_at,
        bytes.fromhex(consent["consent_signature"][2:]),
    )
    assert signer == Account.from_key(OPERATOR_KEY).address
    (channel,) = payer.client.channels()
    assert (channel["state"], channel["consented_balance"]["base_units"]) == ("open", "120")
    assert channel["consent_expires_at"] == expires_at
    cutoff = redis.Redis.from_url(REDIS_URL)
    try:
        wait_for(lambda: cutoff.hget(PAYMENT_CUTOFF, payer.name) == b"0", "no cut-off after the consent")
        payer.settle(30)  # usage after the consent: owed, but never billed on the frozen channel
        wait_for(lambda: cutoff.hget(PAYMENT_CUTOFF, payer.name) == b"30", "the new usage is not owed")
    finally:
        cutoff.close()
    assert [i["cumulative"]["base_units"] for i in payer.client.invoices()] == ["120"]
    # The consent asked for again is the same consent: the balance the channel is frozen at.
    assert payer.client.channel_consent(payer.channel) == consent


def test_no_consent_is_signed_for_a_contract_its_watcher_found_of_another_version(
    payer: Payer, tmp_path: Path
) -> None:
    paid_120(payer, tmp_path)
    why = f"it is version '1' and this IPSX signs for version '{proofs.DOMAIN_VERSION}'"
    # What `ipsx chain watch` recorded when it read the contract (billing.chain.record_domain).
    payer.sql("INSERT INTO channels_domains (address, problem) VALUES ($1, $2)", CHANNELS_ADDRESS, why)
    try:
        with pytest.raises(ApiError) as refused:
            payer.client.channel_consent(payer.channel)
        assert (refused.value.status, refused.value.code) == (503, "payments_unavailable")
        assert refused.value.detail == (
            f"the PaymentChannels contract {CHANNELS_ADDRESS} would refuse this consent ({why}); "
            "the operator must deploy this IPSX's contracts"
        )
        (channel,) = payer.client.channels()
        assert (channel["consented_balance"], channel["consent_expires_at"]) == (None, None)  # not frozen
        # The watcher of a contract of this version records no problem: the consent is signed.
        payer.sql("UPDATE channels_domains SET problem = NULL WHERE address = $1", CHANNELS_ADDRESS)
        assert payer.client.channel_consent(payer.channel)["balance"]["base_units"] == "120"
    finally:
        payer.sql("DELETE FROM channels_domains WHERE address = $1", CHANNELS_ADDRESS)


def test_a_closing_consent_past_its_expiry_unfreezes_the_channel(payer: Payer, tmp_path: Path) -> None:
    agent = paid_120(payer, tmp_path)
    payer.client.channel_consent(payer.channel)
    payer.settle(30)  # owed, not billed on the frozen channel
    # Time passes: the consent expired, and the chain watcher applied a block stamped after it, so
    # the consent can close nothing any more.
    payer.sql(
        "UPDATE channels SET consent_expires_at = floor(extract(epoch FROM now()))::bigint - 60"
        " WHERE channel_id = $1",
        payer.channel,
    )
    payer.sql(
        "INSERT INTO chain_cursors (name, block, block_hash, block_time)"
        " SELECT 'channels:' || contract, 1, '0x', consent_expires_at + 1 FROM channels WHERE channel_id = $1"
        " ON CONFLICT (name) DO UPDATE SET block_time = EXCLUDED.block_time",
        payer.channel,
    )
    (newest, _) = payer.invoices(2)
    assert (newest["channel_id"], newest["cumulative"]["base_units"]) == (payer.channel, "150")
    (channel,) = payer.client.channels()
    assert (channel["consented_balance"], channel["consent_expires_at"]) == (None, None)
    done = agent.pay_once()
    assert [p["cumulative"]["base_units"] for p in done.paid] == ["150"]
    cutoff = redis.Redis.from_url(REDIS_URL)
    try:
        wait_for(lambda: cutoff.hget(PAYMENT_CUTOFF, payer.name) is None, "still cut off")
    finally:
        cutoff.close()


def test_a_closing_consent_waits_for_running_deals(payer: Payer) -> None:
    payer.sql(
        "INSERT INTO deals (deal_id, request_id, offer_id, requester, provider, exit_id, price_per_gb,"
        " price_per_hour, reserve, duration_s, traffic_bytes, dedicated, state, record)"
        " VALUES ('r' || md5(random()::text) || '_1', 'r', 'o', $1, 'bob', 'e1', 1, 0, 10, 60, 0, false,"
        " 'active', '{}')",
        payer.name,
    )
    with pytest.raises(ApiError) as running:
        payer.client.channel_consent(payer.channel)
    assert (running.value.status, running.value.code) == (409, "deals_running")
    (channel,) = payer.client.channels()
    assert channel["consented_balance"] is None

"""The provider's pages over real HTTP against the API with its market (tests/web/conftest.py):
exits online with their health, offers placed and cancelled through the form, deals that a
requester opens on them, settled by the market, and what the provider earned from each, to the
base unit; and isolation: another provider sees none of it and can change none of it.

carol is a provider with two exits (de residential, nl datacenter), dave another with one (se);
erin a requester who buys from carol through the REST API.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg
import httpx
import pytest

from ipsx.cli import build_parser
from pool.models import ExitInfo
from tests.web import seed
from tests.web.conftest import REDIS_URL, WebApi, WebClient

IPSX = 10**18
COMMISSION_BPS = 1_000  # the market's default commission
CAROL_DE, CAROL_NL, DAVE_SE = "ca" * 8, "cb" * 8, "da" * 8


@dataclass
class Providers:
    addresses: dict[str, str]
    exits: seed.LiveExits


@pytest.fixture(scope="module")
def providers(web_api: WebApi) -> Iterator[Providers]:
    addresses = {}
    for name, address in (
        ("carol", "0x" + "c4" * 20),
        ("dave", "0x" + "d5" * 20),
        ("erin", "0x" + "e6" * 20),
    ):
        web_api.ipsx("account", "create", "--address", address, "--name", name)
        found = re.search(r"secret: (\S+)", web_api.ipsx("key", "create", name))
        assert found is not None
        web_api.secrets[name] = found.group(1)
        addresses[name] = seed.address_of(web_api.database_url, name)
    web_api.ipsx("account", "credit", "erin", "10", "--reference", "web-test-erin")
    exits = seed.LiveExits(
        REDIS_URL,
        [
            ExitInfo(CAROL_DE, addresses["carol"], "", "10.0.0.1", "de", city="berlin", type="residential"),
            ExitInfo(CAROL_NL, addresses["carol"], "", "10.0.0.2", "nl", type="datacenter"),
            ExitInfo(DAVE_SE, addresses["dave"], "", "10.0.0.3", "se", type="mobile"),
        ],
    )
    try:
        yield Providers(addresses, exits)
    finally:
        exits.close()


def place_offer(client: WebClient, **fields: str | list[str]) -> httpx.Response:
    form: dict[str, str | list[str]] = {
        "price_per_gb": "1", "price_per_hour": "0", "sharing": "shared", "shared_capacity": "2",
        "max_duration_s": "86400", "schedule": "", "protocols": ["http", "https"],
    }  # fmt: skip
    form.update(fields)
    form["_csrf"] = client.hidden("/web/provider/offers")
    return client.http.post("/web/provider/offers", data=form)


def offer_terms(web_api: WebApi, order_id: str) -> tuple[str, str, dict[str, object]]:
    row = web_api.query("SELECT account, state, terms::text FROM market_orders WHERE order_id = $1", order_id)
    return row[0]["account"], row[0]["state"], json.loads(row[0]["terms"])


def test_exits_online_show_their_health(web_api: WebApi, providers: Providers) -> None:
    asyncio.run(seed.record_dials(REDIS_URL, CAROL_DE, ok=[0.05, 0.05, 0.05], failed=["timeout"]))
    with web_api.signed_in("carol") as carol:
        page = carol.get("/web/provider")
        assert page.status_code == 200, page.text
        text = page.text
    assert 'data-exits="2"' in text and 'id="exits-online">2<' in text
    row = re.search(rf'<tr data-exit="{CAROL_DE}">(.*?)</tr>', text, re.S)
    assert row is not None
    cells = row.group(1)
    assert "DE · berlin" in cells and "residential" in cells
    assert "health-degraded" in cells  # 3 of 4 dials got through: under the 90 % bar
    assert '<td class="num">75 %</td>' in cells and "50.0 ms" in cells
    assert '<span class="tag"' in cells and ">timeout</span>" in cells
    other = re.search(rf'<tr data-exit="{CAROL_NL}">(.*?)</tr>', text, re.S)
    assert other is not None and "health-healthy" in other.group(1) and "none" in other.group(1)
    assert DAVE_SE not in text  # dave's exit, though live, is not carol's


def test_placing_and_cancelling_an_offer_through_the_form(web_api: WebApi, providers: Providers) -> None:
    with web_api.signed_in("carol") as carol:
        placed = place_offer(
            carol, exit_id=CAROL_NL, price_per_gb="0.5", price_per_hour="0.01", shared_capacity="3",
            max_duration_s="3600", schedule="22:00-07:00", protocols=["socks5"],
        )  # fmt: skip
        assert placed.status_code == 303, placed.text
        order_id = placed.headers["Location"].split("placed=")[1]
        account, state, terms = offer_terms(web_api, order_id)
        assert (account, state) == ("carol", "open")
        assert terms["exit_id"] == CAROL_NL and terms["provider"] == "carol"
        assert terms["price_per_gb"] == str(5 * 10**17) and terms["price_per_hour"] == str(10**16)
        assert terms["sharing"] == "shared" and terms["shared_capacity"] == 3
        assert terms["max_duration_s"] == 3600 and terms["schedule"] == "22:00-07:00"
        assert terms["protocols"] == ["socks5"]
        assert terms["attributes"] == {
            "country": "nl",
            "type": "datacenter",
            "region": "",
            "city": "",
            "asn": 0,
        }
        listed = carol.get(placed.headers["Location"]).text
        assert f"Offer <code>{order_id}</code> placed." in listed
        row = re.search(rf'<tr data-order="{order_id}">(.*?)</tr>', listed, re.S)
        assert row is not None
        assert "NL datacenter" in row.group(1) and "22:00-07:00" in row.group(1)
        assert "shared \u00d7 3" in html.unescape(row.group(1)) and "<td>socks5</td>" in row.group(1)

        cancelled = carol.post(
            f"/web/provider/offers/{order_id}/cancel", csrf=carol.hidden("/web/provider/offers")
        )
        assert cancelled.status_code == 303
        assert offer_terms(web_api, order_id)[1] == "cancelled"
        assert f"Offer <code>{order_id}</code> cancelled." in carol.get(cancelled.headers["Location"]).text
        again = carol.post(
            f"/web/provider/offers/{order_id}/cancel", csrf=carol.hidden("/web/provider/offers")
        )
        assert again.status_code == 404 and "no open order with this id" in again.text


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({"protocols": []}, 422, "allow at least one protocol"),
        ({"price_per_gb": "0", "price_per_hour": "0"}, 422, "cannot both be 0"),
        ({"schedule": "at night"}, 422, "'schedule' must be HH:MM-HH:MM"),
        ({"shared_capacity": "0"}, 422, "'shared_capacity' must be a whole number from 1 to 10000"),
        ({"exit_id": "ff" * 8}, 404, "no live exit has this id"),
    ],
)
def test_a_bad_offer_is_an_error_page_that_says_why(
    web_api: WebApi, providers: Providers, fields: dict[str, str | list[str]], status: int, message: str
) -> None:
    with web_api.signed_in("carol") as carol:
        answer = place_offer(carol, **{"exit_id": CAROL_DE, **fields})
        assert answer.status_code == status, answer.text
        assert message in html.unescape(answer.text)


def test_an_offer_form_without_the_csrf_token_is_refused(web_api: WebApi, providers: Providers) -> None:
    with web_api.signed_in("carol") as carol:
        answer = carol.post("/web/provider/offers", {"exit_id": CAROL_DE, "protocols": "http"}, csrf=None)
        assert answer.status_code == 403 and "stale or came from another site" in answer.text
    assert (
        web_api.query("SELECT count(*) FROM market_orders WHERE account = 'carol' AND state = 'open'")[0][0]
        == 0
    )


def _deal_row(text: str, deal_id: str) -> str:
    row = re.search(rf'<tr data-deal="{deal_id}">(.*?)</tr>', text, re.S)
    assert row is not None, deal_id
    return row.group(1)


def test_earnings_per_deal_and_per_day_are_the_payouts_settlement_credited(
    web_api: WebApi, providers: Providers
) -> None:
    """Two real deals: offers placed on the page, bought by erin over REST, metered by both
    sides, ended by carol's report and settled by the market; the pages then show each deal's
    charge, commission and payout, and the payouts add up to the ledger's credits exactly."""
    prices = {CAROL_DE: IPSX, CAROL_NL: 3 * IPSX // 2}
    sizes = {CAROL_DE: [250_000] * 4, CAROL_NL: [333_333] * 3}
    with web_api.signed_in("carol") as carol:
        for exit_id, price in prices.items():
            placed = place_offer(carol, exit_id=exit_id, price_per_gb=str(price / IPSX), protocols=["http"])
            assert placed.status_code == 303, placed.text
    wanted = {
        CAROL_DE: {"country": "de", "type": "residential"},
        CAROL_NL: {"country": "nl", "type": "datacenter"},
    }
    deal_ids = {
        exit_id: seed.open_deal(
            web_api.url, web_api.secrets["erin"], {**filters, "protocol": "http"}, 2 * IPSX
        )
        for exit_id, filters in wanted.items()
    }
    for exit_id, deal_id in deal_ids.items():
        seed.wait_for_state(web_api.database_url, deal_id, "active")

        async def meter(exit_id: str = exit_id, deal_id: str = deal_id) -> None:
            conn = await asyncpg.connect(web_api.database_url)
            try:
                await seed.metered(
                    conn, requester="erin", provider=providers.addresses["carol"], exit_id=exit_id,
                    deal_id=deal_id, sizes=sizes[exit_id], agent_sizes=sizes[exit_id],
                )  # fmt: skip
            finally:
                await conn.close()

        asyncio.run(meter())
        seed.report(web_api.url, web_api.secrets["carol"], deal_id, "stopped")
    expected = {}
    for exit_id, deal_id in deal_ids.items():
        row = seed.wait_for_state(web_api.database_url, deal_id, "settled")
        billed = sum(sizes[exit_id])
        charge = -(-prices[exit_id] * billed // 10**9)
        commission = charge * COMMISSION_BPS // 10_000
        assert (row["billable_bytes"], int(row["charge"]), int(row["commission"])) == (
            billed,
            charge,
            commission,
        )
        expected[deal_id] = (billed, charge, commission, charge - commission)
    credited = web_api.query(
        "SELECT COALESCE(sum(amount), 0)::text FROM ledger_transfers WHERE credit_account = 'provider:carol'"
    )[0][0]
    payouts = sum(payout for _, _, _, payout in expected.values())
    assert int(credited) == payouts  # what settlement moved to carol is the payouts, to the base unit

    with web_api.signed_in("carol") as carol:
        per_deal = carol.get("/web/provider/deals").text
        for deal_id, (billed, charge, commission, payout) in expected.items():
            row = _deal_row(per_deal, deal_id)
            assert f'data-bytes="{billed}"' in row and "settled" in row
            assert f'data-base-units="{commission}"' in row and f'data-base-units="{payout}"' in row
            assert f'<td class="num charge">{_ipsx(charge)}</td>' in row
        totals = re.search(
            r'<tr id="deal-totals" data-charge="(\d+)" data-commission="(\d+)" data-payout="(\d+)"', per_deal
        )
        assert totals is not None
        charges = sum(charge for _, charge, _, _ in expected.values())
        commissions = sum(commission for _, _, commission, _ in expected.values())
        assert tuple(map(int, totals.groups())) == (charges, commissions, payouts)
        assert charges - commissions == payouts

        overview = carol.get("/web/provider").text
        assert f'data-earned-total="{payouts}"' in overview and f'data-credited="{payouts}"' in overview
        assert f'id="earned-today">{_ipsx(payouts)}<' in overview
        assert f'id="earned-balance">{_ipsx(payouts)}<' in overview
        day = re.search(r'<tr data-day="[\d-]+">(.*?)</tr>', overview, re.S)
        assert day is not None
        assert f'<td class="num commission">{_ipsx(commissions)}</td>' in day.group(1)
        assert f'<td class="num payout">{_ipsx(payouts)}</td>' in day.group(1)
        served = sum(sum(values) for values in sizes.values())
        assert f'data-bytes-today="{served}"' in overview

        with carol.http.stream("GET", "/web/provider/live") as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            event = next(json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: "))
    assert event["today"] == {"streams": 7, "bytes": served}
    assert event["earned"]["today"]["base_units"] == str(payouts)
    assert event["earned"]["balance"]["base_units"] == str(payouts)


def _ipsx(value: int) -> str:
    from dashboard.web.render import ipsx

    return ipsx(value)


def test_a_provider_sees_none_of_another_providers_exits_deals_offers_or_earnings(
    web_api: WebApi, providers: Providers
) -> None:
    carol_orders = [
        row[0] for row in web_api.query("SELECT order_id FROM market_orders WHERE account = 'carol'")
    ]
    carol_deals = [row[0] for row in web_api.query("SELECT deal_id FROM deals WHERE provider = 'carol'")]
    assert carol_orders and carol_deals  # the tests above gave carol offers and deals
    with web_api.signed_in("dave") as dave:
        paths = ("/web/provider", "/web/provider/deals", "/web/provider/offers", "/web/provider/payouts")
        texts = {path: dave.get(path) for path in paths}
        for path, page in texts.items():
            assert page.status_code == 200, path
            for secret in (CAROL_DE, CAROL_NL, *carol_orders, *carol_deals):
                assert secret not in page.text, (path, secret)
        overview = texts["/web/provider"].text
        assert f'<tr data-exit="{DAVE_SE}">' in overview and 'data-exits="1"' in overview
        assert 'data-earned-total="0"' in overview and 'data-bytes-today="0"' in overview
        assert "No deals yet." in texts["/web/provider/deals"].text
        open_offer = next(
            order_id for order_id in carol_orders if offer_terms(web_api, order_id)[1] == "open"
        )
        refused = dave.post(
            f"/web/provider/offers/{open_offer}/cancel", csrf=dave.hidden("/web/provider/offers")
        )
        assert refused.status_code == 404 and "no open order with this id" in refused.text
        assert offer_terms(web_api, open_offer)[1] == "open"
        stolen = place_offer(dave, exit_id=CAROL_DE)
        assert stolen.status_code == 403 and "belongs to another provider" in stolen.text
        with dave.http.stream("GET", "/web/provider/live") as stream:
            event = next(json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: "))
    assert event["today"] == {"streams": 0, "bytes": 0}
    assert event["earned"]["balance"]["base_units"] == "0" and event["earned"]["open_deals"] == 0
    with web_api.signed_in("erin") as erin:  # a requester only: no exit, no offer, no deal as provider
        start = erin.get("/web/provider").text
    assert 'id="provider-start"' in start and 'data-exits="0"' in start
    assert all(secret not in start for secret in (CAROL_DE, CAROL_NL, DAVE_SE, *carol_deals))
    # The commands the page tells a new provider to run are real ones.
    commands = [html.unescape(text) for text in re.findall(r"<code>(ipsx \w+ [^<]*--[^<]*)</code>", start)]
    assert {command.split()[1] for command in commands} == {"provide", "order"}
    for command in commands:
        build_parser().parse_args(shlex.split(command)[1:])


def test_payouts_show_the_balance_proofs_the_operator_signed(web_api: WebApi, providers: Providers) -> None:
    """The operator opens a payout channel to carol (as the chain watcher records one) and the
    hub signs her earnings onto it (``billing.payouts.promise_earnings``)."""
    from eth_account import Account

    from billing import channels, payouts
    from billing.db import connect
    from contracts import proofs

    operator = Account.from_key(bytes.fromhex("42" * 32))
    domain = proofs.ChannelDomain(chain_id=1, verifying_contract="0x" + "77" * 20)
    channel_id = "0x" + "ab" * 32

    async def go() -> int:
        pool = await connect(web_api.database_url, min_size=1, max_size=2)
        try:
            carol_id = await pool.fetchval("SELECT id FROM accounts WHERE name = 'carol'")
            async with pool.acquire() as conn:
                await channels.open_in(
                    conn, channel_id=channel_id, contract=domain.verifying_contract, sender=operator.address,
                    receiver=providers.addresses["carol"], role="provider", account_id=carol_id,
                    deposit=5 * IPSX, opened_block=1,
                )  # fmt: skip
            raised = await payouts.promise_earnings(pool, operator, domain)
            assert [channel.channel_id for channel in raised] == [channel_id]
            return int(raised[0].proof_balance)
        finally:
            await pool.close()

    signed = asyncio.run(go())
    balance = int(
        web_api.query("SELECT balance::text FROM ledger_balances WHERE account = 'provider:carol'")[0][0]
    )
    assert signed == balance > 0
    with web_api.signed_in("carol") as carol:
        page = carol.get("/web/provider/payouts").text
    assert f'data-balance="{balance}" data-promised="{signed}" data-unpromised="0"' in page
    row = re.search(rf'<tr data-channel="{channel_id}">(.*?)</tr>', page, re.S)
    assert (
        row is not None and f'data-base-units="{signed}"' in row.group(1) and "none yet" not in row.group(1)
    )
    with web_api.signed_in("dave") as dave:
        other = dave.get("/web/provider/payouts").text
    assert channel_id not in other and "No payout channel yet." in other

"""The operator's pages over real HTTP against the API with its market (tests/web/conftest.py):
only a session whose key has the ``operator`` scope reaches them; the network map counts live
exits per country; alerts name a quarantined exit, a dispute waiting and a requester cut off;
throughput, stream outcomes, exit errors and the day's top accounts come from the metered usage;
the order book's depth and price index; a dispute decided through the form settles as decided.
Then the provider page and the operator map in a real browser (Playwright, Debian's Chromium).

opprov provides four exits (two in CA, one in BR, one in AU that gets quarantined), opreq buys
from it, ops holds an operator key.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis
from playwright.sync_api import Browser, Page, expect

from billing.keys import PAYMENT_CUTOFF, USAGE_STREAM
from dashboard.web.render import STATIC_DIR
from pool.models import ExitInfo
from tests.web import seed
from tests.web.browser import CHROMIUM, shot
from tests.web.conftest import REDIS_URL, WebApi, WebClient
from tests.web.test_pages import wallet_session

IPSX = 10**18
EXITS = {"0a" * 8: ("ca", "residential"), "0b" * 8: ("ca", "datacenter"), "0c" * 8: ("br", "residential"),
         "0d" * 8: ("au", "mobile")}  # fmt: skip
QUARANTINED = "0d" * 8
PAGES = ("/web/operator", "/web/operator/market", "/web/operator/disputes")


@dataclass
class Network:
    address: str  # opprov's wallet
    dispute: str  # a deal opreq complained about
    offer_id: str


@pytest.fixture(scope="module")
def network(web_api: WebApi) -> Iterator[Network]:
    for name, address in (
        ("opprov", "0x" + "0e" * 20),
        ("opreq", "0x" + "0f" * 20),
        ("ops", "0x" + "1e" * 20),
    ):
        web_api.ipsx("account", "create", "--address", address, "--name", name)
        scopes = "read,operator" if name == "ops" else "proxy,read,trade,keys"
        found = re.search(r"secret: (\S+)", web_api.ipsx("key", "create", name, "--scopes", scopes))
        assert found is not None
        web_api.secrets[name] = found.group(1)
    web_api.ipsx("account", "credit", "opreq", "10", "--reference", "web-test-opreq")
    address = seed.address_of(web_api.database_url, "opprov")
    exits = seed.LiveExits(
        REDIS_URL,
        [ExitInfo(exit_id, address, "", f"10.1.0.{n}", country, type=kind)
         for n, (exit_id, (country, kind)) in enumerate(EXITS.items())],
    )  # fmt: skip
    try:
        asyncio.run(seed.quarantine(REDIS_URL, QUARANTINED))
        with web_api.signed_in("opprov") as provider:
            form = {"exit_id": "0c" * 8, "price_per_gb": "1", "price_per_hour": "0", "sharing": "shared",
                    "shared_capacity": "2", "max_duration_s": "86400", "protocols": ["http"],
                    "_csrf": provider.hidden("/web/provider/offers")}  # fmt: skip
            placed = provider.http.post("/web/provider/offers", data=form)
            assert placed.status_code == 303, placed.text
            offer_id = placed.headers["Location"].split("placed=")[1]
        deal_id = seed.open_deal(
            web_api.url, web_api.secrets["opreq"], {"country": "br", "protocol": "http"}, 2 * IPSX
        )
        seed.wait_for_state(web_api.database_url, deal_id, "active")

        async def meter() -> None:
            conn = await asyncpg.connect(web_api.database_url)
            try:
                await seed.metered(
                    conn, requester="opreq", provider=address, exit_id="0c" * 8, deal_id=deal_id,
                    sizes=[500_000, 500_000], agent_sizes=[400_000, 400_000],
                )  # fmt: skip
                await seed.metered(
                    conn, requester="opreq", provider=address, exit_id="0a" * 8, deal_id=None,
                    sizes=[0, 0], outcome="exit_lost",
                )  # fmt: skip
            finally:
                await conn.close()

        asyncio.run(meter())
        seed.report(web_api.url, web_api.secrets["opreq"], deal_id, "complaint")
        seed.wait_for_state(web_api.database_url, deal_id, "disputed")
        yield Network(address, deal_id, offer_id)
    finally:
        exits.close()


def operator(web_api: WebApi) -> WebClient:
    return web_api.signed_in("ops")


def test_the_operator_pages_are_for_operator_keys_only(web_api: WebApi, network: Network) -> None:
    with web_api.signed_in("alice") as alice:
        for path in (*PAGES, "/web/operator/live"):
            answer = alice.get(path)
            assert answer.status_code == 403, path
            assert "operator API key" in answer.text
        assert 'href="/web/operator"' not in alice.get("/web/overview").text
        refused = alice.post(f"/web/operator/disputes/{network.dispute}/resolve", {"bill": "none"})
        assert refused.status_code == 403
    with wallet_session(web_api, bytes.fromhex("1f" * 32)) as wallet:  # a wallet may do all but this
        assert all(wallet.get(path).status_code == 403 for path in PAGES)
        assert (
            wallet.post(f"/web/operator/disputes/{network.dispute}/resolve", {"bill": "none"}).status_code
            == 403
        )
    assert web_api.query("SELECT state FROM deals WHERE deal_id = $1", network.dispute)[0][0] == "disputed"
    with operator(web_api) as ops:
        for path in PAGES:
            answer = ops.get(path)
            assert answer.status_code == 200, (path, answer.text[-500:])
            assert 'href="/web/operator" aria-current="page"' in answer.text
        form = {"bill": "none", "_csrf": "forged"}
        assert (
            ops.http.post(f"/web/operator/disputes/{network.dispute}/resolve", data=form).status_code == 403
        )


def test_the_map_counts_live_exits_per_country(web_api: WebApi, network: Network) -> None:
    with operator(web_api) as ops:
        page = ops.get("/web/operator").text
        counts = re.search(r'id="exit-map"[^>]*data-counts="([^"]*)"', page, re.S)
        assert counts is not None
        assert json.loads(html.unescape(counts.group(1))) == {"AU": 1, "BR": 1, "CA": 2}
        assert 'id="exits-online">4<' in page and 'id="exit-countries">3<' in page
        assert '<tr data-country="CA"><th scope="row">CA</th><td class="num">2</td>' in page
        with ops.http.stream("GET", "/web/operator/live") as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            event = next(json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: "))
    assert event["countries"] == {"AU": 1, "BR": 1, "CA": 2}
    assert len(event["throughput"]["t"]) == 60 and sum(event["throughput"]["bytes"]) >= 1_000_000


def test_the_gateway_nodes_are_listed_with_their_exits(web_api: WebApi, network: Network) -> None:
    with operator(web_api) as ops:
        page = ops.get("/web/operator").text
    node = seed.LiveExits.NODE
    row = re.search(rf'<tr data-node="{node}">(.*?)</tr>', page)
    assert row is not None, page
    cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row.group(1))
    assert cells == [node, "eu", "<code>:18082</code>", "4"]  # the four exits it registered
    assert 'data-kind="no_gateway"' not in page and 'data-kind="node_without_exits"' not in page


def _owe(web_api: WebApi) -> None:
    """opreq pays over a channel to the operator and has settled usage of 1.5 IPSX it has not
    paid: the market node's invoicer bills it and cuts opreq off (the limit is 1 IPSX)."""
    from billing import channels
    from billing.db import connect
    from matching.deals import State

    async def go() -> None:
        pool = await connect(web_api.database_url, min_size=1, max_size=2)
        try:
            payer = await pool.fetchrow("SELECT id, address FROM accounts WHERE name = 'opreq'")
            async with pool.acquire() as conn:
                await channels.open_in(
                    conn, channel_id="0x" + "cd" * 32, contract="0x" + "77" * 20, sender=payer["address"],
                    receiver="0x" + "42" * 20, role="requester", account_id=payer["id"], deposit=5 * IPSX,
                    opened_block=1,
                )  # fmt: skip
                offer_id = await seed.offer(conn, "opprov", "0a" * 8, "ca", "residential")
                for _ in range(2):
                    await seed.deal(
                        conn, requester="opreq", provider="opprov", offer_id=offer_id, exit_id="0a" * 8,
                        state=State.SETTLED, charge=3 * IPSX // 4,
                    )  # fmt: skip
        finally:
            await pool.close()

    asyncio.run(go())


def test_alerts_name_the_quarantined_exit_the_dispute_and_who_is_cut_off(
    web_api: WebApi, network: Network
) -> None:
    _owe(web_api)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        deadline = time.monotonic() + 30
        while client.hget(PAYMENT_CUTOFF, "opreq") is None:
            assert time.monotonic() < deadline, "the invoicer never cut opreq off"
            time.sleep(0.2)
        with operator(web_api) as ops:
            page = ops.get("/web/operator").text
            # A usage entry a minute old that no billing worker has read (none runs here).
            assert not client.exists(USAGE_STREAM)
            client.xadd(USAGE_STREAM, {"kind": "event"}, id=f"{int(time.time() * 1000) - 60_000}-0")
            try:
                lagging = ops.get("/web/operator").text
            finally:
                client.delete(USAGE_STREAM)
    finally:
        client.close()
    lag = re.search(r'data-kind="ingestion_lag">usage ingestion lags (\d+) s \(1 waiting to be read', lagging)
    assert lag is not None and int(lag.group(1)) >= 60
    quarantined = re.search(rf'data-kind="quarantined" data-subject="{QUARANTINED}">([^<]*)', page)
    assert quarantined is not None
    assert "(AU, mobile) is quarantined until" in quarantined.group(
        1
    ) and "(streak, trip 1)" in quarantined.group(1)
    assert 'data-kind="quarantined" data-subject="0a' not in page  # the healthy exits raise nothing
    assert re.search(
        r'data-kind="disputes">1 disputed deal waits for a decision <a href="/web/operator/disputes">', page
    )
    assert (
        'data-kind="payment_cutoff" data-subject="opreq">opreq is cut off for unpaid usage: owes 1.5 IPSX'
        in page
    )
    assert 'data-kind="ingestion_lag"' not in page  # no usage stream waits here
    assert '<tr data-reason="timeout"><th scope="row">timeout</th><td class="num">5</td>' in page


def test_throughput_outcomes_and_the_days_top_accounts(web_api: WebApi, network: Network) -> None:
    with operator(web_api) as ops:
        page = ops.get("/web/operator").text
    embedded = re.search(r'id="throughput-data">(.*?)</script>', page, re.S)
    assert embedded is not None
    series = json.loads(html.unescape(embedded.group(1)))
    hour = web_api.query(
        "SELECT count(*), sum(bytes_up + bytes_down)::int8 FROM usage_events"
        " WHERE closed_at >= date_trunc('minute', now()) - interval '59 minutes'"
    )[0]
    assert (sum(series["streams"]), sum(series["bytes"])) == (hour[0], hour[1])
    lost = re.search(r'<tr data-outcome="exit_lost" class="error-row">(.*?)</tr>', page, re.S)
    assert lost is not None
    assert '<span class="tag">error</span>' in lost.group(1) and '<td class="num">2</td>' in lost.group(1)
    assert '<tr data-outcome="client_closed"><th' in page  # a normal end is no error
    requester = re.search(r'<tr data-account="opreq">(.*?)</tr>', page, re.S)
    assert requester is not None and 'data-bytes="1000000"' in requester.group(1)
    provider = re.search(r'<section class="card" aria-labelledby="top-providers-h">.*?</section>', page, re.S)
    assert provider is not None and '<tr data-account="opprov">' in provider.group(0)
    assert 'data-bytes="1000000"' in provider.group(0)


def test_depth_and_price_index_per_market(web_api: WebApi, network: Network) -> None:
    with operator(web_api) as ops:
        page = ops.get("/web/operator/market").text
        market = re.search(r'<tr data-market="br-residential">(.*?)</tr>', page, re.S)
        assert market is not None
        cells = re.findall(r'<td class="num">([^<]*)</td>', market.group(1))
        assert cells == ["1", "1", "1", "0"]  # one offer with room left, one level, 1 IPSX/GB, 0/hour
        index = page[page.index('id="price-index"') :]
        row = re.search(r'<tr data-market="br-residential">(.*?)</tr>', index, re.S)
        assert row is not None and re.findall(r'<td class="num">([^<]*)</td>', row.group(1)) == [
            "1",
            "1",
            "0",
        ]
        detail = ops.get("/web/operator/market", params={"country": "br", "type": "residential"}).text
        assert 'id="depth-data">[[1000000000000000000, 0, 1]]<' in detail
        assert ops.get("/web/operator/market", params={"country": "brazil"}).status_code == 400


def test_a_dispute_decided_through_the_form_settles_as_decided(web_api: WebApi, network: Network) -> None:
    with operator(web_api) as ops:
        listed = ops.get("/web/operator/disputes").text
        row = re.search(rf'<tr data-deal="{network.dispute}">(.*?)</tr>', listed, re.S)
        assert row is not None
        assert "<td>opreq</td><td>opprov</td>" in row.group(1) and "requester complaint" in row.group(1)
        assert 'data-bytes="1000000"' in row.group(1) and 'data-bytes="800000"' in row.group(1)
        csrf = ops.hidden("/web/operator/disputes")
        bad = ops.http.post(
            f"/web/operator/disputes/{network.dispute}/resolve", data={"_csrf": csrf, "bill": "all"}
        )
        assert bad.status_code == 422
        decided = ops.http.post(
            f"/web/operator/disputes/{network.dispute}/resolve", data={"_csrf": csrf, "bill": "agent"}
        )
        assert decided.status_code == 303, decided.text
        assert f"Deal <code>{network.dispute}</code> resolved" in ops.get(decided.headers["Location"]).text
        again = ops.http.post(
            f"/web/operator/disputes/{network.dispute}/resolve", data={"_csrf": csrf, "bill": "none"}
        )
        assert again.status_code == 409 and "not disputed" in again.text
    settled = seed.wait_for_state(web_api.database_url, network.dispute, "settled")
    charge = -(-IPSX * 800_000 // 10**9)  # the agent's count at 1 IPSX/GB
    assert (settled["billable_bytes"], int(settled["charge"]), int(settled["commission"])) == (
        800_000, charge, charge // 10,
    )  # fmt: skip
    with operator(web_api) as ops:
        assert "No dispute waits for a decision." in ops.get("/web/operator/disputes").text
        assert 'data-kind="disputes"' not in ops.get("/web/operator").text


def test_the_vendored_map_is_the_one_the_readme_names() -> None:
    vendor = STATIC_DIR / "vendor"
    readme = (vendor / "README.md").read_text()
    for name in ("jsvectormap.min.js", "jsvectormap.min.css", "jsvectormap.world.js"):
        digest = hashlib.sha256((vendor / name).read_bytes()).hexdigest()
        assert f"`{name}` `{digest}`" in readme, name
    assert "| 1.7.0 |" in readme and "jsvectormap@1.7.0" in readme
    assert (vendor / "jsvectormap.LICENSE").read_text().startswith("MIT License")
    assert 'jsVectorMap.addMap("world"' in (vendor / "jsvectormap.world.js").read_text()[:200]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")
@pytest.mark.timeout(120)
def test_the_provider_page_and_the_operator_map_in_a_browser(
    web_api: WebApi, network: Network, browser: Browser
) -> None:
    problems: list[str] = []

    def open_as(account: str, **options: Any) -> Page:
        context = browser.new_context(**options)
        page: Page = context.new_page()
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(web_api.url + "/signin")
        page.get_by_label("API key secret").fill(web_api.secrets[account])
        page.get_by_role("button", name="Sign in with key").click()
        expect(page).to_have_url(re.compile(r"/web/overview$"))
        return page

    page = open_as("opprov", viewport={"width": 1280, "height": 900})
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Provider").click()
    expect(page).to_have_url(re.compile(r"/web/provider$"))
    expect(page.locator("#live-status")).to_contain_text("live, updated", timeout=15_000)
    expect(page.locator("#exits tbody tr")).to_have_count(4)
    expect(page.locator(f'tr[data-exit="{QUARANTINED}"] .health')).to_have_text("quarantined")
    assert page.evaluate("Chart.getChart('provider-chart').data.datasets.length") == 2
    shot(page, "11-provider")

    page = open_as("ops", viewport={"width": 1280, "height": 900})
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Operator").click()
    expect(page).to_have_url(re.compile(r"/web/operator$"))
    regions = page.locator("#exit-map svg path.jvm-region")
    expect(regions.first).to_be_attached()
    assert regions.count() > 150  # the world's countries
    accent = page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--accent').trim()")
    assert page.locator('#exit-map path[data-code="CA"]').get_attribute("fill") == accent
    assert page.locator('#exit-map path[data-code="FR"]').get_attribute("fill") != accent
    expect(page.locator("#live-status")).to_contain_text("live, updated", timeout=15_000)
    expect(page.locator('#alerts li[data-kind="quarantined"]')).to_have_count(1)
    shot(page, "12-operator-map")

    phone = open_as("ops", viewport={"width": 375, "height": 780}, color_scheme="dark", is_mobile=True)
    phone.goto(web_api.url + "/web/operator")
    expect(phone.locator("#exit-map svg path.jvm-region").first).to_be_attached()
    assert phone.evaluate("document.documentElement.scrollWidth") <= 375
    shot(phone, "13-operator-phone-dark")
    assert problems == [], problems  # no script error, nothing refused by the CSP

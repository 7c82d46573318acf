"""End-to-end market: providers sign in with their wallets and offer their exits, a requester
buys IPs through the SDK, and a gateway node with --market routes its traffic only through the
exits of its deals (spot deals when it has none), attributes every stream to a deal, refuses a
requester who cannot pay with 402, and the deal settles to the base unit."""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis

from gateway.agent.settings import load_key
from ipsx.sdk import ApiError, Client
from tests.e2e.conftest import EXITS, REDIS_URL, Stack, free_port, wait_port
from tests.e2e.test_proxy import curl

IPSX = 10**18
PRICES = {"fr": IPSX, "de": 2 * IPSX, "us": 3 * IPSX // 2}  # per GB
CHANNELS = "0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC"  # the PaymentChannels address proofs name


@dataclass
class Market:
    api: Client  # alice, by API key
    url: str
    proxy_port: int

    def proxy(self, stack: Stack, suffix: str = "", secret: str | None = None, account: str = "") -> str:
        return (
            f"http://{account or stack.account}{suffix}:{secret or stack.secret}@127.0.0.1:{self.proxy_port}"
        )


@pytest.fixture(scope="module")
def market(stack: Stack) -> Iterator[Market]:
    api_port, http_port, tunnel_port = free_port(), free_port(), free_port()
    stack.env["IPSX_JWT_SECRET"] = secrets.token_urlsafe(32)
    api = stack.spawn(
        "api", "--port", str(api_port), "--proxy-address", f"127.0.0.1:{http_port}",
        "--channels-address", CHANNELS, "--unpaid-limit", "0.5", "--invoice-interval", "0.2",
        log="api.log",
    )  # fmt: skip
    gateway = stack.spawn_gateway("market-node", http_port, tunnel_port, "--market")
    url = f"http://127.0.0.1:{api_port}"
    try:
        wait_port(api_port)
        wait_port(http_port)
        for country, bind in EXITS.items():
            stack.wait_exit_on(stack.exit_id(f"agent-{country}", bind), {"market-node"})
        stack.ipsx("account", "credit", "alice", "5", "--reference", "market-e2e-funding")
        # Each demo provider signs in with its wallet (its account is created on first sign-in) and
        # offers its exit, which it finds among the live exits it owns.
        for country in EXITS:
            wallet = load_key(stack.tmp / f"agent-{country}.key", None)
            provider = Client.sign_in(url, wallet)
            exit_id = _exit_of(stack, wallet.address)
            provider.place_offer(
                exit_id=exit_id, price_per_gb=str(PRICES[country]), sharing="both", shared_capacity=4
            )
        yield Market(Client(url, token=stack.secret), url, http_port)
    finally:
        for proc in (gateway, api):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)


def _exit_of(stack: Stack, address: str) -> str:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(match="ipsx:{pool}:exit:*"):
            if client.hget(key, "provider") == address.encode():
                return key.decode().rsplit(":", 1)[1]
    finally:
        client.close()
    raise AssertionError(f"no live exit of {address}")


def test_a_request_order_routes_only_through_its_deal_and_settles(stack: Stack, market: Market) -> None:
    placed = market.api.place_request(
        filters={"country": "fr", "protocol": "http"},
        ips=1,
        duration_s=6,
        traffic_bytes=10**9,
        max_price_per_gb=str(2 * IPSX),
        rest=False,
    )
    assert len(placed["deals"]) == 1
    deal = placed["deals"][0]
    assert deal["price_per_gb"]["base_units"] == str(IPSX) and deal["reserve"]["ipsx"] == "1"
    # Only the deal's exit serves alice, whatever she asks for within it.
    answers = {
        curl("-x", market.proxy(stack, "-country-fr"), stack.origin.url("/ip")).stdout for _ in range(4)
    }
    assert answers == {EXITS["fr"]}
    rows = stack.wait_usage("deal_id = $1", deal["deal_id"], count=4)
    assert {row["exit_id"] for row in rows} == {deal["exit_id"]}
    # The deal ends after 6 s; the market reconciles both meters and settles through the hold.
    deadline = time.monotonic() + 40
    while market.api.deal(deal["deal_id"])["state"] != "settled" and time.monotonic() < deadline:
        time.sleep(0.5)
    settled = market.api.deal(deal["deal_id"])
    assert settled["state"] == "settled"
    metered = sum(
        row["gateway_bytes_up"] + row["gateway_bytes_down"]
        for row in stack.wait_usage("deal_id = $1", deal["deal_id"], count=4)
    )
    charge = -(-IPSX * metered // 10**9)
    assert settled["billable_bytes"] == metered
    assert settled["charge"]["base_units"] == str(charge)
    assert settled["commission"]["base_units"] == str(charge // 10)
    assert [t["event"] for t in settled["transitions"]] == [
        "ready",
        "time_frame_ended",
        "meters_reconciled",
        "settle",
    ]
    # The provider's profile counts the clean settlement.
    provider = settled["provider"]
    record = httpx.get(
        f"{market.url}/v1/profiles/{provider}", headers={"Authorization": f"Bearer {stack.secret}"}
    ).json()
    assert record["provider"]["settled"] >= 1 and record["provider"]["rating"] == 5.0
    assert record["provider"]["earned"] is None  # another account's money is its own to see
    mine = httpx.get(
        f"{market.url}/v1/profiles/{stack.account}", headers={"Authorization": f"Bearer {stack.secret}"}
    ).json()
    assert int(mine["requester"]["spent"]["base_units"]) >= charge
    # Money adds up to the base unit across every account.
    assert stack.query("SELECT SUM(balance)::text AS total FROM ledger_balances")[0]["total"] == "0"


def test_traffic_without_an_order_gets_spot_deals(stack: Stack, market: Market) -> None:
    assert curl("-x", market.proxy(stack, "-country-de"), stack.origin.url("/ip")).stdout == EXITS["de"]
    # No order of alice's covers Germany: the gateway asked the market, which opened a spot deal on
    # the German offer at its price, and the stream is metered under it.
    spot = [d for d in market.api.deals() if d["spot"] and d["state"] == "active"]
    german = [d for d in spot if d["price_per_gb"]["base_units"] == str(PRICES["de"])]
    assert len(german) == 1
    rows = stack.wait_usage("deal_id = $1", german[0]["deal_id"])
    assert {row["exit_id"] for row in rows} == {german[0]["exit_id"]}
    assert (
        stack.query("SELECT count(*) AS n FROM usage_events WHERE node = 'market-node' AND deal_id IS NULL")[
            0
        ]["n"]
        == 0
    )


def test_a_requester_who_cannot_pay_gets_402_and_nothing_relayed(stack: Stack, market: Market) -> None:
    stack.ipsx("account", "create", "--address", "0x" + "34" * 20, "--name", "broke")
    secret = re.search(r"secret: (\S+)", stack.ipsx("key", "create", "broke").stdout)
    assert secret is not None
    result = curl(
        "-i", "-x", market.proxy(stack, secret=secret.group(1), account="broke"), stack.origin.url("/ip")
    )
    assert result.stdout.startswith("HTTP/1.1 402")
    assert "X-IPSX-Error: insufficient_funds" in result.stdout
    assert stack.query("SELECT count(*) AS n FROM usage_events WHERE requester = 'broke'")[0]["n"] == 0


def test_market_data_is_public(stack: Stack, market: Market) -> None:
    depth = httpx.get(f"{market.url}/v1/market/depth", params={"country": "us"}).json()
    assert depth["levels"][0]["price_per_gb"]["base_units"] == str(PRICES["us"])
    prices = httpx.get(f"{market.url}/v1/market/prices").json()
    assert any(row["country"] == "fr" for row in prices["index"])


def test_a_dedicated_exit_serves_one_requester_only(stack: Stack, market: Market) -> None:
    # carol, a second requester with her own money and key.
    stack.ipsx("account", "create", "--address", "0x" + "56" * 20, "--name", "carol")
    stack.ipsx("account", "credit", "carol", "5", "--reference", "market-e2e-carol")
    carol = re.search(r"secret: (\S+)", stack.ipsx("key", "create", "carol").stdout)
    assert carol is not None
    # alice takes the US exit for herself.
    placed = market.api.place_request(
        filters={"country": "us", "protocol": "http"},
        ips=1,
        duration_s=120,
        traffic_bytes=10**8,
        max_price_per_gb=str(2 * IPSX),
        dedicated=True,
        rest=False,
    )
    assert len(placed["deals"]) == 1 and placed["deals"][0]["dedicated"] is True
    assert curl("-x", market.proxy(stack, "-country-us"), stack.origin.url("/ip")).stdout == EXITS["us"]
    # carol's US traffic finds no exit to share: the only one is alice's alone.
    refused = curl(
        "-i",
        "-x",
        market.proxy(stack, "-country-us", secret=carol.group(1), account="carol"),
        stack.origin.url("/ip"),
    )
    assert refused.stdout.startswith("HTTP/1.1 502") and "X-IPSX-Error: offers_busy" in refused.stdout
    assert "have no room for another deal now" in refused.stdout
    # Elsewhere carol is served, through deals of her own.
    assert (
        curl(
            "-x",
            market.proxy(stack, "-country-fr", secret=carol.group(1), account="carol"),
            stack.origin.url("/ip"),
        ).stdout
        == EXITS["fr"]
    )
    rows = stack.wait_usage("requester = 'carol' AND node = 'market-node' AND target LIKE '%'", count=1)
    owners = {
        r["requester"]
        for r in stack.query("SELECT requester FROM deals WHERE deal_id = $1", rows[0]["deal_id"])
    }
    assert owners == {"carol"}
    assert stack.query("SELECT SUM(balance)::text AS total FROM ledger_balances")[0]["total"] == "0"


def test_the_command_line_client(stack: Stack, market: Market) -> None:
    api = ["--api", market.url, "--token", stack.secret]
    depth = stack.ipsx("market", *api, "--country", "fr").stdout
    assert re.search(r"^\s+1 IPSX/GB\s+0 IPSX/h\s+1 offer\(s\)$", depth, re.MULTILINE)
    placed = stack.ipsx(
        "order",
        "request",
        *api,
        "--country",
        "de",
        "--protocol",
        "http",
        "--ips",
        "1",
        "--duration",
        "1m",
        "--traffic",
        "100MB",
        "--max-price-per-gb",
        "2",
        "--ioc",
    ).stdout
    found = re.search(
        r"request (\w+): 1 deal\(s\) opened\n  (\w+)  exit \w+  2 IPSX/GB  reserve 0\.2", placed
    )
    assert found is not None, placed
    deals = stack.ipsx("deals", *api).stdout
    assert re.search(rf"^{found.group(2)}\s+requester\s+active", deals, re.MULTILINE)
    orders = stack.ipsx("order", "list", *api).stdout
    assert re.search(rf"^{found.group(1)}\s+request\s+done\s+filled 1$", orders, re.MULTILINE)
    refused = stack.ipsx("order", "cancel", *api, "nope", check=False)
    assert (
        refused.returncode == 2
        and "the API refused: you have no open order with this id (404" in refused.stderr
    )
    bad = stack.ipsx("order", "request", *api, "--traffic", "lots", check=False)
    assert bad.returncode == 2 and "a size like 500MB or 5GB" in bad.stderr

    # A request whose time frame starts tomorrow waits, off the book, with its terms kept.
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    end = str(int(tomorrow.timestamp()) + 3600)
    later = stack.ipsx(
        "order", "request", *api, "--country", "de", "--max-price-per-gb", "2",
        "--starts-at", tomorrow.strftime("%Y-%m-%dT%H:%M"), "--ends-at", end,
    ).stdout  # fmt: skip
    waiting = re.search(r"^request (\w+): 0 deal\(s\) opened\n  the rest waits on the book$", later, re.M)
    assert waiting is not None, later
    terms = json.loads(
        stack.query("SELECT terms::text FROM market_orders WHERE order_id = $1", waiting.group(1))[0][0]
    )
    assert terms["starts_at"] == float(int(tomorrow.timestamp()) // 60 * 60)
    assert terms["expires_at"] == float(int(tomorrow.timestamp()) + 3600)
    stack.ipsx("order", "cancel", *api, waiting.group(1))
    bad_time = stack.ipsx("order", "request", *api, "--starts-at", "soon", check=False)
    assert bad_time.returncode == 2 and "ISO 8601" in bad_time.stderr

    # A package no offer can fill at its price rests on the book as the request order it maps
    # onto; its IPs can be lowered, and an offer's field is refused.
    package = stack.ipsx(
        "order",
        "package",
        *api,
        "--country",
        "us",
        "--count",
        "3",
        "--duration",
        "30m",
        "--traffic",
        "3GB",
        "--max-price-per-gb",
        "0.001",
    ).stdout
    rested = re.search(r"^package (\w+): 0 deal\(s\) opened\n  the rest waits on the book$", package, re.M)
    assert rested is not None, package
    package_id = rested.group(1)
    terms = stack.query("SELECT terms FROM market_orders WHERE order_id = $1", package_id)[0]["terms"]
    assert '"ips": 3' in terms and '"traffic_bytes": 1000000000' in terms  # 3 GB shared by 3 IPs
    amended = stack.ipsx("order", "amend", *api, package_id, "--ips", "2").stdout
    assert amended == f"order {package_id} amended; 0 deal(s) opened\n"
    assert (
        '"ips": 2'
        in stack.query("SELECT terms FROM market_orders WHERE order_id = $1", package_id)[0]["terms"]
    )
    wrong = stack.ipsx("order", "amend", *api, package_id, "--price-per-gb", "1", check=False)
    assert (
        wrong.returncode == 2 and "the API refused" in wrong.stderr and "(422 invalid_order)" in wrong.stderr
    )
    nothing = stack.ipsx("order", "amend", *api, package_id, check=False)
    assert nothing.returncode == 2 and "say what to change" in nothing.stderr
    stack.ipsx("order", "cancel", *api, package_id)


def test_a_complaint_disputes_the_deal_and_an_operator_decides_what_it_bills(
    stack: Stack, market: Market
) -> None:
    placed = market.api.place_request(
        filters={"country": "de", "protocol": "http"},
        ips=1,
        duration_s=3600,
        traffic_bytes=10**9,
        max_price_per_gb=str(2 * IPSX),
        rest=False,
    )
    deal_id = placed["deals"][0]["deal_id"]
    deadline = time.monotonic() + 20
    while market.api.deal(deal_id)["state"] != "active" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert curl("-x", market.proxy(stack, "-country-de"), stack.origin.url("/bytes/5000")).returncode == 0
    stack.wait_usage("deal_id = $1", deal_id)
    reports = f"{market.url}/v1/deals/{deal_id}/reports"
    alice = {"Authorization": f"Bearer {stack.secret}"}
    # The requester may not speak for the provider, nor report on a deal that is not hers.
    wrong = httpx.post(reports, json={"report": "ready"}, headers=alice)
    assert (wrong.status_code, wrong.json()["type"].rsplit("/", 1)[1]) == (422, "invalid_report")
    unknown = httpx.post(f"{market.url}/v1/deals/nope/reports", json={"report": "ok"}, headers=alice)
    assert unknown.status_code == 404
    complaint = stack.ipsx(
        "deal", "report", "--api", market.url, "--token", stack.secret, deal_id, "complaint"
    )
    assert complaint.stdout == f"deal {deal_id} is disputed\n"
    assert httpx.post(reports, json={"report": "cancel"}, headers=alice).status_code == 409
    # After the settle grace the market records both meters but leaves the dispute to an operator.
    deadline = time.monotonic() + 30
    while "meters_reconciled" not in [t["event"] for t in market.api.deal(deal_id)["transitions"]]:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    time.sleep(2)  # ticks go on
    assert market.api.deal(deal_id)["state"] == "disputed"

    resolution = f"{market.url}/v1/deals/{deal_id}/resolution"
    assert httpx.post(resolution, json={"bill": "lower"}, headers=alice).status_code == 403  # no operator key
    stack.ipsx("account", "create", "--address", "0x" + "0e" * 20, "--name", "ops")
    operator_key = re.search(
        r"secret: (\S+)", stack.ipsx("key", "create", "ops", "--scopes", "operator").stdout
    )
    assert operator_key is not None
    ops = {"Authorization": f"Bearer {operator_key.group(1)}"}
    # The API never grants the operator scope.
    granted = httpx.post(f"{market.url}/v1/keys", json={"scopes": ["operator"]}, headers=alice)
    assert granted.status_code == 422
    assert httpx.post(resolution, json={"bill": "everything"}, headers=ops).status_code == 422
    # The command line, as the requester (no operator key) and as the operator.
    not_yours = stack.ipsx(
        "deal",
        "resolve",
        "--api",
        market.url,
        "--token",
        stack.secret,
        deal_id,
        "--bill",
        "lower",
        check=False,
    )
    assert not_yours.returncode == 2 and "(403 insufficient_scope)" in not_yours.stderr
    decided_cli = stack.ipsx(
        "deal",
        "resolve",
        "--api",
        market.url,
        "--token",
        operator_key.group(1),
        deal_id,
        "--bill",
        "lower",
        "--json",
    ).stdout
    decided = json.loads(decided_cli)
    assert decided["state"] == "resolved", decided_cli
    assert httpx.post(resolution, json={"bill": "none"}, headers=ops).status_code == 409  # decided once
    gateway, agent = stack.query(
        "SELECT COALESCE(SUM(gateway_bytes_up + gateway_bytes_down), 0)::int8 AS g,"
        " COALESCE(SUM(agent_bytes_up + agent_bytes_down), 0)::int8 AS a"
        " FROM metered_streams WHERE deal_id = $1",
        deal_id,
    )[0]
    assert decided["billable_bytes"] == min(gateway, agent) > 5000

    deadline = time.monotonic() + 40
    while market.api.deal(deal_id)["state"] != "settled" and time.monotonic() < deadline:
        time.sleep(0.5)
    settled = market.api.deal(deal_id)
    assert settled["state"] == "settled"
    assert settled["billable_bytes"] == min(gateway, agent)
    steps = [(t["event"], t["actor"]) for t in settled["transitions"]]
    assert ("complaint", "requester") in steps and ("dispute_resolved", "operator") in steps
    assert steps[-1] == ("settle", "system")
    assert stack.query("SELECT SUM(balance)::text AS total FROM ledger_balances")[0]["total"] == "0"


# The two PAC helper functions the order's PAC file calls, as browsers provide them ("*" globs only).
_PAC_RUNTIME = r"""
function isPlainHostName(host) { return host.indexOf(".") < 0; }
function shExpMatch(text, pattern) {
  var parts = pattern.split("*").map(function (part) { return part.replace(/[.+?^${}()|[\]\\]/g, "\\$&"); });
  return new RegExp("^" + parts.join(".*") + "$").test(text);
}
"""


def find_proxy(script: str, url: str, host: str) -> str:
    """What the PAC ``script`` answers for ``url``, evaluated by node as a browser would."""
    node = shutil.which("node")
    assert node is not None, "the PAC test needs node (installed on every machine of this project)"
    call = f"process.stdout.write(FindProxyForURL({json.dumps(url)}, {json.dumps(host)}));"
    program = f"{_PAC_RUNTIME}\n{script}\n{call}"
    return subprocess.run(
        [node, "-e", program], capture_output=True, text=True, timeout=20, check=True
    ).stdout


def test_a_pac_file_per_order_routes_a_browser_through_that_orders_deals(
    stack: Stack, market: Market
) -> None:
    orders = {}
    for country in ("fr", "de"):
        placed = market.api.place_request(
            filters={"country": country, "protocol": "https"},
            ips=1,
            duration_s=60,
            traffic_bytes=10**8,
            max_price_per_gb=str(2 * IPSX),
            rest=False,
        )
        assert len(placed["deals"]) == 1
        orders[country] = placed
    bearer = {"Authorization": f"Bearer {stack.secret}"}
    info = httpx.get(f"{market.url}/v1/orders/{orders['fr']['order_id']}/pac", headers=bearer).json()
    assert info["proxy"] == f"127.0.0.1:{market.proxy_port}"
    assert info["proxy_username"] == f"{stack.account}-order-{orders['fr']['order_id']}"
    # The browser fetches the PAC file without credentials: the URL itself is the capability.
    fetched = httpx.get(info["pac_url"])
    assert fetched.status_code == 200
    assert fetched.headers["content-type"].startswith("application/x-ns-proxy-autoconfig")
    assert stack.secret not in fetched.text
    proxy = find_proxy(fetched.text, "https://example.test/page", "example.test")
    assert proxy == f"PROXY {info['proxy']}"  # no DIRECT fallback around the gateway
    assert find_proxy(fetched.text, "http://localhost:3000/", "localhost") == "DIRECT"
    # The browser then answers the gateway's 407 with the user name and the API key's secret: every
    # connection leaves through the order's deal, not through alice's other deals (the German
    # order's, the German spot deal, her dedicated US exit), plain HTTP and CONNECT alike.
    via = f"http://{info['proxy']}"
    user = f"{info['proxy_username']}:{stack.secret}"
    assert {curl("-x", via, "-U", user, stack.origin.url("/ip")).stdout for _ in range(4)} == {EXITS["fr"]}
    tunneled = curl("-p", "-x", via, "-U", user, stack.origin.url("/ip"))
    assert tunneled.stdout == EXITS["fr"]
    de_user = f"{stack.account}-order-{orders['de']['order_id']}:{stack.secret}"
    assert curl("-x", via, "-U", de_user, stack.origin.url("/ip")).stdout == EXITS["de"]
    fr_deal = orders["fr"]["deals"][0]["deal_id"]
    rows = stack.wait_usage("deal_id = $1", fr_deal, count=5)
    assert {row["exit_id"] for row in rows} == {orders["fr"]["deals"][0]["exit_id"]}
    # An order with no active deal serves nothing: no spot deal is opened behind the pin.
    deals_before = len(list(market.api.deals()))
    refused = curl(
        "-i", "-x", via, "-U", f"{stack.account}-order-nosuch:{stack.secret}", stack.origin.url("/ip")
    )
    assert refused.stdout.startswith("HTTP/1.1 502"), refused.stdout
    assert len(list(market.api.deals())) == deals_before
    # A forged or foreign capability finds nothing; another account cannot get the order's URL.
    assert httpx.get(info["pac_url"][:-8] + "AAAAAAA.pac").status_code == 404
    stranger = Client.sign_in(market.url, load_key(stack.tmp / "agent-fr.key", None))
    with pytest.raises(ApiError) as foreign:
        stranger.order_pac(orders["fr"]["order_id"])
    assert foreign.value.status == 404
    assert market.api.order_pac(orders["de"]["order_id"])["proxy_username"].endswith(orders["de"]["order_id"])


@pytest.mark.parametrize("tunnel", [True, False], ids=["connect", "forwarded"])
def test_one_long_lived_stream_ends_once_its_deal_carried_the_allowance(
    stack: Stack, market: Market, tunnel: bool
) -> None:
    allowance, body = 2 * 10**6, 200 * 10**6
    placed = market.api.place_request(
        filters={"country": "fr", "protocol": "https" if tunnel else "http"},
        ips=1,
        duration_s=120,
        traffic_bytes=allowance,
        max_price_per_gb=str(2 * IPSX),
        rest=False,
    )
    (deal,) = placed["deals"]
    user = f"{stack.account}-order-{placed['order_id']}:{stack.secret}"
    # One stream (a CONNECT tunnel, or a forwarded GET), read at 4 MB/s: the 200 MB body would take
    # 50 s; the stream is cut once the deal's counter passes 2 MB, at the gateway's next
    # half-second pass.
    started = time.monotonic()
    download = subprocess.run(
        ["curl", "-sS", *(["-p"] if tunnel else []), "-x", f"http://127.0.0.1:{market.proxy_port}",
         "-U", user, "--limit-rate", "4M", "-o", "/dev/null", "-w", "%{size_download}", "--max-time", "40",
         stack.origin.url(f"/bytes/{body}")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert download.returncode in (18, 56), download.stderr  # the transfer was cut short
    received = int(download.stdout)
    assert elapsed < 30
    (row,) = stack.wait_usage("deal_id = $1", deal["deal_id"], count=1)
    assert row["outcome"] == row["agent_outcome"] == "allowance_used"
    # The agent heard where the gateway cut the download: both meters count the same bytes.
    assert (row["agent_bytes_up"], row["agent_bytes_down"]) == (
        row["gateway_bytes_up"],
        row["gateway_bytes_down"],
    )
    metered = row["gateway_bytes_up"] + row["gateway_bytes_down"]
    assert allowance <= metered < body // 4
    # Ended, not reset: the client got every byte it is billed for (all but the heads).
    assert row["gateway_bytes_down"] - 1000 <= received <= row["gateway_bytes_down"]
    # The deal ends on its allowance and bills what was metered, up to its reserve.
    deadline = time.monotonic() + 40
    while market.api.deal(deal["deal_id"])["state"] != "settled" and time.monotonic() < deadline:
        time.sleep(0.5)
    settled = market.api.deal(deal["deal_id"])
    assert settled["state"] == "settled"
    events = [t["event"] for t in settled["transitions"]]
    assert "allowance_used" in events
    assert "dispute_resolved" not in events and settled["billable_bytes"] == metered  # the meters matched
    assert int(settled["charge"]["base_units"]) <= int(deal["reserve"]["base_units"])


# The scripted market: three providers of its own (Italy, Spain, the Netherlands) and two new
# requesters, several orders each, traffic through the gateway with curl, every deal settled.
SCRIPT_EXITS = {
    "it": ("127.0.0.21", IPSX),
    "es": ("127.0.0.22", 3 * IPSX // 2),
    "nl": ("127.0.0.23", 2 * IPSX),
}


def _balances(stack: Stack) -> dict[str, int]:
    return {
        row["account"]: int(row["balance"])
        for row in stack.query("SELECT account, balance FROM ledger_balances")
    }


def _key_of(stack: Stack, name: str) -> str:
    stack.ipsx("account", "create", "--address", "0x" + secrets.token_hex(20), "--name", name)
    stack.ipsx("account", "credit", name, "3", "--reference", f"script-{name}")
    found = re.search(r"secret: (\S+)", stack.ipsx("key", "create", name).stdout)
    assert found is not None
    return found.group(1)


@pytest.mark.timeout(180)
def test_a_scripted_market_matches_routes_settles_and_balances_to_the_base_unit(
    stack: Stack, market: Market
) -> None:
    before = _balances(stack)
    providers: dict[str, str] = {}  # country → the provider's account name
    try:
        for country, (bind, _) in SCRIPT_EXITS.items():
            stack.start_agent(f"script-{country}", bind, country, "--type", "mobile", "--allow-private")
        for country, (bind, price) in SCRIPT_EXITS.items():
            exit_id = stack.exit_id(f"script-{country}", bind)
            stack.wait_exit_on(exit_id, {"market-node"})
            provider = Client.sign_in(market.url, load_key(stack.tmp / f"script-{country}.key", None))
            providers[country] = provider.me()["account"]["name"]
            provider.place_offer(
                exit_id=exit_id, price_per_gb=str(price), sharing="shared", shared_capacity=4
            )
        tessa, ugo = _key_of(stack, "tessa"), _key_of(stack, "ugo")
        as_tessa, as_ugo = Client(market.url, token=tessa), Client(market.url, token=ugo)
        common = {"duration_s": 8, "traffic_bytes": 10**8, "rest": False}
        # tessa buys one Italian and one Spanish IP; ugo two mobile IPs anywhere at up to 1.5 IPSX/GB
        # (the Italian and the Spanish: the Dutch one is dearer), and a Dutch IP at up to 1.2 IPSX/GB,
        # which rests on the book unfilled.
        bought = {
            "tessa": [
                as_tessa.place_request(
                    filters={"country": c, "protocol": "https"},
                    ips=1,
                    max_price_per_gb=str(2 * IPSX),
                    **common,
                )
                for c in ("it", "es")
            ],
            "ugo": [
                as_ugo.place_request(
                    filters={"type": "mobile", "protocol": "https"},
                    ips=2,
                    max_price_per_gb=str(3 * IPSX // 2),
                    **common,
                )
            ],
        }
        resting = as_ugo.place_request(
            filters={"country": "nl", "protocol": "https"}, ips=1, duration_s=8, traffic_bytes=10**8,
            max_price_per_gb=str(6 * IPSX // 5),
        )  # fmt: skip
        assert resting["deals"] == [] and resting["resting"]
        deals = {name: [d for order in orders for d in order["deals"]] for name, orders in bought.items()}
        exits_of = {name: {d["exit_id"] for d in found} for name, found in deals.items()}
        by_exit = {stack.exit_id(f"script-{c}", bind): bind for c, (bind, _) in SCRIPT_EXITS.items()}
        assert {by_exit[e] for e in exits_of["tessa"]} == {"127.0.0.21", "127.0.0.22"}
        assert {by_exit[e] for e in exits_of["ugo"]} == {"127.0.0.21", "127.0.0.22"}
        # Traffic: each requester's connections leave only through its own deals' exits.
        proxy = f"http://127.0.0.1:{market.proxy_port}"
        seen: dict[str, set[str]] = {"tessa": set(), "ugo": set()}
        for name, secret in (("tessa", tessa), ("ugo", ugo)):
            for suffix in ("", "-country-it", "-country-es", ""):
                answer = curl("-p", "-x", proxy, "-U", f"{name}{suffix}:{secret}", stack.origin.url("/ip"))
                seen[name].add(answer.stdout)
        assert seen == {"tessa": {"127.0.0.21", "127.0.0.22"}, "ugo": {"127.0.0.21", "127.0.0.22"}}
        # ugo's Dutch order rests unfilled, and no spot deal is made above his price cap.
        refused = curl(
            "-i",
            "-x",
            f"http://ugo-country-nl-maxprice-1.2:{ugo}@127.0.0.1:{market.proxy_port}",
            stack.origin.url("/ip"),
        )
        assert refused.stdout.startswith("HTTP/1.1 502") and "none at your prices" in refused.stdout
        assert "X-IPSX-Error: offers_above_price" in refused.stdout
        # Nothing at all is offered in Portugal: no offer matches, at any price.
        nothing = curl(
            "-i",
            "-x",
            f"http://ugo-country-pt:{ugo}@127.0.0.1:{market.proxy_port}",
            stack.origin.url("/ip"),
        )
        assert nothing.stdout.startswith("HTTP/1.1 502")
        assert "X-IPSX-Error: no_offer_matches" in nothing.stdout and "at any price" in nothing.stdout
        as_ugo.cancel(resting["order_id"])
        all_deals = [d["deal_id"] for found in deals.values() for d in found]
        rows = stack.wait_usage("deal_id = ANY($1::text[])", all_deals, count=8)
        for row in rows:
            owner = "tessa" if row["requester"] == "tessa" else "ugo"
            assert row["exit_id"] in exits_of[owner]
        # Every deal ends with its time frame, reconciles both meters and settles.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = {
                row["state"]
                for row in stack.query("SELECT state FROM deals WHERE deal_id = ANY($1::text[])", all_deals)
            }
            if states == {"settled"}:
                break
            time.sleep(0.5)
        assert states == {"settled"}
        settled = {row["deal_id"]: row for row in stack.query(
            "SELECT deal_id, requester, provider, price_per_gb::text, charge::text, commission::text,"
            " billable_bytes FROM deals WHERE deal_id = ANY($1::text[])", all_deals)}  # fmt: skip
        # Each charge is the metered bytes at the deal's price, rounded up; 10 % of it is commission.
        for deal_id, row in settled.items():
            metered = sum(
                r["gateway_bytes_up"] + r["gateway_bytes_down"] for r in rows if r["deal_id"] == deal_id
            )
            assert row["billable_bytes"] == metered > 0
            charge = -(-int(row["price_per_gb"]) * metered // 10**9)
            assert (int(row["charge"]), int(row["commission"])) == (charge, charge // 10)
        # The ledger moved exactly those amounts, to the base unit.
        after = _balances(stack)
        delta = {
            account: after.get(account, 0) - before.get(account, 0) for account in set(after) | set(before)
        }
        charges = {
            name: sum(int(r["charge"]) for r in settled.values() if r["requester"] == name)
            for name in ("tessa", "ugo")
        }
        for name in ("tessa", "ugo"):
            assert delta[f"requester:{name}"] == 3 * IPSX - charges[name]
            assert delta.get(f"hold:requester:{name}", 0) == 0
        for country, provider in providers.items():
            earned = sum(
                int(r["charge"]) - int(r["commission"]) for r in settled.values() if r["provider"] == provider
            )
            assert delta.get(f"provider:{provider}", 0) == earned, country
        script_commission = sum(int(r["commission"]) for r in settled.values())
        assert delta["operator:commission"] >= script_commission  # other tests' deals may settle meanwhile
        # Nothing but the two credits came into the books: every account sums to zero.
        assert sum(after.values()) == 0
        assert delta["operator:treasury"] <= -6 * IPSX
    finally:
        for country in SCRIPT_EXITS:
            stack.stop_agent(f"script-{country}")


def test_a_provider_offers_all_its_live_exits_from_the_command_line(stack: Stack, market: Market) -> None:
    key = str(stack.tmp / "agent-fr.key")
    fr_exit = stack.exit_id("agent-fr", EXITS["fr"])
    provider = Client.sign_in(market.url, load_key(stack.tmp / "agent-fr.key", None))
    assert [(e["exit_id"], e["bind"], e["country"]) for e in provider.exits()] == [
        (fr_exit, EXITS["fr"], "fr")
    ]
    api = ["--api", market.url, "--key", key]
    placed = stack.ipsx(
        "order", "offer", *api, "--all-exits", "--exit-country", "fr", "--price-per-gb", "50",
        "--schedule", "00:00-00:00",
    ).stdout  # fmt: skip
    found = re.fullmatch(rf"offer (\w+) placed for exit {fr_exit}; 0 deal\(s\) opened\n", placed)
    assert found is not None, placed
    terms = json.loads(
        stack.query("SELECT terms::text FROM market_orders WHERE order_id = $1", found.group(1))[0][0]
    )
    assert terms["schedule"] == "00:00-00:00" and terms["exit_id"] == fr_exit
    stack.ipsx("order", "cancel", *api, found.group(1))
    none = stack.ipsx("order", "offer", *api, "--all-exits", "--exit-country", "de", check=False)
    assert none.returncode == 2 and "no live exit of yours matches" in none.stderr


def test_a_requester_that_stops_paying_is_cut_off_until_its_agent_pays(stack: Stack, market: Market) -> None:
    wallet = stack.tmp / "dora.key"
    address = stack.ipsx("wallet", "new", "--out", str(wallet)).stdout.split()[1]
    stack.ipsx("account", "create", "--address", address, "--name", "dora")
    stack.ipsx("account", "credit", "dora", "2", "--reference", "market-e2e-dora")
    secret = re.search(r"secret: (\S+)", stack.ipsx("key", "create", "dora").stdout)
    assert secret is not None
    # dora pays over a channel (as the chain watcher records one), and a deal of hers settled for
    # 0.6 IPSX: more than the 0.5 IPSX of unpaid usage this market allows.
    stack.query(
        "INSERT INTO channels (channel_id, contract, sender, receiver, role, account_id, deposit,"
        " opened_block) SELECT $1, $2, $3, $4, 'requester', id, $5, 1 FROM accounts WHERE name = 'dora'",
        "0x" + secrets.token_hex(32), CHANNELS, address, "0x" + "0f" * 20, 2 * IPSX,
    )  # fmt: skip
    stack.query(
        "INSERT INTO deals (deal_id, request_id, offer_id, requester, provider, exit_id, price_per_gb,"
        " price_per_hour, reserve, duration_s, traffic_bytes, dedicated, state, record, charge, commission)"
        " VALUES ('rdora_1', 'rdora', 'o', 'dora', 'bob', 'e', 1, 0, $1, 60, 0, false, 'settled', '{}',"
        " $1, 0)",
        6 * IPSX // 10,
    )  # fmt: skip
    proxy = market.proxy(stack, "-country-fr", secret=secret.group(1), account="dora")
    deadline = time.monotonic() + 20
    while "402 Payment Required" not in (refused := curl("-i", "-x", proxy, stack.origin.url("/ip")).stdout):
        assert time.monotonic() < deadline, refused
        time.sleep(0.2)
    assert "X-IPSX-Error: payment_required" in refused
    # Her agent checks the invoice against its budget and signs the balance proof that pays it.
    paid = stack.ipsx("pay", "--api", market.url, "--key", str(wallet), "--once", "--max-invoice", "1").stdout
    assert re.fullmatch(r"paid invoice \d+: balance 0\.6 IPSX signed\n", paid), paid
    deadline = time.monotonic() + 20
    while (served := curl("-x", proxy, stack.origin.url("/ip")).stdout) != EXITS["fr"]:
        assert time.monotonic() < deadline, served
        time.sleep(0.2)


def test_a_provider_sees_its_exits_health_after_traffic(stack: Stack, market: Market) -> None:
    for _ in range(3):
        assert curl("-x", market.proxy(stack, "-country-fr"), stack.origin.url("/ip")).stdout == EXITS["fr"]
    wallet = load_key(stack.tmp / "agent-fr.key", None)
    provider = Client.sign_in(market.url, wallet)
    deadline = time.monotonic() + 15  # each gateway node writes its records every second
    while True:
        (mine,) = provider.exits()
        health = mine["health"]
        if health["success_rate"] is not None or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert mine["bind"] == EXITS["fr"]
    assert health["state"] == "healthy" and health["success_rate"] == 1.0
    assert health["dial_latency_ms"] is not None and health["dial_latency_ms"] > 0
    assert health["quarantined_until"] is None
    # Earlier tests on this shared stack had destinations refuse (policy, refused): those are the
    # destination's errors, noted but never the exit's failures.
    destinations = {"policy", "refused", "dns", "unreachable"}
    assert {error["reason"] for error in health["recent_errors"]} <= destinations

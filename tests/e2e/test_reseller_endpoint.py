"""End-to-end white label: a gateway node with a reseller's listener (``--reseller-port``) and the
market, the provider agents and the origin of the session's stack. A sub-user of the reseller is
served on its reseller's port only, under the reseller's brand and never IPSX's; its streams are
metered under it and show in the reseller's report; its deals settle with the reseller's markup;
its quota, spend limit and suspension stop its new streams with a clear reason."""

from __future__ import annotations

import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis

from gateway.agent.settings import load_key
from ipsx.sdk import Client
from tests.e2e.conftest import EXITS, REDIS_URL, Stack, free_port, wait_port
from tests.e2e.test_proxy import curl

pytestmark = pytest.mark.timeout(180)

IPSX = 10**18
MARKUP_BPS = 2_000
BRAND, TOKEN = "Shop Proxy", "ShopProxy"


@dataclass
class Reseller:
    api: httpx.Client  # the reseller's key
    port: int  # its listener
    market_port: int  # the same node's main HTTP port
    secret: str  # its sub-user bob's key, for the API
    password: str  # the same as bob gives it on the listener: without the platform's prefix
    account: str  # bob's internal account name

    def proxy(self, user: str = "bob", secret: str | None = None, *, port: int | None = None) -> str:
        return f"http://{user}:{secret or self.password}@127.0.0.1:{port or self.port}"


def _exit_of(address: str) -> str:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(match="ipsx:{pool}:exit:*"):
            if client.hget(key, "provider") == address.encode():
                return str(key.decode().rsplit(":", 1)[1])
    finally:
        client.close()
    raise AssertionError(f"no live exit of {address}")


def _secret(output: str) -> str:
    found = re.search(r"secret: (\S+)", output)
    assert found is not None, output
    return found.group(1)


@pytest.fixture(scope="module")
def reseller(stack: Stack) -> Iterator[Reseller]:
    api_port, http_port, tunnel_port, port = free_port(), free_port(), free_port(), free_port()
    stack.env.setdefault("IPSX_JWT_SECRET", secrets.token_urlsafe(32))
    stack.ipsx("account", "create", "--address", "0x" + "7e" * 20, "--name", "rs_shop")
    shop_key = _secret(stack.ipsx("key", "create", "rs_shop").stdout)
    stack.ipsx("account", "credit", "rs_shop", "20", "--reference", "reseller-e2e-funding")
    stack.ipsx("reseller", "create", "rs_shop", "--brand", BRAND, "--markup-bps", str(MARKUP_BPS))
    stack.ipsx("reseller", "subuser-create", "rs_shop", "bob")
    made = stack.ipsx("reseller", "subuser-key", "rs_shop", "bob").stdout
    secret = _secret(made)
    password = re.search(r"proxy password: (\S+)", made)
    assert password is not None and "ipsx" not in password.group(1).lower()
    stack.ipsx("reseller", "fund", "rs_shop", "bob", "5", "--reference", "reseller-e2e-bob")
    account = stack.query(
        "SELECT a.name FROM reseller_subusers s JOIN accounts a ON a.id = s.account_id WHERE s.name = 'bob'"
        " AND s.reseller_id = (SELECT id FROM accounts WHERE name = 'rs_shop')"
    )[0]["name"]
    api = stack.spawn(
        "api", "--port", str(api_port), "--proxy-address", f"127.0.0.1:{http_port}", "--spot-duration", "5",
        log="reseller-api.log",
    )  # fmt: skip
    gateway = stack.spawn_gateway(
        "reseller-node", http_port, tunnel_port, "--market", "--reseller-port", f"rs_shop={port}"
    )
    url = f"http://127.0.0.1:{api_port}"
    try:
        wait_port(api_port)
        wait_port(port)
        for country, bind in EXITS.items():
            stack.wait_exit_on(stack.exit_id(f"agent-{country}", bind), {"reseller-node"})
        for country in EXITS:  # each provider offers its exit at 1 IPSX/GB
            wallet = load_key(stack.tmp / f"agent-{country}.key", None)
            Client.sign_in(url, wallet).place_offer(
                exit_id=_exit_of(wallet.address), price_per_gb=str(IPSX), sharing="both", shared_capacity=4
            )
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {shop_key}"}, timeout=10
        ) as client:
            yield Reseller(client, port, http_port, secret, password.group(1), account)
    finally:
        for proc in (gateway, api):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)


def _no_platform(text: str) -> None:
    """Nothing the gateway wrote names the platform (a refusal is the gateway's alone)."""
    assert "ipsx" not in text.lower(), text


def _no_platform_headers(head: str) -> None:
    """No header of the gateway's names the platform (the origin's own Server header may)."""
    ours = [line for line in head.splitlines() if not line.lower().startswith("server:")]
    _no_platform("\n".join(ours))


def _until(probe: Callable[[], subprocess.CompletedProcess[str]], expected: str, timeout: float = 30) -> str:
    """``probe``'s output once it starts with ``expected`` (a standing is cached a few seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        out = probe().stdout
        if out.startswith(expected) or time.monotonic() > deadline:
            return str(out)
        time.sleep(0.5)


def test_a_subuser_is_served_on_its_resellers_port_under_its_brand(stack: Stack, reseller: Reseller) -> None:
    answer = curl("-i", "-x", reseller.proxy("bob-country-fr"), stack.origin.url("/ip"))
    assert answer.stdout.startswith("HTTP/1.1 200")
    head, _, body = answer.stdout.partition("\n\n")  # curl's CRLFs, as text
    assert body == EXITS["fr"]
    assert re.search(rf"^X-{TOKEN}-Exit: [0-9a-f]{{16}}$", head, re.MULTILINE)
    assert re.search(rf"^X-{TOKEN}-Tries: 1$", head, re.MULTILINE)
    _no_platform_headers(head)
    tunnel = curl("-i", "-p", "-x", reseller.proxy("bob-country-fr"), stack.origin.url("/ip"))
    connected, _, rest = tunnel.stdout.partition("\n\n")
    assert connected.startswith("HTTP/1.1 200") and rest.endswith(EXITS["fr"])
    assert re.search(rf"^X-{TOKEN}-Exit: [0-9a-f]{{16}}$", connected, re.MULTILINE)
    _no_platform(connected)
    socks = f"socks5h://bob-country-fr:{reseller.password}@127.0.0.1:{reseller.port}"
    assert curl("-x", socks, stack.origin.url("/ip")).stdout == EXITS["fr"]
    # the whole key secret works as the password too
    whole = curl("-x", reseller.proxy("bob-country-fr", reseller.secret), stack.origin.url("/ip"))
    assert whole.stdout == EXITS["fr"]
    # Metered under the sub-user's account, under a deal of its own, on the reseller's node.
    rows = stack.wait_usage("requester = $1", reseller.account, count=4)  # plain, CONNECT, SOCKS5, plain
    assert {row["node"] for row in rows} == {"reseller-node"}
    assert all(row["deal_id"] for row in rows)
    owners = stack.query(
        "SELECT DISTINCT requester FROM deals WHERE deal_id = ANY($1::text[])",
        [row["deal_id"] for row in rows],
    )
    assert [row["requester"] for row in owners] == [reseller.account]
    carried = sum(row["gateway_bytes_up"] + row["gateway_bytes_down"] for row in rows)
    # ... and in the reseller's report and the sub-user's own view.
    report = {row["name"]: row for row in reseller.api.get("/v1/reseller/usage").json()["items"]}
    assert report["bob"]["streams"] == len(rows)
    assert report["bob"]["bytes"]["up"] + report["bob"]["bytes"]["down"] == carried
    detail = reseller.api.get("/v1/reseller/subusers/bob").json()
    assert detail["month"]["used_bytes"] == carried
    auth = {"Authorization": f"Bearer {reseller.secret}"}
    with httpx.Client(base_url=reseller.api.base_url, headers=auth, timeout=10) as own:
        mine = own.get("/v1/usage").json()["items"]
    assert {item["event_id"] for item in mine} == {row["event_id"] for row in rows}


def test_subuser_credentials_are_refused_on_the_main_ports(stack: Stack, reseller: Reseller) -> None:
    for port in (reseller.market_port, stack.http_port):
        for user in ("bob", reseller.account):
            for password in (reseller.password, reseller.secret):
                refused = curl("-i", "-x", reseller.proxy(user, password, port=port), stack.origin.url("/ip"))
                assert refused.stdout.startswith("HTTP/1.1 407"), (port, user, refused.stdout)
    # and an ordinary account's key is no credential on the reseller's port
    refused = curl("-i", "-x", reseller.proxy(stack.account, stack.secret), stack.origin.url("/ip"))
    assert refused.stdout.startswith("HTTP/1.1 407")


def test_a_wrong_password_on_the_resellers_port_gets_a_branded_407(stack: Stack, reseller: Reseller) -> None:
    wrong = curl("-i", "-x", reseller.proxy(secret="ipsx_000000000000_" + "A" * 32), stack.origin.url("/ip"))
    assert wrong.stdout.startswith("HTTP/1.1 407")
    assert f'Proxy-Authenticate: Basic realm="{BRAND}"' in wrong.stdout
    assert f"X-{TOKEN}-Error: auth_failed" in wrong.stdout
    _no_platform(wrong.stdout)
    anonymous = curl("-i", "-x", f"http://127.0.0.1:{reseller.port}", stack.origin.url("/ip"))
    assert anonymous.stdout.startswith("HTTP/1.1 407") and f'realm="{BRAND}"' in anonymous.stdout
    _no_platform(anonymous.stdout)
    # A targeting error whose text names the targeting headers names them by the brand.
    bad = curl("-i", "-x", reseller.proxy("bob-ban-x"), stack.origin.url("/ip"))
    assert bad.stdout.startswith("HTTP/1.1 400") and f"X-{TOKEN}-Error: bad_targeting" in bad.stdout
    assert f"X-{TOKEN}-Exit" in bad.stdout
    _no_platform(bad.stdout)


def test_request_headers_under_the_brands_name_target_and_stay_at_the_gateway(
    stack: Stack, reseller: Reseller
) -> None:
    # The reseller's customers target with X-<brand>-* headers, as its documentation says.
    for country in ("fr", "us"):
        named = curl("-x", reseller.proxy(), "-H", f"X-{TOKEN}-Country: {country}", stack.origin.url("/ip"))
        assert named.stdout == EXITS[country]
    # Neither the brand's nor the platform's form reaches the origin; other headers do.
    echoed = curl(
        "-x", reseller.proxy(), "-H", f"X-{TOKEN}-Country: de", "-H", "X-IPSX-Session: s1",
        "-H", "X-Shop-Order: 42", stack.origin.url("/headers"),
    )  # fmt: skip
    assert "X-Shop-Order: 42" in echoed.stdout
    assert TOKEN.lower() not in echoed.stdout.lower() and "ipsx" not in echoed.stdout.lower()
    # A tunnel's CONNECT carries them as proxy headers.
    tunnel = curl(
        "-p", "-x", reseller.proxy(), "--proxy-header", f"X-{TOKEN}-Country: de", stack.origin.url("/ip")
    )
    assert tunnel.stdout == EXITS["de"]
    # A bad value is refused under the brand's name, naming no platform; a header under the
    # brand's name that the gateway does not read is the client's own and goes to the origin.
    bad = curl("-i", "-x", reseller.proxy(), "-H", f"X-{TOKEN}-Country: france", stack.origin.url("/ip"))
    assert bad.stdout.startswith("HTTP/1.1 400") and f"X-{TOKEN}-Error: bad_targeting" in bad.stdout
    assert f"X-{TOKEN}-Country" in bad.stdout
    _no_platform(bad.stdout)
    own = curl("-x", reseller.proxy(), "-H", f"X-{TOKEN}-Colour: red", stack.origin.url("/headers"))
    assert f"X-{TOKEN}-Colour: red" in own.stdout


def test_the_markup_is_charged_to_the_subuser_and_credited_to_the_reseller(
    stack: Stack, reseller: Reseller
) -> None:
    assert curl("-x", reseller.proxy("bob-country-de"), stack.origin.url("/ip")).stdout == EXITS["de"]
    # Spot deals last 5 s; the market settles each a few seconds after it ends.
    deadline = time.monotonic() + 60
    query = (
        "SELECT d.deal_id, d.state, d.charge::text AS charge, m.due::text AS due, m.charged::text AS charged"
        " FROM deals d LEFT JOIN reseller_markups m USING (deal_id) WHERE d.requester = $1"
    )
    deals = stack.query(query, reseller.account)
    while any(row["state"] != "settled" for row in deals) and time.monotonic() < deadline:
        time.sleep(0.5)
        deals = stack.query(query, reseller.account)
    assert len(deals) >= 2 and all(row["state"] == "settled" for row in deals), deals
    charges = [int(row["charge"]) for row in deals]
    assert sum(charges) > 0
    for row, charge in zip(deals, charges, strict=True):
        assert int(row["due"]) == int(row["charged"]) == charge * MARKUP_BPS // 10_000
    earned = sum(int(row["charged"]) for row in deals)
    balances = {
        row["account"]: int(row["balance"])
        for row in stack.query("SELECT account, balance::text FROM ledger_balances")
    }
    assert balances["provider:rs_shop"] == earned
    assert balances[f"requester:{reseller.account}"] == 5 * IPSX - sum(charges) - earned
    assert balances.get(f"hold:requester:{reseller.account}", 0) == 0
    assert balances["requester:rs_shop"] == 15 * IPSX
    assert sum(balances.values()) == 0
    profile = reseller.api.get("/v1/reseller").json()
    assert profile["markup_earned"]["base_units"] == str(earned)
    report = reseller.api.get("/v1/reseller/usage").json()
    assert report["totals"]["markup"]["charged"]["base_units"] == str(earned)
    assert report["totals"]["charged"]["base_units"] == str(sum(charges))


def test_a_subuser_past_its_limits_is_refused_with_the_reason(stack: Stack, reseller: Reseller) -> None:
    def fetch() -> subprocess.CompletedProcess[str]:
        return curl("-i", "-x", reseller.proxy("bob-country-fr"), stack.origin.url("/ip"))

    def limit(**changes: object) -> None:
        assert reseller.api.patch("/v1/reseller/subusers/bob", json=changes).status_code == 200

    assert fetch().stdout.startswith("HTTP/1.1 200")
    limit(quota_bytes=1)  # bob has carried more than a byte this month
    refused = _until(fetch, "HTTP/1.1 403")
    assert f"X-{TOKEN}-Error: quota_exceeded" in refused and "monthly traffic quota is used up" in refused
    _no_platform(refused)
    socks = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-x", f"socks5h://bob:{reseller.password}@127.0.0.1:{reseller.port}",
         stack.origin.url("/ip")],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert socks.returncode != 0 and socks.stdout == ""

    limit(quota_bytes=None, spend_limit="1")  # bob's settled charges are well past 1 base unit
    refused = _until(fetch, "HTTP/1.1 402")
    assert f"X-{TOKEN}-Error: spend_limit_reached" in refused and "monthly spend limit is reached" in refused
    _no_platform(refused)

    limit(spend_limit=None, suspended=True)
    refused = _until(fetch, "HTTP/1.1 403")
    assert f"X-{TOKEN}-Error: account_suspended" in refused

    limit(suspended=False)
    assert _until(fetch, "HTTP/1.1 200").endswith(EXITS["fr"])

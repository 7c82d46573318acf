"""The dashboard in a real browser (Playwright driving Debian's Chromium) against a running stack:
a gateway node with the market in force, a billing worker, three provider agents on 127.0.0.2-4
that offer their exits, an origin, and the API with its pages (demo login as alice).

The flow a newcomer follows: sign in, make a key, build a proxy URL, send traffic through it with
curl, watch the live chart and the spend move, place and cancel an order; then the basics of
accessibility (labels, keyboard order, a phone's width, the dark theme) and the wallet sign-in.
Screenshots of each step go to ``tests/web/artifacts/`` (or ``$IPSX_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from playwright.sync_api import Browser, Page, expect

from gateway.agent.settings import load_key
from ipsx.sdk import Client
from tests.e2e.conftest import EXITS, Stack, free_port, running_stack, wait_port
from tests.web.browser import NEEDS, shot, start_api

REDIS_URL = os.environ.get("IPSX_TEST_WEB_E2E_REDIS_URL", "redis://127.0.0.1:6379/6")
IPSX = 10**18

pytestmark = NEEDS


@dataclass
class Dashboard:
    url: str
    stack: Stack
    http_port: int


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    tmp = tmp_path_factory.mktemp("web-e2e")
    with running_stack(tmp, f"ipsx_test_web_e2e_{os.getpid()}", REDIS_URL, gateway=False) as stack:
        stack.spawn(
            "gateway", "--http-port", str(stack.http_port), "--socks-port", str(stack.socks_port),
            "--tunnel-port", str(stack.tunnel_port), "--node-id", "web-node", "--market",
            log="gateway.log",
        )  # fmt: skip
        stack.spawn("worker", log="worker.log")
        wait_port(stack.tunnel_port)
        for country, bind in EXITS.items():
            stack.start_agent(f"agent-{country}", bind, country, "--allow-private")
        stack.wait_exits(len(EXITS))
        stack.ipsx("account", "credit", "alice", "5", "--reference", "web-e2e-funding")
        port = free_port()
        start_api(stack, port, "--web-demo-account", "alice")
        url = f"http://127.0.0.1:{port}"
        for country, bind in EXITS.items():
            wallet = load_key(tmp / f"agent-{country}.key", None)
            Client.sign_in(url, wallet).place_offer(
                exit_id=stack.exit_id(f"agent-{country}", bind),
                price_per_gb=str(IPSX),
                sharing="shared",
                shared_capacity=8,
            )
        wait_port(stack.http_port)
        yield Dashboard(url, stack, stack.http_port)
        for proc in stack.processes:  # the API first, so the gateway's spot asks find it gone last
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)


def nav(page: Page, name: str) -> None:
    """Follow the main navigation's link ``name``."""
    page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True).click()


def curl(proxy: str, url: str) -> str:
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-x", proxy, url], capture_output=True, text=True, timeout=20
    )
    return done.stdout


@pytest.mark.timeout(240)
def test_a_requester_signs_in_builds_a_proxy_sends_traffic_and_trades(
    dashboard: Dashboard, browser: Browser
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))

    # Sign in with the demo login.
    page.goto(dashboard.url + "/")
    expect(page).to_have_url(re.compile(r"/signin$"))
    shot(page, "01-signin")
    page.get_by_role("button", name="Enter the demo").click()
    expect(page).to_have_url(re.compile(r"/web/overview$"))
    expect(page.locator("#live-status")).to_contain_text("live, updated")

    # Make a key: proxy and read scopes, a spend limit; its secret is shown once.
    nav(page, "API keys")
    page.get_by_label("Label").fill("browser-e2e")
    page.get_by_label("Spend limit (IPSX, empty: none)").fill("3")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-secret").inner_text().strip()
    assert re.fullmatch(r"ipsx_[0-9a-f]{12}_[\w-]{32}", secret)
    shot(page, "02-key-created")

    # Build the proxy URL: French exits, sticky session s1; the secret is filled in by the page.
    nav(page, "Proxy URL")
    page.get_by_label("Country").select_option("fr")
    page.get_by_label("Sticky session id").fill("s1")
    page.get_by_role("button", name="Build").click()
    page.get_by_label(re.compile("Your API key's secret")).fill(secret)
    proxy = page.locator("#http-proxy").inner_text().strip()
    assert proxy == f"http://alice-country-fr-session-s1:{secret}@127.0.0.1:{dashboard.http_port}"
    shot(page, "03-proxy-url")

    # Watch the overview while traffic goes through the built URL.
    nav(page, "Overview")
    live = page.locator("#live")
    expect(page.locator("#live-status")).to_contain_text("live, updated")
    before = int(live.get_attribute("data-requests-today") or "0")
    answers = {curl(proxy, dashboard.stack.origin.url("/ip")) for _ in range(3)}
    assert answers == {EXITS["fr"]}  # the French exit, the same one for the whole session
    page.wait_for_function(
        "n => Number(document.getElementById('live').dataset.requestsToday) >= n",
        arg=before + 3,
        timeout=30_000,
    )
    page.wait_for_function(
        "() => Chart.getChart('live-chart').data.datasets[0].data.reduce((a, b) => a + b, 0) >= 3",
        timeout=30_000,
    )
    page.wait_for_function(
        "() => BigInt(document.getElementById('live').dataset.spendTotal) > 0n", timeout=30_000
    )
    expect(page.locator("#spend-today")).not_to_have_text("0")
    expect(page.locator("#requests-today")).to_have_text(str(before + 3))
    shot(page, "04-live-traffic")

    # The deal that carried it, with its exit.
    page.get_by_role("link", name="Active deals and their exits").click()
    row = page.locator("#deals tbody tr").first
    expect(row).to_contain_text("FR")
    expect(row).to_contain_text("residential")
    shot(page, "05-active-deals")

    # Place an order that rests (no Japanese exits), then cancel it.
    nav(page, "Orders")
    page.get_by_label("Country").fill("jp")
    page.get_by_label("Max price per GB (IPSX)").fill("2")
    page.get_by_role("button", name="Place order").click()
    notice = page.locator("#notice")
    expect(notice).to_contain_text("placed")
    order_id = notice.locator("code").inner_text()
    order_row = page.locator(f'tr[data-order="{order_id}"]')
    expect(order_row.locator(".state")).to_have_text("open")
    shot(page, "06-order-placed")
    order_row.get_by_role("button", name=f"Cancel order {order_id}").click()
    expect(page.locator("#notice")).to_contain_text("cancelled")
    expect(page.locator(f'tr[data-order="{order_id}"] .state')).to_have_text("cancelled")
    shot(page, "07-order-cancelled")

    assert problems == [], problems  # no script error, no resource refused by the CSP
    context.close()


@pytest.mark.timeout(120)
def test_accessibility_basics(dashboard: Dashboard, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(dashboard.url + "/signin")
    # The keyboard reaches the sign-in controls in order.
    reached = []
    for _ in range(12):
        page.keyboard.press("Tab")
        reached.append(
            page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()")
        )
    for control in ("wallet-signin", "secret", "key-signin", "demo-signin"):
        assert control in reached, reached
    assert reached.index("secret") < reached.index("key-signin") < reached.index("demo-signin")
    page.keyboard.press("Shift+Tab")
    page.focus("#demo-signin")
    page.keyboard.press("Enter")  # signs in from the keyboard
    expect(page).to_have_url(re.compile(r"/web/overview$"))

    unlabelled = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
        .filter(el => el.labels.length === 0 && !el.getAttribute('aria-label')).map(el => el.id || el.name)"""
    for path in (
        "/signin",
        "/web/overview",
        "/web/orders",
        "/web/keys",
        "/web/proxy?country=fr",
        "/web/deals",
    ):
        page.goto(dashboard.url + path)
        assert page.evaluate(unlabelled) == [], path
        assert page.evaluate("document.documentElement.lang") == "en"
    # The main navigation is reachable from the keyboard, with a visible focus outline.
    page.goto(dashboard.url + "/web/overview")
    page.keyboard.press("Tab")  # the skip link comes first
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    for _ in range(3):
        page.keyboard.press("Tab")
    focused = page.evaluate(
        "() => { const el = document.activeElement; const s = getComputedStyle(el);"
        " return [el.tagName, el.textContent.trim(), s.outlineStyle, parseFloat(s.outlineWidth)]; }"
    )
    assert focused[0] == "A" and focused[2] == "solid" and focused[3] >= 2, focused

    # A phone: 375 px wide, dark theme; nothing wider than the screen but the tables' own scrollers.
    phone = browser.new_context(viewport={"width": 375, "height": 780}, color_scheme="dark", is_mobile=True)
    small = phone.new_page()
    small.goto(dashboard.url + "/signin")
    small.get_by_role("button", name="Enter the demo").click()
    for path in ("/web/overview", "/web/orders", "/web/proxy?country=fr&session=s1", "/web/deals"):
        small.goto(dashboard.url + path)
        assert small.evaluate("document.documentElement.scrollWidth") <= 375, path
    small.goto(dashboard.url + "/web/overview")
    background = small.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(15, 20, 25)"  # --bg of the dark theme
    shot(small, "08-phone-dark")
    # The toggle switches to light and remembers it.
    small.get_by_role("button", name="Light theme").click()
    assert small.evaluate("document.documentElement.dataset.theme") == "light"
    small.reload()
    assert small.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(255, 255, 255)"
    shot(small, "09-phone-light")
    phone.close()
    context.close()


@pytest.mark.timeout(120)
def test_wallet_sign_in_with_an_injected_wallet(dashboard: Dashboard, browser: Browser) -> None:
    """The sign-in page's script with an EIP-1193 wallet in the page, whose signing is done by
    eth-account (standing in for a browser extension, not for any part of IPSX)."""
    wallet = Account.from_key(bytes.fromhex("77" * 32))
    context = browser.new_context()

    def sign(message_hex: str) -> str:
        signed = wallet.sign_message(encode_defunct(hexstr=message_hex))
        return "0x" + str(signed.signature.hex()).removeprefix("0x")

    context.expose_function("ipsxTestSign", sign)
    context.add_init_script(
        "window.ethereum = { request: async ({ method, params }) => {"
        f" if (method === 'eth_requestAccounts') return ['{wallet.address.lower()}'];"
        " if (method === 'personal_sign') return await window.ipsxTestSign(params[0]);"
        " throw new Error('unsupported ' + method); } };"
    )
    page = context.new_page()
    page.goto(dashboard.url + "/signin")
    page.get_by_role("button", name="Sign in with wallet").click()
    expect(page).to_have_url(re.compile(r"/web/overview$"), timeout=15_000)
    expect(page.locator(".who")).to_contain_text("w_" + wallet.address.lower()[2:10])
    shot(page, "10-wallet-signed-in")
    context.close()

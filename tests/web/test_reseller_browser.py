"""The reseller's pages in a real browser (Playwright driving Debian's Chromium) against a running
stack: a gateway node with the market in force and a white-label listener for the reseller
rs_shop (``--reseller-port rs_shop=PORT``), a billing worker, a provider agent on 127.0.0.2 that
offers its exit, an origin, and the API with its pages.

The reseller signs in with its API key, makes a sub-user with the form, funds it, reads the proxy
URL the page shows, and watches the sub-user's traffic — sent with curl through that URL on its
listener — appear on its sub-users page, which the page's event stream keeps current. Then the
accessibility basics of the new forms (labels, keyboard order, submitting from the keyboard, a
phone's width) and the sub-user's key refused at the dashboard's sign-in. Screenshots go to
``tests/web/artifacts/`` (or ``$IPSX_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from playwright.sync_api import Browser, Page, expect

from gateway.agent.settings import load_key
from ipsx.sdk import Client
from tests.e2e.conftest import EXITS, Stack, free_port, running_stack, wait_port
from tests.web.browser import NEEDS, shot, start_api

REDIS_URL = os.environ.get("IPSX_TEST_WEB_E2E_REDIS_URL", "redis://127.0.0.1:6379/6")
IPSX = 10**18
RESELLER, BRAND = "rs_shop", "Shop Proxy"

pytestmark = NEEDS


@dataclass
class Shop:
    url: str  # the API and its pages
    stack: Stack
    listener: int  # the reseller's port on the gateway node
    secret: str  # the reseller's API key


def _secret(output: str) -> str:
    found = re.search(r"secret: (\S+)", output)
    assert found is not None, output
    return found.group(1)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    tmp = tmp_path_factory.mktemp("web-reseller")
    name = f"ipsx_test_web_reseller_{os.getpid()}"
    with running_stack(tmp, name, REDIS_URL, gateway=False) as stack:
        listener = free_port()
        stack.ipsx("account", "create", "--address", "0x" + "7f" * 20, "--name", RESELLER)
        secret = _secret(stack.ipsx("key", "create", RESELLER).stdout)
        stack.ipsx("account", "credit", RESELLER, "20", "--reference", "web-reseller-funding")
        stack.ipsx("reseller", "create", RESELLER, "--brand", BRAND, "--markup-bps", "2000",
                   "--host", "127.0.0.1", "--port", str(listener))  # fmt: skip
        stack.spawn(
            "gateway", "--http-port", str(stack.http_port), "--socks-port", str(stack.socks_port),
            "--tunnel-port", str(stack.tunnel_port), "--node-id", "web-reseller-node", "--market",
            "--reseller-port", f"{RESELLER}={listener}", log="gateway.log",
        )  # fmt: skip
        stack.spawn("worker", log="worker.log")
        wait_port(stack.tunnel_port)
        stack.start_agent("agent-fr", EXITS["fr"], "fr", "--allow-private")
        stack.wait_exits(1)
        port = free_port()
        start_api(stack, port)
        url = f"http://127.0.0.1:{port}"
        wallet = load_key(tmp / "agent-fr.key", None)
        Client.sign_in(url, wallet).place_offer(
            exit_id=stack.exit_id("agent-fr", EXITS["fr"]),
            price_per_gb=str(IPSX),
            sharing="shared",
            shared_capacity=8,
        )
        wait_port(listener)
        yield Shop(url, stack, listener, secret)
        for proc in stack.processes:  # the API first, so the gateway's spot asks find it gone last
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)


def sign_in(page: Page, shop: Shop, secret: str) -> None:
    page.goto(shop.url + "/signin")
    page.get_by_label("API key secret").fill(secret)
    page.get_by_role("button", name="Sign in with key").click()


def _carried(stack: Stack, subuser: str) -> int:
    """The bytes the sub-user's streams carried, as metered (read on a thread of its own: the
    sync Playwright API keeps an event loop running on this one)."""
    sql = (
        "SELECT COALESCE(sum(u.bytes_up + u.bytes_down), 0)::int8 AS bytes FROM usage_events u"
        " JOIN accounts a ON a.name = u.requester JOIN reseller_subusers s ON s.account_id = a.id"
        " WHERE s.name = $1"
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        return int(pool.submit(stack.query, sql, subuser).result(timeout=30)[0]["bytes"])


def curl(proxy: str, url: str) -> str:
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-x", proxy, url], capture_output=True, text=True, timeout=20
    )
    return done.stdout


@pytest.mark.timeout(240)
def test_a_reseller_creates_a_subuser_whose_traffic_shows_up_under_it(shop: Shop, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))

    sign_in(page, shop, shop.secret)
    expect(page).to_have_url(re.compile(r"/web/overview$"))
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Reseller", exact=True).click()
    expect(page).to_have_url(re.compile(r"/web/reseller$"))
    expect(page.get_by_role("heading", level=1)).to_have_text(f"{BRAND}: sub-users")
    shot(page, "reseller-01-empty")

    # Make the sub-user carol with the form; its password and proxy URL are shown once.
    page.get_by_label("Name (its proxy user name)").fill("carol")
    page.get_by_label("Monthly quota (GB, empty: none)").fill("5")
    page.get_by_label("First key's label").fill("browser")
    page.get_by_role("button", name="Create sub-user").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sub-user carol created")
    secret = page.locator("#new-secret").inner_text().strip()
    password = page.locator("#new-password").inner_text().strip()
    proxy = page.locator("#new-proxy-url").inner_text().strip()
    assert password == secret.removeprefix("ipsx_") and "ipsx" not in password.lower()
    assert proxy == f"http://carol:{password}@127.0.0.1:{shop.listener}"
    shot(page, "reseller-02-subuser-created")

    # Fund it from the reseller's balance.
    page.get_by_role("link", name="Manage carol: limits, funds, keys").click()
    page.get_by_label("Amount (IPSX)").fill("5")
    page.get_by_role("button", name="Move funds").click()
    expect(page.locator("#notice")).to_have_text("Funds moved to the sub-user's balance.")
    expect(page.locator("#sub-available")).to_have_text("5")

    # Its traffic through the reseller's listener shows up on the sub-users page, live.
    page.get_by_role("navigation", name="Reseller").get_by_role("link", name="Sub-users").click()
    row = page.locator('#subusers tr[data-subuser="carol"]')
    expect(row.locator(".streams")).to_have_text("0")
    expect(page.locator("#live-status")).to_contain_text("live, updated")
    answers = [curl(proxy, shop.stack.origin.url("/ip")) for _ in range(3)]
    assert answers == [EXITS["fr"]] * 3
    expect(row.locator(".streams")).to_have_text("3", timeout=45_000)
    expect(row.locator(".used")).not_to_have_text("0 B")
    carried = _carried(shop.stack, "carol")
    assert carried > 0
    expect(row).to_have_attribute("data-used-bytes", str(carried))
    expect(page.locator("#reseller-figures")).to_have_attribute("data-month-bytes", str(carried))
    shot(page, "reseller-03-usage-live")

    # The sub-user's own page counts the same month.
    row.get_by_role("link", name="carol", exact=True).click()
    expect(page.locator("#subuser-figures")).to_have_attribute("data-used-bytes", str(carried))
    expect(page.locator("#streams")).to_have_text("3")
    shot(page, "reseller-04-subuser-page")

    assert problems == [], problems  # no script error, no resource refused by the CSP
    context.close()

    # The sub-user's key does not open the IPSX dashboard.
    other = browser.new_context()
    refused = other.new_page()
    sign_in(refused, shop, secret)
    expect(refused.locator("#error-detail")).to_have_text(
        f"this key belongs to a customer of {BRAND}; sign in where {BRAND} tells you"
    )
    shot(refused, "reseller-05-subuser-refused")
    other.close()


PAGES = ("/web/reseller", "/web/reseller/subusers/dave", "/web/reseller/earnings", "/web/reseller/settings")
UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
    .filter(el => el.labels.length === 0 && !el.getAttribute('aria-label')).map(el => el.id || el.name)"""


@pytest.mark.timeout(120)
def test_the_reseller_forms_keyboard_and_labels(shop: Shop, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, shop, shop.secret)
    expect(page).to_have_url(re.compile(r"/web/overview$"))
    page.goto(shop.url + "/web/reseller")
    # The keyboard reaches the new sub-user form's fields in order, and Enter submits it.
    page.focus("#s-name")
    reached = ["s-name"]
    for _ in range(4):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id"))
    assert reached == ["s-name", "s-quota", "s-limit", "s-label", "create-subuser"], reached
    outline = page.evaluate(
        "() => { const s = getComputedStyle(document.activeElement);"
        " return [s.outlineStyle, parseFloat(s.outlineWidth)]; }"
    )
    assert outline[0] == "solid" and outline[1] >= 2, outline  # the focused button shows it
    page.focus("#s-name")
    page.keyboard.type("dave")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sub-user dave created")
    for path in PAGES:
        page.goto(shop.url + path)
        assert page.evaluate(UNLABELLED) == [], path
        assert page.evaluate("document.documentElement.lang") == "en"
    # The funding direction is a radio group reachable with the arrow keys.
    page.goto(shop.url + "/web/reseller/subusers/dave")
    page.focus("#f-to-subuser")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.id") == "f-to-reseller"
    assert page.locator("#f-to-reseller").is_checked()
    context.close()

    phone = browser.new_context(viewport={"width": 375, "height": 780}, color_scheme="dark", is_mobile=True)
    small = phone.new_page()
    sign_in(small, shop, shop.secret)
    expect(small).to_have_url(re.compile(r"/web/overview$"))
    for path in PAGES:
        small.goto(shop.url + path)
        assert small.evaluate("document.documentElement.scrollWidth") <= 375, path
    shot(small, "reseller-06-phone-dark")
    phone.close()

"""The requester's pages over real HTTP: what they show, their empty states, forms that place and
cancel orders and make and revoke keys, the builder, errors as pages, and the live stream."""

from __future__ import annotations

import html
import json
import re

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from tests.web.conftest import WebApi, WebClient

PAGES = ("/web/overview", "/web/usage", "/web/deals", "/web/deals?live=1", "/web/orders", "/web/keys",
         "/web/proxy", "/web/payments")  # fmt: skip


def wallet_session(web_api: WebApi, key: bytes) -> WebClient:
    """A client signed in with a wallet that has never signed in: a brand-new, empty account."""
    client = web_api.client()
    headers = {"X-CSRF-Token": client.hidden("/signin", "signin_token")}
    address = Account.from_key(key).address
    message = client.http.post("/signin/siwe/message", json={"address": address}, headers=headers).json()[
        "message"
    ]
    signature = Account.from_key(key).sign_message(encode_defunct(text=message)).signature.hex()
    answer = client.http.post(
        "/signin/siwe",
        json={"message": message, "signature": "0x" + signature.removeprefix("0x")},
        headers=headers,
    )
    assert answer.status_code == 200, answer.text
    return client


def test_every_page_renders_for_a_new_account_with_its_empty_state(web_api: WebApi) -> None:
    with wallet_session(web_api, bytes.fromhex("66" * 32)) as client:
        texts = {}
        for path in PAGES:
            answer = client.get(path)
            assert answer.status_code == 200, (path, answer.text[-500:])
            assert answer.headers["Content-Type"].startswith("text/html")
            assert "Traceback" not in answer.text
            texts[path] = answer.text
    assert "No active deals." in texts["/web/overview"]
    assert 'id="spend-today">0<' in texts["/web/overview"]
    assert "No usage yet." in texts["/web/usage"]
    assert "No deals yet." in texts["/web/deals"]
    assert "No active deals." in texts["/web/deals?live=1"]
    assert "No orders yet." in texts["/web/orders"]
    assert "No keys yet" in texts["/web/keys"]
    assert "No payment channel." in texts["/web/payments"] and "No invoices." in texts["/web/payments"]


def test_the_pages_show_the_accounts_usage_deals_orders_and_spend(web_api: WebApi) -> None:
    seeded = web_api.seeded
    assert seeded is not None
    active, settled = seeded.deal_ids
    with web_api.signed_in("alice") as client:
        overview = client.get("/web/overview").text
        assert 'id="requests-today">7<' in overview and 'data-requests-today="7"' in overview
        # 0.003 IPSX settled today + 7 x 1500 B at 1 IPSX/GB accruing on the active deal.
        assert 'id="spend-settled">0.003<' in overview and 'id="spend-accruing">0.0000105<' in overview
        assert 'id="spend-today">0.0030105<' in overview
        assert 'id="balance-available">25<' in overview
        assert "<td>FR</td><td>residential</td>" in overview
        embedded = re.search(r'id="series-data">(.*?)</script>', overview, re.S)
        assert embedded is not None
        series = json.loads(html.unescape(embedded.group(1)))
        assert sum(series["requests"]) == 7 and sum(series["bytes"]) == 7 * 1500 and len(series["t"]) == 60
        usage = client.get("/web/usage").text
        assert re.search(
            r'<td class="num">7</td>\s*<td class="num">0 B</td><td class="num">10.5 kB</td>', usage
        )
        assert '<td class="num">0.003</td><td class="num">0.0003</td>' in usage
        deals = client.get("/web/deals").text
        assert active in deals and settled in deals
        found = re.search(rf'<tr data-deal="{active}">(.*?)</tr>', deals, re.S)
        assert found is not None
        row = found.group(1)
        assert "FR" in row and "residential" in row and "0.0000105" in row and "so far" in row
        live = client.get("/web/deals?live=1").text
        assert active in live and settled not in live and "Success rate" in live
        orders = client.get("/web/orders").text
        assert seeded.order_id in orders and "2 \u00d7 JP" in orders
        keys = client.get("/web/keys").text
        assert seeded.key_ids["alice"] in keys and "(this session)" in keys


def test_placing_and_cancelling_an_order_through_the_form(web_api: WebApi) -> None:
    with web_api.signed_in("bob") as client:
        placed = client.post(
            "/web/orders",
            {"country": "br", "type": "mobile", "protocol": "http", "ips": "3", "duration_s": "3600",
             "traffic_gb": "0.5", "max_price_per_gb": "1.5", "max_price_per_hour": "0", "rest": "on"},
        )  # fmt: skip
        assert placed.status_code == 303, placed.text
        order_id = placed.headers["Location"].split("placed=")[1]
        stored = web_api.query(
            "SELECT account, state, terms::text FROM market_orders WHERE order_id = $1", order_id
        )
        assert stored[0]["account"] == "bob" and stored[0]["state"] == "open"
        terms = json.loads(stored[0]["terms"])
        assert terms["filters"]["country"] == "br" and terms["filters"]["type"] == "mobile"
        assert terms["ips"] == 3 and terms["traffic_bytes"] == 500_000_000
        assert terms["max_price_per_gb"] == str(15 * 10**17) and terms["rest"] is True
        page = client.get(placed.headers["Location"]).text
        assert f"Order <code>{order_id}</code> placed." in page
        cancelled = client.post(f"/web/orders/{order_id}/cancel")
        assert cancelled.status_code == 303
        assert (
            web_api.query("SELECT state FROM market_orders WHERE order_id = $1", order_id)[0][0]
            == "cancelled"
        )
        assert f"Order <code>{order_id}</code> cancelled." in client.get(cancelled.headers["Location"]).text
        again = client.post(f"/web/orders/{order_id}/cancel")
        assert again.status_code == 404 and "no open order with this id" in again.text


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"max_price_per_gb": "1.5", "ips": "0"}, "'ips' must be a whole number from 1 to 10000"),
        ({"max_price_per_gb": "-1"}, "'max_price_per_gb' must be a decimal number"),
        ({"max_price_per_gb": "1", "country": "france"}, "the order was refused"),
        ({"max_price_per_gb": "0", "max_price_per_hour": "0"}, "max prices cannot both be 0"),
    ],
)
def test_a_bad_order_form_is_an_error_page_that_says_why(
    web_api: WebApi, form: dict[str, str], message: str
) -> None:
    with web_api.signed_in("bob") as client:
        answer = client.post("/web/orders", form)
        assert answer.status_code == 422
        assert answer.headers["Content-Type"].startswith("text/html")
        assert message in html.unescape(answer.text)


def test_a_key_made_on_the_keys_page_works_once_shown_and_stops_when_revoked(web_api: WebApi) -> None:
    with web_api.signed_in("bob") as client:
        created = client.post(
            "/web/keys", {"label": "crawler", "scopes": ["proxy", "read"], "spend_limit": "2.5"}
        )
        assert created.status_code == 201
        assert created.headers["Cache-Control"] == "no-store"
        secret = re.search(r'id="new-secret"[^>]*>(ipsx_(\w{12})_[\w-]+)<', created.text)
        assert secret is not None
        assert f"http://bob:{secret.group(1)}@127.0.0.1:8080" in created.text
        key_id = secret.group(2)
        stored = web_api.query(
            "SELECT label, scopes, spend_limit::text FROM api_keys WHERE key_id = $1", key_id
        )
        assert (stored[0]["label"], sorted(stored[0]["scopes"]), stored[0]["spend_limit"]) == (
            "crawler",
            ["proxy", "read"],
            str(25 * 10**17),
        )
        listed = client.get("/web/keys").text
        assert key_id in listed and secret.group(1) not in listed  # shown once only
        rest = httpx.get(f"{web_api.url}/v1/me", headers={"Authorization": f"Bearer {secret.group(1)}"})
        assert rest.status_code == 200 and rest.json()["key_id"] == key_id
        assert client.post(f"/web/keys/{key_id}/revoke").status_code == 303
        rest = httpx.get(f"{web_api.url}/v1/me", headers={"Authorization": f"Bearer {secret.group(1)}"})
        assert rest.status_code == 401
        assert client.post("/web/keys", {"label": "none"}).status_code == 422  # no scope picked


def test_a_sub_key_session_sees_and_revokes_only_its_own_key(web_api: WebApi) -> None:
    found = re.search(r"secret: (ipsx_(\w{12})_\S+)", web_api.ipsx("key", "create", "bob"))
    assert found is not None
    parent, parent_id = found.groups()
    with httpx.Client(base_url=web_api.url, headers={"Authorization": f"Bearer {parent}"}) as rest:
        made = rest.post("/v1/keys", json={"scopes": ["read", "keys"]})
    assert made.status_code == 201
    sub = made.json()
    client = web_api.client()
    with client:
        assert client.sign_in_with_key(sub["secret"]).status_code == 303
        listed = client.get("/web/keys").text
        rows = re.findall(r'<th scope="row"><code>(\w+)</code>', listed)
        assert rows == [sub["key_id"]]
        assert client.post(f"/web/keys/{parent_id}/revoke").status_code == 404
        assert client.post(f"/web/keys/{sub['key_id']}/revoke").status_code == 303
    rest = httpx.get(f"{web_api.url}/v1/me", headers={"Authorization": f"Bearer {parent}"})
    assert rest.status_code == 200


def test_the_builder_writes_the_exact_proxy_url_and_refuses_what_the_gateway_would(web_api: WebApi) -> None:
    seeded = web_api.seeded
    assert seeded is not None
    with web_api.signed_in("alice") as client:
        built = client.get("/web/proxy", params={"country": "fr", "session": "s1", "sessttl": "300"}).text
        assert 'id="proxy-username">alice-country-fr-session-s1-sessttl-300<' in built
        assert "http://alice-country-fr-session-s1-sessttl-300:YOUR_API_KEY@127.0.0.1:8080" in built
        assert "socks5h://alice-country-fr-session-s1-sessttl-300:YOUR_API_KEY@127.0.0.1:1080" in built
        refused = client.get("/web/proxy", params={"session": "has_underscore"})
        assert refused.status_code == 422
        assert (
            "<strong>session</strong>" in refused.text and "expected 1 to 32 of A-Z, a-z, 0-9" in refused.text
        )
        with_pac = client.get("/web/proxy", params={"order": seeded.order_id}).text
        pac = re.search(r'id="pac-url">(http://127\.0\.0\.1:\d+/pac/alice/\w+/[\w-]+\.pac)<', with_pac)
        assert pac is not None
        served = httpx.get(pac.group(1))
        assert served.status_code == 200 and "FindProxyForURL" in served.text
        assert f"alice-order-{seeded.order_id}" in with_pac


def test_errors_are_pages_not_tracebacks(web_api: WebApi) -> None:
    with web_api.signed_in("bob") as client:
        missing = client.get("/web/nothing-here")
        assert missing.status_code == 404 and "there is no such page" in missing.text
        assert missing.headers["Content-Type"].startswith("text/html")
        cursor = client.get("/web/deals?after=%%%")
        assert cursor.status_code == 400 and "not one the dashboard made" in cursor.text
        assert client.post("/web/keys/zzz/revoke").status_code == 404
    assert httpx.get(f"{web_api.url}/web/overview").headers["Location"] == "/signin"
    assert httpx.get(f"{web_api.url}/").headers["Location"] == "/signin"


def test_the_live_stream_pushes_the_accounts_totals(web_api: WebApi) -> None:
    with web_api.signed_in("alice") as client, client.http.stream("GET", "/web/live") as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        events = []
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if len(events) == 2:
                    break
    first, second = events
    assert first["today"] == {"requests": 7, "bytes": 10500}
    assert first["spend"]["total"] == {"base_units": str(3 * 10**15 + 10500 * 10**9), "ipsx": "0.0030105"}
    assert first["balance"]["available"]["ipsx"] == "25"
    assert sum(first["series"]["requests"]) == 7
    assert second["at"] >= first["at"]


def test_static_assets_are_served(web_api: WebApi) -> None:
    chart = httpx.get(f"{web_api.url}/web/static/vendor/chart.umd.min.js")
    assert chart.status_code == 200 and "Chart.js v4.6.1" in chart.text[:200]
    css = httpx.get(f"{web_api.url}/web/static/app.css")
    assert css.status_code == 200 and css.headers["Content-Type"].startswith("text/css")

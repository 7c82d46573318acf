"""What a key session may read, and what the pages hand out: the ``read`` scope guards every page
and live stream (a proxy-only key's secret is the proxy password, in proxy URLs and browsers); PAC
links are built from configuration, never the request's Host header, and served only while the
order can route; hostile pager cursors are the page's 400, never a 500."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from billing import accounts
from dashboard import pac
from dashboard.settings import ApiSettings
from dashboard.web import session as sessions
from matching.deals import State
from tests.web import seed
from tests.web.conftest import REDIS_URL, WebApi

READ_PAGES = ("/web/overview", "/web/usage", "/web/deals", "/web/payments", "/web/orders",
              "/web/proxy", "/web/provider", "/web/provider/deals", "/web/provider/offers",
              "/web/provider/payouts")  # fmt: skip
STREAMS = ("/web/live", "/web/provider/live")
BAD_CURSOR = "this page link is not one the dashboard made"


def _secret(output: str) -> str:
    found = re.search(r"secret: (\S+)", output)
    assert found is not None, output
    return found.group(1)


@pytest.fixture(scope="module")
def keys(web_api: WebApi) -> dict[str, str]:
    """An account ``scoped`` with a proxy-only key, a read-only key and a proxy-and-trade key."""
    web_api.ipsx("account", "create", "--address", "0x" + "5c" * 20, "--name", "scoped")
    made = {}
    for scopes in ("proxy", "read", "proxy,trade"):
        label = scopes.replace(",", "-")
        made[scopes] = _secret(web_api.ipsx("key", "create", "scoped", "--scopes", scopes, "--label", label))
    return made


@pytest.mark.parametrize("scopes", ["proxy", "proxy,trade"])
def test_signin_with_a_key_without_read_is_refused(
    web_api: WebApi, keys: dict[str, str], scopes: str
) -> None:
    with web_api.client() as client:
        refused = client.sign_in_with_key(keys[scopes])
        assert refused.status_code == 403
        assert "lacks the &#39;read&#39; scope" in refused.text or "lacks the 'read' scope" in refused.text
        assert sessions.COOKIE not in refused.cookies
        assert client.get("/web/overview").status_code == 303  # still signed out


def _key_session(web_api: WebApi, secret: str) -> str:
    """A session cookie for ``secret``'s key, as the sign-in once issued it to any key."""

    async def go() -> str:
        pool = await asyncpg.create_pool(web_api.database_url, min_size=1, max_size=1)
        try:
            key = await accounts.authenticate_secret(pool, secret)
            assert key is not None
            account = await accounts.get_account(pool, key.account_name)
            assert account is not None
        finally:
            await pool.close()
        settings = ApiSettings(
            database_url=web_api.database_url, redis_url=REDIS_URL, jwt_secret=web_api.env["IPSX_JWT_SECRET"]
        )
        return sessions.issue(settings, account, via="key", key=key)

    return asyncio.run(go())


def test_a_proxy_only_session_reads_no_page_and_no_stream(web_api: WebApi, keys: dict[str, str]) -> None:
    with web_api.client() as client:
        client.http.cookies.set(sessions.COOKIE, _key_session(web_api, keys["proxy"]))
        for path in READ_PAGES:
            page = client.get(path)
            assert page.status_code == 403, path
            assert "lacks the" in page.text and "read" in page.text, path
        for path in STREAMS:
            assert client.get(path).status_code == 403, path
        assert client.get("/web/keys").status_code == 403


def test_a_read_key_still_signs_in_and_reads_every_page(web_api: WebApi, keys: dict[str, str]) -> None:
    with web_api.client() as client:
        assert client.sign_in_with_key(keys["read"]).status_code == 303
        for path in READ_PAGES:
            assert client.get(path).status_code == 200, path
        for path in STREAMS:
            with client.http.stream("GET", path) as stream:
                assert stream.status_code == 200 and stream.headers["Content-Type"] == "text/event-stream"
        assert client.get("/web/keys").status_code == 403  # that needs 'keys', as GET /v1/keys does


# -- PAC links and files -----------------------------------------------------------------------


def test_pac_links_ignore_a_forged_host_header(web_api: WebApi) -> None:
    seeded = web_api.seeded
    assert seeded is not None
    forged = {"Host": "evil.example:8443"}
    with web_api.signed_in("alice") as client:
        page = client.get("/web/proxy", params={"order": seeded.order_id}, headers=forged)
        assert page.status_code == 200
        found = re.search(r'id="pac-url">([^<]+)<', page.text)
        assert found is not None and found.group(1).startswith(f"{web_api.url}/pac/alice/"), found
        assert "evil.example" not in page.text
    with httpx.Client(
        base_url=web_api.url, headers={"Authorization": f"Bearer {web_api.secrets['alice']}"}
    ) as rest:
        answer = rest.get(f"/v1/orders/{seeded.order_id}/pac", headers=forged)
        assert answer.status_code == 200, answer.text
        assert answer.json()["pac_url"].startswith(f"{web_api.url}/pac/alice/{seeded.order_id}/")


@pytest.fixture(scope="module")
def pac_owner(web_api: WebApi) -> Iterator[httpx.Client]:
    """``pacy``, funded, with its REST client."""
    web_api.ipsx("account", "create", "--address", "0x" + "6d" * 20, "--name", "pacy")
    secret = _secret(web_api.ipsx("key", "create", "pacy"))
    web_api.ipsx("account", "credit", "pacy", "5", "--reference", "web-test-pacy")
    with httpx.Client(base_url=web_api.url, headers={"Authorization": f"Bearer {secret}"}) as rest:
        yield rest


def _place(rest: httpx.Client) -> str:
    placed = rest.post(
        "/v1/requests",
        json={"filters": {"country": "aq"}, "ips": 1, "duration_s": 3600, "traffic_bytes": 10**9,
              "max_price_per_gb": str(seed.IPSX), "rest": True},
    )  # fmt: skip
    assert placed.status_code == 201, placed.text
    assert placed.json()["deals"] == []
    return str(placed.json()["order_id"])


def _on_db(web_api: WebApi, work: Any) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(web_api.database_url)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


def test_a_pac_file_is_served_only_while_its_order_can_route(
    web_api: WebApi, pac_owner: httpx.Client
) -> None:
    order_id = _place(pac_owner)
    url = pac_owner.get(f"/v1/orders/{order_id}/pac").json()["pac_url"]
    assert httpx.get(url).status_code == 200  # open: deals may still come
    assert pac_owner.delete(f"/v1/orders/{order_id}").status_code == 204
    assert httpx.get(url).status_code == 404  # cancelled without a deal: it routes nothing

    async def live_deal(conn: asyncpg.Connection) -> str:
        offer_id = await seed.offer(conn, "prov", "f" * 16, "aq", "residential")
        return await seed.deal(
            conn, requester="pacy", provider="prov", offer_id=offer_id, exit_id="f" * 16, request_id=order_id
        )

    deal_id = _on_db(web_api, live_deal)
    served = httpx.get(url)  # closed, but a deal of it still serves
    assert served.status_code == 200 and f"pacy-order-{order_id}" in served.text
    web_api.query("UPDATE deals SET state = $2 WHERE deal_id = $1", deal_id, State.SETTLED.value)
    assert httpx.get(url).status_code == 404


def test_an_offer_has_no_pac_file_even_with_a_valid_capability(web_api: WebApi) -> None:
    async def offer(conn: asyncpg.Connection) -> str:
        return await seed.offer(conn, "pacy", "0" * 16, "aq", "residential")

    offer_id = _on_db(web_api, offer)
    capability = pac.path(web_api.env["IPSX_JWT_SECRET"], "pacy", offer_id)
    assert httpx.get(web_api.url + capability).status_code == 404


# -- pager cursors ------------------------------------------------------------------------------

DEAL_PAGES = ("/web/deals", "/web/provider/deals")
ID_PAGES = ("/web/payments", "/web/orders", "/web/provider/offers")
DAY_PAGES = ("/web/usage", "/web/provider")
HOSTILE: dict[tuple[str, ...], list[list[Any]]] = {
    DEAL_PAGES: [
        ["2024-01-01T00:00:00+00:00", "a\x00b"],
        ["2024-01-01T00:00:00\x00", "x"],
        ["0001-01-01T00:00:00+23:59", "x"],  # before year 1 in UTC
        ["9999-12-31T23:59:59-23:59", "x"],  # after 9999 in UTC
        [20240101, "x"],
        ["2024-01-01T00:00:00+00:00"],
    ],
    ID_PAGES: [[2**63], [10**30], [-1], [0], [True], [1.5], ["7"], ["\x00"]],
    DAY_PAGES: [["2024-01-01\x00"], ["10000-01-01"], [None]],
}
CASES = [(path, cursor) for paths, cursors in HOSTILE.items() for path in paths for cursor in cursors]


@pytest.mark.parametrize(("path", "cursor"), CASES, ids=[f"{path}-{cursor!r}" for path, cursor in CASES])
def test_a_hostile_cursor_is_the_pages_400(web_api: WebApi, path: str, cursor: list[Any]) -> None:
    with web_api.signed_in("alice") as client:
        # json, not orjson: a cursor may hold an integer past 64 bits
        token = base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode().rstrip("=")
        answer = client.get(path, params={"after": token})
        assert answer.status_code == 400, (path, cursor, answer.text[-300:])
        assert BAD_CURSOR in answer.text

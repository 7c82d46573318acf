"""The white-label reseller's pages over real HTTP against ``ipsx api``: what they show for seeded
sub-users, usage and markups; the forms (make a sub-user and its key, limits, suspend and resume,
funds, keys, brand and markup) with their CSRF tokens and scopes; the 403 an ordinary account
gets; tenant isolation between two resellers; and a sub-user's key refused at the sign-in.

Two resellers: rs_acme (brand "Acme Proxy", 25 % markup, endpoint proxy.acme.example:9100) with
sub-users bob (funded, with traffic and markups this month and 40 days ago) and carl; rs_zeta
(no endpoint recorded) with sub-users bob (same name, its own traffic) and zed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg
import pytest

from dashboard.pages import encode_cursor
from dashboard.web.session import COOKIE
from matching.deals import State
from tests.web import seed
from tests.web.conftest import WebApi, WebClient

IPSX = 10**18
ACME, ZETA = "rs_acme", "rs_zeta"
BOB_CHARGE, OLD_CHARGE = 2 * 10**15, 10**15  # settled deals of acme's bob: this month, 40 days ago
ACME_PAGES = (
    "/web/reseller",
    "/web/reseller/subusers/bob",
    "/web/reseller/earnings",
    "/web/reseller/settings",
)


@dataclass
class Tenants:
    secrets: dict[str, str]  # reseller -> its key's secret
    accounts: dict[tuple[str, str], str] = field(default_factory=dict)  # (reseller, sub-user) -> internal
    keys: dict[tuple[str, str], str] = field(default_factory=dict)  # (reseller, sub-user) -> a key secret
    old_day: dt.date = dt.date.min

    def client(self, api: WebApi, reseller: str) -> WebClient:
        client = api.client()
        answer = client.sign_in_with_key(self.secrets[reseller])
        assert answer.status_code == 303, answer.text
        return client


def _secret(output: str) -> str:
    found = re.search(r"secret: (\S+)", output)
    assert found is not None, output
    return found.group(1)


@pytest.fixture(scope="module")
def tenants(web_api: WebApi) -> Iterator[Tenants]:
    made = Tenants(secrets={})
    for name, digit, funds in ((ACME, "9a", "50"), (ZETA, "9b", "20")):
        web_api.ipsx("account", "create", "--address", "0x" + digit * 20, "--name", name)
        made.secrets[name] = _secret(web_api.ipsx("key", "create", name))
        web_api.ipsx("account", "credit", name, funds, "--reference", f"web-{name}")
    web_api.ipsx("reseller", "create", ACME, "--brand", "Acme Proxy", "--markup-bps", "2500",
                 "--host", "proxy.acme.example", "--port", "9100")  # fmt: skip
    web_api.ipsx("reseller", "create", ZETA, "--brand", "Zeta Net", "--markup-bps", "1000")
    web_api.ipsx("reseller", "subuser-create", ACME, "bob", "--quota", "1GB", "--spend-limit", "2")
    web_api.ipsx("reseller", "subuser-create", ACME, "carl")
    web_api.ipsx("reseller", "subuser-create", ZETA, "bob")
    web_api.ipsx("reseller", "subuser-create", ZETA, "zed", "--quota", "3GB")
    for reseller, sub in ((ACME, "bob"), (ZETA, "bob"), (ZETA, "zed")):
        made.keys[reseller, sub] = _secret(web_api.ipsx("reseller", "subuser-key", reseller, sub))
    web_api.ipsx("reseller", "fund", ACME, "bob", "5", "--reference", "web-acme-bob")
    web_api.ipsx("reseller", "fund", ZETA, "zed", "2", "--reference", "web-zeta-zed")
    for row in web_api.query(
        "SELECT r.name AS reseller, s.name, a.name AS internal FROM reseller_subusers s"
        " JOIN accounts a ON a.id = s.account_id JOIN accounts r ON r.id = s.reseller_id"
    ):
        made.accounts[row["reseller"], row["name"]] = row["internal"]
    acme_bob, zeta_bob = made.accounts[ACME, "bob"], made.accounts[ZETA, "bob"]
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    made.old_day = old.date()

    async def go() -> None:
        conn = await asyncpg.connect(web_api.database_url)
        try:
            exit_id = "f" * 16
            offer_id = await seed.offer(conn, "prov", exit_id, "us", "residential")
            recent, earlier = [
                await seed.deal(conn, requester=acme_bob, provider="prov", offer_id=offer_id, exit_id=exit_id,
                                state=State.SETTLED, charge=charge, created_at=at)
                for charge, at in ((BOB_CHARGE, None), (OLD_CHARGE, old))
            ]  # fmt: skip
            await seed.reseller_markup(conn, deal_id=recent, requester=acme_bob, charge=BOB_CHARGE)
            await seed.reseller_markup(conn, deal_id=earlier, requester=acme_bob, charge=OLD_CHARGE, at=old)
            for requester, deal_id, streams, size in ((acme_bob, recent, 4, 2500), (zeta_bob, None, 9, 1000)):
                await seed.usage(conn, requester=requester, provider="prov", exit_id=exit_id, deal_id=deal_id,
                                 streams=streams, size=size)  # fmt: skip
        finally:
            await conn.close()

    asyncio.run(go())
    yield made


def _row(page: str, name: str) -> str:
    found = re.search(rf'<tr data-subuser="{name}"[^>]*>.*?</tr>', page, re.S)
    assert found is not None, f"no row for {name}"
    return found.group(0)


def _balance(web_api: WebApi, account: str) -> int:
    rows = web_api.query("SELECT balance::text FROM ledger_balances WHERE account = $1", account)
    return int(rows[0]["balance"]) if rows else 0


def _subuser(web_api: WebApi, reseller: str, name: str) -> asyncpg.Record:
    return web_api.query(
        "SELECT s.quota_bytes, s.spend_limit::text AS spend_limit, s.suspended_at FROM reseller_subusers s"
        " JOIN accounts r ON r.id = s.reseller_id WHERE r.name = $1 AND s.name = $2",
        reseller,
        name,
    )[0]


def test_the_reseller_pages_show_its_subusers_usage_and_markup(web_api: WebApi, tenants: Tenants) -> None:
    with tenants.client(web_api, ACME) as client:
        overview = client.get("/web/overview").text
        assert '<a href="/web/reseller">Reseller</a>' in overview  # the navigation entry
        listing = client.get("/web/reseller")
        assert listing.status_code == 200
        page = listing.text
        bob = _row(page, "bob")
        # 4 streams of 2500 B; spent: the settled charge this month and its 25 % markup.
        assert 'data-used-bytes="10000"' in bob and 'data-streams="4"' in bob
        assert f'data-spent="{BOB_CHARGE + BOB_CHARGE // 4}"' in bob
        assert '<td class="num used">10.0 kB</td>' in bob and '<td class="num">1.0 GB</td>' in bob
        assert '<td class="num spent">0.0025</td>' in bob and '<td class="num">2</td>' in bob
        assert ">active<" in bob
        carl = _row(page, "carl")
        assert 'data-used-bytes="0"' in carl and carl.count(">none<") == 2
        assert 'id="markup-month">0.0005<' in page and 'id="markup-total">0.00075<' in page
        assert 'id="funds-available">45<' in page and 'id="month-bytes">10.0 kB<' in page
        assert "zed" not in page

        detail = client.get("/web/reseller/subusers/bob").text
        assert 'id="sub-available">4.99925<' in detail  # 5 IPSX less both markups
        assert 'id="used">10.0 kB<' in detail and 'id="spent">0.0025<' in detail
        assert tenants.keys[ACME, "bob"].split("_")[1] in detail  # its key's id
        assert tenants.keys[ACME, "bob"] not in detail and "proxy password" not in detail.lower()
        today = re.search(rf'<tr data-day="{dt.datetime.now(dt.UTC).date()}">(.*?)</tr>', detail, re.S)
        assert today is not None
        assert re.search(
            r'<td class="num">4</td>\s*<td class="num">0 B</td><td class="num">10.0 kB</td>\s*'
            r'<td class="num">0.002</td><td class="num">0.0005</td>',
            today.group(1),
        ), today.group(1)
        earlier = re.search(rf'<tr data-day="{tenants.old_day}">(.*?)</tr>', detail, re.S)
        assert (
            earlier is not None
            and '<td class="num">0.001</td><td class="num">0.00025</td>' in earlier.group(1)
        )
        # the limits form shows the current limits as its fields' values
        assert 'name="quota_gb" value="1"' in detail and 'name="spend_limit" value="2"' in detail

        earnings = client.get("/web/reseller/earnings").text
        assert 'id="earned-total">0.00075<' in earnings and 'id="earned-month">0.0005<' in earnings
        assert 'id="charged-month">0.002<' in earnings and 'id="earnings-balance">0.00075<' in earnings
        days = re.findall(r'<tr data-day="([0-9-]+)">', earnings)
        assert days == [str(dt.datetime.now(dt.UTC).date()), str(tenants.old_day)]
        assert re.search(
            rf'<tr data-day="{tenants.old_day}">.*?<td class="num">1</td><td class="num">0.001</td>\s*'
            r'<td class="num">0.00025</td><td class="num">0.00025</td>',
            earnings,
            re.S,
        )
        assert '<tr data-subuser="bob">' in earnings and '<tr data-subuser="carl">' not in earnings

        settings = client.get("/web/reseller/settings").text
        assert 'id="brand">Acme Proxy<' in settings and "2500 basis points (25 %" in settings
        assert 'id="endpoint-address">proxy.acme.example:9100<' in settings
        assert "ipsx reseller update rs_acme --host proxy.acme.example --port 9100" in settings
        assert "X-AcmeProxy-Error" in settings


def test_the_live_stream_carries_the_resellers_own_subusers(web_api: WebApi, tenants: Tenants) -> None:
    with tenants.client(web_api, ACME) as client, client.http.stream("GET", "/web/reseller/live") as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                break
    assert {"bob", "carl"} <= set(event["subusers"]) and "zed" not in event["subusers"]
    assert event["subusers"]["bob"]["used_bytes"] == 10_000 and event["subusers"]["bob"]["streams"] == 4
    assert event["earned"]["ipsx"] == "0.00075" and event["month"]["markup"]["ipsx"] == "0.0005"


def test_an_ordinary_account_has_no_reseller_pages(web_api: WebApi, tenants: Tenants) -> None:
    with web_api.signed_in("alice") as client:
        assert 'href="/web/reseller"' not in client.get("/web/overview").text
        for path in ACME_PAGES:
            answer = client.get(path)
            assert answer.status_code == 403, path
            assert "not a white-label reseller" in answer.text
        assert client.get("/web/reseller/live").status_code == 403
        refused = client.post("/web/reseller/subusers", {"name": "mallory"})
        assert refused.status_code == 403 and "not a white-label reseller" in refused.text
        assert client.post("/web/reseller/subusers/bob/suspend").status_code == 403
        assert client.post("/web/reseller/settings", {"brand": "x", "markup_bps": "1"}).status_code == 403
    assert not web_api.query("SELECT 1 FROM reseller_subusers WHERE name = 'mallory'")
    assert _subuser(web_api, ACME, "bob")["suspended_at"] is None


def test_a_subuser_is_created_with_its_key_shown_once(web_api: WebApi, tenants: Tenants) -> None:
    with tenants.client(web_api, ACME) as client:
        made = client.post(
            "/web/reseller/subusers",
            {"name": "dora", "quota_gb": "0.5", "spend_limit": "1.5", "label": "web"},
        )
        assert made.status_code == 201, made.text
        secret = re.search(r'id="new-secret" class="secret">([^<]+)<', made.text)
        password = re.search(r'id="new-password" class="secret">([^<]+)<', made.text)
        url = re.search(r'id="new-proxy-url" class="secret">([^<]+)<', made.text)
        assert secret and password and url
        assert password.group(1) == secret.group(1).removeprefix("ipsx_")
        assert url.group(1) == f"http://dora:{password.group(1)}@proxy.acme.example:9100"
        assert f"socks5h://dora:{password.group(1)}@proxy.acme.example:9100" in made.text
        assert 'id="endpoint-missing"' not in made.text
        stored = _subuser(web_api, ACME, "dora")
        assert stored["quota_bytes"] == 500_000_000 and int(stored["spend_limit"]) == 15 * 10**17
        key = web_api.query(
            "SELECT k.scopes, k.label FROM api_keys k JOIN reseller_subusers s ON s.account_id = k.account_id"
            " WHERE s.name = 'dora' AND k.key_id = $1",
            secret.group(1).split("_")[1],
        )
        assert sorted(key[0]["scopes"]) == ["proxy", "read"] and key[0]["label"] == "web"
        # shown once: the sub-user's page names the key, never its secret
        page = client.get("/web/reseller/subusers/dora").text
        assert secret.group(1).split("_")[1] in page and password.group(1) not in page
        assert 'data-subuser="dora"' in client.get("/web/reseller").text

        again = client.post("/web/reseller/subusers", {"name": "dora"})
        assert again.status_code == 409 and "named &#39;dora&#39; already" in again.text
        bad = client.post("/web/reseller/subusers", {"name": "dora-2"})
        assert bad.status_code == 422 and "a-z, 0-9 and _" in bad.text
        stale = client.post("/web/reseller/subusers", {"name": "eve"}, csrf="forged")
        assert stale.status_code == 403 and "stale" in stale.text
        assert client.post("/web/reseller/subusers", {"name": "eve"}, csrf=None).status_code == 403
    assert not web_api.query("SELECT 1 FROM reseller_subusers WHERE name IN ('dora_2', 'eve')")

    # A reseller without a recorded endpoint gets the URL with what is missing spelled out.
    with tenants.client(web_api, ZETA) as client:
        made = client.post("/web/reseller/subusers", {"name": "yan"})
        assert made.status_code == 201
        assert 'id="endpoint-missing"' in made.text
        assert re.search(r'id="new-proxy-url" class="secret">http://yan:[\w-]+@127\.0\.0\.1:PORT<', made.text)


def test_limits_suspension_funds_and_keys_through_the_forms(web_api: WebApi, tenants: Tenants) -> None:
    carl = tenants.accounts[ACME, "carl"]
    with tenants.client(web_api, ACME) as client:
        saved = client.post("/web/reseller/subusers/carl/limits", {"quota_gb": "2", "spend_limit": "0.75"})
        assert saved.status_code == 303 and saved.headers["Location"].endswith("?saved=limits")
        stored = _subuser(web_api, ACME, "carl")
        assert stored["quota_bytes"] == 2 * 10**9 and int(stored["spend_limit"]) == 75 * 10**16
        assert "Quota and spend limit saved." in client.get(saved.headers["Location"]).text
        cleared = client.post("/web/reseller/subusers/carl/limits", {"quota_gb": "", "spend_limit": "0.75"})
        assert cleared.status_code == 303 and _subuser(web_api, ACME, "carl")["quota_bytes"] is None
        assert client.post("/web/reseller/subusers/carl/limits", {"quota_gb": "-1"}).status_code == 422

        suspended = client.post("/web/reseller/subusers/carl/suspend", {"back": "list"})
        assert (
            suspended.status_code == 303 and suspended.headers["Location"] == "/web/reseller?suspended=carl"
        )
        assert _subuser(web_api, ACME, "carl")["suspended_at"] is not None
        listing = client.get(suspended.headers["Location"]).text
        assert "Sub-user <code>carl</code> suspended" in listing and ">suspended<" in _row(listing, "carl")
        assert 'aria-label="Resume carl"' in _row(listing, "carl")
        resumed = client.post("/web/reseller/subusers/carl/resume")
        assert resumed.headers["Location"] == "/web/reseller/subusers/carl?state=resumed"
        assert _subuser(web_api, ACME, "carl")["suspended_at"] is None

        drawn = re.search(
            r'name="reference" value="(w[0-9a-f]{32})"', client.get("/web/reseller/subusers/carl").text
        )
        assert drawn is not None
        reference = drawn.group(1)
        form = {"amount": "1.25", "direction": "to-subuser", "reference": reference}
        funded = client.post("/web/reseller/subusers/carl/transfers", form)
        assert funded.status_code == 303 and funded.headers["Location"].endswith("?transfer=to-subuser")
        assert _balance(web_api, f"requester:{carl}") == 125 * 10**16
        assert _balance(web_api, f"requester:{ACME}") == 50 * IPSX - 5 * IPSX - 125 * 10**16
        replayed = client.post("/web/reseller/subusers/carl/transfers", form)  # the same form, sent again
        assert replayed.headers["Location"].endswith("?transfer=replayed")
        assert _balance(web_api, f"requester:{carl}") == 125 * 10**16
        edited = client.post(
            "/web/reseller/subusers/carl/transfers", {**form, "amount": "2"}
        )  # back, changed
        assert edited.status_code == 409 and "reload the page" in edited.text
        assert _balance(web_api, f"requester:{carl}") == 125 * 10**16
        back = {"amount": "0.25", "direction": "to-reseller", "reference": "w" + "0" * 31 + "1"}
        assert client.post("/web/reseller/subusers/carl/transfers", back).status_code == 303
        assert _balance(web_api, f"requester:{carl}") == IPSX
        too_much = {"amount": "1000", "direction": "to-subuser", "reference": "w" + "0" * 31 + "2"}
        poor = client.post("/web/reseller/subusers/carl/transfers", too_much)
        assert poor.status_code == 402 and "your balance does not cover" in poor.text
        forged = client.post("/web/reseller/subusers/carl/transfers", {**form, "reference": "w" + "3" * 32},
                             csrf="forged")  # fmt: skip
        assert forged.status_code == 403 and _balance(web_api, f"requester:{carl}") == IPSX

        made = client.post("/web/reseller/subusers/carl/keys", {"label": "backup", "scopes": ["proxy"]})
        assert made.status_code == 201 and "Key for <code>carl</code> created" in made.text
        key_id = re.search(r'id="new-key-id">([0-9a-f]{12})<', made.text)
        assert key_id is not None
        assert client.post("/web/reseller/subusers/carl/keys", {"scopes": ["trade"]}).status_code == 422
        revoked = client.post(f"/web/reseller/subusers/carl/keys/{key_id.group(1)}/revoke")
        assert revoked.status_code == 303 and revoked.headers["Location"].endswith(
            f"?revoked={key_id.group(1)}"
        )
        gone = web_api.query("SELECT revoked_at FROM api_keys WHERE key_id = $1", key_id.group(1))
        assert gone[0]["revoked_at"] is not None
        assert client.post(f"/web/reseller/subusers/carl/keys/{key_id.group(1)}/revoke").status_code == 404


def test_brand_and_markup_through_the_settings_form(web_api: WebApi, tenants: Tenants) -> None:
    def stored() -> asyncpg.Record:
        return web_api.query(
            "SELECT brand, markup_bps, endpoint_host, endpoint_port FROM resellers"
            " WHERE account_id = (SELECT id FROM accounts WHERE name = $1)",
            ZETA,
        )[0]

    with tenants.client(web_api, ZETA) as client:
        saved = client.post(
            "/web/reseller/settings",
            {
                "brand": "Zeta Fast",
                "markup_bps": "1500",
                "endpoint_host": "evil.example",
                "endpoint_port": "1",
            },
        )
        assert saved.status_code == 303 and saved.headers["Location"] == "/web/reseller/settings?saved=1"
        assert tuple(stored()) == ("Zeta Fast", 1500, None, None)  # the endpoint stays the operator's
        page = client.get("/web/reseller/settings").text
        assert (
            'id="brand">Zeta Fast<' in page and "ipsx reseller update rs_zeta --host HOST --port PORT" in page
        )
        quoted = client.post("/web/reseller/settings", {"brand": 'Ze"ta', "markup_bps": "1500"})
        assert quoted.status_code == 422 and "brand" in quoted.text
        huge = client.post("/web/reseller/settings", {"brand": "Zeta", "markup_bps": "100001"})
        assert huge.status_code == 422
    assert tuple(stored())[:2] == ("Zeta Fast", 1500)


def test_a_key_without_the_scopes_reads_but_cannot_change(web_api: WebApi, tenants: Tenants) -> None:
    reader = _secret(web_api.ipsx("key", "create", ACME, "--scopes", "read"))
    with web_api.client() as client:
        assert client.sign_in_with_key(reader).status_code == 303
        page = client.get("/web/reseller").text
        assert 'data-subuser="bob"' in page and 'id="subuser-form"' not in page
        detail = client.get("/web/reseller/subusers/bob").text
        assert 'id="fund-form"' not in detail and 'id="limits-form"' not in detail
        refused = client.post("/web/reseller/subusers/bob/suspend")
        assert refused.status_code == 403 and "lacks the &#39;keys&#39; scope" in refused.text
        form = {"amount": "1", "direction": "to-subuser", "reference": "w" + "4" * 32}
        funds = client.post("/web/reseller/subusers/bob/transfers", form)
        assert funds.status_code == 403 and "lacks the &#39;trade&#39; scope" in funds.text
    assert _subuser(web_api, ACME, "bob")["suspended_at"] is None


def test_a_reseller_cannot_see_or_change_another_resellers_subusers(
    web_api: WebApi, tenants: Tenants
) -> None:
    zed = tenants.accounts[ZETA, "zed"]
    zed_key = tenants.keys[ZETA, "zed"].split("_")[1]
    zeta_bob_key = tenants.keys[ZETA, "bob"].split("_")[1]
    before = (_subuser(web_api, ZETA, "zed"), _balance(web_api, f"requester:{zed}"))
    with tenants.client(web_api, ACME) as acme:
        answer = acme.get("/web/reseller/subusers/zed")
        assert answer.status_code == 404 and "no sub-user by this name" in answer.text
        for path, form in (
            ("/web/reseller/subusers/zed/limits", {"quota_gb": "", "spend_limit": ""}),
            ("/web/reseller/subusers/zed/suspend", {}),
            ("/web/reseller/subusers/zed/resume", {}),
            ("/web/reseller/subusers/zed/transfers",
             {"amount": "1", "direction": "to-reseller", "reference": "w" + "5" * 32}),
            ("/web/reseller/subusers/zed/keys", {"scopes": ["proxy"]}),
            (f"/web/reseller/subusers/zed/keys/{zed_key}/revoke", {}),
            (f"/web/reseller/subusers/bob/keys/{zeta_bob_key}/revoke", {}),  # acme's bob, zeta's bob's key
        ):  # fmt: skip
            refused = acme.post(path, form)
            assert refused.status_code == 404, (path, refused.text[-300:])
        # The same name is the caller's own sub-user: acme's bob, never zeta's.
        bob = acme.get("/web/reseller/subusers/bob").text
        assert zeta_bob_key not in bob and tenants.keys[ACME, "bob"].split("_")[1] in bob
        assert 'id="used">10.0 kB<' in bob  # acme's bob's 10 000 B, not zeta's bob's 9 000
        # A pager cursor is a position among the caller's own sub-users only.
        after = acme.get(f"/web/reseller?after={encode_cursor(['yan'])}").text
        assert "zed" not in after and "No sub-users after this one." in after
        assert acme.get(f"/web/reseller?after={encode_cursor([1])}").status_code == 400
    assert (_subuser(web_api, ZETA, "zed"), _balance(web_api, f"requester:{zed}")) == before
    live = web_api.query(
        "SELECT key_id FROM api_keys WHERE key_id = ANY($1::text[]) AND revoked_at IS NULL",
        [zed_key, zeta_bob_key],
    )
    assert len(live) == 2
    assert web_api.query("SELECT count(*) AS n FROM api_keys k JOIN accounts a ON a.id = k.account_id"
                         " WHERE a.name = $1", zed)[0]["n"] == 1  # fmt: skip
    with tenants.client(web_api, ZETA) as zeta:
        page = zeta.get("/web/reseller").text
        assert 'data-subuser="zed"' in page and 'data-subuser="carl"' not in page
        assert 'data-used-bytes="9000"' in _row(page, "bob")
        assert zeta.get("/web/reseller/subusers/carl").status_code == 404


def test_a_subusers_key_cannot_sign_in_to_the_dashboard(web_api: WebApi, tenants: Tenants) -> None:
    with web_api.client() as client:
        for secret in (tenants.keys[ACME, "bob"], tenants.keys[ACME, "bob"].removeprefix("ipsx_")):
            answer = client.sign_in_with_key(secret)
            assert COOKIE not in answer.headers.get("set-cookie", "")
            if secret.startswith("ipsx_"):
                assert answer.status_code == 403
                assert (
                    "this key belongs to a customer of Acme Proxy; sign in where Acme Proxy tells you"
                    in answer.text
                )
            else:
                assert answer.status_code == 401  # the listener's password is no key secret here
        assert client.get("/web/overview").status_code == 303  # still signed out

"""White-label resellers over the real ``ipsx api``: a reseller manages its sub-users, and no tenant
reads or changes another's data through any endpoint — another tenant's names and ids are 404s."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg
import httpx
import pytest

from tests.dashboard.conftest import Api

IPSX = 10**18


@dataclass
class Tenant:
    """A reseller (its own key) and its sub-users' keys by name."""

    name: str
    key: str
    subusers: dict[str, str] = field(default_factory=dict)  # name → a key secret
    key_ids: dict[str, str] = field(default_factory=dict)  # name → that key's id
    accounts: dict[str, str] = field(default_factory=dict)  # name → internal account name


def _sql(api: Api, query: str, *args: object) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(api.database_url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def _account_of(api: Api, reseller: str, name: str) -> str:
    rows = _sql(
        api,
        "SELECT a.name FROM reseller_subusers s JOIN accounts a ON a.id = s.account_id"
        " JOIN accounts r ON r.id = s.reseller_id WHERE r.name = $1 AND s.name = $2",
        reseller,
        name,
    )
    return str(rows[0]["name"])


def _tenant(api: Api, name: str, digit: str) -> Tenant:
    api.ipsx("account", "create", "--address", "0x" + digit * 40, "--name", name)
    found = re.search(r"secret: (\S+)", api.ipsx("key", "create", name))
    assert found is not None
    api.ipsx("account", "credit", name, "20", "--reference", f"fund-{name}")
    api.ipsx("reseller", "create", name, "--brand", f"{name.title()} Net", "--markup-bps", "2000")
    return Tenant(name, found.group(1))


def _subuser(api: Api, tenant: Tenant, name: str, scopes: list[str]) -> None:
    with api.client(tenant.key) as client:
        assert client.post("/v1/reseller/subusers", json={"name": name}).status_code == 201
        made = client.post(f"/v1/reseller/subusers/{name}/keys", json={"scopes": scopes})
        assert made.status_code == 201, made.text
        moved = client.post(
            f"/v1/reseller/subusers/{name}/transfers", json={"amount": str(IPSX), "to": "subuser"}
        )
        assert moved.status_code == 201, moved.text
    tenant.subusers[name] = made.json()["secret"]
    tenant.key_ids[name] = made.json()["key_id"]
    tenant.accounts[name] = _account_of(api, tenant.name, name)


@pytest.fixture(scope="module")
def tenants(api: Api) -> Iterator[tuple[Tenant, Tenant]]:
    """Two resellers: rs_acme with bob, rs_globex with its own bob and eve; every sub-user has
    1 IPSX and a key with the proxy, read and keys scopes."""
    acme, globex = _tenant(api, "rs_acme", "7"), _tenant(api, "rs_globex", "8")
    _subuser(api, acme, "bob", ["proxy", "read", "keys"])
    _subuser(api, globex, "bob", ["proxy", "read", "keys"])
    _subuser(api, globex, "eve", ["proxy", "read", "keys"])
    yield acme, globex


# Every reseller endpoint, with a body where it takes one; {name} and {key_id} are filled in.
RESELLER_ENDPOINTS = [
    ("GET", "/v1/reseller", None),
    ("PUT", "/v1/reseller", {"markup_bps": 100}),
    ("GET", "/v1/reseller/subusers", None),
    ("POST", "/v1/reseller/subusers", {"name": "zed"}),
    ("GET", "/v1/reseller/subusers/{name}", None),
    ("PATCH", "/v1/reseller/subusers/{name}", {"suspended": True}),
    ("GET", "/v1/reseller/subusers/{name}/keys", None),
    ("POST", "/v1/reseller/subusers/{name}/keys", {}),
    ("DELETE", "/v1/reseller/subusers/{name}/keys/{key_id}", None),
    ("POST", "/v1/reseller/subusers/{name}/transfers", {"amount": "1", "to": "subuser"}),
    ("GET", "/v1/reseller/usage", None),
]
PER_SUBUSER = [endpoint for endpoint in RESELLER_ENDPOINTS if "{name}" in endpoint[1]]


def _call(client: httpx.Client, method: str, path: str, body: object) -> httpx.Response:
    return client.request(method, path, json=body) if body is not None else client.request(method, path)


def test_an_account_that_is_no_reseller_gets_403_from_every_reseller_endpoint(
    api: Api, tenants: tuple[Tenant, Tenant]
) -> None:
    _, globex = tenants
    for token in (api.key, globex.subusers["eve"]):  # an ordinary account, a sub-user
        with api.client(token) as client:
            for method, path, body in RESELLER_ENDPOINTS:
                answer = _call(client, method, path.format(name="eve", key_id=globex.key_ids["eve"]), body)
                assert answer.status_code == 403, (method, path, answer.text)
                assert answer.json()["type"].endswith("/not_a_reseller")
    # and nothing of globex's changed
    with api.client(globex.key) as client:
        eve = client.get("/v1/reseller/subusers/eve").json()
        assert eve["suspended"] is False and eve["balance"]["available"]["base_units"] == str(IPSX)


def test_a_reseller_reaches_none_of_another_resellers_subusers(
    api: Api, tenants: tuple[Tenant, Tenant]
) -> None:
    acme, globex = tenants
    with api.client(acme.key) as client:
        for method, path, body in PER_SUBUSER:
            answer = _call(client, method, path.format(name="eve", key_id=globex.key_ids["eve"]), body)
            assert answer.status_code == 404, (method, path, answer.text)
            assert "eve" not in answer.text or "no sub-user" in answer.text
        # "bob" is acme's own bob, never globex's: its key is not one of them
        revoked = client.delete(f"/v1/reseller/subusers/bob/keys/{globex.key_ids['bob']}")
        assert revoked.status_code == 404
        keys = client.get("/v1/reseller/subusers/bob/keys").json()["items"]
        assert [key["key_id"] for key in keys] == [acme.key_ids["bob"]]
        names = [sub["name"] for sub in client.get("/v1/reseller/subusers").json()["items"]]
        assert "eve" not in names and "bob" in names
        report = client.get("/v1/reseller/usage").json()
        assert "eve" not in {row["name"] for row in report["items"]}
    with api.client(globex.key) as client:
        eve = client.get("/v1/reseller/subusers/eve").json()
        assert eve["suspended"] is False and eve["balance"]["available"]["base_units"] == str(IPSX)
        bob_keys = client.get("/v1/reseller/subusers/bob/keys").json()["items"]
        assert [(k["key_id"], k["revoked_at"]) for k in bob_keys] == [(globex.key_ids["bob"], None)]


def test_a_reseller_manages_its_subusers(api: Api, tenants: tuple[Tenant, Tenant]) -> None:
    acme, _ = tenants
    with api.client(acme.key) as client:
        made = client.post(
            "/v1/reseller/subusers", json={"name": "Carl", "quota_bytes": 10**9, "spend_limit": "5"}
        )
        assert made.status_code == 201, made.text
        assert made.json()["name"] == "carl" and made.json()["spend_limit"]["base_units"] == "5"
        assert client.post("/v1/reseller/subusers", json={"name": "carl"}).status_code == 409
        bad = client.post("/v1/reseller/subusers", json={"name": "no-dash"})
        assert bad.status_code == 422 and bad.json()["field"] == "name"

        changed = client.patch("/v1/reseller/subusers/carl", json={"quota_bytes": None, "suspended": True})
        assert changed.status_code == 200
        assert (changed.json()["quota_bytes"], changed.json()["suspended"]) == (None, True)
        detail = client.get("/v1/reseller/subusers/carl").json()
        assert detail["month"] == {
            "used_bytes": 0,
            "spent": {"base_units": "0", "ipsx": "0"},
            "refusal": "suspended",
        }

        assert client.post("/v1/reseller/subusers/carl/keys", json={"scopes": ["trade"]}).status_code == 422
        key = client.post("/v1/reseller/subusers/carl/keys", json={"label": "laptop"}).json()
        assert key["scopes"] == ["proxy", "read"] and key["secret"].startswith("ipsx_")
        assert key["secret"] == "ipsx_" + key["proxy_password"]  # what carl types on the listener

        first = client.post(
            "/v1/reseller/subusers/carl/transfers",
            json={"amount": str(2 * IPSX), "to": "subuser"},
            headers={"Idempotency-Key": "carl-1"},
        )
        again = client.post(
            "/v1/reseller/subusers/carl/transfers",
            json={"amount": str(2 * IPSX), "to": "subuser"},
            headers={"Idempotency-Key": "carl-1"},
        )
        assert (first.status_code, again.status_code) == (201, 200) and again.json()["replayed"] is True
        assert first.json()["subuser_available"]["ipsx"] == "2"
        for other in ({"amount": str(IPSX), "to": "subuser"}, {"amount": str(2 * IPSX), "to": "reseller"}):
            reused = client.post(
                "/v1/reseller/subusers/carl/transfers", json=other, headers={"Idempotency-Key": "carl-1"}
            )
            assert (reused.status_code, reused.json()["title"]) == (409, "conflict")
        assert client.get("/v1/reseller/subusers/carl").json()["balance"]["available"]["ipsx"] == "2"
        limited = client.post("/v1/keys", json={"scopes": ["trade", "keys"], "spend_limit": str(IPSX)})
        assert limited.status_code == 201, limited.text
        with api.client(limited.json()["secret"]) as narrow:
            # What a sub-user is given is spent through its own keys, beyond this key's limit.
            refused = narrow.post(
                "/v1/reseller/subusers/carl/transfers", json={"amount": str(5 * IPSX), "to": "subuser"}
            )
            assert (refused.status_code, refused.json()["title"]) == (403, "spend limited key")
        too_much = client.post(
            "/v1/reseller/subusers/carl/transfers", json={"amount": str(3 * IPSX), "to": "reseller"}
        )
        assert too_much.status_code == 402

        assert client.put("/v1/reseller", json={"markup_bps": 1500}).json()["markup_bps"] == 1500
        assert client.put("/v1/reseller", json={"brand": 'Bad "brand"'}).status_code == 422
        assert client.put("/v1/reseller", json={"endpoint_port": 1}).status_code == 422
        profile = client.get("/v1/reseller").json()
        assert (profile["brand"], profile["header_token"]) == ("Rs_Acme Net", "RsAcmeNet")
        assert client.get("/v1/reseller/usage", params={"month": "13-2020"}).status_code == 400
        page = client.get("/v1/reseller/subusers", params={"limit": 1}).json()
        assert [sub["name"] for sub in page["items"]] == ["bob"] and page["next_cursor"]
        rest = client.get("/v1/reseller/subusers", params={"cursor": page["next_cursor"]}).json()
        assert [sub["name"] for sub in rest["items"]] == ["carl"]


def _usage(api: Api, requester: str, deal_id: str | None = None) -> str:
    event_id = uuid.uuid4().hex
    _sql(
        api,
        "INSERT INTO usage_events (event_id, deal_id, requester, provider, exit_id, node, protocol, target,"
        " bytes_up, bytes_down, opened_at, closed_at, outcome, attempts)"
        " VALUES ($1, $2, $3, 'prov', 'exit-1', 'gw-1', 'connect', 'example.com:443', 10, 20, now(), now(),"
        " 'ok', 1)",
        event_id,
        deal_id,
        requester,
    )
    return event_id


def _deal(api: Api, requester: str) -> str:
    deal_id = f"d{uuid.uuid4().hex[:12]}"
    _sql(
        api,
        "INSERT INTO deals (deal_id, request_id, offer_id, requester, provider, exit_id, price_per_gb,"
        " price_per_hour, reserve, duration_s, traffic_bytes, dedicated, state, record)"
        " VALUES ($1, 'r1', 'o1', $2, 'prov', 'exit-1', 1, 0, 0, 600, 0, false, 'active', '{}'::jsonb)",
        deal_id,
        requester,
    )
    return deal_id


def _order(api: Api, account: str) -> str:
    order_id = f"r{uuid.uuid4().hex[:12]}"
    _sql(
        api,
        "INSERT INTO market_orders (order_id, side, account, terms) VALUES ($1, 'request', $2, '{}'::jsonb)",
        order_id,
        account,
    )
    return order_id


def test_a_subuser_key_reads_its_own_data_only(api: Api, tenants: tuple[Tenant, Tenant]) -> None:
    acme, globex = tenants
    bob, eve = acme.accounts["bob"], globex.accounts["eve"]
    mine = {"usage": _usage(api, bob), "deal": _deal(api, bob), "order": _order(api, bob)}
    theirs = {"usage": _usage(api, eve), "deal": _deal(api, eve), "order": _order(api, eve)}
    with api.client(acme.subusers["bob"]) as client:
        me = client.get("/v1/me").json()
        assert me["account"]["name"] == bob and me["key_id"] == acme.key_ids["bob"]
        assert me["balance"]["available"]["base_units"] == str(IPSX)
        assert [item["event_id"] for item in client.get("/v1/usage").json()["items"]] == [mine["usage"]]
        assert [key["key_id"] for key in client.get("/v1/keys").json()["items"]] == [acme.key_ids["bob"]]
        assert [deal["deal_id"] for deal in client.get("/v1/deals").json()["items"]] == [mine["deal"]]
        assert [order["order_id"] for order in client.get("/v1/orders").json()["items"]] == [mine["order"]]
        ledger = client.get("/v1/ledger").json()["items"]
        own = {f"requester:{bob}", f"hold:requester:{bob}", f"provider:{bob}"}
        assert ledger and all(entry["debit"] in own or entry["credit"] in own for entry in ledger)
        # Another tenant's ids: 404, and nothing of theirs in any answer.
        for path in (
            f"/v1/deals/{theirs['deal']}",
            f"/v1/deals/{theirs['deal']}/anchor",
            f"/v1/orders/{theirs['order']}/pac",
        ):
            assert client.get(path).status_code == 404, path
        assert client.delete(f"/v1/keys/{globex.key_ids['eve']}").status_code == 404
        assert client.delete(f"/v1/keys/{globex.key_ids['bob']}").status_code == 404
        for path in ("/v1/me", "/v1/usage", "/v1/keys", "/v1/deals", "/v1/orders", "/v1/ledger"):
            text = client.get(path).text
            assert eve not in text and theirs["usage"] not in text and theirs["deal"] not in text, path
            assert globex.accounts["bob"] not in text, path
        assert client.get("/v1/reseller").status_code == 403
    with api.client(globex.key) as client:  # eve's key is untouched
        eve_keys = client.get("/v1/reseller/subusers/eve/keys").json()["items"]
        assert [(k["key_id"], k["revoked_at"]) for k in eve_keys] == [(globex.key_ids["eve"], None)]

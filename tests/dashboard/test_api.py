"""The REST API over real HTTP (httpx) against the real ``ipsx api`` process, PostgreSQL and Redis."""

from __future__ import annotations

import base64
import datetime as dt

import asyncpg
import orjson
import pytest
import siwe.siwe
from eth_account import Account
from eth_account.messages import encode_defunct
from redis.asyncio import Redis
from siwe import SiweMessage

from dashboard import auth
from dashboard.problems import Problem
from dashboard.settings import ApiSettings
from tests.dashboard.conftest import REDIS_URL, Api

IPSX = 10**18


def siwe_message(api: Api, address: str, nonce: str, **overrides: object) -> str:
    now = dt.datetime.now(dt.UTC)
    fields: dict[str, object] = {
        "domain": f"127.0.0.1:{api.port}",
        "address": address,
        "statement": "Sign in to IPSX",
        "uri": f"{api.url}/",
        "version": "1",
        "chain_id": 1,
        "nonce": nonce,
        "issued_at": now.isoformat().replace("+00:00", "Z"),
        "expiration_time": (now + dt.timedelta(minutes=5)).isoformat().replace("+00:00", "Z"),
    }
    fields.update(overrides)
    return str(SiweMessage(**fields).prepare_message())  # type: ignore[arg-type]


def sign(message: str, key: bytes) -> str:
    signed = Account.from_key(key).sign_message(encode_defunct(text=message))
    return "0x" + signed.signature.hex().removeprefix("0x")


def new_nonce(api: Api) -> str:
    with api.client() as client:
        answer = client.post("/v1/auth/nonce")
    assert answer.status_code == 201
    body = answer.json()
    assert (body["domain"], body["chain_id"]) == (f"127.0.0.1:{api.port}", 1)
    return str(body["nonce"])


def sign_in(api: Api, key: bytes) -> dict[str, object]:
    address = Account.from_key(key).address
    message = siwe_message(api, address, new_nonce(api))
    with api.client() as client:
        answer = client.post("/v1/auth/siwe", json={"message": message, "signature": sign(message, key)})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_sign_in_with_ethereum_creates_the_account_and_returns_a_working_token(api: Api) -> None:
    key = bytes.fromhex("11" * 32)
    session = sign_in(api, key)
    address = Account.from_key(key).address
    assert session["token_type"] == "Bearer" and session["expires_in"] == 900
    account = session["account"]
    assert isinstance(account, dict) and account["address"] == address
    assert account["name"] == "w_" + address.lower()[2:10]
    with api.client(str(session["token"])) as client:
        me = client.get("/v1/me").json()
    assert me["account"]["address"] == address and me["key_id"] is None
    assert me["balance"]["available"] == {"base_units": "0", "ipsx": "0"}
    # Signing in again reaches the same account.
    assert sign_in(api, key)["account"] == account


def test_a_nonce_signs_in_once(api: Api) -> None:
    key = bytes.fromhex("22" * 32)
    message = siwe_message(api, Account.from_key(key).address, new_nonce(api))
    body = {"message": message, "signature": sign(message, key)}
    with api.client() as client:
        assert client.post("/v1/auth/siwe", json=body).status_code == 200
        replay = client.post("/v1/auth/siwe", json=body)
    assert replay.status_code == 401
    assert replay.headers["content-type"] == "application/problem+json"
    assert replay.headers["www-authenticate"].startswith("Bearer")
    assert replay.json()["detail"] == "unknown, expired or already used nonce"


@pytest.mark.parametrize(
    ("overrides", "detail"),
    [
        ({"domain": "evil.example"}, "sign-in refused: DomainMismatch"),
        ({"chain_id": 5}, "the message is for chain 5, this service is on 1"),
        (
            {"expiration_time": "2020-01-01T00:00:00Z", "issued_at": "2019-12-31T00:00:00Z"},
            "sign-in refused: ExpiredMessage",
        ),
    ],
)
def test_sign_in_refuses_other_domain_chain_or_expired(
    api: Api, overrides: dict[str, object], detail: str
) -> None:
    key = bytes.fromhex("33" * 32)
    message = siwe_message(api, Account.from_key(key).address, new_nonce(api), **overrides)
    with api.client() as client:
        answer = client.post("/v1/auth/siwe", json={"message": message, "signature": sign(message, key)})
    assert (answer.status_code, answer.json()["detail"]) == (401, detail)


def test_sign_in_refuses_a_signature_by_another_wallet(api: Api) -> None:
    key, other = bytes.fromhex("44" * 32), bytes.fromhex("55" * 32)
    message = siwe_message(api, Account.from_key(key).address, new_nonce(api))
    with api.client() as client:
        answer = client.post("/v1/auth/siwe", json={"message": message, "signature": sign(message, other)})
    assert answer.status_code == 401
    assert answer.json()["detail"].startswith("sign-in refused")


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b"{}", "text/plain", 415, "unsupported_media_type"),
        (b"{not json", "application/json", 400, "malformed_json"),
        (b"[1, 2]", "application/json", 400, "malformed_json"),
        (b'{"message": 1, "signature": "0x"}', "application/json", 422, "invalid_field"),
        (b'{"message": "hello", "signature": "0x00"}', "application/json", 401, "malformed_siwe_message"),
        (
            b'{"message": "' + b"a" * 2048 + b'", "signature": "0x00"}',
            "application/json",
            401,
            "malformed_siwe_message",
        ),
        (
            b'{"message": "' + b"a" * 4096 + b'", "signature": "0x00"}',
            "application/json",
            422,
            "invalid_field",
        ),
        (b'{"message": "' + b"a" * 70_000 + b'"}', "application/json", 413, "body_too_large"),
    ],
)
def test_malformed_sign_in_bodies_get_problem_details(
    api: Api, content: bytes, content_type: str, status: int, code: str
) -> None:
    with api.client() as client:
        answer = client.post("/v1/auth/siwe", content=content, headers={"Content-Type": content_type})
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["type"].endswith("/" + code) and problem["status"] == status
    assert "Traceback" not in answer.text


def _hostile_messages(domain: str) -> list[str]:
    address = Account.from_key(b"h" * 32).address
    header = f"{domain} wants you to sign in with your Ethereum account:\n{address}\n\n"
    fields = "URI: http://a\nVersion: 1\nChain ID: 1\nNonce: abcdefgh12\nIssued At: 2024-01-01T00:00:00Z"
    return [
        "a" * 2048,  # no header line at all
        "a" * 4096,  # longer than any real message
        header + "a" * 1800 + "\n\n" + fields + "\nResources:\n- " + "a:" * 20 + " ",
        header + fields + "\nResources:" + "\n- http://a" * 150 + "\n!",
    ]


async def test_sign_in_parses_without_the_abnf_parser(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """siwe's ABNF parser holds the event loop for seconds over a hostile message: it never runs,
    for hostile messages as for a real one."""
    ran: list[str] = []

    def abnf_parser(message: str) -> None:
        ran.append(message)
        raise ValueError("the ABNF parser ran")

    monkeypatch.setattr(siwe.siwe, "ABNFParsedMessage", abnf_parser)
    domain = f"127.0.0.1:{api.port}"
    settings = ApiSettings(api.database_url, REDIS_URL, api.env["IPSX_JWT_SECRET"], siwe_domain=domain)
    pool = await asyncpg.create_pool(api.database_url, min_size=1, max_size=1)
    redis = Redis.from_url(REDIS_URL)
    try:
        for message in _hostile_messages(domain):
            with pytest.raises(Problem) as refused:
                await auth.sign_in(pool, redis, settings, message, "0x" + "00" * 65)
            assert (refused.value.status, refused.value.code) == (401, "malformed_siwe_message")
        key = bytes.fromhex("68" * 32)
        address = Account.from_key(key).address
        message = siwe_message(api, address, await auth.new_nonce(redis, settings))
        _, account = await auth.sign_in(pool, redis, settings, message, sign(message, key))
        assert account.address == address
    finally:
        await redis.aclose()
        await pool.close()
    assert ran == []


def test_hostile_sign_in_messages_get_a_problem_and_the_api_stays_up(api: Api) -> None:
    with api.client() as client:
        for message in _hostile_messages(f"127.0.0.1:{api.port}"):
            answer = client.post("/v1/auth/siwe", json={"message": message, "signature": "0x00"})
            assert answer.status_code in (401, 422)
            assert answer.headers["content-type"] == "application/problem+json"
        assert client.get("/healthz").json() == {"status": "ok"}


def test_api_key_authenticates_and_sees_balance(api: Api) -> None:
    with api.client(api.key) as client:
        me = client.get("/v1/me").json()
    assert me["account"]["name"] == "alice"
    assert me["key_id"] == api.key.split("_")[1]
    assert me["balance"]["available"] == {"base_units": str(25 * IPSX), "ipsx": "25"}
    assert me["balance"]["reserved"]["base_units"] == "0"


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Basic abc",
        "Bearer",
        "Bearer ipsx_000000000000_" + "A" * 32,
        "Bearer not.a.jwt",
        "Bearer " + "x" * 5000,
    ],
)
def test_bad_credentials_get_401(api: Api, header: str) -> None:
    with api.client() as client:
        answer = client.get("/v1/me", headers={"Authorization": header} if header else {})
    assert answer.status_code == 401
    assert answer.json()["type"].endswith("/unauthorized")


def test_a_token_signed_with_another_secret_is_refused(api: Api) -> None:
    import jwt

    forged = jwt.encode(
        {
            "sub": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "aud": "ipsx-api",
            "iss": "ipsx",
            "iat": 1,
            "exp": 2**40,
        },
        "another-secret-that-is-long-enough-32b",
        algorithm="HS256",
    )
    with api.client(forged) as client:
        assert client.get("/v1/me").status_code == 401


def test_keys_create_list_revoke(api: Api) -> None:
    session = sign_in(api, bytes.fromhex("66" * 32))
    with api.client(str(session["token"])) as client:
        created = client.post("/v1/keys", json={"label": "scraper 1"})
        assert created.status_code == 201
        new = created.json()
        assert new["label"] == "scraper 1" and new["secret"].startswith(f"ipsx_{new['key_id']}_")
        listed = client.get("/v1/keys").json()["items"]
        assert [key["key_id"] for key in listed] == [new["key_id"]]
        assert "secret" not in listed[0]
    # The new key works on its own...
    with api.client(new["secret"]) as client:
        assert client.get("/v1/me").json()["account"]["name"] == session["account"]["name"]  # type: ignore[index]
    # ...another account cannot revoke it...
    with api.client(api.key) as client:
        assert client.delete(f"/v1/keys/{new['key_id']}").status_code == 404
    # ...its owner can, once, and then it stops working.
    with api.client(str(session["token"])) as client:
        assert client.delete(f"/v1/keys/{new['key_id']}").status_code == 204
        assert client.delete(f"/v1/keys/{new['key_id']}").status_code == 404
    with api.client(new["secret"]) as client:
        assert client.get("/v1/me").status_code == 401


def test_ledger_statement_pages_through_entries(api: Api) -> None:
    for i in range(3):
        api.ipsx("account", "credit", "alice", "0.5", "--reference", f"page-{i}")
    with api.client(api.key) as client:
        first = client.get("/v1/ledger", params={"limit": 2}).json()
        second = client.get("/v1/ledger", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [item["reference"] for item in first["items"]] == ["page-2", "page-1"]
    assert second["items"][0]["reference"] == "page-0"
    assert first["items"][0]["amount"] == {"base_units": str(IPSX // 2), "ipsx": "0.5"}
    assert first["items"][0]["credit"] == "requester:alice"


@pytest.mark.parametrize(
    "query",
    [{"limit": "0"}, {"limit": "101"}, {"limit": "x"}, {"cursor": "%%%"}, {"cursor": "WzFd"}, {"limt": "5"}],
)
def test_bad_pagination_is_a_400(api: Api, query: dict[str, str]) -> None:
    with api.client(api.key) as client:
        answer = client.get("/v1/usage", params=query)
    assert answer.status_code == 400
    assert answer.json()["type"].rsplit("/", 1)[1] in ("bad_limit", "bad_cursor", "unknown_parameter")


def _cursor(key: list[object]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(key)).decode().rstrip("=")


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/v1/deals?cursor=" + _cursor(["not-a-date", "x"]), None, 400),
        ("GET", "/v1/deals?cursor=" + _cursor(["2024-01-01T00:00:00+00:00", "a\x00b"]), None, 400),
        ("GET", "/v1/usage?cursor=" + _cursor(["2024-01-01", "a\x00"]), None, 400),
        *(
            ("GET", f"{path}?cursor={_cursor([n])}", None, 400)
            for path in ("/v1/ledger", "/v1/withdrawals", "/v1/invoices", "/v1/orders")
            for n in (2**64 - 1, 2**63, 0, -1)
        ),
        ("GET", "/v1/deals/a%00b", None, 404),
        ("GET", "/v1/deals/a%00b/anchor", None, 404),
        ("POST", "/v1/deals/a%00b/reports", {"report": "ok"}, 404),
        ("GET", "/v1/profiles/a%00b", None, 404),
        ("GET", "/v1/orders/a%00b/pac", None, 404),
        ("DELETE", "/v1/orders/a%00b", None, 404),
        ("PATCH", "/v1/orders/a%00b", {"ips": 2}, 404),
    ],
)
def test_crafted_ids_and_cursors_get_a_problem_not_a_500(
    api: Api, method: str, path: str, body: dict[str, object] | None, status: int
) -> None:
    with api.client(api.key) as client:
        answer = client.request(method, path, json=body)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"].rsplit("/", 1)[1] == ("bad_cursor" if status == 400 else "not_found")


def test_unknown_route_and_method_are_problems(api: Api) -> None:
    with api.client() as client:
        missing = client.get("/v1/nothing")
        wrong = client.put("/v1/me")
    assert (missing.status_code, missing.json()["title"]) == (404, "not found")
    assert wrong.status_code == 405 and "GET" in wrong.headers["allow"]


def test_health_and_readiness(api: Api) -> None:
    with api.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"postgres": "ok", "redis": "ok"}}


def test_secrets_never_reach_the_log(api: Api) -> None:
    with api.client(api.key) as client:
        client.get("/v1/me")
    log = api.log.read_text()
    assert api.key not in log
    assert api.env["IPSX_JWT_SECRET"] not in log


def test_a_key_made_by_a_key_is_its_sub_key_and_no_wider(api: Api) -> None:
    with api.client(api.key) as client:
        made = client.post("/v1/keys", json={"label": "reader", "scopes": ["read"], "spend_limit": "1000"})
        assert made.status_code == 201
        sub = made.json()
        assert (sub["scopes"], sub["parent_key_id"]) == (["read"], api.key.split("_")[1])
        assert sub["spend_limit"] == {"base_units": "1000", "ipsx": "0.000000000000001"}
    with api.client(sub["secret"]) as reader:
        assert reader.get("/v1/me").status_code == 200
        denied = reader.post("/v1/requests", json={"ips": 1})
        assert denied.status_code == 403
        assert denied.json()["type"].endswith("/insufficient_scope") and denied.json()["scope"] == "trade"
        assert reader.get("/v1/keys").status_code == 403  # no "keys" scope
    # A sub-key cannot be made wider than the key that makes it.
    with api.client(api.key) as client:
        parent = client.post("/v1/keys", json={"scopes": ["read", "keys"]}).json()
    with api.client(parent["secret"]) as narrow:
        wider = narrow.post("/v1/keys", json={"scopes": ["read", "trade"]})
        same = narrow.post("/v1/keys", json={"scopes": ["read"]})
    assert (wider.status_code, wider.json()["field"]) == (403, "scopes")
    assert (same.status_code, same.json()["field"]) == (422, "parent")  # a sub-key makes no keys


def test_a_sub_key_sees_and_revokes_only_itself(api: Api) -> None:
    session = sign_in(api, bytes.fromhex("67" * 32))
    with api.client(str(session["token"])) as wallet:
        top = wallet.post("/v1/keys", json={"label": "top"}).json()
    with api.client(top["secret"]) as client:
        sub, sibling = (client.post("/v1/keys", json={"scopes": ["read", "keys"]}).json() for _ in range(2))
    with api.client(sub["secret"]) as client:
        assert [key["key_id"] for key in client.get("/v1/keys").json()["items"]] == [sub["key_id"]]
        for other in (top, sibling):
            refused = client.delete(f"/v1/keys/{other['key_id']}")
            assert (refused.status_code, refused.json()["type"].rsplit("/", 1)[1]) == (404, "not_found")
    everyone = {top["key_id"], sub["key_id"], sibling["key_id"]}
    with api.client(top["secret"]) as client:
        assert {key["key_id"] for key in client.get("/v1/keys").json()["items"]} == everyone
        assert all(key["revoked_at"] is None for key in client.get("/v1/keys").json()["items"])
    with api.client(sub["secret"]) as client:
        assert client.delete(f"/v1/keys/{sub['key_id']}").status_code == 204
        assert client.get("/v1/me").status_code == 401
    with api.client(str(session["token"])) as wallet:
        listed = {key["key_id"]: key["revoked_at"] for key in wallet.get("/v1/keys").json()["items"]}
        assert listed.keys() == everyone and listed[sub["key_id"]] is not None
        assert wallet.delete(f"/v1/keys/{sibling['key_id']}").status_code == 204


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scopes": []}, "scopes"),
        ({"scopes": ["root"]}, "scopes"),
        ({"scopes": "read"}, "scopes"),
        ({"spend_limit": "-5"}, "spend_limit"),
        ({"spend_limit": 5}, "spend_limit"),
    ],
)
def test_bad_key_terms_are_422(api: Api, body: dict[str, object], field: str) -> None:
    session = sign_in(api, bytes.fromhex("77" * 32))
    with api.client(str(session["token"])) as client:
        answer = client.post("/v1/keys", json=body)
    assert (answer.status_code, answer.json()["field"]) == (422, field)


def test_preferences_round_trip_and_refuse_bad_values(api: Api) -> None:
    with api.client(api.key) as client:
        assert client.get("/v1/me/preferences").json() == {"spot_max_price_per_gb": None}
        put = client.put("/v1/me/preferences", json={"spot_max_price_per_gb": str(IPSX // 2)})
        assert put.json() == {"spot_max_price_per_gb": {"base_units": str(IPSX // 2), "ipsx": "0.5"}}
        assert client.get("/v1/me/preferences").json() == put.json()
        for bad in ({"spot_max_price_per_gb": "0"}, {"spot_max_price_per_gb": 5}, {"colour": "red"}):
            assert client.put("/v1/me/preferences", json=bad).status_code == 422
        assert client.put("/v1/me/preferences", json={"spot_max_price_per_gb": None}).status_code == 200


def test_profile_of_an_account_without_deals_is_404(api: Api) -> None:
    with api.client(api.key) as client:
        answer = client.get("/v1/profiles/nobody")
    assert answer.status_code == 404 and answer.json()["type"].endswith("/not_found")


def test_amending_orders_over_the_api(api: Api) -> None:
    with api.client(api.key) as client:
        placed = client.post(
            "/v1/requests",
            json={
                "filters": {"country": "fr"},
                "ips": 3,
                "duration_s": 60,
                "traffic_bytes": 10**6,
                "max_price_per_gb": "1000",
            },
        ).json()
        assert placed["resting"] is True
        order_id = placed["order_id"]
        fewer = client.patch(f"/v1/orders/{order_id}", json={"ips": 2})
        assert fewer.status_code == 200 and fewer.json()["deals"] == []
        listed = {o["order_id"]: o for o in client.get("/v1/orders").json()["items"]}
        assert listed[order_id]["terms"]["ips"] == 2
        foreign = client.patch(f"/v1/orders/{order_id}", json={"price_per_gb": "5"})
        assert (foreign.status_code, foreign.json()["field"]) == (422, "price_per_gb")
        assert client.patch("/v1/orders/nope", json={"ips": 1}).status_code == 404
        assert client.delete(f"/v1/orders/{order_id}").status_code == 204
        assert client.patch(f"/v1/orders/{order_id}", json={"ips": 1}).status_code == 404


def test_a_package_over_the_api_rests_until_offers_come(api: Api) -> None:
    with api.client(api.key) as client:
        package = {
            "filters": {"country": "de"},
            "count": 5,
            "duration_s": 1800,
            "total_traffic_bytes": 5 * 10**9,
            "max_price_per_gb": "1000",
        }
        answer = client.post("/v1/packages", json=package, headers={"Idempotency-Key": "package-1"})
        assert answer.status_code == 201
        placed = answer.json()
        assert (placed["side"], placed["resting"], placed["deals"]) == ("request", True, [])
        orders = {o["order_id"]: o for o in client.get("/v1/orders").json()["items"]}
        assert orders[placed["order_id"]]["terms"]["traffic_bytes"] == 10**9  # 5 GB shared by 5 IPs
        # A retry with the same key and terms gets the same order; with other terms, a conflict.
        again = client.post("/v1/packages", json=package, headers={"Idempotency-Key": "package-1"})
        assert again.status_code == 200 and again.json()["replayed"] is True
        assert again.json()["order_id"] == placed["order_id"]
        other = client.post(
            "/v1/packages", json={**package, "count": 6}, headers={"Idempotency-Key": "package-1"}
        )
        assert other.status_code == 409
        bad = client.post("/v1/packages", json={"count": 0, "max_price_per_gb": "1"})
        assert (bad.status_code, bad.json()["field"]) == (422, "ips")

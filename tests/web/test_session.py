"""Web sessions against the real API process: the cookie's flags, CSRF refusals, the sign-in rate
limit, and the three ways in (API key, wallet, demo)."""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
from http.cookies import SimpleCookie

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from dashboard.settings import ApiSettings
from dashboard.web.session import COOKIE, SIGNIN_COOKIE
from tests.web.conftest import SIGNIN_LIMIT, WebApi


def _cookie(answer: httpx.Response, name: str) -> SimpleCookie:
    for header in answer.headers.get_list("set-cookie"):
        if header.startswith(name + "="):
            jar: SimpleCookie = SimpleCookie()
            jar.load(header)
            return jar
    raise AssertionError(f"no {name} cookie set: {answer.headers.get_list('set-cookie')}")


def test_key_sign_in_sets_an_httponly_samesite_strict_session_cookie(web_api: WebApi) -> None:
    with web_api.client() as client:
        answer = client.sign_in_with_key(web_api.secrets["alice"])
        assert answer.status_code == 303 and answer.headers["Location"] == "/web/overview"
        morsel = _cookie(answer, COOKIE)[COOKIE]
        assert morsel["httponly"] is True
        assert morsel["samesite"] == "Strict"
        assert morsel["path"] == "/"
        assert not morsel["secure"]  # plain http here; https requests get Secure
        assert int(morsel["max-age"]) == 8 * 3600
        assert web_api.secrets["alice"] not in answer.headers.get("set-cookie", "")
        page = client.get("/web/overview")
        assert page.status_code == 200 and ">alice<" in page.text.replace(" <small>", "<")
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        assert page.headers["Cache-Control"] == "no-store"


def test_the_sign_in_page_sets_its_form_token_cookie(web_api: WebApi) -> None:
    with web_api.client() as client:
        page = client.get("/signin")
        morsel = _cookie(page, SIGNIN_COOKIE)[SIGNIN_COOKIE]
        assert morsel["httponly"] is True and morsel["samesite"] == "Strict"
        assert f'name="signin_token" value="{morsel.value}"' in page.text


def test_a_sign_in_form_without_its_token_is_refused(web_api: WebApi) -> None:
    """A page on another site cannot sign the browser into someone's account (login CSRF)."""
    with web_api.client() as client:
        client.get("/signin")
        answer = client.http.post(
            "/signin/key", data={"secret": web_api.secrets["bob"], "signin_token": "x" * 32}
        )
        assert answer.status_code == 403
        assert COOKIE not in answer.headers.get("set-cookie", "")
        assert "another site" in answer.text


def test_a_session_cookie_is_not_a_bearer_token_and_a_bearer_token_is_not_a_session(web_api: WebApi) -> None:
    with web_api.signed_in("alice") as client:
        cookie = client.http.cookies[COOKIE]
    rest = httpx.get(f"{web_api.url}/v1/me", headers={"Authorization": f"Bearer {cookie}"})
    assert rest.status_code == 401
    # A REST session token (audience ipsx-api) does not open the pages.
    key = bytes.fromhex("44" * 32)
    token = _rest_token(web_api, key)
    with web_api.client() as client:
        client.http.cookies.set(COOKIE, token, domain="127.0.0.1")
        answer = client.get("/web/overview")
        assert answer.status_code == 303 and answer.headers["Location"] == "/signin"


@pytest.mark.parametrize(
    ("path", "form"),
    [
        ("/web/keys", {"label": "x", "scopes": "read"}),
        ("/web/orders", {"max_price_per_gb": "1", "country": "fr"}),
        ("/web/orders/{order}/cancel", {}),
        ("/web/keys/{key}/revoke", {}),
        ("/signout", {}),
    ],
)
def test_a_cookie_post_without_the_csrf_token_is_refused_403(
    web_api: WebApi, path: str, form: dict[str, str]
) -> None:
    seeded = web_api.seeded
    assert seeded is not None
    target = path.format(order=seeded.order_id, key=seeded.key_ids["alice"])
    with web_api.signed_in("alice") as client:
        keys_before = len(web_api.query("SELECT 1 FROM api_keys"))
        for csrf in (None, "not-the-token"):
            answer = client.post(target, form, csrf=csrf)
            assert answer.status_code == 403, (target, answer.status_code)
            assert "csrf" in answer.text.lower() or "another site" in answer.text
        assert len(web_api.query("SELECT 1 FROM api_keys")) == keys_before
        # Nothing happened: the order is open, alice's key live, the session still good.
        assert (
            web_api.query("SELECT state FROM market_orders WHERE order_id = $1", seeded.order_id)[0][0]
            == "open"
        )
        assert (
            web_api.query("SELECT revoked_at FROM api_keys WHERE key_id = $1", seeded.key_ids["alice"])[0][0]
            is None
        )
        assert client.get("/web/overview").status_code == 200


def test_the_csrf_header_is_accepted_in_place_of_the_form_field(web_api: WebApi) -> None:
    with web_api.signed_in("bob") as client:
        token = client.hidden("/web/keys")
        answer = client.http.post(
            "/web/keys", data={"label": "by-header", "scopes": "read"}, headers={"X-CSRF-Token": token}
        )
        assert answer.status_code == 201
        assert re.search(r'id="new-secret"[^>]*>ipsx_[0-9a-f]{12}_', answer.text)


def test_sign_in_attempts_past_the_limit_are_answered_429(web_api: WebApi) -> None:
    with web_api.client() as client:
        for _ in range(SIGNIN_LIMIT):
            assert client.sign_in_with_key("ipsx_000000000000_" + "x" * 32).status_code == 401
        refused = client.sign_in_with_key(web_api.secrets["alice"])  # even a good key now waits
        assert refused.status_code == 429
        assert 0 < int(refused.headers["Retry-After"]) <= 60  # what is left of the window
        assert "too many sign-in attempts" in refused.text
        assert COOKIE not in refused.headers.get("set-cookie", "")
    with web_api.client() as other:  # another address is not held back
        assert other.sign_in_with_key(web_api.secrets["alice"]).status_code == 303


def test_wallet_messages_past_the_nonce_limit_are_answered_429(web_api: WebApi) -> None:
    # Each message names a fresh nonce, as POST /v1/auth/nonce makes one: the same limit holds.
    limit = ApiSettings("", "", "").auth_nonce_limit
    address = Account.from_key(bytes.fromhex("56" * 32)).address
    with web_api.client() as client:
        headers = {"X-CSRF-Token": client.hidden("/signin", "signin_token")}
        for _ in range(limit):
            answer = client.http.post("/signin/siwe/message", json={"address": address}, headers=headers)
            assert answer.status_code == 200, answer.text
        refused = client.http.post("/signin/siwe/message", json={"address": address}, headers=headers)
        assert refused.status_code == 429
        assert "too many sign-in requests" in refused.text
        assert 0 < int(refused.headers["Retry-After"]) <= 60
    with web_api.client() as other:
        headers = {"X-CSRF-Token": other.hidden("/signin", "signin_token")}
        answer = other.http.post("/signin/siwe/message", json={"address": address}, headers=headers)
        assert answer.status_code == 200


def test_wallet_sign_in_through_the_page_endpoints(web_api: WebApi) -> None:
    key = bytes.fromhex("55" * 32)
    address = Account.from_key(key).address
    with web_api.client() as client:
        token = client.hidden("/signin", "signin_token")
        headers = {"X-CSRF-Token": token}
        prepared = client.http.post(
            "/signin/siwe/message", json={"address": address.lower()}, headers=headers
        )
        assert prepared.status_code == 200, prepared.text
        message = prepared.json()["message"]
        assert message.startswith(
            f"127.0.0.1:{web_api.port} wants you to sign in with your Ethereum account:\n{address}"
        )
        signature = Account.from_key(key).sign_message(encode_defunct(text=message)).signature.hex()
        body = {"message": message, "signature": "0x" + signature.removeprefix("0x")}
        # Without the sign-in token, refused; with it, the session cookie is set.
        assert client.http.post("/signin/siwe", json=body).status_code == 403
        answer = client.http.post("/signin/siwe", json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"next": "/web/overview", "account": "w_" + address.lower()[2:10]}
        assert _cookie(answer, COOKIE)[COOKIE]["httponly"] is True
        assert client.get("/web/overview").status_code == 200
        # Signing in ended the sign-in token, and the nonce was spent: a replay from a fresh
        # sign-in page is refused.
        assert client.http.post("/signin/siwe", json=body, headers=headers).status_code == 403
    with web_api.client() as replay:
        fresh = {"X-CSRF-Token": replay.hidden("/signin", "signin_token")}
        assert replay.http.post("/signin/siwe", json=body, headers=fresh).status_code == 401


def test_demo_login_signs_in_as_the_demo_account(web_api: WebApi) -> None:
    with web_api.client() as client:
        page = client.get("/signin")
        assert 'id="demo-signin"' in page.text and "<code>demo</code>" in page.text
        token = client.hidden("/signin", "signin_token")
        answer = client.http.post("/signin/demo", data={"signin_token": token})
        assert answer.status_code == 303
        overview = client.get("/web/overview")
        assert overview.status_code == 200 and '<span class="who"' in overview.text
        assert 'title="' + "0x" + "d3" * 20 in overview.text.lower()


def test_a_key_session_has_its_keys_scopes_and_ends_when_it_is_revoked(web_api: WebApi) -> None:
    with web_api.signed_in("bob") as owner:
        created = owner.post("/web/keys", {"label": "reader", "scopes": ["read", "proxy"]})
        assert created.status_code == 201
        secret = re.search(r'id="new-secret"[^>]*>(ipsx_\w+_[\w-]+)<', created.text)
        assert secret is not None
        with web_api.client() as reader:
            assert reader.sign_in_with_key(secret.group(1)).status_code == 303
            assert reader.get("/web/overview").status_code == 200
            assert reader.get("/web/keys").status_code == 403
            placed = reader.post("/web/orders", {"max_price_per_gb": "1", "country": "fr"})
            assert placed.status_code == 403 and "trade" in placed.text
            key_id = secret.group(1).split("_")[1]
            assert owner.post(f"/web/keys/{key_id}/revoke").status_code == 303
            answer = reader.get("/web/overview")
            assert answer.status_code == 303 and answer.headers["Location"] == "/signin"


def test_sign_out_clears_the_cookie(web_api: WebApi) -> None:
    with web_api.signed_in("bob") as client:
        answer = client.post("/signout")
        assert answer.status_code == 303 and answer.headers["Location"] == "/signin"
        morsel = _cookie(answer, COOKIE)[COOKIE]
        assert morsel.value == "" and morsel["max-age"] == "0"
        assert client.get("/web/overview").status_code == 303


def test_the_live_stream_needs_a_session(web_api: WebApi) -> None:
    answer = httpx.get(f"{web_api.url}/web/live")
    assert answer.status_code == 401


def _rest_token(web_api: WebApi, key: bytes) -> str:
    from siwe import SiweMessage

    with httpx.Client(base_url=web_api.url) as rest:
        nonce = rest.post("/v1/auth/nonce").json()["nonce"]
        now = dt.datetime.now(dt.UTC)
        message = SiweMessage(
            domain=f"127.0.0.1:{web_api.port}",
            address=Account.from_key(key).address,
            uri=f"{web_api.url}/",
            version="1",
            chain_id=1,
            nonce=nonce,
            issued_at=now.isoformat().replace("+00:00", "Z"),
        ).prepare_message()
        signature = Account.from_key(key).sign_message(encode_defunct(text=message)).signature.hex()
        answer = rest.post(
            "/v1/auth/siwe", json={"message": message, "signature": "0x" + signature.removeprefix("0x")}
        )
    assert answer.status_code == 200, answer.text
    return str(json.loads(answer.text)["token"])


async def test_cookies_are_secure_when_the_dashboard_is_reached_over_https(web_api: WebApi) -> None:
    """Behind a TLS-terminating proxy (``public_url`` https) the cookies carry Secure."""
    from aiohttp.test_utils import TestClient, TestServer

    from dashboard.app import build_app
    from dashboard.settings import ApiSettings
    from tests.web.conftest import REDIS_URL

    settings = ApiSettings(
        database_url=web_api.database_url,
        redis_url=REDIS_URL,
        jwt_secret=secrets.token_urlsafe(32),
        market=False,
        public_url="https://dashboard.example",
    )
    app = build_app(settings)
    assert "web-overview" in app.router.named_resources()  # build_app registers the pages
    async with TestClient(TestServer(app)) as client:
        page = await client.get("/signin")
        assert "Secure" in page.headers["Set-Cookie"]
        token = re.search(r'name="signin_token" value="([^"]+)"', await page.text())
        assert token is not None
        answer = await client.post(
            "/signin/key",
            data={"signin_token": token.group(1), "secret": web_api.secrets["bob"]},
            # The jar keeps a Secure cookie for https only: send it as the browser would there.
            headers={"Cookie": f"{SIGNIN_COOKIE}={token.group(1)}"},
            allow_redirects=False,
        )
        assert answer.status == 303
        session = [value for value in answer.headers.getall("Set-Cookie") if value.startswith(COOKIE + "=")]
        assert len(session) == 1 and "Secure" in session[0] and "HttpOnly" in session[0]

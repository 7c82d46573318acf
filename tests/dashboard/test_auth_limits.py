"""The per-address limits of POST /v1/auth/nonce and POST /v1/auth/siwe, over real HTTP from
loopback addresses of their own, against the API started in-process with small limits (and, for
the defaults, against the ``ipsx api`` process), on the test database and Redis."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from eth_account import Account
from redis.asyncio import Redis

from dashboard import auth
from dashboard.app import running_api
from dashboard.settings import ApiSettings
from tests.dashboard.conftest import REDIS_URL, Api
from tests.dashboard.test_api import sign, siwe_message

LIMIT = 3
WINDOW = 60  # seconds: far longer than any test here, so no window ends during one


@dataclass
class Limited:
    url: str
    settings: ApiSettings
    api: Api  # the ipsx api process: its domain is this one's too, so test_api's messages serve

    def client(self, source: str) -> httpx.AsyncClient:
        """A client whose connections come from the loopback address ``source``."""
        return httpx.AsyncClient(
            base_url=self.url, transport=httpx.AsyncHTTPTransport(local_address=source), timeout=10
        )


@contextlib.asynccontextmanager
async def limited_api(api: Api, **extra: Any) -> AsyncIterator[Limited]:
    """The API in-process with the small limits (and ``extra`` settings)."""
    settings = ApiSettings(
        api.database_url,
        REDIS_URL,
        api.env["IPSX_JWT_SECRET"],
        port=0,
        siwe_domain=f"127.0.0.1:{api.port}",
        market=False,
        auth_nonce_limit=LIMIT,
        auth_siwe_limit=LIMIT,
        auth_window=WINDOW,
        **extra,
    )
    async with running_api(settings) as port:
        yield Limited(f"http://127.0.0.1:{port}", settings, api)


@pytest.fixture
async def limited(api: Api) -> AsyncIterator[Limited]:
    async with limited_api(api) as limited:
        yield limited


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


def _assert_too_many(answer: httpx.Response) -> None:
    assert answer.status_code == 429, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    left = int(answer.headers["Retry-After"])  # what is left of the window its first request opened
    assert 0 < left <= WINDOW
    problem = answer.json()
    assert problem["type"].endswith("/too_many_sign_ins") and problem["status"] == 429
    assert problem["detail"] == f"too many sign-in requests from your address; wait {left} seconds"


async def _nonce_keys(redis: Redis) -> set[bytes]:
    return {key async for key in redis.scan_iter(match="ipsx:api:nonce:*", count=1000)}


async def _signed(
    limited: Limited, client: httpx.AsyncClient, key: bytes, *, signer: bytes | None = None
) -> dict[str, str]:
    """A sign-in body for ``key``'s wallet naming a fresh nonce, signed by ``signer`` (default: itself)."""
    answer = await client.post("/v1/auth/nonce")
    assert answer.status_code == 201, answer.text
    message = siwe_message(limited.api, Account.from_key(key).address, answer.json()["nonce"])
    return {"message": message, "signature": sign(message, signer or key)}


async def test_nonce_requests_past_the_limit_get_429_store_no_nonce_and_spare_other_clients(
    limited: Limited, redis: Redis
) -> None:
    async with limited.client("127.0.1.1") as client:
        for _ in range(LIMIT):
            assert (await client.post("/v1/auth/nonce")).status_code == 201
        held = await _nonce_keys(redis)
        for _ in range(3):  # the address holds no more nonces however often it asks
            _assert_too_many(await client.post("/v1/auth/nonce"))
        assert await _nonce_keys(redis) == held
    async with limited.client("127.0.1.2") as other:
        answer = await other.post("/v1/auth/nonce")
    assert answer.status_code == 201 and answer.json()["domain"] == limited.settings.siwe_domain


async def test_nonces_and_the_counters_expire(limited: Limited, redis: Redis) -> None:
    async with limited.client("127.0.1.3") as client:
        nonce = (await client.post("/v1/auth/nonce")).json()["nonce"]
    assert 0 < await redis.ttl(f"ipsx:api:nonce:{nonce}") <= int(limited.settings.nonce_ttl)
    counter = auth.ATTEMPTS_KEY.format("nonce", "127.0.1.3")
    assert int(await redis.get(counter)) == 1
    assert 0 < await redis.ttl(counter) <= WINDOW


async def test_a_client_cannot_dodge_the_limit_with_x_forwarded_for(limited: Limited, redis: Redis) -> None:
    async with limited.client("127.0.1.4") as client:
        for n in range(LIMIT):
            forwarded = {"X-Forwarded-For": f"203.0.113.{n}", "Forwarded": f"for=203.0.113.{n}"}
            assert (await client.post("/v1/auth/nonce", headers=forwarded)).status_code == 201
        _assert_too_many(await client.post("/v1/auth/nonce", headers={"X-Forwarded-For": "198.51.100.7"}))
    assert int(await redis.get(auth.ATTEMPTS_KEY.format("nonce", "127.0.1.4"))) == LIMIT + 1
    assert await redis.exists(auth.ATTEMPTS_KEY.format("nonce", "198.51.100.7")) == 0


async def test_sign_in_attempts_count_whether_they_succeed_or_fail(limited: Limited) -> None:
    key, stranger = bytes.fromhex("81" * 32), bytes.fromhex("82" * 32)
    async with limited.client("127.0.1.5") as client:
        good = await _signed(limited, client, key)
        assert (await client.post("/v1/auth/siwe", json=good)).status_code == 200
        forged = await _signed(limited, client, key, signer=stranger)
        assert (await client.post("/v1/auth/siwe", json=forged)).status_code == 401
        assert (await client.post("/v1/auth/siwe", content=b"{not json")).status_code == 415
        # The limit is reached: even a good message with an unused nonce now waits.
        late = await _signed(limited, client, key)
        _assert_too_many(await client.post("/v1/auth/siwe", json=late))
    async with limited.client("127.0.1.6") as other:
        answer = await other.post("/v1/auth/siwe", json=late)  # the refused attempt left the nonce unspent
    assert answer.status_code == 200, answer.text
    assert answer.json()["account"]["address"] == Account.from_key(key).address


def test_ipsx_api_limits_nonces_with_the_default_setting(api: Api) -> None:
    """``ipsx api`` (no limit on its command line) holds a client to the default limit."""
    default = ApiSettings("", "", "").auth_nonce_limit
    transport = httpx.HTTPTransport(local_address="127.0.1.7")
    with httpx.Client(base_url=api.url, transport=transport, timeout=10) as client:
        for _ in range(default):
            assert client.post("/v1/auth/nonce").status_code == 201
        refused = client.post("/v1/auth/nonce")
    assert refused.status_code == 429 and refused.headers["content-type"] == "application/problem+json"
    assert 0 < int(refused.headers["Retry-After"]) <= int(ApiSettings("", "", "").auth_window)
    with httpx.Client(base_url=api.url, transport=httpx.HTTPTransport(local_address="127.0.1.8")) as other:
        assert other.post("/v1/auth/nonce").status_code == 201


@pytest.mark.parametrize(
    ("remote", "counted_as"),
    [
        ("127.0.1.5", "127.0.1.5"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),  # the same host's other address
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # an IPv4 client on a dual-stack socket
        (None, "?"),
    ],
)
def test_limits_count_an_ipv6_client_by_its_64(remote: str | None, counted_as: str) -> None:
    assert auth.client_of(remote) == counted_as


@pytest.fixture
async def behind_proxy(api: Api) -> AsyncIterator[Limited]:
    """The API with the small limits, behind a reverse proxy of the operator's at 127.0.2.0/24."""
    async with limited_api(api, trusted_proxies=("127.0.2.0/24",)) as limited:
        yield limited


async def test_behind_a_trusted_proxy_each_client_it_names_has_its_own_limit(
    behind_proxy: Limited, redis: Redis
) -> None:
    async with behind_proxy.client("127.0.2.1") as proxy:
        first = {"X-Forwarded-For": "6.6.6.6, 203.0.113.21"}  # the client forged the left part
        for _ in range(LIMIT):
            assert (await proxy.post("/v1/auth/nonce", headers=first)).status_code == 201
        _assert_too_many(await proxy.post("/v1/auth/nonce", headers=first))
        # Another client through the same proxy is not held back by the first one's count.
        second = {"X-Forwarded-For": "203.0.113.22"}
        assert (await proxy.post("/v1/auth/nonce", headers=second)).status_code == 201
    assert int(await redis.get(auth.ATTEMPTS_KEY.format("nonce", "203.0.113.21"))) == LIMIT + 1
    assert int(await redis.get(auth.ATTEMPTS_KEY.format("nonce", "203.0.113.22"))) == 1
    assert await redis.exists(auth.ATTEMPTS_KEY.format("nonce", "127.0.2.1")) == 0
    assert await redis.exists(auth.ATTEMPTS_KEY.format("nonce", "6.6.6.6")) == 0


async def test_behind_a_trusted_proxy_a_client_reaching_the_api_directly_is_its_own_peer(
    behind_proxy: Limited, redis: Redis
) -> None:
    async with behind_proxy.client("127.0.1.20") as client:  # not the proxy: its header is its own
        for n in range(LIMIT):
            headers = {"X-Forwarded-For": f"203.0.113.{30 + n}"}
            assert (await client.post("/v1/auth/nonce", headers=headers)).status_code == 201
        _assert_too_many(await client.post("/v1/auth/nonce", headers={"X-Forwarded-For": "203.0.113.40"}))
    assert int(await redis.get(auth.ATTEMPTS_KEY.format("nonce", "127.0.1.20"))) == LIMIT + 1
    assert await redis.exists(auth.ATTEMPTS_KEY.format("nonce", "203.0.113.30")) == 0

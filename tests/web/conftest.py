"""The API with its web pages in its own process (``ipsx api``),
on a database of its own and Redis db 0, with three accounts: alice (an API key, 25 IPSX, a resting
order placed through the market, deals and usage), bob (a key, 10 IPSX) and demo (the demo login).

``WebClient`` is a browser without a browser: it keeps cookies, reads forms' CSRF tokens out of
the pages and posts forms. Each client connects from a loopback address of its own, so the
per-address sign-in limit (5 attempts here) counts each test's attempts apart.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis
from playwright.sync_api import Browser, sync_playwright

from matching.deals import State
from tests.billing.conftest import create_database, drop_database
from tests.e2e.conftest import free_port
from tests.web import seed
from tests.web.browser import ARTIFACTS, CHROMIUM

REDIS_URL = os.environ.get("IPSX_TEST_WEB_REDIS_URL", "redis://127.0.0.1:6379/0")
SIGNIN_LIMIT = 5
ADDRESSES = {"alice": "0x" + "a1" * 20, "bob": "0x" + "b2" * 20, "demo": "0x" + "d3" * 20}
_SOURCES = itertools.count(2)
_HIDDEN = re.compile(r'name="(_csrf|signin_token)" value="([^"]+)"')


def source_address() -> str:
    """A loopback address no other client of this session uses."""
    n = next(_SOURCES)
    return f"127.0.{100 + n // 250}.{n % 250 + 1}"


@dataclass
class Seeded:
    order_id: str  # alice's resting request order
    deal_ids: list[str]  # alice's deals: one active, one settled
    key_ids: dict[str, str]  # each account's API key id
    streams: int  # alice's metered streams today


@dataclass
class WebApi:
    url: str
    port: int
    env: dict[str, str]
    database_url: str
    log: Path
    secrets: dict[str, str] = field(default_factory=dict)  # account -> its API key's secret
    seeded: Seeded | None = None

    def ipsx(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "ipsx", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    def query(self, sql: str, *args: object) -> list[asyncpg.Record]:
        async def go() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.database_url)
            try:
                return list(await conn.fetch(sql, *args))
            finally:
                await conn.close()

        return asyncio.run(go())

    def client(self) -> WebClient:
        return WebClient(self)

    def signed_in(self, account: str) -> WebClient:
        client = self.client()
        answer = client.sign_in_with_key(self.secrets[account])
        assert answer.status_code == 303, answer.text
        return client


class WebClient:
    """Cookies, forms and CSRF tokens over real HTTP, from a loopback address of its own."""

    def __init__(self, api: WebApi) -> None:
        self.api = api
        self.source = source_address()
        self.http = httpx.Client(
            base_url=api.url,
            transport=httpx.HTTPTransport(local_address=self.source),
            follow_redirects=False,
            timeout=15,
        )

    def __enter__(self) -> WebClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def hidden(self, path: str, name: str = "_csrf") -> str:
        """The value of the hidden field ``name`` on the page at ``path``."""
        page = self.get(path)
        assert page.status_code == 200, page.text
        for found, value in _HIDDEN.findall(page.text):
            if found == name:
                return str(value)
        raise AssertionError(f"no {name} on {path}")

    def post(
        self, path: str, data: dict[str, Any] | None = None, *, csrf: str | None = "page"
    ) -> httpx.Response:
        """A form post; ``csrf="page"`` takes the session's token from the overview page."""
        form = dict(data or {})
        if csrf == "page":
            form["_csrf"] = self.hidden("/web/overview")
        elif csrf is not None:
            form["_csrf"] = csrf
        return self.http.post(path, data=form)

    def sign_in_with_key(self, secret: str) -> httpx.Response:
        token = self.hidden("/signin", "signin_token")
        return self.http.post("/signin/key", data={"signin_token": token, "secret": secret})


def _start(api: WebApi, *args: str) -> subprocess.Popen[bytes]:
    with open(api.log, "ab") as handle:
        server = subprocess.Popen(
            [sys.executable, "-m", "ipsx", "api", "--port", str(api.port), *args],
            env=api.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{api.url}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise RuntimeError(f"the API did not start: {api.log.read_text()[-3000:]}")
        time.sleep(0.1)


def _seed(api: WebApi) -> Seeded:
    key_ids = {name: secret.split("_")[1] for name, secret in api.secrets.items()}
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {api.secrets['alice']}"}) as rest:
        placed = rest.post(
            "/v1/requests",
            json={
                "filters": {"country": "jp", "protocol": "http"},
                "ips": 2,
                "duration_s": 3600,
                "traffic_bytes": 10**9,
                "max_price_per_gb": str(2 * seed.IPSX),
                "rest": True,
            },
        )
    assert placed.status_code == 201, placed.text

    async def go() -> list[str]:
        conn = await asyncpg.connect(api.database_url)
        try:
            offer_id = await seed.offer(conn, "prov", "e" * 16, "fr", "residential")
            active = await seed.deal(
                conn, requester="alice", provider="prov", offer_id=offer_id, exit_id="e" * 16
            )
            settled = await seed.deal(
                conn,
                requester="alice",
                provider="prov",
                offer_id=offer_id,
                exit_id="e" * 16,
                state=State.SETTLED,
                charge=3 * 10**15,
            )
            await seed.usage(
                conn,
                requester="alice",
                provider="prov",
                exit_id="e" * 16,
                deal_id=active,
                streams=7,
                size=1500,
            )
            return [active, settled]
        finally:
            await conn.close()

    return Seeded(order_id=placed.json()["order_id"], deal_ids=asyncio.run(go()), key_ids=key_ids, streams=7)


@pytest.fixture(scope="session")
def web_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebApi]:
    name = f"ipsx_test_web_{os.getpid()}"
    database_url = asyncio.run(create_database(name))
    redis.Redis.from_url(REDIS_URL).flushdb()
    port = free_port()
    env = {
        **os.environ,
        "IPSX_DATABASE_URL": database_url,
        "IPSX_REDIS_URL": REDIS_URL,
        "IPSX_JWT_SECRET": secrets.token_urlsafe(32),
    }
    api = WebApi(
        f"http://127.0.0.1:{port}", port, env, database_url, tmp_path_factory.mktemp("web") / "api.log"
    )
    server = None
    try:
        api.ipsx("migrate")
        for account, address in ADDRESSES.items():
            api.ipsx("account", "create", "--address", address, "--name", account)
            found = re.search(r"secret: (\S+)", api.ipsx("key", "create", account))
            assert found is not None
            api.secrets[account] = found.group(1)
        api.ipsx("account", "credit", "alice", "25", "--reference", "web-test-alice")
        api.ipsx("account", "credit", "bob", "10", "--reference", "web-test-bob")
        server = _start(
            api,
            "--web-demo-account",
            "demo",
            "--web-signin-limit",
            str(SIGNIN_LIMIT),
            "--web-live-interval",
            "0.2",
        )
        api.seeded = _seed(api)
        yield api
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=15)
        asyncio.run(drop_database(name))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium driven by Playwright, for the browser tests (``tests.web.browser``)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()

"""The REST API as it runs in production (``ipsx api`` in its own process) on a database of its own
and Redis db 8, with one account (alice) that has an API key and 25 IPSX."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from tests.billing.conftest import create_database, drop_database
from tests.e2e.conftest import free_port

REDIS_URL = os.environ.get("IPSX_TEST_API_REDIS_URL", "redis://127.0.0.1:6379/8")
CONSENT_TTL = 1800  # seconds the operator's closing consents last (`ipsx api --consent-ttl`)
ALICE = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
CHANNELS_ADDRESS = "0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC"  # the PaymentChannels address proofs name
OPERATOR_KEY = "0x" + "0e" * 32  # the hub's wallet: it signs providers' payout proofs


@dataclass
class Api:
    url: str
    port: int
    env: dict[str, str]
    database_url: str
    key: str  # alice's API key secret
    log: Path

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

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)


@pytest.fixture(scope="session")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    name = f"ipsx_test_api_{os.getpid()}"
    database_url = asyncio.run(create_database(name))
    redis.Redis.from_url(REDIS_URL).flushdb()
    port = free_port()
    env = {
        **os.environ,
        "IPSX_DATABASE_URL": database_url,
        "IPSX_REDIS_URL": REDIS_URL,
        "IPSX_JWT_SECRET": secrets.token_urlsafe(32),
        "IPSX_OPERATOR_KEY": OPERATOR_KEY,
    }
    log = tmp_path_factory.mktemp("api") / "api.log"
    server = None
    try:
        api = Api(f"http://127.0.0.1:{port}", port, env, database_url, "", log)
        api.ipsx("migrate")
        api.ipsx("account", "create", "--address", ALICE, "--name", "alice")
        found = re.search(r"secret: (\S+)", api.ipsx("key", "create", "alice"))
        if found is None:
            raise RuntimeError("no key secret printed")
        api.key = found.group(1)
        api.ipsx("account", "credit", "alice", "25", "--reference", "test-funding")
        with open(log, "ab") as handle:
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ipsx",
                    "api",
                    "--port",
                    str(port),
                    "--channels-address",
                    CHANNELS_ADDRESS,
                    "--unpaid-limit",
                    "0.0000000000000005",  # 500 base units
                    "--invoice-interval",
                    "0.2",
                    # the suite signs in from 127.0.0.1 again and again (test_openapi's fuzzing above
                    # all); the nonce limit stays the default, which test_auth_limits checks
                    "--auth-siwe-limit",
                    "500",
                    "--consent-ttl",
                    str(CONSENT_TTL),
                ],
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{api.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"the API did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield api
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=10)
        asyncio.run(drop_database(name))

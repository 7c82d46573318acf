"""The API's /metrics (operator keys only), request ids, and its JSON log lines carrying them.

Against the API the dashboard tests share (``ipsx api`` in its own process), and for the log
lines a second node of it started with IPSX_LOG_FORMAT=json.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from dashboard import pac
from dashboard.app import build_app
from dashboard.problems import problems_middleware
from dashboard.settings import ApiSettings
from tests.dashboard.conftest import REDIS_URL, Api
from tests.e2e.conftest import free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def operator_key(api: Api) -> str:
    found = re.search(r"secret: (\S+)", api.ipsx("key", "create", "alice", "--scopes", "operator,read"))
    assert found is not None
    return found.group(1)


def scrape(api: Api, key: str) -> Samples:
    with api.client(key) as client:
        answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return samples(answer.text)


def query(api: Api, sql: str) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(api.database_url)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(go())


def test_metrics_need_an_operator_key(api: Api) -> None:
    with api.client() as anonymous, api.client(api.key) as alice:
        nobody = anonymous.get("/metrics")
        not_operator = alice.get("/metrics")
    assert nobody.status_code == 401
    assert nobody.headers["content-type"] == "application/problem+json"
    assert not_operator.status_code == 403
    assert not_operator.json()["type"].endswith("/insufficient_scope")
    assert not_operator.json()["scope"] == "operator"


def test_requests_are_counted_by_route_template_and_status(api: Api, operator_key: str) -> None:
    before = scrape(api, operator_key)
    with api.client(api.key) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
        deal_statuses = {client.get(f"/v1/deals/d-{n}metrics").status_code for n in range(2)}
        assert client.get("/no/such/route").status_code == 404
        assert client.put("/healthz").status_code == 405
    after = scrape(api, operator_key)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("ipsx_api_requests_total", method="GET", route="/healthz", status="200") == 3
    [deal_status] = deal_statuses
    assert (
        delta("ipsx_api_requests_total", method="GET", route="/v1/deals/{deal_id}", status=str(deal_status))
        == 2
    )
    assert delta("ipsx_api_requests_total", method="GET", route="unmatched", status="404") == 1
    assert delta("ipsx_api_requests_total", method="PUT", route="unmatched", status="405") == 1
    assert delta("ipsx_api_request_duration_seconds_count", method="GET", route="/healthz") == 3
    assert delta("ipsx_api_request_duration_seconds_bucket", method="GET", route="/healthz", le="+Inf") == 3
    # the previous scrape is counted too, under its own template
    assert delta("ipsx_api_requests_total", method="GET", route="/metrics", status="200") == 1
    routes = {dict(labels)["route"] for name, labels in after if name == "ipsx_api_requests_total"}
    assert "/no/such/route" not in routes
    assert not any(route.startswith("/v1/deals/d-") for route in routes)  # never a raw path


def test_ledger_totals_and_open_deals_match_the_database(api: Api, operator_key: str) -> None:
    found = scrape(api, operator_key)
    rows = query(
        api,
        "SELECT split_part(account, ':', 1) AS kind, count(*) AS n, sum(balance) AS total "
        "FROM ledger_balances GROUP BY 1",
    )
    assert rows, "the API's fixture funds alice"
    for row in rows:
        assert value(found, "ipsx_ledger_balance_ipsx", kind=row["kind"]) == float(
            row["total"] / Decimal(10**18)
        )
        assert value(found, "ipsx_ledger_accounts", kind=row["kind"]) == row["n"]
    assert value(found, "ipsx_ledger_balance_ipsx", kind="requester") >= 0
    # double entry: over every kind of account the books sum to zero
    total = sum(v for (name, _), v in found.items() if name == "ipsx_ledger_balance_ipsx")
    assert abs(total) < 1e-6
    live = {
        row["state"]: row["n"]
        for row in query(
            api,
            "SELECT state, count(*) AS n FROM deals "
            "WHERE state NOT IN ('settled', 'cancelled', 'expired') GROUP BY state",
        )
    }
    for state in ("proposed", "active", "completed", "disputed", "resolved"):
        assert value(found, "ipsx_deals_open", state=state) == live.get(state, 0)


def test_request_ids_are_echoed_or_made(api: Api) -> None:
    with api.client() as client:
        given = client.get("/healthz", headers={"X-Request-Id": "trace.me-42"})
        malformed = client.get("/healthz", headers={"X-Request-Id": "no spaces allowed"})
        absent = client.get("/healthz")
        problem = client.get("/v1/me", headers={"X-Request-Id": "trace-401"})
    assert given.headers["X-Request-Id"] == "trace.me-42"
    assert re.fullmatch(r"[0-9a-f]{16}", malformed.headers["X-Request-Id"])
    assert re.fullmatch(r"[0-9a-f]{16}", absent.headers["X-Request-Id"])
    assert absent.headers["X-Request-Id"] != malformed.headers["X-Request-Id"]
    assert (problem.status_code, problem.headers["X-Request-Id"]) == (401, "trace-401")


@pytest.fixture
def json_logging_api(api: Api, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A second node of the API with JSON logs and -v (its access lines); its URL and log."""
    port, log = free_port(), tmp_path / "api-json.log"
    env = {**api.env, "IPSX_LOG_FORMAT": "json"}
    with open(log, "ab") as handle:
        server = subprocess.Popen(
            [sys.executable, "-m", "ipsx", "-v", "api", "--port", str(port)],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"the API did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield url, log
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)


def test_json_log_lines_carry_the_request_id(json_logging_api: tuple[str, Path], api: Api) -> None:
    url, log = json_logging_api
    answer = httpx.get(
        f"{url}/v1/me", headers={"X-Request-Id": "trace-json-1", "Authorization": f"Bearer {api.key}"}
    )
    assert answer.status_code == 200
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        mine = [line for line in lines if line.get("request_id") == "trace-json-1"]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert mine, "no log line of the request"
    [access] = [line for line in mine if line["logger"] == "ipsx.api.access"]
    assert access["message"] == "GET /v1/me 200"
    assert (access["route"], access["status"], access["level"]) == ("/v1/me", 200, "DEBUG")
    assert isinstance(access["duration_ms"], float)
    # every line is JSON, and alice's key appears in none
    text = log.read_text()
    assert all(line.startswith("{") for line in text.splitlines())
    assert api.key not in text


async def test_log_lines_never_carry_a_pac_links_token(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    """A PAC URL's last part is a capability: the access line and the 500 line log the path
    without it."""
    settings = ApiSettings(api.database_url, REDIS_URL, api.env["IPSX_JWT_SECRET"], market=False)
    link = pac.path(settings.jwt_secret, "alice", "no_such_order")
    token = link.rsplit("/", 1)[1].removesuffix(".pac")
    caplog.set_level(logging.DEBUG, logger="ipsx.api")
    async with TestClient(TestServer(build_app(settings))) as client:
        assert (await client.get(link)).status == 404

    async def failing(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    broken = web.Application(middlewares=[problems_middleware])
    broken.router.add_get("/pac/{account}/{order_id}/{token}.pac", failing)
    async with TestClient(TestServer(broken)) as client:
        assert (await client.get(link)).status == 500
    lines = [record.getMessage() for record in caplog.records]
    assert f"GET /pac/alice/no_such_order/{pac.REDACTED} 404" in lines
    failed = f"unhandled error in GET /pac/alice/no_such_order/{pac.REDACTED} "
    assert any(line.startswith(failed) for line in lines)
    assert not any(token in line for line in lines)

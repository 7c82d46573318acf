"""Locust scenarios for an IPSX deployment: what scrapers and API users do, at scale.

    RotatingScraper  a new CONNECT tunnel per request (a new exit each time), GET through it, close
    StickyScraper    one sticky session per user over a keep-alive connection; every answer must
                     come from the same exit, or the request counts as failed
    ApiUser          an SEO platform's back office: account, usage and order reads, and a request
                     order placed, amended and cancelled

Configured from the environment (``loadtests/run_locust.py`` sets it all up on this machine):

    IPSX_LOCUST_GATEWAY   HOST:PORT of the gateway's HTTP proxy port
    IPSX_LOCUST_USER      the proxy user name (an account name), IPSX_LOCUST_SECRET its API key
    IPSX_LOCUST_ORIGIN    http://HOST:PORT of an origin that answers /ip with the client's address
    IPSX_LOCUST_API       http://HOST:PORT of the REST API (ApiUser's host)

Run one scenario headless, e.g.:

    locust -f loadtests/locustfile.py --headless -u 50 -r 25 -t 30s RotatingScraper
"""

from __future__ import annotations

import base64
import http.client
import os
import socket
import time
import uuid
from typing import Any

from locust import HttpUser, User, between, events, task
from locust.env import Environment


def _setting(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"set {name} (loadtests/run_locust.py does)")
    return value


def _basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


class _ProxyUser(User):
    """A scraper behind the gateway, timing its own requests and reporting them to locust."""

    abstract = True

    def on_start(self) -> None:
        host, _, port = _setting("IPSX_LOCUST_GATEWAY").rpartition(":")
        self.gateway = (host, int(port))
        self.account = _setting("IPSX_LOCUST_USER")
        self.secret = _setting("IPSX_LOCUST_SECRET")
        origin = _setting("IPSX_LOCUST_ORIGIN").removeprefix("http://")
        origin_host, _, origin_port = origin.rpartition(":")
        self.origin = (origin_host, int(origin_port))

    def report(self, name: str, started: float, size: int, error: BaseException | None) -> None:
        self.environment.events.request.fire(
            request_type="PROXY",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=size,
            exception=error,
            context={},
        )


class RotatingScraper(_ProxyUser):
    """CONNECT → GET /ip → close, in a loop: each request gets a tunnel (and an exit) of its own."""

    wait_time = between(0, 0.01)

    @task
    def rotate(self) -> None:
        started = time.perf_counter()
        size, error = 0, None
        try:
            conn = http.client.HTTPConnection(*self.gateway, timeout=15)
            conn.set_tunnel(
                f"{self.origin[0]}:{self.origin[1]}",
                headers={"Proxy-Authorization": _basic(self.account, self.secret)},
            )
            try:
                conn.request("GET", "/ip", headers={"Connection": "close"})
                response = conn.getresponse()
                body = response.read()
                size = len(body)
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")
            finally:
                conn.close()
        except (OSError, http.client.HTTPException, RuntimeError) as exc:
            error = exc
        self.report("rotating: CONNECT + GET /ip", started, size, error)


class StickyScraper(_ProxyUser):
    """Absolute-URI GETs on one keep-alive connection under one sticky session."""

    wait_time = between(0, 0.01)

    def on_start(self) -> None:
        super().on_start()
        self.session = uuid.uuid4().hex[:12]
        self.user = f"{self.account}-session-{self.session}-sessttl-300"
        self.exit: str | None = None
        self.conn: http.client.HTTPConnection | None = None

    def on_stop(self) -> None:
        if self.conn is not None:
            self.conn.close()

    @task
    def fetch(self) -> None:
        started = time.perf_counter()
        size, error = 0, None
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(*self.gateway, timeout=15)
            url = f"http://{self.origin[0]}:{self.origin[1]}/ip"
            self.conn.request("GET", url, headers={"Proxy-Authorization": _basic(self.user, self.secret)})
            response = self.conn.getresponse()
            body = response.read()
            size = len(body)
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
            if self.exit is None:
                self.exit = body.decode()
            elif body.decode() != self.exit:
                raise RuntimeError(f"sticky session moved from {self.exit} to {body.decode()}")
            if response.will_close:
                self.conn.close()
                self.conn = None
        except (OSError, http.client.HTTPException, RuntimeError) as exc:
            error = exc
            if self.conn is not None:
                self.conn.close()
                self.conn = None
        self.report("sticky: keep-alive GET /ip", started, size, error)


class ApiUser(HttpUser):
    """Reads what a dashboard shows, and places, amends and cancels a request order."""

    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        self.host = self.host or _setting("IPSX_LOCUST_API")
        self.client.headers["Authorization"] = f"Bearer {_setting('IPSX_LOCUST_SECRET')}"

    @task(4)
    def me(self) -> None:
        self.client.get("/v1/me", name="GET /v1/me")

    @task(4)
    def usage(self) -> None:
        self.client.get("/v1/usage?limit=50", name="GET /v1/usage")

    @task(2)
    def orders(self) -> None:
        self.client.get("/v1/orders?limit=50", name="GET /v1/orders")

    @task(1)
    def order_lifecycle(self) -> None:
        terms: dict[str, Any] = {
            "filters": {"country": "fr"},
            "ips": 2,
            "duration_s": 60,
            "traffic_bytes": 10**6,
            "max_price_per_gb": "1",  # below every offer: it rests in the book
        }
        with self.client.post(
            "/v1/requests",
            json=terms,
            headers={"Idempotency-Key": uuid.uuid4().hex},
            name="POST /v1/requests",
            catch_response=True,
        ) as placed:
            if placed.status_code != 201:
                placed.failure(f"HTTP {placed.status_code}: {placed.text[:200]}")
                return
            order_id = placed.json()["order_id"]
        self.client.patch(f"/v1/orders/{order_id}", json={"ips": 1}, name="PATCH /v1/orders/{id}")
        self.client.delete(f"/v1/orders/{order_id}", name="DELETE /v1/orders/{id}")


@events.init.add_listener
def _check_settings(environment: Environment, **_: Any) -> None:
    """Fail at start, not at the first request, when the environment is incomplete."""
    classes = {cls.__name__ for cls in environment.user_classes}
    if classes & {"RotatingScraper", "StickyScraper"}:
        for name in ("IPSX_LOCUST_GATEWAY", "IPSX_LOCUST_USER", "IPSX_LOCUST_SECRET", "IPSX_LOCUST_ORIGIN"):
            _setting(name)
        host, _, port = _setting("IPSX_LOCUST_GATEWAY").rpartition(":")
        with socket.create_connection((host, int(port)), timeout=5):
            pass

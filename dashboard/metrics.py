"""The API's request ids and Prometheus metrics.

Every request gets an id: the client's ``X-Request-Id`` when it is well-formed (1 to 64 of
``A-Z a-z 0-9 . _ -``), a new random one otherwise. It is echoed in the response, quoted in
500 problem documents and carried into every log line written while the request is served
(``ipsx.logs.REQUEST_ID``).

``GET /metrics`` (Prometheus text, or OpenMetrics when asked) needs an operator API key
(``Authorization: Bearer ipsx_…`` of a key made with ``ipsx key create --scopes operator``):
the API is often reachable from outside and the books are nobody else's business. It exports
requests by method, route template and status, their latency, and from PostgreSQL (read at most
every ``BOOKS_TTL``) the ledger's balances summed per account kind and the deals not yet closed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from decimal import Decimal

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Middleware
from multidict import CIMultiDict
from prometheus_client import Counter, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from billing import accounts
from billing.ledger import BASE_UNITS
from billing.metrics import metrics_handler, new_registry
from dashboard import auth, pac
from dashboard.appkeys import PG, SETTINGS
from ipsx.logs import REQUEST_ID
from matching.deals import State

log = logging.getLogger("ipsx.api")
access = logging.getLogger("ipsx.api.access")  # one line per request, at DEBUG (ipsx -v)

REQUEST_ID_HEADER = "X-Request-Id"
BOOKS_TTL = 5.0  # seconds a reading of the ledger and deal totals serves scrapes
_QUERY_TIMEOUT = 5.0
_WELL_FORMED_ID = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LIVE_DEALS = tuple(s.value for s in State if s not in (State.SETTLED, State.CANCELLED, State.EXPIRED))

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Account names are "<kind>:…" (billing.ledger): a handful of kinds, whatever the number of accounts.
_BALANCES = """
SELECT split_part(account, ':', 1) AS kind, count(*) AS accounts, sum(balance) AS total
FROM ledger_balances GROUP BY 1
"""
_LIVE_DEAL_COUNTS = """
SELECT state, count(*) AS deals FROM deals WHERE state NOT IN ('settled', 'cancelled', 'expired')
GROUP BY state
"""


def request_id_for(header: str | None) -> str:
    """The client's request id if well-formed, else a new one (16 hex characters)."""
    if header is not None and _WELL_FORMED_ID.fullmatch(header):
        return header
    return secrets.token_hex(8)


def route_of(request: web.Request) -> str:
    """The route template that matched (``/v1/deals/{deal_id}``), never the raw path, so that a
    label has as many values as the API has routes; ``unmatched`` for 404s and 405s."""
    resource = request.match_info.route.resource
    return "unmatched" if resource is None else resource.canonical


class BooksCollector(Collector):
    """The ledger's balances per account kind and the open deals, as last read."""

    def __init__(self) -> None:
        self._balances: list[tuple[str, int, Decimal]] | None = None
        self._deals: dict[str, int] | None = None
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()

    async def refresh(self, pool: asyncpg.Pool) -> None:
        """Read the totals unless read less than ``BOOKS_TTL`` ago; a failed reading leaves them
        out of the scrapes until the next one (a missing series, not a stale one)."""
        async with self._lock:
            if time.monotonic() - self._read_at < BOOKS_TTL:
                return
            self._read_at = time.monotonic()
            try:
                async with asyncio.timeout(_QUERY_TIMEOUT):
                    balances = await pool.fetch(_BALANCES)
                    deals = await pool.fetch(_LIVE_DEAL_COUNTS)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as error:
                log.warning("ledger totals not read for the metrics: %s", type(error).__name__)
                self._balances = self._deals = None
                return
            self._balances = [(row["kind"], int(row["accounts"]), row["total"]) for row in balances]
            self._deals = {
                **dict.fromkeys(_LIVE_DEALS, 0),
                **{row["state"]: int(row["deals"]) for row in deals},
            }

    def collect(self) -> Iterable[Metric]:
        if self._balances is not None:
            balance = GaugeMetricFamily(
                "ipsx_ledger_balance_ipsx",
                "Sum of the ledger balances of each kind of account, in IPSX (the treasury's is "
                "negative: over every kind the books sum to zero)",
                labels=["kind"],
            )
            count = GaugeMetricFamily("ipsx_ledger_accounts", "Ledger accounts of each kind", labels=["kind"])
            for kind, accounts_of_kind, total in self._balances:
                balance.add_metric([kind], float(total / BASE_UNITS))
                count.add_metric([kind], accounts_of_kind)
            yield balance
            yield count
        if self._deals is not None:
            deals = GaugeMetricFamily(
                "ipsx_deals_open", "Deals not settled, cancelled or expired", labels=["state"]
            )
            for state, number in self._deals.items():
                deals.add_metric([state], number)
            yield deals


class ApiMetrics:
    """The metrics of one API application, in a registry of its own."""

    def __init__(self) -> None:
        self.books = BooksCollector()
        self.registry = new_registry(self.books)
        self.requests = Counter(
            "ipsx_api_requests",
            "Requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ipsx_api_request_duration_seconds",
            "Time to answer a request, by method and route template",
            ["method", "route"],
            registry=self.registry,
        )


def observe(metrics: ApiMetrics) -> Middleware:
    """The outermost middleware: the request id (header, log context) and the request metrics."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        sent = request.headers.get(REQUEST_ID_HEADER)
        request_id = request_id_for(sent)
        if sent != request_id:  # the inner middlewares and handlers see the id in force
            headers = CIMultiDict(request.headers)
            headers[REQUEST_ID_HEADER] = request_id
            request = request.clone(headers=headers)
        context = REQUEST_ID.set(request_id)
        method = request.method if request.method in _METHODS else "other"
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
        except web.HTTPException as error:  # the statuses below 400 the problem middleware lets by
            status = error.status
            error.headers[REQUEST_ID_HEADER] = request_id
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away first
            raise
        finally:
            route, elapsed = route_of(request), time.perf_counter() - started
            metrics.requests.labels(method, route, str(status)).inc()
            metrics.latency.labels(method, route).observe(elapsed)
            access.debug(
                "%s %s %d",
                request.method,
                pac.loggable(request.path),
                status,
                extra={"route": route, "status": status, "duration_ms": round(elapsed * 1000, 1)},
            )
            REQUEST_ID.reset(context)
        response.headers[REQUEST_ID_HEADER] = request_id
        return response

    return middleware


def endpoint(metrics: ApiMetrics) -> Handler:
    """``GET /metrics``, for operator keys only (Problem 401/403 otherwise)."""
    expose = metrics_handler(metrics.registry)

    async def get_metrics(request: web.Request) -> web.StreamResponse:
        caller = await auth.authenticate(request, request.app[PG], request.app[SETTINGS])
        caller.require(accounts.OPERATOR)
        await metrics.books.refresh(request.app[PG])
        return await expose(request)

    return get_metrics

"""A gateway node's metrics: plain counters on the hot path, read by a collector when scraped.

Counting a stream costs an integer addition: :class:`GatewayStats` holds dicts of ints keyed by
a small fixed set of labels (protocols, dial error codes, refusal and auth-failure reasons) and a
fixed-bucket histogram, and nothing on the hot path touches ``prometheus_client``. Live state
(streams in flight, provider links, pooled data connections) is read from the front and the
tunnel hub at scrape time by :class:`GatewayCollector`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.wire import DialErrorCode

if TYPE_CHECKING:
    from billing.usage import UsagePublisher
    from gateway.front import Front
    from gateway.tunnel import TunnelHub

PROTOCOLS = ("http", "connect", "socks5")  # stream kinds, as ExitDialer.open is called
AUTH_FAILURES = (
    "missing",  # no credentials sent (HTTP 407 auth_required)
    "invalid",  # unknown account, wrong secret, revoked key or a key without the proxy scope
    "bad_targeting",  # the user name or X-IPSX-* headers do not parse
    "unavailable",  # the accounts database could not be asked
)
# no_exit, bad_ban (a ban naming no exit), or why the market opened no deal (exits.NO_DEAL)
REFUSALS = (
    "no_exit",
    "bad_ban",
    "insufficient_funds",
    "no_offer",
    "above_price",
    "offers_busy",
    "unavailable",
    "payment_required",
    "other",
)
# Exit selection is a cache lookup most of the time and a Redis round trip otherwise.
SELECTION_BUCKETS = (
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


class Histogram:
    """Observations counted in fixed buckets: ``observe`` is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(bounds) or not bounds:
            raise ValueError("histogram bounds must be given in increasing order")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts by upper bound, ``+Inf`` last, as the exposition format wants."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


def _zeros(keys: Iterable[str]) -> dict[str, int]:
    return dict.fromkeys(keys, 0)


@dataclass(slots=True, eq=False)
class GatewayStats:
    """What a gateway process counted since it started. Increment through the methods. Every
    key comes from the code (protocols, error codes, reasons), never from a client's bytes, so
    the label values are few; a key the code adds later is counted, not a KeyError."""

    opened: dict[str, int] = field(default_factory=lambda: _zeros(PROTOCOLS))
    closed: dict[str, int] = field(default_factory=lambda: _zeros(PROTOCOLS))
    bytes_up: dict[str, int] = field(default_factory=lambda: _zeros(PROTOCOLS))
    bytes_down: dict[str, int] = field(default_factory=lambda: _zeros(PROTOCOLS))
    dial_errors: dict[str, int] = field(default_factory=lambda: _zeros(code.value for code in DialErrorCode))
    refusals: dict[str, int] = field(default_factory=lambda: _zeros(REFUSALS))
    auth_failures: dict[str, int] = field(default_factory=lambda: _zeros(AUTH_FAILURES))
    selection: Histogram = field(default_factory=lambda: Histogram(SELECTION_BUCKETS))

    def stream_opened(self, protocol: str) -> None:
        self.opened[protocol] = self.opened.get(protocol, 0) + 1

    def stream_closed(self, protocol: str, up: int, down: int) -> None:
        """A stream ended having carried ``up`` bytes client → exit and ``down`` back."""
        self.closed[protocol] = self.closed.get(protocol, 0) + 1
        self.bytes_up[protocol] = self.bytes_up.get(protocol, 0) + up
        self.bytes_down[protocol] = self.bytes_down.get(protocol, 0) + down

    def dial_error(self, code: DialErrorCode) -> None:
        """One failed dial through an exit (a connection retried on another exit counts each)."""
        self.dial_errors[code.value] += 1

    def refused(self, reason: str) -> None:
        """A stream refused without a dial: ``no_exit``, ``bad_ban`` or a NoDeal reason (any
        other reason, which the market's answers could hold, is counted as ``other``)."""
        if reason not in self.refusals:
            reason = "other"
        self.refusals[reason] += 1

    def auth_failed(self, reason: str) -> None:
        """Credentials refused; ``reason`` is one of AUTH_FAILURES."""
        self.auth_failures[reason] = self.auth_failures.get(reason, 0) + 1


def _counter(name: str, documentation: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


class GatewayCollector(Collector):
    """Exports ``stats`` and the live state of a running node when scraped."""

    def __init__(
        self,
        stats: GatewayStats,
        *,
        node: str,
        front: Front,
        hub: TunnelHub,
        publisher: UsagePublisher,
    ) -> None:
        self._stats = stats
        self._node = node
        self._front = front
        self._hub = hub
        self._publisher = publisher

    def collect(self) -> Iterable[Metric]:
        yield from self._counters()
        yield from self._live()

    def _counters(self) -> Iterable[Metric]:
        stats = self._stats
        yield _counter(
            "ipsx_gateway_streams_opened", "Streams opened through an exit", "protocol", stats.opened
        )
        yield _counter("ipsx_gateway_streams_closed", "Streams ended", "protocol", stats.closed)
        yield _counter(
            "ipsx_gateway_bytes_up",
            "Bytes client to exit, counted when a stream ends",
            "protocol",
            stats.bytes_up,
        )
        yield _counter(
            "ipsx_gateway_bytes_down",
            "Bytes exit to client, counted when a stream ends",
            "protocol",
            stats.bytes_down,
        )
        yield _counter(
            "ipsx_gateway_dial_errors",
            "Failed dials through an exit, each attempt counted, by wire error code",
            "reason",
            stats.dial_errors,
        )
        yield _counter(
            "ipsx_gateway_refusals",
            "Streams refused before any dial (no exit matches, no deal)",
            "reason",
            stats.refusals,
        )
        yield _counter(
            "ipsx_gateway_auth_failures", "Client credentials refused", "reason", stats.auth_failures
        )
        selection = stats.selection
        yield HistogramMetricFamily(
            "ipsx_gateway_selection_seconds",
            "Time to choose an exit for a stream",
            buckets=selection.buckets(),
            sum_value=selection.total,
        )

    def _live(self) -> Iterable[Metric]:
        front, links = self._front, [link for link in self._hub.links if not link.closed]
        tunnels = len(front.splices)
        yield _gauge(
            "ipsx_gateway_streams_open", "Streams in flight (tunnels and plain-HTTP exchanges)", front.busy
        )
        yield _gauge("ipsx_gateway_tunnels_open", "CONNECT and SOCKS5 streams being relayed", tunnels)
        yield _gauge("ipsx_gateway_agents_connected", "Provider agents logged in to this node", len(links))
        yield _gauge(
            "ipsx_gateway_exits_connected", "Exits of the agents logged in", sum(len(x.exits) for x in links)
        )
        streams = [count for link in links for count in link.active.values()]
        yield _gauge("ipsx_gateway_exit_streams_open", "Streams open through the exits", sum(streams))
        yield _gauge(
            "ipsx_gateway_exit_streams_open_max",
            "Streams open through the busiest exit (one series, not one per exit: exits come and go)",
            max(streams, default=0),
        )
        yield _gauge(
            "ipsx_gateway_data_connections_idle",
            "Data connections agents opened in advance, not carrying a stream yet",
            sum(len(link.idle) for link in links),
        )
        yield CounterMetricFamily(
            "ipsx_gateway_data_connections_reused",
            "Data connections that went back to their agent's pool after carrying a stream",
            value=self._hub.reuses,
        )
        yield _gauge(
            "ipsx_gateway_usage_pending", "Usage records not yet accepted by Redis", self._publisher.pending
        )
        info = GaugeMetricFamily("ipsx_gateway_info", "This gateway node", labels=["node"])
        info.add_metric([self._node], 1)
        yield info


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)

"""Usage events: what the gateway and the provider agent each counted for one stream.

The gateway publishes a :class:`UsageEvent` and the provider agent an :class:`AgentReport` for every
stream, under the same ``event_id``, to the Redis stream ``USAGE_STREAM``; the billing worker
ingests both. Times are unix seconds from 0 to :data:`TIME_MAX` (floats are fine for times; money
is never a float).

Both records validate themselves on construction, so a bad one fails where it is made. A stream
entry holds either one item (``encode`` / ``decode``) or, as the publisher writes them, a batch of
items (``encode_batch``); ``decode_entry`` reads both. Batching matters on the gateway's hot path:
one XADD per flush instead of one per stream cut the gateway's and Redis's CPU per tunnel.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from billing.errors import MalformedEvent
from billing.keys import USAGE_STREAM

log = logging.getLogger(__name__)

PROTOCOLS = frozenset({"http", "connect", "socks5"})
KIND_GATEWAY = "gateway"
KIND_AGENT = "agent"
KIND_BATCH = "batch"

_EVENT_ID = re.compile(r"[0-9a-f]{32}", re.ASCII)
_INT = re.compile(r"[0-9]{1,19}", re.ASCII)
_FLOAT = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,20})?(?:e[+-]?[0-9]{1,3})?", re.ASCII)
_TEXT_MAX_LEN = 512
_BIGINT_MAX = 2**63 - 1
_INT_MAX = 2**31 - 1
# 9999-12-31T23:59:59Z: a stored time must fit PostgreSQL's to_timestamp and, read back, Python's
# datetime; one beyond either fails the whole batch it is stored with.
TIME_MAX = 253_402_300_799.0


def _check_text(name: str, value: object, event_id: str) -> None:
    # PostgreSQL text holds no NUL character: one would fail the row where it is stored.
    if not isinstance(value, str) or not value or len(value) > _TEXT_MAX_LEN or "\x00" in value:
        raise MalformedEvent(
            f"{name} must be a non-empty string of at most {_TEXT_MAX_LEN}, without NUL", event_id
        )


def _check_int(name: str, value: object, limit: int, event_id: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise MalformedEvent(f"{name} must be an integer in [0, {limit}]", event_id)


def _check_time(name: str, value: object, event_id: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= TIME_MAX:
        raise MalformedEvent(f"{name} must be a unix time in [0, {TIME_MAX:.0f}]", event_id)
    return float(value)


def _check_common(
    event_id: object,
    texts: Mapping[str, object],
    bytes_up: object,
    bytes_down: object,
    opened_at: object,
    closed_at: object,
) -> str:
    if not isinstance(event_id, str) or not _EVENT_ID.fullmatch(event_id):
        raise MalformedEvent("event_id must be 32 lower-case hex characters")
    for name, value in texts.items():
        _check_text(name, value, event_id)
    _check_int("bytes_up", bytes_up, _BIGINT_MAX, event_id)
    _check_int("bytes_down", bytes_down, _BIGINT_MAX, event_id)
    if _check_time("closed_at", closed_at, event_id) < _check_time("opened_at", opened_at, event_id):
        raise MalformedEvent("closed_at is before opened_at", event_id)
    return event_id


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """The gateway's count of one stream. Raises ``MalformedEvent`` when a field is invalid."""

    event_id: str  # uuid4().hex
    deal_id: str | None
    requester: str  # account name
    provider: str
    exit_id: str
    node: str  # the gateway node that relayed the stream
    protocol: str  # one of PROTOCOLS
    target: str  # host:port asked for
    bytes_up: int  # requester -> target
    bytes_down: int  # target -> requester
    opened_at: float
    closed_at: float
    outcome: str
    attempts: int  # exits tried

    def __post_init__(self) -> None:
        texts = {
            "requester": self.requester,
            "provider": self.provider,
            "exit_id": self.exit_id,
            "node": self.node,
            "target": self.target,
            "outcome": self.outcome,
        }
        event_id = _check_common(
            self.event_id, texts, self.bytes_up, self.bytes_down, self.opened_at, self.closed_at
        )
        if self.deal_id is not None:
            _check_text("deal_id", self.deal_id, event_id)
        if self.protocol not in PROTOCOLS:
            raise MalformedEvent("protocol must be http, connect or socks5", event_id)
        _check_int("attempts", self.attempts, _INT_MAX, event_id)


@dataclass(frozen=True, slots=True)
class AgentReport:
    """The provider agent's own count of the same stream. Raises ``MalformedEvent`` when invalid."""

    event_id: str
    provider: str
    exit_id: str
    bytes_up: int
    bytes_down: int
    opened_at: float
    closed_at: float
    outcome: str

    def __post_init__(self) -> None:
        texts = {"provider": self.provider, "exit_id": self.exit_id, "outcome": self.outcome}
        _check_common(self.event_id, texts, self.bytes_up, self.bytes_down, self.opened_at, self.closed_at)


_INT_FIELDS = frozenset({"bytes_up", "bytes_down", "attempts"})
_FLOAT_FIELDS = frozenset({"opened_at", "closed_at"})
_FIELDS: dict[str, tuple[str, ...]] = {
    KIND_GATEWAY: tuple(f.name for f in fields(UsageEvent)),
    KIND_AGENT: tuple(f.name for f in fields(AgentReport)),
}


def encode(event: UsageEvent | AgentReport) -> dict[str, str]:
    """The stream entry fields of ``event``: ``kind`` plus every field as text (``None`` as ``""``)."""
    kind = KIND_GATEWAY if isinstance(event, UsageEvent) else KIND_AGENT
    out = {"kind": kind}
    for name in _FIELDS[kind]:
        value = getattr(event, name)
        if value is None:
            out[name] = ""
        elif name in _FLOAT_FIELDS:
            out[name] = repr(float(value))
        else:
            out[name] = str(value)
    return out


def _event_id_of(text: Mapping[str, str]) -> str | None:
    event_id = text.get("event_id")
    return event_id if event_id is not None and _EVENT_ID.fullmatch(event_id) else None


def _convert(name: str, value: str, event_id: str | None) -> object:
    if name in _INT_FIELDS:
        if not _INT.fullmatch(value):
            raise MalformedEvent(f"{name} is not a non-negative integer", event_id)
        return int(value)
    if name in _FLOAT_FIELDS:
        if not _FLOAT.fullmatch(value):
            raise MalformedEvent(f"{name} is not a unix time", event_id)
        return float(value)
    if name == "deal_id" and value == "":
        return None
    return value


def decode(entry: Mapping[bytes, bytes]) -> UsageEvent | AgentReport:
    """The event a stream entry holds; raises ``MalformedEvent`` for anything ``encode`` would not make.

    Missing, unknown or non-UTF-8 fields, values of the wrong shape, negative byte counts,
    ``closed_at < opened_at`` and a bad ``event_id`` are all refused.
    """
    try:
        text = {key.decode("utf-8"): value.decode("utf-8") for key, value in entry.items()}
    except (UnicodeDecodeError, AttributeError):
        raise MalformedEvent("fields are not UTF-8 bytes") from None
    event_id = _event_id_of(text)
    kind = text.pop("kind", None)
    if kind not in _FIELDS:
        raise MalformedEvent("kind must be gateway or agent", event_id)
    names = _FIELDS[kind]
    if set(text) != set(names):
        missing = sorted(set(names) - set(text))
        unknown = len(set(text) - set(names))
        raise MalformedEvent(f"missing fields {missing}, {unknown} unknown field(s)", event_id)
    values = {name: _convert(name, text[name], event_id) for name in names}
    if kind == KIND_GATEWAY:
        return UsageEvent(**values)  # type: ignore[arg-type]
    return AgentReport(**values)  # type: ignore[arg-type]


def encode_batch(items: Sequence[UsageEvent | AgentReport]) -> dict[str, str]:
    """One stream entry holding ``items``: ``kind`` = batch, ``items`` = a JSON array of rows.

    Each row is ``[kind, field values in declaration order…]``.
    """
    rows = []
    for item in items:
        kind = KIND_GATEWAY if isinstance(item, UsageEvent) else KIND_AGENT
        rows.append([kind, *(getattr(item, name) for name in _FIELDS[kind])])
    return {"kind": KIND_BATCH, "items": orjson.dumps(rows).decode()}


def _decode_row(row: object) -> UsageEvent | AgentReport:
    if not isinstance(row, list) or not row or row[0] not in _FIELDS:
        raise MalformedEvent("a batch row must be [kind, fields...]")
    names = _FIELDS[row[0]]
    if len(row) != len(names) + 1:
        raise MalformedEvent(f"a {row[0]} row needs {len(names)} fields")
    values = dict(zip(names, row[1:], strict=True))
    for name in _FLOAT_FIELDS:
        if isinstance(values[name], int) and not isinstance(values[name], bool):
            values[name] = float(values[name])
    if row[0] == KIND_GATEWAY:
        return UsageEvent(**values)
    return AgentReport(**values)


def decode_entry(
    entry: Mapping[bytes, bytes],
) -> tuple[list[UsageEvent | AgentReport], list[tuple[str, str]]]:
    """The items of a stream entry, and the malformed rows of a batch as (row JSON, reason).

    Raises ``MalformedEvent`` when the entry as a whole is malformed (a single-item entry that
    ``decode`` refuses, or a batch that is not a JSON array).
    """
    if entry.get(b"kind") != KIND_BATCH.encode():
        return [decode(entry)], []
    if set(entry) != {b"kind", b"items"}:
        raise MalformedEvent("a batch entry has exactly the fields kind and items")
    try:
        rows = orjson.loads(entry[b"items"])
    except orjson.JSONDecodeError:
        raise MalformedEvent("batch items are not JSON") from None
    if not isinstance(rows, list):
        raise MalformedEvent("batch items must be a JSON array")
    items: list[UsageEvent | AgentReport] = []
    bad: list[tuple[str, str]] = []
    for row in rows:
        try:
            items.append(_decode_row(row))
        except (MalformedEvent, TypeError) as exc:
            reason = exc.reason if isinstance(exc, MalformedEvent) else "fields of the wrong type"
            bad.append((orjson.dumps(row).decode()[:4096], reason))
    return items, bad


class UsagePublisher:
    """Buffers usage items on the hot path and ships them to Redis in the background.

    :meth:`publish` only appends to a buffer. A flusher task started by :meth:`start` sends the
    buffer as batch entries (one XADD per ``max_batch`` items) every ``flush_interval`` seconds,
    or as soon as ``max_batch`` items wait. Items leave the buffer only once Redis accepted them; on a Redis
    error they stay and the flusher retries with exponential backoff, so nothing is lost while the
    process lives (the buffer is unbounded during an outage). A failure in the middle of a
    pipeline can send some items twice; ingestion is idempotent by ``event_id``.

    An item may carry an ``on_sent`` callback, called once Redis has accepted it: the gateway
    confirms an agent's usage report to the agent only then.
    """

    backoff_initial = 0.1
    backoff_max = 5.0

    def __init__(
        self,
        redis: Redis,
        *,
        stream: str = USAGE_STREAM,
        flush_interval: float = 0.05,
        max_batch: int = 512,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._redis = redis
        self._stream = stream
        self._flush_interval = flush_interval
        self._max_batch = max_batch
        self._buffer: deque[tuple[UsageEvent | AgentReport, Callable[[], None] | None]] = deque()
        self._wakeup = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failing = False

    @property
    def pending(self) -> int:
        """Items published but not yet accepted by Redis."""
        return len(self._buffer)

    def publish(self, item: UsageEvent | AgentReport, on_sent: Callable[[], None] | None = None) -> None:
        """Queue ``item`` for sending; never blocks, never touches the network.

        ``on_sent`` is called once Redis has accepted the item. Items published after
        :meth:`close` stay queued until an explicit :meth:`flush`.
        """
        if not isinstance(item, UsageEvent | AgentReport):
            raise TypeError("publish takes a UsageEvent or an AgentReport")
        self._buffer.append((item, on_sent))
        # While failing, only close() may cut the backoff short.
        if len(self._buffer) >= self._max_batch and not self._failing:
            self._wakeup.set()

    async def start(self) -> None:
        """Start the background flusher (once)."""
        if self._task is None and not self._closing:
            self._task = asyncio.create_task(self._run(), name="ipsx-usage-publisher")

    async def flush(self) -> int:
        """Send every buffered item now; return how many were sent.

        Raises the Redis error (``RedisError`` or ``OSError``) when Redis refuses; the unsent
        items stay buffered.
        """
        sent = 0
        async with self._flush_lock:
            while self._buffer:
                count = min(len(self._buffer), self._max_batch)
                batch = [self._buffer[index][0] for index in range(count)]
                await self._redis.xadd(self._stream, encode_batch(batch))  # type: ignore[arg-type]
                for _ in range(count):
                    _, on_sent = self._buffer.popleft()
                    if on_sent is not None:
                        on_sent()
                sent += count
        return sent

    async def close(self) -> None:
        """Stop the flusher and send what is left; raises like :meth:`flush` if Redis refuses."""
        self._closing = True
        self._wakeup.set()
        task, self._task = self._task, None
        if task is not None:
            await task
        await self.flush()

    async def _run(self) -> None:
        delay = self._flush_interval
        failures = 0
        while True:
            try:
                async with asyncio.timeout(delay):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            self._wakeup.clear()
            if self._closing:
                return
            try:
                await self.flush()
            except (RedisError, OSError) as exc:
                failures += 1
                self._failing = True
                delay = min(self.backoff_max, self.backoff_initial * 2 ** (failures - 1))
                log.warning(
                    "usage publish to %s failed (%s: %s); %d item(s) kept, retry %d in %.1fs",
                    self._stream,
                    type(exc).__name__,
                    exc,
                    len(self._buffer),
                    failures,
                    delay,
                )
            else:
                if failures:
                    log.info("usage publish to %s recovered after %d failure(s)", self._stream, failures)
                failures = 0
                self._failing = False
                delay = self._flush_interval

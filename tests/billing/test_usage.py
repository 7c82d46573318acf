"""Usage events: the wire encoding, its strict decoder, and the publisher against a real Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from billing.errors import MalformedEvent
from billing.keys import USAGE_STREAM
from billing.usage import (
    TIME_MAX,
    AgentReport,
    UsageEvent,
    UsagePublisher,
    decode,
    decode_entry,
    encode,
    encode_batch,
)
from tests.billing.conftest import REDIS_URL, make_event, make_report


def as_entry(fields: dict[str, str]) -> dict[bytes, bytes]:
    return {key.encode(): value.encode() for key, value in fields.items()}


def test_encode_call() -> None:
    event = make_event(deal_id=None)
    fields = encode(event)
    assert fields["kind"] == "gateway"
    assert fields["deal_id"] == ""
    assert fields["bytes_down"] == "56789"
    assert all(isinstance(value, str) for value in fields.values())
    assert encode(make_report())["kind"] == "agent"


@pytest.mark.parametrize(
    "item",
    [
        make_event(),
        make_event(deal_id=None, protocol="socks5", attempts=0, bytes_up=0, bytes_down=2**63 - 1),
        make_event(opened_at=0.1, closed_at=0.1),
        make_event(opened_at=1_764_000_000.123456789, closed_at=TIME_MAX),
        make_event(opened_at=5, closed_at=6),
        make_report(),
        make_report(bytes_up=0, bytes_down=0, outcome="reset"),
    ],
)
def test_decode_round_trips(item: UsageEvent | AgentReport) -> None:
    assert decode(as_entry(encode(item))) == item


def _mutated(**changes: str | None) -> dict[bytes, bytes]:
    fields: dict[str, str] = encode(make_event(event_id="ab" * 16))
    for key, value in changes.items():
        if value is None:
            del fields[key]
        else:
            fields[key] = value
    return as_entry(fields)


@pytest.mark.parametrize(
    ("entry", "event_id"),
    [
        (_mutated(kind=None), "ab" * 16),
        (_mutated(kind="other"), "ab" * 16),
        (_mutated(bytes_up=None), "ab" * 16),
        (_mutated(extra="1"), "ab" * 16),
        (_mutated(bytes_up="-1"), "ab" * 16),
        (_mutated(bytes_down="1.5"), "ab" * 16),
        (_mutated(bytes_down="+1"), "ab" * 16),
        (_mutated(bytes_down=" 1"), "ab" * 16),
        (_mutated(bytes_down="1_0"), "ab" * 16),
        (_mutated(bytes_down="\u0661"), "ab" * 16),
        (_mutated(bytes_down="9" * 19), "ab" * 16),  # beyond BIGINT
        (_mutated(bytes_down="9" * 100), "ab" * 16),
        (_mutated(attempts="-1"), "ab" * 16),
        (_mutated(attempts=str(2**31)), "ab" * 16),
        (_mutated(opened_at="nan"), "ab" * 16),
        (_mutated(opened_at="inf"), "ab" * 16),
        (_mutated(opened_at="-1.0"), "ab" * 16),
        (_mutated(opened_at="1e400"), "ab" * 16),
        (_mutated(opened_at=""), "ab" * 16),
        (_mutated(opened_at="10.0", closed_at="9.0"), "ab" * 16),
        (_mutated(protocol="ftp"), "ab" * 16),
        (_mutated(requester=""), "ab" * 16),
        (_mutated(target="x" * 513), "ab" * 16),
        (_mutated(event_id="AB" * 16), None),
        (_mutated(event_id="ab" * 15), None),
        (_mutated(event_id=""), None),
        (_mutated(event_id=None), None),
        ({b"kind": b"gateway", b"event_id": b"\xff\xfe"}, None),
        ({}, None),
    ],
)
def test_decode_refuses(entry: dict[bytes, bytes], event_id: str | None) -> None:
    with pytest.raises(MalformedEvent) as info:
        decode(entry)
    assert info.value.event_id == event_id
    assert isinstance(info.value, ValueError)


def test_decode_refuses_agent_fields_on_gateway_kind() -> None:
    fields = encode(make_report())
    fields["kind"] = "gateway"
    with pytest.raises(MalformedEvent, match="missing fields"):
        decode(as_entry(fields))


@pytest.mark.parametrize(
    "changes",
    [
        {"event_id": "not-hex"},
        {"event_id": 12},
        {"bytes_up": -1},
        {"bytes_down": 2**63},
        {"bytes_down": True},
        {"bytes_down": 1.0},
        {"opened_at": 10.0, "closed_at": 9.0},
        {"opened_at": float("nan")},
        {"closed_at": float("inf")},
        {"closed_at": 1e13},  # finite, but beyond what PostgreSQL and datetime hold
        {"opened_at": 1e13, "closed_at": 1e13},
        {"closed_at": TIME_MAX + 1},
        {"protocol": "HTTP"},
        {"deal_id": ""},
        {"attempts": -1},
        {"requester": ""},
        {"requester": None},
        {"target": "example.com\x00:443"},
    ],
)
def test_usage_event_refuses_bad_fields(changes: dict[str, Any]) -> None:
    with pytest.raises(MalformedEvent):
        make_event(**changes)


def test_agent_report_refuses_bad_fields() -> None:
    with pytest.raises(MalformedEvent):
        make_report(bytes_up=-5)
    with pytest.raises(MalformedEvent):
        make_report(opened_at=2.0, closed_at=1.0)
    with pytest.raises(MalformedEvent) as info:
        make_report(opened_at=1e13, closed_at=1e13)
    assert "unix time" in info.value.reason


async def stream_items(redis: Redis, stream: str = USAGE_STREAM) -> list[UsageEvent | AgentReport]:
    entries: Any = await redis.xrange(stream)
    return [item for _, fields in entries for item in decode_entry(fields)[0]]


async def wait_until(predicate: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_publisher_flush_call(redis: Redis) -> None:
    publisher = UsagePublisher(redis)
    items: list[UsageEvent | AgentReport] = [make_event(), make_report(), make_event(deal_id=None)]
    for item in items:
        publisher.publish(item)
    assert publisher.pending == 3
    assert await redis.xlen(USAGE_STREAM) == 0  # publish alone never touches Redis
    assert await publisher.flush() == 3
    assert publisher.pending == 0
    assert await publisher.flush() == 0
    assert await stream_items(redis) == items


async def test_publisher_flushes_on_close(redis: Redis) -> None:
    publisher = UsagePublisher(redis, flush_interval=60.0)
    await publisher.start()
    items = [make_event() for _ in range(1000)]
    for item in items:
        publisher.publish(item)
    await publisher.close()
    assert publisher.pending == 0
    assert await stream_items(redis) == items


async def test_publisher_flushes_on_interval(redis: Redis) -> None:
    publisher = UsagePublisher(redis, flush_interval=0.02)
    await publisher.start()
    try:
        item = make_event()
        publisher.publish(item)

        async def arrived() -> bool:
            return await redis.xlen(USAGE_STREAM) == 1

        await wait_until(arrived, within=2.0)
        assert await stream_items(redis) == [item]
    finally:
        await publisher.close()


async def test_publisher_flushes_when_batch_is_full(redis: Redis) -> None:
    publisher = UsagePublisher(redis, flush_interval=60.0, max_batch=5)
    await publisher.start()
    try:
        for _ in range(5):
            publisher.publish(make_event())

        async def arrived() -> bool:
            return len(await stream_items(redis)) == 5

        await wait_until(arrived, within=2.0)
        assert await redis.xlen(USAGE_STREAM) == 1  # one batch entry, not one entry per item
    finally:
        await publisher.close()


async def test_publisher_refuses_other_types(redis: Redis) -> None:
    publisher = UsagePublisher(redis)
    with pytest.raises(TypeError):
        publisher.publish(encode(make_event()))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_batch"):
        UsagePublisher(redis, max_batch=0)


class Switch:
    """A TCP forwarder to Redis that can be cut: while down it drops every connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.up = False
        self.listen_port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            await writer.wait_closed()
            return
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self._writers.update((writer, up_writer))
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def down(self) -> None:
        self.up = False
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def close(self) -> None:
        await self.down()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def switch() -> AsyncIterator[Switch]:
    target = Redis.from_url(REDIS_URL).connection_pool.connection_kwargs
    switch = Switch(str(target.get("host", "127.0.0.1")), int(target.get("port", 6379)))
    await switch.start()
    yield switch
    await switch.close()


async def test_publisher_survives_a_redis_outage(
    redis: Redis, switch: Switch, caplog: pytest.LogCaptureFixture
) -> None:
    db = int(redis.connection_pool.connection_kwargs.get("db", 0))
    flaky = Redis(
        host="127.0.0.1",
        port=switch.listen_port,
        db=db,
        socket_timeout=1,
        socket_connect_timeout=1,
        retry=Retry(NoBackoff(), 0),
    )
    publisher = UsagePublisher(flaky, flush_interval=0.01)
    publisher.backoff_initial = 0.02
    publisher.backoff_max = 0.1
    caplog.set_level(logging.WARNING, logger="billing.usage")
    await publisher.start()
    try:
        # Redis unreachable from the start: items wait in the buffer.
        first = [make_event() for _ in range(3)]
        for item in first:
            publisher.publish(item)

        async def failed() -> bool:
            return any("kept" in record.getMessage() for record in caplog.records)

        await wait_until(failed)
        assert publisher.pending == 3
        assert await redis.xlen(USAGE_STREAM) == 0

        # Redis back: everything arrives.
        switch.up = True

        async def drained() -> bool:
            return publisher.pending == 0

        await wait_until(drained)
        assert await stream_items(redis) == first

        # An established connection breaks: nothing is lost either.
        caplog.clear()
        await switch.down()
        second = [make_report() for _ in range(2)]
        for report in second:
            publisher.publish(report)
        await wait_until(failed)
        assert publisher.pending == 2
        switch.up = True
        await wait_until(drained)
    finally:
        await publisher.close()
        await flaky.aclose()
    items = await stream_items(redis)
    expected = {event.event_id for event in first} | {report.event_id for report in second}
    assert {item.event_id for item in items} == expected
    assert all(record.levelno == logging.WARNING for record in caplog.records)


async def test_publisher_close_raises_while_redis_is_down(switch: Switch) -> None:
    flaky = Redis(
        host="127.0.0.1", port=switch.listen_port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    publisher = UsagePublisher(flaky)
    try:
        publisher.publish(make_event())
        with pytest.raises(RedisConnectionError):
            await publisher.close()
        assert publisher.pending == 1
    finally:
        await flaky.aclose()


def test_replace_revalidates() -> None:
    with pytest.raises(MalformedEvent):
        replace(make_event(), bytes_up=-1)


def test_decode_entry_round_trips_a_batch() -> None:
    items: list[UsageEvent | AgentReport] = [make_event(), make_report(), make_event(deal_id=None)]
    assert decode_entry(as_entry(encode_batch(items))) == (items, [])


def test_decode_entry_reads_single_item_entries() -> None:
    report = make_report()
    assert decode_entry(as_entry(encode(report))) == ([report], [])


def test_decode_entry_keeps_good_rows_and_reports_bad_ones() -> None:
    good = make_event()
    entry = as_entry(encode_batch([good]))
    rows = json.loads(entry[b"items"])
    bad_negative = [*rows[0][:9], -1, *rows[0][10:]]  # bytes_up < 0
    entry[b"items"] = json.dumps([rows[0], bad_negative, ["nonsense"], "x"]).encode()
    items, bad = decode_entry(entry)
    assert items == [good]
    assert len(bad) == 3
    assert "bytes_up" in bad[0][1]


@pytest.mark.parametrize(
    "entry",
    [
        {b"kind": b"batch", b"items": b"not json"},
        {b"kind": b"batch", b"items": b"{}"},
        {b"kind": b"batch"},
        {b"kind": b"batch", b"items": b"[]", b"extra": b"1"},
    ],
)
def test_decode_entry_refuses_malformed_batches(entry: dict[bytes, bytes]) -> None:
    with pytest.raises(MalformedEvent):
        decode_entry(entry)

"""Functional tests of per-domain exit bans against a real Redis."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from pool import keys
from pool.bans import MAX_BAN_TTL, BanBook, domain_of, lookup_domains


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def server_now(redis: Redis) -> float:
    """The Redis server's clock, which bans go by (unix seconds)."""
    seconds, microseconds = await redis.time()
    return seconds + microseconds / 1e6


async def until_server_passes(redis: Redis, moment: float) -> None:
    """Sleep until the Redis server's clock is just past ``moment``."""
    await asyncio.sleep(max(0.0, moment - await server_now(redis)) + 0.05)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("Example.COM.", "example.com"),
        ("www.example.com", "example.com"),
        ("www.com", "www.com"),  # a bare "www" domain keeps its name
        ("shop.example.com", "shop.example.com"),
        ("127.0.0.1", "127.0.0.1"),
    ],
)
def test_domain_of(host: str, expected: str) -> None:
    assert domain_of(host) == expected


def test_lookup_domains_walks_up_to_two_labels() -> None:
    assert lookup_domains("a.shop.example.com") == ["a.shop.example.com", "shop.example.com", "example.com"]
    assert lookup_domains("www.example.com") == ["example.com"]
    assert lookup_domains("localhost") == ["localhost"]
    assert lookup_domains("10.1.2.3") == ["10.1.2.3"]
    assert lookup_domains("[::1]") == ["[::1]"]
    deep = "a.b.c.d.e.f.g.h.example.com"
    assert lookup_domains(deep) == [
        deep,
        "e.f.g.h.example.com",
        "f.g.h.example.com",
        "g.h.example.com",
        "h.example.com",
        "example.com",
    ]


async def test_ban_keeps_the_exit_away_from_the_domain_and_its_subdomains(redis: Redis) -> None:
    book = BanBook(redis, cache_ttl=0)
    await book.ban("alice", "example.com", "e1", ttl=60)
    assert await book.banned("alice", "example.com") == {"e1"}
    assert await book.banned("alice", "shop.example.com") == {"e1"}
    assert await book.banned("alice", "www.example.com") == {"e1"}
    assert await book.banned("alice", "example.org") == frozenset()
    assert await book.banned("bob", "example.com") == frozenset()  # bans are per requester


async def test_a_ban_on_a_long_host_name_holds_for_that_host(redis: Redis) -> None:
    book = BanBook(redis, cache_ttl=0)
    host = "cdn1.img.eu.west.static.assets.example.com"
    await book.ban("alice", host, "e1", ttl=60)
    assert await book.banned("alice", host) == {"e1"}
    assert await book.banned("alice", "example.com") == frozenset()


async def test_a_subdomain_ban_does_not_reach_the_parent(redis: Redis) -> None:
    book = BanBook(redis, cache_ttl=0)
    await book.ban("alice", "shop.example.com", "e1", ttl=60)
    assert await book.banned("alice", "example.com") == frozenset()
    assert await book.banned("alice", "a.shop.example.com") == {"e1"}


async def test_bans_end_after_their_ttl_and_the_key_expires(redis: Redis) -> None:
    book = BanBook(redis, cache_ttl=0)
    before = await server_now(redis)
    ends = await book.ban("alice", "example.com", "e1", ttl=1)
    assert before + 1 <= ends <= await server_now(redis) + 2  # a whole second after the server's now
    assert await book.banned("alice", "example.com") == {"e1"}
    assert await redis.ttl(keys.bans("alice", "example.com")) > 0
    await until_server_passes(redis, ends)
    assert await book.banned("alice", "example.com") == frozenset()
    assert await book.listed("alice", "example.com") == {}
    assert await redis.exists(keys.bans("alice", "example.com")) == 0  # Redis dropped the set by itself


async def test_a_shorter_ban_never_shortens_a_longer_one(redis: Redis) -> None:
    book = BanBook(redis, cache_ttl=0)
    long_ban = await book.ban("alice", "example.com", "e1", ttl=600)
    assert await book.ban("alice", "example.com", "e1", ttl=10) == long_ban
    short_ban = await book.ban("alice", "example.com", "e2", ttl=10)
    assert long_ban - short_ban in (589, 590)  # ends rounded up to whole seconds
    assert await book.listed("alice", "example.com") == {"e1": long_ban, "e2": short_ban}


async def test_ended_bans_are_swept_when_a_new_one_is_recorded(redis: Redis) -> None:
    book = BanBook(redis, cache_ttl=0)
    ends = await book.ban("alice", "example.com", "old", ttl=1)
    await until_server_passes(redis, ends)
    await book.ban("alice", "example.com", "new", ttl=5)
    assert await redis.zrange(keys.bans("alice", "example.com"), 0, -1) == [b"new"]


@pytest.mark.parametrize(("writer", "reader"), [(-30, 0), (0, 30)], ids=["writer-behind", "reader-ahead"])
async def test_a_ban_holds_for_its_ttl_whatever_the_hosts_clocks_say(
    redis: Redis, writer: float, reader: float
) -> None:
    # A 10 s ban recorded by a host whose clock runs 30 s behind, or read by one 30 s ahead.
    recording = BanBook(redis, cache_ttl=0, clock=lambda: time.time() + writer)
    before = await server_now(redis)
    ends = await recording.ban("alice", "example.com", "e1", ttl=10)
    assert before + 10 <= ends <= await server_now(redis) + 11  # the server's now, plus the TTL
    reading = BanBook(redis, cache_ttl=0, clock=lambda: time.time() + reader)
    assert await reading.banned("alice", "shop.example.com") == {"e1"}
    assert await reading.listed("alice", "example.com") == {"e1": ends}


async def test_lift_ends_a_ban_early(redis: Redis) -> None:
    book = BanBook(redis, cache_ttl=60)
    await book.ban("alice", "example.com", "e1", ttl=60)
    assert await book.banned("alice", "example.com") == {"e1"}
    assert await book.lift("alice", "example.com", "e1") is True
    assert await book.lift("alice", "example.com", "e1") is False
    assert await book.banned("alice", "example.com") == frozenset()  # its own cache was dropped


async def test_other_nodes_see_a_ban_once_their_cache_ends(redis: Redis) -> None:
    clock = Clock()
    here = BanBook(redis, cache_ttl=1.0, clock=clock)
    there = BanBook(redis, cache_ttl=1.0, clock=clock)
    assert await there.banned("alice", "example.com") == frozenset()  # cached for a second
    await here.ban("alice", "example.com", "e1", ttl=60)
    assert await here.banned("alice", "example.com") == {"e1"}  # the recording node at once
    assert await there.banned("alice", "example.com") == frozenset()
    clock.now += 1.5
    assert await there.banned("alice", "example.com") == {"e1"}


@pytest.mark.parametrize("ttl", [0, -1, MAX_BAN_TTL + 1])
async def test_ban_ttl_out_of_range_is_refused(redis: Redis, ttl: int) -> None:
    with pytest.raises(ValueError, match="from 1 to"):
        await BanBook(redis).ban("alice", "example.com", "e1", ttl=ttl)
    assert await redis.exists(keys.bans("alice", "example.com")) == 0


async def test_session_exit_reads_the_binding(redis: Redis) -> None:
    book = BanBook(redis)
    assert await book.session_exit("alice", "s1") is None
    await redis.set(keys.session("alice", "s1"), "e7")
    assert await book.session_exit("alice", "s1") == "e7"

"""What the gateway learns from the market, through Redis: which exits a requester's active deals
cover (and under which deal), and spot deals asked for traffic that came without an order.

The market writes ``ipsx:market:routes:{<requester>}`` (a hash exit id → deal id, and ``@<deal id>``
→ the deal's traffic allowance in bytes for a deal that has one) as deals become active and end. A
gateway node reads it per requester (cached for ``cache_ttl``) and routes the requester's streams
only through those exits. A requester with no active deal gets spot deals: the
gateway pushes a request on ``ipsx:market:spot`` and waits for the market's short answer.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from billing.keys import PAYMENT_CUTOFF
from matching.errors import InvalidOrder
from matching.orders import RequestFilters
from matching.terms import filters_from

SPOT_QUEUE = "ipsx:market:spot"
_REPLY_TTL = 30  # seconds an unread spot answer is kept


def routes_key(requester: str) -> str:
    return f"ipsx:market:routes:{{{requester}}}"


def _reply_key(token: str) -> str:
    return f"ipsx:market:spot:reply:{token}"


# -- the market's side ------------------------------------------------------------------------


_ALLOWANCE = "@"  # a routes hash field "@<deal id>" holds that deal's traffic allowance (exit ids are hex)


def _fields(exit_id: str, deal_id: str, allowance: int) -> dict[str, str]:
    fields = {exit_id: deal_id}
    if allowance > 0:
        fields[_ALLOWANCE + deal_id] = str(allowance)
    return fields


async def publish(redis: Redis, requester: str, exit_id: str, deal_id: str, allowance: int = 0) -> None:
    """Route the requester's traffic through ``exit_id`` under ``deal_id``; an ``allowance`` > 0
    is the bytes the deal may carry, which the gateways hold its streams to."""
    mapping: Any = _fields(exit_id, deal_id, allowance)
    await redis.hset(routes_key(requester), mapping=mapping)


# KEYS[1] a requester's routes; ARGV exit id, ending deal id and, if any, the deal that takes over.
_WITHDRAW_LUA = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  if ARGV[3] then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  else
    redis.call('HDEL', KEYS[1], ARGV[1])
  end
end
redis.call('HDEL', KEYS[1], '@' .. ARGV[2])
"""


async def withdraw(
    redis: Redis, requester: str, exit_id: str, deal_id: str, successor: str | None = None
) -> None:
    """Stop routing the requester's traffic through ``exit_id`` under ``deal_id``, atomically.

    The exit stays routed if it names another of the requester's deals (several may share it);
    if it names this one, ``successor`` (an active deal of the requester on the same exit, already
    published) takes over, or with none the exit is unrouted.
    """
    script = redis.register_script(_WITHDRAW_LUA)
    await script(keys=[routes_key(requester)], args=[exit_id, deal_id, *([successor] if successor else [])])


async def publish_all(redis: Redis, routes: Mapping[str, Mapping[str, str | tuple[str, int]]]) -> None:
    """Replace every requester's routes with ``routes`` (at market start-up): requester → exit id →
    deal id, or (deal id, traffic allowance)."""
    stale = [key async for key in redis.scan_iter(match="ipsx:market:routes:*", count=500)]
    async with redis.pipeline(transaction=False) as pipe:
        for key in stale:
            pipe.delete(key)
        for requester, exits in routes.items():
            mapping: Any = {}  # redis-py's Mapping key type is invariant
            for exit_id, deal in exits.items():
                deal_id, allowance = (deal, 0) if isinstance(deal, str) else deal
                mapping.update(_fields(exit_id, deal_id, allowance))
            if mapping:
                pipe.hset(routes_key(requester), mapping=mapping)
        await pipe.execute()


@dataclass(frozen=True, slots=True)
class SpotRequest:
    requester: str
    filters: RequestFilters
    reply_to: str
    key_id: str | None = None  # the API key the traffic came with (its spend limit applies)
    max_price_per_gb: int | None = None  # the connection's maxprice, in base units


async def next_spot_request(redis: Redis, *, wait: float) -> SpotRequest | None:
    """The next well-formed spot request, or None after ``wait`` seconds (or for a bad one)."""
    popped: Any = await redis.brpop([SPOT_QUEUE], timeout=wait)
    if popped is None:
        return None
    try:
        body = orjson.loads(popped[1])
        filters = filters_from(body["filters"])
        key_id, price = body.get("key_id"), body.get("max_price_per_gb")
        return SpotRequest(
            str(body["requester"]),
            filters,
            str(body["reply_to"]),
            None if key_id is None else str(key_id),
            price if isinstance(price, int) and not isinstance(price, bool) and 0 < price < 10**78 else None,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, InvalidOrder):
        return None


async def answer_spot(redis: Redis, reply_to: str, answer: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.lpush(_reply_key(reply_to), answer)
        pipe.expire(_reply_key(reply_to), _REPLY_TTL)
        await pipe.execute()


# -- the gateway's side -----------------------------------------------------------------------


class DealRoutes:
    """A gateway node's view of the market: the routes of a requester, and spot requests."""

    def __init__(self, redis: Redis, *, cache_ttl: float = 1.0, spot_timeout: float = 3.0) -> None:
        self._redis = redis
        self._cache_ttl = cache_ttl
        self._spot_timeout = spot_timeout
        self._cache: dict[str, tuple[float, dict[str, str], dict[str, int], bool]] = {}
        self._asking: dict[tuple[str, RequestFilters, str | None, int | None], asyncio.Future[str]] = {}

    async def routes(self, requester: str) -> dict[str, str]:
        """Exit id → deal id of the requester's active deals (possibly ``cache_ttl`` old)."""
        now = time.monotonic()
        cached = self._cache.get(requester)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(routes_key(requester))
            pipe.hexists(PAYMENT_CUTOFF, requester)
            raw, cut_off = await pipe.execute()
        found: dict[str, str] = {}
        allowances: dict[str, int] = {}
        for key, value in raw.items():
            name, text = _text(key), _text(value)
            if not name.startswith(_ALLOWANCE):
                found[name] = text
            elif text.isdigit():
                allowances[name[1:]] = int(text)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[requester] = (now + self._cache_ttl, found, allowances, bool(cut_off))
        return found

    def cut_off(self, requester: str) -> bool:
        """Whether the requester owes more unpaid usage than the limit allows, as last read by
        :meth:`routes` (the invoicer keeps the list: ``billing.payments``)."""
        cached = self._cache.get(requester)
        return cached is not None and cached[3]

    def allowance(self, requester: str, deal_id: str) -> int:
        """The traffic allowance of one of the requester's deals, as last read by :meth:`routes`
        (0: none, or not known)."""
        cached = self._cache.get(requester)
        return 0 if cached is None else cached[2].get(deal_id, 0)

    def forget(self, requester: str) -> None:
        self._cache.pop(requester, None)

    async def ask_spot(
        self,
        requester: str,
        filters: RequestFilters,
        key_id: str | None = None,
        max_price_per_gb: int | None = None,
    ) -> str:
        """Ask the market for spot deals: ``ok``; why it opened none, funds aside
        (:class:`~matching.engine.Unmatched`: ``no_offer`` for the filters at any price,
        ``above_price``, ``offers_busy``); ``insufficient_funds``; or ``unavailable`` (no answer in
        time). Concurrent asks for the same terms share one."""
        key = (requester, filters, key_id, max_price_per_gb)
        pending = self._asking.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._asking[key] = future
        try:
            answer = await self._ask(requester, filters, key_id, max_price_per_gb)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: the waiters re-raise it, and asyncio need not warn
            raise
        else:
            future.set_result(answer)
            return answer
        finally:
            del self._asking[key]

    async def _ask(
        self, requester: str, filters: RequestFilters, key_id: str | None, max_price_per_gb: int | None
    ) -> str:
        token = secrets.token_hex(12)
        body = {
            "requester": requester,
            "filters": {
                "country": filters.country,
                "region": filters.region,
                "city": filters.city,
                "asn": filters.asn,
                "type": filters.type,
                "protocol": filters.protocol,
            },
            "reply_to": token,
            "key_id": key_id,
            "max_price_per_gb": max_price_per_gb,
        }
        await self._redis.lpush(SPOT_QUEUE, orjson.dumps(body))
        answer: Any = await self._redis.brpop([_reply_key(token)], timeout=self._spot_timeout)
        self.forget(requester)
        if answer is None:
            return "unavailable"
        return _text(answer[1])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

"""Stream tickets: what a gateway node tells the agent about a stream, signed for every node.

Each ``dial`` carries the stream's billing facts (requester, deal, exit, opening node, …) and
a MAC under a key all gateway nodes share. The agent keeps the ticket until a node confirms its
usage report reached Redis. If the opening node dies first — SIGKILL, power loss — with the
stream in flight or its usage still in memory, the agent hands the report with the ticket to
another node, which can check that a gateway really opened that stream and meter it from the
agent's counts. Nothing the agent relayed goes unmetered; the event id is the stream id, so a
report that arrives twice is stored once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from gateway.wire import WireError
from pool import keys

MAC_HEX = 32  # 128 bits of HMAC-SHA256
_MAC_RE = re.compile(rf"[0-9a-f]{{{MAC_HEX}}}")


@dataclass(frozen=True, slots=True)
class Ticket:
    """A stream's billing facts. ``node`` and ``boot`` name the node process that opened it:
    a node restarted under the same id has a new ``boot``, so its predecessor's streams are
    known to be lost."""

    stream: str
    node: str
    exit: str
    requester: str
    deal: str  # "" when the stream belongs to no deal
    protocol: str
    target: str
    attempts: int
    boot: str

    def to_wire(self) -> list[Any]:
        return [
            self.stream,
            self.node,
            self.exit,
            self.requester,
            self.deal,
            self.protocol,
            self.target,
            self.attempts,
            self.boot,
        ]

    @classmethod
    def from_wire(cls, raw: Any) -> Ticket:
        if not isinstance(raw, list) or len(raw) != 9:
            raise WireError("bad ticket")
        stream, node, exit_id, requester, deal, protocol, target, attempts, boot = raw
        texts = (stream, node, boot, exit_id, requester, deal, protocol, target)
        if not all(isinstance(text, str) and len(text) <= 300 for text in texts):
            raise WireError("bad ticket")
        if not isinstance(attempts, int) or isinstance(attempts, bool) or not 0 < attempts < 100:
            raise WireError("bad ticket")
        return cls(stream, node, exit_id, requester, deal, protocol, target, attempts, boot)


class TicketKey:
    """Signs and checks tickets with the key every gateway node shares."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("a ticket key has at least 32 bytes")
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)  # copied per MAC: no key setup per dial

    def sign(self, ticket: Ticket) -> str:
        return self.sign_wire(ticket.to_wire())

    def sign_wire(self, wire: list[Any]) -> str:
        """The MAC of a ticket already in its wire form (``Ticket.to_wire``)."""
        mac = self._keyed.copy()
        mac.update(orjson.dumps(wire))
        return mac.hexdigest()[:MAC_HEX]

    def check(self, raw: Any, mac: Any) -> Ticket:
        """The ticket ``raw`` if ``mac`` is its signature; raises WireError otherwise."""
        ticket = Ticket.from_wire(raw)
        if (
            not isinstance(mac, str)
            or not _MAC_RE.fullmatch(mac)
            or not hmac.compare_digest(mac, self.sign(ticket))
        ):
            raise WireError("ticket signature does not match")
        return ticket

    @staticmethod
    def new_boot() -> str:
        """A token that tells this node process from earlier ones under the same node id."""
        return secrets.token_hex(8)

    @classmethod
    async def shared(cls, redis: aioredis.Redis) -> TicketKey:
        """The cluster's key, made by the first node that asks (Redis is the trusted shared state)."""
        await redis.set(keys.ticket_key(), secrets.token_bytes(32), nx=True)
        key = await redis.get(keys.ticket_key())
        if not isinstance(key, bytes):
            raise RuntimeError("the ticket key vanished from Redis")
        return cls(key)

"""Every Redis key the pool uses, in one place.

Exit data shares the ``{pool}`` hash tag so the scripts can touch several keys atomically on a
Redis Cluster too; sticky sessions are tagged by account so they spread over the cluster.
"""

from __future__ import annotations

PREFIX = "ipsx:{pool}"


def exit_hash(exit_id: str) -> str:
    """Hash: the exit's attributes."""
    return f"{PREFIX}:exit:{exit_id}"


def exit_nodes(exit_id: str) -> str:
    """Set: the gateway nodes the exit's agent is connected to."""
    return f"{PREFIX}:exitnodes:{exit_id}"


def alive() -> str:
    """Sorted set: ``alive_member(node, exit)`` → time of the last heartbeat (Redis server's
    clock, milliseconds)."""
    return f"{PREFIX}:alive"


def alive_member(node: str, exit_id: str) -> str:
    return f"{node}|{exit_id}"


def index(attribute: str, value: str) -> str:
    """Set of exit ids whose ``attribute`` equals ``value``."""
    return f"{PREFIX}:idx:{attribute}:{value}"


def node_exits(node: str) -> str:
    """Set of exit ids reachable through gateway node ``node``."""
    return f"{PREFIX}:node:{node}"


def session(account: str, session_id: str) -> str:
    """String: the exit a sticky session is bound to, expiring with the session's TTL."""
    return f"ipsx:sess:{{{account}}}:{session_id}"


def gateway_nodes() -> str:
    """Sorted set: live gateway node ids → time of their last announcement (Redis server's clock,
    milliseconds)."""
    return f"{PREFIX}:gwnodes"


def gateway_node(node: str) -> str:
    """Hash: where agents reach gateway node ``node`` (its tunnel endpoint) and since when."""
    return f"{PREFIX}:gwnode:{node}"


def ticket_key() -> str:
    """String: the key gateway nodes sign stream tickets with (``gateway.tickets``)."""
    return "ipsx:gateway:ticketkey"


def bans(account: str, domain: str) -> str:
    """Sorted set: exits ``account`` banned for ``domain`` → when each ban ends (unix seconds, by
    the Redis server's clock).

    Tagged by account, so the lookups of a host and its parent domains are one script call."""
    return f"ipsx:ban:{{{account}}}:{domain}"


def exit_health(exit_id: str) -> str:
    """Hash: an exit's decayed dial and stream counters, streak and circuit breaker (``pool.health``).

    Tagged by exit rather than ``{pool}``: every gateway node writes it each second, so the
    writes spread over the cluster; the breaker scripts touch this one key only."""
    return f"ipsx:health:{{{exit_id}}}"


def exit_errors(exit_id: str) -> str:
    """List: the exit's most recent errors, newest first, as JSON (same slot as its health hash)."""
    return f"ipsx:health:{{{exit_id}}}:errors"

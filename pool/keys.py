"""Every Redis key the pool uses, in one place.

Exit data shares the ``{pool}`` hash tag so the selection script can read several index sets
atomically on a Redis Cluster too; sticky sessions are tagged by account so they spread.
"""

from __future__ import annotations

PREFIX = "ipsx:{pool}"


def exit_hash(exit_id: str) -> str:
    return f"{PREFIX}:exit:{exit_id}"


def alive() -> str:
    """Sorted set: exit id → time of its last heartbeat (milliseconds)."""
    return f"{PREFIX}:alive"


def index(attribute: str, value: str) -> str:
    """Set of exit ids whose ``attribute`` equals ``value``."""
    return f"{PREFIX}:idx:{attribute}:{value}"


def node_exits(node: str) -> str:
    """Set of exit ids reachable through gateway node ``node``."""
    return f"{PREFIX}:node:{node}"


def session(account: str, session_id: str) -> str:
    """String: the exit a sticky session is bound to, expiring with the session's TTL."""
    return f"ipsx:sess:{{{account}}}:{session_id}"

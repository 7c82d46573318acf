"""Whether an account has TLS inspection on: off unless the requester turns it on."""

from __future__ import annotations

from redis.asyncio import Redis

from gateway.inspect import keys


async def is_enabled(redis: Redis, account: str) -> bool:
    """Whether ``account`` (its name) turned inspection on."""
    return bool(await redis.exists(keys.enabled(account)))


async def set_enabled(redis: Redis, account: str, enabled: bool) -> None:
    """Turn inspection on or off for ``account``; tunnels already open keep going until they close."""
    if enabled:
        await redis.set(keys.enabled(account), "1")
    else:
        await redis.delete(keys.enabled(account))

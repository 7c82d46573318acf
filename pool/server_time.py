"""The one clock liveness is judged by: the Redis server's, read inside the scripts.

Gateway nodes, API processes and workers run on hosts whose clocks drift apart. A heartbeat
stamped with one host's clock and judged against another's makes a node whose clock is a few
seconds off drop out of (or linger in) every other host's view. So the pool's scripts that stamp
or judge a heartbeat, a node announcement, a ban or an exit's quarantine read ``TIME``
themselves, in the same script as the write or the comparison: every host then sees the same
list. Redis replicates a script by its effects (the default since Redis 5, the only way since 7),
so a script may write after reading ``TIME``. All keys of one such script share a hash tag, so on
a Redis Cluster the clock is that of the one master holding them, the same for every reader.

A decision taken in memory, with no round trip (a gateway node's circuit breakers, per stream),
goes by :class:`ServerClock`: this process's estimate of the server's clock, refreshed by a
periodic call. On a Redis Cluster a ``TIME`` read outside a script is one node's answer, so the
estimate takes the masters to keep one time among themselves (as servers of one cluster, under
one operator's NTP, do); the hosts of the gateways and the API need not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis

# Sets ``now``: the server's time in whole milliseconds since the epoch. Scripts start with it.
NOW_MS_LUA = """
local server_time = redis.call('TIME')
local now = tonumber(server_time[1]) * 1000 + math.floor(tonumber(server_time[2]) / 1000)
"""


def time_seconds(answer: Sequence[int | bytes | str]) -> float:
    """Unix seconds of a ``TIME`` answer: (seconds, microseconds), as redis-py returns it."""
    seconds, micros = answer
    return int(seconds) + int(micros) / 1_000_000


class ServerClock:
    """This process's estimate of the Redis server's clock, for decisions taken in memory.

    It keeps the offset between the local clock and the server's, measured on each server time it
    is shown (``observe``: a ``TIME`` answer, or the time a script returned) to within half that
    call's round trip, and reads :meth:`now` as the local clock plus that offset. The local clock
    (monotonic by default) then only measures the seconds since the last answer, so neither a host
    whose wall clock is minutes off nor one whose wall clock is stepped (NTP, an operator) judges
    by anything but the server's. Before the first answer (``calibrated`` False) the estimate is
    the host's ``wall`` clock.
    """

    def __init__(
        self, local: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time
    ) -> None:
        self._local = local
        self._offset = wall() - local()
        self.calibrated = False

    def now(self) -> float:
        """The server's time now, unix seconds, as estimated here."""
        return self._local() + self._offset

    def local(self) -> float:
        """The local clock (what :meth:`observe` and :meth:`to_server` take)."""
        return self._local()

    def to_server(self, local: float) -> float:
        """A reading of the local clock as the server's time (by the current offset)."""
        return local + self._offset

    def observe(self, server: float, sent: float, received: float) -> None:
        """The server said it was ``server`` (unix seconds) in answer to a call sent at local time
        ``sent`` and answered at ``received``: taken as read halfway between."""
        self._offset = server - (sent + received) / 2
        self.calibrated = True

    async def calibrate(self, redis: aioredis.Redis) -> float:
        """Read ``TIME`` (one round trip) and observe it; returns the server's time.

        Raises RedisError or OSError when Redis does not answer (the estimate stays as it was).
        """
        sent = self._local()
        server = time_seconds(await redis.time())
        self.observe(server, sent, self._local())
        return server

"""The one clock liveness is judged by: the Redis server's, read inside the scripts.

Gateway nodes, API processes and workers run on hosts whose clocks drift apart. A heartbeat
stamped with one host's clock and judged against another's makes a node whose clock is a few
seconds off drop out of (or linger in) every other host's view. So the pool's scripts that stamp
or judge a heartbeat, a node announcement or a ban read ``TIME`` themselves, in the same script
as the write or the comparison: every host then sees the same list. Redis replicates a script by
its effects (the default since Redis 5, the only way since 7), so a script may write after
reading ``TIME``. All keys of one such script share a hash tag, so on a Redis Cluster the clock
is that of the one master holding them, the same for every reader.
"""

from __future__ import annotations

# Sets ``now``: the server's time in whole milliseconds since the epoch. Scripts start with it.
NOW_MS_LUA = """
local server_time = redis.call('TIME')
local now = tonumber(server_time[1]) * 1000 + math.floor(tonumber(server_time[2]) / 1000)
"""

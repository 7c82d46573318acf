"""Opening a requester's stream through an exit: selection, dial, failover, and its usage event."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from billing.usage import UsageEvent, UsagePublisher
from gateway.conn import Conn
from gateway.targeting import Targeting
from gateway.tunnel import DialError, TunnelHub
from gateway.wire import DialErrorCode
from pool.select import Selector


class NoExit(Exception):
    """No live exit satisfies the requester's filters (never a silent fallback to others)."""


@dataclass(slots=True)
class Stream:
    """One open stream through an exit, from dial to its usage event."""

    conn: Conn
    stream_id: str
    exit_id: str
    provider: str
    requester: str
    protocol: str
    target: str
    deal_id: str | None
    attempts: int
    opened_at: float = field(default_factory=time.time)
    finished: bool = False


class ExitDialer:
    """Selects an exit for a targeting, dials through it, retries another exit when the dial fails.

    A failed dial is retried only before any byte reached the client and only for failures that
    another exit may not share (timeouts, the exit's own failure); a policy refusal, a name that
    does not resolve or a destination that refuses is answered at once.
    """

    def __init__(
        self, hub: TunnelHub, selector: Selector, publisher: UsagePublisher, *, node: str, max_attempts: int
    ) -> None:
        self._hub = hub
        self._selector = selector
        self._publisher = publisher
        self._node = node
        self._max_attempts = max_attempts

    async def open(self, targeting: Targeting, host: str, port: int, protocol: str) -> Stream:
        """Raises NoExit or the last DialError."""
        excluded: set[str] = set()
        last_error: DialError | None = None
        for attempt in range(1, self._max_attempts + 1):
            choice = await self._selector.select(
                targeting.account,
                targeting.filters,
                session=targeting.session,
                session_ttl=targeting.sessttl,
                exclude=frozenset(excluded),
            )
            if choice is None:
                break
            stream_id = os.urandom(16).hex()
            info = self._hub.exit_info(choice.exit_id)  # read before the await: the link may drop
            try:
                if info is None:
                    raise DialError(DialErrorCode.EXIT, "exit is offline", exit_id=choice.exit_id)
                conn = await self._hub.open_stream(choice.exit_id, host, port, stream_id)
            except DialError as error:
                last_error = error
                if not error.code.retryable:
                    raise
                excluded.add(choice.exit_id)
                continue
            return Stream(
                conn=conn,
                stream_id=stream_id,
                exit_id=choice.exit_id,
                provider=info.provider,
                requester=targeting.account,
                protocol=protocol,
                target=f"{host}:{port}",
                deal_id=targeting.deal,
                attempts=attempt,
            )
        if last_error is not None:
            raise last_error
        raise NoExit("no live exit matches the requested filters")

    def finish(
        self, stream: Stream, *, up: int, down: int, outcome: str, closed_at: float | None = None
    ) -> None:
        """Record the stream's usage exactly once and release the exit's load slot."""
        if stream.finished:
            return
        stream.finished = True
        self._hub.stream_closed(stream.exit_id)
        self._publisher.publish(
            UsageEvent(
                event_id=stream.stream_id,
                deal_id=stream.deal_id,
                requester=stream.requester,
                provider=stream.provider,
                exit_id=stream.exit_id,
                node=self._node,
                protocol=stream.protocol,
                target=stream.target,
                bytes_up=up,
                bytes_down=down,
                opened_at=stream.opened_at,
                closed_at=max(stream.opened_at, time.time() if closed_at is None else closed_at),
                outcome=outcome,
                attempts=stream.attempts,
            )
        )


# How dial failures are told to clients: HTTP status, X-IPSX-Error reason, SOCKS5 reply code.
DIAL_ERRORS: dict[DialErrorCode, tuple[int, str, int]] = {
    DialErrorCode.POLICY: (403, "destination_not_allowed", 2),
    DialErrorCode.DNS: (502, "dns_failed", 4),
    DialErrorCode.REFUSED: (502, "connection_refused", 5),
    DialErrorCode.UNREACHABLE: (502, "host_unreachable", 4),
    DialErrorCode.TIMEOUT: (504, "dial_timeout", 6),
    DialErrorCode.EXIT: (502, "exit_failed", 1),
}
NO_EXIT = (502, "no_exit_matches", 3)

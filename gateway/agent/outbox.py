"""The provider agent's usage-report outbox, shared by its sessions to every gateway node."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.agent.session import AgentSession

log = logging.getLogger("ipsx.agent")


class UsageReports:
    """The agent's usage reports, each kept until a gateway node confirms it is in Redis.

    A report goes to the node that opened its stream, on the session that carried it. When that
    session ends first — the node died, or the link dropped — its unconfirmed reports become
    orphans: each is handed, with the stream's signed ticket, to the opening node once it is
    reached again, or to any other node. A node that is not the opener takes it only once the
    opener has left the node registry (until then it answers ``held`` and the report waits
    ``retry`` seconds), and meters the stream from it, so no relayed byte goes unmetered.
    """

    retry = 2.0
    max_orphans = 100_000

    def __init__(self) -> None:
        self._sessions: dict[str, AgentSession] = {}  # by node: the sessions that are serving
        self._orphans: dict[str, tuple[dict[str, Any], float]] = {}  # stream → (report, not before)

    @property
    def orphans(self) -> int:
        return len(self._orphans)

    def attach(self, session: AgentSession) -> None:
        if session.node is not None:
            self._sessions[session.node] = session
            self.flush()

    def detach(self, session: AgentSession) -> None:
        if session.node is not None and self._sessions.get(session.node) is session:
            del self._sessions[session.node]
        if session.unacked:
            log.info(
                "%d usage report(s) of gateway node %s unconfirmed; they go to another node",
                len(session.unacked),
                session.node,
            )
            for stream, message in session.unacked.items():
                self._keep(stream, message, 0.0)
            session.unacked.clear()
            self.flush()

    def submit(self, session: AgentSession, message: dict[str, Any]) -> None:
        if session.node is not None and self._sessions.get(session.node) is session:
            session.send_report(message)
        else:
            self._keep(message["stream"], message, 0.0)
            self.flush()

    def acked(self, session: AgentSession, streams: Any) -> None:
        _take(session, streams)

    def held(self, session: AgentSession, streams: Any) -> None:
        later = time.monotonic() + self.retry
        for stream, message in _take(session, streams):
            self._keep(stream, message, later)

    def refused(self, session: AgentSession, streams: Any) -> None:
        for stream, _ in _take(session, streams):
            log.error("gateway node %s refused the usage report of stream %s", session.node, stream)

    def flush(self) -> None:
        """Hand the orphans that are due to the node that opened them or to any serving node."""
        if not self._orphans or not self._sessions:
            return
        now = time.monotonic()
        anyone = next(iter(self._sessions.values()))
        for stream, (message, not_before) in list(self._orphans.items()):
            if not_before > now:
                continue
            ticket = message.get("ticket")
            opener = ticket[1] if isinstance(ticket, list) and len(ticket) > 1 else None
            del self._orphans[stream]
            self._sessions.get(opener, anyone).send_report(message)  # type: ignore[arg-type]

    async def run(self, stop: asyncio.Event) -> None:
        """Retry the held orphans until ``stop`` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.retry)
            self.flush()
        if self._orphans:
            log.warning("stopping with %d usage report(s) no gateway node confirmed", len(self._orphans))

    def _keep(self, stream: str, message: dict[str, Any], not_before: float) -> None:
        if len(self._orphans) >= self.max_orphans and stream not in self._orphans:
            oldest = next(iter(self._orphans))
            del self._orphans[oldest]
            log.error("too many unconfirmed usage reports; dropped the report of stream %s", oldest)
        self._orphans[stream] = (message, not_before)


def _take(session: AgentSession, streams: Any) -> list[tuple[str, dict[str, Any]]]:
    """The reports a node's reply names (a list of stream ids; anything else names none), taken
    out of ``session.unacked``."""
    taken = []
    for stream in streams if isinstance(streams, list) else ():
        message = session.unacked.pop(stream, None) if isinstance(stream, str) else None
        if message is not None:
            taken.append((stream, message))
    return taken

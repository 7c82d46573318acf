"""The usage reports provider agents send on their control connections.

An agent reports every stream it relayed — bytes each way, open and close times, outcome — to
the node that opened it. ``AgentReports`` publishes each report next to the node's own usage
event and answers the agent through its link: ``acked`` once the report is in Redis, ``held``
or ``refused`` for a report this node process cannot take yet or at all.
"""

from __future__ import annotations

import logging
from typing import Any

from billing.errors import MalformedEvent
from billing.usage import AgentReport, UsageEvent, UsagePublisher
from gateway import wire
from gateway.tickets import TicketKey
from gateway.tunnel_streams import ProviderLink
from gateway.wire import WireError
from pool.nodes import NodeInfo

log = logging.getLogger("ipsx.gateway.tunnel")
_SHOWN = 64  # characters of an agent's own strings (stream ids) that go into a log line


class AgentReports:
    """The usage reports the agents linked to one gateway node process send it."""

    def __init__(self, publisher: UsagePublisher, tickets: TicketKey, *, node: str, boot: str) -> None:
        self._publisher = publisher
        self._tickets = tickets
        self._node = node  # this node's id and this process's boot token, as tickets name them
        self._boot = boot
        self._live: dict[str, str] = {}  # live node → its boot token

    def set_nodes(self, nodes: list[NodeInfo]) -> None:
        """The live gateway nodes changed (see ``TunnelHub.set_nodes``)."""
        self._live = {info.node: info.boot for info in nodes}

    def receive(self, link: ProviderLink, message: dict[str, Any]) -> None:
        """A ``usage`` message from the agent of ``link``: published (then ``acked``), answered
        ``held`` or ``refused`` (see ``_orphan``), or ignored — an exit of another agent, or a
        stream this link did not open reported without its ticket. Raises WireError when the
        report is malformed."""
        stream = wire.field(message, "stream", str)
        exit_id = wire.field(message, "exit", str)
        if exit_id not in link.exits:
            return  # not an exit of this agent: ignore, never trust
        up, down = wire.field(message, "up", int), wire.field(message, "down", int)
        opened, closed = (
            float(wire.field(message, "opened", (int, float))),
            float(wire.field(message, "closed", (int, float))),
        )
        if up < 0 or down < 0 or closed < opened:
            raise WireError("bad usage report")
        outcome = str(message.get("outcome", ""))[:32]
        try:
            report = AgentReport(stream, link.address, exit_id, up, down, opened, closed, outcome)
        except MalformedEvent as exc:
            raise WireError(f"bad usage report: {exc.reason}") from None
        if stream in link.streams:
            link.streams.discard(stream)
            self._publisher.publish(report, lambda: link.ack(stream))
        elif "ticket" in message:
            self._orphan(link, report, message)

    def _orphan(self, link: ProviderLink, report: AgentReport, message: dict[str, Any]) -> None:
        """A report of a stream this link did not open: its agent could not deliver it to the
        node process that did. Taken on the signed ticket alone, and metered here too once that
        process is known to be gone (out of the registry, or its node id restarted)."""
        stream = report.event_id
        try:
            ticket = self._tickets.check(message["ticket"], message.get("mac"))
            if ticket.stream != stream or ticket.exit != report.exit_id:
                raise WireError("the ticket is another stream's")
        except WireError as exc:
            log.warning(
                "provider %s reported stream %r with a bad ticket: %s", link.address, stream[:_SHOWN], exc
            )
            link.refuse(stream)
            return
        if ticket.node == self._node and ticket.boot == self._boot:
            # Opened by this very process through a link since replaced: the front meters it.
            self._publisher.publish(report, lambda: link.ack(stream))
            return
        if self._live.get(ticket.node) == ticket.boot:
            # The opening process still announces itself: it may yet publish its own usage
            # event, which must win. The agent asks again once it is gone or reached.
            link.hold(stream)
            return
        try:
            lost = UsageEvent(
                event_id=stream,
                deal_id=ticket.deal or None,
                requester=ticket.requester,
                provider=link.address,
                exit_id=ticket.exit,
                node=ticket.node,
                protocol=ticket.protocol,
                target=ticket.target,
                bytes_up=report.bytes_up,
                bytes_down=report.bytes_down,
                opened_at=report.opened_at,
                closed_at=report.closed_at,
                outcome="node_lost",
                attempts=ticket.attempts,
            )
        except MalformedEvent as exc:
            log.warning(
                "stream %r of lost node %s cannot be metered: %s",
                stream[:_SHOWN],
                ticket.node[:64],
                exc.reason,
            )
            link.refuse(stream)
            return
        self._publisher.publish(lost)
        self._publisher.publish(report, lambda: link.ack(stream))
        log.info("metered stream %r of lost node %s from its agent's report", stream, ticket.node[:64])

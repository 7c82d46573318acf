"""What the pool knows about an exit, and the filters a requester selects exits by."""

from __future__ import annotations

from dataclasses import dataclass

EXIT_TYPES = frozenset({"residential", "mobile", "datacenter"})


@dataclass(frozen=True, slots=True)
class ExitFilters:
    """Attributes an exit must have; ``None`` means "any"."""

    country: str | None = None  # ISO 3166-1 alpha-2, lower case
    region: str | None = None
    city: str | None = None
    asn: int | None = None
    type: str | None = None  # one of EXIT_TYPES

    def items(self) -> list[tuple[str, str]]:
        """The set filters as (attribute, value) pairs, in a fixed order."""
        pairs = [
            ("country", self.country),
            ("region", self.region),
            ("city", self.city),
            ("asn", None if self.asn is None else str(self.asn)),
            ("type", self.type),
        ]
        return [(name, value) for name, value in pairs if value is not None]


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """One exit: a source address a provider lends, held by one gateway node."""

    exit_id: str
    provider: str  # the provider's checksummed wallet address
    node: str  # the gateway node whose tunnel reaches it
    bind: str  # source address the agent dials from
    country: str
    region: str = ""
    city: str = ""
    asn: int = 0
    type: str = "residential"

    def attributes(self) -> list[tuple[str, str]]:
        """The indexed attributes of this exit, as (attribute, value) pairs."""
        pairs = [
            ("country", self.country),
            ("region", self.region),
            ("city", self.city),
            ("asn", str(self.asn) if self.asn else ""),
            ("type", self.type),
        ]
        return [(name, value) for name, value in pairs if value]

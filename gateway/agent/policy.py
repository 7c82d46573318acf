"""The exit policy an agent enforces on every destination, after DNS resolution.

An agent must never become a way into its own network or its host's cloud metadata service:
every resolved address is checked, and the agent connects to the address it checked (never
re-resolves), so DNS rebinding cannot slip a private address past the check.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SMTP_PORTS = frozenset({25, 465, 587, 2525})
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


class PolicyRefused(Exception):
    """The destination is not allowed by this exit's policy."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ExitPolicy:
    """What destinations an exit may reach.

    ``ports``: allowed destination ports, ``None`` for any port but SMTP (unless ``allow_smtp``).
    ``allow_private``: also loopback, private, link-local and CGNAT destinations — for tests and
    demos whose origin runs on the same machine; never for a real exit.
    """

    allow_private: bool = False
    allow_smtp: bool = False
    ports: frozenset[int] | None = field(default=None)

    def check_port(self, port: int) -> None:
        if not 1 <= port <= 65535:
            raise PolicyRefused("invalid port")
        if self.ports is not None and port not in self.ports:
            raise PolicyRefused(f"port {port} is not allowed by this exit")
        if port in SMTP_PORTS and not self.allow_smtp and (self.ports is None or port not in self.ports):
            raise PolicyRefused(f"port {port} (mail) is not allowed by this exit")

    def check_address(self, address: IPAddress) -> None:
        for candidate in _embedded_addresses(address):
            if candidate.is_multicast or candidate.is_unspecified:
                raise PolicyRefused("multicast or unspecified destination")
            if candidate.version == 4 and candidate == ipaddress.IPv4Address("255.255.255.255"):
                raise PolicyRefused("broadcast destination")
            if not self.allow_private and (not candidate.is_global or candidate in _CGNAT):
                raise PolicyRefused("private, loopback, link-local or reserved destination")

    def to_wire(self) -> dict[str, Any]:
        return {
            "allow_private": self.allow_private,
            "allow_smtp": self.allow_smtp,
            "ports": None if self.ports is None else sorted(self.ports),
        }


def _embedded_addresses(address: IPAddress) -> list[IPAddress]:
    """The address and any IPv4 address carried inside it (mapped, 6to4, NAT64, Teredo)."""
    found: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            found.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            found.append(address.sixtofour)
        if address.teredo is not None:
            found.append(address.teredo[1])
        if address in _NAT64 or address in _NAT64_LOCAL:
            found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def parse_ports(text: str) -> frozenset[int]:
    """``"80,443,8000-8100"`` → the set of ports; raises ValueError."""
    ports: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, dash, high = part.partition("-")
        if dash and not high:
            raise ValueError(f"bad port range {part!r}")
        start, end = int(low), int(high or low)
        if not 1 <= start <= end <= 65535:
            raise ValueError(f"bad port range {part!r}")
        ports.update(range(start, end + 1))
    if not ports:
        raise ValueError("no ports given")
    return frozenset(ports)


def pick_address(infos: list[tuple[Any, ...]], policy: ExitPolicy, family: int | None) -> tuple[int, str]:
    """From ``getaddrinfo`` results, the first (family, address) the policy allows.

    ``family`` restricts to the bind address's family. Raises PolicyRefused with the reason of
    the first refused address when none is allowed.
    """
    first_refusal: str | None = None
    for fam, _type, _proto, _canon, sockaddr in infos:
        if family is not None and fam != family:
            continue
        address, refusal = _verdict(policy, sockaddr[0])
        if refusal is None:
            return fam, address
        first_refusal = first_refusal or refusal
    raise PolicyRefused(first_refusal or "no address of a usable family")


@functools.lru_cache(maxsize=8192)
def _verdict(policy: ExitPolicy, text: str) -> tuple[str, str | None]:
    """(canonical address, the policy's refusal or None) for an address in text form; cached,
    since a scraper dials the same few addresses over and over and the policy never changes."""
    address = ipaddress.ip_address(text.split("%", 1)[0])
    try:
        policy.check_address(address)
    except PolicyRefused as refusal:
        return str(address), refusal.reason
    return str(address), None


@functools.lru_cache(maxsize=256)
def family_of(bind: str | None) -> int | None:
    if bind is None:
        return None
    return socket.AF_INET6 if ipaddress.ip_address(bind).version == 6 else socket.AF_INET

"""The exit policy an agent enforces on every destination, after DNS resolution.

An agent must never become a way into its own network or its host's cloud metadata service:
every resolved address is checked, and the agent connects to the address it checked (never
re-resolves), so DNS rebinding cannot slip a private address past the check.

The provider's own choices live here too: the stream protocols it serves, the ports, and the
destinations it blocks — domain suffixes (checked on the name, before DNS) and networks
(checked on every resolved address, like the private ranges). The agent advertises the policy
at login (``to_wire``); the gateway rebuilds it (``from_wire``) and asks ``refusal`` of each
candidate exit, so it does not pick an exit that would refuse.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

from gateway.wire import WireError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SMTP_PORTS = frozenset({25, 465, 587, 2525})
# What a provider may allow, and the stream kinds of the gateway's tickets they cover.
PROTOCOLS = ("http", "https", "socks5")
_STREAM_PROTOCOL = {"http": "http", "connect": "https", "https": "https", "socks5": "socks5"}
MAX_BLOCKED = 10_000  # blocked domains, and blocked networks, an agent may advertise
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
# Deprecated ranges Python still calls global: IPv4-compatible IPv6 (``::7f00:1`` reaches
# 127.0.0.1 on some stacks) and site-local (fec0::/10, RFC 3879), routed like private ranges.
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")


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
    ``protocols``: the stream protocols served (of ``PROTOCOLS``), ``None`` for all.
    ``blocked_domains``: names refused with all their subdomains (lower case, no trailing dot).
    ``blocked_networks``: networks no resolved address may fall in.
    """

    allow_private: bool = False
    allow_smtp: bool = False
    ports: frozenset[int] | None = field(default=None)
    protocols: frozenset[str] | None = None
    blocked_domains: frozenset[str] = frozenset()
    blocked_networks: frozenset[IPNetwork] = frozenset()  # a frozenset caches its hash

    def check_port(self, port: int) -> None:
        if not 1 <= port <= 65535:
            raise PolicyRefused("invalid port")
        if self.ports is not None and port not in self.ports:
            raise PolicyRefused(f"port {port} is not allowed by this exit")
        if port in SMTP_PORTS and not self.allow_smtp and (self.ports is None or port not in self.ports):
            raise PolicyRefused(f"port {port} (mail) is not allowed by this exit")

    def check_protocol(self, kind: str | None) -> None:
        """``kind`` is a ticket's stream kind (``http``, ``connect``, ``socks5``) or a protocol
        name; ``None`` (a dial without a ticket) passes only when every protocol is allowed."""
        if self.protocols is None:
            return
        protocol = _STREAM_PROTOCOL.get(kind or "")
        if protocol is None:
            raise PolicyRefused("the stream's protocol is unknown and this exit serves only some")
        if protocol not in self.protocols:
            raise PolicyRefused(f"protocol {protocol} is not allowed by this exit")

    def check_host(self, host: str) -> None:
        """Refuse a name that is, or is under, a blocked domain (before any DNS lookup)."""
        if not self.blocked_domains:
            return
        blocked = _blocked_suffix(self.blocked_domains, host)
        if blocked is not None:
            raise PolicyRefused(f"destinations under {blocked} are blocked by this exit")

    def check_address(self, address: IPAddress) -> None:
        for candidate in _embedded_addresses(address):
            if candidate.is_multicast or candidate.is_unspecified:
                raise PolicyRefused("multicast or unspecified destination")
            if candidate.version == 4 and candidate == ipaddress.IPv4Address("255.255.255.255"):
                raise PolicyRefused("broadcast destination")
            if not self.allow_private and (
                not candidate.is_global
                or candidate in _CGNAT
                or candidate in _V4_COMPATIBLE
                or candidate in _SITE_LOCAL
            ):
                raise PolicyRefused("private, loopback, link-local or reserved destination")
            for network in self.blocked_networks:
                if candidate.version == network.version and candidate in network:
                    raise PolicyRefused(f"destination {address} is in {network}, blocked by this exit")

    def refusal(self, host: str, port: int, protocol: str | None) -> str | None:
        """What this exit would answer a dial of ``host:port`` for a ``protocol`` stream, as far
        as it is known without DNS: ``None`` when it may accept, else the reason it refuses.
        An IP literal ``host`` is checked as the address it is (cached: the hot path of exit
        selection asks this of every candidate)."""
        try:
            self.check_protocol(protocol)
            self.check_port(port)
            self.check_host(host)
        except PolicyRefused as refused:
            return refused.reason
        literal = _literal(host)
        return None if literal is None else _verdict(self, literal)[1]

    def to_wire(self) -> dict[str, Any]:
        return {
            "allow_private": self.allow_private,
            "allow_smtp": self.allow_smtp,
            "ports": None if self.ports is None else sorted(self.ports),
            "protocols": None if self.protocols is None else sorted(self.protocols),
            "block_domains": sorted(self.blocked_domains),
            "block_networks": [str(network) for network in _sorted_networks(self.blocked_networks)],
        }

    @classmethod
    def from_wire(cls, raw: Any) -> ExitPolicy:
        """The policy an agent advertised (``to_wire``); fields it leaves out keep their
        defaults (an older agent). Raises WireError when a field is malformed."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise WireError("the policy must be an object")
        try:
            ports = raw.get("ports")
            protocols = raw.get("protocols")
            return cls(
                allow_private=_flag(raw.get("allow_private")),
                allow_smtp=_flag(raw.get("allow_smtp")),
                ports=None if ports is None else frozenset(_port(port) for port in _items(ports, 65535)),
                protocols=None if protocols is None else parse_protocols(_items(protocols, 8)),
                blocked_domains=frozenset(
                    normalize_domain(_text(name)) for name in _items(raw.get("block_domains", []))
                ),
                blocked_networks=frozenset(
                    ipaddress.ip_network(_text(text), strict=False)
                    for text in _items(raw.get("block_networks", []))
                ),
            )
        except ValueError as exc:
            raise WireError(f"bad policy: {exc}") from None


def _flag(value: Any) -> bool:
    if not isinstance(value, bool | None):
        raise ValueError("a flag must be true or false")
    return bool(value)


def _items(value: Any, limit: int = MAX_BLOCKED) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise ValueError(f"expected a list of at most {limit} items")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 253:
        raise ValueError("expected a short text")
    return value


def _port(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ValueError("a port is 1 to 65535")
    return value


def parse_protocols(names: Any) -> frozenset[str]:
    """Protocol names (``http``, ``https``, ``socks5``) → the set; raises ValueError."""
    protocols = set()
    for name in names:
        text = _text(name).strip().lower()
        if text not in PROTOCOLS:
            raise ValueError(f"unknown protocol {text[:20]!r} (choose from {', '.join(PROTOCOLS)})")
        protocols.add(text)
    if not protocols:
        raise ValueError("no protocol given")
    return frozenset(protocols)


def normalize_domain(text: str) -> str:
    """``"Example.COM."`` → ``"example.com"`` (IDNA names in their ``xn--`` form); raises ValueError."""
    name = text.strip().lower().rstrip(".").removeprefix("*.").removeprefix(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(0 < len(label) <= 63 for label in labels):
        raise ValueError(f"bad domain {text[:60]!r}")
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"bad domain {text[:60]!r}") from None
    return name


def parse_blocked(items: list[str]) -> tuple[frozenset[str], frozenset[IPNetwork]]:
    """``["example.com,10.0.0.0/8", "192.0.2.7"]`` → (blocked domains, blocked networks): a
    network or an address (a one-address network) is blocked after DNS, anything else is a
    domain blocked with its subdomains. Raises ValueError."""
    domains: set[str] = set()
    networks: set[IPNetwork] = set()
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                networks.add(ipaddress.ip_network(part.removeprefix("[").removesuffix("]"), strict=False))
            except ValueError:
                domains.add(normalize_domain(part))
    if len(domains) > MAX_BLOCKED or len(networks) > MAX_BLOCKED:
        raise ValueError(f"at most {MAX_BLOCKED} blocked domains and {MAX_BLOCKED} networks")
    return frozenset(domains), frozenset(networks)


def _sorted_networks(networks: frozenset[IPNetwork]) -> list[IPNetwork]:
    return sorted(networks, key=lambda network: (network.version, network))


def _blocked_suffix(blocked: frozenset[str], host: str) -> str | None:
    """The blocked domain ``host`` is or is under, if any."""
    name = host.lower().rstrip(".")
    while True:
        if name in blocked:
            return name
        dot = name.find(".")
        if dot < 0:
            return None
        name = name[dot + 1 :]


@functools.lru_cache(maxsize=4096)
@functools.lru_cache(maxsize=8192)
def _literal(host: str) -> str | None:
    """``host`` as a canonical address if it is an IP literal (``[…]`` allowed), else None; cached,
    since exit selection asks it of every candidate of every connection, mostly of the same hosts."""
    try:
        return str(ipaddress.ip_address(host.removeprefix("[").removesuffix("]").split("%", 1)[0]))
    except ValueError:
        return None


def _embedded_addresses(address: IPAddress) -> list[IPAddress]:
    """The address and any IPv4 address carried inside it (mapped, compatible, 6to4, NAT64, Teredo)."""
    found: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            found.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            found.append(address.sixtofour)
        if address.teredo is not None:
            found.append(address.teredo[1])
        if address in _V4_COMPATIBLE and int(address) > 1:  # not :: nor ::1
            found.append(ipaddress.IPv4Address(int(address)))
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

"""Unit tests of the agent's exit policy: addresses, ports, protocols, blocked destinations, the
wire form the gateway rebuilds, and address picking.

Public addresses appear only as values; nothing here connects anywhere.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.agent.policy import (
    SMTP_PORTS,
    ExitPolicy,
    PolicyRefused,
    family_of,
    normalize_domain,
    parse_blocked,
    parse_ports,
    parse_protocols,
    pick_address,
)
from gateway.wire import WireError

PRIVATE_REASON = "private, loopback, link-local or reserved destination"
MULTICAST_REASON = "multicast or unspecified destination"
BROADCAST_REASON = "broadcast destination"

CGNAT = ipaddress.ip_network("100.64.0.0/10")

# Teredo carries the client's IPv4 address inverted in its last 32 bits: ~127.0.0.1 = 0x80fffffe.
TEREDO_TO_LOOPBACK = "2001:0:4136:e378:8000:63bf:80ff:fffe"

REFUSED_UNLESS_PRIVATE = [
    "127.0.0.1",
    "127.255.255.254",
    "::1",
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "fc00::1",
    "fd12:3456::1",
    "169.254.169.254",
    "169.254.0.1",
    "fe80::1",
    "100.64.0.1",
    "100.127.255.254",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "2002:7f00:1::",
    "2002:a00:1::1",
    "64:ff9b::a00:1",
    "64:ff9b::7f00:1",
    TEREDO_TO_LOOPBACK,
    "::7f00:1",  # IPv4-compatible (deprecated, ::/96): 127.0.0.1 on stacks that still route it
    "::a9fe:a9fe",  # 169.254.169.254, the cloud metadata address
    "::808:808",  # the whole ::/96 is refused, whatever IPv4 address it carries
    "fec0::1",  # site-local (deprecated, fec0::/10)
    "feff:ffff::1",
]

ALWAYS_REFUSED = {
    "224.0.0.1": MULTICAST_REASON,
    "239.255.255.250": MULTICAST_REASON,
    "ff02::1": MULTICAST_REASON,
    "0.0.0.0": MULTICAST_REASON,
    "::": MULTICAST_REASON,
    "255.255.255.255": BROADCAST_REASON,
}

# IPv6 addresses carrying a multicast, unspecified or broadcast IPv4 address.
EMBEDDING_ALWAYS_REFUSED = [
    "::ffff:224.0.0.1",
    "::ffff:0.0.0.0",
    "::ffff:255.255.255.255",
    "2002:e000:1::",  # 6to4
    "64:ff9b::e000:1",  # NAT64
    "64:ff9b:1::e000:1",  # local-use NAT64
    "2001:0:4136:e378:8000:63bf:1fff:fffe",  # Teredo, client 224.0.0.1
]

PUBLIC = ["93.184.215.14", "1.1.1.1", "8.8.8.8", "2606:4700::1111", "2a00:1450:4001:80b::200e"]


def refusal(policy: ExitPolicy, address: str) -> str:
    with pytest.raises(PolicyRefused) as info:
        policy.check_address(ipaddress.ip_address(address))
    return info.value.reason


def info(family: int, address: str, port: int = 443) -> tuple[object, ...]:
    sockaddr: tuple[object, ...] = (address, port) if family == socket.AF_INET else (address, port, 0, 0)
    return (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)


# check_address


@pytest.mark.parametrize("address", REFUSED_UNLESS_PRIVATE)
def test_check_address_refuses_private(address: str) -> None:
    assert refusal(ExitPolicy(), address) == PRIVATE_REASON


@pytest.mark.parametrize("address", REFUSED_UNLESS_PRIVATE)
def test_check_address_allow_private_allows_private(address: str) -> None:
    ExitPolicy(allow_private=True).check_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(("address", "reason"), sorted(ALWAYS_REFUSED.items()))
@pytest.mark.parametrize("allow_private", [False, True])
def test_check_address_refuses_multicast_unspecified_broadcast(
    address: str, reason: str, allow_private: bool
) -> None:
    assert refusal(ExitPolicy(allow_private=allow_private), address) == reason


@pytest.mark.parametrize("address", EMBEDDING_ALWAYS_REFUSED)
def test_check_address_refuses_embedded_multicast_with_allow_private(address: str) -> None:
    assert refusal(ExitPolicy(allow_private=True), address) in (MULTICAST_REASON, BROADCAST_REASON)
    assert refusal(ExitPolicy(), address) in (MULTICAST_REASON, BROADCAST_REASON, PRIVATE_REASON)


@pytest.mark.parametrize("address", PUBLIC)
@pytest.mark.parametrize("allow_private", [False, True])
def test_check_address_allows_public(address: str, allow_private: bool) -> None:
    ExitPolicy(allow_private=allow_private).check_address(ipaddress.ip_address(address))


def test_check_address_allows_public_6to4() -> None:
    # 6to4 around 93.184.215.14: both the IPv6 address and the IPv4 one inside it are global.
    ExitPolicy().check_address(ipaddress.ip_address("2002:5db8:d70e::1"))


def test_check_address_refuses_resolved_short_loopback() -> None:
    # "127.1" is 127.0.0.1 once resolved; the policy is applied after resolution.
    infos = socket.getaddrinfo("127.1", 80, type=socket.SOCK_STREAM)
    addresses = {ipaddress.ip_address(sockaddr[0]) for *_, sockaddr in infos}
    assert addresses == {ipaddress.IPv4Address("127.0.0.1")}
    for address in addresses:
        with pytest.raises(PolicyRefused) as refused:
            ExitPolicy().check_address(address)
        assert refused.value.reason == PRIVATE_REASON


def test_check_address_refusal_carries_reason() -> None:
    with pytest.raises(PolicyRefused) as refused:
        ExitPolicy().check_address(ipaddress.ip_address("10.1.2.3"))
    assert str(refused.value) == refused.value.reason == PRIVATE_REASON


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_check_address_ipv4_matches_ipaddress(value: int) -> None:
    address = ipaddress.IPv4Address(value)
    if address.is_global and address not in CGNAT and not address.is_multicast:
        ExitPolicy().check_address(address)
    else:
        with pytest.raises(PolicyRefused):
            ExitPolicy().check_address(address)


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_check_address_ipv4_mapped_never_reaches_private(value: int) -> None:
    address = ipaddress.IPv4Address(value)
    mapped = ipaddress.IPv6Address(f"::ffff:{address}")
    if not address.is_global or address in CGNAT or address.is_multicast:
        with pytest.raises(PolicyRefused):
            ExitPolicy().check_address(mapped)


# check_port


@pytest.mark.parametrize("port", sorted(SMTP_PORTS))
def test_check_port_refuses_smtp(port: int) -> None:
    with pytest.raises(PolicyRefused) as refused:
        ExitPolicy().check_port(port)
    assert "mail" in refused.value.reason


@pytest.mark.parametrize("port", sorted(SMTP_PORTS))
def test_check_port_allow_smtp(port: int) -> None:
    ExitPolicy(allow_smtp=True).check_port(port)


def test_check_port_smtp_explicitly_listed() -> None:
    policy = ExitPolicy(ports=frozenset({25, 443}))
    policy.check_port(25)
    policy.check_port(443)
    with pytest.raises(PolicyRefused):
        policy.check_port(587)


def test_check_port_ports_restrict() -> None:
    policy = ExitPolicy(ports=frozenset({80, 443}))
    policy.check_port(80)
    policy.check_port(443)
    with pytest.raises(PolicyRefused) as refused:
        policy.check_port(8080)
    assert refused.value.reason == "port 8080 is not allowed by this exit"


def test_check_port_ports_restrict_even_with_allow_smtp() -> None:
    with pytest.raises(PolicyRefused):
        ExitPolicy(allow_smtp=True, ports=frozenset({443})).check_port(25)


@pytest.mark.parametrize("port", [1, 80, 443, 8080, 65535])
def test_check_port_allows_default(port: int) -> None:
    ExitPolicy().check_port(port)


@pytest.mark.parametrize("port", [0, -1, 65536, 100000])
@pytest.mark.parametrize("policy", [ExitPolicy(), ExitPolicy(allow_smtp=True, allow_private=True)])
def test_check_port_refuses_invalid(port: int, policy: ExitPolicy) -> None:
    with pytest.raises(PolicyRefused) as refused:
        policy.check_port(port)
    assert refused.value.reason == "invalid port"


def test_to_wire_call() -> None:
    assert ExitPolicy().to_wire() == {
        "allow_private": False,
        "allow_smtp": False,
        "ports": None,
        "protocols": None,
        "block_domains": [],
        "block_networks": [],
    }
    wire = ExitPolicy(allow_private=True, ports=frozenset({443, 80})).to_wire()
    assert wire == {
        "allow_private": True,
        "allow_smtp": False,
        "ports": [80, 443],
        "protocols": None,
        "block_domains": [],
        "block_networks": [],
    }


def test_to_wire_blocked_and_protocols() -> None:
    domains, networks = parse_blocked(["b.example,a.example", "2001:db8::/32", "10.0.0.0/8"])
    policy = ExitPolicy(
        protocols=frozenset({"socks5", "http"}), blocked_domains=domains, blocked_networks=networks
    )
    wire = policy.to_wire()
    assert wire["protocols"] == ["http", "socks5"]
    assert wire["block_domains"] == ["a.example", "b.example"]
    assert wire["block_networks"] == ["10.0.0.0/8", "2001:db8::/32"]  # IPv4 first, then IPv6


# from_wire: what the gateway rebuilds from an agent's login


def test_from_wire_round_trip() -> None:
    domains, networks = parse_blocked(["example.com", "192.0.2.0/24"])
    policy = ExitPolicy(
        allow_smtp=True,
        ports=frozenset({80, 443}),
        protocols=frozenset({"https"}),
        blocked_domains=domains,
        blocked_networks=networks,
    )
    assert ExitPolicy.from_wire(policy.to_wire()) == policy


def test_from_wire_older_agent_keeps_defaults() -> None:
    old = {"allow_private": True, "allow_smtp": False, "ports": None}
    assert ExitPolicy.from_wire(old) == ExitPolicy(allow_private=True)
    assert ExitPolicy.from_wire(None) == ExitPolicy()


def test_from_wire_ignores_the_limits_fields() -> None:
    assert ExitPolicy.from_wire({"cap_day": 5, "hours": ["22:00-07:00"]}) == ExitPolicy()


@pytest.mark.parametrize(
    "raw",
    [
        [],
        {"allow_private": "yes"},
        {"ports": [0]},
        {"ports": [True]},
        {"ports": "80"},
        {"protocols": ["ftp"]},
        {"protocols": []},
        {"block_domains": ["a" * 300]},
        {"block_domains": [""]},
        {"block_domains": "example.com"},
        {"block_networks": ["10.0.0.0/33"]},
        {"block_networks": [7]},
        {"block_networks": ["10.0.0.0/8"] * 10_001},
    ],
)
def test_from_wire_malformed_raises(raw: object) -> None:
    with pytest.raises(WireError):
        ExitPolicy.from_wire(raw)


# protocols, blocked domains and networks


@pytest.mark.parametrize(
    ("kind", "allowed"),
    [("http", True), ("https", False), ("connect", False), ("socks5", True), ("ftp", False), (None, False)],
)
def test_check_protocol_call(kind: str | None, allowed: bool) -> None:
    policy = ExitPolicy(protocols=frozenset({"http", "socks5"}))
    if allowed:
        policy.check_protocol(kind)
        return
    with pytest.raises(PolicyRefused) as refused:
        policy.check_protocol(kind)
    if kind in ("https", "connect"):
        assert refused.value.reason == "protocol https is not allowed by this exit"


@pytest.mark.parametrize("kind", ["http", "connect", "socks5", None, "anything"])
def test_check_protocol_all_allowed_by_default(kind: str | None) -> None:
    ExitPolicy().check_protocol(kind)


@pytest.mark.parametrize("host", ["example.com", "a.example.com", "x.y.EXAMPLE.com", "example.com."])
def test_check_host_refuses_blocked_suffix(host: str) -> None:
    policy = ExitPolicy(blocked_domains=frozenset({"example.com"}))
    with pytest.raises(PolicyRefused) as refused:
        policy.check_host(host)
    assert refused.value.reason == "destinations under example.com are blocked by this exit"


@pytest.mark.parametrize("host", ["notexample.com", "example.org", "com", "example.com.evil.net", "1.2.3.4"])
def test_check_host_allows_others(host: str) -> None:
    ExitPolicy(blocked_domains=frozenset({"example.com"})).check_host(host)


@pytest.mark.parametrize(
    ("address", "blocked"),
    [
        ("93.184.215.14", True),
        ("93.184.216.1", False),
        ("::ffff:93.184.215.14", True),  # the IPv4 address inside an IPv6 one is checked too
        ("2606:4700::1111", True),
        ("2606:4701::1", False),
    ],
)
def test_check_address_refuses_blocked_networks(address: str, blocked: bool) -> None:
    _, networks = parse_blocked(["93.184.215.0/24,2606:4700::/32"])
    policy = ExitPolicy(blocked_networks=networks)
    if not blocked:
        policy.check_address(ipaddress.ip_address(address))
        return
    assert "blocked by this exit" in refusal(policy, address)


def test_check_address_refuses_blocked_network_inside_ipv4_compatible_address() -> None:
    _, networks = parse_blocked(["127.0.0.0/8"])
    policy = ExitPolicy(allow_private=True, blocked_networks=networks)
    assert refusal(policy, "::7f00:1") == "destination ::7f00:1 is in 127.0.0.0/8, blocked by this exit"
    policy.check_address(ipaddress.ip_address("::1"))  # loopback, not 0.0.0.1


def test_pick_address_skips_blocked_network() -> None:
    _, networks = parse_blocked(["93.184.215.14"])
    policy = ExitPolicy(blocked_networks=networks)
    infos = [info(socket.AF_INET, "93.184.215.14"), info(socket.AF_INET, "1.1.1.1")]
    assert pick_address(infos, policy, None) == (socket.AF_INET, "1.1.1.1")
    with pytest.raises(PolicyRefused) as refused:
        pick_address(infos[:1], policy, None)
    assert refused.value.reason == "destination 93.184.215.14 is in 93.184.215.14/32, blocked by this exit"


# parse_blocked, parse_protocols, normalize_domain


def test_parse_blocked_call() -> None:
    domains, networks = parse_blocked(["Example.COM., *.ads.test", "10.0.0.0/8,192.0.2.7", "[2001:db8::1]"])
    assert domains == {"example.com", "ads.test"}
    assert {str(network) for network in networks} == {"10.0.0.0/8", "192.0.2.7/32", "2001:db8::1/128"}


@pytest.mark.parametrize("text", ["exa mple..com", "a" * 64 + ".com", ".", "bad..name"])
def test_parse_blocked_errors(text: str) -> None:
    with pytest.raises(ValueError, match="bad domain"):
        parse_blocked([text])


def test_normalize_domain_idna() -> None:
    assert normalize_domain("Bücher.example") == "xn--bcher-kva.example"


def test_parse_protocols_call() -> None:
    assert parse_protocols(["HTTP", " socks5 "]) == {"http", "socks5"}
    with pytest.raises(ValueError, match="unknown protocol 'ftp'"):
        parse_protocols(["ftp"])


# refusal: what the gateway asks without DNS


@pytest.mark.parametrize(
    ("host", "port", "protocol", "reason"),
    [
        ("www.example.org", 443, "connect", None),
        ("www.example.org", 443, "https", None),
        ("www.example.org", 443, "socks5", "protocol socks5 is not allowed by this exit"),
        ("www.example.org", 8080, "connect", "port 8080 is not allowed by this exit"),
        ("ads.blocked.test", 443, "connect", "destinations under blocked.test are blocked by this exit"),
        (
            "93.184.215.14",
            443,
            "connect",
            "destination 93.184.215.14 is in 93.184.215.0/24, blocked by this exit",
        ),
        ("10.1.2.3", 443, "connect", PRIVATE_REASON),
        ("[::1]", 443, "http", PRIVATE_REASON),
        ("1.1.1.1", 80, "http", None),
    ],
)
def test_refusal_call(host: str, port: int, protocol: str, reason: str | None) -> None:
    domains, networks = parse_blocked(["blocked.test,93.184.215.0/24"])
    policy = ExitPolicy(
        ports=frozenset({80, 443}),
        protocols=frozenset({"http", "https"}),
        blocked_domains=domains,
        blocked_networks=networks,
    )
    assert policy.refusal(host, port, protocol) == reason


# parse_ports


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("80", {80}),
        ("80,443", {80, 443}),
        ("8000-8003", {8000, 8001, 8002, 8003}),
        ("80, 443 ,8000-8001", {80, 443, 8000, 8001}),
        ("443,,443,", {443}),
        ("1-1", {1}),
        ("65535", {65535}),
    ],
)
def test_parse_ports_call(text: str, expected: set[int]) -> None:
    assert parse_ports(text) == frozenset(expected)


def test_parse_ports_full_range() -> None:
    assert parse_ports("1-65535") == frozenset(range(1, 65536))


@pytest.mark.parametrize(
    "text", ["", ",", " , ", "0", "65536", "0-10", "100-65536", "90-80", "http", "-80", "1-2-3", "8a"]
)
def test_parse_ports_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ports(text)


def test_parse_ports_open_range_refused() -> None:
    # "8000-" is a range whose end is missing, not the single port 8000.
    with pytest.raises(ValueError):
        parse_ports("8000-")


# pick_address and family_of


def test_pick_address_localhost_refused() -> None:
    infos = socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
    assert infos
    with pytest.raises(PolicyRefused) as refused:
        pick_address(infos, ExitPolicy(), None)
    assert refused.value.reason == PRIVATE_REASON


def test_pick_address_localhost_allow_private() -> None:
    infos = socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
    family, address = pick_address(infos, ExitPolicy(allow_private=True), None)
    assert (family, address) == (infos[0][0], str(ipaddress.ip_address(infos[0][4][0])))
    assert ipaddress.ip_address(address).is_loopback


def test_pick_address_localhost_by_family() -> None:
    infos = socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
    policy = ExitPolicy(allow_private=True)
    for family in (socket.AF_INET, socket.AF_INET6):
        of_family = [item for item in infos if item[0] == family]
        if of_family:
            assert pick_address(infos, policy, family) == (family, of_family[0][4][0])
        else:
            with pytest.raises(PolicyRefused) as refused:
                pick_address(infos, policy, family)
            assert refused.value.reason == "no address of a usable family"


MIXED = [
    info(socket.AF_INET6, "::1"),
    info(socket.AF_INET, "10.0.0.1"),
    info(socket.AF_INET6, "2606:4700::1111"),
    info(socket.AF_INET, "93.184.215.14"),
]


def test_pick_address_first_allowed() -> None:
    assert pick_address(MIXED, ExitPolicy(), None) == (socket.AF_INET6, "2606:4700::1111")


def test_pick_address_by_bind_family() -> None:
    policy = ExitPolicy()
    assert pick_address(MIXED, policy, socket.AF_INET) == (socket.AF_INET, "93.184.215.14")
    assert pick_address(MIXED, policy, socket.AF_INET6) == (socket.AF_INET6, "2606:4700::1111")
    assert pick_address(MIXED, policy, family_of("127.0.0.2")) == (socket.AF_INET, "93.184.215.14")
    assert pick_address(MIXED, policy, family_of("::1")) == (socket.AF_INET6, "2606:4700::1111")


def test_pick_address_allow_private_takes_first() -> None:
    policy = ExitPolicy(allow_private=True)
    assert pick_address(MIXED, policy, None) == (socket.AF_INET6, "::1")
    assert pick_address(MIXED, policy, socket.AF_INET) == (socket.AF_INET, "10.0.0.1")


def test_pick_address_first_refusal_raised() -> None:
    infos = [
        info(socket.AF_INET, "93.184.215.14"),  # other family: skipped, not a refusal
        info(socket.AF_INET6, "ff02::1"),
        info(socket.AF_INET6, "fe80::1"),
    ]
    with pytest.raises(PolicyRefused) as refused:
        pick_address(infos, ExitPolicy(), socket.AF_INET6)
    assert refused.value.reason == MULTICAST_REASON
    reordered = [infos[0], infos[2], infos[1]]
    with pytest.raises(PolicyRefused) as refused:
        pick_address(reordered, ExitPolicy(), socket.AF_INET6)
    assert refused.value.reason == PRIVATE_REASON


def test_pick_address_no_usable_family() -> None:
    with pytest.raises(PolicyRefused) as refused:
        pick_address([info(socket.AF_INET, "93.184.215.14")], ExitPolicy(), socket.AF_INET6)
    assert refused.value.reason == "no address of a usable family"
    with pytest.raises(PolicyRefused) as refused:
        pick_address([], ExitPolicy(), None)
    assert refused.value.reason == "no address of a usable family"


def test_pick_address_strips_scope_id() -> None:
    infos = [info(socket.AF_INET6, "fe80::1%lo")]
    assert pick_address(infos, ExitPolicy(allow_private=True), None) == (socket.AF_INET6, "fe80::1")
    with pytest.raises(PolicyRefused) as refused:
        pick_address(infos, ExitPolicy(), None)
    assert refused.value.reason == PRIVATE_REASON


def test_pick_address_multicast_refused_with_allow_private() -> None:
    infos = [info(socket.AF_INET, "224.0.0.1"), info(socket.AF_INET, "0.0.0.0")]
    with pytest.raises(PolicyRefused) as refused:
        pick_address(infos, ExitPolicy(allow_private=True), None)
    assert refused.value.reason == MULTICAST_REASON


@pytest.mark.parametrize(
    ("bind", "family"),
    [(None, None), ("127.0.0.2", socket.AF_INET), ("0.0.0.0", socket.AF_INET), ("::1", socket.AF_INET6)],
)
def test_family_of_call(bind: str | None, family: int | None) -> None:
    assert family_of(bind) == family


def test_family_of_not_an_address() -> None:
    with pytest.raises(ValueError):
        family_of("example.com")

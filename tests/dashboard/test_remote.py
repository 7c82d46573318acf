"""Whom a request behind the operator's reverse proxies comes from (``dashboard.remote``), and
``ipsx api --trusted-proxy`` as argparse takes it."""

from __future__ import annotations

import pytest

from dashboard.remote import MAX_HOPS, forwarded_client, parse_network
from ipsx.cli import build_parser

PROXIES = [parse_network("10.0.0.0/8"), parse_network("fd00::/8"), parse_network("192.0.2.7")]


@pytest.mark.parametrize(
    ("peer", "headers", "client"),
    [
        # A peer that is no trusted proxy is the client, whatever it writes.
        ("198.51.100.4", ["203.0.113.9"], "198.51.100.4"),
        # A trusted proxy passes on the address it got the request from.
        ("10.1.2.3", ["203.0.113.9"], "203.0.113.9"),
        ("192.0.2.7", ["203.0.113.9"], "203.0.113.9"),
        # What the client wrote itself, left of that, is not believed.
        ("10.1.2.3", ["1.1.1.1, 203.0.113.9"], "203.0.113.9"),
        # Through two proxies of ours: the first address from the right that is not one.
        ("10.1.2.3", ["1.1.1.1, 203.0.113.9, 10.9.9.9"], "203.0.113.9"),
        # Several headers read as one list, in order.
        ("10.1.2.3", ["1.1.1.1", "203.0.113.9, 10.9.9.9"], "203.0.113.9"),
        # IPv6, bracketed or not, and IPv4 mapped into IPv6.
        ("fd00::1", ["2001:db8::5"], "2001:db8::5"),
        ("10.1.2.3", ["[2001:db8::5]:443"], "2001:db8::5"),
        ("::ffff:10.1.2.3", ["203.0.113.9"], "203.0.113.9"),
        ("10.1.2.3", ["::ffff:203.0.113.9"], "203.0.113.9"),
        # Only trusted proxies in the chain: the leftmost (the first to take the request).
        ("10.1.2.3", ["10.5.5.5, 10.6.6.6"], "10.5.5.5"),
        # A trusted proxy with no header: itself.
        ("10.1.2.3", [], "10.1.2.3"),
        ("10.1.2.3", [" , "], "10.1.2.3"),
        # An entry that is no address: who sent it is unknown past it, the hop that passed it on counts.
        ("10.1.2.3", ["203.0.113.9, unknown"], "10.1.2.3"),
        ("10.1.2.3", ["203.0.113.9, 10.9.9.9, 203.0.113.1:8080"], "10.1.2.3"),
        ("10.1.2.3", ["203.0.113.9, garbage, 10.9.9.9"], "10.9.9.9"),
        # A peer that is no address (a Unix socket) stays as it is.
        ("", ["203.0.113.9"], ""),
    ],
)
def test_forwarded_client(peer: str, headers: list[str], client: str) -> None:
    assert forwarded_client(peer, headers, PROXIES) == client


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert forwarded_client("10.1.2.3", ["203.0.113.9"], []) == "10.1.2.3"
    assert forwarded_client(None, ["203.0.113.9"], PROXIES) is None


def test_only_the_last_hops_are_read() -> None:
    chain = ", ".join(["203.0.113.9"] + ["10.0.0.1"] * (MAX_HOPS + 5))
    # The client lies further left than any chain of proxies of ours should: not looked for.
    assert forwarded_client("10.1.2.3", [chain], PROXIES) == "10.0.0.1"
    assert (
        forwarded_client("10.1.2.3", ["203.0.113.9, " + ", ".join(["10.0.0.1"] * 3)], PROXIES)
        == "203.0.113.9"
    )


@pytest.mark.parametrize("text", ["10.0.0.0/8", "192.0.2.7", "fd00::/8", " 10.1.0.0/16 ", "10.1.2.3/8"])
def test_trusted_proxy_option_takes_addresses_and_networks(text: str) -> None:
    args = build_parser().parse_args(["api", "--trusted-proxy", text, "--trusted-proxy", "192.0.2.8"])
    assert args.trusted_proxy == [text.strip(), "192.0.2.8"]


@pytest.mark.parametrize("text", ["", "proxy.example.com", "10.0.0.0/33", "10.0.0.1/8/8", "::1::2"])
def test_trusted_proxy_option_refuses_what_is_no_address(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["api", "--trusted-proxy", text])
    assert exited.value.code == 2
    assert (
        f"argument --trusted-proxy: not an IP address or network: {text.strip()!r}" in capsys.readouterr().err
    )

"""How an agent reads the gateway's node list, and how ``--workers`` splits one node's settings."""

from __future__ import annotations

import pytest

from gateway.agent.session import MAX_NODES, parse_nodes
from gateway.settings import GatewaySettings
from ipsx.supervisor import worker_settings


def test_nodes_with_host_and_port_are_taken_as_given() -> None:
    raw = [{"node": "a", "tunnel": "10.0.0.1:8443"}, {"node": "b", "tunnel": "[2001:db8::1]:9443"}]
    assert parse_nodes(raw, "gw.example") == [("a", "10.0.0.1", 8443), ("b", "2001:db8::1", 9443)]


def test_port_only_means_the_host_the_agent_already_dialed() -> None:
    assert parse_nodes([{"node": "a", "tunnel": ":8444"}], "gw.example") == [("a", "gw.example", 8444)]


@pytest.mark.parametrize(
    "entry",
    [
        "a:1",
        {"node": "a"},
        {"tunnel": ":1"},
        {"node": "", "tunnel": ":1"},
        {"node": "x" * 129, "tunnel": ":1"},
        {"node": "a", "tunnel": "host"},
        {"node": "a", "tunnel": "host:0"},
        {"node": "a", "tunnel": "host:65536"},
        {"node": "a", "tunnel": "host:-1"},
        {"node": "a", "tunnel": "host:80x"},
        {"node": 1, "tunnel": ":1"},
        {"node": "a", "tunnel": ["h", 1]},
    ],
)
def test_malformed_entries_are_skipped_and_the_rest_kept(entry: object) -> None:
    raw = [entry, {"node": "ok", "tunnel": "h:1"}]
    assert parse_nodes(raw, "gw") == [("ok", "h", 1)]


def test_a_list_that_is_not_a_list_gives_no_nodes() -> None:
    assert parse_nodes({"node": "a", "tunnel": ":1"}, "gw") == []
    assert parse_nodes(None, "gw") == []


def test_no_more_than_max_nodes_are_taken() -> None:
    raw = [{"node": f"n{i}", "tunnel": f":{1000 + i}"} for i in range(MAX_NODES + 10)]
    assert len(parse_nodes(raw, "gw")) == MAX_NODES


def _settings(**overrides: object) -> GatewaySettings:
    base = {"redis_url": "redis://x", "database_url": "postgresql://x", "node_id": "gw"}
    return GatewaySettings(**{**base, **overrides})  # type: ignore[arg-type]


def test_workers_get_their_own_node_id_and_tunnel_port_and_share_the_proxy_ports() -> None:
    workers = worker_settings(_settings(http_port=8080, socks_port=1080, tunnel_port=8443), 3)
    assert [(w.node_id, w.tunnel_port) for w in workers] == [("gw-0", 8443), ("gw-1", 8444), ("gw-2", 8445)]
    assert {(w.http_port, w.socks_port, w.reuse_port) for w in workers} == {(8080, 1080, True)}


@pytest.mark.parametrize(
    ("overrides", "count", "message"),
    [
        ({}, 0, "at least 1"),
        ({"http_port": 0}, 2, "fixed ports"),
        ({"tunnel_port": 0}, 2, "fixed ports"),
        ({"tunnel_port": 65535}, 2, "65535"),
    ],
)
def test_impossible_worker_layouts_are_refused(overrides: dict[str, int], count: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        worker_settings(_settings(**overrides), count)


@pytest.mark.parametrize(
    ("tunnel_host", "advertise_host", "expected"),
    [
        ("127.0.0.1", None, "127.0.0.1:8443"),
        ("0.0.0.0", None, ":8443"),
        ("::", None, ":8443"),
        ("0.0.0.0", "gw1.example", "gw1.example:8443"),
        ("::1", None, "[::1]:8443"),
    ],
)
def test_advertised_tunnel_address(tunnel_host: str, advertise_host: str | None, expected: str) -> None:
    settings = _settings(tunnel_host=tunnel_host, advertise_host=advertise_host)
    assert settings.advertised_tunnel(8443) == expected


def test_an_agent_with_a_region_keeps_only_the_nodes_of_that_region() -> None:
    raw = [
        {"node": "eu-1", "tunnel": "10.0.0.1:8443", "region": "eu"},
        {"node": "us-1", "tunnel": "10.0.1.1:8443", "region": "us"},
        {"node": "plain", "tunnel": "10.0.2.1:8443"},
        {"node": "eu-2", "tunnel": ":8444", "region": "eu"},
    ]
    assert parse_nodes(raw, "gw", "eu") == [("eu-1", "10.0.0.1", 8443), ("eu-2", "gw", 8444)]
    assert parse_nodes(raw, "gw", "") == [("plain", "10.0.2.1", 8443)]  # the nodes of no region
    assert [node for node, _, _ in parse_nodes(raw, "gw")] == ["eu-1", "us-1", "plain", "eu-2"]


def test_nodes_of_other_regions_do_not_use_up_the_cap() -> None:
    others = [
        {"node": f"us-{i}", "tunnel": f"10.0.1.{i % 250}:8443", "region": "us"} for i in range(MAX_NODES * 2)
    ]
    mine = {"node": "eu-1", "tunnel": "10.0.0.1:8443", "region": "eu"}
    assert parse_nodes([*others, mine], "gw", "eu") == [("eu-1", "10.0.0.1", 8443)]
    assert len(parse_nodes([*others, mine], "gw")) == MAX_NODES

"""PAC capabilities and files, without I/O (the e2e market test runs one in node and through curl)."""

from __future__ import annotations

from typing import Any

import pytest

from dashboard import pac
from dashboard.settings import ApiSettings

SECRET = "s" * 40


def test_the_capability_is_bound_to_the_secret_the_account_and_the_order() -> None:
    mine = pac.token(SECRET, "alice", "r1")
    assert len(mine) == 32 and pac.check(SECRET, "alice", "r1", mine)
    assert not pac.check(SECRET, "alice", "r2", mine)
    assert not pac.check(SECRET, "bob", "r1", mine)
    assert not pac.check("t" * 40, "alice", "r1", mine)
    assert pac.path(SECRET, "alice", "r1") == f"/pac/alice/r1/{mine}.pac"


@pytest.mark.parametrize(
    ("account", "order", "token"),
    [("Ω", "r1", "a" * 32), ("alice", "r.1", "a" * 32), ("alice", "r1", "a" * 31), ("alice", "r1", "é" * 32),
     ("a" * 33, "r1", "a" * 32), ("alice", "r" * 65, "a" * 32)],
)  # fmt: skip
def test_check_refuses_malformed_parts_without_raising(account: str, order: str, token: str) -> None:
    assert pac.check(SECRET, account, order, token) is False


def test_render_points_everything_but_local_names_at_the_gateway_and_holds_no_fallback() -> None:
    script = pac.render("gw.example:8080", "alice", "r1")
    assert 'return "PROXY gw.example:8080";' in script
    assert "DIRECT;" not in script.replace('"DIRECT";', "")  # DIRECT only for local names
    assert "alice-order-r1" in script


@pytest.mark.parametrize("address", ["gw.example", 'gw"; alert(1); "x:80', "gw:8080\nfunction", ""])
def test_render_refuses_an_address_that_is_not_host_and_port(address: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        pac.render(address, "alice", "r1")


def _settings(options: dict[str, Any]) -> ApiSettings:
    return ApiSettings(database_url="", redis_url="", jwt_secret=SECRET, **options)


@pytest.mark.parametrize(
    ("options", "bound", "base"),
    [
        ({"public_url": "https://dash.example/"}, None, "https://dash.example"),
        ({"public_url": "https://dash.example", "port": 9000}, 9001, "https://dash.example"),
        ({"host": "10.0.0.5", "port": 9000}, 9001, "http://10.0.0.5:9000"),
        ({"host": "127.0.0.1", "port": 0}, 43210, "http://127.0.0.1:43210"),
        ({"host": "::1", "port": 9000}, None, "http://[::1]:9000"),
    ],
)
def test_base_url_comes_from_the_settings_alone(
    options: dict[str, Any], bound: int | None, base: str
) -> None:
    assert _settings(options).base_url(bound) == base

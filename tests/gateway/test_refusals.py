"""What an HTTP client is answered when the market opens no deal for it: the status, the
``X-IPSX-Error`` reason and a text that says why (no offer at all, none at its prices, none with
room), and how the gateway counts each refusal."""

from __future__ import annotations

import pytest

from gateway.exits import NO_DEAL, NoDeal
from gateway.metrics import REFUSALS, GatewayStats
from gateway.refusals import dial_refusal
from matching.engine import Unmatched


def _answer(reason: str) -> tuple[str, dict[str, str], str]:
    head, _, body = dial_refusal(NoDeal(reason)).response.decode().partition("\r\n\r\n")
    status, *lines = head.split("\r\n")
    return status, dict(line.split(": ", 1) for line in lines), body


@pytest.mark.parametrize(
    ("reason", "status", "code", "says"),
    [
        (
            "no_offer",
            "HTTP/1.1 502 Bad Gateway",
            "no_offer_matches",
            "no offer matches the requested targeting",
        ),
        ("above_price", "HTTP/1.1 502 Bad Gateway", "offers_above_price", "but none at your prices"),
        ("offers_busy", "HTTP/1.1 502 Bad Gateway", "offers_busy", "have no room for another deal now"),
        ("insufficient_funds", "HTTP/1.1 402 Payment Required", "insufficient_funds", "your balance"),
        ("unavailable", "HTTP/1.1 503 Service Unavailable", "market_unavailable", "did not answer"),
        # an answer this gateway does not know (a newer market's): the market is as good as away
        ("made_up", "HTTP/1.1 503 Service Unavailable", "market_unavailable", "did not answer"),
    ],
)
def test_a_market_refusal_says_why(reason: str, status: str, code: str, says: str) -> None:
    shown, headers, body = _answer(reason)
    assert shown == status
    assert headers["X-IPSX-Error"] == code
    assert says in body and body.endswith("\n")


def test_only_no_offer_at_all_speaks_of_any_price() -> None:
    assert "at any price" in _answer("no_offer")[2]
    assert "at any price" not in _answer("above_price")[2] + _answer("offers_busy")[2]


def test_every_reason_the_market_gives_has_an_answer_and_a_counter_of_its_own() -> None:
    stats = GatewayStats()
    for unmatched in Unmatched:
        assert unmatched.value in NO_DEAL
        assert NO_DEAL[unmatched.value][0] == 502 and NO_DEAL[unmatched.value][2] == 3  # SOCKS5 reply 3
        stats.refused(unmatched.value)
        assert stats.refusals[unmatched.value] == 1
    assert set(NO_DEAL) <= set(REFUSALS)
    assert stats.refusals["other"] == 0

"""End-to-end: ban-aware rotation and retry rules, with real clients through the gateway.

Each test uses an account of its own, so the bans it records stay out of the other tests (they
all fetch from the same origin address). The origin's ``/deny/ADDR`` answers 403 to one exit and
``/guard/N/SITE`` plays a site that bans each exit after N requests.
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections import Counter

import pytest
import requests

from tests.e2e.conftest import EXITS, Stack
from tests.e2e.test_proxy import curl

_accounts = itertools.count(1)
ADDRESSES = set(EXITS.values())


class Requester:
    """A fresh account with a proxy key, and requests through the gateway as that account."""

    def __init__(self, stack: Stack, *key_options: str) -> None:
        number = next(_accounts)
        self.stack = stack
        self.name = f"rules{number}"
        # A wallet of its own: other modules' accounts share this stack's database.
        stack.ipsx("account", "create", "--address", "0x" + secrets.token_hex(20), "--name", self.name)
        found = re.search(r"secret: (\S+)", stack.ipsx("key", "create", self.name, *key_options).stdout)
        assert found is not None
        self.secret = found.group(1)

    def proxy(self, suffix: str = "", scheme: str = "http") -> str:
        port = self.stack.http_port if scheme == "http" else self.stack.socks_port
        return f"{scheme}://{self.name}{suffix}:{self.secret}@127.0.0.1:{port}"

    def get(self, path: str, suffix: str = "", headers: dict[str, str] | None = None) -> requests.Response:
        """One request on a connection of its own. ``Connection: close``: a response object the
        test keeps would otherwise keep its connection open, and with it a stream through the exit,
        which rotation then rightly counts as that exit's load."""
        proxy = self.proxy(suffix)
        return requests.get(
            self.stack.origin.url(path),
            proxies={"http": proxy},
            headers={"Connection": "close", **(headers or {})},
            timeout=20,
        )


@pytest.fixture
def requester(stack: Stack) -> Requester:
    return Requester(stack)


def exit_ids(stack: Stack) -> dict[str, str]:
    """Exit id → the exit's source address."""
    return {stack.exit_id(f"agent-{country}", bind): bind for country, bind in EXITS.items()}


# X-IPSX-Exit and X-IPSX-Tries


def test_every_response_names_its_exit_and_one_try(stack: Stack, requester: Requester) -> None:
    ids = exit_ids(stack)
    for _ in range(6):
        response = requester.get("/ip")
        assert response.status_code == 200
        assert ids[response.headers["X-IPSX-Exit"]] == response.text
        assert response.headers["X-IPSX-Tries"] == "1"


def test_kept_alive_responses_each_name_the_exit(stack: Stack, requester: Requester) -> None:
    with requests.Session() as session:
        session.proxies = {"http": requester.proxy("-session-ka")}
        answers = [session.get(stack.origin.url("/ip"), timeout=20) for _ in range(3)]
    assert len({answer.headers["X-IPSX-Exit"] for answer in answers}) == 1
    assert exit_ids(stack)[answers[0].headers["X-IPSX-Exit"]] == answers[0].text


# retry rules


def test_retry_on_403_goes_through_another_exit_and_moves_the_session(requester: Requester) -> None:
    first = requester.get("/ip", "-session-r1").text
    response = requester.get(f"/deny/{first}", "-session-r1", {"X-IPSX-Retry-On": "403,429"})
    assert response.status_code == 200
    assert response.text in ADDRESSES - {first}
    assert response.headers["X-IPSX-Tries"] == "2"
    # The session now lives on the exit that answered.
    assert requester.get("/ip", "-session-r1").text == response.text


def test_a_keys_standing_rules_apply_unless_the_connection_says_otherwise(stack: Stack) -> None:
    scraper = Requester(stack, "--rules", "retryon-403-maxretries-1")
    first = scraper.get("/ip", "-session-k1").text
    retried = scraper.get(f"/deny/{first}", "-session-k1")  # no header: the key's rule retries
    assert (retried.status_code, retried.headers["X-IPSX-Tries"]) == (200, "2")
    second = retried.text
    # The user name (or a header) overrides the key's rule for its connection.
    kept = scraper.get(f"/deny/{second}", "-session-k1-maxretries-0")
    assert (kept.status_code, kept.headers["X-IPSX-Tries"]) == (403, "1")
    refused = stack.ipsx("key", "create", scraper.name, "--rules", "session-s1", check=False)
    assert refused.returncode != 0 and "not a standing rule" in refused.stderr


def test_retry_rule_in_the_username_applies_too(requester: Requester) -> None:
    first = requester.get("/ip", "-session-r2").text
    response = requester.get(f"/deny/{first}", "-session-r2-retryon-403-maxretries-2")
    assert (response.status_code, response.headers["X-IPSX-Tries"]) == (200, "2")


def test_without_a_retry_rule_the_origin_answer_comes_back(requester: Requester) -> None:
    first = requester.get("/ip", "-session-r3").text
    response = requester.get(f"/deny/{first}", "-session-r3")
    assert (response.status_code, response.headers["X-IPSX-Tries"]) == (403, "1")
    zero = requester.get(
        f"/deny/{first}", "-session-r3", {"X-IPSX-Retry-On": "403", "X-IPSX-Max-Retries": "0"}
    )
    assert (zero.status_code, zero.headers["X-IPSX-Tries"]) == (403, "1")


def test_retries_stop_at_the_limit_and_answer_the_last_status(requester: Requester) -> None:
    # Every exit gets a 403 from /status/403: one retry means two exits tried, then the answer.
    response = requester.get("/status/403", "", {"X-IPSX-Retry-On": "403", "X-IPSX-Max-Retries": "1"})
    assert (response.status_code, response.headers["X-IPSX-Tries"]) == (403, "2")
    all_three = requester.get("/status/429", "", {"X-IPSX-Retry-On": "429", "X-IPSX-Max-Retries": "5"})
    # Only three exits exist: after the third the origin's 429 is the answer.
    assert (all_three.status_code, all_three.headers["X-IPSX-Tries"]) == (429, "3")


def test_no_other_exit_means_the_origin_answer(requester: Requester) -> None:
    response = requester.get(f"/deny/{EXITS['fr']}", "-country-fr", {"X-IPSX-Retry-On": "403"})
    assert (response.status_code, response.headers["X-IPSX-Tries"]) == (403, "1")


def test_non_idempotent_methods_are_not_retried(stack: Stack, requester: Requester) -> None:
    # The origin answers PATCH with 501 everywhere: PATCH is not idempotent, so no retry.
    out = curl(
        "-x",
        requester.proxy(),
        "-X",
        "PATCH",
        "-d",
        "x",
        "-H",
        "X-IPSX-Retry-On: 501",
        "-D",
        "-",
        "-o",
        "/dev/null",
        stack.origin.url("/ip"),
    )
    assert out.stdout.startswith("HTTP/1.1 501")
    assert "X-IPSX-Tries: 1" in out.stdout


def test_retried_request_body_reaches_the_second_exit(stack: Stack, requester: Requester) -> None:
    first = requester.get("/ip", "-session-r5").text
    payload = bytes(range(256)) * 40
    response = requests.put(
        stack.origin.url(f"/deny/{first}"),
        data=payload,
        proxies={"http": requester.proxy("-session-r5")},
        headers={"X-IPSX-Retry-On": "403", "Connection": "close"},
        timeout=20,
    )
    assert (response.status_code, response.headers["X-IPSX-Tries"]) == (200, "2")
    assert response.content == payload


def test_a_body_over_the_kept_limit_is_not_retried(stack: Stack, requester: Requester) -> None:
    first = requester.get("/ip", "-session-r6").text
    response = requests.put(
        stack.origin.url(f"/deny/{first}"),
        data=b"x" * (64 * 1024 + 1),  # one byte past the gateway's default retry_body_limit
        proxies={"http": requester.proxy("-session-r6")},
        headers={"X-IPSX-Retry-On": "403", "Connection": "close"},
        timeout=20,
    )
    assert (response.status_code, response.headers["X-IPSX-Tries"]) == (403, "1")


# bans


def test_ban_header_moves_the_session_and_keeps_the_exit_away_from_the_domain(
    stack: Stack, requester: Requester
) -> None:
    banned = requester.get("/ip", "-session-b1").text
    after = requester.get("/ip", "-session-b1", {"X-IPSX-Ban": "1"})
    assert after.status_code == 200
    assert after.text != banned
    # No later connection of this requester to this host uses the banned exit, sticky or not...
    seen = {requester.get("/ip").text for _ in range(12)}
    seen |= {requester.get("/ip", f"-session-other{n}").text for n in range(6)}
    assert seen == ADDRESSES - {banned}
    # ...but another requester still does, and so does another host for this requester.
    other = Requester(stack)
    assert banned in {other.get("/ip").text for _ in range(6)}
    other_host = f"http://localhost:{stack.origin.port}/ip"
    hosts = {curl("-x", requester.proxy(), other_host).stdout for _ in range(9)}
    assert banned in hosts


def test_ban_by_exit_id_without_a_session(stack: Stack, requester: Requester) -> None:
    served = requester.get("/ip")
    exit_id = served.headers["X-IPSX-Exit"]
    requester.get("/ip", "", {"X-IPSX-Ban": exit_id})
    assert served.text not in {requester.get("/ip").text for _ in range(9)}


def test_ban_in_the_username_over_socks5(stack: Stack, requester: Requester) -> None:
    proxy = requester.proxy("-session-b2", scheme="socks5")
    banned = curl("-x", proxy, stack.origin.url("/ip")).stdout
    moved = curl("-x", requester.proxy("-session-b2-ban-1", scheme="socks5"), stack.origin.url("/ip")).stdout
    assert moved in ADDRESSES - {banned}
    assert banned not in {
        curl("-x", proxy.replace("b2", "b3"), stack.origin.url("/ip")).stdout for _ in range(6)
    }


def test_a_username_ban_naming_another_domain_leaves_this_host_alone(requester: Requester) -> None:
    banned = requester.get("/ip", "-session-b4").text
    requester.get("/ip", "-session-b4-ban-shop.example.com")  # bans the session's exit there only
    assert banned in {requester.get("/ip").text for _ in range(6)}


def test_ban_of_the_session_exit_without_a_session_is_a_clear_400(requester: Requester) -> None:
    response = requester.get("/ip", "", {"X-IPSX-Ban": "1"})
    assert response.status_code == 400
    assert response.headers["X-IPSX-Error"] == "bad_ban"
    assert "needs a session" in response.text


def test_malformed_rules_are_400_naming_the_header(requester: Requester) -> None:
    response = requester.get("/ip", "", {"X-IPSX-Retry-On": "forbidden"})
    assert (response.status_code, response.headers["X-IPSX-Error"]) == (400, "bad_targeting")
    assert "X-IPSX-Retry-On" in response.text


def test_all_exits_banned_answers_no_exit(requester: Requester) -> None:
    for n in range(len(ADDRESSES)):
        requester.get("/ip", f"-session-all{n}")
        requester.get("/ip", f"-session-all{n}", {"X-IPSX-Ban": "1"})
    response = requester.get("/ip")
    assert (response.status_code, response.headers["X-IPSX-Error"]) == (502, "no_exit_matches")


def test_bans_accumulating_on_a_guarded_site_spread_the_load(requester: Requester) -> None:
    """A site bans each exit after 4 requests; the scraper bans an exit on its first 403.

    It gets every one of the 12 answers the site will give, no exit after its ban serves it,
    and no exit carries more than its share."""
    served: Counter[str] = Counter()
    banned: set[str] = set()
    ban_next = False
    for _ in range(40):
        headers = {"X-IPSX-Ban": "1"} if ban_next else {}
        response = requester.get("/guard/4/shop", "-session-scraper", headers)
        if response.status_code == 502:
            break  # every exit is banned for this site
        assert response.text not in banned
        if response.status_code == 403:
            ban_next = True
            banned.add(response.text)
            continue
        ban_next = False
        served[response.text] += 1
    assert served == {address: 4 for address in ADDRESSES}

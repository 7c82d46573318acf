"""Exit bans over the live API (httpx against ``ipsx api``), read back from the Redis the
gateway nodes share: what the API records is what selection skips."""

from __future__ import annotations

import re
import secrets

import pytest
import redis

from pool import keys
from pool.bans import BanBook
from tests.dashboard.conftest import REDIS_URL, Api

EXIT = "0123456789abcdef"


def requester(api: Api, scopes: str = "proxy") -> tuple[str, str]:
    name = f"b{secrets.token_hex(4)}"
    api.ipsx("account", "create", "--address", "0x" + secrets.token_hex(20), "--name", name)
    found = re.search(r"secret: (\S+)", api.ipsx("key", "create", name, "--scopes", scopes))
    assert found is not None
    return name, found.group(1)


def banned(account: str, host: str) -> set[str]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        now = client.time()[0]
        found: set[str] = set()
        book_keys = [keys.bans(account, domain) for domain in ("shop.example.com", "example.com")]
        for key in book_keys:
            found |= {member.decode() for member in client.zrangebyscore(key, now, "+inf")}
        return found
    finally:
        client.close()


def bind_session(account: str, session: str, exit_id: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.set(keys.session(account, session), exit_id, ex=600)
    finally:
        client.close()


def test_ban_a_sessions_exit(api: Api) -> None:
    name, secret = requester(api)
    bind_session(name, "s1", EXIT)
    with api.client(secret) as client:
        made = client.post("/v1/sessions/s1/ban", json={"domain": "WWW.Example.com", "ttl": 120})
        assert made.status_code == 201, made.text
        body = made.json()
        assert (body["exit_id"], body["domain"]) == (EXIT, "example.com")
        listed = client.get("/v1/bans", params={"domain": "example.com"}).json()
        assert [ban["exit_id"] for ban in listed["bans"]] == [EXIT]
        assert listed["bans"][0]["until"] == body["until"]
    assert banned(name, "shop.example.com") == {EXIT}


async def test_an_api_ban_is_what_the_gateway_reads() -> None:
    # The book the gateway uses, on the API's Redis: a ban recorded through the API applies to
    # subdomains there (checked through BanBook itself rather than a copy of its rules).
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    try:
        book = BanBook(client, cache_ttl=0)
        await book.ban("someone", "example.com", EXIT, 60)
        assert await book.banned("someone", "a.example.com") == {EXIT}
    finally:
        await client.delete(keys.bans("someone", "example.com"))
        await client.aclose()


def test_ban_by_exit_id_then_lift_it(api: Api) -> None:
    name, secret = requester(api)
    with api.client(secret) as client:
        assert client.post("/v1/bans", json={"exit_id": EXIT, "domain": "example.com"}).status_code == 201
        assert banned(name, "example.com") == {EXIT}
        assert client.delete(f"/v1/bans/example.com/{EXIT}").status_code == 204
        assert client.delete(f"/v1/bans/example.com/{EXIT}").status_code == 404
    assert banned(name, "example.com") == set()


def test_an_unbound_session_is_404(api: Api) -> None:
    _, secret = requester(api)
    with api.client(secret) as client:
        answer = client.post("/v1/sessions/nosuch/ban", json={"domain": "example.com"})
        assert answer.status_code == 404
        assert "not bound" in answer.json()["detail"]
        assert client.post("/v1/sessions/bad-id!/ban", json={"domain": "example.com"}).status_code == 404


@pytest.mark.parametrize(
    ("body", "name"),
    [
        ({"domain": "exa mple.com"}, "domain"),
        ({"domain": "é.com"}, "domain"),
        ({"domain": "x" * 254}, "domain"),
        ({"domain": "example.com", "ttl": 0}, "ttl"),
        ({"domain": "example.com", "ttl": 10**9}, "ttl"),
        ({"domain": "example.com", "ttl": True}, "ttl"),
        ({"domain": "example.com", "ttl": "60"}, "ttl"),
        ({"exit_id": "XYZ", "domain": "example.com"}, "exit_id"),
    ],
)
def test_malformed_bans_are_422_naming_the_field(api: Api, body: dict[str, object], name: str) -> None:
    account, secret = requester(api)
    bind_session(account, "s1", EXIT)
    path = "/v1/bans" if "exit_id" in body else "/v1/sessions/s1/ban"
    with api.client(secret) as client:
        answer = client.post(path, json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == name
    assert banned(account, "example.com") == set()


def test_bans_need_the_proxy_scope_and_are_per_account(api: Api) -> None:
    name, secret = requester(api, "read")
    with api.client(secret) as client:
        assert client.post("/v1/bans", json={"exit_id": EXIT, "domain": "example.com"}).status_code == 403
    other, other_secret = requester(api)
    bind_session(name, "s1", EXIT)  # another account's session of the same id is not this one's
    with api.client(other_secret) as client:
        assert client.post("/v1/sessions/s1/ban", json={"domain": "example.com"}).status_code == 404
        client.post("/v1/bans", json={"exit_id": EXIT, "domain": "example.com"})
    assert banned(other, "example.com") == {EXIT}
    assert banned(name, "example.com") == set()


def test_listing_bans_refuses_unknown_or_repeated_parameters(api: Api) -> None:
    _, secret = requester(api)
    with api.client(secret) as client:
        assert client.get("/v1/bans", params={"domain": "example.com", "limit": "5"}).status_code == 400
        repeated = client.get("/v1/bans", params=[("domain", "a.com"), ("domain", "b.com")])
        assert repeated.status_code == 400
        assert client.get("/v1/bans", params={"domain": "example.com"}).status_code == 200

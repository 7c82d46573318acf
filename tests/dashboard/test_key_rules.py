"""An API key's standing rules over the live API: made with the key, shown with it, refused with
the field named when the gateway would refuse them."""

from __future__ import annotations

import re
import secrets

import pytest

from tests.dashboard.conftest import Api


def owner(api: Api) -> str:
    name = f"r{secrets.token_hex(4)}"
    api.ipsx("account", "create", "--address", "0x" + secrets.token_hex(20), "--name", name)
    found = re.search(r"secret: (\S+)", api.ipsx("key", "create", name, "--scopes", "proxy,read,keys"))
    assert found is not None
    return found.group(1)


def test_a_key_made_with_rules_shows_them(api: Api) -> None:
    rules = {"retry_on": [429, 403], "max_retries": 2, "country": "fr", "type": "mobile", "session_ttl": 90}
    with api.client(owner(api)) as client:
        made = client.post("/v1/keys", json={"label": "scraper", "rules": rules})
        assert made.status_code == 201, made.text
        assert made.json()["rules"] == {**rules, "retry_on": [403, 429]}
        listed = {key["key_id"]: key for key in client.get("/v1/keys").json()["items"]}
        assert listed[made.json()["key_id"]]["rules"] == {**rules, "retry_on": [403, 429]}
        plain = client.post("/v1/keys", json={"label": "plain"}).json()
        assert plain["rules"] is None
        assert client.post("/v1/keys", json={"rules": {}}).json()["rules"] is None


@pytest.mark.parametrize(
    "rules",
    [
        {"retry_on": [99]},
        {"retry_on": []},
        {"retry_on": ["403"]},
        {"max_retries": 6},
        {"max_retries": True},
        {"country": "france"},
        {"country": "f-r"},
        {"type": "cable"},
        {"session_ttl": 0},
        {"session": "s1"},
        {"ban": "1"},
    ],
)
def test_rules_the_gateway_would_refuse_are_422(api: Api, rules: dict[str, object]) -> None:
    with api.client(owner(api)) as client:
        before = len(client.get("/v1/keys").json()["items"])
        answer = client.post("/v1/keys", json={"rules": rules})
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == "rules"
        assert len(client.get("/v1/keys").json()["items"]) == before  # nothing made

"""The SDK's token stays with the API: a redirect to another scheme, host or port is not
followed (urllib would copy the Authorization header there); one within the API's origin is.
Two real HTTP servers on loopback addresses."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler

import pytest

from ipsx.sdk import Client, RedirectRefused
from tests.loopback_http import send, serving

TOKEN = "ipsx_0123456789ab_TOPSECRET"


def test_a_redirect_to_another_host_is_refused_and_the_other_host_sees_nothing() -> None:
    with serving("127.0.0.2", lambda h: send(h, 200, b"{}")) as other:
        location = other.url.replace("http://", "http://user:hunter2@") + "/steal?token=QUERYSECRET"
        with (
            serving("127.0.0.1", lambda h: send(h, 302, Location=location)) as api,
            pytest.raises(RedirectRefused) as refused,
        ):
            Client(api.url, token=TOKEN).me()
    assert other.seen == []
    assert api.seen == [("GET", "/v1/me", f"Bearer {TOKEN}")]
    assert (refused.value.status, refused.value.code, refused.value.location) == (
        302,
        "redirect_refused",
        other.url,
    )
    message = str(refused.value)
    assert f"redirected to {other.url}, another origin" in message
    for secret in ("TOPSECRET", "hunter2", "QUERYSECRET", "/steal"):
        assert secret not in message


@pytest.mark.parametrize("change", ["port", "scheme"])
def test_a_redirect_to_another_port_or_scheme_of_the_same_host_is_refused(change: str) -> None:
    with serving("127.0.0.1", lambda h: send(h, 200, b"{}")) as other:
        target: list[str] = []
        with serving("127.0.0.1", lambda h: send(h, 307, Location=target[0])) as api:
            target.append(other.url if change == "port" else api.url.replace("http:", "https:"))
            with pytest.raises(RedirectRefused) as refused:
                Client(api.url, token=TOKEN).me()
    assert other.seen == []
    assert refused.value.status == 307
    assert refused.value.location == target[0]


def test_a_redirect_within_the_api_is_followed_with_the_token() -> None:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        if handler.path == "/v1/me":
            send(handler, 301, Location="/v1/me/")
        else:
            send(handler, 200, b'{"name": "alice"}')

    with serving("127.0.0.1", answer) as api:
        assert Client(api.url, token=TOKEN).me() == {"name": "alice"}
    assert api.seen == [("GET", "/v1/me", f"Bearer {TOKEN}"), ("GET", "/v1/me/", f"Bearer {TOKEN}")]


def test_a_redirect_urllib_does_not_follow_is_a_clear_error_too() -> None:
    with (
        serving("127.0.0.1", lambda h: send(h, 307, Location="/v1/keys/")) as api,
        pytest.raises(RedirectRefused) as refused,
    ):
        Client(api.url, token=TOKEN).create_key("laptop")  # a POST is not re-sent on a 307
    assert api.seen == [("POST", "/v1/keys", f"Bearer {TOKEN}")]
    assert "not followed for this request" in str(refused.value)

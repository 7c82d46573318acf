"""A white-label listener's brand (``gateway.front.Brand``): the request headers it reads under its
own name, and the error responses it rewrites so that they name no platform."""

from __future__ import annotations

from gateway.front import PLATFORM, Brand
from gateway.http1 import RequestHead
from gateway.http1_write import error_response
from gateway.targeting import is_header_key


def _head(*headers: tuple[str, str]) -> RequestHead:
    return RequestHead("GET", "http://example.com/", "HTTP/1.1", list(headers))


def test_own_headers_reads_the_brands_targeting_and_rule_headers_as_the_platforms() -> None:
    head = _head(
        ("x-acmeproxy-country", "de"),
        ("X-AcmeProxy-Retry-On", "403"),
        ("X-AcmeProxy-Colour", "red"),  # not a header the gateway reads: the client's own
        ("X-Other", "1"),
    )
    Brand("Acme Proxy", "AcmeProxy").own_headers(head)
    assert head.headers == [
        ("X-IPSX-country", "de"),
        ("X-IPSX-Retry-On", "403"),
        ("X-AcmeProxy-Colour", "red"),
        ("X-Other", "1"),
    ]


def test_own_headers_leaves_common_headers_alone_whatever_the_brand_is_called() -> None:
    head = _head(("X-Request-ID", "abc"), ("X-Request-Session", "s1"))
    Brand("Request", "Request").own_headers(head)
    assert head.headers == [("X-Request-ID", "abc"), ("X-IPSX-Session", "s1")]
    platform = _head(("X-Request-Session", "s1"))
    PLATFORM.own_headers(platform)  # the platform's own listener reads X-IPSX-* only
    assert platform.headers == [("X-Request-Session", "s1")]


def test_is_header_key_knows_the_user_name_keys_with_or_without_dashes() -> None:
    assert all(is_header_key(k) for k in ("Country", "session", "Retry-On", "maxretries", "Ban"))
    assert not any(is_header_key(k) for k in ("ID", "Colour", "For", ""))


def test_rewrite_names_the_brand_and_never_the_platform() -> None:
    refused = error_response(
        400, "bad X-IPSX-Country: unknown country", headers=[("X-IPSX-Error", "bad_targeting")]
    )
    text = Brand("Acme Proxy", "AcmeProxy").rewrite(refused).decode()
    assert text.startswith("HTTP/1.1 400 ")
    assert "X-AcmeProxy-Error: bad_targeting" in text and "X-AcmeProxy-Country" in text
    assert "ipsx" not in text.lower()
    assert PLATFORM.rewrite(refused) == refused

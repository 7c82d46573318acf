"""Unit tests of targeting: the proxy username, X-IPSX-* headers and Basic credentials."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import targeting
from gateway.targeting import (
    Targeting,
    TargetingError,
    apply_headers,
    parse_basic_credentials,
    parse_price,
    parse_username,
)
from pool.models import ExitFilters

IPSX = 10**18


def targeting_error(username: str) -> TargetingError:
    with pytest.raises(TargetingError) as info:
        parse_username(username)
    return info.value


def header_error(headers: list[tuple[str, str]]) -> TargetingError:
    with pytest.raises(TargetingError) as info:
        apply_headers(Targeting("alice"), headers)
    return info.value


# --- parse_username -----------------------------------------------------------------------------


def test_parse_username_spec_example() -> None:
    assert parse_username("alice-country-fr-session-s1") == Targeting(
        account="alice", filters=ExitFilters(country="fr"), session="s1"
    )


def test_parse_username_account_only_is_lower_cased() -> None:
    assert parse_username("Alice_01") == Targeting(account="alice_01")


def test_parse_username_every_key() -> None:
    username = (
        "Bob_1-country-FR-region-Ile_De_France-city-Paris-asn-AS3215-type-Mobile-session-AbC123"
        "-sessttl-600-deal-Deal_42-order-r19c_0001-maxprice-2.5-proto-SOCKS5"
    )
    assert parse_username(username) == Targeting(
        account="bob_1",
        filters=ExitFilters(country="fr", region="ile_de_france", city="paris", asn=3215, type="mobile"),
        session="AbC123",
        sessttl=600,
        deal="Deal_42",
        order="r19c_0001",
        maxprice=2 * IPSX + IPSX // 2,
        proto="socks5",
    )


def test_parse_username_keys_are_case_insensitive() -> None:
    assert parse_username("alice-COUNTRY-de").filters.country == "de"


def test_parse_username_session_keeps_case() -> None:
    assert parse_username("alice-session-MiXeD9").session == "MiXeD9"


@pytest.mark.parametrize(
    ("value", "asn"), [("13335", 13335), ("as13335", 13335), ("AS1", 1), ("4294967295", 4294967295)]
)
def test_parse_username_asn(value: str, asn: int) -> None:
    assert parse_username(f"alice-asn-{value}").filters.asn == asn


@pytest.mark.parametrize(("value", "seconds"), [("1", 1), ("86400", 86400), ("0600", 600)])
def test_parse_username_sessttl(value: str, seconds: int) -> None:
    assert parse_username(f"alice-sessttl-{value}").sessttl == seconds


@pytest.mark.parametrize("kind", ["residential", "mobile", "datacenter"])
def test_parse_username_type(kind: str) -> None:
    assert parse_username(f"alice-type-{kind}").filters.type == kind


@pytest.mark.parametrize("proto", ["http", "https", "socks5"])
def test_parse_username_proto(proto: str) -> None:
    assert parse_username(f"alice-proto-{proto}").proto == proto


@pytest.mark.parametrize(
    ("text", "units"),
    [
        ("1", IPSX),
        ("2.5", 2 * IPSX + 5 * 10**17),
        ("0.000000000000000001", 1),
        ("0.123456789012345678", 123456789012345678),
        ("100000000", 10**8 * IPSX),
        ("007.10", 7 * IPSX + 10**17),
    ],
)
def test_parse_price_exact(text: str, units: int) -> None:
    assert parse_price(text) == units
    assert parse_username(f"alice-maxprice-{text}").maxprice == units


@pytest.mark.parametrize(
    "text", ["0", "0.0", "1.0000000000000000001", "1e3", ".5", "5.", "1.2.3", "1,5", "\u0661", " 1", "inf"]
)
def test_parse_price_invalid_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_price(text)


def test_parse_price_too_many_decimals_says_so() -> None:
    error = targeting_error("alice-maxprice-0.0000000000000000001")
    assert error.key == "maxprice"
    assert "more than 18 decimal places" in error.reason


@pytest.mark.parametrize(
    ("username", "key", "reason_part"),
    [
        ("alice-country-fra", "country", "2-letter ISO 3166-1"),
        ("alice-country-f1", "country", "2-letter ISO 3166-1"),
        ("alice-country-zz", "country", "'zz' is no ISO 3166-1 country code"),
        ("alice-country-uk", "country", "'uk' is no ISO 3166-1 country code (the United Kingdom is 'gb')"),
        ("alice-region-" + "r" * 65, "region", "1 to 64"),
        ("alice-city-new.york", "city", "1 to 64"),
        ("alice-asn-0", "asn", "AS number"),
        ("alice-asn-4294967296", "asn", "AS number"),
        ("alice-asn-as", "asn", "AS number"),
        ("alice-asn-12345678901", "asn", "AS number"),
        ("alice-type-satellite", "type", "datacenter, mobile, residential"),
        ("alice-session-s_1", "session", "1 to 32"),
        ("alice-session-" + "s" * 33, "session", "1 to 32"),
        ("alice-sessttl-0", "sessttl", "1 to 86400"),
        ("alice-sessttl-86401", "sessttl", "1 to 86400"),
        ("alice-sessttl-1h", "sessttl", "1 to 86400"),
        ("alice-deal-d.1", "deal", "deal id"),
        ("alice-order-r.1", "order", "order id"),
        ("alice-order-" + "r" * 65, "order", "order id"),
        ("alice-maxprice-0", "maxprice", "greater than 0"),
        ("alice-maxprice-cheap", "maxprice", "decimal amount"),
        ("alice-proto-ftp", "proto", "http, https, socks5"),
        ("alice-colour-red", "colour", "unknown key"),
        ("alice-country", "country", "missing value"),
        ("alice-country-", "country", "missing value"),
        ("alice-country-fr-session", "session", "missing value"),
        ("alice-country-fr-country-de", "country", "repeated key"),
        ("alice-Country-fr-country-de", "country", "repeated key"),
        ("alice--fr", "", "empty key"),
        ("", "account", "1 to 32"),
        ("al ice", "account", "1 to 32"),
        ("a" * 33, "account", "1 to 32"),
        ("alice!", "account", "1 to 32"),
        ("-country-fr", "account", "1 to 32"),
        ("a" * 513, "username", "longer than 512"),
    ],
)
def test_parse_username_errors_name_key_and_reason(username: str, key: str, reason_part: str) -> None:
    error = targeting_error(username)
    assert error.key == key
    assert reason_part in error.reason


def test_parse_username_rejects_unicode_lookalikes() -> None:
    assert targeting_error("\u212aate").key == "account"  # KELVIN SIGN lower-cases to ASCII 'k'
    assert targeting_error("alice-country-\u212ar").key == "country"
    assert targeting_error("alice-asn-\u0661\u0662").key == "asn"  # Arabic-Indic digits


def test_parse_username_max_length_is_accepted() -> None:
    username = "alice-session-s1-" + "-".join(["deal", "d" * 64, "city", "c" * 64])
    assert len(username) <= 512
    assert parse_username(username).deal == "d" * 64


def test_targeting_error_str_names_key_and_reason() -> None:
    error = targeting_error("alice-country-fra")
    assert str(error) == "bad targeting key 'country': expected a 2-letter ISO 3166-1 code, got 'fra'"


def test_targeting_error_sanitizes_and_clips_input() -> None:
    error = targeting_error("alice-" + "\x00\x1b[31m\u2603" + "k" * 100 + "-x")
    assert error.reason == "unknown key"
    assert len(error.key) <= 43
    assert error.key.isascii() and error.key.isprintable()
    assert error.key.startswith("??[31m?kkk") and error.key.endswith("...")
    value_error = targeting_error("alice-city-" + "\u00e9" * 100)
    assert "\u00e9" not in str(value_error)
    assert str(value_error).count("?") == 40


# --- apply_headers ------------------------------------------------------------------------------


def test_apply_headers_overrides_username_values() -> None:
    base = parse_username("alice-country-fr-session-s1-sessttl-60")
    headers = [
        ("Host", "example.com"),
        ("X-IPSX-Country", "DE"),
        ("x-ipsx-session", "s2"),
        ("X-Ipsx-City", "Berlin"),
    ]
    assert apply_headers(base, headers) == Targeting(
        account="alice", filters=ExitFilters(country="de", city="berlin"), session="s2", sessttl=60
    )


def test_apply_headers_every_header() -> None:
    headers = [
        ("X-IPSX-Country", "fr"),
        ("X-IPSX-Region", "idf"),
        ("X-IPSX-City", "paris"),
        ("X-IPSX-Asn", "AS3215"),
        ("X-IPSX-Type", "residential"),
        ("X-IPSX-Session", "abc"),
        ("X-IPSX-Sessttl", "30"),
        ("X-IPSX-Deal", "deal_1"),
        ("X-IPSX-Order", "r1"),
        ("X-IPSX-Maxprice", "0.5"),
        ("X-IPSX-Proto", "https"),
    ]
    assert apply_headers(Targeting("alice"), headers) == Targeting(
        account="alice",
        filters=ExitFilters(country="fr", region="idf", city="paris", asn=3215, type="residential"),
        session="abc",
        sessttl=30,
        deal="deal_1",
        order="r1",
        maxprice=IPSX // 2,
        proto="https",
    )


def test_apply_headers_without_control_headers_returns_same_object() -> None:
    base = parse_username("alice-country-fr")
    assert apply_headers(base, [("Host", "example.com"), ("X-IPS", "1"), ("Accept", "*/*")]) is base


def test_apply_headers_strips_value_whitespace() -> None:
    assert apply_headers(Targeting("alice"), [("X-IPSX-Country", " fr ")]).filters.country == "fr"


@pytest.mark.parametrize(
    ("headers", "key", "reason_part"),
    [
        ([("X-IPSX-Colour", "red")], "X-IPSX-Colour", "unknown header"),
        ([("X-IPSX-", "x")], "X-IPSX-", "unknown header"),
        ([("X-IPSX-Ban", "2")], "X-IPSX-Ban", "an exit id from X-IPSX-Exit"),
        ([("X-IPSX-Retry-On", "403;429")], "X-IPSX-Retry-On", "comma-separated"),
        ([("X-IPSX-Max-Retries", "6")], "X-IPSX-Max-Retries", "from 0 to 5"),
        ([("X-IPSX-Country", "france")], "X-IPSX-Country", "2-letter"),
        ([("X-IPSX-Asn", "x")], "X-IPSX-Asn", "AS number"),
        ([("X-IPSX-Maxprice", "-1")], "X-IPSX-Maxprice", "decimal amount"),
        ([("X-IPSX-Session", "")], "X-IPSX-Session", "missing value"),
        ([("X-IPSX-Country", "fr"), ("x-ipsx-country", "de")], "x-ipsx-country", "repeated header"),
    ],
)
def test_apply_headers_errors_name_header_and_reason(
    headers: list[tuple[str, str]], key: str, reason_part: str
) -> None:
    error = header_error(headers)
    assert error.key == key
    assert reason_part in error.reason


def test_apply_headers_passthrough_control_headers_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(targeting, "PASSTHROUGH_CONTROL_HEADERS", frozenset({"x-ipsx-trace"}))
    base = Targeting("alice")
    assert apply_headers(base, [("X-IPSX-Trace", "example.com")]) == base
    assert apply_headers(base, [("X-IPSX-Trace", "x"), ("X-IPSX-Type", "mobile")]).filters.type == "mobile"


# --- parse_basic_credentials --------------------------------------------------------------------


def basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode("ascii")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (basic(b"alice-country-fr:s3cret"), ("alice-country-fr", "s3cret")),
        ("bAsIc  " + base64.b64encode(b"a:b").decode(), ("a", "b")),
        (basic(b"a:b:c") + "  ", ("a", "b:c")),
        (basic(b":pw"), ("", "pw")),
        (basic("j\u00fcrgen:p\u00e4ss".encode()), ("j\u00fcrgen", "p\u00e4ss")),
    ],
)
def test_parse_basic_credentials_valid(value: str, expected: tuple[str, str]) -> None:
    assert parse_basic_credentials(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Basic",
        "Basic ",
        "Bearer " + base64.b64encode(b"a:b").decode(),
        "Basic !!!!",
        "Basic YWxpY2U6c2VjcmV0a",  # bad padding
        basic(b"no-colon"),
        basic(b"\xff\xfe:pw"),
        "Basic YWxp\u00e9Y2U6",
        "Digest username=alice",
    ],
)
def test_parse_basic_credentials_invalid_is_none(value: str) -> None:
    assert parse_basic_credentials(value) is None


# --- property tests -----------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=120))
def test_parse_username_random_text_only_raises_targeting_error(username: str) -> None:
    try:
        result = parse_username(username)
    except TargetingError as error:
        assert len(error.key) <= 43 and error.key.isascii()
    else:
        assert result.account == result.account.lower() and 1 <= len(result.account) <= 32


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["X-IPSX-Country", "x-ipsx-asn", "X-IPSX-Maxprice", "X-IPSX-Other", "Accept"]),
            st.text(max_size=30),
        ),
        max_size=4,
    )
)
def test_apply_headers_random_values_only_raise_targeting_error(headers: list[tuple[str, str]]) -> None:
    try:
        apply_headers(Targeting("alice"), headers)
    except TargetingError as error:
        assert error.key.lower().startswith("x-ipsx-")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_parse_basic_credentials_random_text_never_raises(value: str) -> None:
    result = parse_basic_credentials(value)
    assert result is None or isinstance(result, tuple)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=10**20), st.integers(min_value=0, max_value=18))
def test_parse_price_round_trips_decimal_text(units: int, decimals: int) -> None:
    scaled = units * 10 ** (18 - decimals)
    text = f"{scaled // IPSX}.{scaled % IPSX:018d}"[: -(18 - decimals) or None].rstrip(".")
    assert parse_price(text) == scaled


# --- scraper rules: ban, retryon, maxretries ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", "1"),
        ("0123456789ABCDEF", "0123456789abcdef"),
        ("Shop.Example.com", "shop.example.com"),
        ("example.co.uk", "example.co.uk"),
    ],
)
def test_ban_accepts_session_exit_exit_id_or_domain(value: str, expected: str) -> None:
    assert parse_username(f"alice-ban-{value}").ban == expected
    assert apply_headers(Targeting("alice"), [("X-IPSX-Ban", value)]).ban == expected


@pytest.mark.parametrize(
    "value", ["0", "2", "yes", "0123456789abcde", "localhost", "a..b", "ex_ample.", "é.com", "\u212a.com"]
)
def test_ban_refuses_anything_else(value: str) -> None:
    error = header_error([("X-IPSX-Ban", value)])
    assert error.key == "X-IPSX-Ban"
    assert "exit id" in error.reason


def test_retry_rules_from_username_and_headers() -> None:
    t = parse_username("alice-retryon-403,429-maxretries-2")
    assert (t.retryon, t.maxretries) == (frozenset({403, 429}), 2)
    overridden = apply_headers(t, [("X-IPSX-Retry-On", "503, 502"), ("X-IPSX-Max-Retries", "0")])
    assert (overridden.retryon, overridden.maxretries) == (frozenset({502, 503}), 0)
    # Both header spellings name the same key, so giving both is a repetition.
    assert header_error([("X-IPSX-Retry-On", "403"), ("X-IPSX-RetryOn", "429")]).reason == "repeated header"


@pytest.mark.parametrize("value", ["", "600", "99", "403,", "403,,429", "4O3", ",".join(["403"] * 17)])
def test_retryon_refuses_malformed_lists(value: str) -> None:
    error = header_error([("X-IPSX-Retry-On", value)])
    assert error.key == "X-IPSX-Retry-On"


def test_headers_keep_the_api_key_the_username_was_checked_with() -> None:
    checked = Targeting("alice", key="k1")
    assert apply_headers(checked, [("X-IPSX-Country", "fr")]).key == "k1"


# --- an API key's standing rules --------------------------------------------------------------------


def test_parse_rules_reads_the_keys_a_key_may_set() -> None:
    rules = targeting.parse_rules("retryon-403,429-maxretries-2-country-FR-type-mobile-sessttl-90")
    assert rules.account == ""
    assert (rules.retryon, rules.maxretries) == (frozenset({403, 429}), 2)
    assert (rules.filters.country, rules.filters.type, rules.sessttl) == ("fr", "mobile", 90)
    assert targeting.parse_rules("") == Targeting("")


@pytest.mark.parametrize("key", ["session", "deal", "order", "ban", "maxprice", "proto"])
def test_parse_rules_refuses_what_belongs_to_one_connection(key: str) -> None:
    with pytest.raises(TargetingError) as raised:
        targeting.parse_rules(f"country-fr-{key}-1")
    assert raised.value.key == key
    assert "per connection" in raised.value.reason


@pytest.mark.parametrize(
    ("text", "key"),
    [("retryon-abc", "retryon"), ("colour-red", "colour"), ("country", "country"), ("x" * 201, "rules")],
)
def test_parse_rules_refuses_malformed_text(text: str, key: str) -> None:
    with pytest.raises(TargetingError) as raised:
        targeting.parse_rules(text)
    assert raised.value.key == key


def test_with_rules_fills_only_what_the_connection_leaves_unset() -> None:
    rules = targeting.parse_rules("retryon-403-maxretries-2-country-fr-sessttl-60")
    mine = targeting.with_rules(parse_username("alice-country-de-session-s1-maxretries-0"), rules)
    assert (mine.account, mine.session, mine.filters.country) == ("alice", "s1", "de")
    assert (mine.retryon, mine.maxretries, mine.sessttl) == (frozenset({403}), 0, 60)
    # Headers still come last and override both.
    assert apply_headers(mine, [("X-IPSX-Retry-On", "429")]).retryon == frozenset({429})
    assert targeting.with_rules(parse_username("bob"), Targeting("")) == parse_username("bob")

"""Log output: JSON lines with their fields and the request id, and no secret in any format.

Records go through the handler ``ipsx.logs.make_handler`` builds, into a string buffer; the
process-wide setup (``runtime.setup_logging``, IPSX_LOG_FORMAT) runs in a child process so the
test session's logging is left alone.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from ipsx import logs

API_KEY = "ipsx_0123456789ab_" + "Zx9-_" * 6 + "Qq"  # the shape accounts.create_key gives
PRIVATE_KEY = "0x" + "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
JWT = jwt.encode({"sub": "0xabc", "exp": 2_000_000_000}, "k" * 32, algorithm="HS256")
PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
SECRETS = (
    "Zx9-_Zx9-_",  # the random part of API_KEY
    PRIVATE_KEY[2:],
    JWT,
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
    "hunter2",
    "s3cr3t-db",
    "dXNlcjpwYXNzd29yZA",
    "sk-live-42",
)


class Capture:
    def __init__(self, log_format: str) -> None:
        self.buffer = io.StringIO()
        self.logger = logging.getLogger(f"ipsx.test.{log_format}")
        self.logger.handlers = [logs.make_handler(log_format, self.buffer)]
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False

    def lines(self) -> list[str]:
        return self.buffer.getvalue().splitlines()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]


@pytest.fixture
def json_log() -> Iterator[Capture]:
    capture = Capture("json")
    yield capture
    capture.logger.handlers = []


@pytest.fixture
def text_log() -> Iterator[Capture]:
    capture = Capture("text")
    yield capture
    capture.logger.handlers = []


def test_json_line_fields(json_log: Capture) -> None:
    json_log.logger.info("stream %s closed after %d bytes", "abc", 42, extra={"exit_id": "e1", "bytes": 42})
    [record] = json_log.records()
    assert record["level"] == "INFO"
    assert record["logger"] == "ipsx.test.json"
    assert record["message"] == "stream abc closed after 42 bytes"
    assert record["exit_id"] == "e1"
    assert record["bytes"] == 42
    assert record["time"].endswith("Z") and "T" in record["time"]
    assert "request_id" not in record  # no request is being served


def test_json_line_carries_the_request_id_of_the_context(json_log: Capture) -> None:
    token = logs.REQUEST_ID.set("req-42")
    try:
        json_log.logger.warning("inside")
    finally:
        logs.REQUEST_ID.reset(token)
    json_log.logger.warning("outside")
    inside, outside = json_log.records()
    assert inside["request_id"] == "req-42"
    assert "request_id" not in outside


def test_json_line_holds_the_exception_and_odd_values(json_log: Capture) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        json_log.logger.exception("failed", extra={"when": object(), "by_exit": {7: "x"}})
    json_log.logger.info("credited", extra={"amount": 25 * 10**18})  # past 64 bits
    record, credited = json_log.records()
    assert record["level"] == "ERROR"
    assert "RuntimeError: boom" in record["exc"]
    assert record["when"].startswith("<object object")  # not JSON: written as a string
    assert record["by_exit"] == {"7": "x"}
    assert credited["amount"] == 25 * 10**18


@pytest.mark.parametrize(
    ("message", "kept"),
    [
        (f"key {API_KEY} refused", "key ipsx_0123456789ab_[REDACTED] refused"),
        (f"wallet {PRIVATE_KEY}", "wallet [REDACTED]"),
        (f"token {JWT}", "token [REDACTED]"),
        (f"key file:\n{PEM}\n", "key file:\n[REDACTED]\n"),
        ("redis at redis://:hunter2@cache:6379/0", "redis at redis://:[REDACTED]@cache:6379/0"),
        ("db postgresql://ipsx:s3cr3t-db@db/ipsx down", "db postgresql://ipsx:[REDACTED]@db/ipsx down"),
        ("Proxy-Authorization: Basic dXNlcjpwYXNzd29yZA==", "Proxy-Authorization: [REDACTED]"),
        ("headers {'authorization': 'Bearer sk-live-42'}", "headers {'authorization': '[REDACTED]'}"),
        ("sent Basic dXNlcjpwYXNzd29yZA== upstream", "sent Basic [REDACTED] upstream"),
        ("login password=hunter2 user=bob", "login password=[REDACTED] user=bob"),
        ('{"api_key": "sk-live-42"}', '{"api_key": "[REDACTED]"}'),
    ],
)
def test_redact(message: str, kept: str) -> None:
    assert logs.redact(message) == kept


@pytest.mark.parametrize(
    ("message", "kept"),
    [
        # an unencoded "@" in the password: all of it goes, up to the authority's last "@"
        (
            "dsn postgresql://admin:p@ssw0rd@db:5432/ipsx",
            "dsn postgresql://admin:[REDACTED]@db:5432/ipsx",
        ),
        ("redis://:a@b@c@cache:6379/0 down", "redis://:[REDACTED]@cache:6379/0 down"),
        ("postgresql://ipsx:pa%40ss@db/x", "postgresql://ipsx:[REDACTED]@db/x"),  # percent-encoded
        # ... but not past the authority: an "@" later in the path or query is no password's
        ("http://gw/x?mail=a@b.example", "http://gw/x?mail=a@b.example"),
        ("http://[::1]:8080/x?mail=a@b.example", "http://[::1]:8080/x?mail=a@b.example"),
        # node providers' RPC URLs with the API key as a path segment
        (
            "rpc https://mainnet.infura.io/v3/0123456789abcdef0123456789abcdef failed",
            "rpc https://mainnet.infura.io/v3/[REDACTED] failed",
        ),
        (
            "rpc https://eth-mainnet.g.alchemy.com/v2/AbCdEfGhIjKlMnOpQrStUvWxYz012345",
            "rpc https://eth-mainnet.g.alchemy.com/v2/[REDACTED]",
        ),
        ("wss://eth.example/v2/Ab_Cd-Ef01234567890xyz/ws", "wss://eth.example/v2/[REDACTED]/ws"),
        # a quoted value goes whole, spaces and all, quotes kept
        (
            "dsn host=db user=u password='my secret pw' dbname=x",
            "dsn host=db user=u password='[REDACTED]' dbname=x",
        ),
        ("{'password': 'hunter2 two'}", "{'password': '[REDACTED]'}"),
        ('{"secret": "a \\"quoted\\" b", "n": 1}', '{"secret": "[REDACTED]", "n": 1}'),
        (
            "headers {'authorization': 'Digest username=x, response=y'}",
            "headers {'authorization': '[REDACTED]'}",
        ),
        ("password='unterminated secret\nnext", "password='[REDACTED]\nnext"),
        ("passphrase: hello", "passphrase: [REDACTED]"),
    ],
)
def test_redact_whole_secrets(message: str, kept: str) -> None:
    assert logs.redact(message) == kept


@pytest.mark.parametrize(
    ("message", "kept"),
    [
        # an unencoded "/", "?" or "#" in the password: all of it goes, up to the word's last "@"
        (
            "dsn postgresql://ipsx:pa/ss#w@db:5432/ipsx down",
            "dsn postgresql://ipsx:[REDACTED]@db:5432/ipsx down",
        ),
        ("redis://:se/cr#et@host:6379/0 refused", "redis://:[REDACTED]@host:6379/0 refused"),
        ("postgresql://ipsx:pa?ss@db/x", "postgresql://ipsx:[REDACTED]@db/x"),
        ("redis://:a/b@c/d@host:6379/0", "redis://:[REDACTED]@host:6379/0"),
        ("redis://:1/x@host:6379/0", "redis://:[REDACTED]@host:6379/0"),  # no host, so "1" is no port
        ("postgresql://ipsx:pa/ss@[::1]:5432/ipsx", "postgresql://ipsx:[REDACTED]@[::1]:5432/ipsx"),
        ("postgresql://ipsx:pa/ss@w@db/x", "postgresql://ipsx:[REDACTED]@db/x"),  # the last "@" ends it
        # ambiguous (a "/" in the password, an "@" in the query): the path goes with the password
        ("postgresql://u:p/w@db/x?to=a@b.example", "postgresql://u:[REDACTED]@b.example"),
        # user:password@host without a scheme
        ("connecting to ipsx:hunter2@db:5432", "connecting to ipsx:[REDACTED]@db:5432"),
        ("connecting to ipsx:pa/ss#w@db:5432", "connecting to ipsx:[REDACTED]@db:5432"),
        ("dsn=ipsx:hunter2@db,retry", "dsn=ipsx:[REDACTED]@db,retry"),
        ('{"dsn": "ipsx:s3cr3t-db@[::1]:5432"}', '{"dsn": "ipsx:[REDACTED]@[::1]:5432"}'),
        (
            f"curl -x alice-country-fr:{API_KEY}@127.0.0.1:8080",
            "curl -x alice-country-fr:[REDACTED]@127.0.0.1:8080",
        ),
        ("redis://:a@h1,redis://:b/c@h2 down", "redis://:[REDACTED]@h1,redis://:[REDACTED]@h2 down"),
    ],
)
def test_redact_user_info_passwords_with_slashes_and_without_a_scheme(message: str, kept: str) -> None:
    assert logs.redact(message) == kept


@pytest.mark.parametrize(
    ("message", "kept"),
    [
        # digits before a "/": a port and a path, or a password; the password's reading wins
        ("u:1234/x@h", "u:[REDACTED]@h"),
        ("connecting to ipsx:1234/x@db:5432", "connecting to ipsx:[REDACTED]@db:5432"),
        ("redis://u:1234/x@h:6379/0 refused", "redis://u:[REDACTED]@h:6379/0 refused"),
        ("redis://u:80/x@h", "redis://u:[REDACTED]@h"),
        # spaces in the password (URL parsers take them), on the line of a URL with a scheme
        ("connect to redis://user:secret pass@host", "connect to redis://user:[REDACTED]@host"),
        ("redis://user:secret pass@host:6379/0 down", "redis://user:[REDACTED]@host:6379/0 down"),
        ("redis://:1234 5678@cache:6379/0", "redis://:[REDACTED]@cache:6379/0"),
        ("redis://u:\tsecret@h", "redis://u:[REDACTED]@h"),
        ("redis://:se cr@et@cache:6379/0 down", "redis://:[REDACTED]@cache:6379/0 down"),
        # an "@", encoded or not, in the user or the password; IPv6 hosts; the product's schemes
        ("postgresql://u:p@ss@[::1]:5432/x", "postgresql://u:[REDACTED]@[::1]:5432/x"),
        ("user:pass@[::1]:6379", "user:[REDACTED]@[::1]:6379"),
        ("redis://user:pass@[::1]:6379/0", "redis://user:[REDACTED]@[::1]:6379/0"),
        ("http://a@b:SECRET@gw:8080", "http://a@b:[REDACTED]@gw:8080"),
        ("http://a%40b:SECRET@gw:8080", "http://a%40b:[REDACTED]@gw:8080"),
        ("login bob@example.com:SECRET@gw:8080", "login bob@example.com:[REDACTED]@gw:8080"),
        ("rediss://default:s3cret@r.example:6380/0", "rediss://default:[REDACTED]@r.example:6380/0"),
        (
            "postgresql://ipsx:s3cret@db:5432/ipsx?sslmode=require",
            "postgresql://ipsx:[REDACTED]@db:5432/ipsx?sslmode=require",
        ),
        (
            "HTTP_PROXY=http://alice-country-fr-session-s1:SECRET@gw:8080",
            "HTTP_PROXY=http://alice-country-fr-session-s1:[REDACTED]@gw:8080",
        ),
        (
            "curl -x socks5h://alice-country-fr:SECRET@gw:1080 http://x/ip",
            "curl -x socks5h://alice-country-fr:[REDACTED]@gw:1080 http://x/ip",
        ),
        ("redis+unix://:SECRET@/tmp/r.sock?db=0", "redis+unix://:[REDACTED]@/tmp/r.sock?db=0"),
        ("proxy //u:SECRET@gw:8080", "proxy //u:[REDACTED]@gw:8080"),  # no scheme
        ("proxy_http://u:SECRET@gw:8080", "proxy_http://u:[REDACTED]@gw:8080"),
        ("`alice:SECRET@gw`", "`alice:[REDACTED]@gw`"),
        ("cut short at alice:SECRET@", "cut short at alice:[REDACTED]@"),
        ("alice:SECRET@-gw", "alice:[REDACTED]@-gw"),
        ("redis://user!x:s3cret@cache:6379/0", "redis://user!x:[REDACTED]@cache:6379/0"),
        ("user!x:s3cret@cache:6379", "user!x:[REDACTED]@cache:6379"),
        # ambiguous (a port, then an "@" in the path): the path goes with what may be a password
        ("http://host:8080/path@x", "http://host:[REDACTED]@x"),
        ("gw:8080/v1/x@y", "gw:[REDACTED]@y"),
        ("http://gw:8080/x?mail=a@b.example", "http://gw:[REDACTED]@b.example"),
        ("http://host:/p@x", "http://host:[REDACTED]@x"),
        ("redis://cache:oops and bob@x.example", "redis://cache:[REDACTED]@x.example"),  # no port
    ],
)
def test_redact_user_info_passwords(message: str, kept: str) -> None:
    assert logs.redact(message) == kept


@pytest.mark.parametrize(
    ("message", "kept"),
    [
        ("password secret", "password [REDACTED]"),
        ("the password is hunter2", "the password is [REDACTED]"),
        ("password\thunter2.", "password\t[REDACTED]"),
        ("ipsx api --redis-password s3cr3t --port 1", "ipsx api --redis-password [REDACTED] --port 1"),
        ("argv: ipsx pay --token sk-live-42 --once", "argv: ipsx pay --token [REDACTED] --once"),
        ("--api-key sk-live-42", "--api-key [REDACTED]"),
        ("ALTER ROLE \"ipsx\" PASSWORD 'pa ss'", "ALTER ROLE \"ipsx\" PASSWORD '[REDACTED]'"),
        ("requirepass hunter2", "requirepass [REDACTED]"),
        ("masterauth hunter2", "masterauth [REDACTED]"),
        ("PGPASSWORD=hunter2 psql -h db", "PGPASSWORD=[REDACTED] psql -h db"),
        (
            "SECRET_KEY=hunter2 aws_secret_access_key: s3cr3t",
            "SECRET_KEY=[REDACTED] aws_secret_access_key: [REDACTED]",
        ),
        ("headers x-api-key: sk-live-42", "headers x-api-key: [REDACTED]"),
    ],
)
def test_redact_secrets_after_their_name(message: str, kept: str) -> None:
    assert logs.redact(message) == kept


@pytest.mark.parametrize(
    "text",
    [
        'password authentication failed for user "ipsx"',
        "setting a new password on PostgreSQL in /x and requiring it for every connection",
        "PostgreSQL on port 5432 refused the password in /x/postgres.password (remove that file)",
        "AUTH <password> called without any password configured for the default user.",
        "the token does not let 0xab transfer yet; the session token has expired",
        "this API key lacks the 'proxy' scope; give an API key with --token or IPSX_TOKEN",
        "passwords do not match; password_encryption = md5; token_id=5 tokens=3",
        "the password is not set",
    ],
)
def test_redact_keeps_messages_about_secrets(text: str) -> None:
    assert logs.redact(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "http://[::1]:8080/x@y",
        "http://user@host:80/ and ssh git@github.com:org/repo.git",
        "peer [2001:db8::1]:443, fe80::1%eth0 and ::1 via db:5432, host:port",
        "mail a@b.com, mailto:bob@example.com",
        "pip install git+https://github.com/org/repo.git@v1.0",
        # a URL with a port, and later an "@" in other words of the line
        "http://gw:8080 for bob@example.com",
        "http://gw:8080/x and mail a@b.example",
        "redis://cache:6379/0 as user@example",
    ],
)
def test_redact_leaves_what_only_looks_like_user_info(text: str) -> None:
    login = " (login ipsx:hunter2@db)"  # on the same line, the password still goes
    assert logs.redact(text + login) == text + " (login ipsx:[REDACTED]@db)"


@pytest.mark.parametrize(
    ("url", "error", "kept"),
    [
        # what asyncpg and urllib say when a "/" or "#" cut the URL inside the password
        (
            "postgresql://ipsx:pa/ss#w@db:5432/ipsx",
            "invalid literal for int() with base 10: 'pa'",
            "invalid literal for int() with base 10: '[REDACTED]'",
        ),
        (
            "redis://:se/cr#et@host:6379/0",
            "Port could not be cast to integer value as 'se'",
            "Port could not be cast to integer value as '[REDACTED]'",
        ),
        (
            "ipsx:pa/ss@db",
            'no host "ss" (parsed from pa/ss)',
            'no host "[REDACTED]" (parsed from [REDACTED])',
        ),
        # a piece inside another word stays: "ss" in "class"
        ("redis://:pa/ss@h/0", "class of 'pa'", "class of '[REDACTED]'"),
        # a space in the password: its words are pieces too
        (
            "redis://u:se cret@host/0",
            "Port could not be cast to integer value as 'se'",
            "Port could not be cast to integer value as '[REDACTED]'",
        ),
        ("redis://u:se cret@host/0", "no host 'cret'", "no host '[REDACTED]'"),
        # no password: the text is only redacted
        ("postgres://:::", "invalid literal for int() with base 10: '::'", None),
    ],
)
def test_redact_error_removes_the_pieces_of_the_password_a_parser_quotes(
    url: str, error: str, kept: str | None
) -> None:
    assert logs.redact_error(f"cannot use {url}: {error}", url) == (
        f"cannot use {logs.redact(url)}: {error if kept is None else kept}"
    )


def test_url_password() -> None:
    assert logs.url_password("postgresql://ipsx:pa/ss#w@db:5432/ipsx") == "pa/ss#w"
    assert logs.url_password("redis://:a@b@cache:6379/0") == "a@b"
    assert logs.url_password("ipsx:hunter2@db:5432") == "hunter2"
    assert logs.url_password("postgresql://postgres@db/ipsx") is None
    assert logs.url_password("http://gw/x?mail=a@b.example") is None
    assert logs.url_password("redis://u:1234/x@h:6379/0") == "1234/x"
    assert logs.url_password("connect to redis://user:secret pass@host") == "secret pass"
    assert logs.url_password("http://gw:8080 for bob@example.com") is None


def test_redact_keeps_api_paths() -> None:
    text = "GET http://127.0.0.1:8000/v1/deals/42/reports and /v1/keys/0123456789ab: 200"
    assert logs.redact(text) == text


def test_redact_keeps_what_is_no_secret() -> None:
    tx = "0x" + "ab" * 32
    text = f"batch 3 anchored in block 12 (tx {tx}); key 0123456789ab; http://gw:8080/path?a=1"
    assert logs.redact(text) == text
    public = f"channel {tx} opened; root {tx}; channel_id={tx}"
    assert logs.redact(public) == public
    assert logs.redact(f"operator key {tx}") == "operator key [REDACTED]"


def test_no_secret_in_json_lines(json_log: Capture) -> None:
    json_log.logger.info("connecting to %s with %s", "redis://:hunter2@r:6379", API_KEY)
    json_log.logger.info(
        "request", extra={"headers": {"Proxy-Authorization": "Basic dXNlcjpwYXNzd29yZA=="}, "jwt_note": JWT}
    )
    json_log.logger.info("settings", extra={"password": "sk-live-42", "signer": PRIVATE_KEY})
    try:
        raise ValueError(f"could not load {PEM}")
    except ValueError:
        json_log.logger.exception("wallet")
    output = json_log.buffer.getvalue()
    for secret in SECRETS:
        assert secret not in output
    first, second, third, fourth = json_log.records()
    assert first["message"] == "connecting to redis://:[REDACTED]@r:6379 with ipsx_0123456789ab_[REDACTED]"
    assert second["headers"] == {"Proxy-Authorization": "[REDACTED]"}
    assert second["jwt_note"] == "[REDACTED]"
    assert third["password"] == "[REDACTED]"
    assert third["signer"] == "[REDACTED]"
    assert "ValueError: could not load [REDACTED]" in fourth["exc"]


def test_no_secret_in_text_lines(text_log: Capture) -> None:
    text_log.logger.warning("retrying postgresql://ipsx:s3cr3t-db@db/ipsx with key %s", API_KEY)
    try:
        raise ConnectionError("redis://:hunter2@cache refused")
    except ConnectionError:
        text_log.logger.exception("lost")
    output = text_log.buffer.getvalue()
    for secret in SECRETS:
        assert secret not in output
    assert "WARNING ipsx.test.text: retrying postgresql://ipsx:[REDACTED]@db/ipsx" in output
    assert "ConnectionError: redis://:[REDACTED]@cache refused" in output


def test_no_user_info_password_in_log_lines(text_log: Capture) -> None:
    text_log.logger.warning("connecting to ipsx:hunter2@db:5432")
    text_log.logger.warning("connect to %s", "redis://user:secret pass@host:6379/0")
    text_log.logger.warning("connect to %s", "redis://u:1234/x@h")
    text_log.logger.warning("lost %s", "postgresql://ipsx:pa/ss#w@db:5432/ipsx")
    try:
        raise ConnectionError("redis://:se/cr#et@cache:6379/0 refused")
    except ConnectionError:
        text_log.logger.exception("redis")
    output = text_log.buffer.getvalue()
    for secret in ("hunter2", "pa/ss", "ss#w", "se/cr", "cr#et", "secret pass", "1234/x"):
        assert secret not in output
    assert "connecting to ipsx:[REDACTED]@db:5432\n" in output
    assert "connect to redis://user:[REDACTED]@host:6379/0\n" in output
    assert "connect to redis://u:[REDACTED]@h\n" in output
    assert "lost postgresql://ipsx:[REDACTED]@db:5432/ipsx\n" in output
    assert "ConnectionError: redis://:[REDACTED]@cache:6379/0 refused" in output


def test_unformattable_arguments_do_not_break_logging(json_log: Capture) -> None:
    json_log.logger.info("two %s %s", "only-one")
    [record] = json_log.records()
    assert record["message"] == "two %s %s (the log arguments could not be formatted)"


def test_make_handler_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="log format must be one of text, json"):
        logs.make_handler("xml")


_CHILD = """
import logging
from ipsx import runtime
runtime.setup_logging()
logging.getLogger("ipsx.child").info("using %s", "redis://:hunter2@r:6379/0", extra={"node": "n1"})
"""


def _child_stderr(log_format: str) -> list[str]:
    env = {**os.environ, "IPSX_LOG_FORMAT": log_format}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=30, check=True
    )
    return done.stderr.splitlines()


def test_setup_logging_json_from_the_environment() -> None:
    [line] = _child_stderr("json")
    record = json.loads(line)
    assert record["logger"] == "ipsx.child"
    assert record["message"] == "using redis://:[REDACTED]@r:6379/0"
    assert record["node"] == "n1"


def test_setup_logging_text_is_the_default_and_unknown_formats_fall_back() -> None:
    [line] = _child_stderr("")
    assert line.endswith("INFO    ipsx.child: using redis://:[REDACTED]@r:6379/0")
    warning, line = _child_stderr("yaml")
    assert "unknown log format 'yaml' (text or json); logging text" in warning
    assert line.endswith("ipsx.child: using redis://:[REDACTED]@r:6379/0")


def test_redacted_extra_fields_keep_their_container_kind() -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "m", None, None)
    key = "ipsx_0123456789ab_" + "s" * 40
    record.__dict__.update(
        {"peer": ("127.0.0.1", 8080), "tags": [key], "names": frozenset({"a"}), "seen": {"b"}}
    )
    assert logs.RedactFilter().filter(record)
    assert record.__dict__["peer"] == ("127.0.0.1", 8080)  # still a tuple: handlers may hash it
    hash(record.__dict__["peer"])
    assert record.__dict__["tags"] == [logs.redact(key)] and key not in str(record.__dict__["tags"])
    assert record.__dict__["names"] == frozenset({"a"}) and record.__dict__["seen"] == {"b"}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://ipsx:hun ter2@db:5432/ipsx", "postgresql://ipsx:[REDACTED]@db:5432/ipsx"),
        ("redis://user!x:s3cret@cache:6379/0", "redis://user!x:[REDACTED]@cache:6379/0"),
        ("redis://:pw@cache:6379/0", "redis://:[REDACTED]@cache:6379/0"),
        ("postgresql://postgres@db:5432/ipsx", "postgresql://postgres@db:5432/ipsx"),
        ("postgres://:::", "postgres://:::"),
        # where the parser finds no password (it reads a port and a path) or cannot split the URL
        ("redis://u:1234/x@h:6379/0", "redis://u:[REDACTED]@h:6379/0"),
        ("postgresql://ipsx:pa/ss@db:5432/ipsx", "postgresql://ipsx:[REDACTED]@db:5432/ipsx"),
        ("http://u:pa[ss@h:1", "http://u:[REDACTED]@h:1"),
        ("rediss://default:s3cret@r.example:6380/0", "rediss://default:[REDACTED]@r.example:6380/0"),
    ],
)
def test_redacted_url_hides_the_password_the_url_parser_finds(url: str, shown: str) -> None:
    assert logs.redacted_url(url) == shown

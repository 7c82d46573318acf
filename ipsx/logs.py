"""Log output: text for people (the default) or one JSON object per line, never a secret.

Every record goes through :class:`RedactFilter` on the way out, whatever the format: API key
secrets keep their key id only, ``Authorization``/``Proxy-Authorization`` values, bearer and basic
credentials, JWTs, PEM private keys, 32-byte hex keys, passwords in URLs (``redis://:pass@host``,
``//user:pass@host``, or ``user:pass@host`` without a scheme; the host and port stay), API keys
in RPC URLs' paths (``/v3/KEY``), ``password=``-style pairs (a quoted value whole) and secrets
after their name and a space (``--redis-password x``, ``PASSWORD 'x'``, ``requirepass x``,
``password is x``) are replaced by ``[REDACTED]``. Where a text is ambiguous (``u:1234/x@h`` is a
user's password or a host, a port and a path) the reading that hides more wins. Redaction is by
pattern: it is the last line of defence, not a licence to log secrets (log key ids).

``REQUEST_ID`` carries the id of the API request being served (see ``dashboard.metrics``) into
the JSON lines of every record logged while serving it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import orjson

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
REDACTED = "[REDACTED]"

REQUEST_ID: ContextVar[str | None] = ContextVar("ipsx_request_id", default=None)

# The attributes every LogRecord has; anything else on a record came in through ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_SECRET_NAME = re.compile(
    r"(?i)pass(word|wd|phrase)?|secret|token|authorization|api[_-]?key|private[_-]?key|cookie|credential"
)
# A 32-byte hex value is a private key until a label says it is a public one: a transaction or
# block hash, a payment channel's id, a Merkle root or leaf, a log topic.
_HASH_LABEL = re.compile(r"(?i)\b(tx|tx_?hash|block_?hash|hash|channel|channel_?id|root|leaf|topic)[ =:]\s?$")
_HEX32 = re.compile(r"(?<![0-9A-Za-z])(?:0x)?[0-9a-fA-F]{64}(?![0-9A-Za-z])")
# A value after its name: quoted (it may hold spaces, and all of it goes, quotes kept; without
# its closing quote, up to the end of the line), or bare.
_VALUE = r"""("(?:[^"\\\n]|\\.)*"?|'(?:[^'\\\n]|\\.)*'?|%s)"""


def _secret_value(match: re.Match[str]) -> str:
    name, value = match.group(1), match.group(2)
    quote = value[0] if value[0] in "\"'" else ""
    closed = bool(quote) and len(value) > 1 and value[-1] == quote
    return f"{name}{quote}{REDACTED}{quote if closed else ''}"


_SENSITIVE_NAME = r"(?:password|passwd|passphrase|secret|token|api[_-]?key|private[_-]?key)"
# A secret after its name and a space, as command lines ("--redis-password s3cret"), SQL
# ("PASSWORD 'x'"), Redis's configuration ("requirepass x") and prose ("the password is x")
# write it; not a file's name (postgres.password). The word after the name may be the
# message's own ("password authentication failed"): a word of _PROSE stays, any other goes (the
# words after "token" and "secret" are too often prose, so only their options count).
_SPACED_SECRET = re.compile(
    rf"(?i)(?<![\w./-])((?:--?[a-z0-9_-]{{0,64}}?{_SENSITIVE_NAME}"
    r"|[a-z0-9_]{0,64}?(?:password|passwd|passphrase)|requirepass|masterauth)"
    r"(?:[^\S\n]+(?:is|was))?[^\S\n]+)" + _VALUE % r"(?![:=])\S+"
)
_PROSE_WORDS = """a an the this that these those it its of in on at to for from by with without
    via into as and or but nor not no none is are was were be been being has have had does do did
    can cannot could may might must shall should will would if when while then than so also too
    only again yet authentication auth login required missing empty unset set changed reset
    rotated expired invalid incorrect wrong mismatch failed failure error accepted rejected
    refused denied given sent used kept stored saved read written found shown hidden protected
    file hash length policy prompt configured provided supplied generated created updated"""
_PROSE = frozenset(_PROSE_WORDS.split())


def _spaced_secret(match: re.Match[str]) -> str:
    value = match.group(2)
    if value.startswith(REDACTED) or value.lower().rstrip(".,;:!?)") in _PROSE:
        return match.group(0)
    return _secret_value(match)


# user:password@host: the password runs to the authority's last "@" (redis-py takes an unencoded
# "@" in a password). One holding an unencoded "/", "?" or "#" runs to the last "@" of the word:
# where it ends is ambiguous then, and a path hidden is better than a password shown. Digits
# before that "/" too: "u:1234/x@h" reads as host u, port 1234 and path /x@h as well as user u
# with password 1234/x, and only the first reading would leave a secret in the log. The bounds
# keep a long line linear.
_SLASHED = r"[^/?#@\s]{0,256}[/?#]\S{0,256}"
# [scheme:]//user:password@host: the user stays, the password goes. The user may hold an
# unencoded "@" (URL parsers split the authority at its last one); an IPv6 host ("[::1]") is no
# user.
_URL_USERINFO = re.compile(
    rf"(?i)((?:[a-z][a-z0-9+.-]{{0,31}}:)?//[^:/?#\s\[\]]*):(?P<password>[^/?#\s]+|{_SLASHED})@"
)
# A password with spaces in it (URL parsers take one): the URL's first word has no "@", what
# follows its ":" is no port, and an "@" comes later on the same line; the password runs to the
# last "@" of that word. A host and port (digits to the end of the word, or to a "/", "?" or "#")
# and then text with an "@" in it is left alone, unless the user is empty ("//:" is a password).
_URL_SPACED = re.compile(
    r"(?i)((?:[a-z][a-z0-9+.-]{0,31}:)?//[^:/?#\s\[\]]*):"
    r"(?P<password>(?:(?<=//:)|(?!\d{0,5}[/?#]|\d{1,5}(?:\s|$)))[^\s@]{0,256}[^\S\n]"
    r"[^\n@]{0,256}?(?:@[^\s@]{0,256}(?=@))*)@"
)
# user:password@host without a scheme, as a word of its own (the user may be an e-mail address);
# "mailto:a@b" is an e-mail address.
_BARE_USERINFO = re.compile(
    rf"""(?<![^\s"'`(<\[{{=,;|])(?!mailto:)([\w.~%+!$*@-]+):(?!//)(?P<password>[^/?#\s]{{1,256}}|{_SLASHED})@"""
)
_USERINFO = (_URL_USERINFO, _URL_SPACED, _BARE_USERINFO)  # in this order: a URL's scheme first
_KEEP_USER = rf"\1:{REDACTED}@"

_PATTERNS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    (
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.S),
        REDACTED,
    ),
    # node providers' RPC URLs carry the API key as a path segment: infura.io/v3/KEY, alchemy /v2/KEY
    (re.compile(r"(?<=\S)(/v\d{1,2}/)[A-Za-z0-9_-]{20,}(?![A-Za-z0-9_-])"), rf"\1{REDACTED}"),
    # header values, as "Proxy-Authorization: Basic …" or "'authorization': 'Bearer …'"
    (
        re.compile(
            r"(?i)\b((?:proxy-)?authorization[\"']?\s*[:=]\s*)"
            + _VALUE % r"(?:(?:basic|bearer|digest)\s+)?[^\s\"',;}]+"
        ),
        _secret_value,
    ),
    (re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9+/=._~-]{8,}"), rf"\1 {REDACTED}"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), REDACTED),
    # API key secrets ipsx_<key id>_<random>: the key id is no secret and says which key it was
    (re.compile(r"(?<![A-Za-z0-9])(ipsx_[0-9a-f]{12}_)[A-Za-z0-9_-]+"), rf"\1{REDACTED}"),
    # name=value and name: value, the name ending in a secret's word (PGPASSWORD, client_secret,
    # x-api-key; a key: SECRET_KEY, aws_secret_access_key; but not "tokens" or "token_id")
    (
        re.compile(
            rf"(?i)\b([a-z0-9_-]*?{_SENSITIVE_NAME}(?:[_-](?:access[_-])?key)?[\"']?\s*[:=]\s*)"
            + _VALUE % r"[^\s\"',;&}]+"
        ),
        _secret_value,
    ),
    (_SPACED_SECRET, _spaced_secret),
)


def _hex_key(match: re.Match[str]) -> str:
    before = match.string[max(0, match.start() - 16) : match.start()]
    return match.group(0) if _HASH_LABEL.search(before) else REDACTED


def redact(text: str) -> str:
    """``text`` with every secret-looking part replaced by ``[REDACTED]``."""
    if "@" in text:  # no user info without one: most lines skip these patterns
        for pattern in _USERINFO:
            text = pattern.sub(_KEEP_USER, text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return _HEX32.sub(_hex_key, text)


def redacted_url(url: str) -> str:
    """``url`` with the password of its user info, if it has one, replaced by ``[REDACTED]``: as
    a URL parser splits it (a password holding a space or a ``!`` included), and as
    :func:`redact` finds one where the parser finds none or cannot split ``url`` (a password
    with an unencoded ``/``, which the parser takes for a port and a path)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return redact(url)
    if password is None:
        return redact(url)
    user, _, host = parts.netloc.rpartition("@")
    name = user.partition(":")[0]
    return redact(urlunsplit(parts._replace(netloc=f"{name}:{REDACTED}@{host}")))


def url_password(url: str) -> str | None:
    """The password of ``url``'s user info, as :func:`redact` finds it; None when it finds none."""
    for pattern in _USERINFO:
        found = pattern.search(url)
        if found is not None:
            return found["password"]
    return None


def redact_error(text: str, url: str) -> str:
    """``text``, an error about ``url``, redacted, and without any piece of ``url``'s password
    standing as a word of its own: a parser that stopped inside the password, at a "/", "?",
    "#", "@", ":" or space not percent-encoded, quotes the piece it could not read ("invalid
    port 'pa'"), which no pattern can tell from other words."""
    text = redact(text)
    password = url_password(url)
    if not password:
        return text
    pieces = {password, *re.split(r"[/?#@:\s]+", password)} - {""}
    for piece in sorted(pieces, key=len, reverse=True):
        text = re.sub(rf"(?<![\w%.~+-]){re.escape(piece)}(?![\w%.~+-])", REDACTED, text)
    return text


def _redact_value(name: str, value: Any) -> Any:
    if _SECRET_NAME.search(name):
        return REDACTED
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {str(k): _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        # Each container keeps its kind: another handler may hash a tuple (mitmproxy's does).
        items = [_redact_value("", item) for item in value]
        if isinstance(value, list):
            return items
        if isinstance(value, tuple):
            return tuple(items)
        try:
            return frozenset(items) if isinstance(value, frozenset) else set(items)
        except TypeError:  # an item became unhashable
            return items
    return value


class RedactFilter(logging.Filter):
    """Rewrites each record in place so that no handler after it sees a secret: the message
    (formatted with its arguments), the exception and stack text, and ``extra=`` fields (those
    named like a secret are blanked whatever their value). Never drops a record."""

    _exceptions = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # bad arguments: logging would report it; keep the text, not the args
            message = f"{record.msg!s} (the log arguments could not be formatted)"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exceptions.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name, value in list(record.__dict__.items()):
            if name not in _STANDARD and not name.startswith("_"):
                record.__dict__[name] = _redact_value(name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    ``request_id`` while an API request is served, the record's ``extra=`` fields, and ``exc`` /
    ``stack`` when the record carries them. Values JSON cannot hold are written as strings;
    integers stay numbers, however large."""

    def format(self, record: logging.LogRecord) -> str:
        created = dt.datetime.fromtimestamp(record.created, dt.UTC)
        out: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            out["request_id"] = request_id
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                out.setdefault(name, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # an integer past 64 bits (token amounts in base units are)
            return json.dumps(out, default=str, ensure_ascii=False)


def make_handler(log_format: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler (stderr by default) writing ``log_format`` ("text" or "json") through
    :class:`RedactFilter`; raises ValueError for another format."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {log_format[:20]!r}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.addFilter(RedactFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    return handler

"""Log output: text for people (the default) or one JSON object per line, never a secret.

Every record goes through :class:`RedactFilter` on the way out, whatever the format: API key
secrets keep their key id only, ``Authorization``/``Proxy-Authorization`` values, bearer and basic
credentials, JWTs, PEM private keys, 32-byte hex keys, passwords in URLs (``redis://:pass@host``,
or ``user:pass@host`` without a scheme), API keys in RPC URLs' paths (``/v3/KEY``) and
``password=``-style pairs (a quoted value whole) are replaced by ``[REDACTED]``. Redaction is by
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


# user:password@host: the password runs to the authority's last "@" (redis-py takes an unencoded
# "@" in a password). One holding an unencoded "/", "?" or "#" runs to the last "@" of the word:
# where it ends is ambiguous then, and a path hidden is better than a password shown; but digits
# before that "/" after a host name are a port (host:8080/path@x), not a password. The bounds
# keep a long line linear (a scheme's "//" ends the unbounded run).
_SLASHED = r"(?:(?<=//:)|(?!\d{0,5}[/?#]))[^/?#@\s]{0,256}[/?#]\S{0,256}"
# scheme://user:password@host: the user stays, the password goes. An IPv6 host ("[::1]") is no user.
_URL_USERINFO = re.compile(
    rf"(?i)\b([a-z][a-z0-9+.-]{{0,31}}://[^:/?#@\s\[\]]*):(?P<password>[^/?#\s]+|{_SLASHED})@"
)
# user:password@host without a scheme, as a word of its own; "mailto:a@b" is an e-mail address.
_BARE_USERINFO = re.compile(
    rf"""(?<![^\s"'(<\[{{=,;])(?!mailto:)([\w.~%+-]+):(?!//)(?P<password>[^/?#\s]{{1,256}}|{_SLASHED})@"""
    r"(?=[\w\[])"
)
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
    (
        re.compile(
            r"(?i)\b((?:[a-z_]*_)?(?:password|passwd|passphrase|secret|token|api[_-]?key|private[_-]?key)"
            r"[\"']?\s*[:=]\s*)" + _VALUE % r"[^\s\"',;&}]+"
        ),
        _secret_value,
    ),
)


def _hex_key(match: re.Match[str]) -> str:
    before = match.string[max(0, match.start() - 16) : match.start()]
    return match.group(0) if _HASH_LABEL.search(before) else REDACTED


def redact(text: str) -> str:
    """``text`` with every secret-looking part replaced by ``[REDACTED]``."""
    if "@" in text:  # no user info without one: most lines skip these two patterns
        text = _BARE_USERINFO.sub(_KEEP_USER, _URL_USERINFO.sub(_KEEP_USER, text))
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return _HEX32.sub(_hex_key, text)


def redacted_url(url: str) -> str:
    """``url`` with its user info's password, if it has one, replaced by ``[REDACTED]``, as a URL
    parser splits it (a password holding a space or a ``!`` included); ``url`` itself when it does
    not split (pattern redaction is then the caller's)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{name}:{REDACTED}@{host}"))


def url_password(url: str) -> str | None:
    """The password of ``url``'s user info, as :func:`redact` finds it; None when it finds none."""
    found = _URL_USERINFO.search(url) or _BARE_USERINFO.search(url)
    return None if found is None else found["password"]


def redact_error(text: str, url: str) -> str:
    """``text``, an error about ``url``, redacted, and without any piece of ``url``'s password
    standing as a word of its own: a parser that stopped inside the password, at a "/", "?",
    "#", "@" or ":" not percent-encoded, quotes the piece it could not read ("invalid port
    'pa'"), which no pattern can tell from other words."""
    text = redact(text)
    password = url_password(url)
    if not password:
        return text
    for piece in sorted({password, *re.split(r"[/?#@:]", password)} - {""}, key=len, reverse=True):
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

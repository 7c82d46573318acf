"""Cursor pagination: ``?limit=N&cursor=…`` in, ``{"items": […], "next_cursor": …}`` out.

A cursor is an opaque, URL-safe token holding the sort key of the last item served; the next
page starts after it, so pages stay stable while new rows arrive.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any

import orjson
from aiohttp import web

from dashboard.problems import Problem

DEFAULT_LIMIT = 50
MAX_ROW_ID = 2**63 - 1  # a PostgreSQL bigint
_BAD_CURSOR = "the cursor is not one this API handed out"


def encode_cursor(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(key)).decode().rstrip("=")


def page_params(request: web.Request, max_limit: int) -> tuple[int, list[Any] | None]:
    """``(limit, cursor key or None)``; raises Problem 400 for a bad limit or cursor, or for a
    query parameter the operation does not take (a misspelt ``limt`` is an error, not ignored)."""
    unknown = sorted(set(request.query) - {"limit", "cursor"})
    if unknown:
        raise Problem(400, "unknown_parameter", f"unknown query parameter {unknown[0][:40]!r}")
    if len(request.query.getall("limit", [])) > 1 or len(request.query.getall("cursor", [])) > 1:
        raise Problem(400, "repeated_parameter", "give limit and cursor at most once each")
    text = request.query.get("limit", str(DEFAULT_LIMIT))
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= max_limit:
        raise Problem(400, "bad_limit", f"limit must be an integer from 1 to {max_limit}")
    raw = request.query.get("cursor")
    if raw is None:
        return int(text), None
    try:
        key = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise Problem(400, "bad_cursor", "the cursor is not one this API handed out") from None
    # PostgreSQL text cannot hold NUL: such a cursor would fail the query, not find nothing.
    if not isinstance(key, list) or len(raw) > 512 or any(isinstance(v, str) and "\x00" in v for v in key):
        raise Problem(400, "bad_cursor", _BAD_CURSOR)
    return int(text), key


def id_cursor(cursor: list[Any] | None) -> int | None:
    """The row id a ``[id]`` cursor holds, a positive bigint; ``None`` without a cursor.
    Raises Problem 400 for any other cursor."""
    if cursor is None:
        return None
    if len(cursor) != 1 or type(cursor[0]) is not int or not 0 < cursor[0] <= MAX_ROW_ID:
        raise Problem(400, "bad_cursor", _BAD_CURSOR)
    return int(cursor[0])


def time_cursor(cursor: list[Any] | None) -> tuple[dt.datetime | None, str]:
    """The ``(time, id)`` a ``[ISO 8601 time, id]`` cursor holds, parsed here rather than by
    PostgreSQL; ``(None, "")`` without a cursor. Raises Problem 400 for any other cursor."""
    if cursor is None:
        return None, ""
    if len(cursor) != 2 or not all(isinstance(part, str) for part in cursor):
        raise Problem(400, "bad_cursor", _BAD_CURSOR)
    try:
        moment = dt.datetime.fromisoformat(cursor[0])
        # A time whose offset takes it past year 1 or 9999 in UTC cannot be sent to PostgreSQL.
        if moment.tzinfo is not None:
            moment.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise Problem(400, "bad_cursor", _BAD_CURSOR) from None
    return moment, cursor[1]

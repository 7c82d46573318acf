"""Errors as RFC 9457 problem details, and the middleware that guarantees no traceback leaks.

A handler raises :class:`Problem` for anything the client can fix; the middleware also turns
aiohttp's own HTTP errors (404, 405, 413) into problem documents, and any other exception into a
500 whose body carries only the request id that the log line carries too.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from dashboard import pac

log = logging.getLogger("ipsx.api")

PROBLEM_TYPE = "https://ipsx.io/problems/"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Problem(Exception):
    """An error answered as ``application/problem+json``; ``code`` is a stable machine slug."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def problem_response(
    status: int, code: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    body = {
        "type": PROBLEM_TYPE + code,
        "title": code.replace("_", " "),
        "status": status,
        "detail": detail,
        **extra,
    }
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/problem+json",
        headers=headers,
    )


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


REQUEST_ID = web.RequestKey("request_id", str)  # the id in X-Request-Id, as the logs carry it


@web.middleware
async def problems_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-Id", "")[:64] or secrets.token_hex(8)
    if not request_id.isprintable():
        request_id = secrets.token_hex(8)
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except Problem as problem:
        response = problem_response(
            problem.status, problem.code, problem.detail, headers=problem.headers, **problem.extra
        )
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = _HTTP_CODES.get(error.status, "http_error")
        headers = {k: v for k, v in error.headers.items() if k.lower() in ("allow", "www-authenticate")}
        response = problem_response(error.status, code, error.reason, headers=headers)
    except Exception:
        log.exception(
            "unhandled error in %s %s (request %s)", request.method, pac.loggable(request.path), request_id
        )
        response = problem_response(
            500, "internal_error", "the server failed; quote the request id", request_id=request_id
        )
    response.headers["X-Request-Id"] = request_id
    return response


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body; raises a 415 or 400 Problem for anything else."""
    if request.content_type != "application/json":
        raise Problem(415, "unsupported_media_type", "send the body as application/json")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise Problem(400, "malformed_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Problem(400, "malformed_json", "the body must be a JSON object")
    return body


def field(
    body: dict[str, Any], name: str, kind: type, *, optional: bool = False, max_len: int = 10_000
) -> Any:
    """``body[name]`` checked to be of ``kind`` (a str at most ``max_len`` long); 422 otherwise.

    ``optional`` lets the field be absent (then ``None`` is returned), never ``null``.
    """
    if optional and name not in body:
        return None
    value = body.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise Problem(422, "invalid_field", f"{name!r} must be a {kind.__name__}", field=name)
    if isinstance(value, str) and len(value) > max_len:
        raise Problem(422, "invalid_field", f"{name!r} is longer than {max_len} characters", field=name)
    return value


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")

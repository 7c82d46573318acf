"""Refusals answered to HTTP clients: the status, an ``X-IPSX-Error`` reason and a short text."""

from __future__ import annotations

from gateway import http1_write
from gateway.exits import DIAL_ERRORS, NO_DEAL, NO_EXIT, BadBan, NoDeal, NoExit
from gateway.tunnel_streams import DialError


class Refused(Exception):
    """Answer the client with ``response`` and close; nothing was relayed."""

    def __init__(self, response: bytes) -> None:
        self.response = response


def http_error(status: int, code: str, message: str, extra: list[tuple[str, str]] | None = None) -> Refused:
    headers = [("X-IPSX-Error", code), *(extra or [])]
    return Refused(http1_write.error_response(status, message, headers=headers))


def dial_refusal(error: DialError | NoExit | NoDeal) -> Refused:
    if isinstance(error, NoDeal):
        status, code, _, message = NO_DEAL.get(error.reason, NO_DEAL["unavailable"])
        return http_error(status, code, message)
    if isinstance(error, BadBan):
        return http_error(400, "bad_ban", str(error))
    if isinstance(error, NoExit):
        status, code, _ = NO_EXIT
        return http_error(status, code, "no exit matches the requested targeting")
    status, code, _ = DIAL_ERRORS[error.code]
    return http_error(status, code, f"could not reach the destination: {error.reason}")

"""What can go wrong on the inspecting port, split by blame, each with the status it is answered with.

Every error carries ``status`` (the HTTP status the client gets), ``code`` (its ``X-IPSX-Error``)
and a message safe to show: no secret, no traceback.
"""

from __future__ import annotations


class InspectError(Exception):
    """A request the inspecting port answers itself, with ``status`` and ``code``."""

    status = 502
    code = "inspect_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        authenticate: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.authenticate = authenticate  # a Proxy-Authenticate challenge to answer with (407)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


class GatewayRefused(InspectError):
    """The gateway answered the CONNECT with ``status`` (its ``X-IPSX-Error`` is ``code``); the
    client gets the same answer. ``authenticate`` is the gateway's Proxy-Authenticate, if any."""

    def __init__(self, status: int, code: str, message: str, *, authenticate: str | None = None) -> None:
        super().__init__(message, status=status, code=code, authenticate=authenticate)


class GatewayUnavailable(InspectError):
    """The gateway could not be reached or broke off the CONNECT: our side's failure."""

    status = 502
    code = "gateway_unavailable"


class OriginError(InspectError):
    """The origin (through the exit) failed: bad certificate, no or malformed response, too slow,
    too large. ``stale`` says it closed a reused connection before any byte of a response (a
    request safe to repeat may be sent again on a new one)."""

    status = 502
    code = "bad_response"

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, stale: bool = False
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.stale = stale

"""Reading what the load generators print: loadtests/tunnel_load.py's lines (read with a bound
on each wait, without threads) and wrk's ``--latency`` report."""

from __future__ import annotations

import json
import os
import re
import select
import time
from typing import Any


class LineReader:
    """Lines from a child's stdout, each wait bounded (no threads: select on the pipe)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = b""
        self._eof = False

    def _line(self, deadline: float) -> str | None:
        while b"\n" not in self._buffer:
            if self._eof:
                if self._buffer:
                    line, self._buffer = self._buffer, b""
                    return line.decode(errors="replace")
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("timed out waiting for the load generator")
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready:
                chunk = os.read(self._fd, 65536)
                self._eof = not chunk
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace")

    def expect(self, word: str, timeout: float) -> dict[str, Any]:
        """The JSON after ``word`` on the next line starting with it; raises RuntimeError if the
        generator ends or prints its final result first, or after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._line(deadline)
            if line is None:
                raise RuntimeError(f"load generator ended before {word}")
            if line.startswith(word + " "):
                return dict(json.loads(line[len(word) + 1 :]))
            if line.startswith("{"):
                raise RuntimeError(f"load generator ended before {word}: {line[:300]}")

    def last_json(self, timeout: float) -> dict[str, Any]:
        """The last JSON line before the generator ends (empty if none)."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while True:
            line = self._line(deadline)
            if line is None:
                return last
            if line.startswith("{"):
                last = dict(json.loads(line))


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if match is None:
        raise ValueError(f"unexpected wrk time {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """``rps``, ``requests``, ``p50_ms``/``p99_ms`` and ``errors`` (by kind, non-zero only) from
    wrk's ``--latency`` report; raises ValueError if the rate or request count is missing."""
    result: dict[str, Any] = {}
    if m := re.search(r"Requests/sec:\s*([\d.]+)", output):
        result["rps"] = float(m.group(1))
    if m := re.search(r"(\d+) requests in ([\d.]+\w+),", output):
        result["requests"] = int(m.group(1))
    for pct in ("50", "99"):
        if m := re.search(rf"^\s+{pct}%\s+(\S+)", output, re.MULTILINE):
            result[f"p{pct}_ms"] = _ms(m.group(1))
    errors: dict[str, int] = {}
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        for name, value in zip(("connect", "read", "write", "timeout"), m.groups(), strict=True):
            if int(value):
                errors[name] = int(value)
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors["non_2xx"] = int(m.group(1))
    result["errors"] = errors
    if "rps" not in result or "requests" not in result:
        raise ValueError(f"could not parse wrk output: {output[-300:]!r}")
    return result

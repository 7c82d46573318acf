"""What the browser tests share: Debian's Chromium, their screenshots, and the API process they
start on the test stack (the ``browser`` fixture itself is in ``conftest.py``)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page

from tests.e2e.conftest import Stack

CHROMIUM = os.environ.get("IPSX_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("IPSX_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
NEEDS = [
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    ),
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def start_api(stack: Stack, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """``ipsx api`` on ``port`` for the stack's gateway, once it answers /healthz."""
    args = ["--port", str(port), "--proxy-address", f"127.0.0.1:{stack.http_port}",
            "--socks-address", f"127.0.0.1:{stack.socks_port}", "--spot-duration", "30",
            "--web-live-interval", "0.5", *extra]  # fmt: skip
    with open(stack.tmp / "api.log", "ab") as handle:
        api = subprocess.Popen(
            [sys.executable, "-m", "ipsx", "api", *args],
            env={**stack.env, "IPSX_JWT_SECRET": secrets.token_urlsafe(32)},
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    stack.processes.append(api)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return api
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or api.poll() is not None:
            raise RuntimeError((stack.tmp / "api.log").read_text()[-3000:])
        time.sleep(0.1)

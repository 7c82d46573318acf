"""The client commands (``ipsx deals``, ``ipsx invoices``) against the ``ipsx api`` process."""

from __future__ import annotations

import subprocess
import sys

from tests.dashboard.conftest import Api


def _ipsx(api: Api, *args: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in api.env.items() if name != "IPSX_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "ipsx", *args, "--api", api.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_command_without_credentials_says_how_to_give_them(api: Api) -> None:
    refused = _ipsx(api, "deals")
    assert refused.returncode == 2
    assert refused.stderr.startswith("ipsx deals: the API refused: ")
    assert (
        "(401 unauthorized); give an API key with --token or IPSX_TOKEN, or a wallet key file with --key"
        in (refused.stderr)
    )
    assert "Traceback" not in refused.stderr


def test_a_wrong_key_is_refused_without_the_hint(api: Api) -> None:
    refused = _ipsx(api, "deals", "--token", "ipsx_000000000000_" + "x" * 32)
    assert refused.returncode == 2
    assert "(401 " in refused.stderr and "give an API key" not in refused.stderr


def test_invoices_lists_the_callers_invoices(api: Api) -> None:
    listed = _ipsx(api, "invoices", "--token", api.key, "--json")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == "[]"  # alice pays by ledger credit: no channel, no invoice

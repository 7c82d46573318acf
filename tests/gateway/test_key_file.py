"""``load_key``: a clear ``KeyFileError`` naming the file (never its contents) for a file that
holds no key, and a warning, as ssh gives for private keys, when group or others may read it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from eth_account import Account

from gateway.agent.settings import KeyFileError, load_key

KEY_HEX = "31140725e105b39c86333b8832844c42e26cb7581441015fe1fd1f933eabd353"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (KEY_HEX + "X", "not a hex private key"),
        ("secret words " + KEY_HEX, "not a hex private key"),
        (KEY_HEX[:-2], "not a hex private key"),
        ("", "not a hex private key"),
        ('{"crypto": ', "not a keystore this password opens"),
    ],
)
def test_load_key_of_a_malformed_file_names_the_file_not_the_key(
    tmp_path: Path, text: str, reason: str
) -> None:
    path = tmp_path / "bad.key"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(KeyFileError) as error:
        load_key(path, "pw")
    assert error.value.path == path
    assert str(error.value).startswith(f"{path}: {reason}")
    assert KEY_HEX[:12] not in str(error.value) and "secret" not in str(error.value)


def test_load_key_of_a_keystore_with_a_wrong_password_is_a_key_file_error(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    path.write_text(json.dumps(Account.encrypt(Account.create().key, "pw", iterations=2)))
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a keystore this password opens"):
        load_key(path, "not-pw")


def test_load_key_refuses_a_file_too_large_to_be_a_key(tmp_path: Path) -> None:
    path = tmp_path / "big.key"
    path.write_bytes(b"0" * (1 << 20))
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a key file"):
        load_key(path, None)


@pytest.mark.parametrize(("mode", "warned"), [(0o600, False), (0o400, False), (0o640, True), (0o644, True)])
def test_load_key_warns_when_group_or_others_may_read_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int, warned: bool
) -> None:
    account = Account.create()
    path = tmp_path / "w.key"
    path.write_text(account.key.hex())
    path.chmod(mode)
    with caplog.at_level(logging.WARNING, logger="ipsx.agent"):
        assert load_key(path, None).address == account.address  # used either way
    warnings = [r.getMessage() for r in caplog.records if r.name == "ipsx.agent"]
    if warned:
        assert warnings == [
            f"the wallet key file {path} is accessible by others (mode {mode:03o}): chmod 600 it"
        ]
    else:
        assert warnings == []

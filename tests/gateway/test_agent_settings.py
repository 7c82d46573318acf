"""Unit tests of the agent's settings: ``--bind`` exit declarations and wallet key files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_account import Account

from gateway.agent.policy import ExitPolicy
from gateway.agent.settings import AgentSettings, ExitSpec, load_key, parse_exit

DEFAULTS = ExitSpec(country="us")


# parse_exit


def test_parse_exit_address_only() -> None:
    assert parse_exit("127.0.0.2", DEFAULTS) == ExitSpec(bind="127.0.0.2", country="us")


def test_parse_exit_keeps_defaults() -> None:
    defaults = ExitSpec(country="nl", city="amsterdam", asn=1136, type="mobile")
    assert parse_exit("127.0.0.3", defaults) == ExitSpec(
        bind="127.0.0.3", country="nl", city="amsterdam", asn=1136, type="mobile"
    )


def test_parse_exit_all_attributes() -> None:
    spec = parse_exit("127.0.0.2,country=de,type=datacenter,asn=AS3215,city=paris", DEFAULTS)
    assert spec == ExitSpec(
        bind="127.0.0.2", country="de", region="", city="paris", asn=3215, type="datacenter"
    )


def test_parse_exit_normalizes_case_and_spaces() -> None:
    spec = parse_exit(" ::1 , Country=FR , Region=Ile_de_France , ASN=as12322 , Type=Mobile", DEFAULTS)
    assert spec == ExitSpec(bind="::1", country="fr", region="ile_de_france", asn=12322, type="mobile")


def test_parse_exit_plain_asn() -> None:
    assert parse_exit("127.0.0.2,asn=64512", DEFAULTS).asn == 64512


def test_parse_exit_default_source_address() -> None:
    assert parse_exit(",country=gb", DEFAULTS) == ExitSpec(bind="", country="gb")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("127.0.0.2,country=deu", "country must be a 2-letter"),
        ("127.0.0.2,country=d1", "country must be a 2-letter"),
        ("127.0.0.2,country=xx", "country: 'xx' is no ISO 3166-1 country code"),
        ("127.0.0.2,country=", "expected key=value"),
        ("127.0.0.2,country", "expected key=value"),
        ("127.0.0.2,type=satellite", "type must be one of datacenter, mobile, residential"),
        ("127.0.0.2,colour=blue", "unknown exit attribute 'colour'"),
        ("127.0.0.2,city=new york", "city must be letters"),
        ("127.0.0.2,region=île", "region must be letters"),
        ("127.0.0.2,asn=ASX", "invalid literal"),
    ],
)
def test_parse_exit_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_exit(text, DEFAULTS)


@pytest.mark.parametrize("address", ["localhost", "127.0.0.256", "1.2.3", "eth0", "::g"])
def test_parse_exit_bad_ip(address: str) -> None:
    with pytest.raises(ValueError):
        parse_exit(f"{address},country=fr", DEFAULTS)


def test_exit_spec_to_wire() -> None:
    spec = ExitSpec(bind="127.0.0.2", country="fr", city="paris", asn=3215, type="datacenter")
    assert spec.to_wire() == {
        "bind": "127.0.0.2",
        "country": "fr",
        "region": "",
        "city": "paris",
        "asn": 3215,
        "type": "datacenter",
    }


# load_key


def test_load_key_hex(tmp_path: Path) -> None:
    account = Account.create()
    path = tmp_path / "key"
    path.write_text(account.key.hex() + "\n")
    assert load_key(path, None).address == account.address
    assert load_key(path, "ignored").address == account.address


def test_load_key_hex_with_prefix(tmp_path: Path) -> None:
    account = Account.create()
    path = tmp_path / "key"
    path.write_text("0x" + account.key.hex().removeprefix("0x"))
    assert load_key(path, None).key == account.key


def test_load_key_not_a_key(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("not a key")
    with pytest.raises(ValueError):
        load_key(path, None)


def test_load_key_keystore(tmp_path: Path) -> None:
    account = Account.create()
    path = tmp_path / "keystore.json"
    path.write_text(json.dumps(Account.encrypt(account.key, "pw", iterations=2)))
    assert load_key(path, "pw").address == account.address


def test_load_key_keystore_needs_password(tmp_path: Path) -> None:
    account = Account.create()
    path = tmp_path / "keystore.json"
    path.write_text(json.dumps(Account.encrypt(account.key, "pw", iterations=2)))
    with pytest.raises(ValueError, match="needs a password"):
        load_key(path, None)


def test_load_key_keystore_wrong_password(tmp_path: Path) -> None:
    account = Account.create()
    path = tmp_path / "keystore.json"
    path.write_text(json.dumps(Account.encrypt(account.key, "pw", iterations=2)))
    with pytest.raises(ValueError):
        load_key(path, "not-pw")


def test_load_key_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_key(tmp_path / "absent", None)


# AgentSettings


def test_agent_settings_defaults() -> None:
    account = Account.create()
    settings = AgentSettings(gateway_host="127.0.0.1", gateway_port=8443, account=account)
    assert settings.exits == (ExitSpec(),)
    assert settings.policy == ExitPolicy()
    assert settings.pool_size == 16
    assert account.key.hex().removeprefix("0x") not in repr(settings)

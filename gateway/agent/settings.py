"""Settings of a provider agent, and the parsing of its ``--bind`` exit declarations."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

from eth_account import Account
from eth_account.signers.local import LocalAccount

from gateway.agent.caps import Limits
from gateway.agent.policy import ExitPolicy
from pool.countries import unknown_country
from pool.models import EXIT_TYPES

SECONDS = 1.0
_WORD_RE = re.compile(r"[a-z0-9_]{1,64}")
_MAX_KEY_FILE = 64 * 1024  # a keystore JSON is under 1 KB
_LOOSE_MODE = stat.S_IRWXG | stat.S_IRWXO  # what ssh checks on a private key: any access but the owner's

log = logging.getLogger("ipsx.agent")


class KeyFileError(ValueError):
    """The file at ``path`` holds no usable wallet key; the message says why, never the key."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ExitSpec:
    """One exit the agent offers: the source address it dials from and its attributes."""

    bind: str = ""  # "" = the host's default source address
    country: str = "us"
    region: str = ""
    city: str = ""
    asn: int = 0
    type: str = "residential"

    def to_wire(self) -> dict[str, object]:
        return {
            "bind": self.bind,
            "country": self.country,
            "region": self.region,
            "city": self.city,
            "asn": self.asn,
            "type": self.type,
        }


def parse_exit(text: str, defaults: ExitSpec) -> ExitSpec:
    """``ADDRESS[,key=value…]`` (keys: country, region, city, asn, type) → ExitSpec; raises ValueError."""
    address, *pairs = text.split(",")
    address = address.strip()
    if address:
        ipaddress.ip_address(address)  # raises ValueError for anything but an IP literal
    spec = replace(defaults, bind=address)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key, value = key.strip().lower(), value.strip().lower()
        if not sep or not value:
            raise ValueError(f"expected key=value, got {pair!r}")
        if key == "country":
            if not re.fullmatch(r"[a-z]{2}", value):
                raise ValueError("country must be a 2-letter ISO 3166-1 code")
            unknown = unknown_country(value)
            if unknown is not None:
                raise ValueError(f"country: {unknown}")
            spec = replace(spec, country=value)
        elif key in ("region", "city"):
            if not _WORD_RE.fullmatch(value):
                raise ValueError(f"{key} must be letters, digits or '_'")
            spec = replace(spec, region=value) if key == "region" else replace(spec, city=value)
        elif key == "asn":
            spec = replace(spec, asn=int(value.removeprefix("as")))
        elif key == "type":
            if value not in EXIT_TYPES:
                raise ValueError(f"type must be one of {', '.join(sorted(EXIT_TYPES))}")
            spec = replace(spec, type=value)
        else:
            raise ValueError(f"unknown exit attribute {key!r}")
    return spec


def state_file_for(key: Path, state_dir: Path | None = None) -> Path:
    """Where the agent with wallet file ``key`` keeps its usage: ``KEYFILE.usage.json`` in
    ``state_dir``, by default next to the key."""
    return (state_dir or key.parent) / f"{key.name}.usage.json"


def create_key_file(path: Path) -> str:
    """Write a new wallet's private key (hex) to ``path``, readable by its owner only.

    Returns the wallet's address; raises FileExistsError rather than overwrite a wallet.
    """
    account = Account.create()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(account.key.hex() + "\n")
    return str(account.address)


def load_key(path: Path, password: str | None) -> LocalAccount:
    """A wallet from a keystore JSON file (with ``password``) or a file holding a hex private key.

    Raises OSError (``FileNotFoundError``…) when the file cannot be read, and ``KeyFileError``
    (naming the file, never its contents) when it holds no key or the password does not open it.
    Logs a warning, without refusing the key as ssh would, when group or others may access the
    file: anyone who can read it holds the wallet.
    """
    with path.open("rb") as handle:
        _warn_if_loose(path, os.fstat(handle.fileno()).st_mode)
        raw = handle.read(_MAX_KEY_FILE + 1)
    if len(raw) > _MAX_KEY_FILE:
        raise KeyFileError(path, f"larger than {_MAX_KEY_FILE} bytes: not a key file")
    text = raw.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        if password is None:
            raise KeyFileError(path, "this keystore needs a password (IPSX_KEY_PASSWORD)")
        try:
            key = Account.decrypt(json.loads(text), password)
        except (ValueError, TypeError, KeyError):  # a JSON error, a wrong password ("MAC mismatch")
            raise KeyFileError(path, "not a keystore this password opens") from None
        return cast(LocalAccount, Account.from_key(key))
    try:
        return cast(LocalAccount, Account.from_key(text))
    except ValueError:  # binascii.Error too; its text may quote the file's contents
        raise KeyFileError(path, "not a hex private key (64 hex digits) or a keystore JSON") from None


def _warn_if_loose(path: Path, mode: int) -> None:
    if os.name == "posix" and mode & _LOOSE_MODE:
        log.warning(
            "the wallet key file %s is accessible by others (mode %03o): chmod 600 it",
            path,
            stat.S_IMODE(mode),
        )


@dataclass(frozen=True, slots=True)
class AgentSettings:
    gateway_host: str
    gateway_port: int
    account: LocalAccount = field(repr=False)
    exits: tuple[ExitSpec, ...] = (ExitSpec(),)
    policy: ExitPolicy = field(default_factory=ExitPolicy)
    limits: Limits = field(default_factory=Limits)  # caps, rates, serving hours
    state_file: Path | None = None  # where the usage counted against the caps is kept
    tls: bool = False  # connect to the gateway's tunnel endpoint with TLS
    ca_file: str | None = None  # CA bundle that signed the gateway's certificate (default: system's)
    websocket_path: str | None = None  # tunnel as a WebSocket at this path (ws:// or wss:// with tls)
    proxy: tuple[str, int] | None = None  # reach the gateway through this HTTP proxy (CONNECT)
    proxy_credentials: str | None = field(default=None, repr=False)  # its "user:password"
    pool_size: int = 16  # idle data connections kept open to the gateway
    reuse_data: bool = True  # carry stream after stream on a data connection, where the gateway agrees
    gateway_region: str | None = None  # keep tunnels to the gateway nodes of this region only
    dial_timeout: float = 8 * SECONDS
    handshake_timeout: float = 10 * SECONDS
    idle_timeout: float = 300 * SECONDS
    backoff_initial: float = 0.5 * SECONDS
    backoff_max: float = 30 * SECONDS

"""The proxy URL builder: targeting choices in, the exact proxy user name and URLs out.

The user name is checked with the gateway's own parser (``gateway.targeting.parse_username``), so
the page never hands out a string the gateway would refuse; a bad choice raises
:class:`BuilderError` naming the key and the gateway's reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from gateway.targeting import TargetingError, parse_username

# The targeting keys the builder offers, in the order they are written into the user name.
KEYS: Final = ("country", "region", "city", "type", "asn", "session", "sessttl", "maxprice", "proto", "order")
SECRET_PLACEHOLDER: Final = "YOUR_API_KEY"  # noqa: S105 (where the user puts theirs)


class BuilderError(ValueError):
    """A targeting choice the gateway would refuse: ``key`` and the gateway's ``reason``."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Built:
    username: str
    http_address: str  # the gateway's HTTP proxy, HOST:PORT
    socks_address: str  # and its SOCKS5 port
    choices: dict[str, str]

    def http_url(self, secret: str = SECRET_PLACEHOLDER) -> str:
        return f"http://{self.username}:{secret}@{self.http_address}"

    def socks_url(self, secret: str = SECRET_PLACEHOLDER) -> str:
        return f"socks5h://{self.username}:{secret}@{self.socks_address}"


def build(account: str, choices: Mapping[str, str], *, http_address: str, socks_address: str) -> Built:
    """The user name for ``account`` with the non-empty ``choices`` (unknown keys are ignored)
    and its HTTP and SOCKS5 proxy URLs; raises BuilderError for a value the gateway refuses."""
    picked = {key: choices[key].strip() for key in KEYS if choices.get(key, "").strip()}
    for key, value in picked.items():
        if "-" in value or ":" in value or "@" in value:
            raise BuilderError(key, "may not contain '-', ':' or '@'")
    username = "-".join([account, *(f"{key}-{value}" for key, value in picked.items())])
    try:
        parse_username(username)
    except TargetingError as error:
        raise BuilderError(error.key, error.reason) from None
    return Built(username=username, http_address=http_address, socks_address=socks_address, choices=picked)

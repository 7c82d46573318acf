"""Every Redis key the inspecting port uses, in one place."""

from __future__ import annotations

PREFIX = "ipsx:inspect"


def enabled(account: str) -> str:
    """String ``"1"`` while the account ``account`` (its name) has TLS inspection on; absent when off."""
    return f"{PREFIX}:enabled:{account}"

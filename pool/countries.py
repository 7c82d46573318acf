"""The countries an exit may be in and a request may ask for: ISO 3166-1 alpha-2 codes.

Codes are written lower-case everywhere in IPSX (``fr``, ``de``). A well-formed code that names no
country (``zz``) is refused where it is given (a targeting username, an order, an agent's
``--bind``), so a typo is a clear error instead of a search for exits that cannot exist.
"""

from __future__ import annotations

from iso3166 import countries_by_alpha2

COUNTRY_CODES: tuple[str, ...] = tuple(sorted(code.lower() for code in countries_by_alpha2))
"""Every ISO 3166-1 alpha-2 code, lower case, sorted."""
_KNOWN = frozenset(COUNTRY_CODES)
# What people type for a country whose ISO code differs.
_HINTS = {"uk": "the United Kingdom is 'gb'", "el": "Greece is 'gr'"}


def unknown_country(code: str) -> str | None:
    """Why the lower-case two-letter ``code`` is no country, or None when it is one."""
    if code in _KNOWN:
        return None
    hint = _HINTS.get(code)
    return f"'{code}' is no ISO 3166-1 country code" + (f" ({hint})" if hint else "")

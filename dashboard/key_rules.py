"""An API key's standing rules as the REST API shows them: a JSON object, stored as the gateway's
user-name grammar (``gateway.targeting.parse_rules``).

``{"retry_on": [403, 429], "max_retries": 2, "country": "fr"}`` is stored as
``country-fr-retryon-403,429-maxretries-2``; every connection made with the key gets those keys
unless its user name or ``X-IPSX-*`` headers give others.
"""

from __future__ import annotations

from typing import Any

from dashboard.problems import Problem
from gateway.targeting import TargetingError, parse_rules
from pool.countries import COUNTRY_CODES

# JSON field → the grammar's key, in the order they are written.
_FIELDS = {
    "country": "country",
    "region": "region",
    "city": "city",
    "asn": "asn",
    "type": "type",
    "session_ttl": "sessttl",
    "retry_on": "retryon",
    "max_retries": "maxretries",
}
_INTEGERS = frozenset({"asn", "session_ttl", "max_retries"})

SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "what every connection made with the key gets unless it says otherwise",
    "additionalProperties": False,
    "properties": {
        "country": {"enum": list(COUNTRY_CODES), "description": "ISO 3166-1 alpha-2 country code"},
        "region": {"type": "string", "pattern": "^[a-z0-9_]{1,64}$"},
        "city": {"type": "string", "pattern": "^[a-z0-9_]{1,64}$"},
        "asn": {"type": "integer", "minimum": 1, "maximum": 4294967295},
        "type": {"enum": ["residential", "mobile", "datacenter"]},
        "session_ttl": {"type": "integer", "minimum": 1, "maximum": 86400},
        "retry_on": {
            "type": "array",
            "items": {"type": "integer", "minimum": 100, "maximum": 599},
            "minItems": 1,
            "maxItems": 16,
        },
        "max_retries": {"type": "integer", "minimum": 0, "maximum": 5},
    },
}


def _invalid(reason: str) -> Problem:
    return Problem(422, "invalid_field", f"'rules': {reason}", field="rules")


def _integer(item: Any) -> Any:
    """JSON's 2.0 is the integer 2 (JSON Schema says so); anything else as it came."""
    return int(item) if isinstance(item, float) and item.is_integer() else item


def rules_text(value: dict[str, Any] | None) -> str | None:
    """The stored form of a ``rules`` object (None for none or an empty one); Problem 422 when it
    holds an unknown field or a value the gateway would refuse."""
    if not value:
        return None
    parts: list[str] = []
    for name, item in value.items():
        if name not in _FIELDS:
            raise _invalid(f"unknown field {name[:40]!r}")
        if name == "retry_on":
            if not isinstance(item, list) or not item or len(item) > 16:
                raise _invalid("'retry_on' must be a list of 1 to 16 HTTP statuses")
            item = [_integer(code) for code in item]
            if not all(type(code) is int and 100 <= code <= 599 for code in item):
                raise _invalid("'retry_on' must hold HTTP statuses from 100 to 599")
            text = ",".join(str(code) for code in item)
        elif name in _INTEGERS:
            item = _integer(item)
            if type(item) is not int:
                raise _invalid(f"'{name}' must be an integer")
            text = str(item)
        else:
            if not isinstance(item, str) or not item.isascii() or "-" in item:
                raise _invalid(f"'{name}' must be a string without '-'")
            text = item
        parts += [_FIELDS[name], text]
    joined = "-".join(parts)
    try:
        parse_rules(joined)
    except TargetingError as error:
        raise _invalid(error.reason) from None
    return joined


def rules_json(text: str | None) -> dict[str, Any] | None:
    """A key's stored rules as the API shows them (None: the key has none)."""
    if not text:
        return None
    rules = parse_rules(text)
    f = rules.filters
    found: dict[str, Any] = {
        "country": f.country,
        "region": f.region,
        "city": f.city,
        "asn": f.asn,
        "type": f.type,
        "session_ttl": rules.sessttl,
        "retry_on": None if rules.retryon is None else sorted(rules.retryon),
        "max_retries": rules.maxretries,
    }
    return {name: value for name, value in found.items() if value is not None}

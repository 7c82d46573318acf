"""OpenAPI entries of the scraper-rule routes (exit bans), merged into ``openapi.document()``."""

from __future__ import annotations

from typing import Any

from dashboard.openapi_base import _AUTH_ERRORS, _BODY_ERRORS, _SECURED, _json, _object_body, _problem
from pool.bans import MAX_BAN_TTL

_DOMAIN = {
    "type": "string",
    "minLength": 1,
    "maxLength": 253,
    "pattern": "^[A-Za-z0-9_-]{1,63}([.][A-Za-z0-9_-]{1,63})*$",
    "description": "a host name or IP address; a ban covers its subdomains too",
}
_EXIT_ID = {"type": "string", "pattern": "^[0-9a-f]{16}$", "description": "as a response's X-IPSX-Exit"}
_TTL = {"type": "integer", "minimum": 1, "maximum": MAX_BAN_TTL, "default": 3600, "description": "seconds"}
_BAN = {
    "type": "object",
    "required": ["exit_id", "domain", "until"],
    "properties": {"exit_id": _EXIT_ID, "domain": {"type": "string"}, "until": {"type": "integer"}},
}
_NEEDS_PROXY = "needs the proxy scope"

PATHS: dict[str, Any] = {
    "/v1/sessions/{session}/ban": {
        "post": {
            "operationId": "banSessionExit",
            "summary": f"Ban the exit a sticky session is bound to, for a domain ({_NEEDS_PROXY})",
            "security": _SECURED,
            "parameters": [
                {
                    "name": "session",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9]{1,32}$"},
                }
            ],
            "requestBody": _object_body(["domain"], {"domain": _DOMAIN, "ttl": _TTL}),
            "responses": {
                "201": _json("the ban: the session's next connection uses another exit", _BAN),
                "404": _problem("the session is not bound to an exit"),
                **_BODY_ERRORS,
                **_AUTH_ERRORS,
            },
        }
    },
    "/v1/bans": {
        "get": {
            "operationId": "listBans",
            "summary": f"The caller's bans in force for one domain ({_NEEDS_PROXY})",
            "security": _SECURED,
            "parameters": [{"name": "domain", "in": "query", "required": True, "schema": _DOMAIN}],
            "responses": {
                "200": _json(
                    "bans recorded for exactly this domain",
                    {
                        "type": "object",
                        "required": ["domain", "bans"],
                        "properties": {
                            "domain": {"type": "string"},
                            "bans": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["exit_id", "until"],
                                    "properties": {"exit_id": _EXIT_ID, "until": {"type": "integer"}},
                                },
                            },
                        },
                    },
                ),
                "400": _problem("an unknown or repeated query parameter"),
                "422": _problem("the domain is malformed"),
                **_AUTH_ERRORS,
            },
        },
        "post": {
            "operationId": "banExit",
            "summary": f"Ban an exit by the id X-IPSX-Exit named, for a domain ({_NEEDS_PROXY})",
            "security": _SECURED,
            "requestBody": _object_body(
                ["exit_id", "domain"], {"exit_id": _EXIT_ID, "domain": _DOMAIN, "ttl": _TTL}
            ),
            "responses": {"201": _json("the ban", _BAN), **_BODY_ERRORS, **_AUTH_ERRORS},
        },
    },
    "/v1/bans/{domain}/{exit_id}": {
        "delete": {
            "operationId": "liftBan",
            "summary": f"End a ban early ({_NEEDS_PROXY})",
            "security": _SECURED,
            "parameters": [
                {"name": "domain", "in": "path", "required": True, "schema": _DOMAIN},
                {"name": "exit_id", "in": "path", "required": True, "schema": _EXIT_ID},
            ],
            "responses": {
                "204": {"description": "the ban is lifted"},
                "404": _problem("no such ban"),
                "422": _problem("the domain is malformed"),
                **_AUTH_ERRORS,
            },
        }
    },
}

"""The REST API's TLS inspection: the account's switch and its CA certificate.

Inspection is off unless the requester turns it on; the inspecting port (``ipsx inspect``, never
the gateway's port) then decrypts its HTTPS with leaf certificates minted by the account's own CA,
which the requester installs from ``GET /v1/inspection/ca.pem``. ``PATHS`` holds these routes'
OpenAPI entries, for ``dashboard.openapi.document()`` to merge.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from dashboard.appkeys import PG, REDIS, SETTINGS
from dashboard.openapi_base import _AUTH_ERRORS, _BODY_ERRORS, _json, _object_body
from dashboard.problems import field, json_response, read_json
from dashboard.routes import authorized
from gateway.inspect import ca, state

routes = web.RouteTableDef()

PROXY = "proxy"  # turning inspection on changes how the account's proxy traffic is handled


def _authority_json(authority: ca.Authority | None) -> dict[str, Any] | None:
    if authority is None:
        return None
    cert = authority.certificate
    return {
        "sha256": authority.fingerprint,
        "subject": cert.subject.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


async def _state_json(request: web.Request, account_id: int, account: str) -> dict[str, Any]:
    enabled = await state.is_enabled(request.app[REDIS], account)
    authority = await ca.find_authority(request.app[PG], account_id)
    return {"enabled": enabled, "ca": _authority_json(authority)}


@routes.get("/v1/inspection")
async def get_inspection(request: web.Request) -> web.Response:
    """Whether the caller's account has TLS inspection on, and its CA (``null`` until made)."""
    caller = await authorized(request)
    return json_response(await _state_json(request, caller.account.id, caller.account.name))


@routes.put("/v1/inspection")
async def put_inspection(request: web.Request) -> web.Response:
    """Turn TLS inspection on or off; turning it on makes the account's CA if it has none."""
    caller = await authorized(request, PROXY)
    body = await read_json(request)
    enabled = field(body, "enabled", bool)
    if enabled:
        await ca.authority_for(
            request.app[PG],
            caller.account.id,
            caller.account.name,
            secret=request.app[SETTINGS].inspect_ca_secret,
        )
    await state.set_enabled(request.app[REDIS], caller.account.name, enabled)
    return json_response(await _state_json(request, caller.account.id, caller.account.name))


@routes.get("/v1/inspection/ca.pem")
async def get_ca(request: web.Request) -> web.Response:
    """The account's CA certificate (PEM), made on the first request; never its key."""
    caller = await authorized(request)
    authority = await ca.authority_for(
        request.app[PG],
        caller.account.id,
        caller.account.name,
        secret=request.app[SETTINGS].inspect_ca_secret,
    )
    return web.Response(
        body=authority.cert_pem,
        content_type="application/x-pem-file",
        headers={
            "Content-Disposition": f'attachment; filename="ipsx-inspection-ca-{caller.account.name}.pem"',
            "X-IPSX-CA-SHA256": authority.fingerprint,
        },
    )


_SECURED: list[dict[str, list[str]]] = [{"bearer": []}]
_STATE = {
    "type": "object",
    "required": ["enabled", "ca"],
    "properties": {
        "enabled": {"type": "boolean", "description": "whether the inspecting port serves the account"},
        "ca": {
            "description": "the account's CA, null until made (by ca.pem or turning inspection on)",
            "type": ["object", "null"],
            "required": ["sha256", "subject", "not_before", "not_after"],
            "properties": {
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "of the DER"},
                "subject": {"type": "string"},
                "not_before": {"type": "string"},
                "not_after": {"type": "string"},
            },
        },
    },
}

PATHS: dict[str, Any] = {
    "/v1/inspection": {
        "get": {
            "operationId": "getInspection",
            "summary": "Whether TLS inspection is on for your account, and its CA",
            "security": _SECURED,
            "responses": {"200": _json("the account's inspection state", _STATE), **_AUTH_ERRORS},
        },
        "put": {
            "operationId": "setInspection",
            "summary": "Turn TLS inspection on or off (needs the proxy scope)",
            "description": "On, the inspecting port (`ipsx inspect`, never the gateway's port) decrypts "
            "the account's HTTPS with certificates minted by its own CA (GET /v1/inspection/ca.pem, "
            "made now if needed), so that targeting headers and request rules apply to HTTPS too. "
            "Tunnels already open keep going until they close.",
            "security": _SECURED,
            "requestBody": _object_body(["enabled"], {"enabled": {"type": "boolean"}}),
            "responses": {
                "200": _json("the account's inspection state", _STATE),
                **_BODY_ERRORS,
                **_AUTH_ERRORS,
            },
        },
    },
    "/v1/inspection/ca.pem": {
        "get": {
            "operationId": "inspectionCa",
            "summary": "Your account's inspection CA certificate, to install in your clients",
            "description": "PEM; made on the first request, the same afterwards. Never its key.",
            "security": _SECURED,
            "responses": {
                "200": {
                    "description": "the CA certificate",
                    "headers": {
                        "X-IPSX-CA-SHA256": {
                            "description": "SHA-256 of the certificate (DER), lower-case hex",
                            "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                        }
                    },
                    "content": {"application/x-pem-file": {"schema": {"type": "string"}}},
                },
                **_AUTH_ERRORS,
            },
        }
    },
}

"""PAC files per request order: browsers and OS proxy settings use an order's deals without code.

A PAC file is fetched by the browser without credentials, so its URL is a capability: it names
the account and the order and carries an HMAC of both under the API's secret. The file holds no
secret. It sends every request to the gateway, and the browser asks once for the proxy
credentials: the user name ``<account>-order-<order id>`` (the gateway then routes only through
that order's active deals) and the API key's secret. There is deliberately no ``DIRECT``
fallback: a gateway that refuses must not make the browser leave from the user's own address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

    from dashboard.settings import ApiSettings

CONTENT_TYPE = "application/x-ns-proxy-autoconfig"
_TOKEN_CHARS = 32  # of base64url: 192 bits of the HMAC
_PROXY_ADDRESS = re.compile(r"[A-Za-z0-9.\-\[\]:]{1,255}:[0-9]{1,5}")
_ACCOUNT = re.compile(r"[a-z0-9_]{1,32}", re.ASCII)
_ORDER = re.compile(r"[A-Za-z0-9_]{1,64}", re.ASCII)
_TOKEN = re.compile(rf"[A-Za-z0-9_\-]{{{_TOKEN_CHARS}}}", re.ASCII)
# Under /pac/ everything after the account and the order is (or may be, mistyped) the capability.
_AFTER_ORDER = re.compile(r"(/pac/(?:[^/]*/){0,2})(.+)", re.DOTALL)
REDACTED = "<redacted>"


def token(secret: str, account: str, order_id: str) -> str:
    """The capability that lets anyone holding the URL fetch the order's PAC file."""
    mac = hmac.new(secret.encode(), f"ipsx-pac\n{account}\n{order_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode()[:_TOKEN_CHARS]


def check(secret: str, account: str, order_id: str, presented: str) -> bool:
    """Whether ``presented`` is the capability of that account's order; any malformed part of
    the URL (other characters, other lengths) is simply not one."""
    if not (_ACCOUNT.fullmatch(account) and _ORDER.fullmatch(order_id) and _TOKEN.fullmatch(presented)):
        return False
    return hmac.compare_digest(token(secret, account, order_id), presented)


def path(secret: str, account: str, order_id: str) -> str:
    return f"/pac/{account}/{order_id}/{token(secret, account, order_id)}.pac"


def url(settings: ApiSettings, request: web.Request, account: str, order_id: str) -> str:
    """The order's capability URL, on the configured base (:meth:`ApiSettings.base_url`): the
    request gives only the port it came in on, for an API on port 0, never its Host header."""
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    bound = sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else None
    return settings.base_url(bound if isinstance(bound, int) else None) + path(
        settings.jwt_secret, account, order_id
    )


def loggable(path: str) -> str:
    """``path`` as a log line may hold it: a PAC URL's token is cut off, other paths are kept."""
    found = _AFTER_ORDER.fullmatch(path)
    return path if found is None else found.group(1) + REDACTED


def username(account: str, order_id: str) -> str:
    """The proxy user name that pins a connection to the order's deals."""
    return f"{account}-order-{order_id}"


def valid_proxy_address(text: str) -> bool:
    return _PROXY_ADDRESS.fullmatch(text) is not None


def render(proxy_address: str, account: str, order_id: str) -> str:
    """The PAC file: local names go direct, everything else through the gateway, never around it."""
    if not valid_proxy_address(proxy_address):
        raise ValueError("the proxy address must be HOST:PORT")
    return f"""// IPSX proxy auto-config for order {order_id}.
// Proxy user name: {username(account, order_id)}  password: your API key's secret.
// Only this order's deals serve these requests; a refusal is shown, never bypassed.
function FindProxyForURL(url, host) {{
  if (isPlainHostName(host) || host === "localhost" || shExpMatch(host, "127.*") || host === "[::1]") {{
    return "DIRECT";
  }}
  return "PROXY {proxy_address}";
}}
"""

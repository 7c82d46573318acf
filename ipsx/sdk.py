"""A small Python client of the IPSX REST API (standard library only), used by the CLI.

    from ipsx.sdk import Client
    api = Client("http://127.0.0.1:8000", token="ipsx_…")          # an API key …
    api = Client.sign_in("http://127.0.0.1:8000", wallet_account)   # … or Sign-In with Ethereum
    api.place_request(filters={"country": "fr"}, ips=20, duration_s=1800,
                      traffic_bytes=5 * 10**9, max_price_per_gb="2000000000000000000")

Errors come back as :class:`ApiError` carrying the problem document's status, code and detail.
Redirects are followed within the API's origin only: one to another scheme, host or port would
carry the token there, so it ends in :class:`RedirectRefused` instead.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import IO, Any

from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

DEFAULT_TIMEOUT = 30.0


class ApiError(Exception):
    """The API answered with an error: ``status``, the problem's ``code`` and ``detail``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class RedirectRefused(ApiError):
    """The API answered with a redirect the client does not follow: to another origin (which
    would receive the token), or one urllib does not follow for the method. ``location`` is
    where it pointed, as scheme, host and port only."""

    def __init__(self, status: int, location: str, detail: str) -> None:
        super().__init__(status, "redirect_refused", detail)
        self.location = location


def _origin(url: str) -> tuple[str, str, int | None]:
    """``url``'s scheme, host and port (the scheme's default when it names none)."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or ""), port or {"http": 80, "https": 443}.get(scheme)


def _shown(url: str) -> str:
    """``url`` as scheme, host and port: without credentials, path or query."""
    scheme, host, port = _origin(url)
    return f"{scheme}://{host}:{port}" if scheme and host else "an unparsable location"


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to the origin the request went to; any other is left to the
    caller as an HTTPError (urllib copies the Authorization header onto every redirect)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if _origin(newurl) != _origin(req.full_url):
            return None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def siwe_message(domain: str, uri: str, address: str, nonce: str, chain_id: int) -> str:
    """An EIP-4361 message for signing in to the API at ``domain``, valid for five minutes."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    stamp = now.isoformat().replace("+00:00", "Z")
    until = (now + dt.timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    return (
        f"{domain} wants you to sign in with your Ethereum account:\n{address}\n\n"
        "Sign in to IPSX\n\n"
        f"URI: {uri}\nVersion: 1\nChain ID: {chain_id}\nNonce: {nonce}\n"
        f"Issued At: {stamp}\nExpiration Time: {until}"
    )


class Client:
    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._opener = urllib.request.build_opener(_SameOriginRedirects)

    @classmethod
    def sign_in(cls, base_url: str, account: LocalAccount, *, timeout: float = DEFAULT_TIMEOUT) -> Client:
        """Sign in with the wallet ``account`` (EIP-4361); the client then carries the session token."""
        client = cls(base_url, timeout=timeout)
        nonce = client._call("POST", "/v1/auth/nonce", {})
        message = siwe_message(
            nonce["domain"], client.base_url + "/", account.address, nonce["nonce"], nonce["chain_id"]
        )
        signature = account.sign_message(encode_defunct(text=message)).signature.hex()
        session = client._call(
            "POST", "/v1/auth/siwe", {"message": message, "signature": "0x" + signature.removeprefix("0x")}
        )
        client._token = session["token"]
        return client

    # -- plumbing ------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        query: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (the caller's URL)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            with error:
                if 300 <= error.code < 400:
                    raise _redirect_refused(error, url) from None
                raise _api_error(error) from None
        return json.loads(raw) if raw else None

    def _pages(self, path: str, limit: int) -> Iterator[dict[str, Any]]:
        cursor = None
        while True:
            page = self._call("GET", path, query={"limit": limit, "cursor": cursor})
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    # -- the API -------------------------------------------------------------------------------

    def me(self) -> dict[str, Any]:
        return dict(self._call("GET", "/v1/me"))

    def create_key(self, label: str = "") -> dict[str, Any]:
        return dict(self._call("POST", "/v1/keys", {"label": label}))

    def revoke_key(self, key_id: str) -> None:
        self._call("DELETE", f"/v1/keys/{urllib.parse.quote(key_id, safe='')}")

    def usage(self, limit: int = 50) -> Iterator[dict[str, Any]]:
        return self._pages("/v1/usage", limit)

    def ledger(self, limit: int = 50) -> Iterator[dict[str, Any]]:
        return self._pages("/v1/ledger", limit)

    def orders(self, limit: int = 50) -> Iterator[dict[str, Any]]:
        return self._pages("/v1/orders", limit)

    def deals(self, limit: int = 50) -> Iterator[dict[str, Any]]:
        return self._pages("/v1/deals", limit)

    def deal(self, deal_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/deals/{urllib.parse.quote(deal_id, safe='')}"))

    def report(self, deal_id: str, report: str) -> dict[str, Any]:
        """Report on your deal: ``ready``/``serving``/``stopped`` as its provider,
        ``accepted``/``ok``/``complaint`` as its requester, or ``cancel`` before it is active."""
        path = f"/v1/deals/{urllib.parse.quote(deal_id, safe='')}/reports"
        return dict(self._call("POST", path, {"report": report}))

    def resolve(
        self, deal_id: str, *, bill: str | None = None, billable_bytes: int | None = None
    ) -> dict[str, Any]:
        """Operator: decide a disputed deal — ``bill`` one of gateway, agent, lower, none, or an
        explicit ``billable_bytes``."""
        body: dict[str, Any] = (
            {"bill": bill} if billable_bytes is None else {"billable_bytes": billable_bytes}
        )
        path = f"/v1/deals/{urllib.parse.quote(deal_id, safe='')}/resolution"
        return dict(self._call("POST", path, body))

    def place_offer(self, *, idempotency_key: str | None = None, **terms: Any) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return dict(self._call("POST", "/v1/offers", terms, headers=headers))

    def place_request(self, *, idempotency_key: str | None = None, **terms: Any) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return dict(self._call("POST", "/v1/requests", terms, headers=headers))

    def place_package(self, *, idempotency_key: str | None = None, **terms: Any) -> dict[str, Any]:
        """A package: ``count`` IPs for ``duration_s`` sharing ``total_traffic_bytes``, placed as
        the request order it maps onto."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return dict(self._call("POST", "/v1/packages", terms, headers=headers))

    def amend(self, order_id: str, **changes: Any) -> dict[str, Any]:
        """Change an open order: ``price_per_gb``/``price_per_hour`` of an offer, ``ips``/
        ``max_price_per_gb``/``max_price_per_hour`` of a request (amounts in base units)."""
        return dict(self._call("PATCH", f"/v1/orders/{urllib.parse.quote(order_id, safe='')}", changes))

    def cancel(self, order_id: str) -> None:
        self._call("DELETE", f"/v1/orders/{urllib.parse.quote(order_id, safe='')}")

    def exits(self) -> list[dict[str, Any]]:
        """Your live exits as a provider: id, source address and attributes."""
        return list(self._call("GET", "/v1/exits")["items"])

    def order_pac(self, order_id: str) -> dict[str, Any]:
        """The PAC file URL of your request order (``pac_url``), for browsers and OS proxy
        settings, and the proxy user name (``proxy_username``) they answer the gateway with."""
        return dict(self._call("GET", f"/v1/orders/{urllib.parse.quote(order_id, safe='')}/pac"))

    def withdraw(
        self, amount: int, *, source: str = "balance", idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Ask for ``amount`` base units of your ``balance`` or ``earnings`` to be sent to your
        wallet address (a key needs the ``withdraw`` scope); the funds are reserved meanwhile."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        body = {"amount": str(amount), "source": source}
        return dict(self._call("POST", "/v1/withdrawals", body, headers=headers))

    def withdrawals(self, limit: int = 50) -> Iterator[dict[str, Any]]:
        return self._pages("/v1/withdrawals", limit)

    def cancel_withdrawal(self, withdrawal_id: int) -> dict[str, Any]:
        return dict(self._call("DELETE", f"/v1/withdrawals/{int(withdrawal_id)}"))

    def complete_withdrawal(self, withdrawal_id: int, tx_hash: str) -> dict[str, Any]:
        """Operator: the tokens were sent in ``tx_hash``."""
        path = f"/v1/withdrawals/{int(withdrawal_id)}/completion"
        return dict(self._call("POST", path, {"tx_hash": tx_hash}))

    def approve_withdrawal(self, withdrawal_id: int) -> dict[str, Any]:
        """Operator: let the chain payer send the withdrawal (above its approval limit, or failed)."""
        return dict(self._call("POST", f"/v1/withdrawals/{int(withdrawal_id)}/approval", {}))

    def reject_withdrawal(self, withdrawal_id: int, reason: str) -> dict[str, Any]:
        """Operator: refuse the withdrawal; its funds go back."""
        return dict(self._call("POST", f"/v1/withdrawals/{int(withdrawal_id)}/rejection", {"reason": reason}))

    def payment_domain(self) -> dict[str, Any]:
        """The EIP-712 domain (``chain_id``, ``verifying_contract``) balance proofs are signed for."""
        return dict(self._call("GET", "/v1/payments/domain"))

    def channels(self) -> list[dict[str, Any]]:
        """Your open payment channels, as the chain watcher confirmed them."""
        return list(self._call("GET", "/v1/channels")["items"])

    def channel_consent(self, channel_id: str) -> dict[str, Any]:
        """The operator's consent to close your requester channel cooperatively at the balance of
        your latest proof (once every invoice is paid), with that proof."""
        return dict(self._call("POST", f"/v1/channels/{urllib.parse.quote(channel_id, safe='')}/consent", {}))

    def invoices(self, limit: int = 50) -> Iterator[dict[str, Any]]:
        return self._pages("/v1/invoices", limit)

    def pay_invoice(self, invoice_id: int, signature: str) -> dict[str, Any]:
        """Pay an invoice with your balance proof (0x-hex signature) of its cumulative amount."""
        return dict(self._call("POST", f"/v1/invoices/{int(invoice_id)}/payment", {"signature": signature}))

    def depth(self, country: str | None = None, type: str | None = None) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/market/depth", query={"country": country, "type": type})["levels"])

    def prices(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/market/prices")["index"])


def _redirect_refused(error: urllib.error.HTTPError, url: str) -> RedirectRefused:
    location = urllib.parse.urljoin(url, error.headers.get("Location") or "")
    where = _shown(location)
    if _origin(location) != _origin(url):
        why = "another origin: not followed, since the API token would go there"
    else:
        why = "not followed for this request (or a redirect loop)"
    return RedirectRefused(error.code, where, f"the API at {_shown(url)} redirected to {where}, {why}")


def _api_error(error: urllib.error.HTTPError) -> ApiError:
    try:
        problem = json.loads(error.read())
        return ApiError(
            error.code, str(problem.get("type", "")).rsplit("/", 1)[-1], str(problem.get("detail", ""))
        )
    except (ValueError, AttributeError):
        return ApiError(error.code, "http_error", error.reason)

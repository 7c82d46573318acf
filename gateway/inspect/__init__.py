"""The TLS-inspecting port: a separate worker (``ipsx inspect``) built on mitmproxy's proxy core.

A requester who enabled inspection (``PUT /v1/inspection``) and installed its own CA
(``GET /v1/inspection/ca.pem``) points HTTPS_PROXY at this port instead of the gateway's. Each
decrypted request goes on through the gateway itself, over a CONNECT made with the requester's own
Proxy-Authorization: the gateway authenticates, targets, meters and bills it like any other tunnel,
and this worker applies the request rules (``X-IPSX-Retry-On``, ``X-IPSX-Ban``) that need the
plaintext. The worker never connects to an origin by any other way.

- ``keys``, ``state``: the per-account switch, in Redis;
- ``ca``: one certificate authority per account, in PostgreSQL;
- ``rules``: the ``X-IPSX-*`` headers of a decrypted request, without I/O;
- ``upstream``: tunnels through the gateway to origins, and HTTP/1.1 over them (h11);
- ``addon``: the mitmproxy addons; ``server``: the worker's lifecycle;
- ``settings``, ``errors``: its settings, and its failures with the status each is answered with.
"""

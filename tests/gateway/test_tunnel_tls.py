"""The provider tunnel over TLS: agents verify the gateway's certificate, streams still relay."""

from __future__ import annotations

import asyncio
import os
import ssl
import uuid
from pathlib import Path

import pytest

from gateway.agent.session import AgentSession
from gateway.tunnel import exit_id_for
from tests.gateway.test_tunnel import BIND, WAIT, Gateway, ticket
from tests.gateway.test_tunnel_websocket import agent_settings


async def test_stream_through_a_tls_tunnel(
    tls_gateway: Gateway, certificate: tuple[Path, Path], echo_port: int
) -> None:
    settings = agent_settings(tls_gateway, path=None, tls=True, ca_file=str(certificate[0]))
    session = AgentSession(settings)
    await session.login()
    serving = asyncio.create_task(session.serve())
    try:
        exit_id = exit_id_for(settings.account.address, BIND)
        assert tls_gateway.hub.is_available(exit_id)
        conn = await tls_gateway.hub.open_stream(ticket(exit_id, uuid.uuid4().hex), "127.0.0.1", echo_port)
        assert conn.transport is not None
        assert conn.transport.get_extra_info("ssl_object") is not None  # the data connection is TLS
        payload = os.urandom(200_000)
        conn.write(payload)
        echoed = b""
        async with asyncio.timeout(WAIT):
            while len(echoed) < len(payload):
                chunk = await conn.read()
                assert chunk, "the stream ended early"
                echoed += chunk
        assert echoed == payload
        conn.close()
        tls_gateway.hub.stream_closed(exit_id)
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await session.close()


async def test_agent_refuses_a_gateway_certificate_it_cannot_verify(tls_gateway: Gateway) -> None:
    session = AgentSession(agent_settings(tls_gateway, path=None, tls=True, ca_file=None))  # system CAs only
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await session.login()
    finally:
        await session.close()


async def test_plain_agent_cannot_log_in_to_a_tls_tunnel(tls_gateway: Gateway) -> None:
    session = AgentSession(agent_settings(tls_gateway, path=None, tls=False, ca_file=None))
    try:
        with pytest.raises((OSError, TimeoutError, ValueError)):
            await session.login()
        assert await tls_gateway.registry.live_ids() == set()
    finally:
        await session.close()

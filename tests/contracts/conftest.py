"""Chains (anvil and eth-tester) and deployed contracts shared by the contract tests.

Session fixtures start the chains and deploy once; the function fixture ``chain`` takes a snapshot
before each test and reverts to it after, so every test starts from the same state.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from eth_typing import ChecksumAddress

from contracts.deploy import deploy_contract
from tests.contracts.chain import Chain, anvil_chain, eth_tester_chain

TOKEN = 10**18
CHALLENGE_PERIOD = 1000
USER_FUNDS = 1_000_000 * TOKEN


@pytest.fixture(scope="session")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    with anvil_chain(tmp_path_factory.mktemp("anvil")) as chain:
        yield chain


@pytest.fixture(scope="session")
def eth_tester() -> Chain:
    return eth_tester_chain()


@pytest.fixture(scope="session", params=["anvil", "eth_tester"])
def session_chain(request: pytest.FixtureRequest) -> Chain:
    chain: Chain = request.getfixturevalue(request.param)
    return chain


@pytest.fixture
def chain(session_chain: Chain) -> Iterator[Chain]:
    """The chain, reverted after the test to its state before it."""
    with session_chain.isolated():
        yield session_chain


@dataclass
class Roles:
    """Who is who in the contract tests (node accounts, whose keys the tests hold)."""

    deployer: ChecksumAddress
    sale: ChecksumAddress
    early_adopters: ChecksumAddress
    bounty: ChecksumAddress
    team: ChecksumAddress
    users: list[ChecksumAddress]


def roles_of(chain: Chain) -> Roles:
    a = chain.accounts
    return Roles(a[0], a[1], a[2], a[3], a[4], a[5:10])


@dataclass
class ChannelsEnv:
    """An unlocked token whose users hold ``USER_FUNDS`` each, and a ``PaymentChannels`` on it."""

    roles: Roles
    token: Any
    channels: Any


@pytest.fixture(scope="session")
def channels_session(session_chain: Chain) -> ChannelsEnv:
    roles = roles_of(session_chain)
    token = deploy_contract(
        session_chain.w3,
        "IPSXToken",
        roles.sale,
        roles.early_adopters,
        roles.bounty,
        roles.team,
        sender=roles.deployer,
    )
    session_chain.transact(token.functions.enableTransfers(), roles.sale)
    channels = deploy_contract(
        session_chain.w3, "PaymentChannels", token.address, CHALLENGE_PERIOD, sender=roles.deployer
    )
    for user in roles.users:
        session_chain.transact(token.functions.transfer(user, USER_FUNDS), roles.sale)
        session_chain.transact(token.functions.approve(channels.address, 2**256 - 1), user)
    return ChannelsEnv(roles, token, channels)


@pytest.fixture
def channels_env(channels_session: ChannelsEnv, chain: Chain) -> ChannelsEnv:
    return channels_session

"""IPSXToken: fixed supply, the whitepaper's allocations, and the transfer lock."""

from __future__ import annotations

from typing import Any

import pytest

from contracts import load
from contracts.deploy import deploy_contract
from tests.contracts.chain import Chain, events, reverts
from tests.contracts.conftest import TOKEN, Roles, roles_of

SUPPLY = 1_800_000_000 * TOKEN


@pytest.fixture
def roles(chain: Chain) -> Roles:
    return roles_of(chain)


@pytest.fixture
def token(chain: Chain, roles: Roles) -> Any:
    # ``sale`` is a plain account here, so the test can play the sale's part.
    return deploy_contract(
        chain.w3,
        "IPSXToken",
        roles.sale,
        roles.early_adopters,
        roles.bounty,
        roles.team,
        sender=roles.deployer,
    )


def balance(token: Any, who: str) -> int:
    return int(token.functions.balanceOf(who).call())


def test_metadata_and_supply(token: Any) -> None:
    f = token.functions
    assert (f.name().call(), f.symbol().call(), f.decimals().call()) == ("IPSX", "IPSX", 18)
    assert f.totalSupply().call() == f.TOTAL_SUPPLY().call() == SUPPLY


def test_allocations_follow_the_whitepaper(token: Any, roles: Roles) -> None:
    # 50 % funding participants (the sale), 27.5 % early adopters and strategic partners,
    # 2.5 % bounty campaign, 20 % team.
    expected = {
        roles.sale: 900_000_000 * TOKEN,
        roles.early_adopters: 495_000_000 * TOKEN,
        roles.bounty: 45_000_000 * TOKEN,
        roles.team: 360_000_000 * TOKEN,
    }
    assert {who: balance(token, who) for who in expected} == expected
    assert sum(expected.values()) == SUPPLY
    assert expected[roles.sale] * 2 == SUPPLY and expected[roles.early_adopters] * 1000 == SUPPLY * 275
    f = token.functions
    assert (f.sale().call(), f.earlyAdopters().call(), f.bounty().call(), f.team().call()) == (
        roles.sale,
        roles.early_adopters,
        roles.bounty,
        roles.team,
    )


def test_constructor_event_mints_once_per_allocation(chain: Chain, token: Any, roles: Roles) -> None:
    receipt = chain.w3.eth.get_transaction_receipt(
        chain.w3.eth.get_block(chain.w3.eth.block_number)["transactions"][0]
    )
    zero = "0x0000000000000000000000000000000000000000"
    assert [(e["from"], e["to"]) for e in events(token, "Transfer", receipt)] == [
        (zero, roles.sale),
        (zero, roles.early_adopters),
        (zero, roles.bounty),
        (zero, roles.team),
    ]


def test_no_function_can_create_tokens() -> None:
    names = {item["name"] for item in load("IPSXToken").abi if item["type"] == "function"}
    assert not {n for n in names if "mint" in n.lower() or "issue" in n.lower()}
    assert names >= {"transfer", "transferFrom", "approve", "enableTransfers"}


def test_constructor_reverts_on_zero_address(chain: Chain, roles: Roles, token: Any) -> None:
    zero = "0x0000000000000000000000000000000000000000"
    with reverts(token, "ZeroAddress"):
        deploy_contract(
            chain.w3, "IPSXToken", roles.sale, zero, roles.bounty, roles.team, sender=roles.deployer
        )


def test_locked_transfers(chain: Chain, token: Any, roles: Roles) -> None:
    user, other = roles.users[0], roles.users[1]
    assert token.functions.transfersEnabled().call() is False
    # the sale and the two pools that pay people during the funding period may send
    for payer in (roles.sale, roles.early_adopters, roles.bounty):
        assert token.functions.canTransfer(payer).call() is True
        chain.transact(token.functions.transfer(user, TOKEN), payer)
    assert balance(token, user) == 3 * TOKEN
    # everyone else, the team included, may not
    for locked in (user, roles.team):
        assert token.functions.canTransfer(locked).call() is False
        with reverts(token, "TransfersLocked", locked):
            token.functions.transfer(other, 1).transact({"from": locked})
    # nor through an allowance
    chain.transact(token.functions.approve(other, TOKEN), user)
    with reverts(token, "TransfersLocked", user):
        token.functions.transferFrom(user, other, 1).transact({"from": other})
    assert balance(token, other) == 0


def test_enable_transfers_call_state_event(chain: Chain, token: Any, roles: Roles) -> None:
    user, other = roles.users[0], roles.users[1]
    chain.transact(token.functions.transfer(user, TOKEN), roles.bounty)
    receipt = chain.transact(token.functions.enableTransfers(), roles.sale)
    assert events(token, "TransfersEnabled", receipt) == [{}]
    assert token.functions.transfersEnabled().call() is True
    chain.transact(token.functions.transfer(other, 1), user)
    chain.transact(token.functions.transfer(other, 2), roles.team)
    assert balance(token, other) == 3
    assert balance(token, user) == TOKEN - 1
    assert token.functions.totalSupply().call() == SUPPLY


def test_enable_transfers_reverts(token: Any, roles: Roles, chain: Chain) -> None:
    for caller in (roles.deployer, roles.team, roles.users[0]):
        with reverts(token, "OnlySale", caller):
            token.functions.enableTransfers().transact({"from": caller})
    chain.transact(token.functions.enableTransfers(), roles.sale)
    with reverts(token, "AlreadyEnabled"):
        token.functions.enableTransfers().transact({"from": roles.sale})

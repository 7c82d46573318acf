"""TokenSale: the sale window, the cap, finalize, the pro-rata share of unsold tokens, the sweep of
what no contributor can claim, withdrawal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from contracts.deploy import contract_at, deploy_contract
from tests.contracts.chain import Chain, events, reverts
from tests.contracts.conftest import TOKEN, Roles, roles_of

ETH = 10**18
RATE = 10_000  # IPSX base units per wei: 1 ETH buys 10,000 IPSX
CAP = 10 * ETH
SALE_ALLOCATION = 900_000_000 * TOKEN
OPENS_IN = 100
DURATION = 1000


@dataclass
class SaleEnv:
    chain: Chain
    roles: Roles
    sale: Any
    token: Any
    start: int
    end: int

    @property
    def wallet(self) -> str:
        return self.roles.users[4]

    def buy(self, buyer: str, value: int) -> Any:
        return self.chain.transact(self.sale.functions.buy(), buyer, value=value)

    def open_sale(self) -> None:
        self.chain.travel(self.start - self.chain.now())

    def close_sale(self) -> None:
        self.chain.travel(self.end - self.chain.now())


def deploy_sale(chain: Chain, roles: Roles, *, cap: int = CAP, rate: int = RATE, start: int, end: int) -> Any:
    return deploy_contract(
        chain.w3,
        "TokenSale",
        roles.users[4],
        rate,
        cap,
        start,
        end,
        roles.early_adopters,
        roles.bounty,
        roles.team,
        sender=roles.deployer,
    )


@pytest.fixture
def env(chain: Chain) -> SaleEnv:
    roles = roles_of(chain)
    start = chain.now() + OPENS_IN
    sale = deploy_sale(chain, roles, start=start, end=start + DURATION)
    token = contract_at(chain.w3, "IPSXToken", sale.functions.token().call())
    return SaleEnv(chain, roles, sale, token, start, start + DURATION)


def tokens_of(env: SaleEnv, who: str) -> int:
    return int(env.token.functions.balanceOf(who).call())


def test_constructor_state(env: SaleEnv) -> None:
    f = env.sale.functions
    assert (f.wallet().call(), f.rate().call(), f.cap().call()) == (env.wallet, RATE, CAP)
    assert (f.startTime().call(), f.endTime().call()) == (env.start, env.end)
    assert (f.weiRaised().call(), f.tokensSold().call(), f.finalized().call()) == (0, 0, False)
    # the sale created the token, which minted the sale's 50 % to it
    assert env.token.functions.sale().call() == env.sale.address
    assert tokens_of(env, env.sale.address) == SALE_ALLOCATION
    assert env.token.functions.transfersEnabled().call() is False


@pytest.mark.parametrize(
    ("rate", "cap", "length"),
    [(0, CAP, DURATION), (RATE, 0, DURATION), (RATE, CAP, 0), (10**9, 900_001 * ETH, DURATION)],
    ids=["zero rate", "zero cap", "empty window", "cap above allocation"],
)
def test_constructor_reverts_on_bad_config(env: SaleEnv, rate: int, cap: int, length: int) -> None:
    with reverts(env.sale, "InvalidConfig"):
        deploy_sale(env.chain, env.roles, rate=rate, cap=cap, start=env.start, end=env.start + length)


def test_buy_call_state_event(env: SaleEnv) -> None:
    buyer = env.roles.users[0]
    env.open_sale()
    receipt = env.buy(buyer, ETH + 3)
    tokens = (ETH + 3) * RATE
    assert events(env.sale, "TokensPurchased", receipt) == [
        {"buyer": buyer, "weiAmount": ETH + 3, "tokenAmount": tokens}
    ]
    assert events(env.token, "Transfer", receipt) == [
        {"from": env.sale.address, "to": buyer, "value": tokens}
    ]
    env.buy(buyer, 2 * ETH)
    f = env.sale.functions
    assert f.contributions(buyer).call() == 3 * ETH + 3
    assert (f.weiRaised().call(), f.tokensSold().call()) == (3 * ETH + 3, (3 * ETH + 3) * RATE)
    assert tokens_of(env, buyer) == (3 * ETH + 3) * RATE
    assert env.chain.w3.eth.get_balance(env.sale.address) == 3 * ETH + 3
    # bought tokens stay locked until the sale is finalized
    with reverts(env.token, "TransfersLocked", buyer):
        env.token.functions.transfer(env.roles.users[1], 1).transact({"from": buyer})


def test_plain_ether_transfer_buys(env: SaleEnv) -> None:
    buyer = env.roles.users[0]
    env.open_sale()
    tx = env.chain.w3.eth.send_transaction({"from": buyer, "to": env.sale.address, "value": ETH})
    env.chain.w3.eth.wait_for_transaction_receipt(tx)
    assert env.sale.functions.contributions(buyer).call() == ETH
    assert tokens_of(env, buyer) == ETH * RATE


def test_buy_reverts_outside_the_window(env: SaleEnv) -> None:
    buyer = env.roles.users[0]
    with reverts(env.sale, "SaleNotOpen"):
        env.sale.functions.buy().transact({"from": buyer, "value": ETH})
    env.open_sale()
    env.buy(buyer, ETH)
    env.close_sale()
    with reverts(env.sale, "SaleNotOpen"):
        env.sale.functions.buy().transact({"from": buyer, "value": ETH})
    assert env.sale.functions.weiRaised().call() == ETH


def test_buy_reverts_on_zero_and_above_cap(env: SaleEnv) -> None:
    a, b = env.roles.users[0], env.roles.users[1]
    env.open_sale()
    with reverts(env.sale, "ZeroPurchase"):
        env.sale.functions.buy().transact({"from": a, "value": 0})
    env.buy(a, CAP - ETH)
    with reverts(env.sale, "CapExceeded", CAP - ETH, ETH + 1, CAP):
        env.sale.functions.buy().transact({"from": b, "value": ETH + 1})
    env.buy(b, ETH)  # exactly up to the cap
    assert env.sale.functions.weiRaised().call() == CAP
    with reverts(env.sale, "CapExceeded", CAP, 1, CAP):
        env.sale.functions.buy().transact({"from": b, "value": 1})


def test_finalize_reverts_before_the_end(env: SaleEnv) -> None:
    with reverts(env.sale, "SaleNotOver"):
        env.sale.functions.finalize().transact({"from": env.roles.users[0]})
    env.open_sale()
    env.buy(env.roles.users[0], ETH)
    with reverts(env.sale, "SaleNotOver"):
        env.sale.functions.finalize().transact({"from": env.roles.users[0]})


def test_finalize_call_state_event_after_the_end(env: SaleEnv) -> None:
    buyer = env.roles.users[0]
    env.open_sale()
    env.buy(buyer, 2 * ETH)
    env.close_sale()
    receipt = env.chain.transact(env.sale.functions.finalize(), env.roles.users[3])  # anyone may finalize
    unsold = SALE_ALLOCATION - 2 * ETH * RATE
    assert events(env.sale, "Finalized", receipt) == [
        {"weiRaised": 2 * ETH, "tokensSold": 2 * ETH * RATE, "unsold": unsold}
    ]
    assert events(env.token, "TransfersEnabled", receipt) == [{}]
    assert env.sale.functions.finalized().call() is True
    assert env.sale.functions.unsoldAtFinalize().call() == unsold
    assert env.token.functions.transfersEnabled().call() is True
    env.chain.transact(env.token.functions.transfer(env.roles.users[1], 5), buyer)
    assert tokens_of(env, env.roles.users[1]) == 5
    with reverts(env.sale, "AlreadyFinalized"):
        env.sale.functions.finalize().transact({"from": buyer})


def test_finalize_early_once_the_cap_is_reached(env: SaleEnv) -> None:
    env.open_sale()
    env.buy(env.roles.users[0], CAP)
    assert env.chain.now() < env.end
    env.chain.transact(env.sale.functions.finalize(), env.roles.users[0])
    assert env.sale.functions.finalized().call() is True
    assert env.sale.functions.unsoldAtFinalize().call() == SALE_ALLOCATION - CAP * RATE
    with reverts(env.sale, "SaleNotOpen"):
        env.sale.functions.buy().transact({"from": env.roles.users[1], "value": 1})


def test_unsold_tokens_go_to_contributors_pro_rata_to_the_base_unit(env: SaleEnv) -> None:
    a, b, c, d = env.roles.users[:4]
    env.open_sale()
    paid = {a: ETH + 1, b: 2 * ETH + 7, c: 3, d: ETH // 3}
    for buyer, value in paid.items():
        env.buy(buyer, value)
    env.buy(a, 5)
    paid[a] += 5
    env.close_sale()
    env.chain.transact(env.sale.functions.finalize(), a)
    raised = sum(paid.values())
    unsold = SALE_ALLOCATION - raised * RATE
    shares = {who: unsold * value // raised for who, value in paid.items()}
    for who in paid:
        assert env.sale.functions.unsoldShareOf(who).call() == shares[who]
        receipt = env.chain.transact(env.sale.functions.distributeUnsold(who), d)
        assert events(env.sale, "UnsoldDistributed", receipt) == [{"contributor": who, "amount": shares[who]}]
        assert tokens_of(env, who) == paid[who] * RATE + shares[who]
    dust = tokens_of(env, env.sale.address)
    assert dust == unsold - sum(shares.values())
    assert 0 <= dust < len(paid)
    assert sum(tokens_of(env, who) for who in paid) + dust == SALE_ALLOCATION
    assert env.token.functions.totalSupply().call() == 1_800_000_000 * TOKEN


def test_distribute_unsold_reverts(env: SaleEnv) -> None:
    a, stranger = env.roles.users[0], env.roles.users[1]
    env.open_sale()
    env.buy(a, ETH)
    with reverts(env.sale, "NotFinalized"):
        env.sale.functions.distributeUnsold(a).transact({"from": a})
    env.close_sale()
    env.chain.transact(env.sale.functions.finalize(), a)
    with reverts(env.sale, "NotAContributor", stranger):
        env.sale.functions.distributeUnsold(stranger).transact({"from": a})
    env.chain.transact(env.sale.functions.distributeUnsold(a), stranger)
    with reverts(env.sale, "AlreadyDistributed", a):
        env.sale.functions.distributeUnsold(a).transact({"from": a})
    # the only contributor gets the whole allocation
    assert tokens_of(env, a) == SALE_ALLOCATION


def test_sweep_unsold_call_with_no_contributor_sends_the_allocation_to_the_wallet(env: SaleEnv) -> None:
    anyone = env.roles.users[0]
    env.close_sale()
    env.chain.transact(env.sale.functions.finalize(), anyone)
    assert env.sale.functions.unsoldAtFinalize().call() == SALE_ALLOCATION
    assert env.sale.functions.unsoldShareOf(anyone).call() == 0
    assert env.sale.functions.sweepableUnsold().call() == SALE_ALLOCATION
    receipt = env.chain.transact(env.sale.functions.sweepUnsold(), anyone)
    assert events(env.sale, "UnsoldSwept", receipt) == [{"wallet": env.wallet, "amount": SALE_ALLOCATION}]
    assert events(env.token, "Transfer", receipt) == [
        {"from": env.sale.address, "to": env.wallet, "value": SALE_ALLOCATION}
    ]
    assert (tokens_of(env, env.wallet), tokens_of(env, env.sale.address)) == (SALE_ALLOCATION, 0)
    with reverts(env.sale, "NothingToSweep"):
        env.sale.functions.sweepUnsold().transact({"from": anyone})
    # Tokens sent to the sale after that are nobody's share either.
    env.chain.transact(env.token.functions.transfer(env.sale.address, 5), env.wallet)
    assert env.sale.functions.sweepableUnsold().call() == 5


def test_sweep_unsold_reverts_before_finalization(env: SaleEnv) -> None:
    with reverts(env.sale, "NotFinalized"):
        env.sale.functions.sweepUnsold().transact({"from": env.wallet})
    env.close_sale()  # over, but not finalized yet
    assert env.sale.functions.sweepableUnsold().call() == 0
    with reverts(env.sale, "NotFinalized"):
        env.sale.functions.sweepUnsold().transact({"from": env.wallet})
    assert tokens_of(env, env.sale.address) == SALE_ALLOCATION


def test_sweep_unsold_never_takes_a_contributors_share(env: SaleEnv) -> None:
    a, b, c, d = env.roles.users[:4]
    env.open_sale()
    paid = {a: ETH + 1, b: 2 * ETH + 7, c: 3, d: ETH // 3}
    for buyer, value in paid.items():
        env.buy(buyer, value)
    env.close_sale()
    env.chain.transact(env.sale.functions.finalize(), a)
    raised = sum(paid.values())
    unsold = SALE_ALLOCATION - raised * RATE
    shares = {who: unsold * value // raised for who, value in paid.items()}
    # Nobody claimed yet: every unsold token may still be someone's share.
    assert env.sale.functions.sweepableUnsold().call() == 0
    with reverts(env.sale, "NothingToSweep"):
        env.sale.functions.sweepUnsold().transact({"from": env.wallet})
    # Once a has its share, what a's rounding left is nobody's: that much, and no more, goes.
    env.chain.transact(env.sale.functions.distributeUnsold(a), a)
    assert env.sale.functions.weiDistributed().call() == paid[a]
    dust = unsold - shares[a] - unsold * (raised - paid[a]) // raised
    assert dust > 0
    receipt = env.chain.transact(env.sale.functions.sweepUnsold(), c)
    assert events(env.sale, "UnsoldSwept", receipt) == [{"wallet": env.wallet, "amount": dust}]
    with reverts(env.sale, "NothingToSweep"):
        env.sale.functions.sweepUnsold().transact({"from": env.wallet})
    # The others still get their whole shares after that sweep.
    for who in (b, c, d):
        env.chain.transact(env.sale.functions.distributeUnsold(who), who)
        assert tokens_of(env, who) == paid[who] * RATE + shares[who]
    # Every share was sent: the rest of the rounding goes to the wallet, and the sale is empty.
    rest = unsold - sum(shares.values()) - dust
    assert rest > 0
    assert env.sale.functions.sweepableUnsold().call() == rest
    env.chain.transact(env.sale.functions.sweepUnsold(), env.wallet)
    assert tokens_of(env, env.sale.address) == 0
    assert tokens_of(env, env.wallet) == unsold - sum(shares.values())
    assert sum(tokens_of(env, who) for who in (*paid, env.wallet)) == SALE_ALLOCATION


def test_withdraw_call_state_event(env: SaleEnv) -> None:
    w3 = env.chain.w3
    env.open_sale()
    env.buy(env.roles.users[0], 3 * ETH)
    env.close_sale()
    env.chain.transact(env.sale.functions.finalize(), env.roles.users[0])
    before = w3.eth.get_balance(env.wallet)
    receipt = env.chain.transact(env.sale.functions.withdraw(), env.wallet)
    gas = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert events(env.sale, "Withdrawn", receipt) == [{"wallet": env.wallet, "amount": 3 * ETH}]
    assert w3.eth.get_balance(env.wallet) == before + 3 * ETH - gas
    assert w3.eth.get_balance(env.sale.address) == 0
    with reverts(env.sale, "NothingToWithdraw"):
        env.sale.functions.withdraw().transact({"from": env.wallet})


def test_withdraw_reverts(env: SaleEnv) -> None:
    env.open_sale()
    env.buy(env.roles.users[0], ETH)
    with reverts(env.sale, "NotFinalized"):
        env.sale.functions.withdraw().transact({"from": env.wallet})
    env.close_sale()
    env.chain.transact(env.sale.functions.finalize(), env.roles.users[0])
    with reverts(env.sale, "OnlyWallet", env.roles.users[0]):
        env.sale.functions.withdraw().transact({"from": env.roles.users[0]})
    assert env.chain.w3.eth.get_balance(env.sale.address) == ETH

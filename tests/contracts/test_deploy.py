"""contracts.deploy: the four contracts deployed and wired together."""

from __future__ import annotations

from contracts.deploy import Allocations, SaleTerms, contract_at, deploy
from tests.contracts.chain import Chain
from tests.contracts.conftest import TOKEN, roles_of


def test_deploy_wires_the_four_contracts(chain: Chain) -> None:
    roles = roles_of(chain)
    operator = roles.users[0]
    now = chain.now()
    d = deploy(
        chain.w3,
        deployer=roles.deployer,
        operator=operator,
        sale=SaleTerms(wallet=roles.users[1], rate=5000, cap=10**20, start=now + 10, end=now + 100),
        allocations=Allocations(early_adopters=roles.early_adopters, bounty=roles.bounty, team=roles.team),
        challenge_period=600,
    )
    assert len(set(d.addresses.values())) == 4
    assert d.token.functions.sale().call() == d.sale.address
    assert d.token.functions.balanceOf(d.sale.address).call() == 900_000_000 * TOKEN
    assert d.token.functions.team().call() == roles.team
    assert (d.sale.functions.rate().call(), d.sale.functions.endTime().call()) == (5000, now + 100)
    assert d.channels.functions.token().call() == d.token.address
    assert d.channels.functions.challengePeriod().call() == 600
    assert d.anchor.functions.owner().call() == operator
    assert d.chain_id == chain.chain_id
    assert bytes(d.channels.functions.domainSeparator().call()) == d.channel_domain.separator
    again = contract_at(chain.w3, "PaymentChannels", d.channels.address.lower())
    assert again.address == d.channels.address

"""What the chain services share: one Ethereum node, spoken to as the operator.

The chain watcher (``chain.py``), the anchorer (``anchoring.py``) and the chain payer
(``withdrawal_sender.py``) each hold a web3 connection to one node and the operator's account.
``OperatorNode`` opens that connection (or takes the one ``web3_factory`` makes, which its caller
then closes), gives the operator's address, and closes what it opened (``aclose`` or ``async with``).
Their retry loops log a failed round with :func:`failure`, never with the error's text.

All three sign with the operator's key, each taking the node's next ("pending") nonce, so one may
replace another's pending transaction, and a node may evict one from its pool. A transaction sent
and not mined is still coming only while the node holds it (:meth:`OperatorNode._known`) and no
other transaction took its nonce (:meth:`OperatorNode._nonce_taken`); otherwise it must be sent again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self

import aiohttp
import asyncpg
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from hexbytes import HexBytes
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import TransactionNotFound


def failure(error: BaseException) -> str:
    """``error`` fit for a log line. A database error keeps its message; any other only its type
    and the HTTP status it carries, if any: the text of an aiohttp or web3 error can hold the RPC
    URL, where node providers put API keys."""
    if isinstance(error, asyncpg.PostgresError | asyncpg.InterfaceError):
        return f"{type(error).__name__}: {error}"
    status = getattr(error, "status", None)
    return type(error).__name__ if status is None else f"{type(error).__name__} (HTTP {status})"


class OperatorNode:
    """A web3 connection to one node and the operator's account (see the module's docstring).

    With ``rpc_timeout`` a call gives up after that many seconds and is not retried by web3: the
    service's next round is the retry.
    """

    def __init__(
        self,
        *,
        rpc_url: str,
        operator_key: str,
        web3_factory: Callable[[], AsyncWeb3[Any]] | None = None,
        rpc_timeout: float | None = None,
    ) -> None:
        self._owns_w3 = web3_factory is None
        if web3_factory is not None:
            self._w3: AsyncWeb3[Any] = web3_factory()
        elif rpc_timeout is None:
            self._w3 = AsyncWeb3(AsyncHTTPProvider(rpc_url))
        else:
            self._w3 = AsyncWeb3(
                AsyncHTTPProvider(
                    rpc_url,
                    request_kwargs={"timeout": aiohttp.ClientTimeout(total=rpc_timeout)},
                    exception_retry_configuration=None,
                )
            )
        self._operator: LocalAccount = Account.from_key(operator_key)

    @property
    def operator(self) -> ChecksumAddress:
        return self._operator.address

    async def _known(self, tx_hash: str) -> bool:
        """Whether the node holds the transaction (pending in its pool, or mined)."""
        try:
            await self._w3.eth.get_transaction(HexBytes(tx_hash))
        except TransactionNotFound:
            return False
        return True

    async def _nonce_taken(self, nonce: int, head: int, confirmations: int) -> bool:
        """Whether a transaction of the operator with this nonce is ``confirmations`` deep below
        block ``head``. The caller, having found no receipt of its own transaction with that nonce
        (asked after reading ``head``), learns that another transaction took it: its own can never
        be mined."""
        deep = max(head - confirmations, 0)
        return int(await self._w3.eth.get_transaction_count(self.operator, deep)) > nonce

    async def aclose(self) -> None:
        if self._owns_w3:
            await self._w3.provider.disconnect()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

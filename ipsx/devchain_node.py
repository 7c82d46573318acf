"""The chain of ``ipsx devchain``: eth-tester's py-evm chain answering JSON-RPC, without I/O.

:class:`DevChain` takes JSON-RPC bodies and returns bodies, one lock around the chain. Like anvil
it mines a block for every transaction, its chain id is 31337 unless told otherwise, and it holds
anvil's ten well-known development accounts (the ``test … junk`` mnemonic) with 10,000 ether each,
unlocked for ``eth_sendTransaction``. Block timestamps follow the wall clock (plus what
``evm_increaseTime`` added).

:meth:`DevChain.dump` writes the whole chain as bytes and ``DevChain(state=...)`` reads them back
(:class:`StateFileError` when they are not such a state, or of another chain id).
"""

from __future__ import annotations

import contextlib
import json
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, cast

from eth_utils.address import to_canonical_address, to_checksum_address
from eth_utils.exceptions import ValidationError

from ipsx import devchain_rpc as rpc

# eth-tester and py-evm (the test extra) are imported where they are used: importing them takes
# over a second, which `ipsx --help` and `ipsx health` would pay for a parser.
if TYPE_CHECKING:
    from eth.abc import SignedTransactionAPI, StateAPI

log = logging.getLogger("ipsx.devchain")

SECONDS: Final = 1
ETHER: Final = 10**18
GWEI: Final = 10**9
DEFAULT_CHAIN_ID: Final = 31337  # anvil's
ANVIL_MNEMONIC: Final = "test test test test test test test test test test test junk"
ANVIL_HD_PATH: Final = "m/44'/60'/0'/0"
DEV_ACCOUNTS: Final = 10
DEV_BALANCE: Final = 10_000 * ETHER
PRIORITY_FEE: Final = 1 * GWEI  # what eth_maxPriorityFeePerGas suggests, like anvil
MAX_BATCH: Final = 100  # requests in one JSON-RPC batch
MAX_MINE: Final = 1000  # blocks one evm_mine may ask for
MAX_TIME_STEP: Final = 100 * 365 * 86400 * SECONDS  # one evm_increaseTime
STATE_MAGIC: Final = b"IPSX-DEVCHAIN-1\n"


class StateFileError(ValueError):
    """A ``--state`` file that is not a devchain state, or of another chain id."""


class DevChain:
    """The node: :meth:`handle` answers a JSON-RPC body (one request or a batch).

    Every method runs under one lock: eth-tester is not thread-safe, and a transaction and its
    block are one step, as on anvil.
    """

    def __init__(self, chain_id: int = DEFAULT_CHAIN_ID, state: bytes | None = None) -> None:
        from eth.db.atomic import AtomicDB
        from eth.db.backends.memory import MemoryDB
        from eth_tester import EthereumTester, PyEVMBackend  # type: ignore[import-untyped]

        backend = PyEVMBackend.from_mnemonic(
            ANVIL_MNEMONIC,
            genesis_state_overrides={"balance": DEV_BALANCE},
            num_accounts=DEV_ACCOUNTS,
            hd_path=ANVIL_HD_PATH,
        )
        # eth-tester's chain class has a fixed chain id; a subclass of it has ours.
        chain_class = type("DevChainClass", (type(backend.chain),), {"chain_id": chain_id})
        database = backend.chain.chaindb.db if state is None else AtomicDB(MemoryDB(_load(state, chain_id)))
        backend.chain = chain_class(database)
        self.chain_id = chain_id
        self._tester = EthereumTester(backend)
        self._accounts: tuple[str, ...] = tuple(self._tester.get_accounts())  # anvil's order
        self._lock = threading.Lock()
        self._clock_offset = 0  # seconds added by evm_increaseTime
        self._methods: dict[str, Callable[[list[Any]], Any]] = {
            "web3_clientVersion": lambda _: "ipsx-devchain/eth-tester-py-evm",
            "net_version": lambda _: str(self.chain_id),
            "net_listening": lambda _: True,
            "eth_chainId": lambda _: hex(self.chain_id),
            "eth_blockNumber": lambda _: hex(self._tester.get_block_by_number("latest")["number"]),
            "eth_accounts": lambda _: list(self._accounts),
            "eth_getBlockByNumber": self._block_by_number,
            "eth_getBlockByHash": self._block_by_hash,
            "eth_getBalance": lambda p: hex(
                self._tester.get_balance(rpc.address(rpc.param(p, 0)), rpc.tag(p, 1))
            ),
            "eth_getTransactionCount": lambda p: hex(
                self._tester.get_nonce(rpc.address(rpc.param(p, 0)), rpc.tag(p, 1))
            ),
            "eth_getCode": lambda p: self._tester.get_code(rpc.address(rpc.param(p, 0)), rpc.tag(p, 1)),
            "eth_gasPrice": lambda _: hex(self._base_fee() + PRIORITY_FEE),
            "eth_maxPriorityFeePerGas": lambda _: hex(PRIORITY_FEE),
            "eth_feeHistory": self._fee_history,
            "eth_call": lambda p: "0x" + self._call(rpc.tx_request(rpc.param(p, 0)), rpc.tag(p, 1)).hex(),
            "eth_estimateGas": lambda p: hex(self._estimate(rpc.tx_request(rpc.param(p, 0)), rpc.tag(p, 1))),
            "eth_sendTransaction": self._send_transaction,
            "eth_sendRawTransaction": self._send_raw_transaction,
            "eth_getTransactionByHash": self._transaction,
            "eth_getTransactionReceipt": self._receipt,
            "eth_getLogs": self._logs,
            "evm_mine": self._mine,
            "evm_increaseTime": self._increase_time,
        }

    # ---- JSON-RPC framing --------------------------------------------------------------------

    def handle(self, body: bytes) -> bytes | None:
        """The answer to ``body``; ``None`` when it held notifications only (nothing to answer)."""
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return rpc.dumps(rpc.error_reply(None, rpc.RpcError(-32700, "parse error")))
        if not isinstance(request, list):
            reply = self._reply(request)
            return None if reply is None else rpc.dumps(reply)
        if not request or len(request) > MAX_BATCH:
            return rpc.dumps(
                rpc.error_reply(None, rpc.RpcError(-32600, f"a batch holds 1 to {MAX_BATCH} requests"))
            )
        replies = [reply for reply in map(self._reply, request) if reply is not None]
        return rpc.dumps(replies) if replies else None

    def _reply(self, request: Any) -> dict[str, Any] | None:
        if not isinstance(request, dict):
            return rpc.error_reply(None, rpc.RpcError(-32600, "invalid request"))
        params = request.get("params", [])
        try:
            if not isinstance(request.get("method"), str):
                raise rpc.RpcError(-32600, "invalid request: no method")
            if not isinstance(params, list):
                raise rpc.InvalidParams("params must be an array")
            result = self.call(request["method"], params)
        except rpc.RpcError as error:
            return None if "id" not in request else rpc.error_reply(request["id"], error)
        return None if "id" not in request else {"jsonrpc": "2.0", "id": request["id"], "result": result}

    def call(self, method: str, params: list[Any]) -> Any:
        """The result of ``method``; raises :class:`rpc.RpcError`: ``-32602`` for params the method
        does not take, ``-32000`` for what the chain refuses (a bad nonce, no such block),
        ``-32603`` for our own bug (logged)."""
        handler = self._methods.get(method)
        if handler is None:
            raise rpc.RpcError(-32601, f"method {method} is not supported by ipsx devchain")
        from eth_tester.exceptions import BlockNotFound, TransactionFailed  # type: ignore[import-untyped]
        from eth_tester.exceptions import ValidationError as TesterValidationError

        with self._lock:
            try:
                return handler(params)
            except rpc.RpcError:
                raise
            except (TesterValidationError, ValidationError, TransactionFailed, BlockNotFound) as error:
                raise rpc.RpcError(-32000, str(error) or type(error).__name__) from None
            except Exception as error:
                log.exception("%s failed", method)
                raise rpc.RpcError(-32603, f"internal error: {type(error).__name__}") from None

    # ---- state -------------------------------------------------------------------------------

    def dump(self) -> bytes:
        """The whole chain (every block, receipt and state node), for ``DevChain(state=...)``."""
        with self._lock:
            store: dict[bytes, bytes] = self._tester.backend.chain.chaindb.db.wrapped_db.kv_store
            parts = [STATE_MAGIC, struct.pack(">QI", self.chain_id, len(store))]
            for key, value in store.items():
                parts += [struct.pack(">II", len(key), len(value)), key, value]
        return b"".join(parts)

    # ---- methods -----------------------------------------------------------------------------

    def _block_by_number(self, params: list[Any]) -> dict[str, Any] | None:
        from eth_tester.exceptions import BlockNotFound

        full = rpc.flag(params, 1)
        try:
            return rpc.block_json(
                self._tester.get_block_by_number(rpc.block_tag(rpc.param(params, 0)), full), full
            )
        except BlockNotFound:
            return None

    def _block_by_hash(self, params: list[Any]) -> dict[str, Any] | None:
        from eth_tester.exceptions import BlockNotFound

        full = rpc.flag(params, 1)
        try:
            return rpc.block_json(
                self._tester.get_block_by_hash(rpc.hash32(rpc.param(params, 0)), full), full
            )
        except BlockNotFound:
            return None

    def _base_fee(self) -> int:
        return int(self._tester.get_block_by_number("pending")["base_fee_per_gas"])

    def _fee_history(self, params: list[Any]) -> dict[str, Any]:
        """Base fees and gas use of the last ``count`` blocks; every reward percentile is the
        suggested priority fee (transactions here never compete for a block)."""
        count = min(rpc.quantity(rpc.param(params, 0)), 1024)
        newest = self._tester.get_block_by_number(rpc.tag(params, 1))["number"]
        percentiles = params[2] if len(params) > 2 else []
        if not isinstance(percentiles, list):
            raise rpc.InvalidParams("the reward percentiles must be an array")
        oldest = max(0, newest - count + 1)
        blocks = [self._tester.get_block_by_number(n) for n in range(oldest, newest + 1)]
        return {
            "oldestBlock": hex(oldest),
            "baseFeePerGas": [hex(b["base_fee_per_gas"]) for b in blocks] + [hex(self._base_fee())],
            "gasUsedRatio": [b["gas_used"] / b["gas_limit"] for b in blocks],
            "reward": [[hex(PRIORITY_FEE) for _ in percentiles] for _ in blocks],
        }

    def _call(self, tx: dict[str, Any], tag: str | int) -> bytes:
        """Runs ``tx`` on the state of block ``tag`` and forgets it. Like geth's, the call is
        free (no base fee, gas price 0 unless given) and may come from any address; raises
        ``rpc.RpcError`` (code 3 with the revert data, as geth and anvil answer) when it reverts."""
        with self._free_state(tag) as state:
            return rpc.output(
                state.apply_transaction(self._message(state, tx, tx.get("gas", state.gas_limit)))
            )

    def _estimate(self, tx: dict[str, Any], tag: str | int) -> int:
        """The least gas ``tx`` succeeds with (py-evm's binary search); a revert at the block's
        gas limit is answered as by :meth:`_call`."""
        with self._free_state(tag) as state:
            message = self._message(state, tx, state.gas_limit)
            snapshot = state.snapshot()
            rpc.output(state.apply_transaction(message))
            state.revert(snapshot)
            return int(self._tester.backend.chain.gas_estimator(state, message))

    @contextlib.contextmanager
    def _free_state(self, tag: str | int) -> Iterator[StateAPI]:
        """The state after block ``tag`` (``pending``: the latest), in a block on top of it
        whose base fee is 0; changes to it are forgotten."""
        chain = self._tester.backend.chain
        latest = self._tester.get_block_by_number("latest")["number"]
        header = chain.get_canonical_block_header_by_number(min(self._number(tag, latest), latest))
        with chain.get_vm(at_header=header).in_costless_state() as state:
            yield state

    def _message(self, state: StateAPI, tx: dict[str, Any], gas: int) -> SignedTransactionAPI:
        from eth.vm.spoof import SpoofTransaction

        sender = to_canonical_address(tx["from"])
        fields = {
            "nonce": tx.get("nonce", state.get_nonce(sender)),
            "gas": gas,
            "to": to_canonical_address(tx["to"]) if "to" in tx else b"",  # b"": a creation
            "value": tx.get("value", 0),
            "data": bytes.fromhex(tx.get("data", "0x")[2:]),
        }
        builder = self._tester.backend.chain.get_transaction_builder()
        if "gas_price" in tx:
            unsigned = builder.create_unsigned_transaction(gas_price=tx["gas_price"], **fields)
        else:
            unsigned = builder.new_unsigned_dynamic_fee_transaction(
                chain_id=self.chain_id,
                max_priority_fee_per_gas=tx.get("max_priority_fee_per_gas", 0),
                max_fee_per_gas=tx.get("max_fee_per_gas", 0),
                access_list=(),
                **fields,
            )
        # A spoofed sender: the unsigned transaction runs as if ``sender`` had signed it.
        return cast("SignedTransactionAPI", SpoofTransaction(unsigned, from_=sender))

    def _send_transaction(self, params: list[Any]) -> str:
        tx = rpc.tx_request(rpc.param(params, 0))
        if tx["from"] not in self._accounts:
            raise rpc.RpcError(-32000, f"{tx['from']} is not an account of this node (eth_accounts)")
        if "gas" not in tx:
            tx["gas"] = self._estimate(tx, "latest")
        if "gas_price" not in tx and "max_fee_per_gas" not in tx:
            tx.setdefault("max_priority_fee_per_gas", PRIORITY_FEE)
            tx["max_fee_per_gas"] = 2 * self._base_fee() + tx["max_priority_fee_per_gas"]
        self._stamp_block()
        return str(self._tester.send_transaction(tx))

    def _send_raw_transaction(self, params: list[Any]) -> str:
        raw = rpc.hex_data(rpc.param(params, 0))
        try:
            signed = self._tester.backend.chain.get_transaction_builder().decode(raw)
        except Exception as error:  # decoding untrusted bytes: whatever it raises is their fault
            raise rpc.InvalidParams(f"not a signed transaction ({type(error).__name__})") from None
        if signed.chain_id is not None and signed.chain_id != self.chain_id:
            raise rpc.RpcError(-32000, f"invalid chain id {signed.chain_id} (this chain is {self.chain_id})")
        self._stamp_block()
        return str(self._tester.send_raw_transaction("0x" + raw.hex()))

    def _transaction(self, params: list[Any]) -> dict[str, Any] | None:
        from eth_tester.exceptions import TransactionNotFound

        try:
            return rpc.transaction_json(
                self._tester.get_transaction_by_hash(rpc.hash32(rpc.param(params, 0)))
            )
        except TransactionNotFound:
            return None

    def _receipt(self, params: list[Any]) -> dict[str, Any] | None:
        from eth_tester.exceptions import TransactionNotFound

        try:
            raw = self._tester.get_transaction_receipt(rpc.hash32(rpc.param(params, 0)))
        except TransactionNotFound:
            return None
        receipt: dict[str, Any] = rpc.hexify(
            {k: v for k, v in raw.items() if k not in ("logs", "state_root")}
        )
        receipt["logs"] = [rpc.log_json(entry) for entry in raw["logs"]]
        return receipt

    def _logs(self, params: list[Any]) -> list[dict[str, Any]]:
        """``eth_getLogs``: by ``blockHash``, or ``fromBlock``..``toBlock`` (cut at the latest
        block), with ``address`` (one or a list) and ``topics`` (``null``, a topic or a list)."""
        query = rpc.param(params, 0)
        if not isinstance(query, dict):
            raise rpc.InvalidParams("the filter must be an object")
        latest = self._tester.get_block_by_number("latest")["number"]
        if query.get("blockHash") is not None:
            first = last = self._tester.get_block_by_hash(rpc.hash32(query["blockHash"]))["number"]
        else:
            first, last = (
                self._number(query.get(key) or "latest", latest) for key in ("fromBlock", "toBlock")
            )
        last = min(last, latest)
        if first > last:
            return []
        address = query.get("address")
        addresses = None if address is None else [rpc.address(a) for a in rpc.listed(address)]
        topics = [
            None if t is None else [rpc.hash32(x) for x in rpc.listed(t)] for t in query.get("topics") or []
        ]
        found = self._tester.get_logs(from_block=first, to_block=last)
        return [
            rpc.log_json(entry)
            for entry in found
            if (addresses is None or to_checksum_address(entry["address"]) in addresses)
            and rpc.topics_match(topics, entry["topics"])
        ]

    def _number(self, value: Any, latest: int) -> int:
        tag = rpc.block_tag(value)
        if tag in ("latest", "safe", "finalized", "pending"):
            return latest
        return 0 if tag == "earliest" else int(tag)

    def _mine(self, params: list[Any]) -> str:
        """One block, or as anvil's ``evm_mine`` takes it, ``{"blocks": N}`` blocks."""
        options = params[0] if params else {}
        if not isinstance(options, dict):
            raise rpc.InvalidParams('evm_mine takes nothing or {"blocks": N}')
        blocks = options.get("blocks", 1)
        blocks = blocks if type(blocks) is int else rpc.quantity(blocks)
        if not 1 <= blocks <= MAX_MINE:
            raise rpc.InvalidParams(f"evm_mine mines 1 to {MAX_MINE} blocks")
        for _ in range(blocks):
            self._stamp_block()
            self._tester.mine_block()
        return "0x0"

    def _increase_time(self, params: list[Any]) -> str:
        """Moves the clock of the blocks to come ``params[0]`` seconds forward (a JSON number, as
        anvil takes it, or a hex quantity); returns the total moved, in hex."""
        value = rpc.param(params, 0)
        seconds = value if type(value) is int else rpc.quantity(value)
        if not 0 <= seconds <= MAX_TIME_STEP:
            raise rpc.InvalidParams(f"evm_increaseTime moves 0 to {MAX_TIME_STEP} seconds forward")
        self._clock_offset += seconds
        return hex(self._clock_offset)

    def _stamp_block(self) -> None:
        """Dates the pending block now (eth-tester dates it when the previous one is mined)."""
        chain = self._tester.backend.chain
        if chain.get_block().transactions:
            return
        parent = chain.get_canonical_head()
        now = max(int(time.time()) + self._clock_offset, parent.timestamp + 1)
        chain.header = chain.header.copy(timestamp=now)


def _load(state: bytes, chain_id: int) -> dict[bytes, bytes]:
    """The key-value store of a :meth:`DevChain.dump`; raises ``StateFileError``."""
    if not state.startswith(STATE_MAGIC):
        raise StateFileError("not an ipsx devchain state")
    offset = len(STATE_MAGIC)
    try:
        stored_chain_id, count = struct.unpack_from(">QI", state, offset)
        offset += 12
        store: dict[bytes, bytes] = {}
        for _ in range(count):
            key_length, value_length = struct.unpack_from(">II", state, offset)
            offset += 8
            key, value = (
                state[offset : offset + key_length],
                state[offset + key_length : offset + key_length + value_length],
            )
            offset += key_length + value_length
            store[key] = value
    except struct.error:
        raise StateFileError("the devchain state is truncated") from None
    if offset != len(state):
        raise StateFileError("the devchain state is damaged (its length does not match)")
    if stored_chain_id != chain_id:
        raise StateFileError(f"the devchain state is of chain {stored_chain_id}, not {chain_id}")
    return store

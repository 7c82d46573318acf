"""``ipsx devchain``: a local Ethereum node for when anvil is not installed.

A JSON-RPC server on a loopback port in front of eth-tester's py-evm chain, serving what the
project's code asks of a node over HTTP (deployments, token and channel transactions, calls,
receipts, logs for the chain watcher). Like anvil it mines a block for every transaction, its
chain id is 31337 unless told otherwise, and it holds anvil's ten well-known development
accounts (the ``test … junk`` mnemonic) with 10,000 ether each, unlocked for ``eth_sendTransaction``.
Block timestamps follow the wall clock (plus what ``evm_increaseTime`` added).

With ``--state FILE`` the chain is read from ``FILE`` when it starts and written back when it
stops, so a second run has the contracts and channels of the first.

:class:`DevChain` is the node without I/O (JSON-RPC bodies in, bodies out, one lock around the
chain); the HTTP shell around it is a ``ThreadingHTTPServer``. Mining is CPU-bound: the node runs
in its own process (``python -m ipsx.devchain``, as the demo starts it) or in a thread of a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from eth_abi.abi import decode as abi_decode
from eth_utils.address import to_canonical_address, to_checksum_address
from eth_utils.exceptions import ValidationError

# eth-tester and py-evm (the test extra) are imported where they are used: importing them takes
# over a second, which `ipsx --help` and `ipsx health` would pay for a parser.
if TYPE_CHECKING:
    from eth.abc import ComputationAPI, SignedTransactionAPI, StateAPI

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
MAX_BODY: Final = 4 * 2**20  # bytes of one HTTP request
MAX_BATCH: Final = 100  # requests in one JSON-RPC batch
MAX_MINE: Final = 1000  # blocks one evm_mine may ask for
MAX_TIME_STEP: Final = 100 * 365 * 86400 * SECONDS  # one evm_increaseTime
IDLE_TIMEOUT: Final = 120 * SECONDS  # a keep-alive connection's silence before it is closed
STATE_MAGIC: Final = b"IPSX-DEVCHAIN-1\n"
BLOCK_TAGS: Final = frozenset({"latest", "earliest", "pending", "safe", "finalized"})
ZERO_ADDRESS: Final = "0x" + "00" * 20
_QUANTITY: Final = re.compile(r"0x[0-9a-fA-F]{1,64}")
_DATA: Final = re.compile(r"0x(?:[0-9a-fA-F]{2})*")
_ADDRESS: Final = re.compile(r"0x[0-9a-fA-F]{40}")
_TX_KEYS: Final = {
    "from": "from", "to": "to", "gas": "gas", "gasPrice": "gas_price", "value": "value",
    "maxFeePerGas": "max_fee_per_gas", "maxPriorityFeePerGas": "max_priority_fee_per_gas",
    "nonce": "nonce", "data": "data", "input": "data", "chainId": "chain_id",
}  # fmt: skip


class RpcError(Exception):
    """A JSON-RPC error answer: ``code``, ``message`` and, for reverts, the revert ``data``."""

    def __init__(self, code: int, message: str, data: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def as_error(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class InvalidParams(RpcError):
    """The request's params are not what its method takes: the client's mistake."""

    def __init__(self, message: str) -> None:
        super().__init__(-32602, f"invalid params: {message}")


class StateFileError(ValueError):
    """A ``--state`` file that is not a devchain state, or of another chain id."""


@dataclass(frozen=True, slots=True)
class DevchainSettings:
    host: str = "127.0.0.1"
    port: int = 8545  # 0: any free port
    chain_id: int = DEFAULT_CHAIN_ID
    state_file: Path | None = None  # read at start when it exists, written at stop


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
            "eth_getBalance": lambda p: hex(self._tester.get_balance(_address(_param(p, 0)), _tag(p, 1))),
            "eth_getTransactionCount": lambda p: hex(
                self._tester.get_nonce(_address(_param(p, 0)), _tag(p, 1))
            ),
            "eth_getCode": lambda p: self._tester.get_code(_address(_param(p, 0)), _tag(p, 1)),
            "eth_gasPrice": lambda _: hex(self._base_fee() + PRIORITY_FEE),
            "eth_maxPriorityFeePerGas": lambda _: hex(PRIORITY_FEE),
            "eth_feeHistory": self._fee_history,
            "eth_call": lambda p: "0x" + self._call(_tx_request(_param(p, 0)), _tag(p, 1)).hex(),
            "eth_estimateGas": lambda p: hex(self._estimate(_tx_request(_param(p, 0)), _tag(p, 1))),
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
            return _dumps(_error_reply(None, RpcError(-32700, "parse error")))
        if not isinstance(request, list):
            reply = self._reply(request)
            return None if reply is None else _dumps(reply)
        if not request or len(request) > MAX_BATCH:
            return _dumps(_error_reply(None, RpcError(-32600, f"a batch holds 1 to {MAX_BATCH} requests")))
        replies = [reply for reply in map(self._reply, request) if reply is not None]
        return _dumps(replies) if replies else None

    def _reply(self, request: Any) -> dict[str, Any] | None:
        if not isinstance(request, dict):
            return _error_reply(None, RpcError(-32600, "invalid request"))
        params = request.get("params", [])
        try:
            if not isinstance(request.get("method"), str):
                raise RpcError(-32600, "invalid request: no method")
            if not isinstance(params, list):
                raise InvalidParams("params must be an array")
            result = self.call(request["method"], params)
        except RpcError as error:
            return None if "id" not in request else _error_reply(request["id"], error)
        return None if "id" not in request else {"jsonrpc": "2.0", "id": request["id"], "result": result}

    def call(self, method: str, params: list[Any]) -> Any:
        """The result of ``method``; raises :class:`RpcError`: ``-32602`` for params the method
        does not take, ``-32000`` for what the chain refuses (a bad nonce, no such block),
        ``-32603`` for our own bug (logged)."""
        handler = self._methods.get(method)
        if handler is None:
            raise RpcError(-32601, f"method {method} is not supported by ipsx devchain")
        from eth_tester.exceptions import BlockNotFound, TransactionFailed  # type: ignore[import-untyped]
        from eth_tester.exceptions import ValidationError as TesterValidationError

        with self._lock:
            try:
                return handler(params)
            except RpcError:
                raise
            except (TesterValidationError, ValidationError, TransactionFailed, BlockNotFound) as error:
                raise RpcError(-32000, str(error) or type(error).__name__) from None
            except Exception as error:
                log.exception("%s failed", method)
                raise RpcError(-32603, f"internal error: {type(error).__name__}") from None

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

        full = _flag(params, 1)
        try:
            return _block(self._tester.get_block_by_number(_block_tag(_param(params, 0)), full), full)
        except BlockNotFound:
            return None

    def _block_by_hash(self, params: list[Any]) -> dict[str, Any] | None:
        from eth_tester.exceptions import BlockNotFound

        full = _flag(params, 1)
        try:
            return _block(self._tester.get_block_by_hash(_hash(_param(params, 0)), full), full)
        except BlockNotFound:
            return None

    def _base_fee(self) -> int:
        return int(self._tester.get_block_by_number("pending")["base_fee_per_gas"])

    def _fee_history(self, params: list[Any]) -> dict[str, Any]:
        """Base fees and gas use of the last ``count`` blocks; every reward percentile is the
        suggested priority fee (transactions here never compete for a block)."""
        count = min(_quantity(_param(params, 0)), 1024)
        newest = self._tester.get_block_by_number(_tag(params, 1))["number"]
        percentiles = params[2] if len(params) > 2 else []
        if not isinstance(percentiles, list):
            raise InvalidParams("the reward percentiles must be an array")
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
        ``RpcError`` (code 3 with the revert data, as geth and anvil answer) when it reverts."""
        with self._free_state(tag) as state:
            return _output(state.apply_transaction(self._message(state, tx, tx.get("gas", state.gas_limit))))

    def _estimate(self, tx: dict[str, Any], tag: str | int) -> int:
        """The least gas ``tx`` succeeds with (py-evm's binary search); a revert at the block's
        gas limit is answered as by :meth:`_call`."""
        with self._free_state(tag) as state:
            message = self._message(state, tx, state.gas_limit)
            snapshot = state.snapshot()
            _output(state.apply_transaction(message))
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
        tx = _tx_request(_param(params, 0))
        if tx["from"] not in self._accounts:
            raise RpcError(-32000, f"{tx['from']} is not an account of this node (eth_accounts)")
        if "gas" not in tx:
            tx["gas"] = self._estimate(tx, "latest")
        if "gas_price" not in tx and "max_fee_per_gas" not in tx:
            tx.setdefault("max_priority_fee_per_gas", PRIORITY_FEE)
            tx["max_fee_per_gas"] = 2 * self._base_fee() + tx["max_priority_fee_per_gas"]
        self._stamp_block()
        return str(self._tester.send_transaction(tx))

    def _send_raw_transaction(self, params: list[Any]) -> str:
        raw = _data(_param(params, 0))
        try:
            signed = self._tester.backend.chain.get_transaction_builder().decode(raw)
        except Exception as error:  # decoding untrusted bytes: whatever it raises is their fault
            raise InvalidParams(f"not a signed transaction ({type(error).__name__})") from None
        if signed.chain_id is not None and signed.chain_id != self.chain_id:
            raise RpcError(-32000, f"invalid chain id {signed.chain_id} (this chain is {self.chain_id})")
        self._stamp_block()
        return str(self._tester.send_raw_transaction("0x" + raw.hex()))

    def _transaction(self, params: list[Any]) -> dict[str, Any] | None:
        from eth_tester.exceptions import TransactionNotFound

        try:
            return _transaction(self._tester.get_transaction_by_hash(_hash(_param(params, 0))))
        except TransactionNotFound:
            return None

    def _receipt(self, params: list[Any]) -> dict[str, Any] | None:
        from eth_tester.exceptions import TransactionNotFound

        try:
            raw = self._tester.get_transaction_receipt(_hash(_param(params, 0)))
        except TransactionNotFound:
            return None
        receipt: dict[str, Any] = _hexify({k: v for k, v in raw.items() if k not in ("logs", "state_root")})
        receipt["logs"] = [_log(entry) for entry in raw["logs"]]
        return receipt

    def _logs(self, params: list[Any]) -> list[dict[str, Any]]:
        """``eth_getLogs``: by ``blockHash``, or ``fromBlock``..``toBlock`` (cut at the latest
        block), with ``address`` (one or a list) and ``topics`` (``null``, a topic or a list)."""
        query = _param(params, 0)
        if not isinstance(query, dict):
            raise InvalidParams("the filter must be an object")
        latest = self._tester.get_block_by_number("latest")["number"]
        if query.get("blockHash") is not None:
            first = last = self._tester.get_block_by_hash(_hash(query["blockHash"]))["number"]
        else:
            first, last = (
                self._number(query.get(key) or "latest", latest) for key in ("fromBlock", "toBlock")
            )
        last = min(last, latest)
        if first > last:
            return []
        address = query.get("address")
        addresses = None if address is None else [_address(a) for a in _listed(address)]
        topics = [None if t is None else [_hash(x) for x in _listed(t)] for t in query.get("topics") or []]
        found = self._tester.get_logs(from_block=first, to_block=last)
        return [
            _log(entry)
            for entry in found
            if (addresses is None or to_checksum_address(entry["address"]) in addresses)
            and _topics_match(topics, entry["topics"])
        ]

    def _number(self, value: Any, latest: int) -> int:
        tag = _block_tag(value)
        if tag in ("latest", "safe", "finalized", "pending"):
            return latest
        return 0 if tag == "earliest" else int(tag)

    def _mine(self, params: list[Any]) -> str:
        """One block, or as anvil's ``evm_mine`` takes it, ``{"blocks": N}`` blocks."""
        options = params[0] if params else {}
        if not isinstance(options, dict):
            raise InvalidParams('evm_mine takes nothing or {"blocks": N}')
        blocks = options.get("blocks", 1)
        blocks = blocks if type(blocks) is int else _quantity(blocks)
        if not 1 <= blocks <= MAX_MINE:
            raise InvalidParams(f"evm_mine mines 1 to {MAX_MINE} blocks")
        for _ in range(blocks):
            self._stamp_block()
            self._tester.mine_block()
        return "0x0"

    def _increase_time(self, params: list[Any]) -> str:
        """Moves the clock of the blocks to come ``params[0]`` seconds forward (a JSON number, as
        anvil takes it, or a hex quantity); returns the total moved, in hex."""
        value = _param(params, 0)
        seconds = value if type(value) is int else _quantity(value)
        if not 0 <= seconds <= MAX_TIME_STEP:
            raise InvalidParams(f"evm_increaseTime moves 0 to {MAX_TIME_STEP} seconds forward")
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


# ---- request parsing and result encoding -----------------------------------------------------------


def _param(params: list[Any], index: int) -> Any:
    if len(params) <= index:
        raise InvalidParams(f"parameter {index + 1} is missing")
    return params[index]


def _flag(params: list[Any], index: int) -> bool:
    value = params[index] if len(params) > index else False
    if not isinstance(value, bool):
        raise InvalidParams(f"parameter {index + 1} must be true or false")
    return value


def _quantity(value: Any) -> int:
    if not isinstance(value, str) or not _QUANTITY.fullmatch(value):
        raise InvalidParams(f"not a hex quantity: {value!r:.80}")
    return int(value, 16)


def _data(value: Any) -> bytes:
    if not isinstance(value, str) or not _DATA.fullmatch(value):
        raise InvalidParams(f"not 0x-hex data: {value!r:.80}")
    return bytes.fromhex(value[2:])


def _hash(value: Any) -> str:
    if len(raw := _data(value)) != 32:
        raise InvalidParams(f"not a 32-byte hash: {value!r:.80}")
    return "0x" + raw.hex()


def _address(value: Any) -> str:
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise InvalidParams(f"not an address: {value!r:.80}")
    return str(to_checksum_address(value))


def _block_tag(value: Any) -> str | int:
    return value if isinstance(value, str) and value in BLOCK_TAGS else _quantity(value)


def _tag(params: list[Any], index: int) -> str | int:
    """The block parameter at ``index``; ``latest`` when absent."""
    return _block_tag(params[index]) if len(params) > index and params[index] is not None else "latest"


def _listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _tx_request(value: Any) -> dict[str, Any]:
    """A JSON-RPC transaction object as eth-tester takes it (snake_case keys, int quantities)."""
    if not isinstance(value, dict):
        raise InvalidParams("the transaction must be an object")
    tx: dict[str, Any] = {}
    for key, item in value.items():
        name = _TX_KEYS.get(key)
        if name is None or item is None:
            continue  # type, accessList…: inferred, or not supported
        if name in ("from", "to"):
            tx[name] = _address(item)
        elif name == "data":
            tx[name] = "0x" + _data(item).hex()
        else:
            tx[name] = _quantity(item)
    tx.setdefault("from", ZERO_ADDRESS)
    return tx


def _topics_match(wanted: list[list[str] | None], topics: Any) -> bool:
    if len(wanted) > len(topics):
        return False
    return all(
        options is None or topic.lower() in options for options, topic in zip(wanted, topics, strict=False)
    )


def _output(computation: ComputationAPI) -> bytes:
    """What the computation returned; raises ``RpcError`` when it failed."""
    from eth.exceptions import Revert

    if not computation.is_error:
        return bytes(computation.output)
    if isinstance(computation.error, Revert):
        raise _reverted(computation.output)
    raise RpcError(-32000, f"execution failed: {computation.error!r}")


def _reverted(output: bytes) -> RpcError:
    message = "execution reverted"
    if output[:4] == bytes.fromhex("08c379a0"):  # Error(string)
        with contextlib.suppress(Exception):
            message += f": {abi_decode(['string'], output[4:])[0]}"
    return RpcError(3, message, "0x" + output.hex())


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(word.title() for word in rest)


def _hexify(value: Any) -> Any:
    """eth-tester's output as JSON-RPC has it: camelCase keys, hex quantities and data."""
    if value is None or isinstance(value, bool | str | float):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, list | tuple):
        return [_hexify(item) for item in value]
    if isinstance(value, dict):
        return {_camel(key): _hexify(item) for key, item in value.items()}
    raise TypeError(f"cannot encode {type(value).__name__}")


def _block(raw: dict[str, Any], full: bool) -> dict[str, Any]:
    fields = {k: v for k, v in raw.items() if k not in ("coinbase", "logs_bloom", "transactions")}
    block: dict[str, Any] = _hexify(fields)
    block["miner"] = raw["coinbase"]
    block["logsBloom"] = "0x" + int(raw["logs_bloom"]).to_bytes(256, "big").hex()
    block["transactions"] = [_transaction(tx) for tx in raw["transactions"]] if full else raw["transactions"]
    return block


def _transaction(raw: dict[str, Any]) -> dict[str, Any]:
    tx: dict[str, Any] = _hexify({k: v for k, v in raw.items() if k != "data"})
    tx["input"] = raw["data"]
    if tx.get("to") == "":
        tx["to"] = None  # a contract creation
    return tx


def _log(raw: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = _hexify({k: v for k, v in raw.items() if k != "type"})
    entry["removed"] = False
    return entry


def _error_reply(request_id: Any, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.as_error()}


def _dumps(reply: Any) -> bytes:
    return json.dumps(reply, separators=(",", ":")).encode()


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


# ---- the HTTP shell -----------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], chain: DevChain) -> None:
        super().__init__(address, _Handler)
        self.chain = chain

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # the client went away: its business
            log.debug("connection from %s: %s", client_address, sys.exc_info()[1])
        else:
            log.exception("connection from %s failed", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT
    # One segment per answer, sent at once: headers and body written apart meet the client's
    # delayed ACK, 40 ms a request.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server: _Server

    def do_POST(self) -> None:
        length = self.headers.get("Content-Length", "")
        if not (length.isascii() and length.isdigit()):
            self.close_connection = True
            self._answer(411, b'{"error":"Content-Length required"}')
            return
        if int(length) > MAX_BODY:
            self.close_connection = True
            self._answer(413, b'{"error":"request body too large"}')
            return
        reply = self.server.chain.handle(self.rfile.read(int(length)))
        self._answer(200, b"" if reply is None else reply)

    def do_GET(self) -> None:
        self._answer(405, b'{"error":"JSON-RPC over POST only"}')

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def open_chain(settings: DevchainSettings) -> DevChain:
    """The chain of ``settings.state_file`` when it exists, else a new one."""
    path = settings.state_file
    state = path.read_bytes() if path is not None and path.exists() else None
    return DevChain(settings.chain_id, state)


def save_chain(chain: DevChain, path: Path) -> None:
    """Writes ``chain`` to ``path`` whole or not at all."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(chain.dump())
    partial.replace(path)


@contextlib.contextmanager
def running_devchain(settings: DevchainSettings) -> Iterator[str]:
    """The node in a thread of this process; yields its URL, then stops it and saves its state."""
    chain = open_chain(settings)
    server = _Server((settings.host, settings.port), chain)
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), name="devchain", daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
        if settings.state_file is not None:
            save_chain(chain, settings.state_file)


# ---- the command --------------------------------------------------------------------------------


def add_devchain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8545, help="port; 0 for any free one (default: %(default)s)"
    )
    parser.add_argument("--chain-id", type=int, default=DEFAULT_CHAIN_ID, help="(default: %(default)s)")
    parser.add_argument(
        "--state",
        type=Path,
        metavar="FILE",
        help="load the chain from FILE if it exists, save it there on exit",
    )
    parser.add_argument("--exit-with-parent", action="store_true", help="stop when the parent process exits")


def add_devchain_parser(sub: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """``ipsx devchain``: its subcommand parser, added to ``sub``."""
    parser = sub.add_parser(
        "devchain",
        help="run a local Ethereum node (eth-tester) for development, when anvil is not installed",
        description="An Ethereum JSON-RPC node on eth-tester's py-evm chain: chain id 31337, a block "
        "per transaction, anvil's ten development accounts funded and unlocked. Prints "
        "'Listening on HOST:PORT' once it serves.",
    )
    add_devchain_arguments(parser)
    return cast("argparse.ArgumentParser", parser)


def run(args: argparse.Namespace) -> None:
    """Serves until SIGINT/SIGTERM (or, with ``--exit-with-parent``, the parent's exit); then
    saves the state."""
    settings = DevchainSettings(host=args.host, port=args.port, chain_id=args.chain_id, state_file=args.state)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    parent = os.getppid()
    with running_devchain(settings) as url:
        print(f"Listening on {url.removeprefix('http://')} (chain {settings.chain_id})", flush=True)
        while not stop.wait(1 * SECONDS):
            if args.exit_with_parent and os.getppid() != parent:
                break
    if settings.state_file is not None:
        print(f"state saved in {settings.state_file}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ipsx.devchain", description=__doc__.split("\n\n")[0])
    add_devchain_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    try:
        run(parser.parse_args(argv))
    except (OSError, StateFileError) as error:
        print(f"ipsx devchain: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

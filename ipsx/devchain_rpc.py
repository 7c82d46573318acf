"""The JSON-RPC values of ``ipsx devchain``: what crosses the wire, without the chain.

:class:`RpcError` and :class:`InvalidParams` are the error answers. The readers (``param``,
``quantity``, ``address``, ``tag``, ``tx_request``…) turn a request's params into what
eth-tester takes (checksummed addresses, ``int`` quantities, block tags), raising
:class:`InvalidParams` for anything else. The writers turn eth-tester's and py-evm's results back
into JSON-RPC: ``hexify``, ``block_json``, ``transaction_json`` and ``log_json`` (camelCase keys, hex
quantities and data), ``output`` (a computation's return data, or its revert as error code 3
with the revert data); ``error_reply`` and ``dumps`` frame the reply. Their one user is
:class:`ipsx.devchain_node.DevChain`.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import TYPE_CHECKING, Any, Final

from eth_abi.abi import decode as abi_decode
from eth_utils.address import to_checksum_address

if TYPE_CHECKING:
    from eth.abc import ComputationAPI

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


# ---- request parsing and result encoding -----------------------------------------------------------


def param(params: list[Any], index: int) -> Any:
    if len(params) <= index:
        raise InvalidParams(f"parameter {index + 1} is missing")
    return params[index]


def flag(params: list[Any], index: int) -> bool:
    value = params[index] if len(params) > index else False
    if not isinstance(value, bool):
        raise InvalidParams(f"parameter {index + 1} must be true or false")
    return value


def quantity(value: Any) -> int:
    if not isinstance(value, str) or not _QUANTITY.fullmatch(value):
        raise InvalidParams(f"not a hex quantity: {value!r:.80}")
    return int(value, 16)


def hex_data(value: Any) -> bytes:
    if not isinstance(value, str) or not _DATA.fullmatch(value):
        raise InvalidParams(f"not 0x-hex data: {value!r:.80}")
    return bytes.fromhex(value[2:])


def hash32(value: Any) -> str:
    if len(raw := hex_data(value)) != 32:
        raise InvalidParams(f"not a 32-byte hash: {value!r:.80}")
    return "0x" + raw.hex()


def address(value: Any) -> str:
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise InvalidParams(f"not an address: {value!r:.80}")
    return str(to_checksum_address(value))


def block_tag(value: Any) -> str | int:
    return value if isinstance(value, str) and value in BLOCK_TAGS else quantity(value)


def tag(params: list[Any], index: int) -> str | int:
    """The block parameter at ``index``; ``latest`` when absent."""
    return block_tag(params[index]) if len(params) > index and params[index] is not None else "latest"


def listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def tx_request(value: Any) -> dict[str, Any]:
    """A JSON-RPC transaction object as eth-tester takes it (snake_case keys, int quantities)."""
    if not isinstance(value, dict):
        raise InvalidParams("the transaction must be an object")
    tx: dict[str, Any] = {}
    for key, item in value.items():
        name = _TX_KEYS.get(key)
        if name is None or item is None:
            continue  # type, accessList…: inferred, or not supported
        if name in ("from", "to"):
            tx[name] = address(item)
        elif name == "data":
            tx[name] = "0x" + hex_data(item).hex()
        else:
            tx[name] = quantity(item)
    tx.setdefault("from", ZERO_ADDRESS)
    return tx


def topics_match(wanted: list[list[str] | None], topics: Any) -> bool:
    if len(wanted) > len(topics):
        return False
    return all(
        options is None or topic.lower() in options for options, topic in zip(wanted, topics, strict=False)
    )


def output(computation: ComputationAPI) -> bytes:
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


def hexify(value: Any) -> Any:
    """eth-tester's output as JSON-RPC has it: camelCase keys, hex quantities and data."""
    if value is None or isinstance(value, bool | str | float):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, list | tuple):
        return [hexify(item) for item in value]
    if isinstance(value, dict):
        return {_camel(key): hexify(item) for key, item in value.items()}
    raise TypeError(f"cannot encode {type(value).__name__}")


def block_json(raw: dict[str, Any], full: bool) -> dict[str, Any]:
    fields = {k: v for k, v in raw.items() if k not in ("coinbase", "logs_bloom", "transactions")}
    block: dict[str, Any] = hexify(fields)
    block["miner"] = raw["coinbase"]
    block["logsBloom"] = "0x" + int(raw["logs_bloom"]).to_bytes(256, "big").hex()
    block["transactions"] = (
        [transaction_json(tx) for tx in raw["transactions"]] if full else raw["transactions"]
    )
    return block


def transaction_json(raw: dict[str, Any]) -> dict[str, Any]:
    tx: dict[str, Any] = hexify({k: v for k, v in raw.items() if k != "data"})
    tx["input"] = raw["data"]
    if tx.get("to") == "":
        tx["to"] = None  # a contract creation
    return tx


def log_json(raw: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = hexify({k: v for k, v in raw.items() if k != "type"})
    entry["removed"] = False
    return entry


def error_reply(request_id: Any, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.as_error()}


def dumps(reply: Any) -> bytes:
    return json.dumps(reply, separators=(",", ":")).encode()

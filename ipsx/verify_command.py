"""``ipsx verify`` (anyone's): check a deal's anchor proof, from the API, off-chain and with
DealAnchor on the node.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from web3 import AsyncHTTPProvider, AsyncWeb3, Web3
from web3.exceptions import ContractLogicError

from billing.deal_record import DealRecord
from contracts import load, merkle
from ipsx.chain_access import CONNECTION_ERRORS, RPC_TIMEOUT, DeploymentFile, quiet_providers, rpc_url, shown
from ipsx.commands import UsageError
from ipsx.settings import Environment


@dataclass
class Verdict:
    """The checks ``ipsx verify`` made, in order: (passed, what, detail)."""

    checks: list[tuple[bool, str, str]]

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(passed for passed, _, _ in self.checks)

    def add(self, passed: bool, what: str, detail: str) -> bool:
        self.checks.append((passed, what, detail))
        return passed


def cmd_verify(args: argparse.Namespace, env: Environment) -> None:
    quiet_providers(args)
    deployment = None if args.deployment is None else DeploymentFile.load(args.deployment)
    token = args.token or os.environ.get("IPSX_TOKEN")
    url = rpc_url(args)
    verdict = Verdict([])
    body = asyncio.run(_fetch_anchor(args.api, args.deal, token))
    if body is None:
        verdict.add(
            False, "anchored", "the API has no anchored batch with this deal (yet), or it is not yours"
        )
    else:
        try:
            asyncio.run(_check(body, verdict, url, deployment))
        except (KeyError, TypeError, ValueError) as error:
            verdict.add(False, "answer", f"the API's answer is not an anchor proof: {error}")
    print(f"deal {args.deal}:")
    for passed, what, detail in verdict.checks:
        print(f"  {'ok  ' if passed else 'FAIL'}  {what}: {detail}")
    if verdict.ok and body is not None:
        print(f"VERIFIED: deal {args.deal} is in batch {body['batch_id']} of DealAnchor {body['contract']}")
    else:
        print(f"NOT VERIFIED: deal {args.deal}")
        sys.exit(1)


async def _fetch_anchor(api: str, deal: str, token: str | None) -> dict[str, Any] | None:
    """The API's anchor proof of ``deal`` (``None``: 404); ``UsageError`` for any other failure."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    endpoint = f"{api.rstrip('/')}/v1/deals/{quote(deal, safe='')}/anchor"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=RPC_TIMEOUT)) as http,
            http.get(endpoint, headers=headers) as response,
        ):
            if response.status == 404:
                return None
            if response.status != 200:
                text = (await response.text())[:300]
                raise UsageError(f"the API answered {response.status}: {text}")
            body = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        raise UsageError(f"cannot get the anchor proof from {shown(api)}: {type(error).__name__}") from None
    if not isinstance(body, dict):
        raise UsageError("the API's answer is not a JSON object")
    return body


def _bytes32(text: Any) -> bytes:
    value = bytes.fromhex(str(text).removeprefix("0x"))
    if len(value) != 32:
        raise ValueError(f"{str(text)[:70]!r} is not 32 bytes")
    return value


async def _check(body: dict[str, Any], verdict: Verdict, url: str, deployment: DeploymentFile | None) -> None:
    """Adds to ``verdict`` the record, leaf, off-chain and on-chain checks of the API's ``body``."""
    record = DealRecord.from_json(body["record"])
    encoded = record.encode()
    same = encoded == bytes.fromhex(str(body["encoded_record"]).removeprefix("0x"))
    verdict.add(same, "record", "its fields encode to the bytes served" if same else "its fields do not "
                "encode to the bytes served")  # fmt: skip
    leaf, anchored = merkle.leaf_hash(encoded), _bytes32(body["leaf"])
    verdict.add(leaf == anchored, "leaf", f"0x{leaf.hex()}" if leaf == anchored else
                f"the record hashes to 0x{leaf.hex()}, the leaf anchored is 0x{anchored.hex()}")  # fmt: skip
    proof, root = [_bytes32(node) for node in body["proof"]], _bytes32(body["root"])
    leads = merkle.verify(root, leaf, proof)
    verdict.add(leads, "off-chain", f"the proof ({len(proof)} hashes) {'leads' if leads else 'does not lead'}"
                f" to root 0x{root.hex()}")  # fmt: skip
    address = Web3.to_checksum_address(str(body["contract"]))
    if deployment is not None and address != deployment.anchor:
        verdict.add(False, "contract", f"the API names {address}, {deployment.path} has {deployment.anchor}")
        return
    timeout = aiohttp.ClientTimeout(total=RPC_TIMEOUT)
    w3 = AsyncWeb3(
        AsyncHTTPProvider(url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None)
    )
    try:
        batch_id, chain_id = int(body["batch_id"]), int(body["chain_id"])
        await _check_on_chain(w3, verdict, address, chain_id, batch_id, root, leaf, proof)
    except CONNECTION_ERRORS as error:
        raise UsageError(f"cannot read the chain at {shown(url)}: {type(error).__name__}") from None
    finally:
        await w3.provider.disconnect()


async def _check_on_chain(
    w3: AsyncWeb3[Any], verdict: Verdict, address: str, chain_id: int, batch_id: int, root: bytes,
    leaf: bytes, proof: list[bytes],
) -> None:  # fmt: skip
    on = await w3.eth.chain_id
    if not verdict.add(
        on == chain_id, "chain", f"chain {on}" + ("" if on == chain_id else f", the API says {chain_id}")
    ):
        return
    anchor = w3.eth.contract(address=Web3.to_checksum_address(address), abi=load("DealAnchor").abi)
    try:
        chain_root = bytes((await anchor.functions.getBatch(batch_id).call())[0])
        included = bool(await anchor.functions.verify(batch_id, leaf, proof).call())
    except ContractLogicError:
        verdict.add(False, "on-chain", f"DealAnchor {address} has no batch {batch_id}")
        return
    verdict.add(
        chain_root == root,
        "batch root",
        f"DealAnchor {address} batch {batch_id} has root 0x{chain_root.hex()}",
    )
    verdict.add(
        included, "on-chain", f"DealAnchor.verify(batch {batch_id}, leaf, proof) = {str(included).lower()}"
    )

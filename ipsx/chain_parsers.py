"""The command lines of the chain commands: ``ipsx chain deploy|watch|anchor|withdrawals``,
``ipsx verify`` and ``ipsx reconcile``, with the options they share (the node, the deployment
file, the operator's key). Only argparse here: what runs them (:mod:`ipsx.chain_commands`,
:mod:`ipsx.chain_deploy`, :mod:`ipsx.verify_command`) loads web3, which ``ipsx --help`` does not
wait for.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ipsx.service_parsers import add_db_pool

CHAIN_KEY_HELP = (
    "operator wallet: a file with a hex private key, or an encrypted keystore JSON (password from "
    "IPSX_KEY_PASSWORD). Default: the hex private key in IPSX_OPERATOR_KEY. Never pass a key itself"
)


def _chain_parents() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser, argparse.ArgumentParser]:
    """The options the chain commands share: the node, the deployment file, the operator key."""
    rpc = argparse.ArgumentParser(add_help=False)
    rpc.add_argument(
        "--rpc",
        metavar="URL",
        help="the Ethereum node's JSON-RPC URL (default: $IPSX_RPC_URL, else http://127.0.0.1:8545)",
    )
    deployment = argparse.ArgumentParser(add_help=False)
    deployment.add_argument(
        "--deployment",
        type=Path,
        default=Path(".ipsx/chain.json"),
        metavar="FILE",
        help="the file `ipsx chain deploy` wrote (default: %(default)s)",
    )
    key = argparse.ArgumentParser(add_help=False)
    key.add_argument("--key", type=Path, metavar="FILE", help=CHAIN_KEY_HELP)
    return rpc, deployment, key


def add_chain_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``chain`` (``deploy``, ``watch``, ``anchor``, ``withdrawals``), ``verify`` and
    ``reconcile`` to the ``ipsx`` parser."""
    rpc, deployment, key = _chain_parents()
    chain = sub.add_parser(
        "chain",
        help="operator: deploy the IPSX contracts and follow the payment channels on-chain",
        description="Deploy the IPSX token, sale, payment channels and deal anchor contracts, "
        "run the chain watcher that turns confirmed channel events into ledger deposits (and, with "
        "--send-withdrawals, sends the withdrawals on-chain), and list the withdrawals it sends.",
    )
    actions = chain.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add_deploy(actions, rpc, key)
    _add_watch(actions, rpc, deployment, key)
    _add_anchor(actions, rpc, deployment, key)
    _add_withdrawals(actions)
    _add_verify(sub, rpc)
    _add_reconcile(sub, rpc, deployment)


def _add_deploy(
    actions: argparse._SubParsersAction[Any], rpc: argparse.ArgumentParser, key: argparse.ArgumentParser
) -> None:
    d = actions.add_parser(
        "deploy",
        parents=[rpc, key],
        help="deploy the four contracts and record their addresses",
        description="Deploy TokenSale (which creates IPSXToken), PaymentChannels and DealAnchor from "
        "the operator's wallet, print each contract as it is mined, and write the addresses, the "
        "chain id and the deployment block to --out for `ipsx chain watch` and `ipsx reconcile`. "
        "Every address option defaults to the operator, which suits a test network: the operator "
        "then holds the early-adopters and bounty pools, the only holders (with the sale) that may "
        "transfer IPSX before the sale is finalized.",
        epilog="Example: IPSX_OPERATOR_KEY=0x... ipsx chain deploy --rpc http://127.0.0.1:8545",
    )
    d.add_argument(
        "--out",
        type=Path,
        default=Path(".ipsx/chain.json"),
        metavar="FILE",
        help="where to record the deployment (default: %(default)s); an existing file is kept unless --force",
    )
    d.add_argument("--force", action="store_true", help="replace an existing --out file")
    d.add_argument(
        "--challenge-period",
        type=int,
        metavar="SECONDS",
        help="how long an uncooperative channel close can be challenged (default: 86400, 24 h)",
    )
    d.add_argument(
        "--operator",
        metavar="ADDRESS",
        help="the hub: receiver of requester channels and owner of DealAnchor (default: the key's address)",
    )
    for flag, what in (
        ("--early-adopters", "holder of the 27.5 %% early adopters and strategic partners allocation"),
        ("--bounty", "holder of the 2.5 %% bounty campaign allocation"),
        ("--team", "holder of the 20 %% team allocation (locked until the sale is finalized)"),
        ("--sale-wallet", "the wallet that withdraws the sale's ETH after finalization"),
    ):
        d.add_argument(flag, metavar="ADDRESS", help=f"{what} (default: the operator)")
    d.add_argument(
        "--rate",
        type=int,
        default=5000,
        metavar="N",
        help="IPSX sold per ETH (= base units per wei) (default: %(default)s)",
    )
    d.add_argument(
        "--cap",
        metavar="ETH",
        help="ETH the sale raises at most (default: enough to sell all 900,000,000 IPSX at --rate)",
    )
    d.add_argument(
        "--sale-start",
        type=int,
        metavar="UNIX_TIME",
        help="the sale opens (default: the latest block's time)",
    )
    d.add_argument(
        "--sale-duration",
        type=int,
        default=30 * 86400,
        metavar="SECONDS",
        help="the sale closes this long after it opens (default: %(default)s, 30 days); "
        "transfers unlock when it is finalized after that",
    )


def _add_watch(
    actions: argparse._SubParsersAction[Any],
    rpc: argparse.ArgumentParser,
    deployment: argparse.ArgumentParser,
    key: argparse.ArgumentParser,
) -> None:
    w = actions.add_parser(
        "watch",
        parents=[rpc, deployment, key],
        help="run the chain watcher (deposits into the ledger, stale closes countered, "
        "withdrawals sent with --send-withdrawals)",
        description="Follow the deployment's PaymentChannels contract from its deployment block: "
        "each confirmed event updates the channels table and the ledger (a requester's deposit is "
        "credited to its account), and an uncooperative close below the balance proof held is "
        "countered from the operator's wallet. With --send-withdrawals it is also the chain payer: "
        "each pending withdrawal's IPSX is sent from the operator's wallet (an ERC-20 transfer, "
        "signed and stored in the database before it is broadcast, so a restart sends the same "
        "transaction again, never a second one) and the withdrawal completed once the transfer is "
        "--confirmations deep; a transfer a fee spike leaves unmined is replaced with higher fees "
        "and the same nonce (--bump-after, --max-fee-gwei); a reverted transfer leaves it failed, "
        "its funds still held, for `ipsx withdrawal approve` (send again) or `reject`. Runs until "
        "SIGINT/SIGTERM. Exits with "
        "status 3 when the chain was reorganised deeper than the confirmations (check with "
        "`ipsx reconcile`). The database is IPSX_DATABASE_URL.",
        epilog="Example: IPSX_OPERATOR_KEY=0x... ipsx chain watch --send-withdrawals --approval-above 10000",
    )
    w.add_argument(
        "--confirmations",
        type=int,
        default=6,
        metavar="N",
        help="blocks on top of an event's block before it is applied, and on top of a "
        "withdrawal's transfer before the withdrawal completes (default: %(default)s)",
    )
    w.add_argument(
        "--poll",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between polls (default: %(default)s)",
    )
    w.add_argument(
        "--send-withdrawals",
        action="store_true",
        help="also send the withdrawals' IPSX from the operator's wallet and complete them once "
        "confirmed (a second process doing so waits its turn); takes 2 more database connections",
    )
    w.add_argument(
        "--approval-above",
        metavar="IPSX",
        help="with --send-withdrawals: a withdrawal of more than this waits until the operator "
        "approves it (`ipsx withdrawal approve ID`) (default: no limit)",
    )
    w.add_argument(
        "--max-withdrawals",
        type=int,
        default=20,
        metavar="N",
        help="with --send-withdrawals: transfers signed per poll at most (default: %(default)s)",
    )
    w.add_argument(
        "--bump-after",
        type=int,
        metavar="BLOCKS",
        help="with --send-withdrawals: a transfer still unmined this many blocks after it was signed, "
        "while the chain asks more than it offers (twice the base fee plus the tip), is replaced: "
        "the same transfer with the same nonce and both fees raised by 12.5%% at least, stored "
        "before it is broadcast (default: 15, about 3 minutes on Ethereum)",
    )
    w.add_argument(
        "--max-fee-gwei",
        metavar="GWEI",
        help="with --send-withdrawals: the most a transfer offers per gas, replacements included; "
        "a transfer at this ceiling is not bumped again (a warning says so) and waits for fees "
        "to come down, and no new withdrawal is sent while the chain asks more (default: 500)",
    )
    add_db_pool(w, 2)


def _add_withdrawals(actions: argparse._SubParsersAction[Any]) -> None:
    w = actions.add_parser(
        "withdrawals",
        help="list the withdrawals the chain payer sends, with their transfers",
        description="Print the withdrawals (IPSX_DATABASE_URL), newest first, with every transfer "
        "signed for each (nonce, state, block, how many times its fee was bumped) and every version "
        "of it: the first signature and each fee replacement (hash, fees, broadcasts, the one "
        "mined, last error). By default "
        "those waiting for the sender or the operator (pending, sending, failed).",
    )
    w.add_argument(
        "--state",
        choices=("open", "pending", "sending", "failed", "completed", "rejected", "cancelled", "all"),
        default="open",
        help="which withdrawals: open is pending, sending and failed (default: %(default)s)",
    )
    w.add_argument("--limit", type=int, default=50, metavar="N", help="at most (default: %(default)s)")


def _add_anchor(
    actions: argparse._SubParsersAction[Any],
    rpc: argparse.ArgumentParser,
    deployment: argparse.ArgumentParser,
    key: argparse.ArgumentParser,
) -> None:
    a = actions.add_parser(
        "anchor",
        parents=[rpc, deployment, key],
        help="anchor settled deals on-chain: batches of records, their Merkle roots posted to DealAnchor",
        description="Every --interval, put up to --max-batch settled deals not anchored yet in a batch, "
        "post its Merkle root to the deployment's DealAnchor from the operator's wallet (its owner) and "
        "record the batch once the transaction is --confirmations deep; the API then serves each "
        "deal's inclusion proof (`ipsx verify DEAL`). A batch interrupted by a crash is finished "
        "first at the next start. Runs until SIGINT/SIGTERM, or once with --once. Exits with "
        "status 3 when the contract's batches and the database's disagree. The database is "
        "IPSX_DATABASE_URL.",
    )
    a.add_argument(
        "--once",
        action="store_true",
        help="anchor one batch (if any deal waits), wait for its confirmations and exit",
    )
    a.add_argument(
        "--confirmations",
        type=int,
        default=6,
        metavar="N",
        help="blocks on top of the anchor transaction's before its batch counts and its proofs are "
        "served; a reorganisation shallower than that makes the batch be posted again "
        "(default: %(default)s; 0 on a local development chain)",
    )
    a.add_argument(
        "--interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds between batches (default: %(default)s)",
    )
    a.add_argument(
        "--max-batch",
        type=int,
        default=1000,
        metavar="N",
        help="deals per batch at most (default: %(default)s)",
    )
    add_db_pool(a, 2)


def _add_verify(sub: argparse._SubParsersAction[Any], rpc: argparse.ArgumentParser) -> None:
    v = sub.add_parser(
        "verify",
        parents=[rpc],
        help="check that a deal's record is anchored on-chain (its inclusion proof, from the API)",
        description="Fetch the deal's anchor proof from the API, recompute its leaf from the record, "
        "check the proof against the batch root off-chain and with DealAnchor.verify on the node, "
        "and print a verdict. Exit status 0 when every check passes, 1 otherwise.",
    )
    v.add_argument("deal", metavar="DEAL", help="the deal id")
    v.add_argument(
        "--api",
        default=os.environ.get("IPSX_API_URL", "http://127.0.0.1:8000"),
        metavar="URL",
        help="API base URL (default: $IPSX_API_URL, else http://127.0.0.1:8000)",
    )
    v.add_argument("--token", help="API key or session token of a party to the deal (default: IPSX_TOKEN)")
    v.add_argument(
        "--deployment",
        type=Path,
        metavar="FILE",
        help="a file `ipsx chain deploy` wrote: its DealAnchor must be the one the API names "
        "(default: trust the API's contract address, checked on the node)",
    )


def _add_reconcile(
    sub: argparse._SubParsersAction[Any], rpc: argparse.ArgumentParser, deployment: argparse.ArgumentParser
) -> None:
    r = sub.add_parser(
        "reconcile",
        parents=[rpc, deployment],
        help="operator: check that the ledger and the chain agree to the base unit",
        description="Compare the channels table and the ledger (IPSX_DATABASE_URL) with the chain: "
        "every channel's state, deposits and settlements, the contract's token balance and the "
        "ledger's image of the chain. Prints one line per check; exit status 0 when all agree, 1 on "
        "a mismatch.",
    )
    r.add_argument(
        "--block",
        type=int,
        metavar="N",
        help="read the chain at this block (default: the last block the watcher applied)",
    )

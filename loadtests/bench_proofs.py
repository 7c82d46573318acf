"""Balance-proof verification benchmark: proofs verified per second per core, eth-keys' pure-Python
backend against coincurve (libsecp256k1), beside the bare secp256k1 recovery both wrap.

Issue 4's bar is 2,000 balance proofs verified per second per core (recover + checks). The script
signs ``--proofs`` EIP-712 balance proofs (default 5,000) on as many distinct channels, from 20
sender keys, each for a new cumulative balance above the channel's last proof and within its
deposit, and hands them over as the payment agent does: 0x-hex signatures. Signing and the
in-memory ``billing.channels.Channel`` rows are built before the clock starts.

Lines, run interleaved in one process (run 1 goes through every line, then run 2...), medians
over ``--runs``:

- ``floor``: ``coincurve.PublicKey.from_signature_and_message`` on a precomputed digest, the
  secp256k1 recovery alone: the baseline every ratio is taken against;
- ``digest``: the EIP-712 hashing alone (``contracts.proofs.balance_proof_message`` + ``digest``);
- ``direct``: digest + coincurve recovery + keccak of the public key compared as 20 bytes, with no
  eth-account: what a hand-written verifier would cost (a yardstick, not IPSX's path);
- ``coincurve`` and ``native``: ``record_proof``'s checks that need no database (balance range,
  channel id, domain, channel open, signature shape, recovery through ``contracts.proofs`` and
  eth-account, signer is the sender, balance within the deposit, not stale), with eth-keys on
  ``CoinCurveECCBackend`` and on ``NativeECCBackend``; ``native`` on the first ``--native-proofs``.
  eth-keys resolves its backend from ``ECC_BACKEND_CLASS`` on every call when none is pinned, which
  is how one process runs both; each line prints the backend ``eth_keys.backends.get_backend()``
  returned while it ran;
- ``postgres`` (``--postgres-proofs``, 0 to skip): ``billing.channels.record_proof`` itself on
  PostgreSQL with the default backend, one proof after the other; it creates (and drops) its own
  database.

    .venv/bin/python loadtests/bench_proofs.py                    # about 20 s
    .venv/bin/python loadtests/bench_proofs.py --postgres-proofs 0 --profile
    .venv/bin/python loadtests/bench_proofs.py --json /tmp/proofs.json

Figures: proofs/s (wall clock, ``time.perf_counter``) and CPU µs per proof (``time.process_time``,
which a busy neighbour on a shared machine does not inflate); the bar is read on CPU time: 2,000
proofs per CPU-second is 500 µs per proof.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import eth_keys.backends
from eth_account import Account
from eth_utils.address import to_canonical_address
from eth_utils.crypto import keccak

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from billing import channels
from billing.channels import Channel, ProofRejected
from billing.ledger import Amount
from contracts import proofs

try:
    import coincurve
except ImportError:  # the native line still runs; the floor and coincurve lines say why they did not
    coincurve = None

TOKEN = 10**18
DEPOSIT = 100 * TOKEN
SENDERS = 20
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
OPERATOR = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
DOMAIN = proofs.ChannelDomain(chain_id=31337, verifying_contract=CONTRACT)  # type: ignore[arg-type]
NATIVE = "eth_keys.backends.NativeECCBackend"
COINCURVE = "eth_keys.backends.CoinCurveECCBackend"
BAR_CPU_US = 1e6 / 2_000  # issue 4: 2,000 proofs per second per core


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def ecc_backend(import_path: str) -> Iterator[str]:
    """Make eth-keys resolve ``import_path`` while inside; yields the class name it resolves."""
    before = os.environ.get("ECC_BACKEND_CLASS")
    os.environ["ECC_BACKEND_CLASS"] = import_path
    try:
        yield type(eth_keys.backends.get_backend()).__name__
    finally:
        if before is None:
            del os.environ["ECC_BACKEND_CLASS"]
        else:
            os.environ["ECC_BACKEND_CLASS"] = before


@dataclass(frozen=True)
class Proof:
    channel: Channel  # as record_proof reads it before the proof: open, last proof below this one
    balance: int
    signature: str  # 0x-hex, as the payment agent sends it
    digest: bytes  # for the floor line
    rsv: bytes  # r || s || v with v in {0, 1}, coincurve's form


def make_channel(channel_id: bytes, sender: str, last: int) -> Channel:
    now = datetime.now(UTC)
    return Channel(
        channel_id=channels.channel_key(channel_id),
        contract=CONTRACT,
        sender=sender,
        receiver=OPERATOR,
        role="requester",
        account_id=1,
        account_name=None,
        deposit=Amount(DEPOSIT),
        state="open",
        closing_balance=None,
        settle_after=None,
        proof_balance=Amount(last),
        proof_signature=None,
        consented_balance=None,
        consent_expires_at=None,
        consent_in_force=False,
        frozen=False,
        paid=None,
        refunded=None,
        opened_block=1,
        created_at=now,
        updated_at=now,
    )


def make_proofs(count: int, seed: int, first_nonce: int = 0) -> list[Proof]:
    rng = random.Random(seed)
    keys = [keccak(f"bench sender {n}".encode()) for n in range(SENDERS)]
    addresses = [Account.from_key(key).address for key in keys]
    made = []
    for n in range(count):
        sender = n % SENDERS
        cid = proofs.channel_id(addresses[sender], OPERATOR, first_nonce + n)
        last = rng.randrange(DEPOSIT)
        balance = rng.randint(last + 1, DEPOSIT)
        signature = proofs.sign_balance_proof(DOMAIN, cid, balance, keys[sender])
        made.append(
            Proof(
                channel=make_channel(cid, addresses[sender], last),
                balance=balance,
                signature="0x" + signature.hex(),
                digest=proofs.digest(proofs.balance_proof_message(DOMAIN, cid, balance)),
                rsv=signature[:64] + bytes([signature[64] - 27]),
            )
        )
    return made


# -- the lines ---------------------------------------------------------------------------------------


def verify(channel: Channel, balance: int, signature: str, domain: proofs.ChannelDomain) -> None:
    """``billing.channels.record_proof``'s checks, in its order, minus PostgreSQL: raises
    ``ProofRejected`` (or ``ValueError``) as it does, returns when it would store the proof."""
    if not isinstance(balance, int) or isinstance(balance, bool) or not 0 <= balance < 2**256:
        raise ValueError("a balance is a uint256 of base units")
    key = channels.channel_key(channel.channel_id)
    if channel.contract != domain.verifying_contract:
        raise ValueError("the domain is of another contract")
    if channel.state != "open":
        raise ProofRejected("not_open", key)
    raw = channels._signature_bytes(signature)  # the same parser, so the same shapes are refused
    if raw is None:
        raise ProofRejected("bad_signature", key)
    try:
        signer = proofs.recover_balance_proof_signer(domain, channel.id_bytes, balance, raw)
    except proofs.InvalidSignatureError:
        raise ProofRejected("bad_signature", key) from None
    if signer != channel.sender:
        raise ProofRejected("wrong_signer", key)
    if balance > channel.deposit:
        raise ProofRejected("above_deposit", key)
    if balance < channel.proof_balance:
        raise ProofRejected("stale", key)


def checks_line(items: list[Proof]) -> None:
    for item in items:
        verify(item.channel, item.balance, item.signature, DOMAIN)


def digest_line(items: list[Proof]) -> None:
    for item in items:
        proofs.digest(proofs.balance_proof_message(DOMAIN, item.channel.id_bytes, item.balance))


def floor_line(items: list[Proof]) -> None:
    recover = coincurve.PublicKey.from_signature_and_message
    for item in items:
        recover(item.rsv, item.digest, hasher=None)


def direct_line(items: list[Proof]) -> None:
    recover = coincurve.PublicKey.from_signature_and_message
    for item in items:
        raw = bytes.fromhex(item.signature[2:])
        message = proofs.balance_proof_message(DOMAIN, item.channel.id_bytes, item.balance)
        public = recover(raw[:64] + bytes([raw[64] - 27]), proofs.digest(message), hasher=None)
        if keccak(public.format(compressed=False)[1:])[12:] != to_canonical_address(item.channel.sender):
            raise ProofRejected("wrong_signer", item.channel.channel_id)


@dataclass
class Timing:
    proofs: int
    wall_s: float
    cpu_s: float

    @property
    def per_s(self) -> float:
        return self.proofs / self.wall_s

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.proofs * 1e6


def timed(label: str, items: list[Proof], line: Callable[[list[Proof]], None]) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    line(items)
    timing = Timing(len(items), time.perf_counter() - wall, time.process_time() - cpu)
    log(
        f"  {label:<10} {timing.proofs:>6,} proofs, {timing.per_s:>9,.0f}/s,"
        f" {timing.cpu_us:>8.1f} µs CPU each"
    )
    return timing


@dataclass(frozen=True)
class Line:
    name: str
    what: str
    backend: str  # the ECC backend it resolves, or what it calls directly
    run: Callable[[list[Proof]], None]
    items: list[Proof]
    ecc: str | None = None  # ECC_BACKEND_CLASS while it runs


def lines(items: list[Proof], native_items: list[Proof]) -> list[Line]:
    found: list[Line] = []
    if coincurve is not None:
        found.append(
            Line("floor", "bare coincurve recovery, precomputed digest", "libsecp256k1", floor_line, items)
        )
    found.append(Line("digest", "EIP-712 digest only (contracts.proofs)", "—", digest_line, items))
    if coincurve is not None:
        found.append(
            Line("direct", "digest + coincurve + address, no eth-account", "libsecp256k1", direct_line, items)
        )
        found.append(Line("coincurve", "record_proof checks, eth-account", "", checks_line, items, COINCURVE))
    found.append(Line("native", "record_proof checks, eth-account", "", checks_line, native_items, NATIVE))
    return found


def run_line(line: Line) -> tuple[str, Timing]:
    if line.ecc is None:
        return line.backend, timed(line.name, line.items, line.run)
    with ecc_backend(line.ecc) as backend:
        return backend, timed(line.name, line.items, line.run)


def sanity(items: list[Proof]) -> None:
    """The checks accept the proofs and refuse a changed one, on each backend; the floor recovers
    the right key. Untimed: a benchmark of a verifier that accepts anything would be worthless."""
    item = items[0]
    for ecc in [NATIVE] + ([COINCURVE] if coincurve is not None else []):
        with ecc_backend(ecc):
            verify(item.channel, item.balance, item.signature, DOMAIN)
            try:
                verify(item.channel, item.balance - 1, item.signature, DOMAIN)
            except ProofRejected as rejected:
                if rejected.reason != "wrong_signer":
                    raise
            else:
                raise SystemExit(f"{ecc}: a proof of another balance was accepted")
    if coincurve is not None:
        public = coincurve.PublicKey.from_signature_and_message(item.rsv, item.digest, hasher=None)
        if keccak(public.format(compressed=False)[1:])[12:] != to_canonical_address(item.channel.sender):
            raise SystemExit("the floor line recovers another key")
    if Account._keys._backend is not None:
        log(f"warning: eth-account pins {Account._keys._backend!r}: ECC_BACKEND_CLASS changes nothing")


# -- record_proof on PostgreSQL ----------------------------------------------------------------------


def postgres_cpu() -> float:
    import psutil

    total = 0.0
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] and proc.info["name"].startswith("postgres"):
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
    return total


async def postgres_runs(admin_url: str, per_run: int, runs: int, seed: int) -> list[dict[str, float]]:
    import asyncpg

    from billing import accounts, db

    name = "ipsx_bench_proofs"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    pool = await db.connect(admin_url.rsplit("/", 1)[0] + f"/{name}", min_size=1, max_size=2)
    results = []
    try:
        await db.migrate(pool)
        # Nonces past the in-memory lines' so that no channel id repeats.
        batches = [make_proofs(per_run, seed + 1 + r, first_nonce=10**6 * (r + 1)) for r in range(runs)]
        account_ids = {}
        for item in batches[0][:SENDERS]:
            account_ids[item.channel.sender] = (
                await accounts.account_for_address(pool, item.channel.sender)
            ).id
        async with pool.acquire() as conn, conn.transaction():
            for item in (item for batch in batches for item in batch):
                await channels.open_in(
                    conn,
                    channel_id=item.channel.channel_id,
                    contract=CONTRACT,
                    sender=item.channel.sender,
                    receiver=OPERATOR,
                    role="requester",
                    account_id=account_ids[item.channel.sender],
                    deposit=DEPOSIT,
                    opened_block=1,
                )
        for run, batch in enumerate(batches, 1):
            pg0, cpu0, wall0 = postgres_cpu(), time.process_time(), time.perf_counter()
            for item in batch:
                stored = await channels.record_proof(
                    pool, item.channel.channel_id, item.balance, item.signature, domain=DOMAIN
                )
                if stored.proof_balance != item.balance:
                    raise SystemExit(f"record_proof stored {stored.proof_balance}, not {item.balance}")
            wall, cpu, pg = time.perf_counter() - wall0, time.process_time() - cpu0, postgres_cpu() - pg0
            log(
                f"  postgres   run {run}: {per_run / wall:,.0f}/s, {cpu / per_run * 1e6:.1f} µs CPU here"
                f" + {pg / per_run * 1e6:.1f} µs PostgreSQL CPU per proof"
            )
            results.append(
                {"per_s": per_run / wall, "cpu_us": cpu / per_run * 1e6, "pg_cpu_us": pg / per_run * 1e6}
            )
    finally:
        await pool.close()
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
    return results


# -- where the time goes -----------------------------------------------------------------------------

# tottime grouped by the file a function lives in; the first match wins.
PROFILE_GROUPS = [
    ("secp256k1 recovery (coincurve)", ("_libsecp256k1", "coincurve")),
    ("keccak (pycryptodome via eth-hash)", ("Crypto/Hash", "eth_hash")),
    ("eth-keys objects and validation", ("eth_keys",)),
    ("eth-account (HexBytes, v handling)", ("eth_account", "hexbytes")),
    ("eth-utils (checksum, conversions)", ("eth_utils",)),
    ("contracts.proofs", ("contracts/proofs",)),
    ("billing.channels checks", ("billing/",)),
]


def profile(items: list[Proof]) -> list[tuple[str, float]]:
    with ecc_backend(COINCURVE):
        profiler = cProfile.Profile()
        profiler.runcall(checks_line, items)
    stats = pstats.Stats(profiler, stream=io.StringIO())
    groups: dict[str, float] = {}
    total = 0.0
    for (filename, _, function), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        total += tottime
        where = filename + function
        group = next(
            (g for g, marks in PROFILE_GROUPS if any(m in where for m in marks)), "other (builtins, ...)"
        )
        groups[group] = groups.get(group, 0.0) + tottime
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
    print(out.getvalue(), file=sys.stderr)
    return sorted(((g, t / total) for g, t in groups.items()), key=lambda x: -x[1])


# -- report ------------------------------------------------------------------------------------------


def summary(report: dict[str, Any]) -> str:
    floor = report["lines"].get("floor")
    rows = [
        "| line | what | backend | proofs | proofs/s (wall) | CPU µs/proof | proofs per CPU-s"
        " | CPU x floor |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, line in report["lines"].items():
        ratio = f"{line['cpu_us'] / floor['cpu_us']:.1f}" if floor else "—"
        rows.append(
            f"| {name} | {line['what']} | {line['backend']} | {line['proofs']:,} | {line['per_s']:,.0f} |"
            f" {line['cpu_us']:.1f} | {1e6 / line['cpu_us']:,.0f} | {ratio} |"
        )
    pg = report.get("postgres")
    if pg:
        ratio = f"{pg['cpu_us'] / floor['cpu_us']:.1f}" if floor else "—"
        rows.append(
            f"| postgres | record_proof on PostgreSQL (+ {pg['pg_cpu_us']:.0f} µs PostgreSQL CPU) |"
            f" {pg['backend']} | {pg['proofs']:,} | {pg['per_s']:,.0f} | {pg['cpu_us']:.1f} |"
            f" {1e6 / pg['cpu_us']:,.0f} | {ratio} |"
        )
    text = "\n".join(rows)
    text += (
        f"\n\nmedians of {report['runs']} runs; bar: {BAR_CPU_US:.0f} µs CPU per proof (2,000/s per core)."
    )
    for name in ("coincurve", "native"):
        line = report["lines"].get(name)
        if line:
            verdict = "meets" if line["cpu_us"] <= BAR_CPU_US else "misses"
            text += f"\n{name}: {verdict} the bar ({BAR_CPU_US / line['cpu_us']:.1f}x the allowance)."
    checks, digest = report["lines"].get("coincurve"), report["lines"]["digest"]
    if checks:
        text += f"\nEIP-712 hashing is {digest['cpu_us'] / checks['cpu_us']:.0%} of the coincurve line's CPU."
    if report.get("profile"):
        text += "\n\nwhere the coincurve line's time goes (cProfile tottime, profiler overhead included):\n"
        text += "\n".join(f"- {group}: {share:.0%}" for group, share in report["profile"])
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--proofs", type=int, default=5_000, help="proofs per line and run (default: %(default)s)"
    )
    parser.add_argument(
        "--native-proofs", type=int, default=300, help="proofs for the native line (default: %(default)s)"
    )
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (default: %(default)s)")
    parser.add_argument(
        "--postgres-proofs",
        type=int,
        default=1_000,
        help="proofs through record_proof on PostgreSQL per run, 0 to skip (default: %(default)s)",
    )
    parser.add_argument(
        "--database-admin-url",
        default=os.environ.get(
            "IPSX_BENCH_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--profile", action="store_true", help="profile the coincurve line once, by package")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the figures as JSON to OUT")
    args = parser.parse_args(argv)

    log(f"default eth-keys backend: {type(eth_keys.backends.get_backend()).__name__}")
    log(f"signing {args.proofs:,} balance proofs on as many channels ({SENDERS} senders)")
    with ecc_backend(COINCURVE if coincurve is not None else NATIVE):
        items = make_proofs(args.proofs, args.seed)
    sanity(items)
    todo = lines(items, items[: args.native_proofs])
    timings: dict[str, list[Timing]] = {line.name: [] for line in todo}
    backends: dict[str, str] = {}
    for run in range(1, args.runs + 1):
        log(f"run {run} of {args.runs}")
        for line in todo:
            backends[line.name], timing = run_line(line)
            timings[line.name].append(timing)

    report: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "coincurve": getattr(coincurve, "__version__", None) if coincurve is not None else None,
        "runs": args.runs,
        "lines": {
            line.name: {
                "what": line.what,
                "backend": backends[line.name],
                "proofs": len(line.items),
                "per_s": statistics.median(t.per_s for t in timings[line.name]),
                "cpu_us": statistics.median(t.cpu_us for t in timings[line.name]),
                "per_s_runs": [round(t.per_s) for t in timings[line.name]],
            }
            for line in todo
        },
    }
    if coincurve is None:
        report["note"] = "coincurve is not installed: no floor, direct or coincurve line"
    if args.postgres_proofs:
        log(f"record_proof on PostgreSQL: {args.postgres_proofs:,} proofs per run")
        try:
            pg = asyncio.run(
                postgres_runs(args.database_admin_url, args.postgres_proofs, args.runs, args.seed)
            )
        except OSError as error:
            log(f"  skipped: PostgreSQL unreachable ({error})")
        else:
            report["postgres"] = {
                "backend": type(eth_keys.backends.get_backend()).__name__,
                "proofs": args.postgres_proofs,
                **{key: statistics.median(r[key] for r in pg) for key in ("per_s", "cpu_us", "pg_cpu_us")},
            }
    if args.profile and coincurve is not None:
        report["profile"] = profile(items)

    print(summary(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

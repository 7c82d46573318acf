"""Compiles ``contracts/src`` with the pinned npm ``solc`` into ``contracts/artifacts``.

Usage: ``python -m contracts.build`` (rewrite the artifacts) or ``python -m contracts.build --check``
(exit 1 when the committed artifacts differ from a fresh build). Needs Node and the packages of
``contracts/package.json`` (``npm ci`` in ``contracts/``; ``--install`` runs it when missing).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from contracts import ARTIFACTS_DIR, CONTRACT_NAMES, PACKAGE_DIR, SOURCES_DIR

SOLC_BRIDGE = PACKAGE_DIR / "solc-compile.js"
NODE_MODULES = PACKAGE_DIR / "node_modules"
# Fixed so that a build is reproducible: any change here changes every bytecode.
SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": "cancun",
    "metadata": {"bytecodeHash": "ipfs"},
}
OUTPUTS = ["abi", "metadata", "evm.bytecode.object", "evm.deployedBytecode.object"]
COMPILE_TIMEOUT = 300.0


class BuildError(RuntimeError):
    """The compiler could not run, or reported errors (``messages``)."""

    def __init__(self, summary: str, messages: list[str] | None = None) -> None:
        super().__init__(summary + ("".join("\n" + m for m in messages or [])))
        self.messages = messages or []


def ensure_node_modules() -> None:
    """Runs ``npm ci`` in ``contracts/`` when the npm packages are not installed."""
    packages = ("solc", "@openzeppelin/contracts", "@foundry-rs/anvil")
    if all((NODE_MODULES / package).is_dir() for package in packages):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise BuildError("npm is not installed; the contracts build needs Node and npm")
    subprocess.run(  # noqa: S603 - fixed argument list
        [npm, "ci", "--no-audit", "--no-fund"], cwd=PACKAGE_DIR, check=True, timeout=COMPILE_TIMEOUT
    )


def source_units() -> dict[str, str]:
    """The project's own source units (``src/<Name>.sol``) and their text."""
    return {
        f"src/{path.name}": path.read_text(encoding="utf-8") for path in sorted(SOURCES_DIR.glob("*.sol"))
    }


def compiler_input() -> dict[str, Any]:
    """The solc standard-JSON input for every contract in ``CONTRACT_NAMES``."""
    selection = {f"src/{name}.sol": {name: OUTPUTS} for name in CONTRACT_NAMES}
    return {
        "language": "Solidity",
        "sources": {unit: {"content": text} for unit, text in source_units().items()},
        "settings": {**SETTINGS, "outputSelection": selection},
    }


def run_solc(standard_input: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Runs the pinned solc on ``standard_input``; returns (compiler version, standard output)."""
    node = shutil.which("node")
    if node is None:
        raise BuildError("node is not installed; the contracts build needs Node")
    proc = subprocess.run(  # noqa: S603 - fixed argument list
        [node, str(SOLC_BRIDGE)],
        input=json.dumps(standard_input),
        capture_output=True,
        text=True,
        cwd=PACKAGE_DIR,
        timeout=COMPILE_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise BuildError(f"solc bridge failed with exit code {proc.returncode}", [proc.stderr])
    result = json.loads(proc.stdout)
    output: dict[str, Any] = result["output"]
    errors = [e["formattedMessage"] for e in output.get("errors", []) if e["severity"] == "error"]
    if errors:
        raise BuildError("solc reported errors", errors)
    return str(result["version"]), output


def _hex(code: str) -> str:
    return "0x" + code


def make_artifacts(version: str, output: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Turns solc's standard output into one artifact dictionary per contract."""
    artifacts = {}
    for name in CONTRACT_NAMES:
        compiled = output["contracts"][f"src/{name}.sol"][name]
        metadata = json.loads(compiled["metadata"])
        sources = {unit: info["keccak256"] for unit, info in sorted(metadata["sources"].items())}
        artifacts[name] = {
            "contractName": name,
            "abi": compiled["abi"],
            "bytecode": _hex(compiled["evm"]["bytecode"]["object"]),
            "deployedBytecode": _hex(compiled["evm"]["deployedBytecode"]["object"]),
            "compiler": {"version": version, "settings": SETTINGS},
            "sources": sources,
            "sourceHash": source_hash(sources),
        }
    return artifacts


def source_hash(sources: dict[str, str]) -> str:
    """sha256 over the sorted ``unit:keccak256`` lines of a contract's source units."""
    lines = "".join(f"{unit}:{digest}\n" for unit, digest in sorted(sources.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def render(artifact: dict[str, Any]) -> str:
    """The committed text of an artifact (stable key order, one trailing newline)."""
    return json.dumps(artifact, indent=2, sort_keys=True) + "\n"


def build() -> dict[str, dict[str, Any]]:
    """Compiles every contract and returns the artifacts (nothing is written)."""
    ensure_node_modules()
    return make_artifacts(*run_solc(compiler_input()))


def write(artifacts: dict[str, dict[str, Any]], directory: Path = ARTIFACTS_DIR) -> None:
    """Writes ``<Name>.json`` for every artifact into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, artifact in artifacts.items():
        (directory / f"{name}.json").write_text(render(artifact), encoding="utf-8")


def drifted(artifacts: dict[str, dict[str, Any]], directory: Path = ARTIFACTS_DIR) -> list[str]:
    """Names whose committed artifact is missing or differs from ``artifacts``."""
    names = []
    for name, artifact in artifacts.items():
        path = directory / f"{name}.json"
        if not path.is_file() or path.read_text(encoding="utf-8") != render(artifact):
            names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m contracts.build", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare with the committed artifacts")
    args = parser.parse_args(argv)
    artifacts = build()
    if args.check:
        stale = drifted(artifacts)
        if stale:
            names = ", ".join(stale)
            print(f"artifacts out of date: {names}; run python -m contracts.build", file=sys.stderr)
            return 1
        print("artifacts up to date")
        return 0
    write(artifacts)
    print(f"wrote {len(artifacts)} artifacts to {ARTIFACTS_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

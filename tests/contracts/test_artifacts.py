"""The committed artifacts are what the pinned compiler makes of the current sources."""

from __future__ import annotations

import json

import pytest
from eth_utils.crypto import keccak

import contracts
from contracts import build


def test_every_artifact_loads() -> None:
    pinned = json.loads((contracts.PACKAGE_DIR / "package.json").read_text())["dependencies"]["solc"]
    for name in contracts.CONTRACT_NAMES:
        artifact = contracts.load(name)
        assert artifact.name == name
        assert artifact.compiler_version.startswith(pinned + "+commit.")
        for code in (artifact.bytecode, artifact.deployed_bytecode):
            assert code.startswith("0x") and len(code) > 1000 and bytes.fromhex(code[2:])
        assert any(item["type"] == "constructor" for item in artifact.abi)
        assert artifact.source_hash == build.source_hash(artifact.sources)


def test_unknown_contract() -> None:
    with pytest.raises(contracts.UnknownContractError) as excinfo:
        contracts.load("Nope")
    assert excinfo.value.name == "Nope"


def test_sources_match_the_hashes_in_the_artifacts() -> None:
    """Catches an edited source without Node: the artifacts record each source unit's keccak256."""
    seen = set()
    for name in contracts.CONTRACT_NAMES:
        for unit, digest in contracts.load(name).sources.items():
            path = (
                contracts.PACKAGE_DIR / unit
                if unit.startswith("src/")
                else contracts.PACKAGE_DIR / "node_modules" / unit
            )
            if not path.exists():  # OpenZeppelin before npm ci: the rebuild test covers it
                continue
            assert "0x" + keccak(path.read_bytes()).hex() == digest, f"{unit} changed; rebuild the artifacts"
            seen.add(unit)
    own = {f"src/{p.name}" for p in contracts.SOURCES_DIR.glob("*.sol")}
    assert own <= seen, f"sources not in any artifact: {own - seen}"


@pytest.mark.timeout(300)  # npm ci on a machine without node_modules
def test_rebuild_matches_the_committed_artifacts() -> None:
    assert build.drifted(build.build()) == []


@pytest.mark.timeout(120)
def test_a_changed_source_is_detected() -> None:
    build.ensure_node_modules()
    standard_input = build.compiler_input()
    source = standard_input["sources"]["src/PaymentChannels.sol"]
    source["content"] += "\n// one more line\n"
    artifacts = build.make_artifacts(*build.run_solc(standard_input))
    assert build.drifted(artifacts) == ["PaymentChannels"]
    assert artifacts["PaymentChannels"]["abi"] == contracts.load("PaymentChannels").abi


def test_build_errors_are_reported() -> None:
    build.ensure_node_modules()
    standard_input = build.compiler_input()
    standard_input["sources"]["src/DealAnchor.sol"]["content"] += "\ncontract Broken { function f( }\n"
    with pytest.raises(build.BuildError) as excinfo:
        build.run_solc(standard_input)
    assert any("ParserError" in message for message in excinfo.value.messages)

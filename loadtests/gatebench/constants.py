"""Names shared by the whole benchmark, in one place: paths, targets and their labels, ports,
the market targets' settings, the default IPSX database and Redis, and sizes."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # loadtests/
REPO = HERE.parent
VENV_BIN = Path(sys.executable).parent
ALL_TARGETS = (
    "direct", "squid", "proxypy", "ipsx", "ipsx-ondemand", "ipsx-1w", "ipsx-ws", "ipsx-noreuse",
    "ipsx-market", "ipsx-market-paid",
)  # fmt: skip
MARKET_TARGETS = ("ipsx-market", "ipsx-market-paid")
DEFAULT_TARGETS = ALL_TARGETS[:5]
LABELS = {
    "direct": "direct",
    "squid": "squid",
    "proxypy": "proxy.py",
    "ipsx": "IPSX (pool 64)",
    "ipsx-ondemand": "IPSX on-demand (pool 1)",
    "ipsx-1w": "IPSX --workers 1 (pool 64)",
    "ipsx-ws": "IPSX, agent over WebSocket (pool 64)",
    "ipsx-noreuse": "IPSX, agent --no-reuse (pool 64)",
    "ipsx-market": "IPSX --market, payments off",
    "ipsx-market-paid": "IPSX --market, paying over a channel",
}
ORIGIN_HOST, ORIGIN_PORT = "127.0.0.1", 18080
ORIGIN = f"{ORIGIN_HOST}:{ORIGIN_PORT}"
SQUID_PORT = 13128
PROXYPY_PORT = 18899
IPSX_HTTP, IPSX_SOCKS, IPSX_TUNNEL = 18180, 18181, 18182
IPSX_API, ANVIL_PORT = 18190, 18545
ANVIL = REPO / "contracts" / "node_modules" / ".bin" / "anvil"
# The market targets: spot deals of 5 s (so usage settles and is invoiced while a phase runs) at
# a small price, with an allowance no phase reaches; the paying requester's limits never bind.
MARKET_API_ARGS = ("--spot-duration", "5", "--spot-traffic-gb", "1000", "--invoice-interval", "1")
OFFER_PRICE_PER_GB = str(10**15)  # 0.001 IPSX
PAYER_FUNDS = 10**6  # IPSX
IPSX_DB = "postgresql://postgres@127.0.0.1:5432/ipsx_bench"
IPSX_REDIS = "redis://127.0.0.1:6379/14"
KIB = 1024
ONE_K, TEN_M = 1024, 10 * 1024 * 1024

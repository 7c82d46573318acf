"""The ``ipsx provide`` command line: a provider agent's gateway, exits, destinations, caps,
bandwidth, hours and payouts, and ``ipsx provide status``. :mod:`ipsx.commands` runs it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ipsx.service_parsers import positive_int, positive_seconds

PROVIDE_EPILOG = """\
Examples:
  ipsx provide --key wallet.key --gateway gw.example:8443 \\
      --bind 203.0.113.7,country=fr,type=datacenter
  ipsx provide --key wallet.key --gateway gw.example:8443 --cap-day 5GB --cap-month 100 \\
      --rate-total 20 --hours 22:00-07:00 --tz Europe/Paris --protocols https,socks5 \\
      --block example.com,10.0.0.0/8
  ipsx provide status --key wallet.key
      what the agent served today and this month, its caps and hours, what it earned

Sizes are decimal: a plain number is GB; 500MB, 1.5GB, 2TB and 2GiB also work. Rates are per
second: a plain number is Mbit/s; 500kbit and 1Gbit also work. Caps count both directions and
start afresh at local midnight (and on the 1st); the counts are kept in KEYFILE.usage.json
(next to the key, or in --state-dir), so restarting the agent does not reset them. A stream
that reaches a cap ends there; the agent tells the gateway it is not serving until the cap
resets or its --hours open again, and the gateway does not send it streams meanwhile.
"""


def add_provide_command(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``provide`` to the ``ipsx`` parser."""
    p = sub.add_parser(
        "provide",
        help="share this machine's IP addresses as exits (`ipsx provide status`: what it served)",
        description="Run a provider agent. It only dials out (no inbound port needed), logs in\n"
        "with your wallet, and relays streams from the exits you declare, within the caps,\n"
        "bandwidth, hours, protocols and destinations you allow.",
        epilog=PROVIDE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=("run", "status"),
        default="run",
        help="run: serve (the default); status: show what the agent with this --key served today "
        "and this month (bytes, streams, per deal), its caps, hours and whether it serves now, and "
        "what it earned when it keeps payout proofs (--payouts-api)",
    )
    p.add_argument(
        "--key",
        required=True,
        type=Path,
        help="wallet: a file with a hex private key, or an encrypted keystore JSON "
        "(password from IPSX_KEY_PASSWORD). Keep it chmod 600 (`ipsx wallet new` does): a warning "
        "is logged when group or others may read it",
    )
    p.add_argument(
        "--gateway",
        help="the gateway's tunnel endpoint (required to serve): HOST:PORT, tls://HOST:PORT when it "
        "has --tunnel-cert, or ws://HOST[:PORT][/PATH] / wss://HOST[:PORT][/PATH] to tunnel over "
        "WebSocket where only web traffic gets out (same port; wss is TLS)",
    )
    p.add_argument(
        "--gateway-ca", help="CA bundle that signed the gateway's certificate (default: the system's)"
    )
    p.add_argument(
        "--gateway-proxy",
        default=os.environ.get("IPSX_GATEWAY_PROXY") or None,
        metavar="http://[USER:PASSWORD@]HOST:PORT",
        help="reach the gateway through this HTTP proxy (CONNECT), where the network allows nothing "
        "else; with tls:// or wss:// the proxy sees only TLS. Default: $IPSX_GATEWAY_PROXY, which keeps "
        "a password out of the process list",
    )
    p.add_argument(
        "--bind",
        action="append",
        default=[],
        metavar="ADDRESS[,key=value...]",
        help="an exit: a local source address, optionally with its own attributes "
        "(country, region, city, asn, type). Repeat for several. Default: the host's address",
    )
    p.add_argument(
        "--country", default="us", help="ISO 3166-1 alpha-2 country of the exits (default: %(default)s)"
    )
    p.add_argument("--region", default="", help="region of the exits")
    p.add_argument("--city", default="", help="city of the exits")
    p.add_argument("--asn", type=int, default=0, help="autonomous system number of the exits")
    p.add_argument(
        "--type",
        default="residential",
        choices=["residential", "mobile", "datacenter"],
        help="kind of IP (default: %(default)s)",
    )
    p.add_argument("--ports", help="destination ports allowed, e.g. 80,443,8000-8100 (default: all but mail)")
    p.add_argument(
        "--protocols",
        metavar="LIST",
        help="the stream protocols served, of http (plain HTTP requests), https (CONNECT tunnels) and "
        "socks5, e.g. https,socks5 (default: all)",
    )
    p.add_argument(
        "--block",
        action="append",
        default=[],
        metavar="LIST",
        help="destinations refused: domains (example.com also blocks every name under it) and "
        "networks or addresses (10.0.0.0/8, 192.0.2.7, 2001:db8::/32; checked on the address a "
        "name resolves to). Comma-separated; repeat for more",
    )
    limits = p.add_argument_group(
        "caps, bandwidth and hours (enforced by the agent, advertised to the gateway)"
    )
    limits.add_argument(
        "--cap-day",
        metavar="SIZE",
        help="data served per local day at most, up and down together: GB, or with a unit (500MB)",
    )
    limits.add_argument(
        "--cap-month", metavar="SIZE", help="data served per calendar month at most (as --cap-day)"
    )
    limits.add_argument(
        "--rate-stream", metavar="RATE", help="bandwidth per stream at most: Mbit/s, or with a unit (500kbit)"
    )
    limits.add_argument(
        "--rate-total", metavar="RATE", help="bandwidth of all streams together at most (as --rate-stream)"
    )
    limits.add_argument(
        "--hours",
        action="append",
        default=[],
        metavar="HH:MM-HH:MM",
        help="serve only in this local time window, e.g. 22:00-07:00 (crossing midnight is fine). "
        "Repeat, or separate with commas, for several (default: all day)",
    )
    limits.add_argument(
        "--tz",
        metavar="ZONE",
        help="the time zone of --hours and of the caps' days and months, e.g. Europe/Paris "
        "(default: this machine's)",
    )
    limits.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="where the agent keeps KEYFILE.usage.json, its usage counted against the caps "
        "(default: the folder of --key)",
    )
    p.add_argument("--allow-smtp", action="store_true", help="also allow mail ports (25, 465, 587, 2525)")
    p.add_argument(
        "--allow-private",
        action="store_true",
        help="also allow loopback/private/link-local destinations (tests and demos only)",
    )
    p.add_argument(
        "--pool-size",
        type=positive_int,
        default=16,
        help="idle data connections kept open to the gateway (default: %(default)s); as connections "
        "carry stream after stream, the agent keeps between half and twice that many",
    )
    p.add_argument(
        "--no-reuse",
        dest="reuse_data",
        action="store_false",
        help="open a new data connection for every stream instead of carrying stream after stream "
        "on one (older gateways get that anyway)",
    )
    p.add_argument(
        "--gateway-region",
        help="keep tunnels only to the gateway nodes of this region (their --region); "
        "default: to every live node",
    )
    p.add_argument(
        "--payouts-api",
        help="the IPSX API: check and keep, every --payouts-interval, the payout proofs the hub signs "
        "for your earnings (as `ipsx payouts` does; default: not checked)",
    )
    p.add_argument(
        "--payouts-store",
        type=Path,
        default=Path(".ipsx/payouts.json"),
        help="where the payout proofs are kept (default: %(default)s)",
    )
    p.add_argument(
        "--payouts-interval",
        type=positive_seconds,
        default=30.0,
        help="seconds between payout checks (default: 30)",
    )

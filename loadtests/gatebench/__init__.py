"""The side-by-side gateway benchmark run by ``loadtests/bench_gateway.py``, by responsibility.

- ``constants``: paths, targets and labels, ports, market settings, sizes;
- ``procs``: starting and stopping processes, ports, the console log, :class:`StartError`;
- ``measure``: CPU, RSS, file descriptors and sockets of process trees and of the machine;
- ``ipsx_setup``: the IPSX side set up once per benchmark (code, account, keys, chain);
- ``targets``: the nginx origin, and starting and stopping each target;
- ``loadgen``: reading the load generators' output (tunnel_load.py's lines, wrk's report);
- ``phases``: the measurement phases of one target in one run;
- ``metrics``: records turned into per-run metrics, medians, spreads and ratios;
- ``report``: the Markdown report, the per-phase log lines and the machine description.
"""

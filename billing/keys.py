"""Every Redis key the billing package reads or writes."""

from __future__ import annotations

#: Stream of usage events (gateway) and agent reports (provider agents), one entry per stream.
USAGE_STREAM = "ipsx:usage"
#: Where the worker moves entries it cannot decode, for a human to look at.
USAGE_DEAD_STREAM = "ipsx:usage:dead"
#: The consumer group of the billing workers on ``USAGE_STREAM``.
USAGE_GROUP = "billing"
PAYMENT_CUTOFF = "ipsx:payments:cutoff"  # requester → unpaid base units, for those above the limit

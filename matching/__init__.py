"""The IPSX marketplace core: orders, the resting book and the matching engine.

Providers rest :class:`~matching.orders.Offer` s (one exit each, priced per GB and/or per hour);
requesters place :class:`~matching.orders.Request` s for a number of distinct exits.
:class:`~matching.engine.Engine` pairs them in price-time priority with partial fills, reserves
each deal's cost through a :class:`~matching.engine.Funds` hook and never leaves the book
crossed. Everything here is pure and deterministic (no I/O, no clock: callers pass ``now``);
persistence and the deal protocol live at the edge.
"""

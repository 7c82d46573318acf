"""The shapes of the ids a client names in a URL path, checked before they reach a query.

An id of any other shape names nothing, and some would not even reach the query: PostgreSQL
refuses text holding NUL with an error, which would be a 500 for what is the client's typo.
"""

from __future__ import annotations

import re

from aiohttp import web

from dashboard.problems import Problem

ORDER_ID = re.compile(r"[A-Za-z0-9_]{1,64}", re.ASCII)  # matching.orders
DEAL_ID = re.compile(r"[A-Za-z0-9_]{1,128}", re.ASCII)  # "<order id>_<n>" or "spot_<n>"
ACCOUNT_NAME = re.compile(r"[a-z0-9_]{1,32}", re.ASCII)  # billing.accounts


def path_id(request: web.Request, name: str, shape: re.Pattern[str], detail: str) -> str:
    """The path's ``{name}`` part when it has ``shape``; raises Problem 404 with ``detail``."""
    value = request.match_info[name]
    if not shape.fullmatch(value):
        raise Problem(404, "not_found", detail)
    return value

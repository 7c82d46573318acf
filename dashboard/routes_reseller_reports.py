"""The reseller API's reports: each of the calling reseller's sub-users' traffic, settled charges
and the markup it paid in one calendar month (UTC), with the totals.

Who may call it is in ``routes_resellers``; its OpenAPI entry is in ``openapi_resellers``.
"""

from __future__ import annotations

import datetime as dt
import re

from aiohttp import web

from billing import reseller_terms
from dashboard.appkeys import PG
from dashboard.problems import Problem, json_response
from dashboard.routes import amount_json
from dashboard.routes_resellers import calling_reseller

routes = web.RouteTableDef()

_MONTH = re.compile(r"([12][0-9]{3})-(0[1-9]|1[0-2])")


def _month(request: web.Request) -> tuple[str, dt.datetime, dt.datetime]:
    unknown = sorted(set(request.query) - {"month"})
    if unknown:
        raise Problem(400, "unknown_parameter", f"unknown query parameter {unknown[0][:40]!r}")
    text = request.query.get("month")
    if text is None:
        start = reseller_terms.month_start(dt.datetime.now(dt.UTC))
    else:
        found = _MONTH.fullmatch(text)
        if found is None:
            raise Problem(400, "bad_month", "month must be YYYY-MM")
        start = dt.datetime(int(found.group(1)), int(found.group(2)), 1, tzinfo=dt.UTC)
    return f"{start:%Y-%m}", start, reseller_terms.next_month(start)


@routes.get("/v1/reseller/usage")
async def usage(request: web.Request) -> web.Response:
    """Each sub-user's traffic, settled charges and the markup it paid, in one calendar month."""
    reseller = await calling_reseller(request)
    month, start, end = _month(request)
    rows = await reseller_terms.usage_report(request.app[PG], reseller.account_id, start, end)
    items = [
        {
            "name": row.name,
            "streams": row.streams,
            "bytes": {"up": row.bytes_up, "down": row.bytes_down},
            "charged": amount_json(row.charged),
            "markup": {"due": amount_json(row.markup_due), "charged": amount_json(row.markup_charged)},
        }
        for row in rows
    ]
    totals = {
        "streams": sum(row.streams for row in rows),
        "bytes": {"up": sum(row.bytes_up for row in rows), "down": sum(row.bytes_down for row in rows)},
        "charged": amount_json(sum(row.charged for row in rows)),
        "markup": {
            "due": amount_json(sum(row.markup_due for row in rows)),
            "charged": amount_json(sum(row.markup_charged for row in rows)),
        },
    }
    return json_response({"month": month, "items": items, "totals": totals})

"""Tenant isolation: bob, signed in to the dashboard, can neither read nor change alice's data
through any page, form, builder link, pager cursor or the live stream."""

from __future__ import annotations

import json

from dashboard.pages import encode_cursor
from tests.web.conftest import WebApi
from tests.web.test_pages import PAGES


def test_no_page_shows_another_accounts_data(web_api: WebApi) -> None:
    seeded = web_api.seeded
    assert seeded is not None
    alice_ids = [seeded.order_id, *seeded.deal_ids, seeded.key_ids["alice"], web_api.secrets["alice"]]
    with web_api.signed_in("bob") as bob:
        for path in PAGES:
            page = bob.get(path)
            assert page.status_code == 200, path
            for secret_or_id in alice_ids:
                assert secret_or_id not in page.text, (path, secret_or_id)
        overview = bob.get("/web/overview").text
        assert 'data-requests-today="0"' in overview and 'id="spend-today">0<' in overview
        # A pager cursor is only a position: it cannot reach past the account's own rows.
        first = seeded.deal_ids[0]
        row = web_api.query("SELECT created_at FROM deals WHERE deal_id = $1", first)[0]
        cursor = encode_cursor([row["created_at"].isoformat() + "x", "zzzz"])
        assert bob.get(f"/web/deals?after={cursor}").status_code == 400
        later = encode_cursor(["2999-01-01T00:00:00+00:00", "zzzz"])
        text = bob.get(f"/web/deals?after={later}").text
        assert all(deal_id not in text for deal_id in seeded.deal_ids)
        assert all(deal_id not in bob.get(f"/web/usage?after={encode_cursor(['2999-01-01'])}").text
                   for deal_id in seeded.deal_ids)  # fmt: skip


def test_another_accounts_order_can_be_neither_cancelled_nor_given_a_pac_url(web_api: WebApi) -> None:
    seeded = web_api.seeded
    assert seeded is not None
    with web_api.signed_in("bob") as bob:
        cancel = bob.post(f"/web/orders/{seeded.order_id}/cancel")
        assert cancel.status_code == 404 and "no open order with this id" in cancel.text
        pac = bob.get("/web/proxy", params={"order": seeded.order_id})
        assert pac.status_code == 404 and "/pac/" not in pac.text
    state = web_api.query("SELECT state FROM market_orders WHERE order_id = $1", seeded.order_id)
    assert state[0]["state"] == "open"


def test_another_accounts_key_cannot_be_revoked(web_api: WebApi) -> None:
    seeded = web_api.seeded
    assert seeded is not None
    with web_api.signed_in("bob") as bob:
        answer = bob.post(f"/web/keys/{seeded.key_ids['alice']}/revoke")
        assert answer.status_code == 404 and "no live key of yours" in answer.text
    revoked = web_api.query("SELECT revoked_at FROM api_keys WHERE key_id = $1", seeded.key_ids["alice"])
    assert revoked[0]["revoked_at"] is None


def test_the_live_stream_carries_only_the_callers_totals(web_api: WebApi) -> None:
    with web_api.signed_in("bob") as bob, bob.http.stream("GET", "/web/live") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                break
    assert event["today"] == {"requests": 0, "bytes": 0}
    assert sum(event["series"]["requests"]) == 0
    assert event["spend"]["total"]["base_units"] == "0"
    assert event["balance"]["available"]["ipsx"] == "10"

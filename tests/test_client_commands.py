"""The market commands' arguments: what ``ipsx order …`` turns its options into."""

from __future__ import annotations

import pytest

from ipsx.cli import build_parser
from ipsx.client_commands import moment

TOKEN = ["--token", "ipsx_x"]


def test_an_offer_for_several_exits_with_a_schedule() -> None:
    args = build_parser().parse_args(
        [
            "order",
            "offer",
            *TOKEN,
            "--exit",
            "e1",
            "--exit",
            "e2",
            "--price-per-gb",
            "1.5",
            "--schedule",
            "22:00-07:00",
        ]
    )
    assert (args.exit_ids, args.schedule, args.price_per_gb) == (
        ["e1", "e2"],
        "22:00-07:00",
        str(15 * 10**17),
    )


@pytest.mark.parametrize("schedule", ["24:00-01:00", "22:00", "9:00-10:00", "22:00-07:60"])
def test_a_bad_schedule_is_a_usage_error(schedule: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["order", "offer", *TOKEN, "--exit", "e1", "--schedule", schedule])
    assert exited.value.code == 2
    assert "a daily UTC window like 22:00-07:00" in capsys.readouterr().err


def test_a_time_frame_in_iso_8601_or_unix_seconds() -> None:
    args = build_parser().parse_args(
        [
            "order",
            "package",
            *TOKEN,
            "--traffic",
            "1GB",
            "--starts-at",
            "2026-12-01T08:00",
            "--ends-at",
            "1796115600",
        ]
    )
    assert (args.starts_at, args.expires_at) == (1796112000.0, 1796115600.0)  # 08:00 UTC, 09:00 UTC
    assert moment("2026-12-01T09:00+01:00") == moment("2026-12-01T08:00Z") == 1796112000.0

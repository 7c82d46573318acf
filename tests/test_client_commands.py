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


# The commands that sign with the wallet of --key, as (argv without --key, the prog they run as).
SIGNING = [
    (["pay"], "ipsx pay"),
    (["payouts"], "ipsx payouts"),
    (["channel", "open", "--deposit", "1"], "ipsx channel open"),
    (["channel", "close", "0x" + "ab" * 32], "ipsx channel close"),
]


@pytest.mark.parametrize(("argv", "prog"), SIGNING)
def test_commands_that_sign_say_in_their_help_that_the_key_is_required(
    argv: list[str], prog: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*prog.split()[1:], "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    usage, words = shown.partition("\n\n")[0], " ".join(shown.split())
    assert usage.startswith(f"usage: {prog} ")
    assert " --key KEY " in usage and "[--key KEY]" not in usage
    assert "--key KEY required: your wallet's key file, which signs" in words
    assert "--token" not in shown  # the wallet signs in: a token would go unused


@pytest.mark.parametrize(("argv", "prog"), SIGNING)
def test_commands_that_sign_refuse_to_run_without_the_key(
    argv: list[str], prog: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"{prog}: error: the following arguments are required: --key"


def test_an_empty_key_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["pay", "--key", " "])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "ipsx pay: error: argument --key: the path of your wallet's key file, not an empty string"
    )


def test_commands_that_only_call_the_api_keep_the_key_optional(capsys: pytest.CaptureFixture[str]) -> None:
    assert build_parser().parse_args(["invoices", *TOKEN]).key is None
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["invoices", "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert "[--key KEY]" in shown and "--token TOKEN" in shown
    assert "wallet key file: sign in with Ethereum instead of a token" in " ".join(shown.split())

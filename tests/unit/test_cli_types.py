"""The argparse types every ``lake-mesh`` numeric flag uses: one rule, exit 2, one line."""

from __future__ import annotations

import argparse
import math

import pytest

from lake_mesh_consul.cli import build_parser, main
from lake_mesh_consul.cli._output import (
    MAX_SECONDS,
    non_negative_int,
    number_in,
    port_number,
    positive_int,
    positive_seconds,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2", 2.0),
        ("0.5", 0.5),
        ("250ms", 0.25),
        ("10s", 10.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        (" 3 ", 3.0),
        ("1e-3", 0.001),
        (str(MAX_SECONDS), MAX_SECONDS),
    ],
)
def test_positive_seconds_accepts_numbers_and_durations(text: str, seconds: float) -> None:
    assert positive_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", "abc", "0", "0s", "-1", "-1s", "inf", "-inf", "nan", "NaN", "1e400", "10x", "999h"],
)
def test_positive_seconds_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as info:
        positive_seconds(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("text", "value"), [("1", 1), ("7", 7), (" 12 ", 12)])
def test_positive_int(text: str, value: int) -> None:
    assert positive_int(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "abc", "", "inf", "nan", "1e3"])
def test_positive_int_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=">= 1"):
        positive_int(text)


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("1", 1), ("123456789", 123456789)])
def test_non_negative_int(text: str, value: int) -> None:
    assert non_negative_int(text) == value


@pytest.mark.parametrize("text", ["-1", "-0.5", "0.5", "abc", "", "nan"])
def test_non_negative_int_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=">= 0"):
        non_negative_int(text)


@pytest.mark.parametrize(("text", "value"), [("1", 1), ("8500", 8500), ("65535", 65535)])
def test_port_number(text: str, value: int) -> None:
    assert port_number(text) == value


@pytest.mark.parametrize("text", ["0", "65536", "99999", "-1", "80.0", "http"])
def test_port_number_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"1\.\.65535"):
        port_number(text)


def test_number_in() -> None:
    rate = number_in(1, 1000)
    assert rate("1") == 1.0
    assert rate("1000") == 1000.0
    assert rate("2.5") == 2.5
    for bad in ("0", "0.99", "1000.5", "nan", "inf", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError, match=r"1\.\.1000"):
            rate(bad)
    assert not math.isnan(rate("5"))


def _typed_flags(parser: argparse.ArgumentParser) -> list[tuple[str, object]]:
    """Every (option, type) pair of every subcommand that converts with a type."""
    found: list[tuple[str, object]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _typed_flags(child)
        elif action.type is not None and action.option_strings:
            found.append((f"{parser.prog} {action.option_strings[0]}", action.type))
    return found


def test_no_flag_uses_bare_float_and_only_register_port_uses_bare_int() -> None:
    """Numeric flags go through the shared types (``register --port`` is checked by
    ServiceMetadata, which names the flag in a JSON error like every registration value)."""
    flags = _typed_flags(build_parser())
    assert not [name for name, kind in flags if kind is float], flags
    assert [name for name, kind in flags if kind is int] == ["lake-mesh register --port"]


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["endpoints", "svc", "--timeout", "inf"], "--timeout"),
        (["endpoints", "svc", "--timeout", "nan"], "--timeout"),
        (["watch", "svc", "--count", "0"], "--count"),
        (["watch", "svc", "--timeout", "-1"], "--timeout"),
        (["call", "svc", "/", "--timeout", "nan"], "--timeout"),
        (["explain", "svc", "--discovery-timeout", "0"], "--discovery-timeout"),
        (["status", "--discovery-timeout", "1e400"], "--discovery-timeout"),
        (["config", "watch", "--count", "-1"], "--count"),
        (["config", "set", "global", "f.json", "--cas", "-1"], "--cas"),
        (["config", "delete", "global", "--cas", "x"], "--cas"),
        (["demo", "--duration", "inf"], "--duration"),
        (["demo", "--rate", "0"], "--rate"),
        (["agent", "up", "--port", "70000"], "--port"),
    ],
)
def test_bad_numbers_are_usage_errors_before_anything_runs(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: expected" in err
    assert "Traceback" not in err


def test_durations_are_accepted_in_consul_form() -> None:
    args = build_parser().parse_args(["endpoints", "svc", "--timeout", "1m30s"])
    assert args.timeout == 90.0
    args = build_parser().parse_args(["call", "svc", "/", "--timeout", "250ms"])
    assert args.timeout == 0.25
    assert build_parser().parse_args(["config", "watch", "--count", "0"]).count == 0

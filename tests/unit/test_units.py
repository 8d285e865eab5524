"""Durations and sizes as written in policies."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerules.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30.0),
        (0, 0.0),
        (2.5, 2.5),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("1d2h3m4s5ms", 93784.005),
        ("1h 30m", 5400.0),
        (" 10s ", 10.0),
        ("0s", 0.0),
        ("30", 30.0),
        ("0.5", 0.5),
        (".5s", 0.5),
    ],
)
def test_parse_duration(value: str | int | float, seconds: float) -> None:
    result = parse_duration(value)
    assert isinstance(result, float)
    assert result == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "abc",
        "5x",
        "s",
        "ms",
        "1.5.5s",
        "-5s",
        -1,
        -0.5,
        "1h1h",
        "30m1h",
        "5sec",
        "1 h 2",
        "5M",
        "1e3s",
        float("inf"),
        float("nan"),
        True,
        None,
        [1],
    ],
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError) as exc:
        parse_duration(value)  # type: ignore[arg-type]
    assert "250ms, 30s, 5m, 1h, 7d" in str(exc.value)  # says what is accepted


def test_negative_duration_says_so() -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_duration("-1s")
    with pytest.raises(ValueError, match="largest to smallest"):
        parse_duration("1s1h")


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (1234, 1234),
        ("100B", 100),
        ("100", 100),
        ("512KB", 512_000),
        ("512KiB", 524_288),
        ("10MB", 10_000_000),
        ("1MiB", 1_048_576),
        ("2GB", 2_000_000_000),
        ("1GiB", 1_073_741_824),
        ("1TB", 10**12),
        ("1TiB", 2**40),
        ("1mib", 1_048_576),
        ("1MIB", 1_048_576),
        ("10mb", 10_000_000),
        ("1.5KiB", 1536),
        ("2.5MB", 2_500_000),
        (" 8 KiB ", 8192),
        ("4b", 4),
    ],
)
def test_parse_size(value: str | int, size: int) -> None:
    result = parse_size(value)
    assert isinstance(result, int) and result == size


@pytest.mark.parametrize(
    "value", ["", "MB", "10XB", "10K", "1.5B", "0.0001KB", "-1MB", -1, "1,5MB", "1e3", 1.5, True, None]
)
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ValueError) as exc:
        parse_size(value)  # type: ignore[arg-type]
    assert "512KiB" in str(exc.value)  # says what is accepted


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.25, "250ms"),
        (1.5, "1.5s"),
        (30, "30s"),
        (90, "1m30s"),
        (3600, "1h"),
        (5400, "1h30m"),
        (604800, "7d"),
        (61.5, "1m1.5s"),
        (176401, "2d1h1s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (100, "100B"),
        (1536, "1536B"),
        (1024, "1KiB"),
        (1000, "1KB"),
        (1_048_576, "1MiB"),
        (10_000_000, "10MB"),
        (5 * 2**30, "5GiB"),
        (2 * 10**12, "2TB"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text) == size


def test_format_rejects_negative() -> None:
    with pytest.raises(ValueError):
        format_duration(-1)
    with pytest.raises(ValueError):
        format_size(-1)


@given(st.integers(min_value=0, max_value=10**7))
def test_duration_round_trip_in_milliseconds(ms: int) -> None:
    assert parse_duration(format_duration(ms / 1000)) == pytest.approx(ms / 1000)


@given(st.integers(min_value=0, max_value=2**50))
def test_size_round_trip(n: int) -> None:
    assert parse_size(format_size(n)) == n

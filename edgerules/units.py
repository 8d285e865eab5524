"""Durations (``250ms``, ``30s``, ``1h30m``) and sizes (``512KiB``, ``10MB``) as written in policies."""

from __future__ import annotations

import math
import re
from fractions import Fraction

_DURATION_UNITS: dict[str, int | Fraction] = {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": Fraction(1, 1000)}
_DURATION_ORDER = ["d", "h", "m", "s", "ms"]
_DURATION_PART = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*(ms|d|h|m|s)")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+")
DURATION_HELP = (
    "a number of seconds or a string such as 250ms, 30s, 5m, 1h, 7d, 1h30m or 1.5s "
    "(units d, h, m, s, ms from largest to smallest)"
)

_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*([a-zA-Z]*)\s*")
SIZE_HELP = (
    "a number of bytes or a string such as 100B, 512KB, 512KiB, 10MB, 1MiB, 2GB or 1GiB "
    "(KB/MB/GB/TB = 1000^n, KiB/MiB/GiB/TiB = 1024^n)"
)


def parse_duration(value: str | int | float) -> float:
    """Seconds as a float; ``ValueError`` (saying what is accepted) for negative or malformed values."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; expected {DURATION_HELP}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{value!r} is not a valid duration; expected {DURATION_HELP}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration; expected {DURATION_HELP}")
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"{value!r}: a duration cannot be negative; expected {DURATION_HELP}")
    if _NUMBER.fullmatch(text):
        return float(text)
    total = Fraction(0)
    pos = 0
    last_rank = -1
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            raise ValueError(f"{value!r} is not a valid duration; expected {DURATION_HELP}")
        number, unit = m.groups()
        rank = _DURATION_ORDER.index(unit)
        if rank <= last_rank:
            raise ValueError(
                f"{value!r}: units must go from largest to smallest, each once; expected {DURATION_HELP}"
            )
        last_rank = rank
        total += Fraction(number) * _DURATION_UNITS[unit]
        pos = m.end()
    if last_rank < 0:
        raise ValueError(f"{value!r} is not a valid duration; expected {DURATION_HELP}")
    return float(total)


def parse_size(value: str | int) -> int:
    """Bytes as an int; ``ValueError`` (saying what is accepted) for negative, fractional or bad values."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size; expected {SIZE_HELP}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is not a valid size; expected {SIZE_HELP}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a size; expected {SIZE_HELP}")
    if value.strip().startswith("-"):
        raise ValueError(f"{value!r}: a size cannot be negative; expected {SIZE_HELP}")
    m = _SIZE.fullmatch(value)
    if m is None:
        raise ValueError(f"{value!r} is not a valid size; expected {SIZE_HELP}")
    number, unit = m.groups()
    multiplier = _SIZE_UNITS.get(unit.lower() or "b")
    if multiplier is None:
        raise ValueError(f"{value!r}: unknown size unit {unit!r}; expected {SIZE_HELP}")
    size = Fraction(number) * multiplier
    if size.denominator != 1:
        raise ValueError(f"{value!r} is not a whole number of bytes; expected {SIZE_HELP}")
    return int(size)


def format_duration(seconds: float) -> str:
    """Compact form ``parse_duration`` reads back: 0.25 -> ``250ms``, 5400 -> ``1h30m``, 1.5 -> ``1.5s``."""
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"{seconds!r} is not a valid duration")
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    parts = []
    for unit in ("d", "h", "m"):
        unit_ms = int(_DURATION_UNITS[unit] * 1000)
        count, ms = divmod(ms, unit_ms)
        if count:
            parts.append(f"{count}{unit}")
    if ms:
        parts.append(f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms / 1000:g}s")
    return "".join(parts)


def format_size(n: int) -> str:
    """Exact, readable form: 1048576 -> ``1MiB``, 10000000 -> ``10MB``, 1500 -> ``1500B``."""
    if n < 0:
        raise ValueError(f"{n!r} is not a valid size")
    if n == 0:
        return "0B"
    best = "B"
    best_mult = 1
    for unit, mult in _SIZE_UNITS.items():
        if n % mult == 0 and mult > best_mult:
            best, best_mult = unit, mult
    name = best.upper().replace("I", "i") if best != "b" else "B"
    return f"{n // best_mult}{name}"


# Units people write that the parsers do not take, mapped to the ones they do.
_DURATION_ALIASES = {
    "sec": "s", "secs": "s", "second": "s", "seconds": "s", "min": "m", "mins": "m", "minute": "m",
    "minutes": "m", "hr": "h", "hrs": "h", "hour": "h", "hours": "h", "day": "d", "days": "d",
    "msec": "ms", "msecs": "ms", "millis": "ms", "millisecond": "ms", "milliseconds": "ms",
}  # fmt: skip
_SIZE_ALIASES = {
    "k": "KiB", "m": "MiB", "g": "GiB", "t": "TiB", "byte": "B", "bytes": "B", "kilobytes": "KB",
    "megabytes": "MB", "gigabytes": "GB", "kibibytes": "KiB", "mebibytes": "MiB", "gibibytes": "GiB",
}  # fmt: skip
_NUMBER_UNIT = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*([A-Za-z]+)\s*")


def suggest_duration(value: object) -> str | None:
    """A duration `parse_duration` accepts for a near miss: `5 min` -> `5m`, `1hr` -> `1h`, `2 weeks` -> `14d`."""
    if not isinstance(value, str):
        return None
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*([A-Za-z]+)", value)
    if not parts or re.sub(r"[0-9.\sA-Za-z,]|and", "", value):
        return None
    out = []
    for number, unit in parts:
        low = unit.lower()
        if low in ("w", "wk", "wks", "week", "weeks"):
            days = float(number) * 7
            number, low = (f"{days:g}", "d")
        unit = _DURATION_ALIASES.get(low, low)
        if unit not in _DURATION_UNITS:
            return None
        out.append(f"{number}{unit}")
    text = "".join(out)
    try:
        parse_duration(text)
    except ValueError:
        return None
    return text if text != value else None


def suggest_size(value: object) -> str | None:
    """A size `parse_size` accepts for a near miss: `10M` -> `10MiB`, `512 kilobytes` -> `512KB`."""
    if not isinstance(value, str):
        return None
    m = _NUMBER_UNIT.fullmatch(value)
    if m is None:
        return None
    number, unit = m.groups()
    fixed = _SIZE_ALIASES.get(unit.lower())
    if fixed is None:
        return None
    text = f"{number}{fixed}"
    try:
        parse_size(text)
    except ValueError:
        return None
    return text


# HTTP methods (RFC 9110 section 9): case-sensitive tokens. The standard ones, and any other token (M-SEARCH,
# PROPFIND) as long as it is not a near-miss of a standard one, which in a policy is a typo (`GETT`, `post`).
STANDARD_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def suggest_method(value: str) -> str | None:
    """The standard method ``value`` looks like a typo of, or None."""
    if value in STANDARD_METHODS:
        return None
    if value.upper() in STANDARD_METHODS:
        return value.upper()
    import difflib

    close = difflib.get_close_matches(value.upper(), STANDARD_METHODS, n=1, cutoff=0.75)
    return close[0] if close else None


def check_method(value: str) -> str:
    """``value`` if it is a method a policy may name; ValueError otherwise."""
    if value in STANDARD_METHODS:
        return value
    if not _TOKEN.fullmatch(value):
        raise ValueError("a method is a token: letters, digits and !#$%&'*+-.^_`|~")
    guess = suggest_method(value)
    if guess is not None:
        raise ValueError(f"a near-miss of the standard method {guess}")
    return value

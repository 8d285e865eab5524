"""`2026-01-31T12:00:00.123Z` timestamps, built per request (identity and cache headers), so built cheaply.

Same text as ``datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")`` with ``Z`` for ``+00:00``
(microseconds rounded half-even, then truncated to milliseconds), without a datetime per call: the
``YYYY-MM-DDTHH:MM:SS`` part is formatted once per second.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

_last: tuple[int, str] = (-1, "")


def utc_iso_millis(when: float) -> str:
    global _last
    if not 0 <= when < 253402300800:  # before 1970 or after 9999: the general (slow) path
        return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    seconds = int(when)
    micros = round((when - seconds) * 1e6)  # exact subtraction; half-even like datetime
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    cached_seconds, prefix = _last
    if cached_seconds != seconds:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _last = (seconds, prefix)
    return f"{prefix}.{micros // 1000:03d}Z"

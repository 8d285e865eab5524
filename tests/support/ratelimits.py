"""What every answer of a rate-limited burst must carry, wherever the burst was sent."""

from __future__ import annotations

import math
from collections.abc import Iterable

from .proxy import Response


def assert_one_budget(responses: Iterable[Response], limit: int) -> None:
    """Every answer has the RateLimit headers; each refusal is the 429 JSON with Retry-After matching the
    reset; and the allowed answers handed out each remaining count exactly once (one counter, no lost
    updates), whichever instance answered."""
    responses = list(responses)
    for response in responses:
        assert response.headers["RateLimit-Limit"] == str(limit)
        assert 0 < int(response.headers["RateLimit-Reset"]) <= 3600
        if response.status == 429:
            assert response.json() == {"error": "Rate limit exceeded"}
            assert response.headers["RateLimit-Remaining"] == "0"
            retry_after = int(response.headers["Retry-After"])
            assert 1 <= retry_after <= 3600
            assert math.isclose(retry_after, int(response.headers["RateLimit-Reset"]), abs_tol=1)
    remaining = sorted(int(r.headers["RateLimit-Remaining"]) for r in responses if r.status == 200)
    assert remaining == list(range(limit))

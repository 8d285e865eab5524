"""Fixed-window rate limits on a Store: one atomic increment per request.

Reading the counter, comparing, then writing it back lets concurrent requests all read the same value and all
pass. Here each request does a single `store.incr` (atomic in
every backend), the value it returns decides, and refusals carry 429 data (Retry-After).

Windows are aligned to `floor(now / window)`, so all instances sharing a store agree on them. A fixed window
allows up to 2x `limit` across a window boundary; that is the accepted trade-off for one round trip.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgerules.policy.model import RateLimitRule
from edgerules.stores.base import Store


@dataclass(frozen=True, slots=True)
class RateLimitResult:
    allowed: bool
    limit: int
    remaining: int
    reset_after: float  # seconds until the current window ends
    retry_after: int  # whole seconds to wait when refused (>= 1), 0 when allowed


def subject_hash(subject: str) -> str:
    """Store keys never contain raw credentials: the subject (key, principal, IP) is hashed."""
    return hashlib.sha256(subject.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class RateLimiter:
    def __init__(self, store: Store, now: Callable[[], float] = time.time, prefix: str = "rl:") -> None:
        self.store = store
        self._now = now
        self.prefix = prefix

    def counter_key(self, rule_name: str, subject: str, window: float, now: float) -> str:
        return f"{self.prefix}{rule_name}:{subject_hash(subject)}:{window:g}:{math.floor(now / window)}"

    async def hit(self, rule_name: str, subject: str, limit: int, window: float) -> RateLimitResult:
        """Count one request for `subject` under `rule_name`. StoreUnavailable propagates (fail closed)."""
        if limit < 0 or window <= 0:
            raise ValueError("limit must be >= 0 and window > 0")
        now = self._now()
        index = math.floor(now / window)
        key = self.counter_key(rule_name, subject, window, now)
        # The TTL outlives the window by a second so a slow request cannot recreate a fresh counter.
        count = await self.store.incr(key, 1, ttl=window + 1)
        reset_after = max(0.0, (index + 1) * window - now)
        allowed = count <= limit
        return RateLimitResult(
            allowed=allowed,
            limit=limit,
            remaining=max(0, limit - count),
            reset_after=reset_after,
            retry_after=0 if allowed else max(1, math.ceil(reset_after)),
        )

    async def check(self, rule: RateLimitRule, subject: str) -> RateLimitResult:
        return await self.hit(rule.name, subject, rule.limit, rule.window)

    @staticmethod
    def headers(result: RateLimitResult) -> list[tuple[str, str]]:
        return headers(result)


def headers(result: RateLimitResult) -> list[tuple[str, str]]:
    """RateLimit-* headers (draft-ietf-httpapi-ratelimit-headers) plus Retry-After when refused."""
    out = [
        ("RateLimit-Limit", str(result.limit)),
        ("RateLimit-Remaining", str(result.remaining)),
        ("RateLimit-Reset", str(max(0, math.ceil(result.reset_after)))),
    ]
    if not result.allowed:
        out.append(("Retry-After", str(result.retry_after)))
    return out

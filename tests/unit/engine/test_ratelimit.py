"""Fixed-window rate limits: atomic under concurrency, window rollover, headers, fail closed."""

from __future__ import annotations

import asyncio

import pytest

from edgerules.engine.ratelimit import RateLimiter, RateLimitResult, headers
from edgerules.stores.base import StoreUnavailable
from edgerules.stores.memory import MemoryStore


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class YieldingStore(MemoryStore):
    """Yields to the loop before each increment so concurrent hits really interleave."""

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        await asyncio.sleep(0)
        return await super().incr(key, amount, ttl)


def test_concurrent_hits_exactly_limit_allowed() -> None:
    clock = Clock(1000.0)
    limiter = RateLimiter(YieldingStore(now=clock), now=clock)

    async def scenario() -> list[RateLimitResult]:
        return await asyncio.gather(*(limiter.hit("per-key", "er_secret", 5, 60) for _ in range(50)))

    results = asyncio.run(scenario())
    allowed = [r for r in results if r.allowed]
    refused = [r for r in results if not r.allowed]
    assert len(allowed) == 5 and len(refused) == 45
    assert all(r.retry_after >= 1 for r in refused)
    assert sorted(r.remaining for r in allowed) == [0, 1, 2, 3, 4]
    assert all(r.remaining == 0 for r in refused)


def test_window_rollover_and_reset() -> None:
    clock = Clock(960_000.0)  # a multiple of 60: window start
    store = MemoryStore(now=clock)
    limiter = RateLimiter(store, now=clock)

    async def scenario() -> None:
        clock.t += 50
        first = await limiter.hit("r", "1.2.3.4", 2, 60)
        assert first.allowed and first.remaining == 1 and first.reset_after == pytest.approx(10)
        assert (await limiter.hit("r", "1.2.3.4", 2, 60)).allowed
        refused = await limiter.hit("r", "1.2.3.4", 2, 60)
        assert not refused.allowed and refused.retry_after == 10
        assert (await limiter.hit("r", "5.6.7.8", 2, 60)).allowed  # other subject, own counter
        assert (await limiter.hit("other-rule", "1.2.3.4", 2, 60)).allowed  # other rule, own counter
        clock.t += 10  # next window
        again = await limiter.hit("r", "1.2.3.4", 2, 60)
        assert again.allowed and again.remaining == 1 and again.reset_after == pytest.approx(60)

    asyncio.run(scenario())


def test_retry_after_rounds_up_and_is_at_least_one() -> None:
    clock = Clock(119.7)
    limiter = RateLimiter(MemoryStore(now=clock), now=clock)
    r = asyncio.run(limiter.hit("r", "s", 0, 60))
    assert not r.allowed and r.retry_after == 1 and r.reset_after == pytest.approx(0.3)


def test_store_key_hashes_subject_and_sets_ttl() -> None:
    clock = Clock(600.0)
    store = MemoryStore(now=clock)
    limiter = RateLimiter(store, now=clock)
    asyncio.run(limiter.hit("per-key", "er_supersecretkey", 3, 60))
    names = asyncio.run(store.keys(""))
    assert len(names) == 1 and "er_supersecretkey" not in names[0] and names[0].startswith("rl:per-key:")
    clock.t += 61.5  # ttl = window + 1: the counter is gone
    assert asyncio.run(store.keys("")) == []


def test_headers() -> None:
    ok = RateLimitResult(allowed=True, limit=10, remaining=7, reset_after=12.2, retry_after=0)
    assert headers(ok) == [("RateLimit-Limit", "10"), ("RateLimit-Remaining", "7"), ("RateLimit-Reset", "13")]
    no = RateLimitResult(allowed=False, limit=10, remaining=0, reset_after=4.0, retry_after=4)
    assert ("Retry-After", "4") in headers(no)
    assert RateLimiter.headers(no) == headers(no)


class DownStore(MemoryStore):
    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        raise StoreUnavailable("redis gone")


def test_store_unavailable_propagates() -> None:
    with pytest.raises(StoreUnavailable):
        asyncio.run(RateLimiter(DownStore()).hit("r", "s", 5, 60))

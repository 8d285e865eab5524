"""Issue #16 without a proxy: rate-limited warnings and the policy watcher."""

from __future__ import annotations

import asyncio
import logging

from edgerules.runtime import EdgeRuntime
from tests.support.policies import ENV, write_policy


def _runtime(tmp_path) -> EdgeRuntime:
    path = write_policy(tmp_path, {"us-east-1": 9101, "us-west-2": 9102, "eu-west-1": 9103})
    runtime = EdgeRuntime(str(path), "e2e", environ=ENV)
    runtime.load_initial()
    return runtime


def test_repeated_store_failures_log_one_line_per_interval_with_a_count(tmp_path, caplog):
    runtime = _runtime(tmp_path)

    async def failing() -> None:
        raise OSError(28, "No space left on device")

    async def main() -> None:
        for _ in range(500):
            runtime._background(failing())
        await asyncio.sleep(0.05)
        await asyncio.gather(*list(runtime._pending), return_exceptions=True)
        await asyncio.sleep(0)

    with caplog.at_level(logging.WARNING, logger="edgerules"):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "background store task failed" in r.getMessage()]
    assert len(lines) == 1, lines[:5]
    assert "No space left on device" in lines[0]
    # the next line (after the interval) says how many were not logged
    runtime._store_warnings.interval = 0.0
    with caplog.at_level(logging.WARNING, logger="edgerules"):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "background store task failed" in r.getMessage()]
    assert len(lines) >= 2
    assert "499 more" in lines[1], lines[1]


def test_cache_store_failures_on_every_request_log_once_per_interval(caplog):
    from edgerules import cache as cache_module
    from edgerules.cache import ResponseCache
    from edgerules.httpcache import CacheRule
    from edgerules.stores.memory import MemoryStore

    class FullDisk(MemoryStore):
        async def set(self, key, value, ttl=None, tags=()):
            raise OSError(28, "No space left on device")

    cache = ResponseCache(FullDisk())
    rule = CacheRule(name="agents", source="rules.yaml:12", ttl=300)
    cache_module._store_failed._last = float("-inf")
    cache_module._store_failed.suppressed = 0

    async def main() -> None:
        for i in range(200):
            stored = await cache.store(
                rule, f"k{i}", f"/a/{i}", "GET", [], 200, [("Content-Type", "application/json")], b"{}", 0, 0
            )
            assert stored is False

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "cache store failed" in r.getMessage()]
    assert len(lines) == 1, lines[:3]
    assert cache_module._store_failed.suppressed == 199

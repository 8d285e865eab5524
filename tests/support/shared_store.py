"""Reading and writing the store a test policy's proxies share (Redis in the multi-instance tests), from the test
process, through the same `Store` classes the proxies use; plus the waits such tests need.

Every helper opens the store for one call and closes it again (``asyncio.run``), so tests stay synchronous.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgerules.auth.apikeys import ApiKeyStore
from edgerules.observe.metrics import HOUR, HourRollup, read_rollups
from edgerules.policy.load import load_policy_file
from edgerules.stores import open_store
from edgerules.stores.base import Store

from .origins import Origins, start_origins
from .policies import ENV, write_policy
from .proxy import Proxy
from .redis_server import RedisServer, require_redis_server


def with_store[T](
    policy: str | Path, use: Callable[[Store], Coroutine[Any, Any, T]], environ: Mapping[str, str] = ENV
) -> T:
    """Run ``use(store)`` against the store of ``policy``'s `e2e` environment and close the store."""
    settings = load_policy_file(str(policy), "e2e", environ=environ).policy.store

    async def go() -> T:
        store = open_store(settings)
        try:
            return await use(store)
        finally:
            await store.close()

    return asyncio.run(go())


def add_api_key(
    policy: str | Path,
    user: str,
    role: str = "service",
    permissions: Sequence[str] = (),
    *,
    rate_limit: tuple[int, float] | None = None,
    environ: Mapping[str, str] = ENV,
) -> str:
    """A new API key (the secret, shown once) with ``ApiKeyStore`` on the proxies' store;
    ``rate_limit=(limit, window_seconds)`` is the key's own limit."""

    async def add(store: Store) -> str:
        key, _record = await ApiKeyStore(store).add(user, role, permissions, rate_limit=rate_limit)
        return key

    return with_store(policy, add, environ)


def store_keys(policy: str | Path, prefix: str, environ: Mapping[str, str] = ENV) -> set[str]:
    """The store's keys under ``prefix`` (without the store's own prefix), e.g. ``"cache:"``."""

    async def keys(store: Store) -> set[str]:
        return set(await store.keys(prefix))

    return with_store(policy, keys, environ)


def rollup_totals(
    policy: str | Path, since: float, until: float, environ: Mapping[str, str] = ENV
) -> HourRollup:
    """The metrics rollups of the hours holding ``since``..``until``, as every instance flushed them, combined."""

    async def read(store: Store) -> HourRollup:
        return HourRollup.combine(await read_rollups(store, since, until))

    return with_store(policy, read, environ)


def recent_rollup(policy: str | Path, environ: Mapping[str, str] = ENV) -> HourRollup:
    """The current and the previous hour's rollups combined (a test may straddle an hour boundary)."""
    now = time.time()
    return rollup_totals(policy, now - HOUR, now, environ)


def poll_until[T](
    read: Callable[[], T], done: Callable[[T], bool], timeout: float, interval: float = 0.05
) -> T:
    """Call ``read`` until ``done(value)`` or ``timeout`` seconds pass; the last value (check it yourself)."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value) or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def away_from_window_edge(window: float, margin: float = 3.0) -> None:
    """Fixed windows are aligned to the clock: start a burst where it cannot straddle two windows."""
    left = window - time.time() % window
    if left < margin:
        time.sleep(left + 0.05)


@contextmanager
def redis_edges(
    directory: Path,
    regions: Sequence[str],
    prefix: str,
    start: Callable[[Path], Proxy],
    count: int,
    overlay: Mapping[str, Any] | None = None,
) -> Iterator[tuple[Origins, RedisServer, Path, list[Proxy]]]:
    """``count`` proxies (``start(policy)`` each) sharing one real redis-server, in front of one origin per
    region: (origins, redis, policy, proxies), all stopped on exit. The store timeout is 2 s, not 250 ms: a
    burst on a CPU-starved CI box can stall a proxy's event loop that long, and Redis would count as down."""
    require_redis_server()
    origins = start_origins(list(regions))
    redis = RedisServer()
    proxies: list[Proxy] = []
    try:
        redis.start()
        store = {"backend": "redis", "url": redis.url, "prefix": prefix, "timeout": "2s"}
        policy = write_policy(
            directory, {name: o.port for name, o in origins.items()}, {**(overlay or {}), "store": store}
        )
        # Started from this thread: a child started from a worker thread would die with it (PDEATHSIG).
        proxies.extend(start(policy) for _ in range(count))
        yield origins, redis, policy, proxies
    finally:
        for proxy in proxies:
            proxy.stop()
        redis.stop()
        origins.stop_all()

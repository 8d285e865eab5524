"""Key-value state for the cache, API keys, rate limits and metrics (see ``base.Store``)."""

from __future__ import annotations

from .base import Store, StoreConfig, StoreHealth, StoreUnavailable


def open_store(config: StoreConfig) -> Store:
    """Build the configured backend. Nothing is touched yet: failures surface on the first call."""
    if config.backend == "memory":
        from .memory import MemoryStore

        return MemoryStore()
    if config.backend == "diskcache":
        from .disk import DiskStore

        return DiskStore(config.path, config.size_limit, config.prefix)
    if config.backend == "redis":
        from .redis import RedisStore

        return RedisStore(config.url, config.prefix, config.timeout)
    raise ValueError(f"unknown store backend {config.backend!r}")


__all__ = ["Store", "StoreConfig", "StoreHealth", "StoreUnavailable", "open_store"]

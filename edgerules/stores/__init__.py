"""Key-value state for the cache, API keys, rate limits and metrics (see ``base.Store``)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

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

        return RedisStore(config.url, config.prefix, config.timeout, cluster=config.cluster)
    raise ValueError(f"unknown store backend {config.backend!r}")


def describe_store(config: StoreConfig) -> str:
    """Which store this is, for humans (`store: diskcache /srv/edge/.edgerules-state (prefix 'edgerules:')`);
    a password in a Redis URL is never shown."""
    if config.backend == "diskcache":
        where = os.path.abspath(config.path)
    elif config.backend == "redis":
        where = redact_url(config.url) + (" (cluster)" if config.cluster else "")
    else:
        where = "(in this process only)"
    return f"{config.backend} {where} (prefix {config.prefix!r})"


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


__all__ = [
    "Store",
    "StoreConfig",
    "StoreHealth",
    "StoreUnavailable",
    "describe_store",
    "open_store",
    "redact_url",
]

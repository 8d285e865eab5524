"""The Store interface: async key-value state with TTLs, atomic counters and tags.

Shared by the response cache, API keys, rate limits and metrics. Every method is ``async`` and never blocks
the event loop; a backend failure (disk, network, timeout) raises :class:`StoreUnavailable` so callers can
decide to fail open or closed.

Conventions every backend follows:

- ``get``/``set`` hold ``bytes``; ``incr`` keys hold integers (``get`` on one returns the decimal digits,
  as Redis does); ``hincr`` keys hold float hashes. A key is used for one kind only.
- ``ttl`` is in seconds (fractions allowed); ``None`` means no expiry. ``incr``/``hincr`` apply ``ttl`` only
  when they create the key (fixed windows: later increments never extend it).
- ``keys``/``purge_prefix`` take a prefix of the caller's keys (the store's own namespace prefix is
  invisible to callers).
- Keys starting with ``tag:`` are reserved (the Redis backend keeps its tag sets there); every backend refuses
  to write them, so code tested on the memory store behaves the same on Redis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from edgerules.kinds import EdgeRulesError
from edgerules.policy.model import (
    StoreConfig as StoreConfig,  # re-exported: the store settings live in the model
)

RESERVED_PREFIX = "tag:"


def writable_key(key: str) -> str:
    """Return ``key``, or raise ``ValueError`` if it lies in the reserved ``tag:`` space."""
    if key.startswith(RESERVED_PREFIX):
        raise ValueError(f"store keys starting with {RESERVED_PREFIX!r} are reserved: {key!r}")
    return key


class StoreUnavailable(EdgeRulesError):
    """The backend cannot serve the call (disk error, connection lost, timeout)."""


@dataclass(frozen=True, slots=True)
class StoreHealth:
    ok: bool
    detail: str


@runtime_checkable
class Store(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(
        self, key: str, value: bytes, ttl: float | None = None, tags: Sequence[str] = ()
    ) -> None: ...

    async def delete(self, key: str) -> bool: ...

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Atomically add ``amount``; ``ttl`` is applied only when the key is created."""
        ...

    async def hincr(self, key: str, fields: Mapping[str, float], ttl: float | None = None) -> None:
        """Atomically add to each field of a hash; ``ttl`` is applied only when the hash is created."""
        ...

    async def hgetall(self, key: str) -> dict[str, float]: ...

    async def keys(self, prefix: str) -> list[str]: ...

    async def purge_prefix(self, prefix: str) -> int: ...

    async def purge_tag(self, tag: str) -> int: ...

    async def health(self) -> StoreHealth: ...

    async def close(self) -> None: ...

"""In-process store for unit tests and ``edgerules explain/test``.

Single event loop, no awaits inside an operation: every method is atomic by construction. Expiry is lazy
(checked on access) against an injectable clock, so tests can move time without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .base import StoreHealth, writable_key

type _Value = bytes | int | dict[str, float]


@dataclass(slots=True)
class _Entry:
    value: _Value
    expires: float | None
    tags: frozenset[str] = field(default_factory=frozenset)


class MemoryStore:
    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._data: dict[str, _Entry] = {}

    def _live(self, key: str) -> _Entry | None:
        entry = self._data.get(key)
        if entry is not None and entry.expires is not None and entry.expires <= self._now():
            del self._data[key]
            return None
        return entry

    def _expiry(self, ttl: float | None) -> float | None:
        return None if ttl is None else self._now() + ttl

    async def get(self, key: str) -> bytes | None:
        entry = self._live(key)
        if entry is None:
            return None
        if isinstance(entry.value, dict):
            raise TypeError(f"key {key!r} holds a hash; use hgetall")
        return str(entry.value).encode() if isinstance(entry.value, int) else entry.value

    async def set(self, key: str, value: bytes, ttl: float | None = None, tags: Sequence[str] = ()) -> None:
        self._data[writable_key(key)] = _Entry(bytes(value), self._expiry(ttl), frozenset(tags))

    async def delete(self, key: str) -> bool:
        if self._live(key) is None:
            return False
        del self._data[key]
        return True

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        entry = self._live(writable_key(key))
        if entry is None:
            self._data[key] = _Entry(amount, self._expiry(ttl))
            return amount
        if not isinstance(entry.value, int):
            raise TypeError(f"key {key!r} does not hold a counter")
        entry.value += amount
        return entry.value

    async def hincr(self, key: str, fields: Mapping[str, float], ttl: float | None = None) -> None:
        entry = self._live(writable_key(key))
        if entry is None:
            entry = self._data[key] = _Entry({}, self._expiry(ttl))
        if not isinstance(entry.value, dict):
            raise TypeError(f"key {key!r} does not hold a hash")
        for name, amount in fields.items():
            entry.value[name] = entry.value.get(name, 0.0) + float(amount)

    async def hgetall(self, key: str) -> dict[str, float]:
        entry = self._live(key)
        if entry is None:
            return {}
        if not isinstance(entry.value, dict):
            raise TypeError(f"key {key!r} does not hold a hash")
        return dict(entry.value)

    async def keys(self, prefix: str) -> list[str]:
        return sorted(k for k in list(self._data) if k.startswith(prefix) and self._live(k) is not None)

    async def purge_prefix(self, prefix: str) -> int:
        doomed = await self.keys(prefix)
        for key in doomed:
            del self._data[key]
        return len(doomed)

    async def purge_tag(self, tag: str) -> int:
        doomed = [k for k in list(self._data) if self._live(k) is not None and tag in self._data[k].tags]
        for key in doomed:
            del self._data[key]
        return len(doomed)

    async def health(self) -> StoreHealth:
        return StoreHealth(True, f"memory: {len(self._data)} keys")

    async def close(self) -> None:
        self._data.clear()

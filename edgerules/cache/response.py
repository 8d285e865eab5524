"""The response cache: :mod:`edgerules.cache.http` rules on top of a :class:`~edgerules.stores.base.Store`.

Layout in the store (all keys start with ``cache:``):

- ``cache:{sha256}`` (from :func:`~edgerules.cache.http.cache_key`) holds the entry itself, or - when the
  response had ``Vary`` - a small :class:`~edgerules.cache.http.VariantIndex` naming the Vary fields;
- ``cache:{sha256}:v:{sha256 of the request's Vary values}`` holds each variant.

Every record carries hashed tags for its path-segment prefixes and its exact path, so purge by path prefix
and invalidation after unsafe methods are ``purge_tag`` calls.

On the request path nothing raises: a store failure (or a corrupt record) turns into BYPASS / "not stored"
and a log line. ``purge`` is an operator action and lets :class:`StoreUnavailable` through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from edgerules.cache import http as hc
from edgerules.cache.http import CacheEntry, CacheRule, Freshness, HeaderInput, VariantIndex
from edgerules.observe.lograte import RateLimitedWarning
from edgerules.stores.base import Store

log = logging.getLogger(__name__)

# A store that is down (or a full disk) fails these on every request: one line a minute each, with a count.
_lookup_failed = RateLimitedWarning(log)
_store_failed = RateLimitedWarning(log)
_refresh_failed = RateLimitedWarning(log)
_invalidation_failed = RateLimitedWarning(log)


class CacheStatus(StrEnum):
    HIT = "HIT"  # fresh entry served
    MISS = "MISS"  # nothing usable stored
    BYPASS = "BYPASS"  # cache not consulted (rule/method) or the store is down
    EXPIRED = "EXPIRED"  # entry present but must go to the origin (possibly conditionally)
    STALE = "STALE"  # stale entry served (stale-while-revalidate, or stale-if-error after an origin failure)
    REVALIDATED = "REVALIDATED"  # origin answered 304 and the entry was freshened


_STATE_STATUS = {
    Freshness.FRESH: CacheStatus.HIT,
    Freshness.STALE_WHILE_REVALIDATE: CacheStatus.STALE,
    Freshness.STALE_IF_ERROR: CacheStatus.EXPIRED,
    Freshness.MUST_REVALIDATE: CacheStatus.EXPIRED,
    Freshness.EXPIRED: CacheStatus.EXPIRED,
}


@dataclass(frozen=True, slots=True)
class Lookup:
    status: CacheStatus
    reason: str = ""
    entry: CacheEntry | None = None
    state: Freshness | None = None
    key: str = ""  # the store key the entry lives under (the variant key when the response varies)

    @property
    def servable(self) -> bool:
        """Answer from the entry now (HIT, or STALE with a background revalidation)."""
        return self.status in (CacheStatus.HIT, CacheStatus.STALE)


class ResponseCache:
    def __init__(self, store: Store, *, now: Callable[[], float] = time.time) -> None:
        self._store = store
        self._now = now

    async def lookup(self, rule: CacheRule, key: str, method: str, request_headers: HeaderInput) -> Lookup:
        method = method.upper()
        if method not in rule.methods or method not in ("GET", "HEAD"):
            return Lookup(CacheStatus.BYPASS, "method")
        try:
            record, entry_key = await self._read(key, request_headers)
        except Exception as exc:  # the request path must never fail because of the cache
            _lookup_failed.warn("cache lookup failed, bypassing: %s", exc)
            return Lookup(CacheStatus.BYPASS, f"store-unavailable: {exc}")
        if record is None:
            return Lookup(CacheStatus.MISS, "not-stored", key=entry_key)
        if not hc.vary_matches(record, request_headers):
            return Lookup(CacheStatus.MISS, "vary-mismatch", key=entry_key)
        state = hc.classify(rule, record, self._now(), request_headers)
        return Lookup(_STATE_STATUS[state], state.value, record, state, entry_key)

    async def _read(self, key: str, request_headers: HeaderInput) -> tuple[CacheEntry | None, str]:
        record = await self._decode(key, await self._store.get(key))
        if isinstance(record, VariantIndex):
            vkey = hc.variant_key(key, hc.vary_values(record.names, request_headers))
            variant = await self._decode(vkey, await self._store.get(vkey))
            return (variant if isinstance(variant, CacheEntry) else None), vkey
        return record, key

    async def _decode(self, key: str, data: bytes | None) -> CacheEntry | VariantIndex | None:
        if data is None:
            return None
        try:
            return hc.decode_record(data)
        except ValueError as exc:
            log.warning("dropping corrupt cache record %s: %s", key, exc)
            await self._store.delete(key)
            return None

    async def store(
        self,
        rule: CacheRule,
        key: str,
        url_path: str,
        method: str,
        request_headers: HeaderInput,
        status: int,
        response_headers: HeaderInput,
        body: bytes,
        request_time: float,
        response_time: float,
    ) -> bool:
        """Store the response if the rule and RFC 9111 allow it; True when stored."""
        ok, reason = hc.storable(rule, method, request_headers, status, response_headers, len(body))
        if not ok:
            log.debug("not storing %s: %s", url_path, reason)
            return False
        names = hc.vary_names(response_headers)
        entry = CacheEntry(
            status=status,
            # Set-Cookie is stored (and replayed on every hit) only when the rule says so explicitly
            headers=hc.storable_headers(
                response_headers, drop=() if rule.replay_set_cookie else ("set-cookie",)
            ),
            body=bytes(body),
            stored_at=self._now(),
            request_time=request_time,
            response_time=response_time,
            vary=hc.vary_values(names, request_headers),
            rule=rule.name,
            url_path=url_path,
        )
        ttl = hc.storage_ttl(rule, entry)
        if ttl <= 0:
            return False
        path_tags = hc.path_tags(url_path)
        tags = path_tags + hc.cache_tags(response_headers)
        try:
            if names:
                await self._write_index(key, names, ttl, path_tags)  # a label purges variants, not the index
                await self._store.set(hc.variant_key(key, entry.vary), entry.to_bytes(), ttl, tags)
            else:
                await self._store.set(key, entry.to_bytes(), ttl, tags)
        except Exception as exc:
            _store_failed.warn("cache store failed for %s: %s", url_path, exc)
            return False
        return True

    async def _write_index(self, key: str, names: tuple[str, ...], ttl: float, tags: tuple[str, ...]) -> None:
        """The index lives as long as the longest-lived variant written under it."""
        now = self._now()
        expires_at = now + ttl
        existing = await self._decode(key, await self._store.get(key))
        if isinstance(existing, VariantIndex) and existing.names == names:
            expires_at = max(expires_at, existing.expires_at)
        await self._store.set(key, VariantIndex(names, expires_at).to_bytes(), expires_at - now, tags)

    async def revalidated(
        self,
        rule: CacheRule,
        lookup: Lookup,
        response_headers_304: HeaderInput,
        request_time: float,
        response_time: float,
    ) -> CacheEntry | None:
        """Freshen ``lookup.entry`` from the origin's 304 and write it back.

        Returns the entry to serve (status REVALIDATED), or None when the 304 does not match the stored
        entry (the caller refetches without conditions). A failed write still returns the merged entry.
        """
        if lookup.entry is None:
            return None
        merged = hc.merge_304(
            lookup.entry, response_headers_304, request_time=request_time, response_time=response_time
        )
        if merged is None:
            return None
        await self.write_revalidated(rule, lookup, merged)
        return merged

    async def write_revalidated(self, rule: CacheRule, lookup: Lookup, merged: CacheEntry) -> None:
        """Write back an entry a 304 freshened (`httpcache.merge_304`, decided by the engine) under the key
        it was found at; a failed write is logged (the client was answered from the merged entry)."""
        ttl = hc.storage_ttl(rule, merged)
        try:
            if ttl > 0:
                tags = hc.path_tags(merged.url_path) + hc.cache_tags(merged.headers)
                await self._store.set(lookup.key, merged.to_bytes(), ttl, tags)
        except Exception as exc:
            _refresh_failed.warn("cache refresh failed for %s: %s", merged.url_path, exc)

    async def invalidate_url(self, scheme: str, host: str, path: str) -> int:
        """Drop every entry of ``path`` (all queries, principals, variants) after an unsafe request.

        Entries are tagged by path only, so the same path on other hosts is dropped too (over-invalidation
        is safe; ``scheme`` and ``host`` are accepted for the call site's symmetry). Never raises.
        """
        try:
            return await self._store.purge_tag(hc.url_tag(path))
        except Exception as exc:
            _invalidation_failed.warn("cache invalidation failed for %s://%s%s: %s", scheme, host, path, exc)
            return 0

    async def purge(
        self,
        *,
        all: bool = False,
        path_prefix: str | None = None,
        key: str | None = None,
        tags: tuple[str, ...] | list[str] | None = None,
    ) -> int:
        """Operator purge: everything, a path prefix (segment-wise), one key with its variants, or every entry
        the origin labelled with one of ``tags`` (``Cache-Tag``, case-insensitive)."""
        if sum((all, path_prefix is not None, key is not None, tags is not None)) != 1:
            raise ValueError("purge takes exactly one of all=True, path_prefix, key or tags")
        if tags is not None:
            removed = 0
            for label in dict.fromkeys(t.strip().lower() for t in tags):
                if label:
                    removed += await self._store.purge_tag(hc.label_tag(label))
            return removed
        if all:
            return await self._store.purge_prefix(hc.KEY_PREFIX)
        if path_prefix is not None:
            return await self._store.purge_tag(hc.prefix_tag(path_prefix))
        assert key is not None
        if not hc.is_cache_key(key):  # never another store key (rate-limit counters, API keys, rollups)
            raise ValueError("not a cache key")
        removed = int(await self._store.delete(key))
        return removed + await self._store.purge_prefix(f"{key}:v:")


class RevalidationGate:
    """Single flight for background revalidations in one process: at most one per entry key in flight, and
    none for a lookup made before the last one finished (that lookup saw the entry it already replaced).

    ``looked_up_at`` and the gate's clock are the same monotonic clock (``time.perf_counter`` by default).
    """

    def __init__(self, *, clock: Callable[[], float] = time.perf_counter, remember: int = 4096) -> None:
        self._clock = clock
        self._remember = remember
        self._in_flight: set[str] = set()
        self._finished: dict[str, float] = {}  # key -> when its last revalidation finished (oldest first)

    def claim(self, key: str, looked_up_at: float) -> bool:
        """True when the caller should revalidate ``key`` now (and must :meth:`release` it afterwards)."""
        if key in self._in_flight or self._finished.get(key, float("-inf")) >= looked_up_at:
            return False
        self._in_flight.add(key)
        return True

    def release(self, key: str) -> None:
        self._in_flight.discard(key)
        self._finished.pop(key, None)
        self._finished[key] = self._clock()
        while len(self._finished) > self._remember:
            del self._finished[next(iter(self._finished))]

    @property
    def in_flight(self) -> frozenset[str]:
        return frozenset(self._in_flight)

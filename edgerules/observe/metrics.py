"""Per-request metrics: records, batched flush into hourly rollups, percentiles, collector and access log.

The request path only calls `MetricsRecorder.record`: it appends to a memory buffer and bumps the in-process
Prometheus metrics. `flush` (in the background every `flush_interval`) folds the buffer into one field map per
hour and applies it with ONE atomic `store.hincr` per hour, so counts from many proxy instances add up exactly
(the seed's random key per request and read-modify-write aggregation lost counts). While the store is down,
folded rollups stay in memory and are retried; only raw records are bounded (oldest dropped, counted).

Rollup fields (all counts, per hour ``rollup:{hour}`` where hour = epoch seconds // 3600):
``requests``, ``errors``, ``cache_hits``, ``latency_ms_total``, ``upstream_ms_total``, ``upstream_count``,
``bytes_total``, ``region:{r}``, ``status:{2xx}``, ``cache:{HIT}``, ``country:{CC}``, ``class:{c}``,
``error:{kind}``, ``lat_bucket:le_{ms}`` (non-cumulative, ``le_inf`` last) and ``rlat:{region}:le_{ms}``
(the same histogram per region).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from edgerules.kinds import ANSWER_KINDS, AUTH_REASONS
from edgerules.observe.prometheus import CACHE_HIT_STATUSES, EdgeMetrics
from edgerules.policy.model import MetricsConfig
from edgerules.stores.base import Store, StoreUnavailable

HOUR = 3600


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One handled request. `error` is a short machine kind: ``upstream_timeout``, ``all_regions_down``,
    ``auth:expired`` (auth failures: ``auth:<reason>``), ``rate_limited`` or ``rate_limited:<rule>``..."""

    timestamp: float
    latency_ms: float
    upstream_ms: float | None
    region: str | None
    cache_status: str | None
    country: str | None
    request_class: str | None
    status: int
    method: str
    path_class: str | None
    error: str | None
    response_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        # every field is a scalar: a flat dict (dataclasses.asdict deep-copies field by field, per record)
        return {name: getattr(self, name) for name in _RECORD_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RequestRecord:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


_RECORD_FIELDS = tuple(f.name for f in fields(RequestRecord))


# ----------------------------------------------------------------------------------------------------
# rollup fields


_FIELD_VALUE_RE = re.compile(r"^[A-Za-z0-9_.\-/]{1,64}$")


def _dim(value: str | None) -> str:
    """A dimension value safe in a hash field name (``:`` separates parts); odd values become ``other``."""
    if value is None or value == "":
        return "none"
    return value if _FIELD_VALUE_RE.match(value) else "other"


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else "unknown"


def is_error(rec: RequestRecord) -> bool:
    """An edge error (`error` set: auth, rate limit, timeouts...) or a 5xx answer."""
    return rec.error is not None or rec.status >= 500


def bucket_name(bound: float) -> str:
    return "le_inf" if math.isinf(bound) else f"le_{bound:g}"


def _bucket_for(latency_ms: float, bounds: Sequence[float]) -> str:
    for bound in bounds:
        if latency_ms <= bound:
            return bucket_name(bound)
    return "le_inf"


def rollup_fields(records: Iterable[RequestRecord], buckets_ms: Sequence[float]) -> Counter[str]:
    """Fold records (of one hour) into rollup field increments."""
    bounds = sorted(buckets_ms)
    names = [bucket_name(b) for b in (*bounds, math.inf)]
    out: Counter[str] = Counter()  # latency totals are floats: typeshed types Counter values as int only
    # every bucket is present (zero or not): percentile interpolation needs each bucket's lower bound
    for name in names:
        out[f"lat_bucket:{name}"] += 0
    seen_regions: set[str] = set()
    for rec in records:
        region = _dim(rec.region)
        if region not in seen_regions:
            seen_regions.add(region)
            for name in names:
                out[f"rlat:{region}:{name}"] += 0
        bucket = _bucket_for(rec.latency_ms, bounds)
        out["requests"] += 1
        out["latency_ms_total"] += rec.latency_ms  # type: ignore[assignment]
        if rec.upstream_ms is not None:
            out["upstream_ms_total"] += rec.upstream_ms  # type: ignore[assignment]
            out["upstream_count"] += 1
        if rec.response_bytes is not None:
            out["bytes_total"] += rec.response_bytes
        if is_error(rec):
            out["errors"] += 1
        if rec.error:
            out[f"error:{_dim(rec.error.replace(':', '.'))}"] += 1
        if rec.cache_status:
            out[f"cache:{_dim(rec.cache_status)}"] += 1
            if rec.cache_status in CACHE_HIT_STATUSES:
                out["cache_hits"] += 1
        out[f"region:{region}"] += 1
        out[f"status:{status_class(rec.status)}"] += 1
        out[f"country:{_dim(rec.country)}"] += 1
        out[f"class:{_dim(rec.request_class)}"] += 1
        out[f"lat_bucket:{bucket}"] += 1
        out[f"rlat:{region}:{bucket}"] += 1
    return out


# ----------------------------------------------------------------------------------------------------
# reading rollups and percentiles


def _parse_bound(name: str) -> float:
    tail = name.removeprefix("le_")
    return math.inf if tail == "inf" else float(tail)


def percentile_from_buckets(buckets: Mapping[float, float], q: float) -> float | None:
    """Estimate the q-quantile (0..1) from non-cumulative bucket counts keyed by upper bound (ms).

    Linear interpolation inside the bucket, from its lower bound (previous bound, 0 for the first) to its
    upper bound. Values in the open-ended bucket are reported as the highest finite bound (like Prometheus's
    `histogram_quantile`). None when there are no observations.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be within 0..1")
    items = sorted((b, c) for b, c in buckets.items() if c > 0 or not math.isinf(b))
    total = sum(c for _, c in items)
    if total <= 0:
        return None
    rank = q * total
    cumulative = 0.0
    lower = 0.0
    finite = [b for b, _ in items if not math.isinf(b)]
    for bound, count in items:
        if count > 0 and cumulative + count >= rank:
            if math.isinf(bound):
                return finite[-1] if finite else lower
            return lower + (bound - lower) * ((rank - cumulative) / count)
        cumulative += count
        if not math.isinf(bound):
            lower = bound
    return finite[-1] if finite else lower


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(value, 3)


@dataclass(frozen=True, slots=True)
class HourRollup:
    """The aggregate of one hour (or of several, for totals: then `hour` is the first and `hours` > 1)."""

    hour: int
    fields: Mapping[str, float]
    hours: int = 1

    @property
    def start(self) -> float:
        return float(self.hour * HOUR)

    @property
    def start_iso(self) -> str:
        return datetime.fromtimestamp(self.start, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def count(self, name: str) -> int:
        return int(self.fields.get(name, 0))

    @property
    def requests(self) -> int:
        return self.count("requests")

    @property
    def errors(self) -> int:
        return self.count("errors")

    @property
    def cache_hits(self) -> int:
        return self.count("cache_hits")

    @property
    def latency_ms_total(self) -> float:
        return float(self.fields.get("latency_ms_total", 0.0))

    @property
    def avg_latency_ms(self) -> float | None:
        return self.latency_ms_total / self.requests if self.requests else None

    @property
    def error_ratio(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def cache_lookups(self) -> int:
        cache = self.breakdown("cache")
        return sum(n for status, n in cache.items() if status != "BYPASS")

    @property
    def cache_hit_ratio(self) -> float | None:
        """Hits over cache lookups (BYPASS excluded); None when nothing was looked up."""
        lookups = self.cache_lookups
        return self.cache_hits / lookups if lookups else None

    def breakdown(self, prefix: str) -> dict[str, int]:
        """Counts of one dimension (``region``, ``status``, ``country``, ``class``, ``cache``, ``error``),
        largest first."""
        head = prefix + ":"
        out = {k[len(head) :]: int(v) for k, v in self.fields.items() if k.startswith(head) and v}
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    def latency_buckets(self, region: str | None = None) -> dict[float, int]:
        head = "lat_bucket:" if region is None else f"rlat:{region}:"
        return {
            _parse_bound(k[len(head) :]): int(v)
            for k, v in self.fields.items()
            if k.startswith(head) and k[len(head) :].startswith("le_")
        }

    def percentile(self, q: float, region: str | None = None) -> float | None:
        return percentile_from_buckets(self.latency_buckets(region), q)

    def percentiles(self, region: str | None = None) -> dict[str, float | None]:
        buckets = self.latency_buckets(region)
        return {f"p{round(q * 100)}": percentile_from_buckets(buckets, q) for q in (0.5, 0.95, 0.99)}

    @classmethod
    def combine(cls, rollups: Sequence[HourRollup]) -> HourRollup:
        total: Counter[str] = Counter()
        for r in rollups:
            total.update(r.fields)
        first = min((r.hour for r in rollups), default=0)
        return cls(first, dict(total), hours=sum(r.hours for r in rollups))

    def to_json(self) -> dict[str, Any]:
        def rnd(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        return {
            "hour": self.hour,
            "start": self.start_iso,
            "hours": self.hours,
            "requests": self.requests,
            "errors": self.errors,
            "error_ratio": rnd(self.error_ratio),
            "cache_hits": self.cache_hits,
            "cache_lookups": self.cache_lookups,
            "cache_hit_ratio": rnd(self.cache_hit_ratio),
            "latency_ms_total": _num(self.latency_ms_total),
            "avg_latency_ms": rnd(self.avg_latency_ms),
            "latency_ms": {k: rnd(v) for k, v in self.percentiles().items()},
            "latency_buckets_ms": {bucket_name(b): n for b, n in sorted(self.latency_buckets().items())},
            "regions": self.breakdown("region"),
            "region_latency_ms": {
                region: {k: rnd(v) for k, v in self.percentiles(region).items()}
                for region in self.breakdown("region")
            },
            "statuses": self.breakdown("status"),
            "cache": self.breakdown("cache"),
            "countries": self.breakdown("country"),
            "classes": self.breakdown("class"),
            "error_kinds": self.breakdown("error"),
            "fields": {k: _num(v) for k, v in sorted(self.fields.items())},
        }


async def read_rollups(store: Store, since: float, now: float) -> list[HourRollup]:
    """The hourly rollups from the hour holding `since` to the one holding `now` (empty hours omitted)."""
    hours = range(int(since // HOUR), int(now // HOUR) + 1)
    maps = await asyncio.gather(*(store.hgetall(f"rollup:{h}") for h in hours))
    return [HourRollup(h, dict(m)) for h, m in zip(hours, maps, strict=True) if m]


async def read_raw(store: Store, hour: int) -> list[RequestRecord]:
    """The raw records of one hour written by every instance (as long as `raw_retention` keeps them)."""
    out: list[RequestRecord] = []
    for key in sorted(await store.keys(f"raw:{hour}:")):
        value = await store.get(key)
        if value is not None:
            out.extend(RequestRecord.from_dict(d) for d in json.loads(value))
    return out


# ----------------------------------------------------------------------------------------------------
# the recorder


@dataclass(slots=True)
class _Pending:
    """Work folded from the buffer but not yet in the store."""

    rollups: dict[int, Counter[str]] = field(default_factory=dict)
    raw: dict[int, list[RequestRecord]] = field(default_factory=dict)
    raw_count: int = 0


class MetricsRecorder:
    RAW_BATCH = 5000  # raw records per stored key
    # A flush runs on the event loop: it folds and encodes this many records at a time, then lets requests
    # run (2,000 records in one go held the loop ~13 ms, which showed in every p99).
    SLICE = 250

    def __init__(
        self,
        store: Store,
        config: MetricsConfig,
        *,
        instance_id: str,
        now: Callable[[], float] = time.time,
        prometheus: EdgeMetrics | None = None,
        regions: Collection[str] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.instance_id = _dim(instance_id)
        self._now = now
        self.prometheus = prometheus or EdgeMetrics(
            latency_buckets_ms=config.latency_buckets_ms, regions=regions
        )
        self._regions = frozenset(regions) if regions is not None else None
        self._buffer: deque[RequestRecord] = deque()
        self._pending = _Pending()
        self._seq = 0
        self._lock = asyncio.Lock()
        self.dropped = 0
        self.flush_failures = 0

    # -- request path --

    def record(self, rec: RequestRecord) -> None:
        """O(1), sync, never touches the store."""
        if not self.config.enabled:
            return
        if self._regions is not None and rec.region is not None and rec.region not in self._regions:
            rec = _replace_region(rec, "other")
        self._buffer.append(rec)
        if len(self._buffer) > self.config.max_buffer:
            # the buffer only grows past the bound if flush never runs; fold rather than lose counts
            self._fold()
        self.prometheus.observe_request(
            latency_ms=rec.latency_ms,
            status=rec.status,
            region=rec.region,
            cache_status=rec.cache_status,
            request_class=rec.request_class,
            error=rec.error,
        )

    @property
    def buffered(self) -> int:
        """Records not yet written to the store (buffer + pending raw records)."""
        return len(self._buffer) + self._pending.raw_count

    # -- background --

    def _fold(self, limit: int | None = None) -> None:
        """Move the buffer (or its oldest `limit` records) into the pending rollups (exact counts) and raw
        batches (bounded)."""
        by_hour: dict[int, list[RequestRecord]] = {}
        buffer = self._buffer
        for _ in range(len(buffer) if limit is None else min(limit, len(buffer))):
            rec = buffer.popleft()
            by_hour.setdefault(int(rec.timestamp // HOUR), []).append(rec)
        pending = self._pending
        for hour, recs in by_hour.items():
            pending.rollups.setdefault(hour, Counter()).update(
                rollup_fields(recs, self.config.latency_buckets_ms)
            )
            pending.raw.setdefault(hour, []).extend(recs)
            pending.raw_count += len(recs)
        excess = pending.raw_count - self.config.max_buffer
        for hour in sorted(pending.raw):
            if excess <= 0:
                break
            batch = pending.raw[hour]
            cut = min(excess, len(batch))
            del batch[:cut]
            excess -= cut
            pending.raw_count -= cut
            self.dropped += cut
            self.prometheus.dropped(cut)
            if not batch:
                del pending.raw[hour]

    async def flush(self) -> bool:
        """Write everything buffered. False (work kept for the next flush) if the store failed."""
        async with self._lock:
            while self._buffer:  # what arrives meanwhile is folded too, one slice at a time
                self._fold(self.SLICE)
                await asyncio.sleep(0)
            pending = self._pending
            oldest_useful = int((self._now() - self.config.rollup_retention) // HOUR)
            try:
                for hour in sorted(pending.rollups):
                    fields_ = pending.rollups[hour]
                    if hour >= oldest_useful and fields_:
                        await self.store.hincr(
                            f"rollup:{hour}", dict(fields_), ttl=self.config.rollup_retention
                        )
                    del pending.rollups[hour]
                oldest_raw = int((self._now() - self.config.raw_retention) // HOUR)
                for hour in sorted(pending.raw):
                    batch = pending.raw[hour]
                    while batch:
                        chunk = batch[: self.RAW_BATCH]
                        if hour >= oldest_raw:
                            body = await self._encode(chunk)
                            key = f"raw:{hour}:{self.instance_id}:{self._seq}"
                            await self.store.set(key, body, ttl=self.config.raw_retention)
                            self._seq += 1
                        del batch[: len(chunk)]
                        pending.raw_count -= len(chunk)
                    del pending.raw[hour]
            except StoreUnavailable:
                self.flush_failures += 1
                return False
            return True

    async def _encode(self, records: list[RequestRecord]) -> bytes:
        """The JSON array of `records`, encoded a slice at a time with the event loop free in between."""
        parts = []
        for start in range(0, len(records), self.SLICE):
            dicts = [r.to_dict() for r in records[start : start + self.SLICE]]
            parts.append(json.dumps(dicts, separators=(",", ":"))[1:-1])  # one encoder pass per slice
            await asyncio.sleep(0)
        return ("[" + ",".join(parts) + "]").encode()

    async def run(self) -> None:
        """Flush every `flush_interval` until cancelled; a failing store is retried on the next tick."""
        while True:
            await asyncio.sleep(self.config.flush_interval)
            await self.flush()

    async def close(self) -> bool:
        return await self.flush()

    def render_prometheus(self) -> str:
        return self.prometheus.render()


def _replace_region(rec: RequestRecord, region: str) -> RequestRecord:
    data = rec.to_dict()
    data["region"] = region
    return RequestRecord(**data)


# ----------------------------------------------------------------------------------------------------
# collector documents (the seed's analytics worker)


MAX_COLLECTOR_BODY = 1 << 20
MAX_COLLECTOR_ITEMS = 1000
MAX_LATENCY_MS = 3_600_000.0
MAX_SHORT_STRING = 64
MAX_ERROR_STRING = 200
_PRINTABLE_RE = re.compile(r"^[\x21-\x7e][\x20-\x7e]*$")

# accepted name -> RequestRecord field (the seed's camelCase names and our own snake_case ones)
_ALIASES: dict[str, str] = {
    "region": "region",
    "cacheStatus": "cache_status",
    "cache_status": "cache_status",
    "clientCountry": "country",
    "country": "country",
    "requestType": "request_class",
    "request_class": "request_class",
    "latency": "latency_ms",
    "latency_ms": "latency_ms",
    "upstreamLatency": "upstream_ms",
    "upstream_ms": "upstream_ms",
    "responseSize": "response_bytes",
    "response_bytes": "response_bytes",
    "timestamp": "timestamp",
    "error": "error",
    "status": "status",
    "method": "method",
    "pathClass": "path_class",
    "path_class": "path_class",
}
_REQUIRED = ("latency_ms",)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON number {name}")


# ----------------------------------------------------------------------------------------------------
# closed label sets: what a record's dimensions may say (the collector refuses anything else)

CACHE_STATES = frozenset({"HIT", "MISS", "BYPASS", "EXPIRED", "STALE", "REVALIDATED"})  # cache.CacheStatus
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})
_COUNTRY_RE = re.compile(r"[A-Z]{2}")


@dataclass(frozen=True, slots=True)
class LabelSets:
    """The values each dimension may take, from the policy (regions, classes, rate-limit rules) and the edge
    (cache states, error kinds, auth reasons, methods, statuses)."""

    regions: frozenset[str]
    classes: frozenset[str]
    errors: frozenset[str]
    methods: frozenset[str] = HTTP_METHODS
    cache_states: frozenset[str] = CACHE_STATES

    @classmethod
    def of(cls, regions: Iterable[str], classes: Iterable[str], rate_limit_rules: Iterable[str]) -> LabelSets:
        errors = {
            *ANSWER_KINDS,
            *(f"auth:{reason}" for reason in (*AUTH_REASONS, "store_unavailable")),
            *(f"rate_limited:{name}" for name in rate_limit_rules),
        }
        return cls(frozenset(regions), frozenset(classes), frozenset(errors))


def outside_label_sets(rec: RequestRecord, sets: LabelSets) -> str | None:
    """What in `rec` is outside the closed sets (None: nothing)."""
    checks = (
        ("region", rec.region, sets.regions),
        ("cacheStatus", rec.cache_status, sets.cache_states),
        ("requestType", rec.request_class, sets.classes),
        ("pathClass", rec.path_class, sets.classes),
        ("error", rec.error, sets.errors),
    )
    for name, value, allowed in checks:
        if value is not None and value not in allowed:
            return f"{name} {value[:40]!r} is not one the policy or the edge defines"
    if rec.method != "UNKNOWN" and rec.method not in sets.methods:
        return f"method {rec.method[:16]!r} is not an HTTP method the edge records"
    if rec.country is not None and _COUNTRY_RE.fullmatch(rec.country) is None:
        return f"clientCountry {rec.country[:8]!r} is not an ISO 3166 alpha-2 code"
    return None


def parse_collector_document(
    body: bytes, *, now: float | None = None, max_age: float = 7 * 86400.0
) -> RequestRecord | list[RequestRecord]:
    """Parse a collector POST body: one JSON object or an array of them. ValueError says what is wrong.

    Required: ``latency`` (ms). Optional: region, cacheStatus, clientCountry, requestType, responseSize,
    timestamp (ms or s since the epoch, or ISO 8601; default now), error, status (default unknown), method,
    pathClass, upstreamLatency. Timestamps older than `max_age` or more than 5 minutes ahead are rejected.
    """
    now = time.time() if now is None else now
    if len(body) > MAX_COLLECTOR_BODY:
        raise ValueError(f"document too large ({len(body)} bytes, max {MAX_COLLECTOR_BODY})")
    try:
        doc = json.loads(body, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"malformed JSON: {exc}") from None
    if isinstance(doc, list):
        if not doc:
            raise ValueError("empty array")
        if len(doc) > MAX_COLLECTOR_ITEMS:
            raise ValueError(f"too many items ({len(doc)}, max {MAX_COLLECTOR_ITEMS})")
        out = []
        for i, item in enumerate(doc):
            try:
                out.append(_parse_item(item, now, max_age))
            except ValueError as exc:
                raise ValueError(f"item {i}: {exc}") from None
        return out
    return _parse_item(doc, now, max_age)


def _parse_item(item: object, now: float, max_age: float) -> RequestRecord:
    if not isinstance(item, dict):
        raise ValueError(f"expected a JSON object, got {type(item).__name__}")
    unknown = sorted(set(item) - set(_ALIASES))
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, raw in item.items():
        target = _ALIASES[name]
        if target in values:
            raise ValueError(f"field {name!r} given twice (under two names)")
        values[target] = _check(name, target, raw, now, max_age)
    missing = [n for n in _REQUIRED if values.get(n) is None]
    if missing:
        raise ValueError("missing required field 'latency'")
    return RequestRecord(
        timestamp=values.get("timestamp") or now,
        latency_ms=values["latency_ms"],
        upstream_ms=values.get("upstream_ms"),
        region=values.get("region"),
        cache_status=values.get("cache_status"),
        country=values.get("country"),
        request_class=values.get("request_class"),
        status=values.get("status") or 0,
        method=values.get("method") or "UNKNOWN",
        path_class=values.get("path_class"),
        error=values.get("error"),
        response_bytes=values.get("response_bytes"),
    )


def _number(name: str, raw: object, low: float, high: float) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f"field {name!r} must be a number, got {type(raw).__name__}")
    if not low <= raw <= high:
        raise ValueError(f"field {name!r} out of range ({raw}, expected {low:g}..{high:g})")
    return float(raw)


def _string(name: str, raw: object, max_len: int) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"field {name!r} must be a string, got {type(raw).__name__}")
    if len(raw) > max_len:
        raise ValueError(f"field {name!r} too long ({len(raw)} characters, max {max_len})")
    if not _PRINTABLE_RE.match(raw):
        raise ValueError(f"field {name!r} must be non-empty printable ASCII")
    return raw


def _timestamp(name: str, raw: object, now: float, max_age: float) -> float:
    if isinstance(raw, str):
        try:
            ts = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"field {name!r} is not an ISO 8601 time: {raw[:40]!r}") from None
        if ts.tzinfo is None:
            raise ValueError(f"field {name!r} needs a timezone")
        value = ts.timestamp()
    else:
        value = _number(name, raw, 0, math.inf)
        if value > 1e11:  # milliseconds (Date.now()) rather than seconds
            value /= 1000.0
    if not now - max_age <= value <= now + 300:
        raise ValueError(f"field {name!r} is not a recent time")
    return value


def _check(name: str, target: str, raw: object, now: float, max_age: float) -> Any:
    if raw is None:
        if target in _REQUIRED:
            raise ValueError(f"field {name!r} must not be null")
        return None
    match target:
        case "latency_ms" | "upstream_ms":
            return _number(name, raw, 0.0, MAX_LATENCY_MS)
        case "response_bytes":
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise ValueError(f"field {name!r} must be an integer")
            return int(_number(name, raw, 0, 1e12))
        case "status":
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise ValueError(f"field {name!r} must be an integer")
            return int(_number(name, raw, 100, 599))
        case "timestamp":
            return _timestamp(name, raw, now, max_age)
        case "error":
            return _string(name, raw, MAX_ERROR_STRING)
        case "method":
            value = _string(name, raw, 16)
            if not value.isalpha():
                raise ValueError(f"field {name!r} must be an HTTP method")
            return value.upper()
        case _:
            return _string(name, raw, MAX_SHORT_STRING)


# ----------------------------------------------------------------------------------------------------
# access log


_SENSITIVE_KEY_RE = re.compile(
    r"(?i)(authorization|cookie|api[-_]?key|apikey|token|secret|password|passwd|jwt|session|credential|signature)"
)
_SENSITIVE_VALUE_RE = re.compile(r"(?i)\b(bearer|basic|api-key|digest)\s+[^\s,;]+")
_QUERY_RE = re.compile(r"([?&])([^=&#]*)=([^&#]*)")


def _scrub_query(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        if _SENSITIVE_KEY_RE.search(m.group(2)) or m.group(2).lower() in {"key", "sig", "code", "auth"}:
            return f"{m.group(1)}{m.group(2)}=[redacted]"
        return m.group(0)

    return _QUERY_RE.sub(repl, text)


def _scrub(value: object) -> object:
    if isinstance(value, Mapping):
        return {str(k): _scrub(v) for k, v in value.items() if not _SENSITIVE_KEY_RE.search(str(k))}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if isinstance(value, str):
        value = _SENSITIVE_VALUE_RE.sub(r"\1 [redacted]", value)
        return _scrub_query(value) if "=" in value else value
    if isinstance(value, int | float | bool) or value is None:
        return value
    return _scrub(str(value))


# A segment of 20+ URL-safe characters with letters and digits mixed, or of 40+ of them: a token, a webhook
# secret, a signed id. (Names, slugs and short ids stay readable; a UUID is redacted.)
_RANDOM_SEGMENT_RE = re.compile(r"[A-Za-z0-9_.~+=%-]{20,}")
_DIGIT_RE = re.compile(r"[0-9]")
_LETTER_RE = re.compile(r"[A-Za-z]")


def looks_random(segment: str) -> bool:
    if len(segment) < 20 or _RANDOM_SEGMENT_RE.fullmatch(segment) is None:
        return False
    return len(segment) >= 40 or (bool(_DIGIT_RE.search(segment)) and bool(_LETTER_RE.search(segment)))


def redact_path(path: str | None, config: MetricsConfig) -> str | None:
    """The path as the access log writes it: segments matching `metrics.redact_path_segments`, and long
    random-looking ones (`metrics.redact_random_segments`), become `[redacted]`, as sensitive query
    parameters do."""
    if not path:
        return path
    patterns, random = config.redact_path_segments, config.redact_random_segments
    if not patterns and not random:
        return path
    parts = path.split("/")
    changed = False
    for i, segment in enumerate(parts):
        if segment and ((random and looks_random(segment)) or any(p.fullmatch(segment) for p in patterns)):
            parts[i] = "[redacted]"
            changed = True
    return "/".join(parts) if changed else path


def access_log_line(rec: RequestRecord, extra: Mapping[str, object] | None = None) -> str:
    """One JSON line for the access log. Keys that name credentials (Authorization, cookies, API keys,
    tokens, secrets...) are dropped at any depth; credential-looking values and sensitive query parameters
    are redacted."""
    data: dict[str, object] = {
        "time": datetime.fromtimestamp(rec.timestamp, UTC).isoformat(timespec="milliseconds"),
        **{k: v for k, v in rec.to_dict().items() if k != "timestamp"},
    }
    if extra:
        for key, value in extra.items():
            data.setdefault(str(key), value)
    scrubbed = _scrub(data)
    return json.dumps(scrubbed, separators=(",", ":"), ensure_ascii=True, default=str)

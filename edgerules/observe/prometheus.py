"""In-process Prometheus metrics, rendered as text exposition format 0.0.4.

No client library: a small `Registry` of counters, gauges and histograms is all the proxy needs. Label
values are bounded per metric (`max_values` distinct values per label, optional allow-lists); anything beyond
collapses to ``"other"`` so a client sending odd countries, paths or regions cannot blow up cardinality.

`EdgeMetrics` is the fixed set of edgerules metrics; `metrics.MetricsRecorder` feeds it on every request.
"""

from __future__ import annotations

import bisect
import math
import re
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER = "other"
MAX_LABEL_VALUE_LEN = 64
_KEY_MEMO_LIMIT = 4096

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

MetricType = Literal["counter", "gauge", "histogram"]


def format_value(value: float) -> str:
    """Sample value: integers without a fraction; `+Inf`/`-Inf`/`NaN` spelled as the format wants."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    inner = ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + inner + "}"


@dataclass(slots=True)
class _LabelBound:
    """Admits at most `max_values` distinct values of a label (or only `allowed` ones); the rest: other."""

    max_values: int
    allowed: frozenset[str] | None = None
    seen: set[str] = field(default_factory=set)

    def admit(self, value: str) -> str:
        value = value[:MAX_LABEL_VALUE_LEN]
        if self.allowed is not None:
            return value if value in self.allowed else OTHER
        if value in self.seen:
            return value
        if len(self.seen) >= self.max_values:
            return OTHER
        self.seen.add(value)
        return value


class _Metric:
    kind: MetricType

    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str],
        *,
        max_values: int,
        allowed: Mapping[str, Collection[str]] | None,
        lock: threading.Lock,
    ) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labels:
            if not _LABEL_RE.match(label) or label.startswith("__") or label == "le":
                raise ValueError(f"invalid label name {label!r} for {name}")
        self.name = name
        self.help = help
        self.labels = tuple(labels)
        allowed = allowed or {}
        self._bounds = {
            label: _LabelBound(max_values, frozenset(allowed[label]) if label in allowed else None)
            for label in self.labels
        }
        self._lock = lock
        # label values as given -> series key. Correct to memoise: a value once admitted stays admitted and a
        # full label stays full. Bounded like the series themselves.
        self._keys: dict[tuple[tuple[str, str], ...], tuple[str, ...]] = {}
        self._setup()

    def _setup(self) -> None:
        """Create the per-series storage (subclasses)."""

    def _key(self, labels: Mapping[str, str]) -> tuple[str, ...]:
        given = tuple(labels.items())
        key = self._keys.get(given)
        if key is not None:
            return key
        if set(labels) != set(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {tuple(labels)}")
        key = tuple(self._bounds[n].admit(str(labels[n])) for n in self.labels)
        if len(self._keys) < _KEY_MEMO_LIMIT:
            self._keys[given] = key
        return key

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> Iterable[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind: MetricType = "counter"

    def _setup(self) -> None:
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        with self._lock:
            key = self._key(labels)
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def total(self) -> float:
        with self._lock:
            return sum(self._values.values())

    def items(self) -> list[tuple[tuple[str, ...], float]]:
        with self._lock:
            return sorted(self._values.items())

    def samples(self) -> Iterable[str]:
        items = self.items()
        if not items and not self.labels:
            items = [((), 0.0)]  # an unlabelled counter exists from the start
        for key, value in items:
            yield f"{self.name}{_format_labels(self.labels, key)} {format_value(value)}"


class Gauge(_Metric):
    kind: MetricType = "gauge"

    def _setup(self) -> None:
        self._values: dict[tuple[str, ...], float] = {}
        self._function: Callable[[], float] | None = None

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self._values[self._key(labels)] = float(value)

    def set_function(self, function: Callable[[], float]) -> None:
        """Compute an unlabelled gauge at render time (e.g. a ratio of two counters)."""
        if self.labels:
            raise ValueError("set_function only for unlabelled gauges")
        self._function = function

    def value(self, **labels: str) -> float:
        if self._function is not None:
            return self._function()
        with self._lock:
            return self._values.get(self._key(labels), math.nan)

    def samples(self) -> Iterable[str]:
        if self._function is not None:
            yield f"{self.name} {format_value(self._function())}"
            return
        with self._lock:
            items = sorted(self._values.items())
        for key, value in items:
            yield f"{self.name}{_format_labels(self.labels, key)} {format_value(value)}"


class Histogram(_Metric):
    kind: MetricType = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str],
        *,
        buckets: Sequence[float],
        max_values: int,
        allowed: Mapping[str, Collection[str]] | None,
        lock: threading.Lock,
    ) -> None:
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"{name}: buckets must be non-empty and distinct")
        self.buckets = (*bounds, math.inf)
        super().__init__(name, help, labels, max_values=max_values, allowed=allowed, lock=lock)

    def _setup(self) -> None:
        # per label key: [count per bucket (non-cumulative)], sum
        self._counts: dict[tuple[str, ...], list[int]] = {}
        self._sums: dict[tuple[str, ...], float] = {}

    def observe(self, value: float, **labels: str) -> None:
        # the first bucket with value <= bound (+Inf last; a NaN lands there too rather than raising)
        index = min(bisect.bisect_left(self.buckets, value), len(self.buckets) - 1)
        with self._lock:
            key = self._key(labels)
            counts = self._counts.setdefault(key, [0] * len(self.buckets))
            counts[index] += 1
            self._sums[key] = self._sums.get(key, 0.0) + value

    def count(self, **labels: str) -> int:
        with self._lock:
            return sum(self._counts.get(self._key(labels), []))

    def samples(self) -> Iterable[str]:
        with self._lock:
            items = sorted((k, list(v), self._sums[k]) for k, v in self._counts.items())
        names = (*self.labels, "le")
        for key, counts, total in items:
            cumulative = 0
            for bound, n in zip(self.buckets, counts, strict=True):
                cumulative += n
                labels = _format_labels(names, (*key, format_value(bound)))
                yield f"{self.name}_bucket{labels} {cumulative}"
            plain = _format_labels(self.labels, key)
            yield f"{self.name}_sum{plain} {format_value(total)}"
            yield f"{self.name}_count{plain} {cumulative}"


class Registry:
    """A set of metrics rendered together. Thread-safe (mitmproxy hooks and health probers may share it)."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def _add[M: _Metric](self, metric: M) -> M:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} already registered")
        self._metrics[metric.name] = metric
        return metric

    def counter(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        *,
        max_values: int = 50,
        allowed: Mapping[str, Collection[str]] | None = None,
    ) -> Counter:
        return self._add(Counter(name, help, labels, max_values=max_values, allowed=allowed, lock=self._lock))

    def gauge(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        *,
        max_values: int = 50,
        allowed: Mapping[str, Collection[str]] | None = None,
    ) -> Gauge:
        return self._add(Gauge(name, help, labels, max_values=max_values, allowed=allowed, lock=self._lock))

    def histogram(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        max_values: int = 50,
        allowed: Mapping[str, Collection[str]] | None = None,
    ) -> Histogram:
        return self._add(
            Histogram(
                name, help, labels, buckets=buckets, max_values=max_values, allowed=allowed, lock=self._lock
            )
        )

    def get(self, name: str) -> _Metric:
        return self._metrics[name]

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.extend(metric.header())
            lines.extend(metric.samples())
        return "\n".join(lines) + "\n"


CACHE_HIT_STATUSES = frozenset({"HIT", "STALE", "REVALIDATED"})
"""Cache statuses that mean the response came from the edge cache (used for hit ratios everywhere)."""


def status_label(status: int) -> str:
    """Exact code for real HTTP statuses, ``"unknown"`` otherwise (bounded: at most 500 values)."""
    return str(status) if 100 <= status <= 599 else "unknown"


class EdgeMetrics:
    """The edgerules metric set. `regions` (if given) allow-lists region labels; others become other."""

    def __init__(
        self,
        *,
        latency_buckets_ms: Sequence[float] = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
        regions: Collection[str] | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.registry = registry or Registry()
        r = self.registry
        region_allow = {"region": [*regions, "none"]} if regions is not None else None
        self.requests = r.counter(
            "edgerules_requests_total",
            "Requests handled by the edge, by region, HTTP status, cache status and request class.",
            ("region", "status", "cache_status", "request_class"),
            allowed=region_allow,
        )
        self.duration = r.histogram(
            "edgerules_request_duration_seconds",
            "Time from request arrival at the edge to the response being ready, in seconds.",
            buckets=[b / 1000.0 for b in latency_buckets_ms],
        )
        self.region_healthy = r.gauge(
            "edgerules_region_healthy",
            "1 if the region is currently considered healthy, 0 otherwise.",
            ("region",),
            allowed={"region": list(regions)} if regions is not None else None,
        )
        self.rate_limited = r.counter(
            "edgerules_rate_limited_total", "Requests answered 429 by a rate-limit rule.", ("rule",)
        )
        self.auth_failures = r.counter(
            "edgerules_auth_failures_total", "Requests rejected by authentication, by reason.", ("reason",)
        )
        self.cache_requests = r.counter(
            "edgerules_cache_requests_total", "Requests by edge cache status (HIT, MISS...).", ("status",)
        )
        self.cache_stores_skipped = r.counter(
            "edgerules_cache_stores_skipped_total",
            "Cacheable responses served but not stored because too many cache stores were in flight (overload).",
        )
        self.cache_hit_ratio = r.gauge(
            "edgerules_cache_hit_ratio",
            "Share of cache lookups (all statuses except BYPASS) served from the cache; 0 before any lookup.",
        )
        self.cache_hit_ratio.set_function(self._hit_ratio)
        self.policy_reloads = r.counter(
            "edgerules_policy_reloads_total",
            "Policy reload attempts by result.",
            ("result",),
            allowed={"result": ["success", "failure"]},
        )
        self.policy_last_reload_success = r.gauge(
            "edgerules_policy_last_reload_success", "1 if the last policy reload succeeded, 0 if it failed."
        )
        self.policy_watch_failures = r.counter(
            "edgerules_policy_watch_failures_total",
            "Checks of the policy files that failed (not a regular file, a stalled file system); retried.",
        )
        self.streams_cut = r.counter(
            "edgerules_streams_cut_total",
            "Streamed request bodies cut at their size limit, by whether the client still got a 413 (else both "
            "connections were closed).",
            ("answered",),
            allowed={"answered": ["true", "false"]},
        )
        self.client_connections = r.gauge(
            "edgerules_client_connections", "Client connections open at the last sweep (about once a second)."
        )
        self.client_timeouts = r.counter(
            "edgerules_client_timeouts_total",
            "Client connections closed by a client timeout, by phase (head: 408, idle keep-alive, body: 408).",
            ("phase",),
            allowed={"phase": ["head", "idle", "body"]},
        )
        self.connections_refused = r.counter(
            "edgerules_connections_refused_total",
            "Client connections closed at once because edgerules_max_connections were open.",
        )
        self.metrics_dropped = r.counter(
            "edgerules_metrics_dropped_total",
            "Raw request records dropped because the metrics buffer was full (rollup counts are kept).",
        )

    def _hit_ratio(self) -> float:
        hits = lookups = 0.0
        for (status,), value in self.cache_requests.items():
            if status == "BYPASS":
                continue
            lookups += value
            if status in CACHE_HIT_STATUSES:
                hits += value
        return hits / lookups if lookups else 0.0

    def observe_request(
        self,
        *,
        latency_ms: float,
        status: int,
        region: str | None,
        cache_status: str | None,
        request_class: str | None,
        error: str | None,
    ) -> None:
        self.requests.inc(
            region=region or "none",
            status=status_label(status),
            cache_status=cache_status or "none",
            request_class=request_class or "none",
        )
        self.duration.observe(max(latency_ms, 0.0) / 1000.0)
        if cache_status:
            self.cache_requests.inc(status=cache_status)
        if error:
            kind, _, detail = error.partition(":")
            if kind == "auth":
                self.auth_failures.inc(reason=detail or "unknown")
            elif kind == "rate_limited":
                self.rate_limited.inc(rule=detail or "unknown")

    def set_region_health(self, region: str, healthy: bool) -> None:
        self.region_healthy.set(1.0 if healthy else 0.0, region=region)

    def policy_reloaded(self, success: bool) -> None:
        self.policy_reloads.inc(result="success" if success else "failure")
        self.policy_last_reload_success.set(1.0 if success else 0.0)

    def policy_watch_failed(self) -> None:
        self.policy_watch_failures.inc()

    def stream_cut(self, answered: bool) -> None:
        self.streams_cut.inc(answered="true" if answered else "false")

    def connection_refused(self) -> None:
        self.connections_refused.inc()

    def client_sweep(self, closed: dict[str, int]) -> None:
        self.client_connections.set(float(closed.get("connections", 0)))
        for phase in ("head", "idle", "body"):
            if closed.get(phase):
                self.client_timeouts.inc(closed[phase], phase=phase)

    def dropped(self, n: int = 1) -> None:
        self.metrics_dropped.inc(n)

    def render(self) -> str:
        return self.registry.render()

"""Metrics: Prometheus exposition, rollups through real stores, store outages, collector, access log."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from edgerules.observe.metrics import (
    HOUR,
    HourRollup,
    MetricsConfig,
    MetricsRecorder,
    RequestRecord,
    access_log_line,
    parse_collector_document,
    percentile_from_buckets,
    read_raw,
    read_rollups,
)
from edgerules.observe.prometheus import EdgeMetrics, Registry, format_value
from edgerules.stores import StoreConfig, open_store
from edgerules.stores.base import StoreUnavailable
from edgerules.stores.memory import MemoryStore
from tests.support.loop import LoopTicks
from tests.support.redis_server import RedisServer, redis_server  # noqa: F401  (fixture)

T0 = 1_714_521_600.0  # 2024-05-01 00:00:00 UTC, an hour boundary
H0 = int(T0 // HOUR)


def rec(
    ts: float = T0 + 10,
    latency: float = 42.0,
    *,
    region: str | None = "us-east-1",
    cache: str | None = "MISS",
    country: str | None = "US",
    cls: str | None = "agent-config",
    status: int = 200,
    error: str | None = None,
) -> RequestRecord:
    return RequestRecord(ts, latency, latency / 2, region, cache, country, cls, status, "GET", "/api", error)


# --------------------------------------------------------------------------------------------------------
# a small parser for the Prometheus text format 0.0.4


_SAMPLE_RE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], text)


def parse_exposition(text: str) -> dict[str, dict[str, Any]]:
    """name -> {"help", "type", "samples": [(sample_name, labels, value)]}; asserts the format's rules."""
    assert text.endswith("\n")
    families: dict[str, dict[str, Any]] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            assert name not in families, f"duplicate family {name}"
            families[name] = {"help": _unescape(help_), "type": None, "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current and kind in {"counter", "gauge", "histogram", "summary", "untyped"}
            families[name]["type"] = kind
        else:
            m = _SAMPLE_RE.match(line)
            assert m, f"bad sample line: {line!r}"
            assert current is not None and m["name"].startswith(current), f"sample outside its family: {line}"
            labels: dict[str, str] = {}
            raw = m["labels"] or ""
            pos = 0
            while pos < len(raw):
                lm = _LABEL_RE.match(raw, pos)
                assert lm, f"bad labels in {line!r}"
                labels[lm[1]] = _unescape(lm[2])
                pos = lm.end()
            value = float(m["value"].replace("+Inf", "inf").replace("-Inf", "-inf"))
            families[current]["samples"].append((m["name"], labels, value))
    return families


def sample(families: Mapping[str, dict[str, Any]], name: str, **labels: str) -> float:
    family = families[re.sub(r"_(bucket|sum|count)$", "", name)] if name not in families else families[name]
    found = [v for n, lab, v in family["samples"] if n == name and lab == labels]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


# --------------------------------------------------------------------------------------------------------
# prometheus


def test_registry_renders_valid_exposition_with_escaping() -> None:
    reg = Registry()
    c = reg.counter("demo_total", 'Help with a backslash \\ and\nnewline and "quotes".', ("path",))
    c.inc(path='a"b\\c\nd')
    c.inc(2.5, path="plain")
    g = reg.gauge("demo_gauge", "A gauge.")
    g.set(-1.5)
    text = reg.render()
    fam = parse_exposition(text)
    assert fam["demo_total"]["type"] == "counter"
    assert fam["demo_total"]["help"] == 'Help with a backslash \\ and\nnewline and "quotes".'
    assert sample(fam, "demo_total", path='a"b\\c\nd') == 1
    assert sample(fam, "demo_total", path="plain") == 2.5
    assert sample(fam, "demo_gauge") == -1.5
    assert '\\"' in text and "\\n" in text  # escaped on the wire, not raw
    assert format_value(math.inf) == "+Inf" and format_value(3.0) == "3" and format_value(math.nan) == "NaN"


def test_histogram_buckets_are_cumulative_and_consistent() -> None:
    reg = Registry()
    h = reg.histogram("lat_seconds", "Latency.", buckets=[0.1, 0.5, 1.0])
    for v in (0.05, 0.1, 0.3, 0.7, 2.0, 5.0):
        h.observe(v)
    fam = parse_exposition(reg.render())
    assert fam["lat_seconds"]["type"] == "histogram"
    buckets = [(lab["le"], v) for n, lab, v in fam["lat_seconds"]["samples"] if n == "lat_seconds_bucket"]
    assert buckets == [("0.1", 2), ("0.5", 3), ("1", 4), ("+Inf", 6)]
    assert sample(fam, "lat_seconds_count") == 6
    assert sample(fam, "lat_seconds_sum") == pytest.approx(8.15)


def test_label_cardinality_is_bounded() -> None:
    reg = Registry()
    c = reg.counter("hits_total", "Hits.", ("country",), max_values=3)
    for i in range(100):
        c.inc(country=f"C{i}")
    fam = parse_exposition(reg.render())
    values = {lab["country"] for _, lab, _ in fam["hits_total"]["samples"]}
    assert values == {"C0", "C1", "C2", "other"}
    assert sample(fam, "hits_total", country="other") == 97
    with pytest.raises(ValueError):
        c.inc(wrong="x")
    with pytest.raises(ValueError):
        reg.counter("hits_total", "again")


def test_edge_metrics_full_set() -> None:
    m = EdgeMetrics(regions=["us-east-1", "eu-west-1"])
    m.observe_request(
        latency_ms=20, status=200, region="us-east-1", cache_status="HIT", request_class="api", error=None
    )
    m.observe_request(
        latency_ms=30, status=200, region="evil\nregion", cache_status="MISS", request_class="api", error=None
    )
    m.observe_request(
        latency_ms=1, status=401, region=None, cache_status="BYPASS", request_class=None, error="auth:expired"
    )
    m.observe_request(
        latency_ms=1,
        status=429,
        region=None,
        cache_status=None,
        request_class=None,
        error="rate_limited:per-key",
    )
    m.set_region_health("us-east-1", True)
    m.set_region_health("eu-west-1", False)
    m.policy_reloaded(True)
    m.policy_reloaded(False)
    fam = parse_exposition(m.render())
    assert sample(fam, "edgerules_requests_total", region="other", status="200", cache_status="MISS",
                  request_class="api") == 1  # fmt: skip
    assert sample(fam, "edgerules_requests_total", region="none", status="429", cache_status="none",
                  request_class="none") == 1  # fmt: skip
    assert sample(fam, "edgerules_request_duration_seconds_count") == 4
    assert sample(fam, "edgerules_region_healthy", region="eu-west-1") == 0
    assert sample(fam, "edgerules_region_healthy", region="us-east-1") == 1
    assert sample(fam, "edgerules_auth_failures_total", reason="expired") == 1
    assert sample(fam, "edgerules_rate_limited_total", rule="per-key") == 1
    assert sample(fam, "edgerules_cache_requests_total", status="BYPASS") == 1
    assert sample(fam, "edgerules_cache_hit_ratio") == 0.5  # HIT / (HIT + MISS); BYPASS is no lookup
    assert sample(fam, "edgerules_policy_reloads_total", result="success") == 1
    assert sample(fam, "edgerules_policy_reloads_total", result="failure") == 1
    assert sample(fam, "edgerules_policy_last_reload_success") == 0
    assert sample(fam, "edgerules_metrics_dropped_total") == 0
    for name, family in fam.items():
        assert family["type"] and family["help"], name


# --------------------------------------------------------------------------------------------------------
# percentiles


def test_percentile_interpolates_within_bucket() -> None:
    buckets = {10.0: 50, 20.0: 50, math.inf: 0}
    assert percentile_from_buckets(buckets, 0.5) == pytest.approx(10.0)
    assert percentile_from_buckets(buckets, 0.25) == pytest.approx(5.0)
    assert percentile_from_buckets(buckets, 0.75) == pytest.approx(15.0)
    assert percentile_from_buckets(buckets, 1.0) == pytest.approx(20.0)
    assert percentile_from_buckets({10.0: 0, math.inf: 0}, 0.5) is None
    # everything above the top bound: report the top finite bound, like histogram_quantile
    assert percentile_from_buckets({10.0: 1, 100.0: 0, math.inf: 9}, 0.99) == 100.0
    with pytest.raises(ValueError):
        percentile_from_buckets(buckets, 1.5)


# --------------------------------------------------------------------------------------------------------
# recorder + stores


class SpyStore:
    """Wraps a real store: counts calls, and raises StoreUnavailable while `down` (optionally on one op)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str, float | None]] = []
        self.down = False
        self.fail_on_hour: int | None = None

    async def hincr(self, key: str, fields: Mapping[str, float], ttl: float | None = None) -> None:
        if self.down or (self.fail_on_hour is not None and key == f"rollup:{self.fail_on_hour}"):
            raise StoreUnavailable("down")
        self.calls.append(("hincr", key, ttl))
        await self.inner.hincr(key, fields, ttl)

    async def set(self, key: str, value: bytes, ttl: float | None = None, tags: Sequence[str] = ()) -> None:
        if self.down:
            raise StoreUnavailable("down")
        self.calls.append(("set", key, ttl))
        await self.inner.set(key, value, ttl, tags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_record_never_touches_store_and_flush_is_one_hincr_per_hour() -> None:
    async def main() -> None:
        spy = SpyStore(MemoryStore())
        r = MetricsRecorder(spy, MetricsConfig(), instance_id="i1", now=lambda: T0 + 2 * HOUR)
        for i in range(30):
            r.record(rec(T0 + i, latency=10.0 * (i % 3 + 1)))
        for i in range(20):
            r.record(rec(T0 + HOUR + i, region="eu-west-1", cache="HIT", status=503, error="upstream_down"))
        assert spy.calls == []
        assert r.buffered == 50
        assert await r.flush() is True
        hincrs = [c for c in spy.calls if c[0] == "hincr"]
        assert hincrs == [("hincr", f"rollup:{H0}", 7 * 86400.0), ("hincr", f"rollup:{H0 + 1}", 7 * 86400.0)]
        assert all(c[2] == 3600.0 for c in spy.calls if c[0] == "set")
        assert r.buffered == 0

        rolls = await read_rollups(spy, T0, T0 + 2 * HOUR)
        assert [x.hour for x in rolls] == [H0, H0 + 1]
        first, second = rolls
        assert first.requests == 30 and first.errors == 0 and first.cache_hits == 0
        assert first.latency_ms_total == pytest.approx(600.0)
        assert first.breakdown("region") == {"us-east-1": 30}
        assert first.breakdown("country") == {"US": 30}
        assert first.breakdown("class") == {"agent-config": 30}
        assert {b: n for b, n in first.latency_buckets().items() if n} == {10.0: 10, 25.0: 10, 50.0: 10}
        assert len(first.latency_buckets()) == 12  # every bucket present, zero or not
        assert second.errors == 20 and second.cache_hits == 20 and second.cache_hit_ratio == 1.0
        assert second.breakdown("status") == {"5xx": 20}
        assert second.breakdown("error") == {"upstream_down": 20}
        assert second.percentiles("eu-west-1")["p50"] == pytest.approx(37.5)
        total = HourRollup.combine(rolls)
        assert total.requests == 50 and total.hours == 2
        assert json.loads(json.dumps(total.to_json()))["requests"] == 50

        raw = await read_raw(spy, H0 + 1)
        assert len(raw) == 20 and raw[0].error == "upstream_down"

    asyncio.run(main())


def test_store_outage_keeps_counts_and_retries() -> None:
    async def main() -> None:
        spy = SpyStore(MemoryStore())
        r = MetricsRecorder(spy, MetricsConfig(), instance_id="i1", now=lambda: T0 + 600)
        for i in range(10):
            r.record(rec(T0 + i))
        spy.down = True
        assert await r.flush() is False
        assert r.flush_failures == 1 and r.buffered == 10
        for i in range(5):
            r.record(rec(T0 + 100 + i))
        assert await r.flush() is False
        spy.down = False
        assert await r.flush() is True
        (roll,) = await read_rollups(spy, T0, T0)
        assert roll.requests == 15
        assert len(await read_raw(spy, H0)) == 15
        # nothing is written twice on the next flush
        assert await r.flush() is True
        (roll,) = await read_rollups(spy, T0, T0)
        assert roll.requests == 15

    asyncio.run(main())


def test_partial_failure_does_not_double_count() -> None:
    async def main() -> None:
        spy = SpyStore(MemoryStore())
        r = MetricsRecorder(spy, MetricsConfig(), instance_id="i1", now=lambda: T0 + 2 * HOUR)
        r.record(rec(T0 + 1))
        r.record(rec(T0 + HOUR + 1))
        spy.fail_on_hour = H0 + 1  # first hour written, second fails
        assert await r.flush() is False
        spy.fail_on_hour = None
        assert await r.flush() is True
        rolls = await read_rollups(spy, T0, T0 + HOUR)
        assert [x.requests for x in rolls] == [1, 1]

    asyncio.run(main())


def test_buffer_bound_drops_raw_records_but_not_counts() -> None:
    async def main() -> None:
        spy = SpyStore(MemoryStore())
        config = MetricsConfig(max_buffer=10)
        r = MetricsRecorder(spy, config, instance_id="i1", now=lambda: T0 + HOUR)
        spy.down = True
        for i in range(25):
            r.record(rec(T0 + i))
        assert await r.flush() is False
        assert r.dropped == 15 and r.buffered == 10
        fam = parse_exposition(r.render_prometheus())
        assert sample(fam, "edgerules_metrics_dropped_total") == 15
        spy.down = False
        assert await r.close() is True
        (roll,) = await read_rollups(spy, T0, T0)
        assert roll.requests == 25  # counts are exact
        raw = await read_raw(spy, H0)
        assert [x.timestamp for x in raw] == [T0 + i for i in range(15, 25)]  # the newest raw records kept

    asyncio.run(main())


def test_disabled_recorder_records_nothing() -> None:
    async def main() -> None:
        store = MemoryStore()
        r = MetricsRecorder(store, MetricsConfig(enabled=False), instance_id="i1")
        r.record(rec())
        assert r.buffered == 0
        await r.flush()
        assert await store.keys("") == []

    asyncio.run(main())


def test_unknown_regions_and_odd_values_are_bounded_in_rollups() -> None:
    async def main() -> None:
        store = MemoryStore()
        r = MetricsRecorder(store, MetricsConfig(), instance_id="i1", regions=["us-east-1"], now=lambda: T0)
        r.record(rec(region="made-up"))
        r.record(rec(region="us-east-1", country="X:Y\n", cls=None))
        await r.flush()
        (roll,) = await read_rollups(store, T0, T0)
        assert roll.breakdown("region") == {"other": 1, "us-east-1": 1}
        assert roll.breakdown("country") == {"US": 1, "other": 1}
        assert roll.breakdown("class") == {"agent-config": 1, "none": 1}

    asyncio.run(main())


def test_run_loop_flushes_in_background() -> None:
    async def main() -> None:
        store = MemoryStore()
        r = MetricsRecorder(store, MetricsConfig(flush_interval=0.01), instance_id="i1", now=lambda: T0)
        task = asyncio.create_task(r.run())
        r.record(rec())
        for _ in range(500):
            if await store.hgetall(f"rollup:{H0}"):
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await store.hgetall(f"rollup:{H0}"))["requests"] == 1

    asyncio.run(main())


async def _two_instances(store_a: Any, store_b: Any, n: int) -> list[HourRollup]:
    a = MetricsRecorder(store_a, MetricsConfig(), instance_id="a", now=lambda: T0 + HOUR)
    b = MetricsRecorder(store_b, MetricsConfig(), instance_id="b", now=lambda: T0 + HOUR)
    for step in range(10):  # interleaved records and concurrent flushes
        for i in range(n // 10):
            a.record(rec(T0 + step * 60 + i, latency=float(i % 200)))
            b.record(rec(T0 + step * 60 + i, latency=float(i % 200), region="eu-west-1", cache="HIT"))
        await asyncio.gather(a.flush(), b.flush())
    await asyncio.gather(a.close(), b.close())
    return await read_rollups(store_a, T0, T0 + HOUR)


def test_two_recorders_sharing_memory_store_count_exactly() -> None:
    store = MemoryStore()
    (roll,) = asyncio.run(_two_instances(store, store, 1000))
    assert roll.requests == 2000
    assert roll.breakdown("region") == {"eu-west-1": 1000, "us-east-1": 1000}
    assert roll.cache_hits == 1000


def test_two_recorders_sharing_diskcache_count_exactly(tmp_path: Any) -> None:
    async def main() -> None:
        config = StoreConfig(backend="diskcache", path=str(tmp_path / "state"))
        a, b = open_store(config), open_store(config)
        try:
            (roll,) = await _two_instances(a, b, 500)
            assert roll.requests == 1000
            assert len(await read_raw(a, H0)) == 1000
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_two_recorders_on_real_redis_survive_an_outage(redis_server: RedisServer) -> None:  # noqa: F811
    async def main() -> None:
        config = StoreConfig(backend="redis", url=redis_server.url, prefix="m:")
        a, b = open_store(config), open_store(config)
        try:
            (roll,) = await _two_instances(a, b, 500)
            assert roll.requests == 1000
            assert roll.breakdown("region") == {"eu-west-1": 500, "us-east-1": 500}
            r = MetricsRecorder(a, MetricsConfig(), instance_id="c", now=lambda: T0 + HOUR)
            redis_server.kill()
            for i in range(7):
                r.record(rec(T0 + i))
            assert await r.flush() is False  # store down: kept in memory
            redis_server.start()
            # the first call on a pooled connection to the dead server may still fail: the next tick retries
            flushed = [await r.flush() for _ in range(3)]
            assert flushed[0] is True or flushed[1] is True
            fresh = open_store(config)
            try:
                (roll,) = await read_rollups(fresh, T0, T0)
            finally:
                await fresh.close()
            assert roll.requests == 7  # the test server keeps nothing on disk: only what was held back
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


# --------------------------------------------------------------------------------------------------------
# collector documents


def test_collector_accepts_seed_document() -> None:
    body = json.dumps(
        {
            "region": "us-east-1",
            "cacheStatus": "HIT",
            "clientCountry": "US",
            "requestType": "agent-config",
            "latency": 12.5,
            "responseSize": 2048,
            "timestamp": int((T0 + 5) * 1000),  # Date.now() milliseconds
            "error": None,
        }
    ).encode()
    got = parse_collector_document(body, now=T0 + 60)
    assert isinstance(got, RequestRecord)
    assert got.timestamp == pytest.approx(T0 + 5)
    assert (got.region, got.cache_status, got.country, got.request_class) == (
        "us-east-1",
        "HIT",
        "US",
        "agent-config",
    )
    assert got.latency_ms == 12.5 and got.response_bytes == 2048 and got.status == 0 and got.error is None


def test_collector_accepts_arrays_and_iso_times() -> None:
    body = (
        b'[{"latency": 1, "timestamp": "2024-05-01T00:00:30Z", "status": 503, "error": "upstream_timeout"},'
        b' {"latency_ms": 2, "method": "post"}]'
    )
    got = parse_collector_document(body, now=T0 + 60)
    assert isinstance(got, list) and len(got) == 2
    assert got[0].timestamp == T0 + 30 and got[0].status == 503
    assert got[1].timestamp == T0 + 60 and got[1].method == "POST"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        (b'"a string"', "expected a JSON object"),
        (b"[]", "empty array"),
        (b'{"region": "x"}', "missing required field 'latency'"),
        (b'{"latency": null}', "must not be null"),
        (b'{"latency": "12"}', "'latency' must be a number"),
        (b'{"latency": true}', "'latency' must be a number"),
        (b'{"latency": -1}', "out of range"),
        (b'{"latency": NaN}', "invalid JSON number NaN"),
        (b'{"latency": 1e300}', "out of range"),
        (b'{"latency": 1, "status": 700}', "out of range"),
        (b'{"latency": 1, "status": 200.5}', "must be an integer"),
        (b'{"latency": 1, "region": 5}', "'region' must be a string"),
        (b'{"latency": 1, "region": "' + b"x" * 65 + b'"}', "too long"),
        (b'{"latency": 1, "region": "a\\nb"}', "printable"),
        (b'{"latency": 1, "responseSize": -5}', "out of range"),
        (b'{"latency": 1, "timestamp": 1}', "not a recent time"),
        (b'{"latency": 1, "timestamp": "yesterday"}', "ISO 8601"),
        (b'{"latency": 1, "colour": "red", "admin": true}', "unknown field(s): admin, colour"),
        (b'{"latency": 1, "latency_ms": 2}', "given twice"),
        (b'[{"latency": 1}, {"latency": -2}]', "item 1:"),
        (b"[" + b",".join([b'{"latency": 1}'] * 1001) + b"]", "too many items"),
    ],
)
def test_collector_rejects_bad_documents(body: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_collector_document(body, now=T0)


# --------------------------------------------------------------------------------------------------------
# access log


def test_access_log_never_contains_credentials() -> None:
    secret_jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
    extra = {
        "path": "/api/v1/agents?id=7&api_key=KEY-SECRET-1&token=TOK-SECRET-2",
        "user_agent": "curl/8",
        "Authorization": f"Bearer {secret_jwt}",
        "headers": {
            "X-API-Key": "KEY-SECRET-3",
            "Cookie": "session=COOKIE-SECRET-4",
            "Accept": "application/json",
            "X-Note": f"Bearer {secret_jwt}",
        },
        "access_token": "TOK-SECRET-5",
        "principal": "user-42",
    }
    line = access_log_line(rec(error="auth:expired"), extra)
    assert "\n" not in line
    data = json.loads(line)
    for secret in (
        secret_jwt,
        "KEY-SECRET-1",
        "TOK-SECRET-2",
        "KEY-SECRET-3",
        "COOKIE-SECRET-4",
        "TOK-SECRET-5",
    ):
        assert secret not in line
    assert "Authorization" not in data and "access_token" not in data
    assert data["headers"] == {"Accept": "application/json", "X-Note": "Bearer [redacted]"}
    assert data["path"] == "/api/v1/agents?id=7&api_key=[redacted]&token=[redacted]"
    assert data["principal"] == "user-42" and data["error"] == "auth:expired" and data["status"] == 200
    assert data["time"].startswith("2024-05-01T00:00:10")


def test_flush_lets_requests_run_between_slices():
    """A flush folds and encodes a slice of records at a time: other coroutines (requests) run in between,
    instead of waiting for the whole second's worth of records."""

    async def scenario() -> tuple[int, int]:
        recorder = MetricsRecorder(MemoryStore(), MetricsConfig(), instance_id="1", regions=["us-east-1"])
        now = time.time()
        for _ in range(MetricsRecorder.SLICE * 4):
            recorder.record(
                RequestRecord(now, 3.0, 1.0, "us-east-1", "MISS", "US", "api", 200, "GET", "api", None, 10)
            )
        async with LoopTicks() as ticks:
            assert await recorder.flush()
        return ticks.count, recorder.buffered

    interleaved, left = asyncio.run(scenario())
    assert interleaved >= 4  # folding 4 slices and encoding 4 more yielded at least once each
    assert left == 0

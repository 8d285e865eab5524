"""Analytics end to end: a real mitmdump, real origins and a real redis-server as the policy's store.

A known mix of requests must show up exactly in the hourly rollups (read back from Redis), in the Prometheus
text of `GET /__edgerules/metrics` and in `edgerules report --format json`; two proxies sharing one Redis add
up exactly; the collector endpoint folds seed documents in; admin endpoints need the token when the client is
outside `admin.allow_cidrs`; the access log has one JSON line per request and no credentials.

Every count is compared as a difference (after - before), so the tests do not depend on their order.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import pytest

from edgerules.observe.metrics import HOUR, HourRollup, read_rollups
from edgerules.policy.load import load_policy_file
from edgerules.policy.model import Policy
from edgerules.tools.commands._common import open_policy_store
from tests.support.origins import Origins, start_origins
from tests.support.policies import ENV, JWT_SECRET, write_policy
from tests.support.ports import free_port
from tests.support.processes import REPO_ROOT
from tests.support.proxy import Proxy, Response, http, start_mitmdump
from tests.support.redis_server import RedisServer, require_redis_server

pytestmark = pytest.mark.e2e

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
ADMIN_TOKEN = "e2e-admin-" + uuid.uuid4().hex
EDGE_ENV = {**ENV, "EDGERULES_ADMIN_TOKEN": ADMIN_TOKEN}
FLUSH_WAIT = 10.0  # upper bound for a flush to reach Redis (the e2e env flushes every 0.2 s)


def overlay(redis_url: str) -> dict:
    """Redis store, access log on, admin only from 10.99/16 (so loopback needs the token), a tiny IP limit."""
    return {
        "store": {"backend": "redis", "url": redis_url, "prefix": "e2e-metrics:"},
        # the collector test posts a record five hours back, into an hour no other test touches
        "metrics": {"access_log": True, "collector_max_age": "6h"},
        "admin": {"allow_cidrs": ["10.99.0.0/16"]},
        "rate_limits": [
            {"name": "api-key", "key": "api_key", "limit": 1000, "window": "1h", "per_key_override": True},
            {
                "name": "phone-numbers",
                "key": "client_ip",
                "limit": 1,
                "window": "1h",
                "match": {"prefix": "/api/v1/phone-numbers"},
            },
        ],
    }


def bearer(sub: str = "user-1") -> dict[str, str]:
    token = jwt.encode({"sub": sub, "role": "admin", "exp": int(time.time()) + 600}, JWT_SECRET, "HS256")
    return {"Authorization": f"Bearer {token}"}


def start_edge(policy: Path) -> Proxy:
    options = {"edgerules_policy": str(policy), "edgerules_env": "e2e"}
    return start_mitmdump(options=options, env=EDGE_ENV)


@dataclass
class Edge:
    proxy: Proxy
    origins: Origins
    redis: RedisServer
    policy: Path


@pytest.fixture(scope="module")
def origins() -> Iterator[Origins]:
    started = start_origins(list(REGIONS))
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture(scope="module")
def edge(tmp_path_factory, origins) -> Iterator[Edge]:
    require_redis_server()
    tmp = tmp_path_factory.mktemp("metrics")
    with RedisServer() as redis:
        ports = {name: origin.port for name, origin in origins.items()}
        policy = write_policy(tmp, ports, overlay(redis.url))
        proxy = start_edge(policy)
        try:
            yield Edge(proxy, origins, redis, policy)
        finally:
            proxy.stop()


# ------------------------------------------------------------------------------------------------ reading


def admin(edge: Edge, method: str, name: str, body: bytes | None = None, token: str | None = ADMIN_TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    return http(method, f"{edge.proxy.url}/__edgerules/{name}", headers, body)


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_prometheus(text: str) -> Samples:
    out: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m is not None, f"not a Prometheus sample line: {line!r}"
        labels = frozenset(_LABEL.findall(m["labels"] or ""))
        out[(m["name"], labels)] = float(m["value"])
    return out


def prometheus(edge: Edge) -> Samples:
    response = admin(edge, "GET", "metrics")
    assert response.status == 200, response.body
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse_prometheus(response.body.decode())


def series(samples: Samples, name: str) -> Counter[frozenset[tuple[str, str]]]:
    return Counter({labels: value for (n, labels), value in samples.items() if n == name})


def delta(after: Counter, before: Counter) -> Counter:
    out = Counter(after)
    out.subtract(before)
    return Counter({k: v for k, v in out.items() if v})


@functools.cache
def store_policy(path: str) -> Policy:
    """The compiled policy, for its store settings (the same in every version the tests write)."""
    return load_policy_file(path, "e2e", environ=EDGE_ENV).policy


def read_totals(policy: Path, since: float, until: float) -> HourRollup:
    """Rollups straight from the policy's Redis store, the hours holding `since`..`until` combined."""
    loaded = store_policy(str(policy))

    async def read() -> list[HourRollup]:
        store = open_policy_store(loaded)
        try:
            return await read_rollups(store, since, until)
        finally:
            await store.close()

    return HourRollup.combine(asyncio.run(read()))


def recent_totals(policy: Path) -> HourRollup:
    now = time.time()
    return read_totals(policy, now - HOUR, now)


def wait_for_requests(
    policy: Path, expected: int, read: Callable[[], HourRollup] | None = None
) -> HourRollup:
    """Wait until the store holds `expected` requests, then two more flush periods (so an over-count
    would show), and return the rollup."""
    read = read or (lambda: recent_totals(policy))
    deadline = time.monotonic() + FLUSH_WAIT
    total = read()
    while total.requests < expected and time.monotonic() < deadline:
        time.sleep(0.1)
        total = read()
    time.sleep(0.5)
    return read()


def report_totals(policy: Path) -> dict:
    """`edgerules report --format json` as a real subprocess against the same store."""
    argv = [sys.executable, "-m", "edgerules.tools.cli", "report", "--policy", str(policy), "--env", "e2e"]
    argv += ["--since", "1h", "--format", "json"]
    done = subprocess.run(
        argv, cwd=REPO_ROOT, env=_subprocess_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)["totals"]


def _subprocess_env() -> dict[str, str]:
    import os

    return {**os.environ, **EDGE_ENV}


# ---------------------------------------------------------------------------------------------- the mix


@dataclass
class Sent:
    """What the client saw, in the metrics' own terms."""

    rows: list[tuple[str, int, str | None, str, str, str | None]] = field(default_factory=list)

    def add(
        self, response: Response, *, region: str | None, cls: str, country: str, error: str | None = None
    ) -> None:
        cache = response.headers.get("CF-Cache-Status")
        self.rows.append((region or "none", response.status, cache, cls, country, error))

    def prometheus_requests(self) -> Counter[frozenset[tuple[str, str]]]:
        return Counter(
            frozenset(
                {
                    ("region", region),
                    ("status", str(status)),
                    ("cache_status", cache or "none"),
                    ("request_class", cls),
                }
            )
            for region, status, cache, cls, _, _ in self.rows
        )

    def rollup_fields(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for region, status, cache, cls, country, error in self.rows:
            out["requests"] += 1
            out[f"region:{region}"] += 1
            out[f"status:{status // 100}xx"] += 1
            out[f"class:{cls}"] += 1
            out[f"country:{country}"] += 1
            if cache:
                out[f"cache:{cache}"] += 1
                out["cache_hits"] += cache == "HIT"
            if error:
                out[f"error:{error.replace(':', '.')}"] += 1
            out["errors"] += error is not None or status >= 500
        return out


def send_mix(url: str, per_region: int) -> Sent:
    sent = Sent()
    # ok, routed by country to each of the three regions
    for country, region in (("US", "us-east-1"), ("GB", "eu-west-1"), ("JP", "us-west-2")):
        for i in range(per_region):
            r = http("GET", f"{url}/api/v1/calls/{i}", {"CF-IPCountry": country, **bearer()})
            assert r.status == 200 and r.json()["region"] == region, r.body
            sent.add(r, region=region, cls="call-management", country=country)
    # 401: no credentials
    for _ in range(3):
        r = http("GET", f"{url}/api/v1/agents/1", {"CF-IPCountry": "DE"})
        assert r.status == 401, r.body
        sent.add(r, region=None, cls="agent-config", country="DE", error="auth:missing")
    # 400: a path outside the allowlist
    for _ in range(2):
        r = http("GET", f"{url}/admin", {"CF-IPCountry": "CA", **bearer()})
        assert r.status == 400, r.body
        sent.add(r, region=None, cls="api-call", country="CA", error="path_not_allowed")
    # cache: a MISS, then (once the background store landed) HITs answered at the edge
    probe = f"{url}/health?probe={uuid.uuid4().hex}"
    r = http("GET", probe, {"CF-IPCountry": "FR"})
    assert r.status == 200 and r.headers["CF-Cache-Status"] == "MISS"
    sent.add(r, region="eu-west-1", cls="api-call", country="FR")
    hits = 0
    for _ in range(50):
        r = http("GET", probe, {"CF-IPCountry": "FR"})
        assert r.status == 200
        hit = r.headers["CF-Cache-Status"] == "HIT"
        sent.add(r, region=None if hit else "eu-west-1", cls="api-call", country="FR")
        hits += hit
        if hits == 2:
            break
        if not hit:
            time.sleep(0.05)
    assert hits == 2
    # 429: the second request within the window of a 1-per-hour limit
    r = http("GET", f"{url}/api/v1/phone-numbers", {"CF-IPCountry": "US", **bearer()})
    assert r.status == 200, r.body
    sent.add(r, region="us-east-1", cls="api-call", country="US")
    r = http("GET", f"{url}/api/v1/phone-numbers", {"CF-IPCountry": "US", **bearer()})
    assert r.status == 429 and "Retry-After" in r.headers, r.body
    sent.add(r, region=None, cls="api-call", country="US", error="rate_limited:phone-numbers")
    return sent


def test_known_mix_agrees_in_rollups_prometheus_and_report(edge: Edge) -> None:
    rollup_before = wait_for_requests(edge.policy, 0)
    prom_before = prometheus(edge)
    report_before = report_totals(edge.policy)

    sent = send_mix(edge.proxy.url, per_region=4)
    expected = sent.rollup_fields()
    assert expected["requests"] == len(sent.rows) >= 12 + 3 + 2 + 3 + 2

    # rollups, read from Redis
    rollup_after = wait_for_requests(edge.policy, rollup_before.requests + expected["requests"])
    got = delta(Counter({k: int(v) for k, v in rollup_after.fields.items()}), Counter(rollup_before.fields))
    for name in ("requests", "errors", "cache_hits"):
        assert got[name] == expected[name], name
    for prefix in ("region:", "status:", "cache:", "class:", "country:", "error:"):
        assert {k: v for k, v in got.items() if k.startswith(prefix)} == {
            k: v for k, v in expected.items() if k.startswith(prefix)
        }, prefix
    buckets = sum(v for k, v in got.items() if k.startswith("lat_bucket:"))
    assert buckets == expected["requests"]
    # answered at the edge (401, 400, cache HITs, 429): no region
    assert (got["region:none"], got["region:us-east-1"], got["region:us-west-2"]) == (8, 5, 4)

    # Prometheus
    prom_after = prometheus(edge)
    requests = delta(
        series(prom_after, "edgerules_requests_total"), series(prom_before, "edgerules_requests_total")
    )
    assert requests == sent.prometheus_requests()
    auth = delta(
        series(prom_after, "edgerules_auth_failures_total"),
        series(prom_before, "edgerules_auth_failures_total"),
    )
    assert auth == Counter({frozenset({("reason", "missing")}): 3})
    limited = delta(
        series(prom_after, "edgerules_rate_limited_total"),
        series(prom_before, "edgerules_rate_limited_total"),
    )
    assert limited == Counter({frozenset({("rule", "phone-numbers")}): 1})
    healthy = series(prom_after, "edgerules_region_healthy")
    assert healthy == Counter({frozenset({("region", r)}): 1.0 for r in REGIONS})
    count_key = ("edgerules_request_duration_seconds_count", frozenset())
    assert prom_after[count_key] - prom_before.get(count_key, 0) == expected["requests"]

    # the report CLI (JSON) over the same store
    report_after = report_totals(edge.policy)
    assert report_after["requests"] - report_before["requests"] == expected["requests"]
    assert report_after["errors"] - report_before["errors"] == expected["errors"]
    assert report_after["cache_hits"] - report_before["cache_hits"] == expected["cache_hits"]
    regions = delta(Counter(report_after["regions"]), Counter(report_before["regions"]))
    assert regions == Counter(
        {k[len("region:") :]: v for k, v in expected.items() if k.startswith("region:")}
    )
    kinds = delta(Counter(report_after["error_kinds"]), Counter(report_before["error_kinds"]))
    assert kinds == Counter({"auth.missing": 3, "path_not_allowed": 2, "rate_limited.phone-numbers": 1})
    assert report_after["requests"] == rollup_after.requests


def reload_counts(edge: Edge) -> tuple[Counter, dict]:
    samples = prometheus(edge)
    status = admin(edge, "GET", "status").json()["reload"]
    return series(samples, "edgerules_policy_reloads_total"), status


def test_reload_counters_agree_with_status(edge: Edge) -> None:
    # the policy watcher (every 1 s) may also pick the file changes up: compare with /status, not guesses
    prom_before, status_before = reload_counts(edge)
    good = admin(edge, "POST", "reload", b"")
    assert good.status == 200 and good.json()["reloaded"] is True
    original = edge.policy.read_text()
    try:
        edge.policy.write_text(original + "\n  nonsense: [")
        bad = admin(edge, "POST", "reload", b"")
        assert bad.status == 422 and bad.json()["reloaded"] is False
        assert bad.json()["last_error"]
        assert prometheus(edge)[("edgerules_policy_last_reload_success", frozenset())] == 0
    finally:
        edge.policy.write_text(original)
    assert admin(edge, "POST", "reload", b"").status == 200
    prom_after, status_after = reload_counts(edge)
    got = delta(prom_after, prom_before)
    successes = got[frozenset({("result", "success")})]
    failures = got[frozenset({("result", "failure")})]
    assert successes >= 2 and failures >= 1
    assert successes == status_after["reloads"] - status_before["reloads"]
    assert failures == status_after["failures"] - status_before["failures"]
    assert prometheus(edge)[("edgerules_policy_last_reload_success", frozenset())] == 1
    assert admin(edge, "GET", "status").json()["reload"]["last_error"] is None


def test_reload_can_switch_metrics_off_and_on(edge: Edge) -> None:
    original = edge.policy.read_text()
    ports = {name: origin.port for name, origin in edge.origins.items()}
    off = overlay(edge.redis.url)
    off["metrics"] = {"enabled": False, "access_log": False}
    name = "edgerules_requests_total"

    def calls(n: int) -> None:
        for i in range(n):
            r = http("GET", f"{edge.proxy.url}/api/v1/calls/{i}", {"CF-IPCountry": "US", **bearer()})
            assert r.status == 200

    try:
        write_policy(edge.policy.parent, ports, off, name=edge.policy.name)
        assert admin(edge, "POST", "reload", b"").status == 200
        before = prometheus(edge)
        rollup_before = wait_for_requests(edge.policy, 0)
        calls(3)
        assert delta(series(prometheus(edge), name), series(before, name)) == Counter()
        assert wait_for_requests(edge.policy, 0).requests == rollup_before.requests
    finally:
        edge.policy.write_text(original)
    assert admin(edge, "POST", "reload", b"").status == 200
    before = prometheus(edge)
    calls(2)
    assert sum(delta(series(prometheus(edge), name), series(before, name)).values()) == 2


def test_report_table_html_out_and_bad_since(edge: Edge, tmp_path, monkeypatch) -> None:
    from edgerules.tools.cli import main

    for name, value in EDGE_ENV.items():
        monkeypatch.setenv(name, value)
    assert http("GET", f"{edge.proxy.url}/api/v1/calls/9", {"CF-IPCountry": "JP", **bearer()}).status == 200
    now = time.time()
    stored = wait_for_requests(edge.policy, 1, lambda: read_totals(edge.policy, now - 2 * HOUR, now))
    base = ["report", "--policy", str(edge.policy), "--env", "e2e"]
    table = io.StringIO()
    assert main([*base, "--since", "2h"], out=table) == 0
    assert "edgerules report: aybiza (e2e)" in table.getvalue()
    total_line = table.getvalue().splitlines()[-1].split()
    assert total_line[:3] == ["total", str(stored.requests), str(stored.errors)]
    target = tmp_path / "report.html"
    said = io.StringIO()
    assert main([*base, "--format", "html", "--out", str(target)], out=said) == 0
    assert str(target) in said.getvalue()
    assert target.read_text().startswith("<!DOCTYPE html>")
    bad = io.StringIO()
    assert main([*base, "--since", "yesterday"], out=bad) == 2
    assert "--since" in bad.getvalue()


def test_report_says_when_the_store_is_down(tmp_path, monkeypatch) -> None:
    from edgerules.tools.cli import main

    for name, value in EDGE_ENV.items():
        monkeypatch.setenv(name, value)
    policy = write_policy(
        tmp_path, {r: free_port() for r in REGIONS}, overlay(f"redis://127.0.0.1:{free_port()}/0")
    )
    out = io.StringIO()
    assert main(["report", "--policy", str(policy), "--env", "e2e", "--format", "json"], out=out) == 1
    assert "store redis unavailable" in out.getvalue()


# ------------------------------------------------------------------------------------------- collector


def test_collector_folds_a_seed_document_into_the_rollups(edge: Edge) -> None:
    # the seed's dataPoint (timestamp in ms) five hours back: its own rollup hour, untouched by other tests
    ts = time.time() - 5 * HOUR
    hour_rollup = lambda: read_totals(edge.policy, ts, ts)  # noqa: E731
    before = hour_rollup()
    document = {
        "timestamp": int(ts * 1000),
        "region": "us-west-2",
        "cacheStatus": "MISS",
        "clientCountry": "SE",
        "requestType": "agent-config",
        "latency": 42.5,
        "responseSize": 512,
    }
    response = admin(edge, "POST", "analytics", json.dumps(document).encode())
    assert response.status == 200, response.body
    assert response.json() == {"accepted": 1}
    after = wait_for_requests(edge.policy, before.requests + 1, hour_rollup)
    got = delta(Counter({k: int(v) for k, v in after.fields.items()}), Counter(before.fields))
    assert got["requests"] == 1
    assert got["region:us-west-2"] == got["country:SE"] == got["cache:MISS"] == got["class:agent-config"] == 1
    assert got["bytes_total"] == 512


def test_collector_refuses_malformed_json_and_get(edge: Edge) -> None:
    bad = admin(edge, "POST", "analytics", b'{"latency": 12,')
    assert bad.status == 400
    assert bad.headers["Content-Type"] == "application/json"
    assert "malformed JSON" in bad.json()["error"]
    missing = admin(edge, "POST", "analytics", b'{"region": "us-east-1"}')
    assert missing.status == 400 and "latency" in missing.json()["error"]
    get = admin(edge, "GET", "analytics")
    assert get.status == 405
    assert get.headers["Allow"] == "POST"


# ---------------------------------------------------------------------------------------- admin access


@pytest.mark.parametrize("name", ["status", "metrics", "health"])
def test_admin_needs_the_token_outside_allow_cidrs(edge: Edge, name: str) -> None:
    unknown = http("GET", f"{edge.proxy.url}/__edgerules/no-such-endpoint")
    for response in (
        admin(edge, "GET", name, token=None),
        admin(edge, "GET", name, token="wrong-" + ADMIN_TOKEN),
        admin(edge, "GET", name, token=ADMIN_TOKEN[:-1]),
        http("GET", f"{edge.proxy.url}/__edgerules/{name}", {"Authorization": ADMIN_TOKEN}),
    ):
        assert response.status == 404
        assert response.body == unknown.body  # indistinguishable from a path that does not exist
    assert admin(edge, "GET", name).status == 200


def test_admin_post_endpoints_need_the_token_too(edge: Edge) -> None:
    before = prometheus(edge)
    for name in ("reload", "cache/purge", "analytics"):
        assert admin(edge, "POST", name, b'{"all": true}', token=None).status == 404
    after = prometheus(edge)
    reloads = "edgerules_policy_reloads_total"
    assert series(after, reloads) == series(before, reloads)


# ------------------------------------------------------------------------------------------ access log


def access_log_records(output: str, marker: str) -> list[dict]:
    """The JSON access-log lines about paths carrying `marker` (mitmdump's own flow lines are not JSON)."""
    out = []
    for line in output.splitlines():
        if marker not in line or "{" not in line:
            continue
        try:
            record = json.loads(line[line.index("{") :])
        except ValueError:
            continue
        if isinstance(record, dict) and marker in str(record.get("path")):
            out.append(record)
    return out


def test_access_log_one_json_line_per_request_without_credentials(edge: Edge) -> None:
    marker = "log-" + uuid.uuid4().hex[:12]  # short enough not to look like a secret (those are redacted)
    token = bearer("log-user")
    api_key = "API-Key ak_" + uuid.uuid4().hex
    offset = len(edge.proxy.output())
    requests = [
        (f"/api/v1/calls/{marker}", token, 200),
        (f"/api/v1/agents/{marker}", {"Authorization": api_key}, 401),
        (f"/api/v1/agents/{marker}/x", {}, 401),
    ]
    for path, headers, status in requests:
        assert http("GET", f"{edge.proxy.url}{path}", {"CF-IPCountry": "US", **headers}).status == status
    assert admin(edge, "GET", "status").status == 200  # not a request of the edge: not logged
    deadline = time.monotonic() + 5
    while len(access_log_records(edge.proxy.output()[offset:], marker)) < len(requests):
        assert time.monotonic() < deadline, edge.proxy.output()[offset:]
        time.sleep(0.05)
    time.sleep(0.2)
    output = edge.proxy.output()[offset:]
    records = access_log_records(output, marker)
    assert [(r["path"], r["status"]) for r in records] == [(p, s) for p, _, s in requests]
    assert records[0]["region"] == "us-east-1"
    assert [r["error"] for r in records] == [None, "auth:unknown_key", "auth:missing"]
    secrets = [token["Authorization"].split()[1], api_key.split()[1], ADMIN_TOKEN, JWT_SECRET]
    for secret in secrets:
        assert secret not in output


# ------------------------------------------------------------------------------------- two instances


def test_two_instances_sharing_redis_add_up_exactly(tmp_path, origins) -> None:
    require_redis_server()
    n = 15
    with RedisServer() as redis:
        ports = {name: origin.port for name, origin in origins.items()}
        policy = write_policy(tmp_path, ports, overlay(redis.url))
        proxies: list[Proxy] = []
        try:
            # started from this thread: the support code ties a child's life to the thread that forked it
            proxies.append(start_edge(policy))
            proxies.append(start_edge(policy))
            first, second = proxies
            assert first.port != second.port
            for i in range(n):
                for proxy in (first, second):
                    r = http("GET", f"{proxy.url}/api/v1/calls/{i}", {"CF-IPCountry": "GB", **bearer()})
                    assert r.status == 200
            total = wait_for_requests(policy, 2 * n)
        finally:
            for proxy in proxies:
                proxy.stop()
        assert total.requests == 2 * n
        assert total.breakdown("region") == {"eu-west-1": 2 * n}
        assert total.breakdown("country") == {"GB": 2 * n}
        assert total.errors == 0

"""Exact counts under concurrency: rate limits and metrics rollups, on one instance and on two sharing Redis.

Two real mitmdumps (each with its own copy of the same policy file, so each instance's `edgerules report` is
run against its own configuration) in front of real origins, one real redis-server. Helpers come from the
auth and metrics end-to-end suites; every count is an exact equality, compared as a difference.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgerules.observe.metrics import HourRollup
from tests.e2e.test_e2e_auth import Stack, away_from_window_edge, get, new_key, unique_path
from tests.e2e.test_e2e_metrics import (
    EDGE_ENV,
    bearer,
    parse_prometheus,
    recent_totals,
    report_totals,
    series,
)
from tests.support.origins import Origins, start_origins
from tests.support.policies import write_policy
from tests.support.proxy import Proxy, Response, http, start_mitmdump
from tests.support.redis_server import RedisServer, require_redis_server

pytestmark = [pytest.mark.e2e, pytest.mark.resilience]

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
LIMIT = 7
CLIENTS = 50


@dataclass
class Pair:
    """Two edges sharing one Redis; `stack` is the first, in the shape the auth suite's helpers take."""

    stack: Stack
    policies: list[Path]

    @property
    def proxies(self) -> list[Proxy]:
        return self.stack.proxies


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    require_redis_server()
    tmp = tmp_path_factory.mktemp("accuracy")
    origins: Origins = start_origins(list(REGIONS))
    redis = RedisServer()
    proxies: list[Proxy] = []
    try:
        redis.start()
        # 2 s store timeout: under a 50-request burst on a busy CI box the event loop can stall past 250 ms
        overlay = {
            "store": {"backend": "redis", "url": redis.url, "prefix": "accuracy:", "timeout": "2s"},
            "metrics": {"flush_interval": "0.2s"},
        }
        ports = {name: o.port for name, o in origins.items()}
        policies = [write_policy(tmp, ports, overlay, name=f"edge-{i}.yaml") for i in range(2)]
        for policy in policies:  # from this thread: children die with the thread that forked them
            options = {"edgerules_policy": str(policy), "edgerules_env": "e2e"}
            proxies.append(start_mitmdump(options=options, env=EDGE_ENV))
        yield Pair(Stack(origins, redis, policies[0], proxies), policies)
    finally:
        for proxy in proxies:
            proxy.stop()
        redis.stop()
        origins.stop_all()


def burst(calls: list) -> list[Response]:
    """Run the zero-argument callables all at once (one thread each), answers in call order."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def assert_exactly_limit_passed(pair: Pair, responses: list[Response], path: str) -> None:
    statuses = Counter(r.status for r in responses)
    assert statuses == {200: LIMIT, 429: CLIENTS - LIMIT}, statuses
    assert pair.stack.origin_hits(path) == LIMIT
    remaining = sorted(int(r.headers["RateLimit-Remaining"]) for r in responses if r.status == 200)
    assert remaining == list(range(LIMIT))  # each slot handed out once: no two requests saw the same count
    for r in responses:
        if r.status == 429:
            assert r.headers["RateLimit-Remaining"] == "0" and int(r.headers["Retry-After"]) >= 1


# ------------------------------------------------------------------------------------------ rate limits


def test_50_concurrent_clients_on_one_instance_get_exactly_the_limit(pair: Pair) -> None:
    key, _ = new_key(pair.stack, "--rate-limit", f"{LIMIT}/1h")
    path = unique_path()
    away_from_window_edge(3600)
    proxy = pair.proxies[0]
    responses = burst([lambda: get(proxy, path, "API-Key " + key)] * CLIENTS)
    assert_exactly_limit_passed(pair, responses, path)


def test_50_concurrent_clients_across_two_instances_share_one_limit(pair: Pair) -> None:
    key, _ = new_key(pair.stack, "--rate-limit", f"{LIMIT}/1h")
    path = unique_path()
    away_from_window_edge(3600)
    first, second = pair.proxies
    calls = [lambda p=(first if i % 2 else second): get(p, path, "API-Key " + key) for i in range(CLIENTS)]
    responses = burst(calls)
    assert_exactly_limit_passed(pair, responses, path)
    # the budget stays spent on both instances
    for proxy in pair.proxies:
        assert get(proxy, unique_path(), "API-Key " + key).status == 429


def test_limits_of_different_keys_do_not_leak_into_each_other(pair: Pair) -> None:
    keys = [new_key(pair.stack, "--rate-limit", f"{LIMIT}/1h")[0] for _ in range(3)]
    away_from_window_edge(3600)
    calls = [
        lambda k=keys[i % 3], p=pair.proxies[i % 2]: get(p, unique_path(), "API-Key " + k) for i in range(45)
    ]
    responses = burst(calls)
    passed = Counter(keys[i % 3] for i, r in enumerate(responses) if r.status == 200)
    assert passed == dict.fromkeys(keys, LIMIT)
    assert Counter(r.status for r in responses) == {200: 3 * LIMIT, 429: 45 - 3 * LIMIT}


# ---------------------------------------------------------------------------------------------- rollups


def settled(policy: Path) -> HourRollup:
    """The rollup once no flush is pending: two reads a few flush periods apart agree."""
    deadline = time.monotonic() + 15
    previous = recent_totals(policy)
    while True:
        time.sleep(0.6)
        current = recent_totals(policy)
        if current.fields == previous.fields or time.monotonic() > deadline:
            return current
        previous = current


def wait_until(policy: Path, requests: float) -> HourRollup:
    deadline = time.monotonic() + 15
    while recent_totals(policy).requests < requests and time.monotonic() < deadline:
        time.sleep(0.1)
    return settled(policy)


def prometheus_requests(proxy: Proxy) -> float:
    response = http("GET", f"{proxy.url}/__edgerules/metrics")  # loopback: the default admin allowlist
    assert response.status == 200, response.body
    return sum(series(parse_prometheus(response.body.decode()), "edgerules_requests_total").values())


def test_rollups_from_two_concurrent_instances_add_up_exactly(pair: Pair) -> None:
    n = 40
    before = settled(pair.policies[0])
    reports_before = [report_totals(policy) for policy in pair.policies]
    prom_before = [prometheus_requests(proxy) for proxy in pair.proxies]

    headers = {"CF-IPCountry": "GB", **bearer("accuracy")}
    calls = [
        lambda i=i, p=proxy: http("GET", f"{p.url}/api/v1/calls/acc-{i}", headers)
        for i in range(n)
        for proxy in pair.proxies
    ]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda call: call(), calls))
    assert Counter(r.status for r in responses) == {200: 2 * n}

    after = wait_until(pair.policies[0], before.requests + 2 * n)
    got = Counter({k: int(v) for k, v in after.fields.items()})
    got.subtract(Counter({k: int(v) for k, v in before.fields.items()}))
    assert got["requests"] == 2 * n
    assert got["region:eu-west-1"] == got["country:GB"] == got["status:2xx"] == 2 * n
    assert got["class:call-management"] == 2 * n
    assert got["errors"] == 0
    assert sum(v for k, v in got.items() if k.startswith("lat_bucket:")) == 2 * n

    # each instance's own report (its own policy file, the same shared store) sees both instances' requests
    for policy, report_before in zip(pair.policies, reports_before, strict=True):
        report = report_totals(policy)
        assert report["requests"] - report_before["requests"] == 2 * n
        assert report["regions"].get("eu-west-1", 0) - report_before["regions"].get("eu-west-1", 0) == 2 * n
        assert report["requests"] == after.requests

    # ... while each instance counted exactly its own half
    for proxy, count_before in zip(pair.proxies, prom_before, strict=True):
        assert prometheus_requests(proxy) - count_before == n

"""Scale-out: three `edgerules serve` processes on ports of their own, sharing one real redis-server.

The deployment `docs/operations.md` ("Several instances sharing Redis") describes: one policy, a Redis store
with one prefix, several lean `edgerules serve` runners (no load balancer here: the test spreads requests over
the instances itself). Rate-limit budgets, the response cache with its purges and the metrics rollups must be
global, not per instance. Tests run in file order on one module-scoped stack; every path and key is unique.
"""

from __future__ import annotations

import io
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgerules.tools.cli import main as cli_main
from tests.support.origins import Origins
from tests.support.policies import ENV, ORIGIN_MODE_CACHE_RULES, bearer
from tests.support.proxy import Proxy, Response, http, start_edge_process
from tests.support.ratelimits import assert_one_budget
from tests.support.redis_server import RedisServer
from tests.support.shared_store import (
    add_api_key,
    away_from_window_edge,
    poll_until,
    recent_rollup,
    redis_edges,
    store_keys,
)

pytestmark = pytest.mark.e2e

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
INSTANCES = 3
PREFIX = "e2e-scale:"
STATUS = "CF-Cache-Status"
ADMIN_TOKEN = "e2e-scale-admin-" + uuid.uuid4().hex
# The admin token is required: loopback is not in allow_cidrs (a load balancer's address would not be either).
SERVE_ENV = {**ENV, "EDGERULES_ADMIN_TOKEN": ADMIN_TOKEN}
FLUSH_WAIT = 10.0  # upper bound for a metrics flush to reach Redis (the e2e env flushes every 0.2 s)


@dataclass
class Cluster:
    origins: Origins
    redis: RedisServer
    policy: Path
    edges: list[Proxy]

    def origin_hits(self, path: str) -> int:
        return sum(origin.hits(path) for origin in self.origins.values())

    def admin(
        self, edge: Proxy, method: str, name: str, body: object = None, *, token: str | None = ADMIN_TOKEN
    ) -> Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return http(method, f"{edge.url}/__edgerules/{name}", headers, json=body)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    names = iter(range(INSTANCES))

    def start(policy: Path) -> Proxy:
        return start_edge_process(
            policy, environ=SERVE_ENV, serve=True, name=f"edgerules-serve-{next(names)}"
        )

    overlay = {"cache": {"rules": ORIGIN_MODE_CACHE_RULES}, "admin": {"allow_cidrs": ["10.99.0.0/16"]}}
    directory = tmp_path_factory.mktemp("scale-out")
    with redis_edges(directory, REGIONS, PREFIX, start, INSTANCES, overlay) as (
        origins,
        redis,
        policy,
        edges,
    ):
        yield Cluster(origins, redis, policy, edges)


def get(edge: Proxy, path: str, headers: dict[str, str]) -> Response:
    return http("GET", f"{edge.url}{path}", headers)


# ------------------------------------------------------------------------------------------------ the stack


def test_instances_listen_apart_and_serve_the_same_policy_from_the_same_store(cluster):
    assert len({edge.port for edge in cluster.edges}) == INSTANCES
    statuses = []
    for edge in cluster.edges:
        assert cluster.admin(edge, "GET", "status", token=None).status == 404  # loopback alone is not enough
        response = cluster.admin(edge, "GET", "status")
        assert response.status == 200, response.body
        statuses.append(response.json())
    assert len({s["policy"]["version"] for s in statuses}) == 1
    assert all(s["store"]["ok"] is True for s in statuses), [s["store"] for s in statuses]
    assert all(s["policy"]["environment"] == "e2e" for s in statuses)


# -------------------------------------------------------------------------------------------- rate limits


def test_one_rate_limit_budget_across_all_instances_under_concurrency(cluster):
    limit, sent = 6, 30  # 10 requests to each instance, all at once
    key = add_api_key(cluster.policy, "scale-user", rate_limit=(limit, 3600))
    path = f"/api/v1/calls/scale-{uuid.uuid4().hex}"  # not cacheable: every 200 reaches an origin
    headers = {"Authorization": f"API-Key {key}", "CF-IPCountry": "US"}
    away_from_window_edge(3600)
    with ThreadPoolExecutor(sent) as pool:
        responses = list(
            pool.map(lambda i: (i % INSTANCES, get(cluster.edges[i % INSTANCES], path, headers)), range(sent))
        )

    statuses = Counter(r.status for _, r in responses)
    assert statuses == {200: limit, 429: sent - limit}, statuses
    assert cluster.origin_hits(path) == limit
    per_instance = Counter(i for i, r in responses if r.status in (200, 429))
    assert per_instance == dict.fromkeys(
        range(INSTANCES), sent // INSTANCES
    )  # every instance answered its share
    # one counter: the remaining budgets handed out by the three instances are each value exactly once
    assert_one_budget((r for _, r in responses), limit)
    # and it stays spent on every instance
    for edge in cluster.edges:
        assert get(edge, path, headers).status == 429


# ----------------------------------------------------------------------------------------------- the cache


def test_cache_entries_and_purges_are_shared_by_all_instances(cluster):
    a, b, c = cluster.edges
    path = f"/api/v1/agents/scale-{uuid.uuid4().hex}"
    alice = bearer("alice", role="agent", permissions=("read",))
    before = store_keys(cluster.policy, "cache:")

    def new_entries() -> set[str]:
        return store_keys(cluster.policy, "cache:") - before

    first = get(a, path, alice)
    assert first.status == 200, first.body
    assert first.headers[STATUS] == "MISS"
    # Stored in the background right after the response: wait for the entry in Redis, without asking A again.
    assert poll_until(new_entries, bool, timeout=5), "the MISS through A was never stored"
    for edge in (b, c):  # each one's very first request for the path
        shared = get(edge, path, alice)
        assert shared.headers[STATUS] == "HIT", edge
        assert shared.body == first.body
    assert cluster.origin_hits(path) == 1
    assert get(b, path, bearer("bob", role="agent", permissions=("read",))).headers[STATUS] == "MISS"
    assert cluster.origin_hits(path) == 2  # shared between instances, still never between users

    assert cluster.admin(a, "POST", "cache/purge", {"prefix": path}, token=None).status == 404
    purged = cluster.admin(a, "POST", "cache/purge", {"prefix": path})
    assert purged.status == 200, purged.body
    assert purged.json()["purged"] >= 2  # alice's and bob's entries
    assert not new_entries()
    before = store_keys(cluster.policy, "cache:")
    # B and C served the old entry a moment ago: neither may still answer from it.
    refetched = get(b, path, alice)
    assert refetched.headers[STATUS] == "MISS"
    assert refetched.body != first.body  # a fresh origin answer (its X-Authenticated-At differs)
    assert cluster.origin_hits(path) == 3
    assert poll_until(new_entries, bool, timeout=5), "the MISS through B was never stored"
    for edge in (c, a):
        again = get(edge, path, alice)
        assert again.headers[STATUS] == "HIT", edge
        assert again.body == refetched.body
    assert cluster.origin_hits(path) == 3


# --------------------------------------------------------------------------------------------- the metrics


def test_metrics_rollups_add_up_over_all_instances(cluster, monkeypatch):
    # A country no other test here uses: its rollup count is exactly what this test sent, whatever ran before.
    country, counts = "NZ", (3, 4, 5)
    for edge, n in zip(cluster.edges, counts, strict=True):
        for i in range(n):
            r = get(edge, f"/api/v1/calls/scale-metrics-{i}", {"CF-IPCountry": country, **bearer()})
            assert r.status == 200, r.body
    expected = sum(counts)

    def nz() -> int:
        return recent_rollup(cluster.policy).breakdown("country").get(country, 0)

    assert poll_until(nz, lambda n: n >= expected, timeout=FLUSH_WAIT, interval=0.1) == expected
    # two more flush periods: a double flush or a lost increment would show now
    assert poll_until(nz, lambda n: n != expected, timeout=0.5, interval=0.1) == expected

    # `edgerules report` over the same store says the same
    for name, value in SERVE_ENV.items():
        monkeypatch.setenv(name, value)
    out = io.StringIO()
    argv = ["report", "--policy", str(cluster.policy), "--env", "e2e", "--since", "2h", "--format", "json"]
    assert cli_main(argv, out=out) == 0, out.getvalue()
    assert json.loads(out.getvalue())["totals"]["countries"][country] == expected

"""Two edges (`edgerules serve` and `mitmdump -s addon.py`) sharing a real 3-master Redis Cluster on loopback.

The store contract itself runs against the cluster (and Sentinel) in tests/unit/stores/test_stores.py; here the edges use
it end to end: one rate-limit budget across both, cache entries and purges shared, keys spread over the masters.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgerules.stores import StoreConfig, open_store
from tests.support.origins import Origins, start_origins
from tests.support.policies import ENV, bearer, write_policy
from tests.support.proxy import Proxy, http, start_edge_process
from tests.support.ratelimits import assert_one_budget
from tests.support.redis_cluster import RedisCluster, redis_cluster  # noqa: F401  (fixture)
from tests.support.shared_store import add_api_key, away_from_window_edge, poll_until, store_keys

pytestmark = pytest.mark.e2e

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
STATUS = "CF-Cache-Status"


@dataclass
class Stack:
    cluster: RedisCluster
    origins: Origins
    policy: Path
    edges: list[Proxy]


@pytest.fixture(scope="module")
def stack(redis_cluster: RedisCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:  # noqa: F811
    directory = tmp_path_factory.mktemp("redis-cluster")
    prefix = f"e2e-cluster-{uuid.uuid4().hex[:8]}:"
    store = {"backend": "redis", "url": redis_cluster.url, "prefix": prefix, "timeout": "2s"}
    with start_origins(REGIONS) as origins:
        policy = write_policy(directory, {r: o.port for r, o in origins.items()}, {"store": store})
        edges = [
            start_edge_process(policy, environ=ENV, serve=True, name="serve-on-cluster"),
            start_edge_process(policy, environ=ENV, serve=False, name="mitmdump-on-cluster"),
        ]
        try:
            yield Stack(redis_cluster, origins, policy, edges)
        finally:
            for edge in edges:
                edge.stop()


def test_one_rate_limit_budget_across_two_edges_on_the_cluster(stack: Stack) -> None:
    limit, sent = 10, 40
    key = add_api_key(stack.policy, "cluster-user", rate_limit=(limit, 3600))
    path = f"/api/v1/calls/cluster-{uuid.uuid4().hex}"
    headers = {"Authorization": f"API-Key {key}", "CF-IPCountry": "US"}
    away_from_window_edge(3600)
    with ThreadPoolExecutor(sent) as pool:
        responses = list(
            pool.map(lambda i: http("GET", f"{stack.edges[i % 2].url}{path}", headers), range(sent))
        )
    statuses = Counter(r.status for r in responses)
    assert statuses == {200: limit, 429: sent - limit}, statuses
    assert_one_budget(responses, limit)
    # the edge's keys really are spread over the masters (each command went to its slot's owner)
    owners = stack.cluster.slot_owners()
    assert sum(1 for n in owners.values() if n > 0) >= 2, owners


def test_cache_entries_and_purges_are_shared_through_the_cluster(stack: Stack) -> None:
    a, b = stack.edges
    path = f"/api/v1/agents/cluster-{uuid.uuid4().hex}"
    alice = {"CF-IPCountry": "US", **bearer("alice", role="agent", permissions=("read",))}
    before = store_keys(stack.policy, "cache:")
    first = http("GET", f"{a.url}{path}", alice)
    assert (first.status, first.headers[STATUS]) == (200, "MISS"), first.body
    assert poll_until(lambda: store_keys(stack.policy, "cache:") - before, bool, timeout=5)
    shared = http("GET", f"{b.url}{path}", alice)
    assert shared.headers[STATUS] == "HIT"
    assert shared.body == first.body
    purged = http("POST", f"{b.url}/__edgerules/cache/purge", json={"prefix": path})
    assert purged.status == 200, purged.body
    assert purged.json()["purged"] >= 1
    assert http("GET", f"{a.url}{path}", alice).headers[STATUS] == "MISS"


@pytest.mark.asyncio
async def test_cluster_setting_with_a_plain_url(redis_cluster: RedisCluster) -> None:  # noqa: F811
    url = f"redis://127.0.0.1:{redis_cluster.ports[1]}/0"
    store = open_store(StoreConfig(backend="redis", url=url, cluster=True, prefix="plain-url:", timeout=5.0))
    try:
        for i in range(30):  # keys in many slots: a single-node client would get MOVED errors
            await store.set(f"k{i}", str(i).encode())
        assert [await store.get(f"k{i}") for i in range(30)] == [str(i).encode() for i in range(30)]
        assert (await store.health()).ok
        assert await store.purge_prefix("") == 30
    finally:
        await store.close()

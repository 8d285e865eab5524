"""The cache's standards behaviour end to end (RFC 9111 revalidation, RFC 5861 stale extensions, Age,
invalidation through Location): a real mitmdump with the addon and real origins.

The origins are steered per request with ``X-Test-Response-Headers`` and answer 304 themselves to a matching
``If-None-Match``. An entry that must already be stale when stored gets an ``Age`` from the origin (no sleeping
for max-age to run out); a revalidation's 304 carries the headers of the request that caused it, so that request
decides how fresh the refreshed entry is. Background effects are polled for, briefly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.support.origins import Origins, start_origins
from tests.support.policies import ENV, ORIGIN_MODE_CACHE_RULES, write_policy
from tests.support.policies import bearer as support_bearer
from tests.support.proxy import Proxy, Response, http, start_edge_process

pytestmark = pytest.mark.e2e

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
STATUS = "CF-Cache-Status"
POLL_SECONDS = 3.0

# A memory store (one edge process): its writes finish without yielding, so background stores complete in the
# order they started and `Edge.stored` is an exact barrier.
OVERLAY = {"store": {"backend": "memory"}, "cache": {"rules": ORIGIN_MODE_CACHE_RULES}}


def bearer(sub: str = "alice") -> dict[str, str]:
    return support_bearer(sub, role="agent", permissions=("read",))


def steer(origin_headers: dict[str, str], **extra: str) -> dict[str, str]:
    """Request headers: a bearer token and the headers the origin is to answer with."""
    return {**bearer(), "X-Test-Response-Headers": json.dumps(origin_headers), **extra}


def poll(send: Callable[[], Any], done: Callable[[Any], bool], timeout: float = POLL_SECONDS) -> Any:
    """Repeat ``send`` until ``done(result)`` (or ``timeout`` passes); the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = send()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


class Edge:
    def __init__(self, proxy: Proxy, origins: Origins) -> None:
        self.proxy = proxy
        self.origins = origins

    def get(self, path: str, headers: dict[str, str] | None = None) -> Response:
        return http("GET", f"{self.proxy.url}{path}", headers)

    def seen(self, path: str) -> list[dict[str, Any]]:
        """Every request for ``path`` the origins logged (any region)."""
        return [r for o in self.origins.values() for r in o.stats()["log"] if r["path"] == path]

    def conditional(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.seen(path) if "If-None-Match" in r["headers"]]

    def stored(self, tag: str) -> None:
        """Wait until a cacheable request made now is stored: the stores of earlier requests have run too."""
        path = f"/health?sentinel={tag}"
        assert self.get(path).headers[STATUS] == "MISS"
        assert poll(lambda: self.get(path), lambda r: r.headers[STATUS] == "HIT").headers[STATUS] == "HIT"


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    origins = start_origins(list(REGIONS))
    directory = tmp_path_factory.mktemp("cache-rfc")
    policy = write_policy(directory, {name: o.port for name, o in origins.items()}, OVERLAY)
    try:
        proxy = start_edge_process(policy, environ=ENV)
    except BaseException:
        origins.stop_all()
        raise
    try:
        yield Edge(proxy, origins)
    finally:
        proxy.stop()
        origins.stop_all()


def test_stale_while_revalidate_answers_at_once_and_revalidates_once(edge):
    path = "/api/v1/analytics/swr"
    stale_entry = {
        "Cache-Control": "public, max-age=1, stale-while-revalidate=30",
        "ETag": '"v1"',
        "Age": "10",
    }
    first = edge.get(path, steer(stale_entry))
    assert first.status == 200 and first.headers[STATUS] == "MISS"
    edge.stored("swr")

    # The 304 of the revalidation carries these headers: the refreshed entry is fresh for 10 minutes.
    refreshed = steer({"Cache-Control": "public, max-age=600", "ETag": '"v1"'})
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda _: edge.get(path, refreshed), range(4)))
    assert answers[0].status == 200
    assert {a.headers[STATUS] for a in answers} <= {"STALE", "HIT"} and "STALE" in {
        a.headers[STATUS] for a in answers
    }
    assert all(a.json() == first.json() for a in answers)  # the stored body, not a new origin answer

    conditional = poll(lambda: edge.conditional(path), lambda c: len(c) >= 1)
    assert len(conditional) == 1
    assert conditional[0]["headers"]["If-None-Match"] == '"v1"'
    after = poll(lambda: edge.get(path, refreshed), lambda r: r.headers[STATUS] == "HIT")
    assert after.headers[STATUS] == "HIT" and after.json() == first.json()
    assert int(after.headers["Age"]) < 10  # the age clock restarted at the 304
    assert len(edge.conditional(path)) == 1  # exactly one revalidation reached an origin
    assert len(edge.seen(path)) == 2  # the first fetch and that revalidation


def test_expired_entry_with_an_etag_is_revalidated_by_a_304(edge):
    path = "/api/v1/analytics/revalidate"
    first = edge.get(path, steer({"Cache-Control": "public, max-age=1", "ETag": '"v2"', "Age": "10"}))
    assert first.status == 200 and first.headers[STATUS] == "MISS"
    edge.stored("revalidate")

    fresh_for_a_while = {"Cache-Control": "public, max-age=600", "ETag": '"v2"'}
    revalidated = edge.get(path, steer(fresh_for_a_while))
    assert revalidated.status == 200
    assert revalidated.headers[STATUS] == "REVALIDATED"
    assert revalidated.json() == first.json()  # the stored body, freshened
    assert revalidated.headers["ETag"] == '"v2"'
    (conditional,) = edge.conditional(path)
    assert conditional["headers"]["If-None-Match"] == '"v2"'
    reached = len(edge.seen(path))
    hit = edge.get(path, steer(fresh_for_a_while))
    assert hit.headers[STATUS] == "HIT" and hit.json() == first.json()
    assert len(edge.seen(path)) == reached


def test_revalidation_answers_a_conditional_client_with_304(edge):
    path = "/api/v1/analytics/revalidate-304"
    edge.get(path, steer({"Cache-Control": "public, max-age=1", "ETag": '"v3"', "Age": "10"}))
    edge.stored("revalidate-304")
    answer = edge.get(
        path, steer({"Cache-Control": "public, max-age=600", "ETag": '"v3"'}, **{"If-None-Match": '"v3"'})
    )
    assert answer.status == 304 and answer.body == b""
    assert answer.headers[STATUS] == "REVALIDATED"
    assert answer.headers["ETag"] == '"v3"'
    assert len(edge.conditional(path)) == 1


def test_changed_resource_replaces_the_expired_entry(edge):
    path = "/api/v1/analytics/changed"
    first = edge.get(path, steer({"Cache-Control": "public, max-age=1", "ETag": '"old"', "Age": "10"}))
    edge.stored("changed")
    changed = steer({"Cache-Control": "public, max-age=600", "ETag": '"new"'}, **{"X-Version": "2"})
    second = edge.get(path, changed)
    assert second.status == 200 and second.headers[STATUS] == "EXPIRED"
    assert second.json() != first.json() and second.json()["headers"]["X-Version"] == "2"
    assert second.json()["headers"]["If-None-Match"] == '"old"'  # asked conditionally, got a new body
    third = poll(lambda: edge.get(path, changed), lambda r: r.headers[STATUS] == "HIT")
    assert third.headers[STATUS] == "HIT" and third.json() == second.json()


def test_a_304_for_another_entry_is_followed_by_an_unconditional_fetch(edge):
    path = "/api/v1/analytics/mismatch"
    edge.get(path, steer({"Cache-Control": "public, max-age=1", "ETag": '"mine"', "Age": "10"}))
    edge.stored("mismatch")
    odd = steer({"ETag": '"someone-else"'}, **{"X-Test-Status": "304"})  # an origin answering 304 regardless
    edge.get(path, odd)
    _, conditional, refetch = edge.seen(path)
    assert conditional["headers"]["If-None-Match"] == '"mine"'
    assert "If-None-Match" not in refetch["headers"]  # RFC 9111 4.3.3: retried without conditions


def test_hits_carry_the_current_age(edge):
    path = "/api/v1/analytics/age"
    first = edge.get(path, steer({"Cache-Control": "public, max-age=600", "Age": "100"}))
    assert first.headers[STATUS] == "MISS"
    hit = poll(lambda: edge.get(path, steer({})), lambda r: r.headers[STATUS] == "HIT")
    assert hit.headers[STATUS] == "HIT"
    assert 100 <= int(hit.headers["Age"]) < 160  # the origin's Age plus the time spent in the cache
    fixed = poll(lambda: edge.get("/health?check=age"), lambda r: r.headers[STATUS] == "HIT")
    assert fixed.headers[STATUS] == "HIT" and 0 <= int(fixed.headers["Age"]) < 60


def test_unsafe_request_invalidates_its_location_targets(edge):
    alice = bearer()
    target, representation = "/api/v1/agents/created-by-post", "/api/v1/agents/other-representation"
    for path in (target, representation):
        edge.get(path, alice)
        hit = poll(lambda path=path: edge.get(path, alice), lambda r: r.headers[STATUS] == "HIT")
        assert hit.headers[STATUS] == "HIT"
    location = {"Location": target, "Content-Location": f"../agents/{representation.rsplit('/', 1)[1]}"}
    posted = http(
        "POST",
        f"{edge.proxy.url}/api/v1/agents/",
        {**alice, "X-Test-Response-Headers": json.dumps(location)},
        json={"name": "new"},
    )
    assert posted.status == 200
    for path in (target, representation):  # RFC 9111 4.4: both same-origin targets are dropped too
        after = poll(lambda path=path: edge.get(path, alice), lambda r: r.headers[STATUS] != "HIT")
        assert after.headers[STATUS] == "MISS"


def test_stale_if_error_on_5xx_and_on_a_dead_origin(edge):
    """Last in the file: it kills every origin (restarted at the end)."""
    sie_path, plain_path = "/api/v1/analytics/sie", "/api/v1/analytics/no-sie"
    edge.get(sie_path, steer({"Cache-Control": "public, max-age=1, stale-if-error=600", "Age": "10"}))
    first_plain = edge.get(
        plain_path, steer({"Cache-Control": "public, max-age=1", "ETag": '"p"', "Age": "10"})
    )
    assert first_plain.status == 200
    edge.stored("sie")
    stored_body = edge.seen(sie_path)[0]

    on_503 = edge.get(sie_path, steer({}, **{"X-Test-Status": "503"}))
    assert on_503.status == 200 and on_503.headers[STATUS] == "STALE"
    assert (
        on_503.json()["headers"]["X-Test-Response-Headers"]
        == stored_body["headers"]["X-Test-Response-Headers"]
    )
    plain_503 = edge.get(plain_path, steer({}, **{"X-Test-Status": "503"}))
    assert plain_503.status == 503 and plain_503.headers[STATUS] == "EXPIRED"

    try:
        for origin in edge.origins.values():
            origin.kill()
        dead = edge.get(sie_path, steer({}))
        assert dead.status == 200 and dead.headers[STATUS] == "STALE"
        assert dead.json()["path"] == sie_path
        plain = edge.get(plain_path, steer({}))
        assert plain.status >= 500 and plain.headers[STATUS] == "EXPIRED"
        assert "error" in plain.json()
    finally:
        for origin in edge.origins.values():
            origin.restart()

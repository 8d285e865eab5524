"""The shared cache's RFC behaviour end to end, as the public conformance suite checks it (the suite itself is not
part of this repository: `CACHE_TESTS=... make conformance`). A real edge - `mitmdump -s addon.py`, or `edgerules
serve` under EDGERULES_E2E_RUNNER=serve - on a plain origin-mode cache policy (examples/conformance.yaml's), in
front of the demo origin steered per request with ``X-Test-Status`` / ``X-Test-Response-Headers``.

No polling here: once a client has a response the cache stores, the very next request must see the entry
(read-your-writes), and an unsafe method's invalidation is done before its response is released.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.origins import start_origin
from tests.support.processes import VENV_BIN
from tests.support.proxy import Proxy, Response, http, start_edge_process

pytestmark = pytest.mark.e2e

STATUS = "X-Cache-Status"


def policy_document(origin_url: str, store: dict) -> dict:
    return {
        "version": 1,
        "name": "conformance-e2e",
        "regions": {"origin": {"upstream": origin_url}},
        "routing": {"default": ["origin"], "timeout": "3s", "connect_timeout": "1s"},
        "health": {"path": "/health", "interval": "30s", "passive": {"failures": 1000000}},
        "store": store,
        "cache": {
            "status_header": STATUS,
            "targeted_field": "Edgerules-Cache-Control",
            "invalidation": "any",
            "rules": [
                {
                    "name": "rfc9111",
                    "match": {"prefix": "/"},
                    "mode": "origin",
                    "statuses": "any",
                    "store_set_cookie": True,
                    "replay_set_cookie": True,
                    "stale_if_error": "1h",
                }
            ],
        },
    }


def start_edge(
    directory: Path, origin_url: str, store: dict | None = None, *, serve: bool | None = None
) -> Proxy:
    store = store or {"backend": "diskcache", "path": str(directory / "state")}
    path = directory / f"policy-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(json.dumps(policy_document(origin_url, store)))
    if serve is None:
        serve = os.environ.get("EDGERULES_E2E_RUNNER") == "serve"
    return start_edge_process(path, environ=dict(os.environ), env_name="", serve=serve)


@pytest.fixture(scope="module")
def origin():
    with start_origin("o") as o:
        yield o


@pytest.fixture(scope="module")
def edge(origin, tmp_path_factory):
    proxy = start_edge(tmp_path_factory.mktemp("conformance"), origin.url)
    try:
        yield proxy
    finally:
        proxy.stop()


def unique(name: str) -> str:
    return f"/c/{name}-{uuid.uuid4().hex[:10]}"


def get(proxy: Proxy, path: str, origin_headers: dict[str, str] | None = None, **extra: str) -> Response:
    headers = dict(extra)
    if origin_headers is not None:
        headers["X-Test-Response-Headers"] = json.dumps(origin_headers)
    return http("GET", f"{proxy.url}{path}", headers)


def served_by_origin(origin, path: str) -> int:
    return origin.hits(path)


# ---------------------------------------------------------------------------------------- read-your-writes


def test_the_next_request_sees_a_stored_response_at_once(edge, origin):
    """RFC 9111 3: a stored response is reusable at once; the edge stores before the client has the response,
    so even with Vary (two store writes) and no pause at all, the second request is a hit - every time."""
    for i in range(15):
        path = unique(f"ryw{i}")
        headers = {"Cache-Control": "max-age=300", "Vary": "Accept-Language"}
        first = get(edge, path, headers, **{"Accept-Language": "nb"})
        second = get(edge, path, headers, **{"Accept-Language": "nb"})
        assert first.headers[STATUS] == "MISS"
        assert second.headers[STATUS] == "HIT", f"round {i}: the entry was not visible yet"
        assert second.body == first.body
    assert origin.hits(path) == 1


def test_an_unsafe_methods_invalidation_is_done_before_its_response(edge, origin):
    """RFC 9111 4.4: a successful POST invalidates the target URI; the next GET must not get the old entry."""
    for i in range(10):
        path = unique(f"inv{i}")
        cacheable = {"Cache-Control": "max-age=300"}
        assert get(edge, path, cacheable).headers[STATUS] == "MISS"
        assert get(edge, path, cacheable).headers[STATUS] == "HIT"
        assert http("POST", f"{edge.url}{path}", {}, b"x").status == 200
        after = get(edge, path, cacheable)
        assert after.headers[STATUS] == "MISS", f"round {i}: served the invalidated entry"


# ------------------------------------------------------------------------------------------ what is stored


@pytest.mark.parametrize("status", [404, 410, 500, 503, 599])
def test_an_error_status_with_explicit_freshness_is_reused(edge, origin, status):
    """RFC 9111 3: a final status may be stored when the response has explicit freshness."""
    path = unique(f"status{status}")
    extra = {"X-Test-Status": str(status)}
    first = get(edge, path, {"Cache-Control": "max-age=300"}, **extra)
    second = get(edge, path, {"Cache-Control": "max-age=300"}, **extra)
    assert (first.status, second.status) == (status, status)
    assert second.headers[STATUS] == "HIT"
    assert origin.hits(path) == 1


def test_an_error_status_without_freshness_is_not_stored(edge, origin):
    path = unique("status500-none")
    for _ in range(2):
        assert get(edge, path, {}, **{"X-Test-Status": "500"}).status == 500
    assert origin.hits(path) == 2


@pytest.mark.parametrize(
    "expires",
    ["Thu, 18 Aug 2050 02:01:18 UTC", "Thu, 18 Aug 50 02:01:18 GMT", "Thu, 18-Aug-2050 02:01:18 GMT"],
)
def test_an_invalid_expires_is_already_stale(edge, origin, expires):
    """RFC 9111 5.3 + RFC 9110 5.6.7: only the three HTTP-date forms; anything else means expired."""
    path = unique("expires")
    for _ in range(2):
        get(edge, path, {"Expires": expires})
    assert origin.hits(path) == 2


def test_age_list_counts_by_its_first_value(edge, origin):
    path = unique("age")
    for _ in range(2):
        get(edge, path, {"Cache-Control": "max-age=3600", "Age": "7200, 0"})
    assert origin.hits(path) == 2  # 7200 s old: already stale


def test_connection_listed_fields_are_neither_forwarded_nor_stored(edge, origin):
    path = unique("connection")
    headers = {"Cache-Control": "max-age=300", "Connection": "a, b", "a": "1", "b": "2", "c": "3"}
    for expected in ("MISS", "HIT"):
        r = get(edge, path, headers)
        assert r.headers[STATUS] == expected
        assert r.headers["c"] == "3" and r.headers["a"] is None and r.headers["b"] is None


def test_set_cookie_is_stored_and_replayed_when_the_policy_says_so(edge, origin):
    path = unique("cookie")
    headers = {"Cache-Control": "max-age=300", "Set-Cookie": "lang=en"}
    first, second = get(edge, path, headers), get(edge, path, headers)
    assert second.headers[STATUS] == "HIT"
    assert second.headers["Set-Cookie"] == first.headers["Set-Cookie"] == "lang=en"


def test_a_range_request_is_answered_from_the_stored_200(edge, origin):
    """RFC 9110 14: a cache may answer a Range request from a stored complete response: 206, or 416."""
    path = unique("range")
    full = get(edge, path, {"Cache-Control": "max-age=300"})
    part = get(edge, path, Range="bytes=0-1")
    assert part.status == 206 and part.headers[STATUS] == "HIT"
    assert part.body == full.body[:2]
    assert part.headers["Content-Range"] == f"bytes 0-1/{len(full.body)}"
    assert part.headers["Content-Length"] == "2"
    beyond = get(edge, path, Range=f"bytes={len(full.body)}-")
    assert beyond.status == 416 and beyond.headers["Content-Range"] == f"bytes */{len(full.body)}"
    assert origin.hits(path) == 1


# ------------------------------------------------------------------------------- CDN-Cache-Control (RFC 9213)


def test_cdn_cache_control_takes_precedence_and_the_policys_targeted_field_goes_first(edge, origin):
    short_cdn = unique("cdn-short")
    for _ in range(2):
        get(edge, short_cdn, {"Cache-Control": "max-age=3600", "CDN-Cache-Control": "max-age=0"})
    assert origin.hits(short_cdn) == 2

    no_store = unique("cdn-nostore")
    for _ in range(2):
        get(edge, no_store, {"Cache-Control": "max-age=3600", "CDN-Cache-Control": "no-store"})
    assert origin.hits(no_store) == 2

    fresh = unique("cdn-fresh")
    for _ in range(2):
        r = get(edge, fresh, {"Cache-Control": "no-store", "CDN-Cache-Control": "max-age=600"})
    assert origin.hits(fresh) == 1
    assert r.headers["CDN-Cache-Control"] == "max-age=600"  # for CDNs further down: forwarded

    ours = unique("edgerules-cc")
    headers = {"CDN-Cache-Control": "no-store", "Edgerules-Cache-Control": "max-age=600"}
    first, second = get(edge, ours, headers), get(edge, ours, headers)
    assert second.headers[STATUS] == "HIT" and origin.hits(ours) == 1
    assert (
        first.headers["Edgerules-Cache-Control"] is None and second.headers["Edgerules-Cache-Control"] is None
    )


# ------------------------------------------------------------------------------------------- stale-if-error


def test_stale_is_served_when_the_origin_fails_unless_the_response_forbids_it(tmp_path):
    origin = start_origin("sie")
    edge = start_edge(tmp_path, origin.url)
    try:
        allowed, forbidden = unique("sie-ok"), unique("sie-no-cache")
        assert get(edge, allowed, {"Cache-Control": "max-age=1"}).status == 200
        assert get(edge, forbidden, {"Cache-Control": "max-age=1, no-cache"}).status == 200
        time.sleep(1.5)
        origin.stop()
        stale = get(edge, allowed)
        assert stale.status == 200 and stale.headers[STATUS] == "STALE"
        assert get(edge, forbidden).status >= 500  # no-cache: never served without the origin
    finally:
        edge.stop()
        origin.stop()


# ----------------------------------------------------------------------------------------- purge by Cache-Tag


def test_cache_tag_purge_across_three_edges_sharing_one_redis(redis_server, tmp_path, origin):
    """Responses labelled with Cache-Tag are purged on every instance by `POST /__edgerules/cache/purge` and by
    `edgerules cache purge --tag`; the label never reaches the client."""
    store = {"backend": "redis", "url": redis_server.url}
    edges = [start_edge(tmp_path, origin.url, store, serve=True) for _ in range(3)]
    try:
        news, sport = unique("news"), unique("sport")
        tagged = {"Cache-Control": "max-age=600", "Cache-Tag": "News, front"}
        first = get(edges[0], news, tagged)
        assert first.headers["Cache-Tag"] is None
        get(edges[0], sport, {"Cache-Control": "max-age=600", "Cache-Tag": "sport"})
        for edge in edges:
            assert get(edge, news).headers[STATUS] == "HIT"
            assert get(edge, sport).headers[STATUS] == "HIT"

        purge = http("POST", f"{edges[1].url}/__edgerules/cache/purge", json={"tags": ["NEWS"]})
        assert purge.status == 200 and purge.json()["purged"] >= 1
        for edge in edges:
            assert get(edge, news).headers[STATUS] == "MISS"  # (this answer has no freshness: not stored)
            assert get(edge, sport).headers[STATUS] == "HIT"
        assert get(edges[2], news, tagged).headers[STATUS] == "MISS"  # stored again
        assert get(edges[0], news).headers[STATUS] == "HIT"
        assert http("POST", f"{edges[1].url}/__edgerules/cache/purge", json={"tags": [""]}).status == 400

        policy = next(tmp_path.glob("policy-*.yaml"))
        cli = subprocess.run(
            [str(VENV_BIN / "edgerules"), "cache", "purge", "--policy", str(policy), "--tag", "front"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert "purged" in cli.stdout
        for edge in edges:
            assert get(edge, news).headers[STATUS] == "MISS"
    finally:
        for edge in edges:
            edge.stop()


# ----------------------------------------------------------------------------------------------- the flood


def test_a_flood_keeps_memory_flat_and_entries_visible_at_once(tmp_path, origin):
    """Thousands of cacheable misses from 16 clients: every response is stored before it is released (the
    next request for the same URL is a HIT), and the edge's memory does not grow with the flood."""
    edge = start_edge(tmp_path, origin.url, serve=True)
    headers = {"X-Test-Response-Headers": json.dumps({"Cache-Control": "max-age=600"})}

    def rss() -> int:
        with open(f"/proc/{edge.pid}/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:")) * 1024

    def client(n: int) -> int:
        misses_seen_as_hits = 0
        for _ in range(n):
            path = f"/flood/{uuid.uuid4().hex}"
            http("GET", f"{edge.url}{path}", headers)
            misses_seen_as_hits += http("GET", f"{edge.url}{path}", headers).headers[STATUS] == "HIT"
        return misses_seen_as_hits

    try:
        with ThreadPoolExecutor(16) as pool:
            assert sum(pool.map(client, [20] * 16)) == 320  # warm-up
            before = rss()
            deadline = time.monotonic() + 240
            hits = sum(pool.map(client, [60] * 16))
            assert time.monotonic() < deadline
        assert hits == 960  # every second request of a URL: a HIT, never "not visible yet"
        grown = rss() - before
        assert grown < 64 * 1024**2, f"the edge grew by {grown / 1024**2:.0f} MB during the flood"
    finally:
        edge.stop()

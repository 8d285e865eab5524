"""The response cache end to end: a real mitmdump with the addon, real origins, a real redis-server.

Every cache status is read from the response headers and every "the origin was (not) reached" from the origins'
own request counters. Stores happen in a background task right after the response, so a HIT is polled for
(briefly) instead of slept for; a "not stored" is proven with a later request's store as a sentinel (background
tasks start in order and the storability decision is taken before the store's first await).
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import time
from collections.abc import Callable

import pytest

from edgerules.auth.apikeys import ApiKeyStore
from edgerules.policy.load import load_policy_file
from edgerules.stores import open_store
from edgerules.tools.cli import main as cli_main
from tests.support.origins import Origins, start_origins
from tests.support.policies import ENV, JWT_SECRET, ORIGIN_MODE_CACHE_RULES, write_policy
from tests.support.policies import bearer as support_bearer
from tests.support.ports import free_port
from tests.support.processes import VENV_BIN
from tests.support.proxy import Proxy, Response, http, start_edge_process
from tests.support.shared_store import poll_until
from tests.support.shared_store import redis_edges as shared_redis_edges

pytestmark = pytest.mark.e2e

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
STATUS = "CF-Cache-Status"
POLL_SECONDS = 2.0

# The seed's rules, plus analytics in origin mode (freshness, Vary and validators from the origin).
CACHE_OVERLAY = {"cache": {"rules": ORIGIN_MODE_CACHE_RULES}}


def bearer(sub: str = "alice") -> dict[str, str]:
    return support_bearer(sub, role="agent", permissions=("read",))


def origin_hits(origins: Origins, path: str) -> int:
    return sum(origin.hits(path) for origin in origins.values())


def poll_hit(send: Callable[[], Response], timeout: float = POLL_SECONDS) -> Response:
    """Repeat ``send`` until the answer is a cache HIT (or ``timeout`` passes); the last answer."""
    return poll_until(send, lambda response: response.headers.get(STATUS) == "HIT", timeout)


def start_edge(policy_path, env=ENV) -> Proxy:
    return start_edge_process(policy_path, environ=env)


class Edge:
    def __init__(self, proxy: Proxy, origins: Origins, policy_path) -> None:
        self.proxy = proxy
        self.origins = origins
        self.policy_path = policy_path

    def get(self, path: str, headers: dict[str, str] | None = None) -> Response:
        return http("GET", f"{self.proxy.url}{path}", headers)

    def sentinel_stored(self, tag: str) -> None:
        """Wait until a fresh cacheable request made now is stored: every earlier store task has run."""
        path = f"/health?sentinel={tag}"
        assert self.get(path).headers[STATUS] == "MISS"
        assert poll_hit(lambda: self.get(path)).headers[STATUS] == "HIT"


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    origins = start_origins(list(REGIONS))
    directory = tmp_path_factory.mktemp("cache-edge")
    policy = write_policy(directory, {name: o.port for name, o in origins.items()}, CACHE_OVERLAY)
    try:
        proxy = start_edge(policy)
    except BaseException:
        origins.stop_all()
        raise
    try:
        yield Edge(proxy, origins, policy)
    finally:
        proxy.stop()
        origins.stop_all()


def test_second_health_is_a_hit_with_the_seed_headers(edge):
    first = edge.get("/health?check=seed")
    assert first.status == 200
    assert first.headers[STATUS] == "MISS"
    second = poll_hit(lambda: edge.get("/health?check=seed"))
    assert second.status == 200
    assert second.headers[STATUS] == "HIT"
    assert second.headers["X-CF-Cache-Status"] == "HIT"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", second.headers["X-Cache-Processed"])
    assert second.json() == first.json()
    assert second.headers["X-Frame-Options"] == "DENY"  # response rules still apply to cached answers


def _first_hit(send: Callable[[], Response]) -> tuple[Response, set[bytes]]:
    """Poll until a HIT; also the bodies of the MISSes before it (the store runs in the background, so a poll can
    miss again and that response may be the one stored)."""
    missed: set[bytes] = set()

    def remember() -> Response:
        response = send()
        if response.headers.get(STATUS) != "HIT":
            missed.add(response.body)
        return response

    return poll_hit(remember), missed


def _same_path_two_principals(edge: Edge, path: str, alice: dict[str, str], bob: dict[str, str]) -> None:
    a1 = edge.get(path, alice)
    assert a1.status == 200, a1.body
    assert a1.headers[STATUS] == "MISS"
    a2, alice_bodies = _first_hit(lambda: edge.get(path, alice))
    assert a2.headers[STATUS] == "HIT"
    assert a2.body in alice_bodies | {a1.body}  # one of Alice's own responses
    reached = origin_hits(edge.origins, path)
    b1 = edge.get(path, bob)
    assert b1.status == 200
    assert b1.headers[STATUS] == "MISS"  # never Alice's entry
    assert b1.body != a2.body
    assert origin_hits(edge.origins, path) == reached + 1
    # B's own entry is B's: after it is stored, A and B each keep getting their own response.
    b2, bob_bodies = _first_hit(lambda: edge.get(path, bob))
    assert b2.headers[STATUS] == "HIT" and b2.body in bob_bodies | {b1.body}
    assert b2.body not in alice_bodies | {a1.body}
    reached = origin_hits(edge.origins, path)
    assert edge.get(path, alice).body == a2.body
    assert origin_hits(edge.origins, path) == reached


def test_one_users_agent_config_is_never_served_to_another_bearer(edge):
    path = "/api/v1/agents/agent-7"
    _same_path_two_principals(edge, path, bearer("alice"), bearer("bob"))
    assert edge.get(path, bearer("alice")).json()["headers"]["X-User-ID"] == "alice"
    assert edge.get(path, bearer("bob")).json()["headers"]["X-User-ID"] == "bob"


def _add_api_key(policy_path, user: str) -> str:
    policy = load_policy_file(str(policy_path), "e2e", environ=ENV).policy

    async def add() -> str:
        store = open_store(policy.store)
        try:
            key, _record = await ApiKeyStore(store).add(user, "agent", ["read"])
            return key
        finally:
            await store.close()

    return asyncio.run(add())


def test_one_users_agent_config_is_never_served_to_another_api_key(edge):
    alice = {"Authorization": f"API-Key {_add_api_key(edge.policy_path, 'key-alice')}"}
    bob = {"Authorization": f"API-Key {_add_api_key(edge.policy_path, 'key-bob')}"}
    path = "/api/v1/agents/agent-key"
    _same_path_two_principals(edge, path, alice, bob)
    assert edge.get(path, bob).json()["headers"]["X-User-ID"] == "key-bob"


@pytest.mark.parametrize(
    ("name", "origin_headers"),
    [
        ("no-store", {"Cache-Control": "no-store"}),
        ("private", {"Cache-Control": "private, max-age=600"}),
        ("cookie", {"Set-Cookie": "session=s3cr3t; HttpOnly"}),
    ],
)
def test_uncacheable_origin_responses_are_not_stored(edge, name, origin_headers):
    path = f"/api/v1/agents/uncacheable-{name}"
    headers = {**bearer("alice"), "X-Test-Response-Headers": json.dumps(origin_headers)}
    first = edge.get(path, headers)
    assert first.status == 200
    assert first.headers[STATUS] == "MISS"
    edge.sentinel_stored(name)
    second = edge.get(path, headers)
    assert second.status == 200
    assert second.headers[STATUS] == "MISS"
    assert origin_hits(edge.origins, path) == 2


def test_origin_mode_keeps_vary_variants_apart_and_answers_304_itself(edge):
    path = "/api/v1/analytics/calls"
    origin_headers = {"Cache-Control": "public, max-age=600", "ETag": '"v1"', "Vary": "Accept-Language"}
    base = {**bearer("alice"), "X-Test-Response-Headers": json.dumps(origin_headers)}
    english = {**base, "Accept-Language": "en"}
    german = {**base, "Accept-Language": "de"}

    en1 = edge.get(path, english)
    assert en1.status == 200 and en1.headers[STATUS] == "MISS"
    assert poll_hit(lambda: edge.get(path, english)).headers[STATUS] == "HIT"
    reached = origin_hits(edge.origins, path)
    de1 = edge.get(path, german)
    assert de1.status == 200 and de1.headers[STATUS] == "MISS"
    assert de1.json()["headers"]["Accept-Language"] == "de"
    assert origin_hits(edge.origins, path) == reached + 1
    de2 = poll_hit(lambda: edge.get(path, german))
    assert de2.headers[STATUS] == "HIT" and de2.json()["headers"]["Accept-Language"] == "de"
    reached = origin_hits(edge.origins, path)
    en2 = edge.get(path, english)
    assert en2.headers[STATUS] == "HIT" and en2.json()["headers"]["Accept-Language"] == "en"
    assert origin_hits(edge.origins, path) == reached

    revalidate = edge.get(path, {**english, "If-None-Match": '"v1"'})
    assert revalidate.status == 304
    assert revalidate.body == b""
    assert revalidate.headers["ETag"] == '"v1"'
    assert origin_hits(edge.origins, path) == reached  # answered by the cache, never reached the origin
    stale_tag = edge.get(path, {**english, "If-None-Match": '"v0"'})
    assert stale_tag.status == 200 and stale_tag.headers[STATUS] == "HIT"


def test_post_invalidates_the_cached_get(edge):
    path = "/api/v1/agents/agent-post"
    alice = bearer("alice")
    edge.get(path, alice)
    assert poll_hit(lambda: edge.get(path, alice)).headers[STATUS] == "HIT"
    posted = http("POST", f"{edge.proxy.url}{path}", alice, json={"name": "renamed"})
    assert posted.status == 200
    assert posted.json()["method"] == "POST"
    deadline = time.monotonic() + POLL_SECONDS
    while (after := edge.get(path, alice)).headers[STATUS] == "HIT" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert after.headers[STATUS] == "MISS"
    assert after.json()["method"] == "GET"
    # first GET, POST, the GET after it (plus any GET that raced the invalidation)
    assert origin_hits(edge.origins, path) >= 3


def test_origin_errors_are_never_cached(edge):
    path = "/api/v1/agents/agent-error"
    headers = {**bearer("alice"), "X-Test-Status": "503"}
    first = edge.get(path, headers)
    assert first.status == 503
    assert first.headers[STATUS] == "MISS"
    edge.sentinel_stored("error")
    second = edge.get(path, headers)
    assert second.status == 503
    assert second.headers[STATUS] == "MISS"
    assert origin_hits(edge.origins, path) == 2
    ok = edge.get(path, bearer("alice"))  # the same URL, now healthy: fetched, not a cached error
    assert ok.status == 200 and ok.headers[STATUS] == "MISS"


def test_admin_purge_by_prefix_then_all(edge):
    agent, health = "/api/v1/agents/agent-purge", "/health?check=purge"
    alice = bearer("alice")
    edge.get(agent, alice)
    edge.get(health)
    assert poll_hit(lambda: edge.get(agent, alice)).headers[STATUS] == "HIT"
    assert poll_hit(lambda: edge.get(health)).headers[STATUS] == "HIT"

    purged = http("POST", f"{edge.proxy.url}/__edgerules/cache/purge", json={"prefix": "/api/v1/agents"})
    assert purged.status == 200
    assert purged.json()["purged"] >= 1
    assert edge.get(agent, alice).headers[STATUS] == "MISS"
    assert edge.get(health).headers[STATUS] == "HIT"

    purged = http("POST", f"{edge.proxy.url}/__edgerules/cache/purge", json={"all": True})
    assert purged.status == 200
    assert purged.json()["purged"] >= 1
    assert edge.get(health).headers[STATUS] == "MISS"
    bad = http("POST", f"{edge.proxy.url}/__edgerules/cache/purge", json={})
    assert bad.status == 400


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "edgerules"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**ENV, "PATH": ""},
    )


def test_cli_cache_purge_against_the_policy_store(edge):
    agent, health = "/api/v1/agents/agent-cli", "/health?check=cli"
    alice = bearer("alice")
    edge.get(agent, alice)
    edge.get(health)
    assert poll_hit(lambda: edge.get(agent, alice)).headers[STATUS] == "HIT"
    assert poll_hit(lambda: edge.get(health)).headers[STATUS] == "HIT"
    policy = ("--policy", str(edge.policy_path), "--env", "e2e")

    done = _cli("cache", "purge", *policy, "--prefix", "/api/v1/agents")
    assert done.returncode == 0, done.stderr
    count = int(re.search(r"purged (\d+) cache entr", done.stdout)[1])
    assert count >= 1
    assert edge.get(agent, alice).headers[STATUS] == "MISS"
    assert edge.get(health).headers[STATUS] == "HIT"

    done = _cli("cache", "purge", *policy, "--all")
    assert done.returncode == 0, done.stderr
    assert int(re.search(r"purged (\d+) cache entr", done.stdout)[1]) >= 1
    assert edge.get(health).headers[STATUS] == "MISS"


def test_cli_cache_purge_usage_and_key(tmp_path, monkeypatch):
    monkeypatch.setenv("JWT_SECRET", JWT_SECRET)
    policy = write_policy(tmp_path, dict.fromkeys(REGIONS, 1))
    args = ["cache", "purge", "--policy", str(policy), "--env", "e2e"]
    for usage in ([], ["--all", "--prefix", "/x"]):  # exactly one of --all/--prefix/--key
        with pytest.raises(SystemExit) as exited:
            cli_main([*args, *usage])
        assert exited.value.code == 2
    assert cli_main([*args, "--prefix", "api"], out=io.StringIO()) == 2

    loaded = load_policy_file(str(policy), "e2e", environ=ENV).policy
    key, other = "cache:" + "ab" * 32, "cache:" + "cd" * 32

    async def seed() -> None:
        store = open_store(loaded.store)
        try:
            await store.set(key, b"x", 60)
            await store.set(f"{key}:v:1", b"y", 60)
            await store.set(other, b"z", 60)
            await store.set("apikey:unrelated", b"k")
        finally:
            await store.close()

    async def remaining() -> list[str]:
        store = open_store(loaded.store)
        try:
            return sorted(await store.keys(""))
        finally:
            await store.close()

    asyncio.run(seed())
    out = io.StringIO()
    assert cli_main([*args, "--key", key], out=out) == 0
    assert "purged 2 cache entries" in out.getvalue()
    assert asyncio.run(remaining()) == ["apikey:unrelated", other]
    out = io.StringIO()
    assert cli_main([*args, "--all"], out=out) == 0
    assert "purged 1 cache entry " in out.getvalue()
    assert asyncio.run(remaining()) == ["apikey:unrelated"]  # only the response cache is purged


def test_cli_cache_purge_reports_an_unreachable_store(tmp_path, monkeypatch):
    monkeypatch.setenv("JWT_SECRET", JWT_SECRET)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    policy = write_policy(tmp_path, dict.fromkeys(REGIONS, 1), {"store": {"backend": "redis", "url": dead}})
    out = io.StringIO()
    code = cli_main(["cache", "purge", "--policy", str(policy), "--env", "e2e", "--all"], out=out)
    assert code == 1
    assert "store redis unavailable" in out.getvalue()


# ------------------------------------------------------------------------------- shared cache over Redis


@pytest.fixture(scope="module")
def redis_edges(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cache-redis")
    with shared_redis_edges(directory, REGIONS, "e2e-cache:", start_edge, 2, CACHE_OVERLAY) as (
        origins,
        redis,
        _policy,
        proxies,
    ):
        yield proxies, origins, redis


def test_entry_stored_through_one_instance_is_a_hit_through_another(redis_edges):
    (first, second), origins, _redis = redis_edges
    path = "/api/v1/agents/agent-shared"
    alice = bearer("alice")
    stored = http("GET", f"{first.url}{path}", alice)
    assert stored.status == 200 and stored.headers[STATUS] == "MISS"
    assert poll_hit(lambda: http("GET", f"{first.url}{path}", alice)).headers[STATUS] == "HIT"
    reached = origin_hits(origins, path)
    shared = http("GET", f"{second.url}{path}", alice)  # the second instance's very first request for it
    assert shared.headers[STATUS] == "HIT"
    assert shared.body == stored.body
    assert origin_hits(origins, path) == reached
    other = http("GET", f"{second.url}{path}", bearer("bob"))
    assert other.headers[STATUS] == "MISS"  # shared between instances, still never between users
    assert origin_hits(origins, path) == reached + 1


def test_redis_down_means_bypass_not_failure(redis_edges):
    (first, second), origins, redis = redis_edges
    path = "/api/v1/agents/agent-redis-down"
    alice = bearer("alice")
    http("GET", f"{first.url}{path}", alice)
    assert poll_hit(lambda: http("GET", f"{first.url}{path}", alice)).headers[STATUS] == "HIT"
    reached = origin_hits(origins, path)
    redis.kill()
    for proxy in (first, second):
        health = http("GET", f"{proxy.url}/health?check=redis-down")
        assert health.status == 200
        assert health.headers[STATUS] == "BYPASS"
        agent = http("GET", f"{proxy.url}{path}", alice)
        assert agent.status == 200, agent.body
        assert agent.headers[STATUS] == "BYPASS"
        assert agent.json()["headers"]["X-User-ID"] == "alice"
    assert origin_hits(origins, path) == reached + 2

"""ResponseCache on a real MemoryStore (and a store that is down)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from edgerules.cache import http as hc
from edgerules.cache.http import CacheRule, Freshness
from edgerules.cache.response import CacheStatus, Lookup, ResponseCache, RevalidationGate
from edgerules.edge.upstream import request_headers
from edgerules.engine.core import decide_request
from edgerules.engine.health import HealthRegistry
from edgerules.engine.state import EngineState
from edgerules.engine.values import Answer, Forward
from edgerules.policy.model import Policy
from edgerules.stores import StoreConfig, open_store
from edgerules.stores.base import StoreUnavailable
from edgerules.stores.memory import MemoryStore
from tests.engine_support import request as edge_request
from tests.engine_support import seed_policy
from tests.support.redis_server import redis_server  # noqa: F401  (fixture)

T0 = 1_700_000_000.0
RULE = CacheRule(
    name="agents", source="rules.yaml:12", ttl=300, stale_while_revalidate=60, stale_if_error=600
)
JSON = [("Content-Type", "application/json")]


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> MemoryStore:
    return MemoryStore(now=clock)


@pytest.fixture
def cache(store: MemoryStore, clock: Clock) -> ResponseCache:
    return ResponseCache(store, now=clock)


def run(coro):
    return asyncio.run(coro)


def key_for(path="/api/v1/agents", principal=None, query=""):
    return hc.cache_key("GET", "https", "api.example", path, query, principal, {})


async def put(cache, clock, key, *, path="/api/v1/agents", req=(), resp=JSON, body=b'{"ok":1}', rule=RULE):
    return await cache.store(rule, key, path, "GET", list(req), 200, list(resp), body, clock.t, clock.t)


def test_miss_store_hit_and_replay(cache, clock):
    async def go():
        k = key_for()
        miss = await cache.lookup(RULE, k, "GET", [])
        assert miss.status is CacheStatus.MISS and not miss.servable
        resp = [*JSON, ("Connection", "close"), ("Set-Cookie", "s=1"), ("Transfer-Encoding", "chunked")]
        assert not await put(cache, clock, k, resp=resp)  # Set-Cookie: not stored by default
        assert await put(
            cache, clock, k, resp=[*JSON, ("Connection", "close"), ("Transfer-Encoding", "chunked")]
        )
        clock.t += 10
        hit = await cache.lookup(RULE, k, "GET", [])
        assert hit.status is CacheStatus.HIT and hit.servable and hit.state is Freshness.FRESH
        assert hit.entry.body == b'{"ok":1}'
        assert hit.entry.headers == (("Content-Type", "application/json"),)  # hop-by-hop dropped
        assert hc.age_header(hit.entry, clock.t) == "10"
        head = await cache.lookup(RULE, key_for(), "HEAD", [])
        assert head.status is CacheStatus.HIT  # HEAD shares the GET entry
        assert hc.cache_key("HEAD", "https", "api.example", "/api/v1/agents", "", None, {}) == k

    run(go())


def test_set_cookie_response_stored_without_the_cookie(cache, clock):
    async def go():
        k = key_for()
        rule = replace(RULE, store_set_cookie=True)
        assert await put(cache, clock, k, resp=[*JSON, ("Set-Cookie", "session=alice")], rule=rule)
        hit = await cache.lookup(rule, k, "GET", [])
        assert hit.status is CacheStatus.HIT
        assert "set-cookie" not in hc.HeaderView(hit.entry.headers)

    run(go())


def test_set_cookie_replayed_only_when_the_rule_says_so(cache, clock):
    async def go():
        k = key_for()
        rule = replace(RULE, store_set_cookie=True, replay_set_cookie=True)
        assert await put(cache, clock, k, resp=[*JSON, ("Set-Cookie", "lang=en")], rule=rule)
        hit = await cache.lookup(rule, k, "GET", [])
        assert hit.status is CacheStatus.HIT
        assert hc.HeaderView(hit.entry.headers).get_all("set-cookie") == ["lang=en"]

    run(go())


def test_users_a_and_b_are_isolated(cache, clock):
    async def go():
        a_headers = {"Authorization": "Bearer token-of-alice"}
        b_headers = {"Authorization": "Bearer token-of-bob"}
        ka = key_for(principal=hc.effective_principal(None, a_headers))
        kb = key_for(principal=hc.effective_principal(None, b_headers))
        assert await put(cache, clock, ka, req=a_headers.items(), body=b"alice's agents")
        assert (await cache.lookup(RULE, kb, "GET", b_headers)).status is CacheStatus.MISS
        assert (await cache.lookup(RULE, key_for(), "GET", {})).status is CacheStatus.MISS
        again = await cache.lookup(RULE, ka, "GET", a_headers)
        assert again.status is CacheStatus.HIT and again.entry.body == b"alice's agents"

    run(go())


def test_vary_variants_live_under_one_primary_key(cache, store, clock):
    async def go():
        k = key_for()
        resp = [*JSON, ("Vary", "Accept-Language")]
        assert await put(cache, clock, k, req=[("Accept-Language", "en")], resp=resp, body=b"hello")
        assert await put(cache, clock, k, req=[("Accept-Language", "fr")], resp=resp, body=b"bonjour")
        en = await cache.lookup(RULE, k, "GET", {"accept-language": "en"})
        fr = await cache.lookup(RULE, k, "GET", {"Accept-Language": "fr"})
        de = await cache.lookup(RULE, k, "GET", {"Accept-Language": "de"})
        none = await cache.lookup(RULE, k, "GET", {})
        assert (en.entry.body, fr.entry.body) == (b"hello", b"bonjour")
        assert en.key != fr.key and en.key.startswith(k + ":v:")
        assert de.status is CacheStatus.MISS and none.status is CacheStatus.MISS
        assert len(await store.keys(k)) == 3  # index + 2 variants
        assert await cache.purge(key=k) == 3
        assert (await cache.lookup(RULE, k, "GET", {"accept-language": "en"})).status is CacheStatus.MISS

    run(go())


def test_variant_index_outlives_shorter_variants(cache, clock):
    async def go():
        k = key_for()
        resp = [*JSON, ("Vary", "Accept")]
        assert await put(cache, clock, k, req=[("Accept", "a/long")], resp=resp, rule=replace(RULE, ttl=1000))
        assert await put(cache, clock, k, req=[("Accept", "a/short")], resp=resp, rule=replace(RULE, ttl=10))
        clock.t += 800
        found = await cache.lookup(replace(RULE, ttl=1000), k, "GET", {"Accept": "a/long"})
        assert found.status is CacheStatus.HIT

    run(go())


def test_stale_windows(cache, clock):
    async def go():
        k = key_for()
        assert await put(cache, clock, k)
        clock.t = T0 + 299
        assert (await cache.lookup(RULE, k, "GET", {})).status is CacheStatus.HIT
        clock.t = T0 + 330
        swr = await cache.lookup(RULE, k, "GET", {})
        assert (
            swr.status is CacheStatus.STALE and swr.state is Freshness.STALE_WHILE_REVALIDATE and swr.servable
        )
        clock.t = T0 + 500
        sie = await cache.lookup(RULE, k, "GET", {})
        assert (
            sie.status is CacheStatus.EXPIRED and sie.state is Freshness.STALE_IF_ERROR and not sie.servable
        )
        assert hc.stale_if_error_ok(RULE, sie.entry, clock.t)
        clock.t = T0 + 900  # storage TTL (300 + max(60, 600)) has run out
        assert (await cache.lookup(RULE, k, "GET", {})).status is CacheStatus.MISS

    run(go())


def test_revalidation_with_304(cache, clock):
    async def go():
        rule = CacheRule(name="api", source="r:1", mode="origin")
        k = key_for()
        resp = [*JSON, ("Cache-Control", "max-age=60"), ("ETag", '"v1"')]
        assert await put(cache, clock, k, resp=resp, rule=rule)
        clock.t += 100
        stale = await cache.lookup(rule, k, "GET", {})
        assert stale.state is Freshness.MUST_REVALIDATE and stale.status is CacheStatus.EXPIRED
        assert hc.revalidation_headers(stale.entry) == {"If-None-Match": '"v1"'}
        assert await cache.revalidated(rule, stale, [("ETag", '"v2"')], clock.t, clock.t) is None
        merged = await cache.revalidated(
            rule, stale, [("ETag", '"v1"'), ("Cache-Control", "max-age=90")], clock.t, clock.t
        )
        assert merged is not None and merged.body == b'{"ok":1}'
        clock.t += 30
        fresh = await cache.lookup(rule, k, "GET", {})
        assert fresh.status is CacheStatus.HIT and hc.HeaderView(fresh.entry.headers).get(
            "cache-control"
        ) == ("max-age=90")
        assert hc.evaluate_conditional({"If-None-Match": 'W/"v1"'}, fresh.entry)

    run(go())


def test_purge_by_path_prefix_and_all(cache, store, clock):
    async def go():
        paths = [
            "/api/v1/agents",
            "/api/v1/agents/1",
            "/api/v1/agents/2/config",
            "/api/v1/agentsx",
            "/health",
        ]
        keys = {p: key_for(p) for p in paths}
        for p in paths:
            assert await put(cache, clock, keys[p], path=p)
        await store.set("rl:other-module", b"1")
        assert await cache.purge(path_prefix="/api/v1/agents") == 3
        status = {p: (await cache.lookup(RULE, keys[p], "GET", {})).status for p in paths}
        assert status == {
            "/api/v1/agents": CacheStatus.MISS,
            "/api/v1/agents/1": CacheStatus.MISS,
            "/api/v1/agents/2/config": CacheStatus.MISS,
            "/api/v1/agentsx": CacheStatus.HIT,
            "/health": CacheStatus.HIT,
        }
        assert await cache.purge(all=True) == 2
        assert await store.get("rl:other-module") == b"1"  # other modules' keys untouched
        with pytest.raises(ValueError):
            await cache.purge()
        with pytest.raises(ValueError):
            await cache.purge(all=True, key="x")

    run(go())


def test_invalidate_url_drops_every_query_and_principal(cache, clock):
    async def go():
        keys = [key_for(), key_for(query="page=2"), key_for(principal="user:a"), key_for("/api/v1/agents/9")]
        for k in keys[:3]:
            assert await put(cache, clock, k)
        assert await put(cache, clock, keys[3], path="/api/v1/agents/9")
        assert hc.invalidates("POST", 201)
        assert await cache.invalidate_url("https", "api.example", "/api/v1/agents") == 3
        statuses = [(await cache.lookup(RULE, k, "GET", {})).status for k in keys]
        assert statuses == [CacheStatus.MISS] * 3 + [CacheStatus.HIT]

    run(go())


def test_not_storable_and_method_bypass(cache, clock):
    async def go():
        k = key_for()
        assert not await cache.store(RULE, k, "/p", "GET", [], 500, JSON, b"err", clock.t, clock.t)
        assert not await cache.store(
            RULE, k, "/p", "GET", [], 200, [("Content-Type", "audio/wav")], b"", T0, T0
        )
        assert not await cache.store(RULE, k, "/p", "HEAD", [], 200, JSON, b"", clock.t, clock.t)
        too_big = b"x" * (RULE.max_body_size + 1)
        assert not await cache.store(RULE, k, "/p", "GET", [], 200, JSON, too_big, clock.t, clock.t)
        assert (await cache.lookup(RULE, k, "GET", {})).status is CacheStatus.MISS
        assert (await cache.lookup(RULE, k, "POST", {})) == Lookup(CacheStatus.BYPASS, "method")

    run(go())


def test_corrupt_record_is_a_miss_and_is_dropped(cache, store):
    async def go():
        k = key_for()
        await store.set(k, b"garbage")
        miss = await cache.lookup(RULE, k, "GET", {})
        assert miss.status is CacheStatus.MISS
        assert await store.get(k) is None

    run(go())


class DownStore(MemoryStore):
    """Every call fails the way a dead Redis does."""

    async def get(self, key):
        raise StoreUnavailable("connection refused")

    async def set(self, key, value, ttl=None, tags=()):
        raise StoreUnavailable("connection refused")

    async def delete(self, key):
        raise StoreUnavailable("connection refused")

    async def purge_tag(self, tag):
        raise StoreUnavailable("connection refused")

    async def purge_prefix(self, prefix):
        raise StoreUnavailable("connection refused")


def test_store_down_degrades_to_bypass(clock):
    async def go():
        cache = ResponseCache(DownStore(now=clock), now=clock)
        k = key_for()
        lookup = await cache.lookup(RULE, k, "GET", {})
        assert lookup.status is CacheStatus.BYPASS and "store-unavailable" in lookup.reason
        assert not await put(cache, clock, k)
        assert not await put(cache, clock, k, resp=[*JSON, ("Vary", "Accept")])
        assert await cache.invalidate_url("https", "api.example", "/api/v1/agents") == 0
        stale = Lookup(
            CacheStatus.EXPIRED, entry=hc.CacheEntry(200, (("ETag", '"a"'),), b"x", T0, T0, T0), key=k
        )
        merged = await cache.revalidated(RULE, stale, [("ETag", '"a"')], T0, T0)
        assert merged is not None  # served even though the write-back failed
        with pytest.raises(StoreUnavailable):  # operator purge reports the failure
            await cache.purge(all=True)

    run(go())


# ------------------------------------------------------------------------------------ real backends


@pytest.fixture(params=["diskcache", "redis"])
def real_store(request: pytest.FixtureRequest, tmp_path):
    if request.param == "diskcache":
        return StoreConfig(backend="diskcache", path=str(tmp_path / "state"), prefix="t:")
    server = request.getfixturevalue("redis_server")
    return StoreConfig(backend="redis", url=server.url, prefix="t:", timeout=2.0)


def test_cache_on_real_backends(real_store, clock):
    async def go():
        store = open_store(real_store)
        try:
            cache = ResponseCache(store, now=clock)
            alice, bob = key_for(principal="jwt:alice"), key_for(principal="jwt:bob")
            assert await put(cache, clock, alice, body=b"alice")
            assert (await cache.lookup(RULE, bob, "GET", {})).status is CacheStatus.MISS
            assert (await cache.lookup(RULE, alice, "GET", {})).entry.body == b"alice"
            vary = [*JSON, ("Vary", "Accept")]
            shared = key_for("/api/v1/agents/1")
            assert await put(
                cache, clock, shared, path="/api/v1/agents/1", req=[("Accept", "a/x")], resp=vary
            )
            assert (await cache.lookup(RULE, shared, "GET", {"Accept": "a/x"})).status is CacheStatus.HIT
            assert (await cache.lookup(RULE, shared, "GET", {"Accept": "a/y"})).status is CacheStatus.MISS
            assert await put(cache, clock, key_for("/health"), path="/health")
            assert await cache.invalidate_url("https", "api.example", "/api/v1/agents") == 1
            assert await cache.purge(path_prefix="/api/v1") == 2  # index + variant of /api/v1/agents/1
            assert (await cache.lookup(RULE, key_for("/health"), "GET", {})).status is CacheStatus.HIT
            assert await cache.purge(all=True) == 1
        finally:
            await store.close()

    run(go())


# ------------------------------------------------------- engine: conditional forwards, stale answers (RFC 9111/5861)

WINDOWED = {"stale_while_revalidate": 60.0, "stale_if_error": 600.0}
ETAG_V1 = [*JSON, ("ETag", '"v1"')]


def seed_with(*, routing: dict | None = None, **rule_fields) -> Policy:
    """The seed policy with every cache rule changed (e.g. stale windows) and the routing changed."""
    policy = seed_policy()
    rules = tuple((match, replace(rule, **rule_fields)) for match, rule in policy.cache.rules)
    return replace(
        policy, cache=replace(policy.cache, rules=rules), routing=replace(policy.routing, **(routing or {}))
    )


def engine_state(clock: Clock) -> EngineState:
    return EngineState(MemoryStore(now=clock), HealthRegistry(), now=clock)


async def stored_through_engine(policy, state, clock, path="/health", resp=ETAG_V1, body=b'{"v":1}') -> None:
    """A MISS through the engine, then the origin's answer stored under the key the engine computed."""
    miss = await decide_request(edge_request("GET", path), policy, state)
    ctx = miss.context
    assert isinstance(miss.outcome, Forward) and ctx.cache_status == "MISS"
    assert await state.cache.store(
        ctx.cache_rule, ctx.cache_key, path, "GET", [], 200, resp, body, clock.t, clock.t
    )


def test_engine_stale_answer_carries_one_conditional_background_revalidation(clock):
    async def go():
        policy, state = seed_with(**WINDOWED), engine_state(clock)
        await stored_through_engine(policy, state, clock)
        clock.t += 90  # the health rule's ttl is 1m: 30 s into the 60 s stale-while-revalidate window
        stale = await decide_request(edge_request("GET", "/health"), policy, state)
        ctx = stale.context
        assert isinstance(stale.outcome, Answer) and stale.outcome.kind == "cache_hit"
        assert stale.outcome.body == b'{"v":1}' and ctx.cache_status == "STALE"
        assert dict(stale.outcome.headers)["Age"] == "90"
        assert ctx.region is None and ctx.error is None  # answered by the cache, not routed
        revalidate = ctx.cache_revalidate
        assert isinstance(revalidate, Forward) and revalidate.targets
        assert ("If-None-Match", '"v1"') in revalidate.set_headers
        assert "if-none-match" in revalidate.remove_headers
        conditional = await decide_request(
            edge_request("GET", "/health", {"If-None-Match": '"v1"'}), policy, state
        )
        assert conditional.outcome.status == 304 and conditional.context.cache_status == "STALE"
        assert conditional.context.cache_revalidate is not None

    run(go())


def test_engine_hit_has_no_revalidation_and_the_right_age(clock):
    async def go():
        policy, state = seed_with(**WINDOWED), engine_state(clock)
        await stored_through_engine(policy, state, clock, resp=[*ETAG_V1, ("Age", "7")])
        clock.t += 5
        hit = await decide_request(edge_request("GET", "/health"), policy, state)
        assert hit.context.cache_status == "HIT" and hit.context.cache_revalidate is None
        assert [v for n, v in hit.outcome.headers if n == "Age"] == ["12"]  # origin's 7 + 5 s stored

    run(go())


def test_engine_expired_entry_is_fetched_with_its_validators(clock):
    async def go():
        policy, state = seed_with(**WINDOWED), engine_state(clock)
        await stored_through_engine(
            policy, state, clock, resp=[*ETAG_V1, ("Last-Modified", hc.http_date(T0))]
        )
        clock.t += 300  # past stale-while-revalidate, inside stale-if-error
        client = edge_request("GET", "/health", {"If-None-Match": '"mine"', "If-Modified-Since": "x"})
        expired = await decide_request(client, policy, state)
        ctx, forward = expired.context, expired.outcome
        assert isinstance(forward, Forward) and ctx.cache_status == "EXPIRED"
        assert ctx.cache_lookup.entry.body == b'{"v":1}' and ctx.cache_revalidate is None
        sent = request_headers(client.headers.pairs, forward.edits, forward.targets[0])
        assert [v for n, v in sent if n.lower() == "if-none-match"] == ['"v1"']  # ours, not the client's
        assert [v for n, v in sent if n.lower() == "if-modified-since"] == [hc.http_date(T0)]

    run(go())


def test_engine_expired_entry_without_validators_goes_unconditionally(clock):
    async def go():
        policy, state = seed_with(**WINDOWED), engine_state(clock)
        await stored_through_engine(policy, state, clock, resp=JSON)
        clock.t += 300
        client = edge_request("GET", "/health", {"If-None-Match": '"mine"'})
        expired = await decide_request(client, policy, state)
        forward = expired.outcome
        assert isinstance(forward, Forward) and expired.context.cache_status == "EXPIRED"
        sent = request_headers(client.headers.pairs, forward.edits, forward.targets[0])
        assert [v for n, v in sent if n.lower() == "if-none-match"] == [
            '"mine"'
        ]  # the client's own, untouched

    run(go())


def test_engine_stale_if_error_when_routing_rejects(clock):
    async def go():
        policy, state = seed_with(routing={"when_all_unhealthy": "reject"}, **WINDOWED), engine_state(clock)
        await stored_through_engine(policy, state, clock)
        for region in policy.regions:
            state.health.force(region, False)
        clock.t += 300  # inside stale-if-error
        stale = await decide_request(edge_request("GET", "/health"), policy, state)
        assert stale.outcome.status == 200 and stale.outcome.body == b'{"v":1}'
        assert stale.context.cache_status == "STALE" and stale.context.error is None
        clock.t += 400  # past stale-if-error (and so out of the store): the normal refusal
        down = await decide_request(edge_request("GET", "/health"), policy, state)
        assert down.outcome.kind == "all_regions_down" and down.context.cache_status == "MISS"

    run(go())


def test_revalidation_gate_is_single_flight_per_key():
    ticks = iter(range(100, 200))
    gate = RevalidationGate(clock=lambda: float(next(ticks)), remember=2)
    assert gate.claim("a", looked_up_at=1.0)
    assert not gate.claim("a", looked_up_at=2.0)  # in flight
    assert gate.claim("b", looked_up_at=2.0)
    gate.release("a")  # finished at 100
    assert not gate.claim(
        "a", looked_up_at=50.0
    )  # looked up before the refresh finished: it saw the old entry
    assert gate.claim("a", looked_up_at=150.0) and gate.in_flight == {"a", "b"}
    gate.release("a")
    gate.release("b")
    gate.release("c")  # remember=2: the oldest finish ("a") is forgotten
    assert gate.claim("a", looked_up_at=0.0) and gate.in_flight == {"a"}

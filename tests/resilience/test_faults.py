"""Faults under continuous mixed load: a real proxy (mitmdump, or `edgerules serve`), real origins, a real
redis-server, and `load.LoadGenerator` sending JWT / API-key / cacheable / POST traffic the whole time.

Every scenario asserts what the clients saw (statuses, serving regions, cache statuses, relative latencies),
never absolute wall-clock times. Figures (requests, failures, failover time, percentiles, RSS) are printed
and, when `EDGERULES_RESILIENCE_REPORT=path` is set, appended to that file as JSON lines (docs/resilience.md
quotes the last run).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgerules.auth.apikeys import ApiKeyStore, hash_key
from edgerules.observe.metrics import HOUR, HourRollup, read_rollups
from edgerules.policy.load import load_policy_file
from edgerules.stores import StoreConfig, open_store
from edgerules.tools.commands._common import open_policy_store
from tests.resilience.load import LoadGenerator, Sample, between, describe, failures, percentile
from tests.support.origins import Origins, start_origins
from tests.support.policies import ENV, write_policy
from tests.support.proxy import Proxy, http, start_edge_process
from tests.support.redis_server import RedisServer, require_redis_server

pytestmark = [pytest.mark.e2e, pytest.mark.resilience]

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
THREADS = 6
FLUSH_WAIT = 10.0  # upper bound for the metrics recorder (0.2 s flush interval) to reach the store
KEY_PREFIX = "apikey:"  # ApiKeyStore's default, as EngineState uses it


# -- stacks -------------------------------------------------------------------------------------------------


@dataclass
class Stack:
    proxy: Proxy
    origins: Origins
    policy: Path

    def status(self) -> dict[str, Any]:
        response = http("GET", f"{self.proxy.url}/__edgerules/status")
        assert response.status == 200, response.body
        return response.json()

    def wait_status(self, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        status = self.status()
        while not predicate(status):
            if time.monotonic() > deadline:
                raise AssertionError(f"status never showed {what}: {json.dumps(status)[:2000]}")
            time.sleep(0.05)
            status = self.status()
        return status

    def rss_kib(self) -> int:
        assert self.proxy.pid is not None
        for line in Path(f"/proc/{self.proxy.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    def assert_alive(self) -> None:
        assert self.proxy.running, self.proxy.output()[-3000:]
        assert "Traceback" not in self.proxy.output(), self.proxy.output()[-5000:]


@contextmanager
def edge_stack(
    tmp_path: Path,
    overlay: Mapping[str, Any] | None = None,
    *,
    serve: bool = False,
    reload_interval: float | None = None,
    before_start: Callable[[Path], None] | None = None,
) -> Iterator[Stack]:
    """Origins for every region, the seed policy's `e2e` environment over them, and a proxy: mitmdump with
    the addon, or `edgerules serve`. Everything is stopped on exit."""
    origins = start_origins(list(REGIONS))
    try:
        policy = write_policy(tmp_path, {name: o.port for name, o in origins.items()}, overlay)
        if before_start is not None:
            before_start(policy)
        options = {"edgerules_reload_interval": reload_interval} if reload_interval is not None else None
        proxy = start_edge_process(policy, environ=ENV, serve=serve, options=options)
        try:
            yield Stack(proxy, origins, policy)
        finally:
            proxy.stop()
    finally:
        for origin in origins.values():
            if origin.pid is not None:
                with suppress(ProcessLookupError):
                    os.kill(origin.pid, signal.SIGCONT)  # a stalled origin must be able to stop
        origins.stop_all()


def policy_store_config(policy: Path) -> StoreConfig:
    return load_policy_file(str(policy), "e2e", environ=ENV).policy.store


def add_api_key(policy: Path) -> tuple[str, bytes]:
    """A key with a limit no test reaches (the policy's 1000/h would turn load into 429s); returns the key
    and its stored record (to restore it into a Redis that lost everything)."""

    async def add() -> tuple[str, bytes]:
        store = open_store(policy_store_config(policy))
        try:
            key, _ = await ApiKeyStore(store, KEY_PREFIX).add(
                "load-service", "service", rate_limit=(10**9, 3600.0)
            )
            record = await store.get(KEY_PREFIX + hash_key(key))
            assert record is not None
            return key, record
        finally:
            await store.close()

    return asyncio.run(add())


def restore_record(policy: Path, key: str, record: bytes) -> None:
    async def put() -> None:
        store = open_store(policy_store_config(policy))
        try:
            await store.set(KEY_PREFIX + hash_key(key), record)
        finally:
            await store.close()

    asyncio.run(put())


def rollup_totals(policy: Path) -> HourRollup:
    loaded = load_policy_file(str(policy), "e2e", environ=ENV).policy

    async def read() -> list[HourRollup]:
        store = open_policy_store(loaded)
        try:
            now = time.time()
            return await read_rollups(store, now - HOUR, now)
        finally:
            await store.close()

    return HourRollup.combine(asyncio.run(read()))


def wait_rollup_countries(policy: Path, expected: Mapping[str, int]) -> HourRollup:
    """Wait until the rollups count at least `expected` requests per country, then two more flush periods
    (so an over-count would show too); returns the rollup."""
    deadline = time.monotonic() + FLUSH_WAIT
    total = rollup_totals(policy)
    while time.monotonic() < deadline:
        countries = total.breakdown("country")
        if all(countries.get(c, 0) >= n for c, n in expected.items()):
            break
        time.sleep(0.1)
        total = rollup_totals(policy)
    time.sleep(0.5)
    return rollup_totals(policy)


# -- figures ------------------------------------------------------------------------------------------------


def report(scenario: str, **figures: Any) -> None:
    line = json.dumps({"scenario": scenario, **figures}, sort_keys=True)
    print(line)
    target = os.environ.get("EDGERULES_RESILIENCE_REPORT")
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def not_hit(sample: Sample) -> bool:
    """A response the region header describes truthfully (a cache HIT carries no routing decision)."""
    return sample.cache != "HIT"


# -- scenarios ----------------------------------------------------------------------------------------------


def test_killed_origin_fails_over_at_once_and_traffic_returns(tmp_path):
    keys: dict[str, str] = {}

    def provision(policy: Path) -> None:
        keys["key"], _ = add_api_key(policy)

    with edge_stack(tmp_path, before_start=provision) as stack:
        dead = "us-east-1"
        with LoadGenerator(stack.proxy.url, threads=THREADS, duration=60, api_key=keys["key"]) as load:
            load.wait_for_samples(40, predicate=lambda s: s.target == dead and not_hit(s))
            t_kill = time.monotonic()
            stack.origins[dead].kill()
            load.wait_for_samples(
                60, predicate=lambda s: s.target == dead and s.started > t_kill and not_hit(s)
            )
            t_restart = time.monotonic()
            stack.origins[dead].restart()
            back = load.wait_for_samples(
                10, predicate=lambda s: s.started > t_restart and s.region == dead and not_hit(s)
            )
            samples = load.stop()
        stack.assert_alive()

    before = [s for s in samples if s.finished < t_kill]
    after_kill = [s for s in samples if s.finished > t_kill and s.started < t_restart]
    outage = between(samples, t_kill, t_restart)
    assert not failures(before), describe(failures(before))
    assert {s.region for s in before if s.target == dead and not_hit(s)} == {dead}
    # Idempotent requests never fail, not even the ones in flight when the origin died.
    broken = [s for s in failures(after_kill) if s.idempotent]
    assert not broken, describe(broken)
    # Non-idempotent requests may fail only if they were already sent to the dying origin.
    posts = failures(after_kill)
    assert all(s.kind == "post" for s in posts), describe(posts)
    assert len(posts) <= THREADS, describe(posts)
    # Detection needs no health interval: the first request after the kill is already served elsewhere.
    rerouted = [s for s in outage if s.target == dead and not_hit(s) and s.status < 500]
    assert rerouted and all(s.region not in (dead, None) for s in rerouted), describe(rerouted)
    first = min(
        (s for s in outage if s.target == dead and not_hit(s) and s.idempotent), key=lambda s: s.started
    )
    assert first.status == 200 and first.region not in (dead, None), describe([first])
    # After the restart the region gets its traffic back, and nothing failed on the way.
    assert back and all(s.region == dead for s in back)
    after_restart = [s for s in samples if s.started > t_restart]
    assert not failures(after_restart), describe(failures(after_restart))
    assert not [s for s in samples if s.status == 0], describe([s for s in samples if s.status == 0])
    report(
        "origin-kill",
        requests=len(samples),
        failures=len(failures(samples)),
        failed_posts=len(posts),
        failover_ms=ms(first.finished - t_kill),
        rerouted=len(rerouted),
        recovery_ms=ms(min(s.finished for s in back) - t_restart),
    )


def test_stalled_origin_gets_504_while_other_regions_keep_their_latency(tmp_path):
    timeout = 2.0
    stalled = "eu-west-1"
    with edge_stack(tmp_path, {"routing": {"timeout": f"{timeout:g}s"}}) as stack:
        with LoadGenerator(stack.proxy.url, threads=THREADS, duration=60) as load:
            load.wait_for_samples(30)  # warm up: connections, JWT cache
            t_base = time.monotonic()
            load.wait_for_samples(150, predicate=lambda s: s.started > t_base and s.target != stalled)
            t_stop = time.monotonic()
            pid = stack.origins[stalled].pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            try:
                load.wait_for_samples(
                    1, predicate=lambda s: s.started > t_stop and s.target == stalled and s.status == 504
                )
                load.wait_for_samples(  # its clients moved elsewhere once the stall was found out
                    1,
                    predicate=lambda s: (
                        s.started > t_stop
                        and s.target == stalled
                        and s.region not in (stalled, None)
                        and not_hit(s)
                    ),
                )
                load.wait_for_samples(
                    150, predicate=lambda s: s.started > t_stop and s.target not in (stalled, None)
                )
            finally:
                os.kill(pid, signal.SIGCONT)
            t_cont = time.monotonic()
            back = load.wait_for_samples(
                10, predicate=lambda s: s.started > t_cont and s.region == stalled and not_hit(s)
            )
            samples = load.stop()
        stack.assert_alive()

    others_before = [s for s in between(samples, t_base, t_stop) if s.target != stalled]
    others_during = [s for s in between(samples, t_stop, t_cont) if s.target != stalled]
    timeouts = [s for s in samples if s.status == 504]
    # Only requests sent to the stalled origin time out, with the policy's error, after the policy's timeout.
    assert timeouts and all(s.target == stalled for s in timeouts), describe(timeouts)
    assert all("Request timeout" in (s.detail or "") for s in timeouts), describe(timeouts)
    assert all(s.latency >= timeout * 0.95 for s in timeouts), describe(timeouts)
    unexpected = [s for s in failures(samples) if s.status != 504]
    assert not unexpected, describe(unexpected)
    # Requests to the other regions never waited for the stalled one.
    assert all(s.status < 500 for s in others_during)
    p50_before, p99_before = (
        percentile([s.latency for s in others_before], 50),
        percentile([s.latency for s in others_before], 99),
    )
    p50_during, p99_during = (
        percentile([s.latency for s in others_during], 50),
        percentile([s.latency for s in others_during], 99),
    )
    # Generous, relative bounds (a busy CI box shifts both windows); a stall behind the stopped origin would
    # show as latencies near the policy's timeout.
    assert p50_during <= max(4 * p50_before, p50_before + 0.25), (p50_before, p50_during)
    assert p99_during <= max(4 * p99_before, p99_before + 1.0), (p99_before, p99_during)
    assert p99_during < timeout, (p99_during, timeout)
    # ... and the stalled region's clients were moved elsewhere once it was found out, then given back.
    rerouted = [s for s in between(samples, t_stop, t_cont) if s.target == stalled and s.status == 200]
    assert any(s.region not in (stalled, None) for s in rerouted if not_hit(s)), describe(rerouted)
    assert back and all(s.region == stalled for s in back)
    report(
        "origin-stall",
        requests=len(samples),
        timeouts_504=len(timeouts),
        timeout_latency_ms={
            "min": ms(min(s.latency for s in timeouts)),
            "max": ms(max(s.latency for s in timeouts)),
        },
        rerouted_after_ms=ms(
            min(s.finished for s in rerouted if s.region not in (stalled, None) and not_hit(s)) - t_stop
        ),
        other_regions_before_ms={"p50": ms(p50_before), "p99": ms(p99_before), "n": len(others_before)},
        other_regions_during_ms={"p50": ms(p50_during), "p99": ms(p99_during), "n": len(others_during)},
        policy_timeout_ms=ms(timeout),
        stall_ms=ms(t_cont - t_stop),
    )


def test_redis_outage_fails_api_keys_closed_keeps_jwt_and_loses_no_counts(tmp_path):
    require_redis_server()
    redis = RedisServer().start()
    try:
        overlay = {"store": {"backend": "redis", "url": redis.url, "prefix": "resilience:", "timeout": "2s"}}
        keys: dict[str, Any] = {}

        def provision(policy: Path) -> None:
            keys["key"], keys["record"] = add_api_key(policy)

        with edge_stack(tmp_path, overlay, before_start=provision) as stack:
            _redis_outage(stack, redis, keys["key"], keys["record"])
    finally:
        redis.stop()


def _redis_outage(stack: Stack, redis: RedisServer, key: str, record: bytes) -> None:
    # Phases pin a country each, so the rollups count every phase on its own (`country:XX`).
    up, across, down, restarting, back = "BR", "CL", "PE", "AR", "ZA"
    load = LoadGenerator(stack.proxy.url, threads=THREADS, duration=60, api_key=key)
    load.set_phase("up", country=up)
    with load:
        load.wait_for_samples(150)
        load.set_phase("across-kill", country=across)
        load.wait_settled("up")
        up_count = len(load.samples(lambda s: s.phase == "up"))
        rollup = wait_rollup_countries(stack.policy, {up: up_count})
        assert rollup.breakdown("country").get(up) == up_count  # exactly: no lost, no double counts

        redis.kill()
        load.set_phase("down", country=down)
        load.wait_for_samples(80, predicate=lambda s: s.phase == "down")
        load.wait_for_samples(5, predicate=lambda s: s.phase == "down" and s.kind == "apikey")
        status = stack.wait_status(lambda st: st["store"]["ok"] is False, "the store down")
        assert "redis" in status["store"]["detail"]

        load.set_phase("restarting", country=restarting)
        load.wait_settled("down")
        redis.restart()  # this Redis persists nothing: restore the key as an operator would from backup
        restore_record(stack.policy, key, record)
        stack.wait_status(lambda st: st["store"]["ok"] is True, "the store back")
        load.set_phase("back", country=back)
        load.wait_for_samples(80, predicate=lambda s: s.phase == "back")
        load.wait_for_samples(5, predicate=lambda s: s.phase == "back" and s.kind == "apikey")
        samples = load.stop()
    stack.assert_alive()

    by_phase: dict[str, list[Sample]] = {}
    for sample in samples:
        by_phase.setdefault(sample.phase, []).append(sample)
    assert not [s for s in samples if s.status == 0], describe([s for s in samples if s.status == 0])
    # Only API-key requests ever fail (closed, 503), never JWT ones, whatever Redis is doing.
    not_key = [s for s in failures(samples) if s.kind != "apikey"]
    assert not not_key, describe(not_key)
    assert all(s.status == 200 for s in by_phase["up"] + by_phase["back"]), describe(
        failures(by_phase["up"] + by_phase["back"])
    )
    outage = by_phase["down"]
    key_outage = [s for s in outage if s.kind == "apikey"]
    assert key_outage and all(s.status == 503 for s in key_outage), describe(key_outage)
    assert all("Authentication service unavailable" in (s.detail or "") for s in key_outage)
    assert all(s.status == 200 for s in outage if s.kind != "apikey"), describe(outage)
    cacheable = [s for s in outage if s.kind in ("health", "agent")]
    assert cacheable and all(s.cache == "BYPASS" for s in cacheable), describe(cacheable)
    assert all(s.status == 200 for s in by_phase["back"] if s.kind == "apikey")

    # Everything recorded after the kill was kept in memory and reached the new Redis, exactly once.
    counts = {c: len(by_phase[p]) for c, p in ((down, "down"), (restarting, "restarting"), (back, "back"))}
    rollup = wait_rollup_countries(stack.policy, counts)
    countries = rollup.breakdown("country")
    assert {c: countries.get(c, 0) for c in counts} == counts
    assert countries.get(up, 0) == 0  # that Redis is gone; nothing was replayed twice
    assert countries.get(across, 0) <= len(by_phase["across-kill"])
    assert rollup.requests == sum(countries.values())
    report(
        "redis-outage",
        requests=len(samples),
        api_key_503_during_outage=len(key_outage),
        jwt_ok_during_outage=len([s for s in outage if s.kind != "apikey"]),
        rollup_exact={"up": up_count, **{p: counts[c] for c, p in ((down, "down"), (back, "back"))}},
    )


def test_garbage_policy_keeps_the_old_rules_and_the_fix_is_picked_up(tmp_path):
    """Through `edgerules serve`."""
    with edge_stack(tmp_path, serve=True, reload_interval=0.2) as stack:
        good = stack.policy.read_text()
        with LoadGenerator(stack.proxy.url, threads=THREADS, duration=60) as load:
            load.wait_for_samples(60)
            garbage = [
                b"\x00\xff\xfe garbage {{{ ::: \x07",
                b"version: 1\nregions: 5\n",
                good.encode()[: len(good) // 2],
                b"",
            ]
            for text in garbage:
                before = stack.status()["reload"]
                stack.policy.write_bytes(
                    text
                )  # in place, as an editor would (the watcher may see it half done)
                status = stack.wait_status(
                    lambda st, b=before: st["reload"]["failures"] > b["failures"], "a failed reload"
                )
                assert status["reload"]["reloads"] == before["reloads"]
                assert str(stack.policy) in status["reload"]["last_error"]
                final_error = status["reload"]["last_error"]
                load.wait_for_samples(load.count() + 20)
            t_fix = time.monotonic()
            before = stack.status()["reload"]
            fixed = json.loads(good)
            fixed["routing"]["countries"]["US"] = ["us-west-2", "us-east-1", "eu-west-1"]
            tmp = stack.policy.with_suffix(".tmp")
            tmp.write_text(json.dumps(fixed, indent=1))
            os.replace(tmp, stack.policy)
            final = stack.wait_status(
                lambda st: st["reload"]["reloads"] > before["reloads"], "the fix loaded"
            )["reload"]
            assert final["last_error"] is None
            t_loaded = time.monotonic()
            load.wait_for_samples(
                20, predicate=lambda s: s.started > t_loaded and s.country == "US" and not_hit(s)
            )
            samples = load.stop()
        stack.assert_alive()

    assert not failures(samples), describe(failures(samples))
    assert {s.status for s in samples} == {200}
    old_rules = [s for s in samples if s.finished < t_fix and s.country == "US" and not_hit(s)]
    new_rules = [s for s in samples if s.started > t_loaded and s.country == "US" and not_hit(s)]
    assert old_rules and {s.region for s in old_rules} == {"us-east-1"}
    assert new_rules and {s.region for s in new_rules} == {"us-west-2"}
    report(
        "policy-garbage",
        requests=len(samples),
        failures=0,
        broken_versions=len(garbage),
        failed_reloads=final["failures"],
        fix_picked_up_ms=ms(t_loaded - t_fix),
        example_error=final_error,
    )


def test_unusable_diskcache_is_bypassed_and_reported(tmp_path):
    # The store path is a symlink, so the tests can swap what it points to atomically (a directory replaced
    # by a file can otherwise be re-created by the proxy in between).
    real = tmp_path / "state-dir"
    real.mkdir()
    link = tmp_path / "state"
    link.symlink_to(real)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("the cache directory was replaced by this file")

    def point(target: Path) -> None:
        staging = tmp_path / "state.new"
        staging.symlink_to(target)
        os.replace(staging, link)

    mix = {"jwt": 3, "health": 3, "agent": 3, "post": 1}
    with edge_stack(tmp_path, {"store": {"path": str(link)}}) as stack:
        with LoadGenerator(stack.proxy.url, threads=THREADS, duration=60, mix=mix) as load:
            load.wait_for_samples(5, predicate=lambda s: s.cache == "HIT")
            assert stack.status()["store"]["ok"] is True

            point(blocker)  # the directory is now a file
            status = stack.wait_status(lambda st: st["store"]["ok"] is False, "the store broken")
            t_broken = time.monotonic()
            broken_detail = status["store"]["detail"]
            assert str(link) in broken_detail
            load.wait_for_samples(
                40, predicate=lambda s: s.started > t_broken and s.kind in ("health", "agent")
            )

            t_fixing = time.monotonic()
            point(real)  # fixed: the same directory is back, with its entries
            stack.wait_status(lambda st: st["store"]["ok"] is True, "the store fixed")
            t_fixed = time.monotonic()
            load.wait_for_samples(5, predicate=lambda s: s.started > t_fixed and s.cache == "HIT")

            # Now a full disk: no file of the proxy may grow (writes fail with EFBIG, reads still work).
            pid = stack.proxy.pid
            assert pid is not None
            hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)[1]
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, hard))
            try:
                status = stack.wait_status(lambda st: st["store"]["ok"] is False, "the disk full")
                t_full = time.monotonic()
                full_detail = status["store"]["detail"]
                load.wait_for_samples(40, predicate=lambda s: s.started > t_full)
            finally:
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))
            t_space = time.monotonic()
            stack.wait_status(lambda st: st["store"]["ok"] is True, "the disk usable again")
            samples = load.stop()
        stack.assert_alive()

    assert not failures(samples), describe(failures(samples))
    outage = [s for s in between(samples, t_broken, t_fixing) if s.kind in ("health", "agent")]
    assert outage, describe(samples)
    cached = [s for s in outage if s.cache != "BYPASS"]
    assert not cached, describe(cached)
    assert "unable to open" in broken_detail or "Error" in broken_detail, broken_detail
    assert "disk I/O error" in full_detail or "full" in full_detail, full_detail
    during_full = between(samples, t_full, t_space)
    assert during_full and all(s.status == 200 for s in during_full)
    report(
        "diskcache-unusable",
        requests=len(samples),
        failures=0,
        bypassed_while_broken=len(outage),
        served_while_full=len(during_full),
        cache_while_full=dict(Counter(s.cache or "none" for s in during_full)),
        broken_detail=broken_detail,
        full_detail=full_detail,
    )


@pytest.mark.timeout(180)
def test_soak_has_no_proxy_errors_and_bounded_memory(tmp_path):
    require_redis_server()
    soak_seconds = float(os.environ.get("EDGERULES_SOAK_SECONDS", "60"))
    with RedisServer() as redis:
        overlay = {
            "store": {"backend": "redis", "url": redis.url, "prefix": "soak:", "timeout": "2s"},
            "routing": {"timeout": "5s"},
        }
        keys: dict[str, str] = {}

        def provision(policy: Path) -> None:
            keys["key"], _ = add_api_key(policy)

        with edge_stack(tmp_path, overlay, before_start=provision) as stack:
            load = LoadGenerator(
                stack.proxy.url, threads=THREADS, duration=soak_seconds + 10, api_key=keys["key"]
            )
            with load:
                load.wait_for_samples(200)  # warm: pools, caches, JWT verifier, first rollup hour
                rss_start = stack.rss_kib()
                t_start = time.monotonic()
                while time.monotonic() - t_start < soak_seconds and load.running:
                    time.sleep(0.5)
                rss_end = stack.rss_kib()
                samples = load.stop()
            stack.assert_alive()

    elapsed = time.monotonic() - t_start
    assert not failures(samples), describe(failures(samples))
    assert {s.status for s in samples} == {200}
    growth_mib = (rss_end - rss_start) / 1024
    assert growth_mib < 50, (rss_start, rss_end)
    report(
        "soak",
        requests=len(samples),
        seconds=round(elapsed, 1),
        rate_per_s=round(len(samples) / elapsed, 1),
        failures=0,
        p50_ms=ms(percentile([s.latency for s in samples], 50)),
        p99_ms=ms(percentile([s.latency for s in samples], 99)),
        rss_start_mib=round(rss_start / 1024, 1),
        rss_end_mib=round(rss_end / 1024, 1),
        rss_growth_mib=round(growth_mib, 1),
    )


def test_disk_store_notices_its_directory_was_replaced(tmp_path):
    """The unit behind the diskcache scenario: open SQLite connections would keep writing into deleted files
    (and health would say ok) after the directory was removed or replaced; the store must notice."""
    state = tmp_path / "state"

    async def scenario() -> None:
        store = open_store(StoreConfig(backend="diskcache", path=str(state)))
        try:
            await store.set("k", b"v")
            assert (await store.health()).ok
            for item in state.iterdir():
                item.unlink()
            state.rmdir()
            state.write_text("a file now")
            health = await store.health()
            assert health.ok is False and str(state) in health.detail
            state.unlink()
            assert (await store.health()).ok is True  # re-created, empty
            assert await store.get("k") is None
        finally:
            await store.close()

    asyncio.run(scenario())

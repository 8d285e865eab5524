"""One contract suite for every Store backend (memory, diskcache, real redis-server, a real 3-master Redis
Cluster, a master found through a real Sentinel) plus fault tests."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from unittest.mock import ANY

import pytest
import pytest_asyncio

from edgerules.stores import Store, StoreConfig, StoreUnavailable, open_store
from edgerules.stores.memory import MemoryStore
from tests.support.loop import LoopTicks
from tests.support.redis_cluster import redis_cluster, redis_sentinel  # noqa: F401  (fixtures)
from tests.support.redis_server import RedisServer, redis_server  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Backend:
    name: str
    make: Callable[[str], Store]
    advance: Callable[[float], Awaitable[None]]  # let time pass: the memory clock, or a real sleep
    opened: list[Store] = field(default_factory=list)

    def open(self, prefix: str = "edgerules:") -> Store:
        self.opened.append(self.make(prefix))
        return self.opened[-1]


def _memory_backend() -> Backend:
    clock = [1000.0]

    async def advance(seconds: float) -> None:
        clock[0] += seconds

    return Backend("memory", lambda _prefix: MemoryStore(now=lambda: clock[0]), advance)


@pytest_asyncio.fixture(params=["memory", "diskcache", "redis", "redis-cluster", "redis-sentinel"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "memory":
        made = _memory_backend()
    elif request.param == "diskcache":
        path = str(tmp_path / "state")
        made = Backend(
            "diskcache",
            lambda p: open_store(StoreConfig(backend="diskcache", path=path, prefix=p)),
            asyncio.sleep,
        )
    elif request.param in ("redis-cluster", "redis-sentinel"):  # one per session: flushed for each test
        shared = request.getfixturevalue(request.param.replace("-", "_"))
        shared.flush()
        made = Backend(
            "redis",
            lambda p: open_store(StoreConfig(backend="redis", url=shared.url, prefix=p, timeout=5.0)),
            asyncio.sleep,
        )
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        made = Backend(
            "redis",
            lambda p: open_store(StoreConfig(backend="redis", url=server.url, prefix=p, timeout=5.0)),
            asyncio.sleep,
        )
    yield made
    for store in made.opened:
        await store.close()


# -- the contract -------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_get_set_delete(backend: Backend) -> None:
    store = backend.open()
    assert await store.get("missing") is None
    await store.set("a", b"\x00value\xff")
    assert await store.get("a") == b"\x00value\xff"
    await store.set("a", b"v2")
    assert await store.get("a") == b"v2"
    assert await store.delete("a") is True
    assert await store.delete("a") is False
    assert await store.get("a") is None


@pytest.mark.asyncio
async def test_ttl_expiry(backend: Backend) -> None:
    store = backend.open()
    await store.set("short", b"x", ttl=0.3)
    await store.set("long", b"y", ttl=60)
    await store.set("forever", b"z")
    assert await store.get("short") == b"x"
    await backend.advance(0.6)
    assert await store.get("short") is None
    assert await store.delete("short") is False
    assert await store.get("long") == b"y"
    assert await store.get("forever") == b"z"
    assert await store.keys("") == ["forever", "long"]


@pytest.mark.asyncio
async def test_incr_is_atomic_under_concurrency(backend: Backend) -> None:
    store = backend.open()
    results = await asyncio.gather(*(store.incr("hits", ttl=60) for _ in range(200)))
    assert sorted(results) == list(range(1, 201))  # every increment counted once, none lost
    assert await store.incr("hits", 5) == 205
    assert await store.get("hits") == b"205"


@pytest.mark.asyncio
async def test_incr_ttl_set_once_when_created(backend: Backend) -> None:
    store = backend.open()
    assert await store.incr("window", ttl=0.5) == 1
    await backend.advance(0.3)
    assert await store.incr("window", ttl=0.5) == 2  # must not push the window's end further
    await backend.advance(0.3)
    assert await store.get("window") is None
    assert await store.incr("window", ttl=0.5) == 1  # a new window


@pytest.mark.asyncio
async def test_hincr_and_hgetall(backend: Backend) -> None:
    store = backend.open()
    assert await store.hgetall("rollup") == {}
    await store.hincr("rollup", {"requests": 1, "latency": 12.5}, ttl=60)
    await asyncio.gather(*(store.hincr("rollup", {"requests": 1, "errors": 1}, ttl=60) for _ in range(50)))
    assert await store.hgetall("rollup") == {"requests": 51.0, "latency": 12.5, "errors": 50.0}


@pytest.mark.asyncio
async def test_hincr_ttl_set_once_when_created(backend: Backend) -> None:
    store = backend.open()
    await store.hincr("h", {"n": 1}, ttl=0.5)
    await backend.advance(0.3)
    await store.hincr("h", {"n": 1}, ttl=0.5)
    assert await store.hgetall("h") == {"n": 2.0}
    await backend.advance(0.3)
    assert await store.hgetall("h") == {}


@pytest.mark.asyncio
async def test_keys_and_purge_prefix(backend: Backend) -> None:
    store = backend.open()
    for key in ("cache:/a", "cache:/b", "cache:/b/c", "rl:k1", "cache*x"):
        await store.set(key, b"1")
    await store.incr("cache:count")
    assert await store.keys("cache:") == ["cache:/a", "cache:/b", "cache:/b/c", "cache:count"]
    assert await store.keys("cache*") == ["cache*x"]  # glob characters are literal
    assert await store.keys("nothing") == []
    assert await store.purge_prefix("cache:/b") == 2
    assert await store.keys("") == ["cache*x", "cache:/a", "cache:count", "rl:k1"]
    assert await store.purge_prefix("") == 4
    assert await store.keys("") == []


@pytest.mark.asyncio
async def test_purge_tag(backend: Backend) -> None:
    store = backend.open()
    await store.set("r1", b"1", ttl=60, tags=["route:a"])
    await store.set("r2", b"2", tags=["route:a", "all"])
    await store.set("r3", b"3", tags=["route:b", "all"])
    await store.set("r4", b"4")
    assert await store.purge_tag("route:a") == 2
    assert await store.get("r1") is None
    assert await store.get("r2") is None
    assert await store.purge_tag("all") == 1  # r2 is already gone
    assert await store.keys("") == ["r4"]
    assert await store.purge_tag("all") == 0
    assert await store.purge_tag("never-used") == 0
    assert await store.keys("") == ["r4"]  # internal tag bookkeeping never shows up as a key


@pytest.mark.asyncio
async def test_reserved_keys_are_refused(backend: Backend) -> None:
    store = backend.open()
    with pytest.raises(ValueError, match="reserved"):
        await store.set("tag:x", b"1")
    with pytest.raises(ValueError, match="reserved"):
        await store.incr("tag:x")


@pytest.mark.asyncio
async def test_health_ok(backend: Backend) -> None:
    store = backend.open()
    assert isinstance(store, Store)
    health = await store.health()
    assert health.ok is True
    assert backend.name in health.detail


@pytest.mark.asyncio
async def test_close_is_idempotent(backend: Backend) -> None:
    store = backend.open()
    await store.set("k", b"v")
    await store.close()
    await store.close()  # the fixture closes it once more


@pytest.mark.asyncio
async def test_prefix_isolation(backend: Backend) -> None:
    if backend.name == "memory":
        pytest.skip("memory stores share nothing by construction")
    one, two = backend.open("tenant1:"), backend.open("tenant2:")
    await one.set("k", b"one", tags=["t"])
    await two.set("k", b"two", tags=["t"])
    await one.incr("n")
    assert await two.get("k") == b"two"
    assert await one.keys("") == ["k", "n"]
    assert await two.keys("") == ["k"]
    assert await one.purge_tag("t") == 1
    assert await two.get("k") == b"two"
    assert await one.purge_prefix("") == 1
    assert await two.keys("") == ["k"]


# -- diskcache specifics ------------------------------------------------------------------------------------

_CHILD_INCR = """
import asyncio, sys
from edgerules.stores import StoreConfig, open_store

async def main():
    store = open_store(StoreConfig(backend="diskcache", path=sys.argv[1]))
    for _ in range(50):  # ten at a time: one inline transaction each, or the writer thread under contention
        await asyncio.gather(*(store.incr("shared", ttl=600) for _ in range(10)))
    await store.close()

asyncio.run(main())
"""


def test_diskcache_incr_is_atomic_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "state")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD_INCR, path], env=env, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for child in children:
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err

    async def total() -> bytes | None:
        store = open_store(StoreConfig(backend="diskcache", path=path))
        try:
            return await store.get("shared")
        finally:
            await store.close()

    assert asyncio.run(total()) == b"1000"


@pytest.mark.asyncio
async def test_diskcache_unusable_path_then_recovers(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the cache directory should be")
    store = open_store(StoreConfig(backend="diskcache", path=str(blocker)))
    try:
        with pytest.raises(StoreUnavailable, match="diskcache"):
            await store.set("k", b"v")
        health = await store.health()
        assert health.ok is False
        assert str(blocker) in health.detail
        blocker.unlink()  # the operator fixes the directory: no restart needed
        await store.set("k", b"v")
        assert await store.get("k") == b"v"
        assert (await store.health()).ok is True
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_diskcache_reads_inline_and_see_other_writers(tmp_path: Path) -> None:
    """Reads run on the event loop (no worker hop) and still see what another handle wrote a moment ago."""
    path = str(tmp_path / "state")
    reader = open_store(StoreConfig(backend="diskcache", path=path))
    writer = open_store(StoreConfig(backend="diskcache", path=path))
    try:
        await writer.set("k", b"one")
        assert await reader.get("k") == b"one"  # the first read goes through a worker and opens the handle
        pool_calls = 0
        run = reader._run  # type: ignore[attr-defined]

        async def counting_run(fn):
            nonlocal pool_calls
            pool_calls += 1
            return await run(fn)

        reader._run = counting_run  # type: ignore[attr-defined]
        await writer.set("k", b"two")
        assert await reader.get("k") == b"two"
        await writer.delete("k")
        assert await reader.get("k") is None
        assert pool_calls == 0
    finally:
        await reader.close()
        await writer.close()


@pytest.mark.asyncio
async def test_diskcache_inline_read_error_falls_back_to_a_worker(tmp_path: Path) -> None:
    """An inline read that fails (a lock held past INLINE_LOCK_TIMEOUT: in WAL mode SQLite cannot be made to
    do that on demand, so the handle is made to fail) is not an outage: a worker reads with the full busy
    timeout, and only the worker's verdict decides whether the store is unavailable."""
    import sqlite3

    store = open_store(StoreConfig(backend="diskcache", path=str(tmp_path / "state")))
    try:
        await store.set("k", b"v")
        assert await store.get("k") == b"v"
        reader = store._inline_reader()  # type: ignore[attr-defined]
        assert reader is not None

        def locked(*args, **kwargs):
            raise sqlite3.OperationalError("database is locked")

        reader.get = locked
        assert await store.get("k") == b"v"
        assert await store.hgetall("missing") == {}
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_diskcache_group_commit_gives_every_write_its_own_result(tmp_path: Path) -> None:
    """Concurrent writes share transactions (one writer thread), yet each incr returns its own count, a write
    that fails on its own (a hash operation on a counter) fails alone, and the rest of its batch commits."""
    store = open_store(StoreConfig(backend="diskcache", path=str(tmp_path / "state")))
    try:
        await store.incr("not-a-hash", 1)
        results = await asyncio.gather(
            *(store.incr("n", 1, ttl=60) for _ in range(200)),
            store.hincr("not-a-hash", {"a": 1}),
            *(store.set(f"k{i}", b"v", ttl=60) for i in range(20)),
            return_exceptions=True,
        )
        counts, failed, sets = results[:200], results[200], results[201:]
        assert sorted(counts) == list(range(1, 201))  # every increment saw a distinct count
        assert isinstance(failed, TypeError)
        assert sets == [None] * 20
        assert await store.get("n") == b"200"
        assert [await store.get(f"k{i}") for i in range(20)] == [b"v"] * 20
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_diskcache_failed_transaction_fails_every_write_in_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = open_store(StoreConfig(backend="diskcache", path=str(state)))
    try:
        await store.set("k", b"v")
        shutil.rmtree(state)
        state.write_text("a file where the directory was")
        results = await asyncio.gather(*(store.incr("n", 1) for _ in range(10)), return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        state.unlink()  # usable again: the writer reopens it
        assert await store.incr("n", 1) == 1
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_diskcache_counters_commit_inline_and_wait_for_a_writer_in_a_worker(tmp_path: Path) -> None:
    """Counters commit on the event loop once the inline handle is open; while another process holds SQLite's
    write lock they move to the writer thread, which waits for it, and the loop keeps running meanwhile."""
    import sqlite3

    from diskcache.core import DBNAME

    state = tmp_path / "state"
    store = open_store(StoreConfig(backend="diskcache", path=str(state)))
    try:
        assert await store.incr("n", 1, ttl=60) == 1  # through the writer thread: it opens the inline handle
        handed: list[int] = []
        to_writer = store._to_writer  # type: ignore[attr-defined]

        def counting(loop, writes):
            handed.append(len(writes))
            to_writer(loop, writes)

        store._to_writer = counting  # type: ignore[attr-defined]
        assert await asyncio.gather(*(store.incr("n", 1) for _ in range(5))) == [2, 3, 4, 5, 6]
        assert handed == []  # committed inline, in one transaction of one loop turn
        handle = store._inline_reader()  # type: ignore[attr-defined]
        assert handle._con.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # a worker checkpoints

        locker = sqlite3.connect(state / DBNAME, isolation_level=None, timeout=5)
        locker.execute("BEGIN IMMEDIATE")  # another process's write transaction
        async with LoopTicks(0.01) as ticks:
            counted = asyncio.create_task(store.incr("n", 1))
            await asyncio.sleep(0.3)
            assert not counted.done() and handed == [1]  # handed over, waiting for the lock in the writer
        assert ticks.count >= 10  # and the event loop went on meanwhile
        locker.execute("COMMIT")
        locker.close()
        assert await asyncio.wait_for(counted, 5) == 7
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_diskcache_inline_counter_failing_mid_transaction_is_redone_by_the_writer(
    tmp_path: Path,
) -> None:
    """A disk error inside an inline transaction rolls the whole batch back; the writer thread then runs it
    once (no increment lost or counted twice) and a fresh inline handle takes over afterwards."""
    import sqlite3

    store = open_store(StoreConfig(backend="diskcache", path=str(tmp_path / "state")))
    try:
        assert await store.incr("n", 1) == 1  # opens the inline handle
        handle = store._inline_reader()  # type: ignore[attr-defined]
        assert handle is not None
        real_incr = handle.incr
        calls = 0

        def flaky_incr(*args, **kwargs):
            nonlocal calls
            calls += 1
            if calls == 2:  # the second write of the batch, after the first one changed the counter
                raise sqlite3.OperationalError("disk I/O error")
            return real_incr(*args, **kwargs)

        handle.incr = flaky_incr
        assert sorted(await asyncio.gather(*(store.incr("n", 1) for _ in range(3)))) == [2, 3, 4]
        assert store._inline_reader() is not handle  # type: ignore[attr-defined]  # dropped
        assert await store.get("n") == b"4"
        assert await store.incr("n", 1) == 5
        assert store._inline_reader() is not None  # type: ignore[attr-defined]  # a new one took over
    finally:
        await store.close()


def _in_forked_child(task: Callable[[], dict[str, object]]) -> dict[str, object]:
    """Run ``task`` in a forked child, unprivileged ("nobody") when we are root: root ignores file modes."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads: the child only runs task
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            payload = json.dumps(task())
        except BaseException as exc:
            payload = json.dumps({"crash": repr(exc)})
        os.write(write_end, payload.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(payload)


def _set_and_check_health(path: str) -> dict[str, object]:
    async def main() -> dict[str, object]:
        store = open_store(StoreConfig(backend="diskcache", path=path))
        try:
            await store.set("k", b"v")
            error = None
        except StoreUnavailable as exc:
            error = str(exc)
        health = await store.health()
        await store.close()
        return {"error": error, "ok": health.ok, "detail": health.detail}

    return asyncio.run(main())


def test_diskcache_read_only_directory() -> None:
    # an unprivileged child must be able to reach the directory: pytest's tmp_path is private to root
    base = Path(tempfile.mkdtemp(prefix="edgerules-ro-"))
    state = base / "state"
    try:
        base.chmod(0o755)
        assert _set_and_check_health(str(state)) == {"error": None, "ok": True, "detail": ANY}  # db created
        for item in [state, *state.iterdir()]:
            item.chmod(0o555 if item.is_dir() else 0o444)
        result = _in_forked_child(partial(_set_and_check_health, str(state)))
        assert "crash" not in result, result
        assert isinstance(result["error"], str) and result["error"].startswith(f"diskcache {state}")
        assert result["ok"] is False
        assert "readonly" in str(result["detail"]) or "unable to open" in str(result["detail"]), result
    finally:
        for item in [state, *state.iterdir()] if state.exists() else []:
            item.chmod(0o755 if item.is_dir() else 0o644)
        shutil.rmtree(base, ignore_errors=True)


# -- redis specifics ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_redis_kill_then_restart_recovers(redis_server: RedisServer) -> None:  # noqa: F811
    store = open_store(StoreConfig(backend="redis", url=redis_server.url, timeout=0.25))
    try:
        assert await store.incr("n") == 1
        redis_server.kill()
        for _ in range(3):  # promptly, every time: no hidden retry loop
            async with asyncio.timeout(1.0):
                with pytest.raises(StoreUnavailable, match=r"redis 127\.0\.0\.1"):
                    await store.get("n")
        health = await store.health()
        assert health.ok is False
        assert str(redis_server.port) in health.detail
        redis_server.restart()
        assert (await store.health()).ok is True
        assert await store.incr("n") == 1  # a fresh server: nothing was persisted
        await store.set("k", b"v", tags=["t"])
        assert await store.get("k") == b"v"
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_redis_hung_server_times_out(redis_server: RedisServer) -> None:  # noqa: F811
    store = open_store(StoreConfig(backend="redis", url=redis_server.url, timeout=0.25))
    assert redis_server.process is not None
    try:
        await store.set("k", b"v")
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            async with asyncio.timeout(1.0):
                with pytest.raises(StoreUnavailable, match="Timeout"):
                    await store.get("k")
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        assert await store.get("k") == b"v"
    finally:
        await store.close()

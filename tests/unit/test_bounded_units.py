"""Issue #16 without a proxy: rate-limited warnings and the policy watcher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from edgerules.edge.runtime import EdgeRuntime
from tests.support.policies import ENV, write_policy


def _runtime(tmp_path) -> EdgeRuntime:
    path = write_policy(tmp_path, {"us-east-1": 9101, "us-west-2": 9102, "eu-west-1": 9103})
    runtime = EdgeRuntime(str(path), "e2e", environ=ENV)
    runtime.load_initial()
    return runtime


def test_repeated_store_failures_log_one_line_per_interval_with_a_count(tmp_path, caplog):
    runtime = _runtime(tmp_path)

    async def failing() -> None:
        raise OSError(28, "No space left on device")

    async def main() -> None:
        for _ in range(500):
            runtime._background(failing())
        await asyncio.sleep(0.05)
        await asyncio.gather(*list(runtime._pending), return_exceptions=True)
        await asyncio.sleep(0)

    with caplog.at_level(logging.WARNING, logger="edgerules"):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "background store task failed" in r.getMessage()]
    assert len(lines) == 1, lines[:5]
    assert "No space left on device" in lines[0]
    # the next line (after the interval) says how many were not logged
    runtime._store_warnings.interval = 0.0
    with caplog.at_level(logging.WARNING, logger="edgerules"):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "background store task failed" in r.getMessage()]
    assert len(lines) >= 2
    assert "499 more" in lines[1], lines[1]


def test_cache_store_failures_on_every_request_log_once_per_interval(caplog):
    from edgerules.cache import response as cache_module
    from edgerules.cache.http import CacheRule
    from edgerules.cache.response import ResponseCache
    from edgerules.stores.memory import MemoryStore

    class FullDisk(MemoryStore):
        async def set(self, key, value, ttl=None, tags=()):
            raise OSError(28, "No space left on device")

    cache = ResponseCache(FullDisk())
    rule = CacheRule(name="agents", source="rules.yaml:12", ttl=300)
    cache_module._store_failed._last = float("-inf")
    cache_module._store_failed.suppressed = 0

    async def main() -> None:
        for i in range(200):
            stored = await cache.store(
                rule, f"k{i}", f"/a/{i}", "GET", [], 200, [("Content-Type", "application/json")], b"{}", 0, 0
            )
            assert stored is False

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "cache store failed" in r.getMessage()]
    assert len(lines) == 1, lines[:3]
    assert cache_module._store_failed.suppressed == 199


# ------------------------------------------------------------------------------------------ policy watcher


def _watch(runtime: EdgeRuntime, seconds: float, during=None) -> dict:
    """Run the runtime's watcher for `seconds` on a loop in a daemon thread (so a wedged loop fails the
    test instead of hanging it); a ticker counts the loop turns it got meanwhile."""
    import threading

    out: dict = {"ticks": 0, "alive": None, "finished": False}

    async def main() -> None:
        runtime.reload_interval = 0.05
        task = asyncio.get_running_loop().create_task(runtime._watch_policy())
        end = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < end:
            await asyncio.sleep(0.01)
            out["ticks"] += 1
            if during is not None and out["ticks"] in during:
                during[out["ticks"]]()
        out["alive"] = not task.done()
        if task.done() and not task.cancelled():
            out["died"] = repr(task.exception())
        task.cancel()
        out["finished"] = True

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    thread.join(seconds + 10)
    return out


def test_watcher_survives_a_fifo_at_the_policy_path(tmp_path):
    import os

    runtime = _runtime(tmp_path)
    path = runtime.policy_path
    good = Path(path).read_text()
    os.replace(path, f"{path}.bak")
    os.mkfifo(path)
    seen: dict = {}

    def fix() -> None:
        # what the watcher said while the FIFO was there, then a regular file with new content in its place
        seen["failures"] = runtime.reload_status.watch_failures
        seen["error"] = runtime.reload_status.watch_error
        os.unlink(path)
        Path(path).write_text(good.replace('"retries": 2', '"retries": 1'))

    try:
        out = _watch(runtime, 2.0, during={80: fix})
    finally:
        # unblock an old-style watcher stuck opening the FIFO for reading
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    assert out["finished"], "the event loop was wedged by a FIFO at the policy path"
    assert out["ticks"] >= 100
    assert out["alive"], out
    assert seen["failures"] >= 1
    assert "not a regular file" in (seen["error"] or "")
    # fixed: the same watcher picked up the regular file
    assert runtime.reload_status.watch_error is None
    assert runtime.reload_status.reloads == 1
    assert runtime.policy.routing.retries == 1


def test_watcher_survives_dev_zero_at_the_policy_path(tmp_path):
    import os

    runtime = _runtime(tmp_path)
    path = runtime.policy_path
    os.replace(path, f"{path}.bak")
    os.symlink("/dev/zero", path)
    out = _watch(runtime, 1.0)
    assert out["finished"], "the event loop was wedged reading /dev/zero"
    assert out["alive"], "the watcher task died"
    assert "not a regular file" in (runtime.reload_status.watch_error or "")
    assert runtime.reload_status.reloads == 0  # the last good policy keeps serving
    metrics = runtime.prometheus_text()
    line = next(x for x in metrics.splitlines() if x.startswith("edgerules_policy_watch_failures_total"))
    assert float(line.split()[-1]) >= 1


def test_watcher_reads_the_policy_only_when_its_stat_changes(tmp_path, monkeypatch):
    from edgerules.edge import runtime as runtime_module

    runtime = _runtime(tmp_path)
    reads = []
    real = runtime_module.files_fingerprint
    monkeypatch.setattr(runtime_module, "files_fingerprint", lambda paths: reads.append(1) or real(paths))
    out = _watch(runtime, 0.8)
    assert out["finished"] and out["alive"]
    assert reads == [], "an unchanged policy was read again"


def test_loader_refuses_a_fifo_without_blocking(tmp_path):
    import os
    import threading

    import pytest

    from edgerules.diagnostics import PolicyError
    from edgerules.policy.loader import load_yaml_file

    path = tmp_path / "policy.yaml"
    os.mkfifo(path)
    out: dict = {}

    def load() -> None:
        try:
            load_yaml_file(path)
        except PolicyError as exc:
            out["error"] = str(exc)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():  # unblock it before failing
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the loader blocked opening a FIFO")
    assert "not a regular file" in out["error"]

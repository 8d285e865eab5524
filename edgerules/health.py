"""Region health: active probes in the background plus passive ejection from real traffic.

The seed fetched three health endpoints on every request (DESIGN.md flaw 6). Here a request only reads this
in-memory state. The registry outlives policy reloads: it is keyed by region name, and a reload just changes
what the prober probes next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from edgerules.model import PassiveHealth, Policy, Region

log = logging.getLogger("edgerules.health")


@dataclass(slots=True)
class RegionHealth:
    active_healthy: bool = True  # optimistic until the first probe says otherwise
    consecutive_ok: int = 0
    consecutive_fail: int = 0
    passive_failures: int = 0
    ejected_until: float = 0.0
    reason: str = "not probed yet"
    last_probe: float = 0.0
    forced: bool | None = None  # set by tests / `edgerules explain --down`


class HealthRegistry:
    """In-memory health of every region; cheap to read on the request path."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._regions: dict[str, RegionHealth] = {}

    def state(self, region: str) -> RegionHealth:
        state = self._regions.get(region)
        if state is None:
            state = self._regions[region] = RegionHealth()
        return state

    def is_healthy(self, region: str) -> bool:
        state = self._regions.get(region)
        if state is None:
            return True
        if state.forced is not None:
            return state.forced
        return state.active_healthy and state.ejected_until <= self._now()

    def force(self, region: str, healthy: bool | None) -> None:
        self.state(region).forced = healthy

    def record_probe(
        self, region: str, ok: bool, reason: str, healthy_threshold: int, unhealthy_threshold: int
    ):
        state = self.state(region)
        state.last_probe = self._now()
        state.reason = reason
        if ok:
            state.consecutive_ok += 1
            state.consecutive_fail = 0
            if not state.active_healthy and state.consecutive_ok >= healthy_threshold:
                state.active_healthy = True
                state.ejected_until = 0.0
                state.passive_failures = 0
                log.info("region %s is healthy again (%s)", region, reason)
        else:
            state.consecutive_fail += 1
            state.consecutive_ok = 0
            if state.active_healthy and state.consecutive_fail >= unhealthy_threshold:
                state.active_healthy = False
                log.warning("region %s is unhealthy: %s", region, reason)

    def record_failure(self, region: str, reason: str, passive: PassiveHealth) -> None:
        """A real request failed (connect error, timeout, 5xx): eject after `passive.failures` in a row."""
        state = self.state(region)
        state.passive_failures += 1
        if state.passive_failures >= passive.failures:
            state.ejected_until = self._now() + passive.ejection
            state.reason = f"ejected after {state.passive_failures} failed requests: {reason}"
            state.passive_failures = 0
            log.warning("region %s ejected for %.0fs: %s", region, passive.ejection, reason)

    def record_connect_failure(self, region: str, reason: str, passive: PassiveHealth) -> None:
        """The region refused the connection: nobody is listening, eject at once."""
        state = self.state(region)
        state.ejected_until = self._now() + passive.ejection
        state.passive_failures = 0
        state.reason = f"ejected: {reason}"

    def record_success(self, region: str) -> None:
        state = self._regions.get(region)
        if state is not None and state.passive_failures:
            state.passive_failures = 0

    def snapshot(self, regions: list[str]) -> dict[str, dict[str, object]]:
        now = self._now()
        out: dict[str, dict[str, object]] = {}
        for name in regions:
            state = self.state(name)
            out[name] = {
                "healthy": self.is_healthy(name),
                "active_healthy": state.active_healthy,
                "ejected_for_s": round(max(0.0, state.ejected_until - now), 1),
                "reason": state.reason,
            }
        return out


async def probe_region(session: aiohttp.ClientSession, region: Region) -> tuple[bool, str]:
    """One active probe: expected status and, when configured, expected JSON fields."""
    probe = region.health
    url = f"{region.scheme}://{region.host}:{region.port}{region.base_path}{probe.path}"
    try:
        async with session.get(
            url,
            headers=dict(probe.headers),
            timeout=aiohttp.ClientTimeout(total=probe.timeout),
            allow_redirects=False,
        ) as response:
            if response.status not in probe.expect_status:
                return False, f"HTTP {response.status}"
            if probe.expect_json:
                body = await response.read()
                try:
                    data = json.loads(body)
                except ValueError:
                    return False, "health body is not JSON"
                if not isinstance(data, dict):
                    return False, "health body is not a JSON object"
                for key, expected in probe.expect_json:
                    if data.get(key) != expected:
                        return False, f"{key}={data.get(key)!r}, expected {expected!r}"
            return True, f"HTTP {response.status}"
    except TimeoutError:
        return False, f"timeout after {probe.timeout:g}s"
    except aiohttp.ClientError as exc:
        return False, f"{type(exc).__name__}: {exc}"[:200]
    except OSError as exc:
        return False, f"{type(exc).__name__}: {exc}"[:200]


class HealthProber:
    """Probes every region of the current policy on its own interval, forever, off the request path."""

    def __init__(self, registry: HealthRegistry, policy: Callable[[], Policy | None]) -> None:
        self._registry = registry
        self._policy = policy
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None

    def sync(self) -> None:
        """Start probe loops for new regions, stop them for removed ones (call after every policy swap)."""
        policy = self._policy()
        wanted = set(policy.regions) if policy else set()
        for name in list(self._tasks):
            if name not in wanted:
                self._tasks.pop(name).cancel()
        for name in wanted:
            if name not in self._tasks:
                self._tasks[name] = asyncio.get_running_loop().create_task(self._loop(name))

    async def _loop(self, name: str) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=16, force_close=True), auto_decompress=False
            )
        while True:
            policy = self._policy()
            region = policy.regions.get(name) if policy else None
            if region is None:
                return
            ok, reason = await probe_region(self._session, region)
            probe = region.health
            self._registry.record_probe(name, ok, reason, probe.healthy_threshold, probe.unhealthy_threshold)
            await asyncio.sleep(probe.interval)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

"""Active health probes: one aiohttp loop per region of the current policy, off the request path.

The only HTTP client besides the origin client (`edgerules.edge.upstream`); it feeds `health.HealthRegistry`, which the
engine reads. It lives in the edge layer so that the engine and the policy never load aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

import aiohttp

from edgerules.engine.health import HealthRegistry
from edgerules.policy.model import Policy, Region


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

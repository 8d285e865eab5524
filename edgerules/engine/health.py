"""Region health: the state machine fed by active probes (`edgerules.edge.prober`) and by real traffic (passive).

No request waits for a health check: a request only reads this in-memory state. The registry outlives policy reloads: it is keyed by region name, and a reload just changes
what the prober probes next.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from edgerules.policy.model import PassiveHealth

log = logging.getLogger("edgerules.engine.health")


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
    # (time, error status?, client address) of the recent answers, for the error-status ratio
    answers: deque[tuple[float, bool, str]] = field(default_factory=lambda: deque(maxlen=ANSWERS_KEPT))


ANSWERS_KEPT = 1024  # the ratio is over at most this many recent answers per region


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
    ) -> None:
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
        """A real request failed in transport (timeout, reset): eject after `passive.failures` in a row."""
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

    def record_answer(self, region: str, status: int, client: str, passive: PassiveHealth) -> None:
        """The origin answered: the transport works (the failure streak ends). An error status counts toward
        the ratio: eject when, over `passive.window`, at least `min_requests` answers were seen, at least
        `status_ratio` of them were errors, from at least `min_clients` distinct client addresses.

        The trade-off (as in Envoy's outlier detection): a region that fails only some clients' requests, or
        fails for a single client, stays in rotation; a region failing for everyone is ejected a few answers
        later than with a plain consecutive count."""
        state = self.state(region)
        state.passive_failures = 0
        failed = status in passive.statuses
        answers = state.answers
        if not failed and not answers:
            return  # the common case: a healthy region with no recent errors keeps no history
        now = self._now()
        answers.append((now, failed, client))
        horizon = now - passive.window
        while answers and answers[0][0] < horizon:
            answers.popleft()
        if not any(f for _, f, _ in answers):
            answers.clear()
            return
        if not failed or len(answers) < passive.min_requests:
            return
        errors = [c for _, f, c in answers if f]
        if len(errors) < passive.status_ratio * len(answers) or len(set(errors)) < passive.min_clients:
            return
        state.ejected_until = now + passive.ejection
        state.reason = (
            f"ejected: {len(errors)} of {len(answers)} answers were errors (HTTP {status} last), "
            f"from {len(set(errors))} clients"
        )
        answers.clear()
        log.warning("region %s ejected for %.0fs: %s", region, passive.ejection, state.reason)

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

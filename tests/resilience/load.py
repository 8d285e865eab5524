"""A bounded, continuous mixed load for fault tests: a few client threads, every request recorded.

Each worker thread loops over a weighted mix of requests until ``stop()`` or until ``duration`` seconds have
passed (it always stops by itself):

- ``jwt``: ``GET /api/v1/calls/<n>`` with a Bearer token, from one of several countries (so several regions);
- ``apikey``: ``GET /api/v1/phone-numbers/<n>`` with ``Authorization: API-Key <key>`` (only with ``api_key``);
- ``health``: ``GET /health`` (public and cacheable);
- ``agent``: ``GET /api/v1/agents/agent-<n>`` with a Bearer token (cacheable per user);
- ``post``: ``POST /api/v1/calls`` with a small JSON body (not idempotent).

Every request becomes a :class:`Sample` (when, which phase, status, serving region, latency, cache status).
A status of 0 means the client saw no HTTP answer at all (connection refused/reset, client timeout).
``set_phase(name, country=...)`` labels what is sent from then on (and may pin the country), so a test can
compare what the client saw per phase with what the edge recorded.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.client import HTTPException
from types import TracebackType
from typing import Self

import jwt

from tests.support.policies import JWT_SECRET
from tests.support.proxy import http

# The seed policy's primary region per country (rules/aybiza.yaml `routing.countries`).
SEED_PRIMARY: dict[str, str] = {
    "US": "us-east-1",
    "CA": "us-east-1",
    "MX": "us-west-2",
    "JP": "us-west-2",
    "GB": "eu-west-1",
    "DE": "eu-west-1",
}
DEFAULT_MIX: dict[str, int] = {"jwt": 6, "apikey": 2, "health": 2, "agent": 2, "post": 1}
IDEMPOTENT_KINDS = frozenset({"jwt", "apikey", "health", "agent"})
USERS = ("alice", "bob", "carol")


@dataclass(frozen=True, slots=True)
class Sample:
    kind: str
    phase: str
    country: str
    started: float  # time.monotonic()
    finished: float
    status: int  # 0: no HTTP answer reached the client
    region: str | None  # the region that served it (X-CF-Processed-Region), None for most edge answers
    cache: str | None  # CF-Cache-Status
    detail: str | None = None  # the transport error, or the edge's error body for a 5xx

    @property
    def latency(self) -> float:
        return self.finished - self.started

    @property
    def target(self) -> str | None:
        """The country's primary region in the seed policy (None for countries it does not list)."""
        return SEED_PRIMARY.get(self.country)

    @property
    def idempotent(self) -> bool:
        return self.kind in IDEMPOTENT_KINDS


def bearer_token(sub: str, secret: str = JWT_SECRET, ttl: float = 3600.0) -> str:
    claims = {"sub": sub, "role": "member", "permissions": ["calls:read"], "exp": int(time.time() + ttl)}
    return jwt.encode(claims, secret, algorithm="HS256")


class LoadGenerator:
    """``with LoadGenerator(url, ...) as load: ...``; ``load.samples()`` at any time, ``load.stop()`` at the
    end (idempotent; the context manager calls it)."""

    def __init__(
        self,
        base_url: str,
        *,
        threads: int = 4,
        duration: float = 30.0,
        mix: Mapping[str, int] | None = None,
        countries: Sequence[str] = ("US", "GB", "JP", "DE", "MX"),
        api_key: str | None = None,
        jwt_secret: str = JWT_SECRET,
        pause: float = 0.01,
        timeout: float = 10.0,
        seed: int = 1,
    ) -> None:
        mix = dict(mix if mix is not None else DEFAULT_MIX)
        if api_key is None:
            mix.pop("apikey", None)
        unknown = set(mix) - set(DEFAULT_MIX)
        if unknown or not any(mix.values()):
            raise ValueError(f"mix needs positive weights for kinds of {sorted(DEFAULT_MIX)}, got {mix}")
        self.base_url = base_url.rstrip("/")
        self.threads = threads
        self.duration = duration
        self.countries = tuple(countries)
        self.api_key = api_key
        self.pause = pause
        self.timeout = timeout
        self._kinds = [kind for kind, weight in mix.items() for _ in range(weight)]
        self._tokens = {user: bearer_token(user, jwt_secret, ttl=duration + 600) for user in USERS}
        self._seed = seed
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._samples: list[Sample] = []
        self._in_flight: dict[str, int] = {}
        self._phase = "start"
        self._phase_country: str | None = None
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self.started_at: float | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._workers:
            raise RuntimeError("already started")
        self.started_at = time.monotonic()
        deadline = self.started_at + self.duration
        for index in range(self.threads):
            worker = threading.Thread(
                target=self._run, args=(index, deadline), name=f"load-{index}", daemon=True
            )
            self._workers.append(worker)
            worker.start()
        return self

    def stop(self) -> list[Sample]:
        """Stop the workers (each finishes its current request) and return every sample."""
        self._stop.set()
        for worker in self._workers:
            worker.join(self.timeout + 5)
        return self.samples()

    @property
    def running(self) -> bool:
        return any(worker.is_alive() for worker in self._workers)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- phases and samples -------------------------------------------------------------------------------

    def set_phase(self, name: str, *, country: str | None = None) -> None:
        """Label every request sent from now on with ``name``; ``country`` pins their CF-IPCountry."""
        with self._lock:
            self._phase = name
            self._phase_country = country

    def in_flight(self, phase: str) -> int:
        with self._lock:
            return self._in_flight.get(phase, 0)

    def wait_settled(self, phase: str, timeout: float | None = None) -> None:
        """Wait until no request of ``phase`` is still on its way (call after moving to another phase)."""
        deadline = time.monotonic() + (self.timeout + 5 if timeout is None else timeout)
        while self.in_flight(phase) and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.in_flight(phase):
            raise AssertionError(f"requests of phase {phase!r} still in flight")

    def samples(self, predicate: Callable[[Sample], bool] | None = None) -> list[Sample]:
        with self._lock:
            found = list(self._samples)
        return [s for s in found if predicate(s)] if predicate is not None else found

    def count(self) -> int:
        with self._lock:
            return len(self._samples)

    def wait_for_samples(
        self, n: int, timeout: float = 30.0, predicate: Callable[[Sample], bool] | None = None
    ) -> list[Sample]:
        """Wait until at least ``n`` samples (matching ``predicate``) exist, ``timeout`` passed or the load
        ended; returns the matching samples (the caller asserts on them)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.samples(predicate)
            if len(found) >= n or time.monotonic() >= deadline or not self.running:
                return found
            time.sleep(0.05)

    # -- the workers --------------------------------------------------------------------------------------

    def _run(self, index: int, deadline: float) -> None:
        rng = random.Random(self._seed * 1000 + index)
        while not self._stop.is_set() and time.monotonic() < deadline:
            kind = rng.choice(self._kinds)
            with self._lock:
                phase, country = self._phase, self._phase_country
                self._in_flight[phase] = self._in_flight.get(phase, 0) + 1
            country = country or rng.choice(self.countries)
            try:
                sample = self._send(kind, phase, country, next(self._counter), rng)
            finally:
                with self._lock:
                    self._in_flight[phase] -= 1
            with self._lock:
                self._samples.append(sample)
            if self.pause:
                self._stop.wait(self.pause)

    def _request(self, kind: str, n: int, user: str) -> tuple[str, str, dict[str, str], bytes | None]:
        auth = {"Authorization": f"Bearer {self._tokens[user]}"}
        if kind == "jwt":
            return "GET", f"/api/v1/calls/{n}", auth, None
        if kind == "apikey":
            return "GET", f"/api/v1/phone-numbers/{n}", {"Authorization": f"API-Key {self.api_key}"}, None
        if kind == "health":
            return "GET", "/health", {}, None
        if kind == "agent":
            return "GET", f"/api/v1/agents/agent-{n % 5}", auth, None
        body = f'{{"call": {n}}}'.encode()
        return "POST", "/api/v1/calls", {**auth, "Content-Type": "application/json"}, body

    def _send(self, kind: str, phase: str, country: str, n: int, rng: random.Random) -> Sample:
        method, path, headers, body = self._request(kind, n, rng.choice(USERS))
        headers["CF-IPCountry"] = country
        started = time.monotonic()
        try:
            response = http(method, self.base_url + path, headers, body, timeout=self.timeout)
        except (OSError, HTTPException) as exc:  # refused, reset, timed out, garbled
            detail = f"{type(exc).__name__}: {exc}"
            return Sample(kind, phase, country, started, time.monotonic(), 0, None, None, detail)
        finished = time.monotonic()
        detail = response.body[:200].decode("utf-8", "replace") if response.status >= 500 else None
        return Sample(
            kind,
            phase,
            country,
            started,
            finished,
            response.status,
            response.headers.get("X-CF-Processed-Region"),
            response.headers.get("CF-Cache-Status"),
            detail,
        )


# -- summaries --------------------------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty collection."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def between(samples: Iterable[Sample], start: float, end: float) -> list[Sample]:
    """Samples sent at or after ``start`` and finished before ``end`` (monotonic times)."""
    return [s for s in samples if s.started >= start and s.finished <= end]


def failures(samples: Iterable[Sample]) -> list[Sample]:
    """Samples the client would call failed: no answer at all, or a 5xx."""
    return [s for s in samples if s.status == 0 or s.status >= 500]


def describe(samples: Sequence[Sample], limit: int = 10) -> str:
    """A short text for assertion messages."""
    lines = [f"{len(samples)} samples"]
    lines += [
        f"  {s.kind} {s.country} phase={s.phase} status={s.status} region={s.region} cache={s.cache} "
        f"{s.latency * 1000:.0f}ms {s.detail or ''}"
        for s in samples[:limit]
    ]
    return "\n".join(lines)

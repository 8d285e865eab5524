"""What the response cache buys: throughput of cache HITs vs bare passthrough, and origin requests saved.

    .venv/bin/python bench/bench_cache.py [--rounds 3] [--duration 8] [--requests 500] [--skip-wrk]

1. Requests/s for `GET /health` through `mitmdump -s addon.py` (every answer a cache HIT) and through a bare
   `mitmdump` reverse proxy to the same origin, measured with `wrk` (2 threads, 16 connections) in interleaved
   rounds in one run, so both see the same machine state. Printed as a ratio (edge HIT / passthrough).
2. A replayed seed-like workload (agent configs per user, health, call management, audio uploads: a fixed,
   seeded list of requests) sent through an edge with the shipped cache rules and through one with no cache
   rules; the origin's own request counter says how many reached it, hence the share saved.

Everything binds to 127.0.0.1 and every process started here is stopped before exit; each wrk run is bounded
by `--duration` (plus a few seconds' grace).
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import jwt  # noqa: E402

from tests.support.origins import Origin, start_origin  # noqa: E402
from tests.support.policies import ENV, JWT_SECRET, write_policy  # noqa: E402
from tests.support.proxy import Proxy, http, start_mitmdump  # noqa: E402

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
QUIET = {"flow_detail": 0}
# Probes once at start (then hourly): the origin's counter then only sees the workload.
BENCH_OVERLAY = {"health": {"interval": "1h"}}


def _edge(directory: Path, origin: Origin, overlay: dict | None = None) -> Proxy:
    """An edge whose three regions all point at ``origin``; returns once its start-up probes arrived."""
    policy = write_policy(
        directory, dict.fromkeys(REGIONS, origin.port), {**BENCH_OVERLAY, **(overlay or {})}
    )
    options = {"edgerules_policy": str(policy), "edgerules_env": "e2e", **QUIET}
    probes_before = origin.hits("/health")
    proxy = start_mitmdump(options=options, env=ENV)
    deadline = time.monotonic() + 10
    while origin.hits("/health") < probes_before + len(REGIONS):
        if time.monotonic() > deadline:
            proxy.stop()
            raise RuntimeError("the edge's start-up health probes never reached the origin")
        time.sleep(0.05)
    return proxy


def _passthrough(origin: Origin) -> Proxy:
    return start_mitmdump(addon=None, mode=f"reverse:{origin.url}", options=QUIET)


def _wrk(url: str, duration: float) -> float:
    argv = ["wrk", "-t2", "-c16", f"-d{duration:g}s", "--timeout", "5s", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 20, check=True)
    match = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    if match is None:
        raise RuntimeError(f"unexpected wrk output:\n{done.stdout}{done.stderr}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    if errors:
        raise RuntimeError(f"{url}: {errors[1]} non-2xx answers during the run:\n{done.stdout}")
    return float(match[1])


def throughput(directory: Path, origin: Origin, rounds: int, duration: float) -> None:
    edge = _edge(directory / "throughput", origin)
    bare = _passthrough(origin)
    try:
        url = f"{edge.url}/health"
        http("GET", url)
        deadline = time.monotonic() + 5
        while http("GET", url).headers.get("CF-Cache-Status") != "HIT":
            if time.monotonic() > deadline:
                raise RuntimeError("/health never became a cache HIT through the edge")
            time.sleep(0.05)
        assert http("GET", f"{bare.url}/health").status == 200
        results: dict[str, list[float]] = {"edge-hit": [], "passthrough": []}
        for i in range(rounds):
            order = [("edge-hit", edge), ("passthrough", bare)]
            for name, proxy in order if i % 2 == 0 else order[::-1]:
                results[name].append(_wrk(f"{proxy.url}/health", duration))
                print(f"  round {i + 1} {name:12s} {results[name][-1]:8.0f} req/s", flush=True)
        hit, passthrough = (statistics.median(results[k]) for k in ("edge-hit", "passthrough"))
        print(
            f"throughput (median of {rounds} x {duration:g}s, wrk -t2 -c16): edge cache HIT {hit:.0f} req/s, "
            f"bare mitmdump passthrough {passthrough:.0f} req/s, ratio {hit / passthrough:.2f}"
        )
    finally:
        edge.stop()
        bare.stop()


def _bearer(user: str) -> str:
    claims = {"sub": user, "role": "agent", "permissions": ["read"], "exp": int(time.time()) + 3600}
    return "Bearer " + jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def workload(size: int, seed: int = 7) -> list[tuple[str, str, dict[str, str], bytes | None]]:
    """A seed-like mix: 40% agent configs (10 users x 8 agents), 20% health, 25% call management, 15% audio."""
    rng = random.Random(seed)
    tokens = {f"user-{u}": _bearer(f"user-{u}") for u in range(10)}
    users = list(tokens)
    out: list[tuple[str, str, dict[str, str], bytes | None]] = []
    for _ in range(size):
        user = rng.choice(users)
        auth = {"Authorization": tokens[user], "CF-IPCountry": rng.choice(["US", "GB", "JP"])}
        kind = rng.random()
        if kind < 0.40:
            out.append(("GET", f"/api/v1/agents/agent-{rng.randrange(8)}", auth, None))
        elif kind < 0.60:
            out.append(("GET", "/health", {}, None))
        elif kind < 0.85:
            call = f"/api/v1/calls/call-{rng.randrange(50)}"
            if rng.random() < 0.5:
                out.append(("GET", call, auth, None))
            else:
                headers = {**auth, "Content-Type": "application/json"}
                out.append(("POST", call, headers, b'{"event": "status"}'))
        else:
            headers = {**auth, "Content-Type": "audio/wav"}
            out.append(("POST", f"/voice/audio/session-{rng.randrange(20)}", headers, b"\0" * 2048))
    return out


def _replay(proxy: Proxy, origin: Origin, requests: list) -> tuple[int, int]:
    """(origin requests during the replay, answers that were not 2xx)."""
    before = origin.requests()
    failures = 0
    for method, path, headers, body in requests:
        status = http(method, f"{proxy.url}{path}", headers, body).status
        failures += not 200 <= status < 300
        time.sleep(0.001)  # let the edge's background store task run, as real traffic spacing would
    return origin.requests() - before, failures


def origin_savings(directory: Path, origin: Origin, size: int) -> None:
    requests = workload(size)
    cached = _edge(directory / "cached", origin)
    try:
        with_cache, failed_cached = _replay(cached, origin, requests)
    finally:
        cached.stop()
    uncached = _edge(directory / "uncached", origin, {"cache": {"rules": []}})
    try:
        without_cache, failed_uncached = _replay(uncached, origin, requests)
    finally:
        uncached.stop()
    saved = 1 - with_cache / without_cache
    print(
        f"origin requests for {len(requests)} replayed requests: {with_cache} with the cache, "
        f"{without_cache} without ({saved:.0%} saved); non-2xx answers {failed_cached}/{failed_uncached}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved wrk rounds per setup (default 3)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk round (default 8)")
    parser.add_argument("--requests", type=int, default=500, help="replayed workload size (default 500)")
    parser.add_argument("--skip-wrk", action="store_true", help="only the origin-savings replay")
    args = parser.parse_args()
    if not args.skip_wrk and shutil.which("wrk") is None:
        parser.error("wrk is not installed (or use --skip-wrk)")
    origin = start_origin("us-east-1")
    try:
        with tempfile.TemporaryDirectory(prefix="edgerules-bench-") as tmp:
            directory = Path(tmp)
            for sub in ("throughput", "cached", "uncached"):
                (directory / sub).mkdir()
            if not args.skip_wrk:
                throughput(directory, origin, max(1, args.rounds), args.duration)
            origin_savings(directory, origin, args.requests)
    finally:
        origin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

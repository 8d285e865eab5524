"""Engine decision time (no proxy) with and without authentication; prints median and p99 in microseconds.

    .venv/bin/python bench/bench_auth.py [-n 5000]

Scenarios, all `GET /api/v1/calls/<id>` through `decide_request` on the shipped policy (env `local`):

- no auth: the same request with the policy's `auth` section removed (the baseline: routing, validation, headers);
- JWT cold: a different valid token every time (signature check, claims, identity headers);
- JWT cached: the same token every time (the verifier's verified-token cache);
- API key (diskcache / Redis): one key lookup and one rate-limit increment in the store per decision. Redis is a
  throw-away `redis-server` on a free 127.0.0.1 port, started and stopped here.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import jwt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgerules.auth.apikeys import ApiKeyStore  # noqa: E402
from edgerules.engine.core import decide_request  # noqa: E402
from edgerules.engine.state import EngineState  # noqa: E402
from edgerules.engine.values import EdgeRequest, Forward, HeaderView  # noqa: E402
from edgerules.policy.load import load_policy_file  # noqa: E402
from edgerules.policy.model import Policy  # noqa: E402
from edgerules.stores import Store, StoreConfig, open_store  # noqa: E402

SECRET = "bench-secret-" + "s" * 40
ENVIRON = {"JWT_SECRET": SECRET, "REDIS_URL": "redis://127.0.0.1:6379/0"}
PATH = "/api/v1/calls/42"
WARMUP = 100


def make_request(authorization: str | None) -> EdgeRequest:
    headers = [("CF-IPCountry", "US")]
    if authorization is not None:
        headers.append(("Authorization", authorization))
    return EdgeRequest(
        method="GET",
        path=PATH,
        host="api.aybiza.test",
        headers=HeaderView(headers),
        timestamp=time.time(),
    )


def make_token(i: int) -> str:
    claims = {
        "sub": f"user-{i}",
        "role": "admin",
        "permissions": ["calls:read"],
        "exp": int(time.time()) + 3600,
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def measure(policy: Policy, state: EngineState, requests: Iterator[EdgeRequest], n: int) -> list[float]:
    """Decision times in microseconds; every decision must forward (a refusal would measure the wrong path)."""
    times: list[float] = []
    for i in range(n + WARMUP):
        req = next(requests)
        start = time.perf_counter_ns()
        decision = await decide_request(req, policy, state)
        elapsed = (time.perf_counter_ns() - start) / 1000
        if not isinstance(decision.outcome, Forward):
            raise SystemExit(f"benchmark request was refused: {decision.outcome!r}")
        if i >= WARMUP:
            times.append(elapsed)
    return times


def repeat(req: EdgeRequest) -> Iterator[EdgeRequest]:
    while True:
        yield req


async def api_key_times(policy: Policy, store: Store, n: int) -> list[float]:
    try:
        key, _ = await ApiKeyStore(store).add("bench", "service", rate_limit=(10**9, 3600.0))
        return await measure(policy, EngineState(store), repeat(make_request(f"API-Key {key}")), n)
    finally:
        await store.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server on a free loopback port, nothing persisted; yields its URL and always stops it."""
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not redis_ping(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"redis-server did not start on 127.0.0.1:{port}")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def p99(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def run(n: int) -> list[tuple[str, list[float]]]:
    policy = load_policy_file(
        REPO / "rules" / "aybiza.yaml", "local", environ=ENVIRON, for_serving=True
    ).policy
    no_auth = dataclasses.replace(policy, auth=None)
    memory = StoreConfig(backend="memory")
    results: list[tuple[str, list[float]]] = []

    def scenario(name: str, fn: Callable[[], list[float]]) -> None:
        results.append((name, fn()))

    scenario(
        "no auth",
        lambda: asyncio.run(measure(no_auth, EngineState(open_store(memory)), repeat(make_request(None)), n)),
    )
    cold = iter([make_request(f"Bearer {make_token(i)}") for i in range(n + WARMUP)])
    scenario(
        "JWT cold (unique tokens)",
        lambda: asyncio.run(measure(policy, EngineState(open_store(memory)), cold, n)),
    )
    same = repeat(make_request(f"Bearer {make_token(0)}"))
    scenario(
        "JWT cached (same token)",
        lambda: asyncio.run(measure(policy, EngineState(open_store(memory)), same, n)),
    )
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp:
        disk = StoreConfig(backend="diskcache", path=tmp, prefix="bench:")
        scenario("API key, diskcache", lambda: asyncio.run(api_key_times(policy, open_store(disk), n)))
    if shutil.which("redis-server") is None:
        print("redis-server not found: skipping the Redis scenario", file=sys.stderr)
    else:
        with redis_server() as url:
            redis = StoreConfig(backend="redis", url=url, prefix="bench:", timeout=2.0)
            scenario("API key, Redis", lambda: asyncio.run(api_key_times(policy, open_store(redis), n)))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="timed decisions per scenario (default 5000)")
    args = parser.parse_args()
    results = run(max(1, args.n))
    base = statistics.median(results[0][1])
    print(f"decide_request, {args.n} decisions per scenario (microseconds)")
    print(f"{'scenario':<26} {'median':>9} {'p99':>9} {'extra vs no auth':>17}")
    for name, times in results:
        median = statistics.median(times)
        extra = "-" if name == "no auth" else f"{median - base:+.0f}"
        print(f"{name:<26} {median:>9.0f} {p99(times):>9.0f} {extra:>17}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

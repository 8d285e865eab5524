"""Engine decision time on `rules/aybiza.yaml`, path-rule scaling, and policy load+compile time.

    .venv/bin/python bench/bench_engine.py [-n 5000]

Every figure is `decide_request` timed with `time.thread_time_ns` (CPU time of the thread, so other
processes on a busy machine do not inflate it) around the await, in one event loop, with an
in-memory store (no I/O on the timed path besides what the engine itself does):
- mix: a realistic request mix (agent configs, call management, JSON POSTs, health, CORS preflight, rejected
  paths, missing credentials), with JWTs either all fresh ("cold": every token verified) or drawn from a pool
  seen before ("cached": the verifier's token cache answers);
- path rules: `validation.allow_paths` with 10, 100 and 1000 prefix rules, each request matching the last rule
  (the worst case for a linear scan);
- load: `load_policy_file` (YAML, schema, semantics, compile) of the shipped policy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jwt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgerules.engine.core import decide_request  # noqa: E402
from edgerules.engine.health import HealthRegistry  # noqa: E402
from edgerules.engine.state import EngineState  # noqa: E402
from edgerules.engine.values import EdgeRequest, HeaderView  # noqa: E402
from edgerules.policy.load import load_policy_file  # noqa: E402
from edgerules.policy.loader import load_yaml_file  # noqa: E402
from edgerules.policy.model import Policy  # noqa: E402
from edgerules.stores.memory import MemoryStore  # noqa: E402

SEED = REPO / "rules" / "aybiza.yaml"
SECRET = "bench-secret-that-is-long-enough-for-hs256!!"
ENVIRON = {"JWT_SECRET": SECRET, "REDIS_URL": "redis://127.0.0.1:6379/0", "EDGERULES_ADMIN_TOKEN": ""}
COUNTRIES = ("US", "GB", "JP", "DE", "BR", "IN")


def _token(n: int) -> str:
    claims = {"sub": f"user-{n}", "role": "agent", "permissions": ["calls"], "exp": int(time.time()) + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def _request(
    method: str, path: str, headers: list[tuple[str, str]], body_size: int | None = None
) -> EdgeRequest:
    return EdgeRequest(
        method=method,
        path=path,
        host="api.aybiza.test",
        headers=HeaderView(headers),
        body_size=body_size,
        timestamp=time.time(),
    )


def request_mix(i: int, token: Callable[[int], str]) -> EdgeRequest:
    """Request number `i` of the mix; `token(i)` gives its bearer token."""
    country = ("CF-IPCountry", COUNTRIES[i % len(COUNTRIES)])
    auth = ("Authorization", f"Bearer {token(i)}")
    kind = i % 10
    if kind in (0, 1, 2):
        return _request("GET", f"/api/v1/agents/{i % 50}", [country, auth])
    if kind in (3, 4):
        return _request("GET", f"/api/v1/calls/{i}", [country, auth, ("User-Agent", "TwilioProxy/1.1")])
    if kind == 5:
        return _request("POST", "/api/v1/calls", [country, auth, ("Content-Type", "application/json")], 512)
    if kind == 6:
        return _request("GET", "/health", [country])
    if kind == 7:
        headers = [("Origin", "https://app.aybiza.com"), ("Access-Control-Request-Method", "POST")]
        return _request("OPTIONS", "/voice/session", headers)
    if kind == 8:
        return _request("GET", "/api/v1/agents/%2e%2e/%2e%2e/admin", [country, auth])
    return _request("GET", "/api/v1/phone-numbers", [country])  # no credentials: 401


async def _time_decisions(
    policy: Policy, requests: list[EdgeRequest], warmup: list[EdgeRequest]
) -> list[float]:
    state = EngineState(MemoryStore(), HealthRegistry())
    for req in warmup:
        await decide_request(req, policy, state)
    times = []
    for req in requests:
        start = time.thread_time_ns()
        await decide_request(req, policy, state)
        times.append((time.thread_time_ns() - start) / 1000)
    return times


def _summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "n": len(ordered),
        "median_us": statistics.median(ordered),
        "p99_us": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
    }


def seed_policy() -> Policy:
    return load_policy_file(str(SEED), "local", environ=ENVIRON, for_serving=True).policy


def measure_mix(n: int) -> dict[str, dict[str, float]]:
    policy = seed_policy()
    pool = [_token(k) for k in range(200)]
    fresh = [_token(1000 + k) for k in range(n)]  # every request its own, never-seen token
    cached = [request_mix(i, lambda i: pool[i % len(pool)]) for i in range(n)]
    warm = [request_mix(i, lambda i: pool[i % len(pool)]) for i in range(len(pool) * 10)]
    cold = [request_mix(i, lambda i: fresh[i]) for i in range(n)]
    return {
        "cached_jwt": _summary(asyncio.run(_time_decisions(policy, cached, warm))),
        "cold_jwt": _summary(asyncio.run(_time_decisions(policy, cold, warm))),
    }


def _policy_with_rules(count: int, directory: Path) -> Policy:
    data = load_yaml_file(SEED).data
    data["validation"]["allow_paths"] = [{"prefix": f"/svc{k:04d}/items"} for k in range(count)]
    data["auth"]["public"] = [{"prefix": "/svc"}]
    path = directory / f"rules{count}.yaml"
    path.write_text(json.dumps(data))
    return load_policy_file(str(path), "local", environ=ENVIRON, for_serving=True).policy


def measure_path_rules(n: int, counts: tuple[int, ...] = (10, 100, 1000)) -> dict[int, dict[str, float]]:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for count in counts:
            policy = _policy_with_rules(count, Path(tmp))
            last = f"/svc{count - 1:04d}/items/"
            reqs = [_request("GET", f"{last}{i}", [("CF-IPCountry", "US")]) for i in range(n)]
            results[count] = _summary(asyncio.run(_time_decisions(policy, reqs, reqs[:200])))
    return results


def measure_load(n: int = 10) -> dict[str, float]:
    seed_policy()  # imports and schema compilation are not part of a reload
    times = []
    for _ in range(n):
        start = time.perf_counter()
        seed_policy()
        times.append((time.perf_counter() - start) * 1000)
    return {"n": n, "median_ms": statistics.median(times), "max_ms": max(times)}


def measure(n: int = 5000) -> dict[str, object]:
    return {"mix": measure_mix(n), "path_rules": measure_path_rules(n // 2), "load": measure_load()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="decisions per measurement (default 5000)")
    args = parser.parse_args()
    result = measure(args.n)
    for name, s in result["mix"].items():  # type: ignore[union-attr]
        print(f"engine mix, {name}: median {s['median_us']:.1f} us, p99 {s['p99_us']:.1f} us (n={s['n']})")
    rules = result["path_rules"]
    for count, s in rules.items():  # type: ignore[union-attr]
        print(f"{count:>5} path rules: median {s['median_us']:.1f} us, p99 {s['p99_us']:.1f} us")
    ratio = rules[1000]["median_us"] / rules[10]["median_us"]  # type: ignore[index]
    print(f"1000 rules / 10 rules: {ratio:.2f}x")
    load = result["load"]
    print(f"policy load+compile: median {load['median_ms']:.1f} ms (n={load['n']})")  # type: ignore[index]
    return 0


if __name__ == "__main__":
    sys.exit(main())

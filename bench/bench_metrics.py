"""What metrics cost: requests/s of `mitmdump -s addon.py` with metrics on vs `metrics.enabled: false`.

    .venv/bin/python bench/bench_metrics.py [--rounds 5] [--duration 5] [--connections 8]

Two proxies (same policy but for the metrics switch) in front of the same origin, loaded in turn with `wrk`
in interleaved rounds (on/off, then off/on, ...) so background noise hits both alike. Prints each round, the
medians and the on/off ratio (target: on costs at most 10%). Everything binds to 127.0.0.1 and is stopped at
the end.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jwt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.origins import start_origins  # noqa: E402
from tests.support.policies import ENV, JWT_SECRET, write_policy  # noqa: E402
from tests.support.proxy import Proxy, http, start_mitmdump  # noqa: E402

PATH = "/api/v1/calls/1"  # authenticated, routed, not cacheable: the full request path every time
_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")


def start_edge(directory: Path, port: int, *, metrics: bool) -> Proxy:
    regions = {"us-east-1": port, "us-west-2": port, "eu-west-1": port}
    overlay = {"metrics": {"enabled": metrics, "access_log": False}}
    policy = write_policy(directory, regions, overlay, name=f"policy-{'on' if metrics else 'off'}.yaml")
    # each proxy its own diskcache directory (state is not what is measured here)
    options = {"edgerules_policy": str(policy), "edgerules_env": "e2e"}
    return start_mitmdump(options=options, env=ENV)


def wrk(url: str, headers: dict[str, str], duration: float, connections: int) -> tuple[float, int]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=duration + 60)
    rps = _RPS.search(done.stdout)
    if done.returncode != 0 or rps is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    non_2xx = _NON_2XX.search(done.stdout)
    return float(rps.group(1)), int(non_2xx.group(1)) if non_2xx else 0


def requests_counted(proxy: Proxy) -> float:
    text = http("GET", f"{proxy.url}/__edgerules/metrics").body.decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("edgerules_requests_total{")
    )


def record_cost_us(n: int = 50_000) -> float:
    """Microseconds per `MetricsRecorder.record` (the only metrics work on the request path), in process."""
    from edgerules.observe.metrics import MetricsConfig, MetricsRecorder, RequestRecord
    from edgerules.stores.memory import MemoryStore

    recorder = MetricsRecorder(MemoryStore(), MetricsConfig(), instance_id="bench", regions=["us-east-1"])
    rec = RequestRecord(
        time.time(), 12.5, 10.0, "us-east-1", None, "US", "call-management", 200, "GET", None, None
    )
    start = time.perf_counter()
    for _ in range(n):
        recorder.record(rec)
    return (time.perf_counter() - start) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of wrk per run (default 5)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed", file=sys.stderr)
        return 2
    token = jwt.encode({"sub": "bench", "role": "user", "exp": int(time.time()) + 86400}, JWT_SECRET, "HS256")
    headers = {"Authorization": f"Bearer {token}", "CF-IPCountry": "US"}
    results: dict[str, list[float]] = {"on": [], "off": []}
    errors = {"on": 0, "off": 0}
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        origins = start_origins(["bench"])
        proxies: dict[str, Proxy] = {}
        try:
            origin_port = origins["bench"].port
            for name in ("on", "off"):
                directory = Path(tmp) / name
                directory.mkdir()
                proxies[name] = start_edge(directory, origin_port, metrics=name == "on")
            for name, proxy in proxies.items():  # warm-up; also proves the path answers 200
                response = http("GET", f"{proxy.url}{PATH}", headers)
                if response.status != 200:
                    raise RuntimeError(f"{name}: {PATH} answered {response.status}: {response.body[:200]!r}")
                wrk(f"{proxy.url}{PATH}", headers, 1, args.connections)
            for i in range(args.rounds):
                order = ("on", "off") if i % 2 == 0 else ("off", "on")
                line = []
                for name in order:
                    rps, bad = wrk(f"{proxies[name].url}{PATH}", headers, args.duration, args.connections)
                    results[name].append(rps)
                    errors[name] += bad
                    line.append(f"{name} {rps:8.1f} req/s")
                print(f"round {i + 1}: " + "   ".join(line), flush=True)
            counted = {name: requests_counted(proxy) for name, proxy in proxies.items()}
        finally:
            for proxy in proxies.values():
                proxy.stop()
            origins.stop_all()
    on, off = statistics.median(results["on"]), statistics.median(results["off"])
    ratio = on / off
    print(
        f"median: metrics on {on:.1f} req/s, off {off:.1f} req/s; on/off = {ratio:.3f} ({(1 - ratio) * 100:+.1f}% cost)"
    )
    print(f"non-2xx responses: on {errors['on']}, off {errors['off']}")
    print(f"requests counted in Prometheus: on {counted['on']:.0f}, off {counted['off']:.0f} (must be 0)")
    print("target (on costs at most 10%):", "met" if ratio >= 0.90 else "NOT met")
    cost = record_cost_us()
    print(
        f"in-process: {cost:.1f} us per recorded request = {cost / (1e6 / off) * 100:.2f}% of a request "
        f"at {off:.0f} req/s (the flush runs in the background every flush_interval)"
    )
    return 0 if counted["off"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

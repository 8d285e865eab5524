"""Load + check + compile rules/aybiza.yaml (env `local`) N times; print median and p95 in milliseconds.

    .venv/bin/python bench/bench_load.py [-n 50] [--env local] [--file rules/aybiza.yaml]

This is the cost of a policy reload (and of `edgerules validate` per environment); the target is well under a
second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgerules.policy.load import load_policy_file  # noqa: E402

ENVIRON = {"JWT_SECRET": "b" * 48, "REDIS_URL": "redis://127.0.0.1:6379/0"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50, help="iterations (default 50)")
    parser.add_argument("--env", default="local")
    parser.add_argument("--file", default=str(REPO / "rules" / "aybiza.yaml"))
    args = parser.parse_args()
    load_policy_file(args.file, args.env, environ=ENVIRON)  # warm-up: imports, schema compilation
    times = []
    for _ in range(max(1, args.n)):
        start = time.perf_counter()
        load_policy_file(args.file, args.env, environ=ENVIRON, for_serving=True)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    print(
        f"{Path(args.file).name} env={args.env}: n={len(times)} median={statistics.median(times):.1f} ms "
        f"p95={p95:.1f} ms min={times[0]:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run the public HTTP caching conformance suite (github:http-tests/cache-tests) against the edge.

    CACHE_TESTS=/path/to/cache-tests make conformance          # or:
    .venv/bin/python bench/conformance.py --suite /path/to/cache-tests [--runner serve|mitmdump|both] [--runs 3]

The suite is NOT part of this repository: point CACHE_TESTS at a checkout (with `npm install` done in it). This
script starts, all on 127.0.0.1 and on free ports: the suite's origin server (test-engine/server), the edge
(`edgerules serve` or `mitmdump -s addon.py`) on examples/conformance.yaml in front of it, and the suite's CLI
client with `--base` pointing at the edge. Results are scored with the suite's own `determineTestResult`
(dependencies honoured, as on cache-tests.fyi) and printed per group: required passed / required, optional
(optimal) passed / optional, plus every required failure. With `--runs N` it runs the suite N times against a fresh
edge each time and says whether the per-test results were identical. `--json FILE` writes the scored results.
Every process started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "examples" / "conformance.yaml"
BIN = Path(sys.executable).parent

# Published results of shared caches on cache-tests.fyi (required tests passed of 160), for the summary line.
ANCHORS = {
    "Traffic Server": 132,
    "Apache httpd": 131,
    "Squid": 122,
    "Caddy cache-handler": 121,
    "Varnish": 119,
    "nginx": 99,
}

# The suite's origin server binds every interface (`server.listen(port)`): bind it to loopback instead.
SERVER_WRAPPER = """
import http from 'node:http'
import { pathToFileURL } from 'node:url'
const listen = http.Server.prototype.listen
http.Server.prototype.listen = function (port, ...rest) { return listen.call(this, port, '127.0.0.1', ...rest) }
await import(pathToFileURL(process.env.CACHE_TESTS_SERVER).href)
"""

# Scores a results JSON (stdin) with the suite's own logic; prints one JSON line per test.
SCORER = """
import { readFileSync } from 'node:fs'
import { pathToFileURL } from 'node:url'
const root = process.env.CACHE_TESTS
const { determineTestResult, resultTypes } = await import(pathToFileURL(root + '/test-engine/lib/results.mjs').href)
const suites = (await import(pathToFileURL(root + '/tests/index.mjs').href)).default
const results = JSON.parse(readFileSync(0, 'utf8'))
const names = Object.fromEntries(Object.entries(resultTypes).map(([k, v]) => [v[2], k]))
const out = []
for (const suite of suites) {
  for (const test of suite.tests) {
    if (test.browser_only === true) continue
    const symbol = determineTestResult(suites, test.id, results)
    out.push({ group: suite.id, id: test.id, kind: test.kind || 'required', result: names[symbol[2]] || symbol[2],
               detail: Array.isArray(results[test.id]) ? results[test.id].join(': ') : '' })
  }
}
console.log(JSON.stringify(out))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args[0]} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g}s")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)  # its own session: the process and its children, by PID
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def start_edge(runner: str, port: int, origin_port: int, log) -> subprocess.Popen:
    env = {**os.environ, "CONFORMANCE_ORIGIN": f"http://127.0.0.1:{origin_port}"}
    if runner == "serve":
        argv = [str(BIN / "edgerules"), "serve", "--policy", str(POLICY), "--listen", f"127.0.0.1:{port}"]
    else:
        argv = [
            str(BIN / "mitmdump"),
            "--listen-host",
            "127.0.0.1",
            "-p",
            str(port),
            "--mode",
            f"reverse:http://127.0.0.1:{origin_port}",
            "--set",
            "connection_strategy=lazy",
            "-s",
            str(REPO / "addon.py"),
            "--set",
            f"edgerules_policy={POLICY}",
            "-q",
        ]
    return subprocess.Popen(
        argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO
    )


def run_once(suite: Path, runner: str, workdir: Path, index: int) -> list[dict]:
    origin_port, edge_port = free_port(), free_port()
    wrapper = workdir / "server.mjs"
    wrapper.write_text(SERVER_WRAPPER)
    server_env = {
        **os.environ,
        "CACHE_TESTS_SERVER": str(suite / "test-engine" / "server" / "server.mjs"),
        "npm_config_protocol": "http",
        "npm_config_port": str(origin_port),
        "npm_config_pidfile": str(workdir / "server.pid"),
    }
    server = edge = None
    with (
        open(workdir / f"server-{index}.log", "wb") as server_log,
        open(workdir / f"edge-{runner}-{index}.log", "wb") as edge_log,
    ):
        try:
            server = subprocess.Popen(
                ["node", str(wrapper)],
                env=server_env,
                cwd=suite,
                stdout=server_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            wait_port(origin_port, server)
            edge = start_edge(runner, edge_port, origin_port, edge_log)
            wait_port(edge_port, edge)
            client_env = {
                **os.environ,
                "npm_config_base": f"http://127.0.0.1:{edge_port}",
                "npm_config_id": "",
                "npm_package_config_id": "",
            }
            client = subprocess.run(
                ["node", "--no-warnings", "test-engine/cli.mjs"],
                env=client_env,
                cwd=suite,
                capture_output=True,
                timeout=900,
                check=True,
            )
        finally:
            stop(edge)
            stop(server)
    scored = subprocess.run(
        ["node", "--input-type=module", "-e", SCORER],
        input=client.stdout,
        env={**os.environ, "CACHE_TESTS": str(suite)},
        capture_output=True,
        timeout=120,
        check=True,
    )
    return json.loads(scored.stdout)


def summarise(results: list[dict], label: str) -> tuple[int, int]:
    groups: dict[str, list[int]] = {}
    for r in results:
        g = groups.setdefault(r["group"], [0, 0, 0, 0])
        if r["kind"] == "required":
            g[1] += 1
            g[0] += r["result"] == "pass"
        elif r["kind"] == "optimal":
            g[3] += 1
            g[2] += r["result"] == "pass"
    print(f"\n== {label}")
    print(f"{'group':<22} {'required':>10} {'optional':>10}")
    totals = [0, 0, 0, 0]
    for name, (rp, rt, op, ot) in groups.items():
        print(f"{name:<22} {rp:>4} / {rt:<4} {op:>4} / {ot:<4}")
        totals = [a + b for a, b in zip(totals, (rp, rt, op, ot), strict=True)]
    print(f"{'TOTAL':<22} {totals[0]:>4} / {totals[1]:<4} {totals[2]:>4} / {totals[3]:<4}")
    failed = [r for r in results if r["kind"] == "required" and r["result"] != "pass"]
    for r in failed:
        print(f"  required not passed: {r['id']} [{r['result']}] {r['detail'][:150]}")
    return totals[0], totals[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", default=os.environ.get("CACHE_TESTS"), help="cache-tests checkout")
    parser.add_argument("--runner", choices=("serve", "mitmdump", "both"), default="serve")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--json", help="write the scored per-test results here")
    args = parser.parse_args(argv)
    if not args.suite:
        print("set CACHE_TESTS=/path/to/cache-tests (a checkout of github.com/http-tests/cache-tests)")
        return 2
    suite = Path(args.suite).resolve()
    if not (suite / "test-engine" / "cli.mjs").is_file() or not (suite / "node_modules").is_dir():
        print(f"{suite} is not a cache-tests checkout with `npm install` done")
        return 2
    runners = ["serve", "mitmdump"] if args.runner == "both" else [args.runner]
    all_runs: dict[str, list[list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="edgerules-conformance-") as tmp:
        for runner in runners:
            for i in range(args.runs):
                results = run_once(suite, runner, Path(tmp), i)
                all_runs.setdefault(runner, []).append(results)
                summarise(results, f"{runner} run {i + 1}")
    print()
    for runner, runs in all_runs.items():
        counts = [sum(r["kind"] == "required" and r["result"] == "pass" for r in run) for run in runs]
        outcome = [{r["id"]: r["result"] for r in run} for run in runs]
        identical = all(o == outcome[0] for o in outcome)
        print(f"{runner}: required passed per run {counts}; per-test results identical: {identical}")
    best = ", ".join(f"{name} {n}" for name, n in ANCHORS.items())
    print(f"published shared caches (required of 160): {best}")
    if args.json:
        Path(args.json).write_text(json.dumps(all_runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

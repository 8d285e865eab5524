"""`make demo`: three local origins, mitmdump with rules/aybiza.yaml (environment `local`) on 127.0.0.1:8080,
a few example requests, then it keeps running until Ctrl-C (or for DEMO_SECONDS seconds when that is set).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import jwt

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ORIGINS = {"us-east-1": 9101, "us-west-2": 9102, "eu-west-1": 9103}
PROXY_PORT = int(os.environ.get("DEMO_PORT", "8080"))


def start(argv: list[str], ready: str, env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if re.search(ready, line):
            return proc
    proc.kill()
    raise SystemExit(f"{argv[0]} did not start:\n{''.join(seen)}")


def call(method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(f"http://127.0.0.1:{PROXY_PORT}{path}", method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def show(title: str, method: str, path: str, headers: dict[str, str], *, pick: tuple[str, ...] = ()) -> None:
    status, response_headers, body = call(method, path, headers)
    shown = {k: v for k, v in response_headers.items() if k in pick}
    try:
        data = json.loads(body)
        summary = data.get("region") or data
    except ValueError:
        summary = body[:80]
    print(f"  {title:<44} -> {status} {summary} {shown if shown else ''}")


def main() -> int:
    env = dict(os.environ)
    env.setdefault("JWT_SECRET", "demo-only-" + secrets.token_hex(24))
    processes: list[subprocess.Popen[str]] = []

    def stop(*_: object) -> None:
        for proc in reversed(processes):
            if proc.poll() is None:
                proc.terminate()
        for proc in processes:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()

    signal.signal(signal.SIGTERM, lambda *_: (stop(), sys.exit(0)))
    try:
        for region, port in ORIGINS.items():
            processes.append(
                start(
                    [str(BIN / "python"), "examples/origin.py", "--region", region, "--port", str(port)],
                    "listening",
                    env,
                )
            )
        processes.append(
            start(
                [
                    str(BIN / "mitmdump"),
                    "--listen-host",
                    "127.0.0.1",
                    "-p",
                    str(PROXY_PORT),
                    "--mode",
                    "reverse:http://127.0.0.1:9101",
                    "--set",
                    "connection_strategy=lazy",
                    "-s",
                    "addon.py",
                    "--set",
                    "edgerules_policy=rules/aybiza.yaml",
                    "--set",
                    "edgerules_env=local",
                ],
                "listening at",
                env,
            )
        )
        token = jwt.encode(
            {
                "sub": "demo-user",
                "role": "admin",
                "permissions": ["agents:read"],
                "exp": int(time.time()) + 3600,
            },
            env["JWT_SECRET"],
            algorithm="HS256",
        )
        auth = {"Authorization": f"Bearer {token}"}
        time.sleep(1.5)  # first health probes
        print(f"\nedgerules demo: proxy on http://127.0.0.1:{PROXY_PORT}, origins on 9101-9103\n")
        show("GET /health (public)", "GET", "/health", {}, pick=("CF-Cache-Status",))
        show("GET /health again (cached)", "GET", "/health", {}, pick=("CF-Cache-Status",))
        show("US client -> us-east-1", "GET", "/api/v1/agents/1", {**auth, "CF-IPCountry": "US"})
        show("GB client -> eu-west-1", "GET", "/api/v1/calls/7", {**auth, "CF-IPCountry": "GB"})
        show("JP client -> us-west-2", "GET", "/api/v1/calls/7", {**auth, "CF-IPCountry": "JP"})
        show("no credentials", "GET", "/api/v1/agents/1", {})
        show("path outside the allowlist", "GET", "/admin", auth)
        show("dot-segment trick", "GET", "/api/v1/agents/../../admin", auth)
        show(
            "CORS preflight",
            "OPTIONS",
            "/voice/session",
            {"Origin": "https://app.aybiza.com", "Access-Control-Request-Method": "POST"},
            pick=("Access-Control-Allow-Origin",),
        )
        print(
            f"""
Try it yourself (first paste the `export TOKEN=...` line printed below: the demo user's JWT):
  curl -s -H 'CF-IPCountry: DE' -H "Authorization: Bearer $TOKEN" http://127.0.0.1:{PROXY_PORT}/api/v1/agents/1
  curl -s -X POST 127.0.0.1:9101/__origin/health -d '{{"healthy": false}}'   # us-east-1 down: US fails over
  curl -s http://127.0.0.1:{PROXY_PORT}/__edgerules/status
  .venv/bin/edgerules explain GET http://api/api/v1/agents/1 --policy rules/aybiza.yaml --env local --country US
Press Ctrl-C to stop.
"""
        )
        print(f"export TOKEN={token}\n", flush=True)
        seconds = float(os.environ.get("DEMO_SECONDS", "0"))
        deadline = time.monotonic() + seconds if seconds else None
        while deadline is None or time.monotonic() < deadline:
            if any(proc.poll() is not None for proc in processes):
                print("a demo process exited; stopping")
                return 1
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        stop()


if __name__ == "__main__":
    raise SystemExit(main())

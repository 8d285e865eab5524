"""Shared pieces of the benchmarks: an origin, the three proxies under test, wrk runs, /proc readings.

Processes come from `tests/support` (output captured, readiness awaited, process group stopped on exit), so a
benchmark never leaves anything running. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.origins import Origin  # noqa: E402
from tests.support.policies import ENV, JWT_SECRET, write_policy  # noqa: E402
from tests.support.proxy import (  # noqa: E402
    Proxy,
    http,
    serve_argv,
    start_command,
    start_edge_process,
    start_mitmdump,
)
from tests.support.redis_server import RedisServer  # noqa: E402
from tests.support.shared_store import add_api_key  # noqa: E402

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

__all__ = [
    "ENV",
    "REGIONS",
    "REPO",
    "Origin",
    "Proxy",
    "RedisServer",
    "WrkResult",
    "api_key",
    "bearer_token",
    "cpu_seconds",
    "edge_policy",
    "http",
    "lua_script",
    "rss_mib",
    "start_bare",
    "start_edge_addon",
    "start_edge_serve",
    "start_origin",
    "tree_cpu_seconds",
    "wrk",
]


# -- processes ----------------------------------------------------------------------------------------------


def start_origin() -> Origin:
    """One aiohttp echo origin (`examples/origin.py`); every region of the policy points at it."""
    return Origin("bench").start()


def edge_policy(directory: Path, origin: Origin, overlay: Mapping[str, object] | None = None) -> Path:
    """The shipped policy (every feature on) with its regions on `origin`, health probes every 2 s."""
    base = {"health": {"interval": "2s", "timeout": "1s"}, "metrics": {"flush_interval": "1s"}}
    return write_policy(directory, dict.fromkeys(REGIONS, origin.port), {**base, **(overlay or {})})


def start_bare(origin: Origin) -> Proxy:
    """Plain `mitmdump` reverse proxy to the origin, no addon (its default flow log included)."""
    return start_mitmdump(addon=None, mode=f"reverse:{origin.url}")


def start_edge_addon(policy: Path) -> Proxy:
    """`mitmdump -s addon.py` with the policy, exactly as documented for operators."""
    return start_edge_process(policy, environ=ENV)


def start_edge_serve(policy: Path, workers: int = 1) -> Proxy:
    if workers == 1:
        return start_edge_process(policy, environ=ENV, serve=True)
    argv = [*serve_argv({"edgerules_policy": str(policy), "edgerules_env": "e2e"}), "--workers", str(workers)]
    return start_command(argv, env=ENV, name=f"edgerules-serve-w{workers}", ready_timeout=60)


# -- /proc ----------------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and every live descendant (`serve --workers N`: the supervisor and its workers)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += cpu_seconds(current)
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
        except OSError:  # exited meanwhile
            continue
    return total


def rss_mib(pid: int) -> float:
    """Resident set size (/proc/PID/statm, second field) in MiB."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * PAGE_SIZE / (1 << 20)


# -- wrk --------------------------------------------------------------------------------------------------------


def api_key(policy: Path) -> str:
    """A new API key in the policy's store, with a limit the benchmark never reaches (its counter still
    counts every request)."""
    return add_api_key(policy, "bench-key", rate_limit=(10**9, 3600.0))


def bearer_token(sub: str = "bench-user") -> str:
    claims = {"sub": sub, "role": "admin", "permissions": ["read"], "exp": int(time.time()) + 3600}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def lua_script(
    directory: Path,
    headers: Mapping[str, str],
    stop_after: int | None = None,
    *,
    numbered_path: str | None = None,
    first: int = 0,
) -> Path:
    """A wrk script that sends `headers` on every request and, with `stop_after`, stops each thread after that
    many responses (so "N requests" means N, give or take one per connection). `numbered_path`: request
    `{numbered_path}{first}`, `{numbered_path}{first + 1}`, ... instead of the URL's path."""
    lines = [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    if numbered_path is not None:
        lines += [
            f"local n = {first}",
            "function request()",
            "  n = n + 1",
            f'  return wrk.format(nil, "{numbered_path}" .. n)',
            "end",
        ]
    if stop_after is not None:
        lines += [
            "local done = 0",
            "function response(status, headers, body)",
            "  done = done + 1",
            f"  if done >= {stop_after} then wrk.thread:stop() end",
            "end",
        ]
    fd, name = tempfile.mkstemp(suffix=".lua", dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return Path(name)


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors + non-2xx/3xx
    cpu_s: float  # proxy CPU seconds during the run

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / self.requests * 1e6 if self.requests else float("nan")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * _UNITS[unit]


def wrk(
    url: str,
    *,
    script: Path | None,
    duration: float,
    connections: int,
    threads: int = 1,
    pid: int | None = None,
    extra: Sequence[str] = (),
) -> WrkResult:
    """One bounded wrk run (`--latency`); `pid`: the proxy whose CPU time is measured over the run."""
    exe = shutil.which("wrk")
    if exe is None:
        raise RuntimeError("wrk is not installed (make system-deps)")
    argv = [exe, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "5s"]
    if script is not None:
        argv += ["-s", str(script)]
    cpu_before = tree_cpu_seconds(pid) if pid else 0.0
    done = subprocess.run(
        [*argv, *extra, url], capture_output=True, text=True, timeout=duration + 30, check=True
    )
    cpu = (tree_cpu_seconds(pid) - cpu_before) if pid else 0.0
    out = done.stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    return WrkResult(requests, rps, p50, p99, errors, cpu)

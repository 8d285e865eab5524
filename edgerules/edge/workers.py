"""One server, several worker processes (`edgerules serve --workers N`): what a worker publishes about itself,
and how any worker answers for all of them.

The supervisor (`edgerules.edge.supervisor`) gives every worker the same private directory (``EDGERULES_WORKERS_DIR``)
and keeps ``supervisor.json`` there: its pid, the live workers (index, pid, start time) and how many workers it
restarted. Each worker writes ``worker-<pid>.json`` every ``PUBLISH_INTERVAL`` seconds (and right before it
answers a scrape or a status request itself): pid, index, policy version, reload counters, its health view of
the regions and its Prometheus text. As prometheus_client's multiprocess mode does:

- counters and histograms are summed over every worker that ever ran in this server (a restarted worker's
  requests still count: the files of exited workers stay until the server stops), so a scrape that lands on any
  worker describes the whole server; the other workers' part is at most ``PUBLISH_INTERVAL`` old;
- gauges (region health, hit ratio, last reload result) are the answering worker's own: each worker probes and
  ejects regions by itself, and the status endpoint lists every live worker's view.

Files are written to a temporary name and renamed, so a reader sees a whole snapshot or the previous one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgerules.observe.prometheus import format_value

if TYPE_CHECKING:
    from edgerules.edge.runtime import EdgeRuntime

log = logging.getLogger("edgerules")

ENV_DIR = "EDGERULES_WORKERS_DIR"
ENV_INDEX = "EDGERULES_WORKER_INDEX"
ENV_SUPERVISOR = "EDGERULES_SUPERVISOR_PID"
ENV_LISTEN_FD = "EDGERULES_LISTEN_FD"
SUPERVISOR_FILE = "supervisor.json"
PUBLISH_INTERVAL = 0.5
LISTEN_BACKLOG = 1024  # the shared listening socket's accept queue


def write_json(path: Path, data: Any) -> None:
    """Atomically replace ``path`` with ``data`` as JSON."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    index: int
    directory: Path
    supervisor: int


def worker_info(environ: Mapping[str, str]) -> WorkerInfo | None:
    """This process's place in a multi-worker server, or None when it serves alone."""
    directory = environ.get(ENV_DIR)
    if not directory:
        return None
    return WorkerInfo(
        int(environ.get(ENV_INDEX, "0")), Path(directory), int(environ.get(ENV_SUPERVISOR, "0"))
    )


class WorkerBoard:
    """This worker's snapshot file, and the whole server's view read from everyone's."""

    def __init__(self, info: WorkerInfo, runtime: EdgeRuntime) -> None:
        self.info = info
        self.runtime = runtime
        self.pid = os.getpid()
        self.started = time.time()
        self.path = info.directory / f"worker-{self.pid}.json"

    # -- this worker -------------------------------------------------------------------------------------

    def snapshot(self, prometheus: str | None = None) -> dict[str, Any]:
        runtime = self.runtime
        policy = runtime.policy
        status = runtime.reload_status
        return {
            "pid": self.pid,
            "index": self.info.index,
            "started": self.started,
            "published": time.time(),
            "policy": {
                "version": policy.version if policy else None,
                "fingerprint": status.fingerprint,
                "loaded_at": status.loaded_at,
            },
            "reload": {
                "reloads": status.reloads,
                "failures": status.failures,
                "last_error": status.last_error,
            },
            "regions": runtime.health.snapshot(list(policy.regions)) if policy else {},
            "requests": int(runtime.metrics.prometheus.requests.total()) if runtime.metrics else 0,
            "prometheus": runtime.own_prometheus_text() if prometheus is None else prometheus,
        }

    def publish(self, prometheus: str | None = None) -> None:
        try:
            write_json(self.path, self.snapshot(prometheus))
        except OSError as exc:  # the directory went away (the supervisor is stopping): nothing to publish to
            log.debug("worker snapshot not written: %s", exc)

    async def run(self) -> None:
        while True:
            self.publish()
            await asyncio.sleep(PUBLISH_INTERVAL)

    # -- the whole server -------------------------------------------------------------------------------

    def supervisor(self) -> dict[str, Any]:
        return read_json(self.info.directory / SUPERVISOR_FILE) or {}

    def snapshots(self) -> list[dict[str, Any]]:
        """Every worker's last snapshot (exited ones too), this worker's own fresh."""
        found = []
        for path in sorted(self.info.directory.glob("worker-*.json")):
            if path == self.path:
                continue
            data = read_json(path)
            if isinstance(data, dict) and "pid" in data:
                found.append(data)
        return found

    def prometheus_text(self, own: str) -> str:
        """``own`` with every counter and histogram summed over all workers, plus the server's own metrics."""
        self.publish(own)
        supervisor = self.supervisor()
        live = {w["pid"] for w in supervisor.get("workers", [])}
        others = [s.get("prometheus", "") for s in self.snapshots()]
        merged = merge_prometheus(own, others)
        extra = [
            "# HELP edgerules_workers Worker processes of this server that are running now.",
            "# TYPE edgerules_workers gauge",
            f"edgerules_workers {len(live) or 1}",
            "# HELP edgerules_worker_restarts_total Workers the supervisor restarted after they exited.",
            "# TYPE edgerules_worker_restarts_total counter",
            f"edgerules_worker_restarts_total {int(supervisor.get('restarts', 0))}",
        ]
        return merged + "\n".join(extra) + "\n"

    def status(self) -> dict[str, Any]:
        """The supervisor and every live worker (pid, index, policy version, reloads, health view)."""
        self.publish()
        supervisor = self.supervisor()
        live = {w["pid"]: w for w in supervisor.get("workers", [])}
        workers = []
        for snap in [self.snapshot(prometheus=""), *self.snapshots()]:
            if live and snap["pid"] not in live:
                continue  # exited: its counters still count, but it is not part of the server any more
            snap = {k: v for k, v in snap.items() if k != "prometheus"}
            snap["self"] = snap["pid"] == self.pid
            workers.append(snap)
        workers.sort(key=lambda w: w["index"])
        return {
            "supervisor": {
                "pid": supervisor.get("pid", self.info.supervisor),
                "workers": supervisor.get("size", len(workers)),
                "restarts": supervisor.get("restarts", 0),
            },
            "workers": workers,
        }

    def close(self) -> None:
        self.publish()


def ask_supervisor_to_reload(info: WorkerInfo | None) -> bool:
    """After a reload through the admin endpoint (which lands on one worker): SIGHUP the supervisor, which
    passes it on to every worker."""
    if info is None or info.supervisor <= 0:
        return False
    with contextlib.suppress(OSError):
        os.kill(info.supervisor, signal.SIGHUP)
        return True
    return False


# -- Prometheus text merging --------------------------------------------------------------------------------


def _parse(text: str) -> tuple[dict[str, str], dict[str, list[str]], dict[str, dict[str, float]]]:
    """(metric -> type, metric -> header lines, metric -> {sample line key: value}) in the text's order."""
    kinds: dict[str, str] = {}
    headers: dict[str, list[str]] = {}
    samples: dict[str, dict[str, float]] = {}
    current = ""
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                current = parts[2]
                headers.setdefault(current, []).append(line)
                samples.setdefault(current, {})
                if parts[1] == "TYPE" and len(parts) == 4:
                    kinds[current] = parts[3].strip()
            continue
        key, _, value = line.rpartition(" ")
        try:
            number = float(value)
        except ValueError:
            continue
        samples.setdefault(current, {})[key] = number
    return kinds, headers, samples


def merge_prometheus(own: str, others: Iterable[str]) -> str:
    """Sum counters and histograms of ``others`` into ``own``; gauges stay ``own``'s."""
    kinds, headers, samples = _parse(own)
    for text in others:
        o_kinds, o_headers, o_samples = _parse(text)
        for metric, series in o_samples.items():
            kind = o_kinds.get(metric) or kinds.get(metric)
            if kind not in ("counter", "histogram"):
                continue
            if metric not in samples:
                kinds[metric] = kind
                headers[metric] = o_headers.get(metric, [])
                samples[metric] = {}
            mine = samples[metric]
            for key, value in series.items():
                mine[key] = mine.get(key, 0.0) + value
    lines: list[str] = []
    for metric, series in samples.items():
        lines.extend(headers.get(metric, []))
        lines.extend(f"{key} {format_value(value)}" for key, value in series.items())
    return "\n".join(lines) + "\n"


__all__ = [
    "ENV_DIR",
    "ENV_INDEX",
    "ENV_LISTEN_FD",
    "ENV_SUPERVISOR",
    "LISTEN_BACKLOG",
    "SUPERVISOR_FILE",
    "WorkerBoard",
    "WorkerInfo",
    "ask_supervisor_to_reload",
    "merge_prometheus",
    "read_json",
    "worker_info",
    "write_json",
]

"""`edgerules serve --workers N`: one listening socket, N worker processes, one supervisor.

Why one socket bound here and inherited, rather than SO_REUSEPORT per worker: the socket (and its accept
queue) belongs to the supervisor and outlives any worker. A worker that crashes takes only the connections it
had accepted with it; connections still waiting in the queue are accepted by the other workers, and nothing is
refused while the replacement starts. With SO_REUSEPORT each worker has its own queue, the kernel hashes new
connections onto the queues, and whatever sat in a dead worker's queue is reset. Port 0 also just works (the
supervisor picks the port once). The cost is that the kernel wakes every idle worker for a new connection and
the first to call accept() wins, which spreads connections towards whichever worker is least busy.

Each worker is a fresh `python -m edgerules.tools.cli serve ...` process (no fork of a running event loop), given
the socket's descriptor in ``EDGERULES_LISTEN_FD``; mitmproxy's reverse-proxy server then accepts on it (see
`edgerules.edge.serve.use_inherited_socket`).

The supervisor:
- restarts a worker that exits unexpectedly (logged, counted in ``supervisor.json`` and in the
  ``edgerules_worker_restarts_total`` metric), waiting longer each time a worker dies right after it started;
- on SIGTERM/SIGINT passes SIGTERM to every worker, each stops accepting and finishes its in-flight requests
  (up to ``--drain-timeout``), and exits 0 once all of them exited cleanly;
- on SIGHUP (and after `edgerules reload`, which lands on one worker) makes every worker reload the policy.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgerules.edge.workers import (
    ENV_DIR,
    ENV_INDEX,
    ENV_LISTEN_FD,
    ENV_SUPERVISOR,
    LISTEN_BACKLOG,
    SUPERVISOR_FILE,
    write_json,
)

if TYPE_CHECKING:
    from edgerules.edge.serve import ServeConfig

QUICK_EXIT = (
    5.0  # a worker that dies before it came up, or this soon after, is restarted with a growing delay
)
MAX_BACKOFF = 10.0
KILL_GRACE = 10.0  # after the drain timeout, how long to wait before SIGKILLing a worker that did not exit

_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
except (OSError, AttributeError):
    _prctl = None


def _worker_dies_with_supervisor() -> None:  # between fork and exec in the child
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def say(message: str) -> None:
    print(f"edgerules serve: {message}", flush=True)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts on (``""``: every interface, IPv6 and IPv4 when possible)."""
    if host == "":
        if socket.has_dualstack_ipv6():
            sock = socket.create_server(
                ("::", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=1024
            )
        else:
            sock = socket.create_server(("0.0.0.0", port), backlog=LISTEN_BACKLOG)
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


def worker_count(text: str) -> int:
    """``--workers``: a positive number, or ``auto`` for the cores this process may run on."""
    if text == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--workers expects a number of processes (1 or more) or 'auto', got {text!r}")
    return int(text)


@dataclass(slots=True)
class Slot:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0  # quick deaths in a row
    restart_at: float = 0.0
    starts: int = 0


class Supervisor:
    def __init__(self, config: ServeConfig, workers: int) -> None:
        from edgerules.edge.serve import parse_listen

        self.config = config
        self.host, port = parse_listen(config.listen)
        self.sock = bind(self.host, port)
        self.port = self.sock.getsockname()[1]
        self.directory = Path(tempfile.mkdtemp(prefix="edgerules-workers-"))
        self.slots = [Slot(i) for i in range(workers)]
        self.restarts = 0
        self.stopping: int | None = None  # the signal that asked us to stop
        self.reload_pending = False
        self.failed_start = False

    # -- workers ---------------------------------------------------------------------------------------

    def _argv(self) -> list[str]:
        c = self.config
        host = f"[{self.host}]" if ":" in self.host else self.host
        argv = [sys.executable, "-m", "edgerules.tools.cli", "serve", "--policy", c.policy_path]
        if c.env:
            argv += ["--env", c.env]
        argv += ["--listen", f"{host}:{self.port}", "--drain-timeout", str(c.drain_timeout)]
        if c.mode:
            argv += ["--mode", c.mode]
        for cert in c.certs:
            argv += ["--certs", cert]
        for setting in c.settings:
            argv += ["--set", setting]
        return argv

    def _start(self, slot: Slot) -> None:
        env = {
            **os.environ,
            ENV_LISTEN_FD: str(self.sock.fileno()),
            ENV_INDEX: str(slot.index),
            ENV_DIR: str(self.directory),
            ENV_SUPERVISOR: str(os.getpid()),
        }
        slot.process = subprocess.Popen(
            self._argv(),
            env=env,
            pass_fds=(self.sock.fileno(),),
            stdin=subprocess.DEVNULL,
            preexec_fn=_worker_dies_with_supervisor,
        )
        slot.started = time.monotonic()
        slot.starts += 1
        say(f"worker {slot.index} started (pid {slot.process.pid})")
        self._write_state()

    def _write_state(self) -> None:
        workers = [
            {"index": s.index, "pid": s.process.pid}
            for s in self.slots
            if s.process is not None and s.process.poll() is None
        ]
        state = {"pid": os.getpid(), "size": len(self.slots), "restarts": self.restarts, "workers": workers}
        with contextlib.suppress(OSError):
            write_json(self.directory / SUPERVISOR_FILE, state)

    def _check(self, slot: Slot, now: float) -> None:
        process = slot.process
        if process is not None:
            code = process.poll()
            if code is None:
                return
            how = f"signal {-code}" if code < 0 else f"code {code}"
            # A worker is up once it published its first snapshot (after its proxy started listening).
            came_up = (self.directory / f"worker-{process.pid}.json").exists()
            quick = not came_up or now - slot.started < QUICK_EXIT
            if slot.starts == 1 and not came_up and code > 0:
                # its first start failed (a bad --set, an unreadable certificate): restarting would only loop
                say(f"worker {slot.index} (pid {process.pid}) failed to start (exit code {code}); stopping")
                slot.process = None
                self.failed_start = True
                return
            slot.failures = slot.failures + 1 if quick else 0
            delay = min(MAX_BACKOFF, 0.5 * 2 ** (slot.failures - 1)) if quick else 0.0
            slot.process = None
            slot.restart_at = now + delay
            self.restarts += 1
            say(
                f"worker {slot.index} (pid {process.pid}) exited with {how}; restarting it"
                + (f" in {delay:.1f}s" if delay else "")
                + f" (restart #{self.restarts})"
            )
            self._write_state()
        if now >= slot.restart_at:
            self._start(slot)

    def _signal_all(self, sig: int) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(sig)

    # -- the loop --------------------------------------------------------------------------------------

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stopping = signum

    def _on_hup(self, signum: int, frame: object) -> None:
        self.reload_pending = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        say(
            f"{len(self.slots)} workers sharing {self.host or '*'}:{self.port} (supervisor pid {os.getpid()})"
        )
        try:
            for slot in self.slots:
                self._start(slot)
            while self.stopping is None and not self.failed_start:
                now = time.monotonic()
                for slot in self.slots:
                    self._check(slot, now)
                if self.reload_pending:
                    self.reload_pending = False
                    say("reloading the policy in every worker")
                    self._signal_all(signal.SIGHUP)
                time.sleep(0.05)
            code = self._stop()
            return 1 if self.failed_start else code
        finally:
            self.sock.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    def _stop(self) -> int:
        say(f"stopping: draining {len(self.slots)} workers")
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.config.drain_timeout + KILL_GRACE
        codes: dict[int, int] = {}
        for slot in self.slots:
            process = slot.process
            if process is None:
                continue
            try:
                codes[slot.index] = process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"worker {slot.index} (pid {process.pid}) did not exit in time: killed")
                process.kill()
                codes[slot.index] = process.wait()
        # -SIGTERM: a worker still starting up (its handlers not installed yet) ended by our signal, as asked
        failed = {i: c for i, c in codes.items() if c not in (0, -signal.SIGTERM)}
        if failed:
            say(f"workers exited uncleanly: {failed}")
            return 1
        say("all workers drained and exited")
        return 0


def supervise(config: ServeConfig, workers: int) -> int:
    try:
        supervisor = Supervisor(config, workers)
    except OSError as exc:
        say(f"cannot listen on {config.listen}: {exc}")
        return 1
    return supervisor.run()


__all__ = ["Supervisor", "bind", "supervise", "worker_count"]

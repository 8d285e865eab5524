"""Subprocesses for end-to-end tests: output captured, readiness awaited, never left running.

Every child runs in its own session (process group), so stop/kill reach its whole tree; it is also tied to
the test process with ``PR_SET_PDEATHSIG`` (Linux), and an ``atexit`` hook stops whatever is still registered.
Use it as a context manager, or from a fixture that calls ``stop()`` in its finalizer.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
OUTPUT_LIMIT = 4 * 1024 * 1024  # keep the last 4 MiB of a chatty process's output

_live: set[ManagedProcess] = set()
_live_lock = threading.Lock()


class ProcessError(RuntimeError):
    """A managed process exited early or was not ready in time; the message carries its output."""


_PR_SET_PDEATHSIG = 1
try:  # resolved here, not in the forked child (no dlopen between fork and exec)
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGKILL it if the test process dies without cleaning up."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


class ManagedProcess:
    """One command, started with ``start()``; its stdout+stderr are merged into an in-memory buffer."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        ready: str | re.Pattern[str] | None = None,
        fail: str | re.Pattern[str] | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        """``ready``: regex of the line that means "up"; ``fail``: regex that means "broken" if it appears
        before the ready line. ``env`` is added to (not replacing) the current environment."""
        self.argv = [os.fspath(a) for a in argv]
        self.name = name or Path(self.argv[0]).name
        self.cwd = os.fspath(cwd) if cwd is not None else os.fspath(REPO_ROOT)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.ready = re.compile(ready, re.MULTILINE) if isinstance(ready, str) else ready
        self.fail = re.compile(fail, re.MULTILINE) if isinstance(fail, str) else fail
        self.ready_timeout = ready_timeout
        self.ready_match: re.Match[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._cond = threading.Condition()
        self._buf = bytearray()
        self._dropped = 0  # bytes discarded from the front of _buf
        self._eof = True
        self._ready_since = 0  # output offset where the current run began

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self, *, wait: bool = True) -> Self:
        """Launch the command; with ``wait`` (default) block until the ready line (see ``wait_ready``)."""
        if self.running:
            raise ProcessError(f"{self.name} is already running (pid {self.pid})")
        since = self._offset()
        self._proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        with _live_lock:
            _live.add(self)
        with self._cond:
            self._eof = False
        self._reader = threading.Thread(
            target=self._read, args=(self._proc,), name=f"output-{self.name}", daemon=True
        )
        self._reader.start()
        self._ready_since = since
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float | None = None) -> re.Match[str] | None:
        """Wait for the ready line of the current run; on timeout, early exit or a ``fail`` match, stop the
        process and raise ``ProcessError`` with its output."""
        if self.ready is None:
            return None
        try:
            self.ready_match = self.wait_for(
                self.ready, timeout if timeout is not None else self.ready_timeout, since=self._ready_since
            )
        except ProcessError:
            self.stop()
            raise
        if self.fail is not None:
            with self._cond:
                before = self._text_since(self._ready_since)[: self.ready_match.end()]
            if self.fail.search(before):
                self.stop()
                raise ProcessError(f"{self.name} reported an error while starting:\n{self.output()}")
        return self.ready_match

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``timeout``; the exit code (None if never run)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(proc, signal.SIGKILL)
                proc.wait()
        self._reap(proc)
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the whole process group at once (an abrupt crash, e.g. "the origin died")."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal_group(proc, signal.SIGKILL)
            proc.wait()
        self._reap(proc)
        return proc.returncode

    def restart(self, *, wait: bool = True) -> Self:
        """Stop (if running) and start the same command again; output history is kept."""
        self.stop()
        with self._cond:
            self._buf += f"\n--- {self.name} restarted ---\n".encode()
        return self.start(wait=wait)

    def __enter__(self) -> Self:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- state -------------------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def output(self) -> str:
        """Everything the process wrote so far (across restarts; the oldest part may be elided)."""
        with self._cond:
            text = self._buf.decode(errors="replace")
            dropped = self._dropped
        return f"[... {dropped} bytes dropped ...]\n{text}" if dropped else text

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float, *, since: int = 0) -> re.Match[str]:
        """Wait until a complete output line at absolute byte offset >= ``since`` matches ``pattern``."""
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                text = self._text_since(since, complete_lines=True)
                match = regex.search(text)
                if match:
                    return match
                if self._eof:
                    code = self._exit_code(grace=2.0)
                    raise ProcessError(
                        f"{self.name} exited (code {code}) before printing /{regex.pattern}/; output:\n"
                        f"{self._tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ProcessError(
                        f"{self.name} did not print /{regex.pattern}/ within {timeout:.1f}s; output:\n"
                        f"{self._tail()}"
                    )
                self._cond.wait(min(remaining, 0.5))

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.returncode}"
        return f"<ManagedProcess {self.name} pid={self.pid} {state}>"

    # -- internals -----------------------------------------------------------------------------------

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        try:
            while chunk := os.read(fd, 65536):
                with self._cond:
                    self._buf += chunk
                    if len(self._buf) > OUTPUT_LIMIT:
                        cut = len(self._buf) - OUTPUT_LIMIT // 2
                        del self._buf[:cut]
                        self._dropped += cut
                    self._cond.notify_all()
        finally:
            proc.stdout.close()
            with self._cond:
                if proc is self._proc:
                    self._eof = True
                self._cond.notify_all()

    def _exit_code(self, grace: float) -> int | None:
        if self._proc is None:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self._proc.wait(grace)
        return None

    def _offset(self) -> int:
        with self._cond:
            return self._dropped + len(self._buf)

    def _text_since(self, since: int, *, complete_lines: bool = False) -> str:
        start = max(0, since - self._dropped)
        data = bytes(self._buf[start:])
        if complete_lines and not self._eof:
            data = data[: data.rfind(b"\n") + 1]
        return data.decode(errors="replace")

    def _tail(self, limit: int = 20000) -> str:
        text = self._buf.decode(errors="replace")
        return text if len(text) <= limit else "[...]\n" + text[-limit:]

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        # The group id is the leader's pid; Linux does not hand that number out again while the leader is
        # unreaped or any member of its group is alive.
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            proc.send_signal(sig)

    def _reap(self, proc: subprocess.Popen[bytes]) -> None:
        # Children that outlived the leader (same group) are killed too before we forget the group. The
        # leader is already reaped here; the number stays reserved while any group member is alive.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(timeout=5)
        with _live_lock:
            _live.discard(self)


def stop_all() -> None:
    """Stop every managed process still running (atexit safety net; fixtures should not rely on it)."""
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.stop(timeout=2.0)


atexit.register(stop_all)

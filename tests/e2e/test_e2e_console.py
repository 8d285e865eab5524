"""The edge in mitmproxy's console (`mitmproxy -s addon.py`), run in a pseudo-terminal as a user would: requests
through it are decided by the edge, and the flows it saves (`-w`) carry the decision (comment, marked)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import struct
import termios
import time

import pytest
from mitmproxy import io

from tests.support.origins import start_origins
from tests.support.policies import ENV, write_policy
from tests.support.ports import free_port, wait_for_port
from tests.support.processes import REPO_ROOT, VENV_BIN
from tests.support.proxy import RUNNER_VARIABLE, http

pytestmark = [
    pytest.mark.e2e,
    # mitmproxy's own front ends: the same commands under either runner (`make test` runs e2e twice)
    pytest.mark.skipif(os.environ.get(RUNNER_VARIABLE) == "serve", reason="mitmproxy front ends only"),
]

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")


class Console:
    """`mitmproxy` on a pseudo-terminal (120x40); its screen output is drained and kept."""

    def __init__(self, argv: list[str]) -> None:
        self.screen = bytearray()
        pid, fd = pty.fork()
        if pid == 0:  # the child: the console, in the repository (addon.py is relative)
            os.chdir(REPO_ROOT)
            os.environ.update({**ENV, "TERM": "xterm"})
            os.execv(argv[0], argv)
        self.pid, self.fd = pid, fd
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], min(remaining, 0.1))
            if ready:
                try:
                    self.screen += os.read(self.fd, 65536)
                except OSError:
                    return

    def stop(self) -> int:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            self.drain(1.0)
            deadline = time.monotonic() + 20
            while True:
                done, status = os.waitpid(self.pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    os.kill(self.pid, signal.SIGKILL)
                    _, status = os.waitpid(self.pid, 0)
                    break
                self.drain(0.2)
            os.close(self.fd)
            self.pid = 0
            return status
        return 0


def test_the_console_runs_the_edge_and_saves_its_decisions(tmp_path):
    origins = start_origins(list(REGIONS))
    console = None
    try:
        policy = write_policy(tmp_path, {name: origin.port for name, origin in origins.items()})
        out, port = tmp_path / "console.flows", free_port()
        argv = [
            str(VENV_BIN / "mitmproxy"),
            "--listen-host", "127.0.0.1",
            "-p", str(port),
            "--mode", "reverse:http://127.0.0.1:9",
            "--set", "connection_strategy=lazy",
            "-s", "addon.py",
            "--set", f"edgerules_policy={policy}",
            "--set", "edgerules_env=e2e",
            "-w", str(out),
        ]  # fmt: skip
        console = Console(argv)
        deadline = time.monotonic() + 60
        while True:
            console.drain(0.3)
            try:
                wait_for_port(port, timeout=0.3)
                break
            except TimeoutError:
                assert time.monotonic() < deadline, console.screen[-3000:].decode(errors="replace")
        statuses = [
            http("GET", f"http://127.0.0.1:{port}/health", {"CF-IPCountry": "US"}).status,
            http("GET", f"http://127.0.0.1:{port}/api/v1/calls/1", {"CF-IPCountry": "US"}).status,
        ]
        console.drain(1.0)
        assert console.stop() == 0
    finally:
        if console is not None:
            console.stop()
        origins.stop_all()

    assert statuses == [200, 401]
    assert b"Addon error" not in console.screen
    with open(out, "rb") as handle:
        flows = list(io.FlowReader(handle).stream())
    assert [(f.response.status_code, bool(f.marked)) for f in flows] == [(200, False), (401, True)]
    assert flows[0].comment.startswith("edge: us-east-1 primary")
    assert flows[1].comment.startswith("edge error: 401 unauthorized")
    assert flows[0].metadata["edgerules"]["trace"]

"""A real, throw-away ``redis-server`` on 127.0.0.1 for tests.

Use the ``redis_server`` fixture (a fresh server per test, stopped afterwards) or ``RedisServer`` directly.
The fixture skips the test only when ``redis-server`` is not installed.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from .ports import free_port

REDIS_SERVER = "redis-server"


def ping(port: int, timeout: float = 0.5) -> bool:
    """True if a Redis on 127.0.0.1:port answers PING with PONG (not LOADING or an error)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, port: int | None = None, executable: str = REDIS_SERVER) -> None:
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.executable = executable
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start on ``self.port`` and wait for PONG; a free port picked by us is re-picked if it was taken."""
        for _attempt in range(3):
            cmd = [
                self.executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                if ping(self.port):
                    return self
                time.sleep(0.02)
            self._reap()
            if self._fixed_port:
                break
            self.port = free_port()
        raise RuntimeError(f"redis-server did not answer PING on 127.0.0.1:{self.port}")

    def _reap(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(timeout=10)
            if self.process.stderr is not None:
                self.process.stderr.close()
            self.process = None

    def stop(self) -> None:
        """Graceful stop (SIGTERM; nothing is saved)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):  # _reap() kills it then
                self.process.wait(timeout=10)
        self._reap()

    def kill(self) -> None:
        """Abrupt stop (SIGKILL), as in a crash."""
        self._reap()

    def restart(self) -> RedisServer:
        """Stop if running, then start again on the same port (state is gone: nothing is persisted)."""
        self.stop()
        self._fixed_port = True
        return self.start()

    def __enter__(self) -> RedisServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def require_redis_server() -> None:
    if shutil.which(REDIS_SERVER) is None:
        pytest.skip(f"{REDIS_SERVER} is not on PATH (install redis-server to run Redis tests)")


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server for one test, killed afterwards."""
    require_redis_server()
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[[], RedisServer]]:
    """Start as many redis-servers as a test needs (already started); all are stopped afterwards."""
    require_redis_server()
    servers: list[RedisServer] = []

    def make() -> RedisServer:
        servers.append(RedisServer().start())
        return servers[-1]

    yield make
    for server in servers:
        server.stop()

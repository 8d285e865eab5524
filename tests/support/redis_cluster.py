"""A real, throw-away Redis Cluster (three masters, no replicas) and a Sentinel setup on 127.0.0.1 for tests.

`RedisCluster` starts three ``redis-server --cluster-enabled yes`` and joins them with
``redis-cli --cluster create ... --cluster-yes``; `RedisSentinel` starts one master and one sentinel watching it.
The fixtures skip only when ``redis-server`` (or ``redis-cli``) is not installed.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .ports import free_port
from .redis_server import REDIS_SERVER, ping

REDIS_CLI = "redis-cli"


def cluster_port() -> int:
    """A free port for a cluster node: at most 55535, with port + 10000 (the cluster bus) free too."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def require_redis_cluster_tools() -> None:
    for tool in (REDIS_SERVER, REDIS_CLI):
        if shutil.which(tool) is None:
            pytest.skip(
                f"{tool} is not on PATH (install redis-server/redis-tools to run Redis Cluster tests)"
            )


def _start_node(directory: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--dir", str(directory), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_ping(port: int, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if ping(port):
            return
        time.sleep(0.02)
    raise RuntimeError(f"redis-server on 127.0.0.1:{port} did not answer PING")


def _cli(port: int, *args: str, timeout: float = 30.0) -> str:
    result = subprocess.run(
        [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"redis-cli {' '.join(args)} failed: {result.stdout}{result.stderr}")
    return result.stdout


class _Nodes:
    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="edgerules-redis-"))
        self.processes: list[subprocess.Popen[bytes]] = []

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            if process.poll() is None:
                process.kill()
                process.wait()
        self.processes.clear()
        shutil.rmtree(self.directory, ignore_errors=True)


class RedisCluster(_Nodes):
    def __init__(self, masters: int = 3) -> None:
        super().__init__()
        self.ports = [cluster_port() for _ in range(masters)]

    @property
    def url(self) -> str:
        """One node, as a cluster URL (the client discovers the others)."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self, timeout: float = 60.0) -> RedisCluster:
        try:
            for port in self.ports:
                process = _start_node(
                    self.directory,
                    port,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    f"nodes-{port}.conf",
                    "--cluster-node-timeout",
                    "5000",
                )
                self.processes.append(process)
                _wait_ping(port, process)
            nodes = [f"127.0.0.1:{port}" for port in self.ports]
            subprocess.run(
                [REDIS_CLI, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=True,
            )
            deadline = time.monotonic() + timeout
            while not all("cluster_state:ok" in _cli(port, "cluster", "info") for port in self.ports):
                if time.monotonic() > deadline:
                    raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def flush(self) -> None:
        for port in self.ports:
            _cli(port, "flushall")

    def slot_owners(self) -> dict[int, int]:
        """Keys per master port (DBSIZE), to show data really is spread over the masters."""
        return {port: int(_cli(port, "dbsize").strip() or 0) for port in self.ports}


class RedisSentinel(_Nodes):
    SERVICE = "edgerules-master"

    def __init__(self) -> None:
        super().__init__()
        self.master_port = free_port()
        self.sentinel_port = free_port()

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.SERVICE}/0"

    def start(self, timeout: float = 30.0) -> RedisSentinel:
        try:
            master = _start_node(self.directory, self.master_port)
            self.processes.append(master)
            _wait_ping(self.master_port, master)
            config = self.directory / "sentinel.conf"
            config.write_text(
                f"port {self.sentinel_port}\nbind 127.0.0.1\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master_port} 1\n"
                f"sentinel down-after-milliseconds {self.SERVICE} 5000\n"
            )
            sentinel = subprocess.Popen(
                [REDIS_SERVER, str(config), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.processes.append(sentinel)
            _wait_ping(self.sentinel_port, sentinel)
            deadline = time.monotonic() + timeout
            while str(self.master_port) not in _cli(
                self.sentinel_port, "sentinel", "get-master-addr-by-name", self.SERVICE
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError("the sentinel does not know its master")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def flush(self) -> None:
        _cli(self.master_port, "flushall")


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """One 3-master Redis Cluster for the session (tests flush it or use prefixes of their own)."""
    require_redis_cluster_tools()
    cluster = RedisCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinel]:
    require_redis_cluster_tools()
    sentinel = RedisSentinel().start()
    try:
        yield sentinel
    finally:
        sentinel.stop()

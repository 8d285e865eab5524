"""Demo origins (``examples/origin.py``) as subprocesses, with their control API at hand."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self

import pytest

from .processes import REPO_ROOT, ManagedProcess
from .proxy import http

ORIGIN_SCRIPT = REPO_ROOT / "examples" / "origin.py"
READY = r"^origin (?P<region>\S+) listening on (?P<host>[^\s:]+):(?P<port>\d+)\s*$"


class Origin:
    """One origin process. ``port=None`` lets it pick a free port; ``restart()`` reuses the same port."""

    def __init__(self, region: str, port: int | None = None, *, host: str = "127.0.0.1") -> None:
        self.region = region
        self.host = host
        self.port = port or 0
        self.process = self._process()

    def _process(self) -> ManagedProcess:
        argv = [sys.executable, str(ORIGIN_SCRIPT), "--region", self.region, "--host", self.host]
        return ManagedProcess(
            [*argv, "--port", str(self.port)], name=f"origin-{self.region}", ready=READY, ready_timeout=15
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.running

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self, *, wait: bool = True) -> Self:
        self.process.start(wait=False)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> Self:
        match = self.process.wait_ready()
        assert match is not None
        if not self.port:
            # Pin the port picked on first start so restart() comes back on the same address.
            self.port = int(match["port"])
            self.process.argv[-1] = str(self.port)
        return self

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        """SIGKILL: the origin dies abruptly (connections reset, nothing flushed)."""
        self.process.kill()

    def restart(self) -> Self:
        """Stop (if still running) and start again on the same port."""
        self.process.restart()
        return self

    def output(self) -> str:
        return self.process.output()

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- control API ---------------------------------------------------------------------------------

    def _control(self, method: str, action: str, body: Any = None) -> Any:
        resp = http(method, f"{self.url}/__origin/{action}", json=body, timeout=5)
        if resp.status != 200:
            raise AssertionError(f"origin {self.region} {action}: {resp.status} {resp.body!r}")
        return resp.json()

    def stats(self) -> dict[str, Any]:
        """``{"requests": N, "paths": {path: n}, "log": [{"method", "path", "query", "headers"}, ...]}``."""
        return self._control("GET", "stats")

    def requests(self) -> int:
        return int(self.stats()["requests"])

    def hits(self, path: str) -> int:
        """How many requests reached exactly ``path`` (raw, as the origin received it)."""
        return int(self.stats()["paths"].get(path, 0))

    def last_request(self) -> dict[str, Any] | None:
        log = self.stats()["log"]
        return log[-1] if log else None

    def reset(self) -> None:
        self._control("POST", "reset")

    def set_healthy(self, healthy: bool) -> None:
        self._control("POST", "health", {"healthy": healthy})

    def __repr__(self) -> str:
        return f"<Origin {self.region} {self.url} {self.process!r}>"


class Origins(dict[str, Origin]):
    """Origins by region; a context manager that stops them all."""

    def stop_all(self) -> None:
        for origin in self.values():
            origin.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()


def start_origin(region: str, port: int | None = None, *, host: str = "127.0.0.1") -> Origin:
    return Origin(region, port, host=host).start()


def start_origins(regions: Mapping[str, int | None] | Iterable[str], *, host: str = "127.0.0.1") -> Origins:
    """Start several origins in parallel (``{"us-east-1": 9101, "eu-west-1": None}`` or just region names);
    if any fails to come up, the others are stopped before the error propagates."""
    spec = dict(regions) if isinstance(regions, Mapping) else dict.fromkeys(regions)
    origins = Origins({region: Origin(region, port, host=host) for region, port in spec.items()})
    try:
        for origin in origins.values():
            origin.start(wait=False)
        for origin in origins.values():
            origin.wait_ready()
    except BaseException:
        origins.stop_all()
        raise
    return origins


@pytest.fixture
def origin_factory() -> Iterator[Any]:
    """Fixture: ``origin_factory({"us-east-1": None, ...}) -> Origins``; all stopped at teardown.
    Register with ``pytest_plugins = ["tests.support.origins"]`` in a conftest, or wrap it in a fixture."""
    started: list[Origins] = []

    def factory(regions: Mapping[str, int | None] | Iterable[str]) -> Origins:
        origins = start_origins(regions)
        started.append(origins)
        return origins

    try:
        yield factory
    finally:
        for origins in started:
            origins.stop_all()

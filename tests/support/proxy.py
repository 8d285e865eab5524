"""A real proxy under test (mitmdump, or any command printing mitmproxy's "listening at" line) and tiny
synchronous HTTP clients for talking to it."""

from __future__ import annotations

import json as jsonlib
import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from http.client import HTTPConnection, HTTPMessage
from types import TracebackType
from typing import Any, NamedTuple, Self
from urllib.parse import urlsplit

import pytest

from .processes import REPO_ROOT, VENV_BIN, ManagedProcess, ProcessError

# mitmproxy 12: "[15:43:02.376] reverse proxy to http://127.0.0.1:9 listening at 127.0.0.1:36249."
LISTENING = r"listening at (?P<host>\[[^\]]+\]|[^\s:]+):(?P<port>\d+)\.?\s*$"
# Errors mitmproxy logs before the listening line when an addon fails to import or load (it then exits).
STARTUP_FAILURE = (
    r"error in script|Addon error|Traceback \(most recent call last\)|Error logged during startup"
)


class Proxy:
    """A running proxy subprocess; ``url`` is ``http://127.0.0.1:PORT``."""

    def __init__(self, process: ManagedProcess, host: str, port: int) -> None:
        self.process = process
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.running

    def output(self) -> str:
        return self.process.output()

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Proxy {self.url} {self.process!r}>"


def start_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 30.0,
    fail: str | None = STARTUP_FAILURE,
    name: str | None = None,
) -> Proxy:
    """Run ``argv`` from the repo root until it prints mitmproxy's "listening at HOST:PORT" line.

    Raises ``ProcessError`` (with the output) if it exits, logs a startup error (``fail``) or is not ready
    within ``ready_timeout``; the process is stopped before raising."""
    process = ManagedProcess(
        argv, name=name, cwd=REPO_ROOT, env=env, ready=LISTENING, fail=fail, ready_timeout=ready_timeout
    )
    match = process.start().ready_match
    assert match is not None
    host = match["host"].strip("[]")
    host = f"[{host}]" if ":" in host else host
    return Proxy(process, host, int(match["port"]))


def mitmdump_argv(
    *,
    addon: str | None = "addon.py",
    options: Mapping[str, object] | None = None,
    mode: str = "reverse:http://127.0.0.1:9",
    extra_args: Sequence[str] = (),
) -> list[str]:
    argv = [
        str(VENV_BIN / "mitmdump"),
        "--listen-host",
        "127.0.0.1",
        "-p",
        "0",
        "--mode",
        mode,
        "--set",
        "connection_strategy=lazy",
    ]
    if addon is not None:
        argv += ["-s", addon]
    for key, value in (options or {}).items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        argv += ["--set", f"{key}={text}"]
    return [*argv, *extra_args]


def start_mitmdump(
    *,
    addon: str | None = "addon.py",
    options: Mapping[str, object] | None = None,
    mode: str = "reverse:http://127.0.0.1:9",
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 30.0,
) -> Proxy:
    """Start ``mitmdump`` on 127.0.0.1, a free port, ``connection_strategy=lazy``; ``addon`` is relative to
    the repo root (None: no addon); ``options`` become ``--set k=v`` (bools as true/false).

    With ``EDGERULES_E2E_RUNNER=serve`` in the environment, an edge (``addon.py`` with a policy) is started
    as ``edgerules serve`` instead, with the same policy, environment, mode and options: the whole
    end-to-end suite then runs against the lean runner (``make test`` does both)."""
    edge = addon == "addon.py" and options is not None and "edgerules_policy" in options and not extra_args
    if edge and os.environ.get(RUNNER_VARIABLE) == "serve":
        assert options is not None
        return start_command(serve_argv(options, mode), env=env, ready_timeout=ready_timeout, name="serve")
    argv = mitmdump_argv(addon=addon, options=options, mode=mode, extra_args=extra_args)
    return start_command(argv, env=env, ready_timeout=ready_timeout, name="mitmdump")


RUNNER_VARIABLE = "EDGERULES_E2E_RUNNER"


def serve_argv(options: Mapping[str, object], mode: str | None = None) -> list[str]:
    """`edgerules serve` with the policy, environment and other options of a mitmdump edge's ``options``
    (``mode`` None: serve's own default, reverse to the policy's first region)."""
    rest = {k: v for k, v in options.items() if k not in ("edgerules_policy", "edgerules_env")}
    argv = [str(VENV_BIN / "edgerules"), "serve", "--policy", str(options["edgerules_policy"])]
    if options.get("edgerules_env"):
        argv += ["--env", str(options["edgerules_env"])]
    argv += ["--listen", "127.0.0.1:0"]
    if mode is not None:
        argv += ["--mode", mode]
    for key, value in rest.items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        argv += ["--set", f"{key}={text}"]
    return argv


def start_edge_process(
    policy: object,
    *,
    environ: Mapping[str, str] | None,
    serve: bool = False,
    env_name: str = "e2e",
    options: Mapping[str, object] | None = None,
    name: str | None = None,
) -> Proxy:
    """The edge on ``policy`` (environment ``env_name``, extra mitmproxy ``options``): ``mitmdump -s addon.py``
    as operators run it, or with ``serve`` the lean ``edgerules serve``. ``environ`` holds the secrets."""
    merged = {"edgerules_policy": str(policy), "edgerules_env": env_name, **(options or {})}
    if serve:
        return start_command(serve_argv(merged), env=environ, name=name or "edgerules-serve")
    return start_mitmdump(options=merged, env=environ)


@pytest.fixture
def proxy_factory() -> Iterator[Any]:
    """Fixture: ``proxy_factory(**start_mitmdump_kwargs) -> Proxy``; every proxy is stopped at teardown.
    Register with ``pytest_plugins = ["tests.support.proxy"]`` in a conftest, or wrap in your own fixture."""
    started: list[Proxy] = []

    def factory(**kwargs: Any) -> Proxy:
        proxy = start_mitmdump(**kwargs)
        started.append(proxy)
        return proxy

    try:
        yield factory
    finally:
        for proxy in started:
            proxy.stop()


# -- HTTP clients -------------------------------------------------------------------------------------


class Response(NamedTuple):
    """``status, headers, body = http(...)``; ``headers`` is case-insensitive, ``headers.get_all(name)``
    returns every value of a repeated header."""

    status: int
    headers: HTTPMessage
    body: bytes

    def json(self) -> Any:
        return jsonlib.loads(self.body)


HeadersArg = Mapping[str, str] | Sequence[tuple[str, str]] | None


def http(
    method: str,
    url: str,
    headers: HeadersArg = None,
    body: bytes | str | None = None,
    timeout: float = 10.0,
    *,
    json: Any = None,
) -> Response:
    """One request on a fresh connection: no redirects followed, 4xx/5xx returned (not raised).

    ``headers`` may be a list of pairs to send a header more than once. A ``Host`` header replaces the one
    derived from the URL. ``json`` serialises a body and sets ``Content-Type: application/json``."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"http() only speaks plain http://host:port URLs, got {url!r}")
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
    if json is not None:
        body = jsonlib.dumps(json)
        if not any(k.lower() == "content-type" for k, _ in pairs):
            pairs.append(("Content-Type", "application/json"))
    data = body.encode() if isinstance(body, str) else body
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    names = {k.lower() for k, _ in pairs}
    conn = HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.putrequest(
            method, target, skip_host="host" in names, skip_accept_encoding="accept-encoding" in names
        )
        for name, value in pairs:
            conn.putheader(name, value)
        if data is not None and "content-length" not in names and "transfer-encoding" not in names:
            conn.putheader("Content-Length", str(len(data)))
        conn.endheaders(data)
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def http_raw(host: str, port: int, raw: bytes, timeout: float = 5.0, idle: float = 1.0) -> bytes:
    """Send ``raw`` bytes as-is and return everything received until the peer closes, ``idle`` seconds pass
    without data after the first byte, or ``timeout`` seconds in all (for smuggling / malformed requests)."""
    received = bytearray()
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(raw)
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(min(remaining, idle) if received else remaining)
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
    return bytes(received)


__all__ = [
    "LISTENING",
    "STARTUP_FAILURE",
    "ProcessError",
    "Proxy",
    "Response",
    "http",
    "http_raw",
    "mitmdump_argv",
    "proxy_factory",
    "start_command",
    "start_mitmdump",
]

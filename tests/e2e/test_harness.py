"""The end-to-end harness itself: demo origins, managed processes, a bare mitmdump in reverse mode."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.origins import Origin, Origins, start_origins
from tests.support.processes import ManagedProcess, ProcessError
from tests.support.proxy import http, http_raw, start_mitmdump

pytestmark = pytest.mark.e2e


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a killed grandchild may wait for its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _gone_soon(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture(scope="module")
def origins() -> Iterator[Origins]:
    with start_origins({"us-east-1": None, "eu-west-1": None}) as started:
        yield started


@pytest.fixture
def us(origins: Origins) -> Origin:
    origin = origins["us-east-1"]
    if not origin.running:
        origin.restart()
    origin.set_healthy(True)
    origin.reset()
    return origin


# -- the origin server ------------------------------------------------------------------------------------


def test_origin_echo_and_stats(us: Origin) -> None:
    resp = http(
        "POST", f"{us.url}/api/v1/x%2e%2e/y?a=1&b", headers=[("X-Dup", "1"), ("X-Dup", "2")], body="hey"
    )
    assert resp.status == 200
    echo = resp.json()
    assert echo["region"] == "us-east-1"
    assert (echo["method"], echo["path"], echo["query"], echo["body_size"]) == (
        "POST",
        "/api/v1/x%2e%2e/y",
        "a=1&b",
        3,
    )
    assert echo["headers"]["X-Dup"] == "1, 2"
    assert resp.headers["x-origin-region"] == "us-east-1"

    assert http("GET", f"{us.url}/health").json() == {"status": "healthy", "region": "us-east-1"}
    stats = us.stats()
    assert stats["requests"] == 2
    assert stats["paths"] == {"/api/v1/x%2e%2e/y": 1, "/health": 1}
    assert stats["log"][0]["headers"]["X-Dup"] == "1, 2"
    us.reset()
    assert us.requests() == 0


def test_origin_health_switch(us: Origin) -> None:
    us.set_healthy(False)
    resp = http("GET", f"{us.url}/health")
    assert (resp.status, resp.json()) == (503, {"status": "unhealthy"})
    us.set_healthy(True)
    assert http("GET", f"{us.url}/health").status == 200
    assert us.hits("/health") == 2
    assert us.hits("/__origin/health") == 0  # control calls are never counted


def test_origin_test_controls(us: Origin) -> None:
    extra = {"Cache-Control": "max-age=60", "ETag": '"v1"'}
    resp = http(
        "GET",
        f"{us.url}/audio/clip",
        headers={
            "X-Test-Status": "503",
            "X-Test-Delay": "0.01",
            "X-Test-Response-Headers": json.dumps(extra),
            "X-Test-Content-Type": "audio/mpeg",
            "X-Test-Body-Size": "100000",
        },
    )
    assert resp.status == 503
    assert resp.headers["Content-Type"] == "audio/mpeg"
    assert resp.headers["Cache-Control"] == "max-age=60"
    assert resp.headers["ETag"] == '"v1"'
    assert len(resp.body) == 100000

    conditional = {"X-Test-Response-Headers": json.dumps(extra), "If-None-Match": 'W/"v0", "v1"'}
    not_modified = http("GET", f"{us.url}/doc", headers=conditional)
    assert (not_modified.status, not_modified.body, not_modified.headers["ETag"]) == (304, b"", '"v1"')
    conditional["If-None-Match"] = '"v2"'
    assert http("GET", f"{us.url}/doc", headers=conditional).status == 200


def test_origin_stream_and_websocket(us: Origin) -> None:
    resp = http("GET", f"{us.url}/voice/stream")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "audio/mpeg"
    assert resp.headers["Transfer-Encoding"] == "chunked"
    assert len(resp.body) == 20 * 4096
    assert asyncio.run(_ws_roundtrip(f"{us.url}/voice/ws", "hello")) == "us-east-1: hello"


def test_http_raw_sends_bytes_verbatim(us: Origin) -> None:
    raw = b"GET /raw?q=1 HTTP/1.1\r\nHost: x\r\nX-Raw: yes\r\nConnection: close\r\n\r\n"
    answer = http_raw("127.0.0.1", us.port, raw)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(body)["headers"]["X-Raw"] == "yes"


async def _ws_roundtrip(url: str, text: str) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_receive=5)) as ws,
    ):
        await ws.send_str(text)
        return await ws.receive_str(timeout=5)


# -- managed processes --------------------------------------------------------------------------------------


def test_process_that_exits_early_raises_with_its_output() -> None:
    proc = ManagedProcess([sys.executable, "-c", "print('bad config'); raise SystemExit(3)"], ready="never")
    with pytest.raises(ProcessError, match=r"(?s)exited \(code 3\).*bad config"):
        proc.start()
    assert not proc.running


def test_readiness_timeout_stops_the_process() -> None:
    proc = ManagedProcess(
        [sys.executable, "-c", "import time; time.sleep(60)"], ready="never", ready_timeout=0.3
    )
    with pytest.raises(ProcessError, match="did not print"):
        proc.start()
    assert proc.pid is not None
    assert not _alive(proc.pid)


def test_stop_and_kill_reach_grandchildren() -> None:
    script = "sleep 60 & echo child $!; wait"
    for end in ("stop", "kill"):
        proc = ManagedProcess(["sh", "-c", script], ready=r"^child (\d+)$", ready_timeout=10)
        proc.start()
        assert proc.ready_match is not None
        grandchild = int(proc.ready_match[1])
        assert _alive(grandchild)
        getattr(proc, end)()
        assert not _alive(proc.pid or 0)
        assert _gone_soon(grandchild), f"{end}() left grandchild {grandchild} running"


def test_broken_addon_fails_the_start(tmp_path: Path) -> None:
    addon = tmp_path / "broken_addon.py"
    addon.write_text("import no_such_module_for_edgerules\n")
    with pytest.raises(ProcessError, match="no_such_module_for_edgerules"):
        start_mitmdump(addon=str(addon), ready_timeout=30)


# -- bare mitmdump in reverse mode -------------------------------------------------------------------------


def test_mitmdump_reverse_proxy_end_to_end(
    origins: Origins, us: Origin, record_property: pytest.RecordProperty
) -> None:
    eu = origins["eu-west-1"]
    eu.reset()
    began = time.perf_counter()
    proxy = start_mitmdump(addon=None, mode=f"reverse:{us.url}")
    startup = time.perf_counter() - began
    record_property("mitmdump_startup_seconds", round(startup, 3))
    print(f"\nmitmdump startup (process start to 'listening at'): {startup:.2f}s")
    try:
        resp = http("GET", f"{proxy.url}/api/v1/agents?x=1", headers={"X-Trace": "t1"})
        assert resp.status == 200, proxy.output()
        echo = resp.json()
        assert (echo["region"], echo["path"], echo["query"]) == ("us-east-1", "/api/v1/agents", "x=1")
        assert echo["headers"]["X-Trace"] == "t1"
        assert us.hits("/api/v1/agents") == 1
        assert eu.requests() == 0

        stream = http("GET", f"{proxy.url}/voice/stream")
        assert (stream.status, len(stream.body)) == (200, 20 * 4096)
        assert asyncio.run(_ws_roundtrip(f"{proxy.url}/voice/ws", "hi")) == "us-east-1: hi"

        us.kill()
        down = http("GET", f"{proxy.url}/api/v1/agents")
        assert 500 <= down.status < 600, (down.status, down.body[:200])

        us.restart()
        assert us.requests() == 0  # a fresh process
        back = http("GET", f"{proxy.url}/api/v1/agents")
        assert (back.status, back.json()["region"]) == (200, "us-east-1")
    finally:
        proxy.stop()
    assert proxy.pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(proxy.pid, 0)
    with pytest.raises(ProcessLookupError):
        os.killpg(proxy.pid, 0)
    assert "listening at" in proxy.output()


def test_the_e2e_runner_switch_starts_edgerules_serve_with_the_same_settings(tmp_path, monkeypatch) -> None:
    """`EDGERULES_E2E_RUNNER=serve` (the second pass of `make test`) turns every edge the suites start into
    `edgerules serve` with the same policy, environment, mode and options; bare mitmdump stays mitmdump."""
    from tests.support.policies import ENV, write_policy
    from tests.support.proxy import serve_argv

    origins = start_origins(["us-east-1", "us-west-2", "eu-west-1"])
    try:
        policy = write_policy(tmp_path, {name: o.port for name, o in origins.items()})
        options = {"edgerules_policy": str(policy), "edgerules_env": "e2e", "termlog_verbosity": "info"}
        argv = serve_argv(options, "reverse:http://127.0.0.1:9")
        assert argv[1:] == [
            "serve", "--policy", str(policy), "--env", "e2e", "--listen", "127.0.0.1:0",
            "--mode", "reverse:http://127.0.0.1:9", "--set", "termlog_verbosity=info",
        ]  # fmt: skip
        monkeypatch.setenv("EDGERULES_E2E_RUNNER", "serve")
        proxy = start_mitmdump(options=options, env=ENV)
        try:
            assert proxy.process.argv[0].endswith("edgerules") and proxy.process.argv[1] == "serve"
            assert http("GET", f"{proxy.url}/health", {"CF-IPCountry": "US"}).status == 200
        finally:
            proxy.stop()
        bare = start_mitmdump(addon=None, mode=f"reverse:{origins['us-east-1'].url}")
        try:
            assert bare.process.argv[0].endswith("mitmdump")
        finally:
            bare.stop()
    finally:
        origins.stop_all()

"""`edgerules serve` must behave as `mitmdump -s addon.py` does.

The key end-to-end scenarios of `test_e2e_edge.py` are imported and run again here against `edgerules serve`:
the module-scoped ones through this module's `edge` fixture (pytest resolves fixtures in the collecting
module), the ones that start their own edge through `start_edge`, which the autouse fixture below points at
`edgerules serve` for the duration of each test. The tests themselves are not copied. (`make test` also runs
the whole end-to-end suite through `edgerules serve`: see `EDGERULES_E2E_RUNNER` in tests/support/proxy.py.)
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import tests.e2e.test_e2e_edge as e2e
from edgerules.edge.serve import default_mode, parse_listen
from tests.e2e.test_e2e_edge import (  # noqa: F401  (collected here, run against `edgerules serve`)
    test_addon_announces_itself,
    test_admin_status_reports_regions,
    test_all_regions_down_is_503_with_retry_after,
    test_health_is_cached_second_time,
    test_identity_headers_reach_origin_and_spoofed_ones_do_not,
    test_invalid_requests_never_reach_an_origin,
    test_killed_origin_fails_over_then_returns,
    test_preflight_is_answered_at_the_edge,
    test_routing_per_country,
)
from tests.support.origins import start_origins
from tests.support.policies import ENV, bearer, write_policy
from tests.support.processes import VENV_BIN, ProcessError
from tests.support.proxy import Proxy, http, start_command
from tests.support.proxy import serve_argv as support_serve_argv
from tests.support.shared_store import poll_until

pytestmark = pytest.mark.e2e

EDGERULES = str(VENV_BIN / "edgerules")


def serve_argv(policy, *extra: str) -> list[str]:
    return [*support_serve_argv({"edgerules_policy": str(policy), "edgerules_env": "e2e"}), *extra]


def start_serve(tmp_path, origins, overlay=None, *extra: str) -> Proxy:
    policy = write_policy(tmp_path, {name: origin.port for name, origin in origins.items()}, overlay)
    return start_command(serve_argv(policy, *extra), env=ENV, name="edgerules-serve")


def wait_exit(proxy: Proxy, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while proxy.process.returncode is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return proxy.process.returncode


@pytest.fixture(autouse=True)
def _edges_are_served(monkeypatch):
    monkeypatch.setattr(e2e, "start_edge", start_serve)


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    origins = start_origins(list(e2e.REGIONS))
    proxy = start_serve(tmp_path_factory.mktemp("serve"), origins)
    try:
        yield proxy, origins
    finally:
        proxy.stop()
        origins.stop_all()


def test_serve_logs_mitmdumps_listening_line_and_no_flow_dump(edge):
    proxy, _ = edge
    http("GET", f"{proxy.url}/health?probe=log")
    output = proxy.output()
    assert f"reverse proxy to http://127.0.0.1:{edge[1]['us-east-1'].port} listening at" in output
    assert "GET http://" not in output  # no per-flow dumper line


def test_set_passes_mitmproxy_options(tmp_path):
    origins = start_origins(["us-east-1"])
    try:
        proxy = start_serve(tmp_path, origins, None, "--set", "body_size_limit=1k")
        try:
            small = http("POST", f"{proxy.url}/webhooks/x", {"Content-Type": "application/json"}, body=b"{}")
            large = http("POST", f"{proxy.url}/webhooks/x", {"Content-Type": "application/json"}, b"1" * 4096)
            assert small.status != 413
            assert large.status == 413
        finally:
            proxy.stop()
    finally:
        origins.stop_all()


def test_unknown_set_option_exits_non_zero(tmp_path):
    policy = write_policy(tmp_path, {"us-east-1": 9})
    with pytest.raises(ProcessError) as info:
        start_command(serve_argv(policy, "--set", "no_such_option=1"), env=ENV, ready_timeout=20)
    assert "no_such_option" in str(info.value)


def test_invalid_policy_exits_1_with_file_line_before_listening(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nname: x\nregions:\n  a: {upstream: http://127.0.0.1:1}\nrouting:\n  default: [b]\n"
    )
    with pytest.raises(ProcessError) as info:
        start_command([EDGERULES, "serve", "--policy", str(bad), "--listen", "127.0.0.1:0"], ready_timeout=20)
    message = str(info.value)
    assert "bad.yaml:6" in message
    assert "exited (code 1)" in message
    assert "listening at 127.0.0.1" not in message.split("output:", 1)[1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_cleanly(tmp_path, sig):
    origins = start_origins(["us-east-1"])
    try:
        proxy = start_serve(tmp_path, origins)
        try:
            assert http("GET", f"{proxy.url}/health").status == 200
            assert proxy.pid is not None
            os.kill(proxy.pid, sig)
            assert wait_exit(proxy, 10) == 0, proxy.output()
            assert "Traceback" not in proxy.output()
        finally:
            proxy.stop()
    finally:
        origins.stop_all()


def test_sigterm_lets_requests_in_flight_finish(tmp_path):
    origins = start_origins(["us-east-1", "us-west-2", "eu-west-1"])
    try:
        proxy = start_serve(tmp_path, origins)
        try:
            path = "/api/v1/calls/drain"
            result = {}
            headers = {"CF-IPCountry": "US", "X-Test-Delay": "1.5", **bearer()}
            client = threading.Thread(
                target=lambda: result.update(r=http("GET", f"{proxy.url}{path}", headers, timeout=20))
            )
            client.start()
            poll_until(lambda: origins["us-east-1"].hits(path), lambda n: n >= 1, timeout=10)
            os.kill(proxy.pid, signal.SIGTERM)  # while the origin still holds the request
            client.join(20)
            assert result["r"].status == 200, result  # finished, not cut off
            assert wait_exit(proxy, 20) == 0, proxy.output()
            with pytest.raises(OSError):  # and nothing listens any more
                http("GET", f"{proxy.url}/health", timeout=2)
        finally:
            proxy.stop()
    finally:
        origins.stop_all()


def test_sighup_reloads_the_policy(tmp_path):
    origins = start_origins(["us-east-1"])
    try:
        proxy = start_serve(tmp_path, origins)
        try:

            def reloads() -> int:
                return http("GET", f"{proxy.url}/__edgerules/status").json()["reload"]["reloads"]

            before = reloads()
            os.kill(proxy.pid, signal.SIGHUP)
            assert poll_until(reloads, lambda n: n > before, timeout=15) == before + 1
            assert proxy.running
        finally:
            proxy.stop()
    finally:
        origins.stop_all()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:8080", ("::1", 8080)), (":9000", ("", 9000))],
)
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", "host:port", "h:70000"])
def test_parse_listen_rejects(text):
    with pytest.raises(ValueError):
        parse_listen(text)


def test_default_mode_is_reverse_to_first_region(tmp_path):
    from edgerules.policy.load import load_policy_file

    path = write_policy(tmp_path, {"us-east-1": 4001, "us-west-2": 4002, "eu-west-1": 4003})
    policy = load_policy_file(str(path), "e2e", environ=ENV).policy
    first = next(iter(policy.regions.values()))
    assert default_mode(policy) == f"reverse:http://127.0.0.1:{first.port}"


def test_in_flight_forgets_requests_whose_client_left():
    """A request refused at the head and closed gets no response hook: its client's disconnect ends it, so a
    drain does not wait for it until the timeout."""
    from types import SimpleNamespace

    from edgerules.edge.serve import InFlight

    one, two = object(), object()
    inflight = InFlight()
    for flow_id, client in (("a", one), ("b", two), ("c", one)):
        inflight.requestheaders(SimpleNamespace(id=flow_id, client_conn=client))
    inflight.response(SimpleNamespace(id="b", client_conn=two))
    assert set(inflight.flows) == {"a", "c"}
    inflight.client_disconnected(one)
    assert inflight.flows == {}

"""The live edge through a real mitmdump and real origins: routing, failover, errors, CORS, validation."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.support.origins import start_origins
from tests.support.policies import ENV, bearer, write_policy
from tests.support.processes import ProcessError
from tests.support.proxy import http, start_edge_process, start_mitmdump
from tests.support.shared_store import poll_until

pytestmark = pytest.mark.e2e

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")


def routed_requests(origin) -> int:
    """Requests an origin saw, health probes excluded (one stats call, so a probe cannot race the count)."""
    stats = origin.stats()
    return stats["requests"] - stats["paths"].get("/health", 0)


def start_edge(tmp_path, origins, overlay=None):
    policy = write_policy(tmp_path, {name: origin.port for name, origin in origins.items()}, overlay)
    return start_edge_process(policy, environ=ENV)


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    origins = start_origins(list(REGIONS))
    proxy = start_edge(tmp_path_factory.mktemp("edge"), origins)
    try:
        yield proxy, origins
    finally:
        proxy.stop()
        origins.stop_all()


def test_addon_announces_itself(edge):
    proxy, _ = edge
    assert "edgerules active: policy aybiza" in proxy.output()


@pytest.mark.parametrize(
    ("country", "region"),
    [("US", "us-east-1"), ("GB", "eu-west-1"), ("JP", "us-west-2"), ("NO", "eu-west-1")],
)
def test_routing_per_country(edge, country, region):
    proxy, _ = edge
    response = http("GET", f"{proxy.url}/api/v1/calls/1", {"CF-IPCountry": country, **bearer()})
    assert response.status == 200, response.body
    echo = response.json()
    assert echo["region"] == region
    seen = {k.lower(): v for k, v in echo["headers"].items()}
    assert seen["x-cf-target-region"] == region
    assert seen["x-cf-routing-priority"] == "primary"
    assert response.headers["X-CF-Processed-Region"] == region
    assert response.headers["X-Frame-Options"] == "DENY"


def test_identity_headers_reach_origin_and_spoofed_ones_do_not(edge):
    proxy, _ = edge
    response = http(
        "GET",
        f"{proxy.url}/api/v1/calls/2",
        [("CF-IPCountry", "US"), ("X-User-ID", "root"), ("x_user_role", "god"), *bearer("alice").items()],
    )
    assert response.status == 200
    seen = {k.lower(): v for k, v in response.json()["headers"].items()}
    assert seen["x-user-id"] == "alice"
    assert seen["x-user-role"] == "admin"
    assert "x_user_role" not in seen


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/admin", {}, 400),
        ("GET", "/api/v1/agents/../../admin", {}, 400),
        ("GET", "/api/v1/agents/%2e%2e/%2e%2e/admin", {}, 400),
        ("GET", "/health%0a", {}, 400),
        ("GET", "/api/v1/agents%2f..%2fadmin", {}, 400),
        ("TRACE", "/api/v1/agents", {}, 405),
        ("POST", "/api/v1/calls", {"Content-Type": "text/plain"}, 415),
        ("POST", "/api/v1/calls", {"Content-Type": "application/json", "X-Body": "11MiB"}, 413),
        ("GET", "/api/v1/agents/1", {"Authorization": "Bearer nope"}, 401),
        ("GET", "/api/v1/agents/1", {}, 401),
    ],
)
def test_invalid_requests_never_reach_an_origin(edge, method, path, headers, status):
    proxy, origins = edge
    before = {name: routed_requests(origin) for name, origin in origins.items()}
    all_headers = {**(bearer() if "Authorization" not in headers and status != 401 else {}), **headers}
    body = b"x" * 10 if method == "POST" else None
    if all_headers.pop("X-Body", None):
        body = b"x" * (11 << 20)  # over the policy's 10MiB: refused after mitmproxy read it, never forwarded
    response = http(method, f"{proxy.url}{path}", all_headers, body=body)
    assert response.status == status
    assert "error" in json.loads(response.body)
    assert response.headers["Content-Type"] == "application/json"
    after = {name: routed_requests(origin) for name, origin in origins.items()}
    assert after == before


def test_encoded_origin_bodies_pass_byte_for_byte(edge):
    proxy, _ = edge
    response = http(
        "GET",
        f"{proxy.url}/api/v1/calls/enc",
        {
            "CF-IPCountry": "US",
            "X-Test-Response-Headers": json.dumps({"Content-Encoding": "gzip"}),
            **bearer(),
        },
    )
    assert response.status == 200
    assert response.headers["Content-Encoding"] == "gzip"
    assert json.loads(response.body)["path"] == "/api/v1/calls/enc"  # not compressed a second time


def test_preflight_is_answered_at_the_edge(edge):
    proxy, origins = edge
    before = sum(routed_requests(o) for o in origins.values())
    response = http(
        "OPTIONS",
        f"{proxy.url}/voice/session",
        {
            "Origin": "https://app.aybiza.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.aybiza.com"
    assert "Origin" in response.headers["Vary"]
    after = sum(routed_requests(o) for o in origins.values())
    assert after == before


def test_health_is_cached_second_time(edge):
    proxy, _ = edge
    first = http("GET", f"{proxy.url}/health?probe=cache")
    # the entry is stored in the background once the first answer is out: a request right after may
    # still miss it, one a moment later is a HIT
    second = poll_until(
        lambda: http("GET", f"{proxy.url}/health?probe=cache"),
        lambda r: r.headers.get("CF-Cache-Status") == "HIT",
        timeout=5,
    )
    assert first.status == second.status == 200
    assert first.headers["CF-Cache-Status"] in ("MISS", "EXPIRED")
    assert second.headers["CF-Cache-Status"] == "HIT"


def test_admin_status_reports_regions(edge):
    proxy, _ = edge
    status = http("GET", f"{proxy.url}/__edgerules/status").json()
    assert status["policy"]["name"] == "aybiza"
    assert set(status["regions"]) == set(REGIONS)


def test_killed_origin_fails_over_then_returns(tmp_path):
    origins = start_origins(list(REGIONS))
    proxy = start_edge(tmp_path, origins)
    try:
        url = f"{proxy.url}/api/v1/calls/9"
        headers = {"CF-IPCountry": "US", **bearer()}
        assert http("GET", url, headers).json()["region"] == "us-east-1"
        origins["us-east-1"].kill()
        statuses = [http("GET", url, headers) for _ in range(5)]
        assert [r.status for r in statuses] == [200] * 5
        assert {r.json()["region"] for r in statuses} == {"us-west-2"}
        assert statuses[0].headers.get("X-CF-Processed-Region") == "us-west-2"
        origins["us-east-1"].restart()
        deadline = time.monotonic() + 10
        region = None
        while time.monotonic() < deadline:
            region = http("GET", url, headers).json()["region"]
            if region == "us-east-1":
                break
            time.sleep(0.3)
        assert region == "us-east-1"
    finally:
        proxy.stop()
        origins.stop_all()


def test_all_regions_down_is_503_with_retry_after(tmp_path):
    origins = start_origins(list(REGIONS))
    proxy = start_edge(tmp_path, origins)
    try:
        for origin in origins.values():
            origin.kill()
        response = http("GET", f"{proxy.url}/api/v1/calls/1", {"CF-IPCountry": "US", **bearer()})
        assert response.status == 503
        assert response.headers["Retry-After"] == "30"
        assert response.json()["error"] == "Service temporarily unavailable"
        assert "<html" not in response.body.decode().lower()
    finally:
        proxy.stop()
        origins.stop_all()


def test_slow_origin_gets_504_while_others_stay_fast(tmp_path):
    origins = start_origins(list(REGIONS))
    proxy = start_edge(tmp_path, origins, {"routing": {"timeout": "1s"}})
    try:
        slow_result = {}

        def slow():
            slow_result["r"] = http(
                "GET",
                f"{proxy.url}/api/v1/calls/slow",
                {"CF-IPCountry": "US", "X-Test-Delay": "5", **bearer()},
                timeout=15,
            )
            slow_result["done"] = time.monotonic()

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.1)
        fast = http("GET", f"{proxy.url}/api/v1/calls/fast", {"CF-IPCountry": "GB", **bearer()})
        fast_done = time.monotonic()
        thread.join(20)
        assert fast.status == 200
        assert slow_result["r"].status == 504
        assert slow_result["r"].json()["error"] == "Request timeout"
        assert fast_done < slow_result["done"]  # the event loop never stalled behind the slow origin
    finally:
        proxy.stop()
        origins.stop_all()


def test_invalid_policy_makes_mitmdump_exit_with_file_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nname: x\nregions:\n  a: {upstream: http://127.0.0.1:1}\nrouting:\n  default: [b]\n"
    )
    with pytest.raises(ProcessError) as info:
        start_mitmdump(options={"edgerules_policy": str(bad)}, env=ENV, ready_timeout=20)
    assert "bad.yaml:6" in str(info.value)

"""`edgerules explain`: one request through the shipped policy, offline, with the rule trace."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import jwt
import pytest

from edgerules.tools.cli import main

SEED = str(Path(__file__).resolve().parents[3] / "rules" / "aybiza.yaml")
SECRET = "explain-secret-that-is-long-enough-for-hs256!!"


@pytest.fixture(autouse=True)
def _no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JWT_SECRET", raising=False)


def explain(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["explain", *argv, "--policy", SEED, "--env", "local"], out=out)
    return code, out.getvalue()


def test_country_routes_and_trace_has_file_and_line() -> None:
    code, out = explain("GET", "/health", "--country", "GB")
    assert code == 0
    assert "decision: forward to eu-west-1 (primary)" in out
    assert "X-CF-Target-Region: eu-west-1" in out
    assert re.search(r"routing\s+primary\s+eu-west-1.*\(.*aybiza\.yaml:\d+\)", out), out
    assert re.search(r"auth\s+matched\s+public\s+\(.*aybiza\.yaml:\d+\)", out), out
    assert "X-Frame-Options: DENY" in out  # response headers for the assumed 200 JSON answer


def test_down_regions_fail_over_and_all_down_is_degraded() -> None:
    code, out = explain("GET", "/health", "--country", "GB", "--down", "eu-west-1")
    assert code == 0 and "forward to us-east-1 (secondary)" in out
    code, out = explain(
        "GET",
        "/health",
        "--down",
        "us-east-1",
        "--down",
        "us-west-2",
        "--down",
        "eu-west-1",
        "--format",
        "json",
    )
    doc = json.loads(out)
    assert doc["decision"]["priority"] == "fallback" and doc["decision"]["degraded"] is True
    assert ["X-Edge-Degraded", "true"] in doc["decision"]["request_headers_set"]


def test_answered_request_shows_status_body_and_refusing_rule() -> None:
    code, out = explain("GET", "/api/v1/agents/../../admin")
    assert code == 0
    assert "decision: answered by the edge: 400 (path_not_allowed)" in out
    assert '"error": "Invalid API path"' in out
    assert re.search(r"validation\s+refused\s+path_not_allowed", out)


def test_json_format_and_spoofed_headers_are_removed() -> None:
    code, out = explain(
        "GET", "/health", "-H", "X-User-ID: admin", "-H", "User-Agent: Twilio/1", "--format", "json"
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["decision"]["outcome"] == "forward"
    assert "x-user-id" in doc["decision"]["request_headers_removed"]
    assert doc["context"]["request_priority"] == "high"
    assert any(e["phase"] == "strip" for e in doc["trace"])
    assert all(set(e) == {"phase", "rule", "outcome", "detail", "source"} for e in doc["trace"])


def test_jwt_is_verified_when_the_secret_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_SECRET", SECRET)
    token = jwt.encode(
        {"sub": "u9", "role": "admin", "permissions": [], "exp": int(time.time()) + 600},
        SECRET,
        algorithm="HS256",
    )
    code, out = explain("GET", "/api/v1/agents/1", "-H", f"Authorization: Bearer {token}", "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["context"]["auth"] == "jwt"
    assert ["X-User-ID", "u9"] in doc["decision"]["request_headers_set"]
    code, out = explain("GET", "/api/v1/agents/1")
    assert "401" in out


def test_usage_errors() -> None:
    code, out = explain("GET", "/health", "-H", "no-colon")
    assert code == 2 and "bad header" in out
    code, out = explain("GET", "/health", "--down", "mars-1")
    assert code == 2 and "unknown region mars-1" in out


def test_explain_simulates_what_each_region_does() -> None:
    """Failover, 503, 504, stale-if-error and a 304 revalidation, through the live edge's step function."""
    code, out = explain("GET", "/health", "--origin", "us-east-1=connect_error", "--format", "json")
    doc = json.loads(out)
    assert code == 0 and [t["region"] for t in doc["tries"]] == ["us-east-1", "us-west-2"]
    assert doc["origin_request"]["region"] == "us-west-2"
    assert ["X-CF-Target-Region", "us-west-2"] in doc["origin_request"]["headers"]
    assert doc["client_response"]["status"] == 200 and doc["client_response"]["from"] == "origin"
    code, out = explain("GET", "/health", "--origin", "*=connect_error", "--format", "json")
    doc = json.loads(out)
    assert doc["client_response"]["status"] == 503 and doc["context"]["error"] == "all_regions_down"
    assert json.loads(doc["client_response"]["body"])["reason"] == "connect"
    code, out = explain("GET", "/health", "--origin", "us-east-1=timeout")
    assert code == 0 and "tried us-east-1: the origin answered timeout" in out and "504" in out
    code, out = explain(
        "GET",
        "/health",
        "--cached",
        "90s",
        "--origin-header",
        'ETag: "h1"',
        "--origin",
        "*=304",
        "--format",
        "json",
    )
    doc = json.loads(out)
    assert doc["context"]["cache"] == "REVALIDATED" and doc["client_response"]["status"] == 200
    assert ["If-None-Match", '"h1"'] in doc["origin_request"]["headers"]
    code, out = explain("GET", "/health", "--origin", "nowhere=200")
    assert code == 2 and "bad --origin" in out

"""The engine on the shipped policy, without a proxy: routing, failover, validation, CORS, auth, headers."""

from __future__ import annotations

import asyncio
import json

import pytest

from edgerules.engine.core import response_headers
from edgerules.engine.values import Answer, EdgeResponse, Forward, HeaderView
from tests.engine_support import bearer, decide, make_state, request, seed_policy, token


def forward_of(decision) -> Forward:
    assert isinstance(decision.outcome, Forward), decision.trace_text()
    return decision.outcome


def answer_of(decision) -> Answer:
    assert isinstance(decision.outcome, Answer), decision.trace_text()
    return decision.outcome


def headers_of(forward: Forward, index: int = 0) -> dict[str, str]:
    return {k.lower(): v for k, v in (*forward.set_headers, *forward.targets[index].headers)}


# ------------------------------------------------------------------------------------------- the seed's own tests


def test_us_client_goes_to_us_east_1():
    decision = decide(request(headers={"CF-IPCountry": "US", **bearer()}))
    forward = forward_of(decision)
    assert forward.targets[0].region == "us-east-1"
    assert headers_of(forward)["x-cf-target-region"] == "us-east-1"
    assert headers_of(forward)["x-cf-routing-priority"] == "primary"


def test_us_client_fails_over_to_us_west_2_as_secondary():
    state = make_state()
    state.health.force("us-east-1", False)
    forward = forward_of(decide(request(headers={"CF-IPCountry": "US", **bearer()}), state))
    assert forward.targets[0].region == "us-west-2"
    assert headers_of(forward)["x-cf-routing-priority"] == "secondary"


@pytest.mark.parametrize(
    ("country", "region"),
    [
        ("GB", "eu-west-1"),
        ("DE", "eu-west-1"),
        ("NO", "eu-west-1"),
        ("JP", "us-west-2"),
        ("MX", "us-west-2"),
        ("CA", "us-east-1"),
        ("BR", "us-east-1"),
    ],
)
def test_country_map(country, region):
    forward = forward_of(decide(request(headers={"CF-IPCountry": country, **bearer()})))
    assert forward.targets[0].region == region


def test_country_header_from_untrusted_peer_is_ignored():
    decision = decide(request(headers={"CF-IPCountry": "GB", **bearer()}, client_ip="203.0.113.9"))
    assert decision.context.country == "XX"
    assert forward_of(decision).targets[0].region == "us-east-1"


def test_garbage_country_picks_only_policy_regions():
    decision = decide(request(headers={"CF-IPCountry": "evil.example.com", **bearer()}))
    assert forward_of(decision).targets[0].host == "127.0.0.1"


def test_all_unhealthy_falls_back_to_primary_marked_degraded():
    state = make_state()
    for region in ("us-east-1", "us-west-2", "eu-west-1"):
        state.health.force(region, False)
    forward = forward_of(decide(request(headers={"CF-IPCountry": "GB", **bearer()}), state))
    assert forward.targets[0].region == "eu-west-1"
    headers = headers_of(forward)
    assert headers["x-cf-routing-priority"] == "fallback"
    assert headers["x-edge-degraded"] == "true"


def test_latency_target_from_great_circle_distance():
    # Dallas -> Virginia is about 1,900 km: 19 + 30 = 49, clamped to 50. London -> Ireland ~460 km -> 50 too;
    # Sydney -> Oregon ~12,300 km -> 153.
    sydney = {"CF-IPCountry": "AU", "CF-IPLatitude": "-33.87", "CF-IPLongitude": "151.21", **bearer()}
    assert headers_of(forward_of(decide(request(headers=sydney))))["x-cf-latency-target"] == "153"
    unknown = {"CF-IPCountry": "AU", **bearer()}
    assert headers_of(forward_of(decide(request(headers=unknown))))["x-cf-latency-target"] == "100"


def test_request_classes_and_priority_headers():
    cases = [
        ("/voice/stream/abc", "audio-stream", "high"),
        ("/api/v1/agents/1", "agent-config", "normal"),
        ("/api/v1/calls/1", "call-management", "high"),
        ("/webhooks/twilio", "webhook", "normal"),
        ("/api/v1/analytics", "api-call", "normal"),
    ]
    for path, klass, priority in cases:
        decision = decide(request(path=path, headers=bearer()))
        assert decision.context.request_class == klass, path
        assert decision.context.priority == priority, path
    twilio = decide(request(path="/webhooks/x", headers={"User-Agent": "TwilioProxy/1.1", **bearer()}))
    assert twilio.context.priority == "high"


def test_accept_encoding_only_for_non_audio():
    plain = headers_of(
        forward_of(decide(request("POST", "/api/v1/calls", {"Content-Type": "application/json", **bearer()})))
    )
    audio = headers_of(
        forward_of(decide(request("POST", "/voice/upload", {"Content-Type": "audio/wav", **bearer()})))
    )
    assert plain["accept-encoding"] == "gzip, br"
    assert "accept-encoding" not in audio


# --------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "path",
    [
        "/admin",
        "/api/v1/agents/../../admin",
        "/api/v1/agents/%2e%2e/%2e%2e/admin",
        "/api/v1/agents%2f..%2f..%2fadmin",
        "/health\n",
        "/health%0a",
        "/health%00",
        "/api/v1/agentsX",
        "/api\\v1\\agents",
        "/../health",
    ],
)
def test_paths_outside_the_allowlist_never_pass(path):
    decision = decide(request(path=path, headers=bearer()))
    answer = answer_of(decision)
    assert answer.status == 400
    assert "error" in json.loads(answer.body)


def test_dot_segments_inside_the_allowlist_are_normalised():
    decision = decide(request(path="/api/v1/agents/x/../1", headers=bearer()))
    assert forward_of(decision).targets[0].path == "/api/v1/agents/1"


def test_method_not_allowed_has_allow_header():
    answer = answer_of(decide(request("TRACE", "/api/v1/agents", bearer())))
    assert answer.status == 405
    assert ("Allow", "DELETE, GET, OPTIONS, PATCH, POST, PUT") in answer.headers


def test_content_type_rules_compare_media_types():
    required = answer_of(decide(request("POST", "/api/v1/calls", bearer())))
    assert required.status == 400
    wrong = answer_of(decide(request("POST", "/api/v1/calls", {"Content-Type": "text/plain", **bearer()})))
    assert wrong.status == 415
    sneaky = answer_of(
        decide(request("POST", "/api/v1/calls", {"Content-Type": "text/x-application/json", **bearer()}))
    )
    assert sneaky.status == 415
    ok = decide(
        request("POST", "/api/v1/calls", {"Content-Type": "Application/JSON; charset=utf-8", **bearer()})
    )
    forward_of(ok)


def test_declared_body_size_limit():
    too_big = request(
        "POST",
        "/api/v1/calls",
        {"Content-Type": "application/json", "Content-Length": str(11 << 20), **bearer()},
    )
    assert answer_of(decide(too_big)).status == 413
    conflicting = request(
        "POST",
        "/api/v1/calls",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", "5"),
            ("Content-Length", "7"),
            *bearer().items(),
        ],
    )
    assert answer_of(decide(conflicting)).status == 400


# --------------------------------------------------------------------------------------------------------- CORS


def test_preflight_is_answered_without_credentials():
    decision = decide(
        request(
            "OPTIONS",
            "/voice/session",
            {"Origin": "https://app.aybiza.com", "Access-Control-Request-Method": "POST"},
        )
    )
    answer = answer_of(decision)
    assert answer.status == 204
    headers = dict(answer.headers)
    assert headers["Access-Control-Allow-Origin"] == "https://app.aybiza.com"
    assert headers["Vary"] == "Origin"


def test_preflight_from_unknown_origin_is_refused():
    answer = answer_of(
        decide(
            request(
                "OPTIONS",
                "/voice/session",
                {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
            )
        )
    )
    assert answer.status == 403
    assert "Access-Control-Allow-Origin" not in dict(answer.headers)


def test_actual_response_gets_cors_only_for_allowed_origins():
    policy = seed_policy()
    for origin, expected in (
        ("https://app.aybiza.com", "https://app.aybiza.com"),
        ("https://evil.example", None),
    ):
        decision = decide(request(path="/api/v1/calls/1", headers={"Origin": origin, **bearer()}))
        edits = response_headers(
            decision, policy, EdgeResponse(200, HeaderView([("Content-Type", "application/json")])), now=0
        )
        got = dict(edits.set)
        assert got.get("Access-Control-Allow-Origin") == expected
        assert got["Vary"] == "Origin"


def test_security_and_cache_control_headers_on_responses():
    policy = seed_policy()
    decision = decide(request(path="/api/v1/calls/1", headers=bearer()))
    edits = response_headers(
        decision, policy, EdgeResponse(200, HeaderView([("Content-Type", "audio/mpeg")])), now=0
    )
    got = dict(edits.set)
    assert got["X-Frame-Options"] == "DENY"
    assert got["X-Content-Type-Options"] == "nosniff"
    assert got["Cache-Control"] == "no-cache, no-store, must-revalidate"
    error = decide(request(path="/nope"))
    edits = response_headers(
        error, policy, EdgeResponse(400, HeaderView([("Content-Type", "application/json")])), now=0
    )
    assert dict(edits.set)["X-Frame-Options"] == "DENY"


# --------------------------------------------------------------------------------------------------------- auth


def test_missing_and_bad_credentials_get_401_with_challenge():
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": f"Bearer {token(exp=1)}"},
    ):
        answer = answer_of(decide(request(headers=headers)))
        assert answer.status == 401, headers
        assert any(name == "WWW-Authenticate" for name, _ in answer.headers)


def test_identity_headers_are_set_and_spoofed_ones_removed():
    spoofed = {"X-User-ID": "root", "x_user_role": "admin", "X-USER-PERMISSIONS": '["*"]', **bearer()}
    forward = forward_of(decide(request(headers=spoofed)))
    set_headers = dict(forward.set_headers)
    assert set_headers["X-User-ID"] == "user-1"
    assert set_headers["X-User-Role"] == "admin"
    assert json.loads(set_headers["X-User-Permissions"]) == ["agents:read"]
    assert {"x-user-id", "x_user_role", "x-user-permissions"} <= set(forward.remove_headers)


def test_public_health_needs_no_credentials_and_spoofed_identity_is_still_stripped():
    forward = forward_of(decide(request(path="/health", headers={"X-User-ID": "root"})))
    assert "x-user-id" in forward.remove_headers
    assert "X-User-ID" not in dict(forward.set_headers)


def test_api_key_auth_and_rate_limit_429():
    state = make_state()

    async def scenario():
        from edgerules.engine.core import decide_request

        key, _record = await state.keys.add(
            user="svc", role="service", permissions=("calls:write",), rate_limit=(3, 3600.0)
        )
        statuses = []
        for _ in range(5):
            decision = await decide_request(
                request(headers={"Authorization": f"API-Key {key}"}), seed_policy(), state
            )
            statuses.append(decision.outcome.status if isinstance(decision.outcome, Answer) else 200)
        return statuses, decision

    statuses, last = asyncio.run(scenario())
    assert statuses == [200, 200, 200, 429, 429]
    headers = dict(last.outcome.headers)
    assert int(headers["Retry-After"]) >= 1
    assert headers["RateLimit-Remaining"] == "0"


def test_trace_names_policy_lines():
    decision = decide(request(path="/admin"))
    assert any(
        entry.source.startswith(str(seed_policy().files[0]).split("/")[-1]) or "aybiza.yaml" in entry.source
        for entry in decision.trace
    )

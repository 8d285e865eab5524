"""Trust and hygiene in the engine (issue 17): request-targets, Host, method overrides, 401 reasons."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import types

import pytest

from edgerules.cache.response import ResponseCache
from edgerules.edge.admin import admin_allowed
from edgerules.engine.values import Answer, Forward, HeaderView
from edgerules.paths import PathError, check_query, normalise_path
from edgerules.policy.load import load_policy_file
from edgerules.policy.loader import load_yaml_file
from edgerules.policy.model import Admin
from edgerules.stores.memory import MemoryStore
from tests.engine_support import ENVIRON as ENVIRONMENT
from tests.engine_support import SEED_POLICY, bearer, decide, request, seed_policy, token


def check_mode_policy():
    policy = seed_policy()
    return dataclasses.replace(
        policy, validation=dataclasses.replace(policy.validation, method_override="check")
    )


@pytest.mark.parametrize("path", ["/voice/..#", "/a#b", "/a/[b]", "/a/b]"])
def test_fragment_and_gen_delims_are_not_a_path(path):
    with pytest.raises(PathError):
        normalise_path(path)


@pytest.mark.parametrize("query", ["a=1#x", "a=<b>", "a=%zz", "a=%4", "a b", "a=é", "a[b]=1", "a={x}"])
def test_query_characters_a_request_target_may_not_hold(query):
    with pytest.raises(PathError):
        check_query(query)


@pytest.mark.parametrize("query", ["", "a=1&b=%20x", "q=a/b?c:d@e!$&'()*+,;=", "x=~_-."])
def test_query_characters_a_request_target_may_hold(query):
    check_query(query)


def test_fragment_in_the_query_is_400():
    decision = decide(request("GET", "/health", query="x#/../admin"))
    assert isinstance(decision.outcome, Answer) and decision.outcome.status == 400


def test_two_host_headers_are_400():
    decision = decide(request("GET", "/health", [("Host", "a"), ("Host", "b")]))
    assert isinstance(decision.outcome, Answer)
    assert decision.outcome.status == 400 and b"duplicate_host" in decision.outcome.body


def test_method_overrides_are_stripped_by_default():
    headers = [("X-HTTP-Method-Override", "DELETE"), ("x-method-override", "PUT"), *bearer().items()]
    decision = decide(request("GET", "/api/v1/calls/1", headers, query="_method=DELETE&a=1&%5Fmethod=X"))
    forward = decision.outcome
    assert isinstance(forward, Forward)
    assert {"x-http-method-override", "x-method-override"} <= set(forward.remove_headers)
    assert forward.path_and_query == "/api/v1/calls/1?a=1"


def test_checked_method_overrides_must_name_an_allowed_method():
    policy = check_mode_policy()
    ok = decide(
        request(
            "POST",
            "/api/v1/calls/1",
            [("X-HTTP-Method", "delete"), ("Content-Type", "application/json"), *bearer().items()],
        ),
        policy=policy,
    )
    assert isinstance(ok.outcome, Forward)
    assert "x-http-method" not in ok.outcome.remove_headers
    refused = decide(request("GET", "/api/v1/calls/1", [("X-HTTP-Method", "TRACE")]), policy=policy)
    assert isinstance(refused.outcome, Answer) and refused.outcome.status == 405
    refused = decide(request("GET", "/api/v1/calls/1", query="_method=CONNECT"), policy=policy)
    assert isinstance(refused.outcome, Answer) and refused.outcome.status == 405
    conflicting = [("X-HTTP-Method", "PUT"), ("X-Method-Override", "DELETE")]
    refused = decide(request("GET", "/api/v1/calls/1", conflicting), policy=policy)
    assert isinstance(refused.outcome, Answer) and refused.outcome.status == 400


@pytest.mark.parametrize(
    ("authorization", "client", "precise"),
    [
        (None, "missing", "missing"),
        ("Bearer " + "x" * 20, "invalid_token", "malformed"),
        ("Bearer " + token(exp=1), "invalid_token", "expired"),
        (
            "Bearer " + token(secret="another-secret-another-secret-another!!"),
            "invalid_token",
            "bad_signature",
        ),
        ("API-Key " + "k" * 40, "invalid_api_key", "unknown_key"),
        ("Basic YWxpY2U6c2VjcmV0", "invalid_credentials", "scheme_not_allowed"),
        ("Bearer", "invalid_credentials", "malformed_authorization"),
    ],
)
def test_401_carries_a_generic_reason_and_the_trace_the_precise_one(authorization, client, precise):
    headers = {"Authorization": authorization} if authorization else {}
    decision = decide(request("GET", "/api/v1/calls/1", headers))
    answer = decision.outcome
    assert isinstance(answer, Answer) and answer.status == 401
    assert answer.body == b'{"error":"Authentication required","reason":"%s"}' % client.encode()
    assert decision.context.auth_outcome == f"failed:{precise}"
    assert any(e.phase == "auth" and e.detail == precise for e in decision.trace)


# -- item 1: admin trust -----------------------------------------------------------------------------------

ADMIN_ENVIRON = {**ENVIRONMENT, "EDGERULES_ADMIN_TOKEN": "t" * 32}


def admin_warnings(path, env):
    result = load_policy_file(path, env, environ=ADMIN_ENVIRON, for_serving=True)
    return [str(w) for w in result.warnings if "admin" in str(w)]


@pytest.mark.parametrize("env", ["production", "staging", "local", None])
def test_shipped_environments_validate_without_an_admin_warning(env):
    assert admin_warnings(SEED_POLICY, env) == []


def test_shipped_policy_trusts_loopback_for_admin_only_in_local():
    for env in ("production", "staging", None):
        policy = load_policy_file(SEED_POLICY, env, environ=ADMIN_ENVIRON, for_serving=True).policy
        assert policy.admin.allow_cidrs == () and policy.admin.token == "t" * 32
    local = load_policy_file(SEED_POLICY, "local", environ=ADMIN_ENVIRON).policy
    assert any(ipaddress.ip_address("127.0.0.1") in net for net in local.admin.allow_cidrs)


@pytest.mark.parametrize(
    ("admin", "warned"),
    [
        (None, True),  # the default is loopback
        ({"allow_cidrs": ["127.0.0.1/32"]}, True),
        ({"allow_cidrs": ["::1/128"]}, True),
        ({"allow_cidrs": ["0.0.0.0/0"]}, True),
        ({"allow_cidrs": ["10.0.0.0/8"]}, False),
        ({"allow_cidrs": []}, False),
    ],
)
def test_validator_warns_when_a_non_local_environment_trusts_loopback(tmp_path, admin, warned):
    data = load_yaml_file(SEED_POLICY).data
    data.pop("admin")
    data["environments"]["edge"] = (
        {"admin": admin} if admin is not None else {"geo": {"default_country": "XX"}}
    )
    path = tmp_path / "policy.yaml"
    path.write_text(json.dumps(data))
    found = admin_warnings(path, "edge")
    assert bool(found) is warned, found
    if warned:
        assert "loopback" in found[0]


def test_purge_by_key_refuses_anything_but_a_cache_key():
    async def go():
        store = MemoryStore()
        cache = ResponseCache(store)
        await store.set("aybiza:ratelimit:x", b"1", 60)
        for key in (
            "aybiza:ratelimit:x",
            "ratelimit:x",
            "cache:",
            "cache:" + "g" * 64,
            "cache:" + "0" * 64 + ":v:1",
        ):
            with pytest.raises(ValueError):
                await cache.purge(key=key)
        assert await store.get("aybiza:ratelimit:x") == b"1"
        assert await cache.purge(key="cache:" + "0" * 64) == 0

    asyncio.run(go())


def test_admin_token_is_compared_as_digests():
    policy = dataclasses.replace(seed_policy(), admin=Admin(token="s" * 40, allow_cidrs=()))
    runtime = types.SimpleNamespace(policy=policy)
    ok = HeaderView([("Authorization", "Bearer " + "s" * 40)])
    assert admin_allowed(runtime, "203.0.113.9", ok)
    for sent in ("Bearer " + "s" * 39, "Bearer " + "s" * 41, "Basic " + "s" * 40, ""):
        assert not admin_allowed(runtime, "127.0.0.1", HeaderView([("Authorization", sent)]))


# -- item 2: forwarding headers ----------------------------------------------------------------------------


def forwarded_headers(decision) -> tuple[dict[str, str], tuple[str, ...]]:
    forward = decision.outcome
    assert isinstance(forward, Forward), decision.trace_text()
    return {n.lower(): v for n, v in forward.set_headers}, forward.remove_headers


def test_untrusted_client_copies_are_stripped_and_the_edge_sets_its_own():
    spoofed = [
        ("X-Forwarded-Host", "evil"),
        ("X-Original-URL", "/x"),
        ("Forwarded", "for=1.2.3.4"),
        ("Host", "api.a"),
    ]
    decision = decide(
        request("GET", "/api/v1/calls/1", [*spoofed, *bearer().items()], client_ip="203.0.113.7")
    )
    sets, removed = forwarded_headers(decision)
    assert {"x-forwarded-host", "x-original-url", "forwarded"} <= set(removed)
    assert sets["x-forwarded-for"] == "203.0.113.7" and sets["x-forwarded-host"] == "api.a"
    assert sets["forwarded"] == "for=203.0.113.7;host=api.a;proto=http"


def test_a_trusted_proxy_keeps_its_headers_and_the_edge_appends():
    sent = [
        ("X-Forwarded-For", "198.51.100.1"),
        ("Forwarded", "for=198.51.100.1"),
        ("X-Forwarded-Host", "a.b"),
    ]
    decision = decide(request("GET", "/api/v1/calls/1", [*sent, *bearer().items()], client_ip="::1"))
    sets, removed = forwarded_headers(decision)  # `local` trusts loopback
    assert "x-forwarded-host" not in removed
    assert sets["x-forwarded-for"] == "198.51.100.1, ::1" and sets["x-forwarded-host"] == "a.b"
    assert sets["forwarded"] == 'for=198.51.100.1, for="[::1]";host=api.aybiza.test;proto=http'


def test_strip_untrusted_is_a_policy_list():
    policy = seed_policy()
    routing = policy.routing
    headers = dataclasses.replace(routing.headers, strip_untrusted=("x-custom-origin",), forwarded=False)
    policy = dataclasses.replace(policy, routing=dataclasses.replace(routing, headers=headers))
    sent = [("X-Custom-Origin", "x"), ("X-Forwarded-Host", "y"), *bearer().items()]
    sets, removed = forwarded_headers(
        decide(request("GET", "/api/v1/calls/1", sent, client_ip="203.0.113.7"), policy=policy)
    )
    assert "x-custom-origin" in removed and "x-forwarded-host" not in removed
    assert "x-forwarded-for" not in sets


def test_vary_is_judged_on_the_headers_the_origin_got():
    sent = [("X-Forwarded-Host", "evil"), ("Accept-Encoding", "identity"), *bearer().items()]
    decision = decide(request("GET", "/api/v1/agents/1", sent, client_ip="203.0.113.7"))
    view = decision.context.cache_request_headers
    assert view.get("x-forwarded-host") == "api.aybiza.test"
    assert view.get("x-forwarded-for") == "203.0.113.7"
    assert view.get("accept-encoding") == "gzip, br"  # the policy's request rule, as the origin saw it


# -- item 4: CORS ------------------------------------------------------------------------------------------


def test_response_cors_headers_are_the_edges_on_a_cors_path_and_wildcard_credentials_go_elsewhere():
    from edgerules.engine.core import response_headers
    from edgerules.engine.values import EdgeResponse

    policy = seed_policy()
    origin_says = HeaderView(
        [("Access-Control-Allow-Origin", "https://evil"), ("access-control-allow-credentials", "true")]
    )
    on_path = decide(request("GET", "/api/v1/calls/1", {"Origin": "https://app.aybiza.com", **bearer()}))
    edits = response_headers(on_path, policy, EdgeResponse(200, origin_says), now=0.0)
    assert {"access-control-allow-origin", "access-control-allow-credentials"} <= set(edits.remove)
    assert ("Access-Control-Allow-Origin", "https://app.aybiza.com") in edits.set
    wildcard = HeaderView(
        [("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Credentials", "true")]
    )
    elsewhere = decide(request("GET", "/api/v1/agents/1", bearer()))
    removed = response_headers(elsewhere, policy, EdgeResponse(200, wildcard), now=0.0).remove
    assert {"access-control-allow-origin", "access-control-allow-credentials"} <= set(removed)
    switched_off = dataclasses.replace(
        policy, headers=dataclasses.replace(policy.headers, strip_wildcard_credentials=False)
    )
    removed = response_headers(elsewhere, switched_off, EdgeResponse(200, wildcard), now=0.0).remove
    assert "access-control-allow-origin" not in removed


# -- item 7: path redaction --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/webhooks/stripe/whsec_3f9aK2LmQx7Vt8Rz1Np4", "/webhooks/stripe/[redacted]"),
        ("/api/v1/agents/3fa85f64-5717-4562-b3fc-2c963f66afa6", "/api/v1/agents/[redacted]"),
        ("/api/v1/agents/agent-42/config", "/api/v1/agents/agent-42/config"),
        ("/api/v1/phone-numbers/international-numbers", "/api/v1/phone-numbers/international-numbers"),
        ("/voice/" + "a" * 40, "/voice/[redacted]"),
    ],
)
def test_access_log_paths_redact_random_looking_segments(path, logged):
    from edgerules.observe.metrics import MetricsConfig, redact_path

    assert redact_path(path, MetricsConfig()) == logged


def test_access_log_paths_redact_policy_patterns_and_the_default_can_be_switched_off():
    from edgerules.observe.metrics import MetricsConfig, redact_path
    from edgerules.paths import compile_regex

    config = MetricsConfig(redact_path_segments=(compile_regex("pin-[0-9]+"),), redact_random_segments=False)
    assert redact_path("/calls/pin-1234/whsec_3f9aK2LmQx7Vt8Rz1Np4", config) == (
        "/calls/[redacted]/whsec_3f9aK2LmQx7Vt8Rz1Np4"
    )


# -- item 8: ejection damping ------------------------------------------------------------------------------


def test_error_statuses_eject_only_beyond_a_ratio_from_several_clients():
    from edgerules.engine.health import HealthRegistry
    from edgerules.policy.model import PassiveHealth

    clock = [100.0]
    health = HealthRegistry(now=lambda: clock[0])
    passive = PassiveHealth()
    for _ in range(20):  # one client's errors never eject
        health.record_answer("r", 503, "203.0.113.1", passive)
    assert health.is_healthy("r")
    for _ in range(30):  # a second client's few errors among many good answers: under the ratio
        health.record_answer("r", 200, "203.0.113.9", passive)
    health.record_answer("r", 503, "203.0.113.2", passive)
    assert health.is_healthy("r")
    clock[0] += passive.window + 1  # the window moves on: old answers are forgotten
    for client in ("203.0.113.1", "203.0.113.2", "203.0.113.1", "203.0.113.2", "203.0.113.3"):
        health.record_answer("r", 502, client, passive)
    assert not health.is_healthy("r")


def test_timeouts_still_eject_after_consecutive_failures():
    from edgerules.engine.health import HealthRegistry
    from edgerules.policy.model import PassiveHealth

    health = HealthRegistry(now=lambda: 0.0)
    for _ in range(PassiveHealth().failures):
        assert health.is_healthy("r")
        health.record_failure("r", "timeout", PassiveHealth())
    assert not health.is_healthy("r")


# -- item 5: closed label sets -----------------------------------------------------------------------------


def test_the_closed_sets_match_the_edges_own_vocabularies():
    from edgerules.cache.response import CacheStatus
    from edgerules.edge.admin import label_sets
    from edgerules.observe.metrics import CACHE_STATES, RequestRecord, outside_label_sets

    assert {str(s) for s in CacheStatus} == CACHE_STATES
    sets = label_sets(seed_policy())
    assert sets.regions == {"us-east-1", "us-west-2", "eu-west-1"}
    assert "api-call" in sets.classes and "audio-stream" in sets.classes
    assert {"auth:expired", "rate_limited:api-key", "upstream_timeout"} <= sets.errors

    def record(**kw):
        base = dict(
            timestamp=0.0, latency_ms=1.0, upstream_ms=None, region=None, cache_status=None, country=None
        )
        base |= dict(request_class=None, status=200, method="GET", path_class=None, error=None)
        return RequestRecord(**(base | kw))

    assert (
        outside_label_sets(record(region="us-east-1", country="SE", error="auth:bad_signature"), sets) is None
    )
    assert outside_label_sets(record(region="x"), sets)
    assert outside_label_sets(record(method="BREW"), sets)
    assert outside_label_sets(record(error="rate_limited:nope"), sets)

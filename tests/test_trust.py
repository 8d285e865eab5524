"""Trust and hygiene in the engine (issue 17): request-targets, Host, method overrides, 401 reasons."""

from __future__ import annotations

import dataclasses

import pytest

from edgerules.engine.values import Answer, Forward
from edgerules.paths import PathError, check_query, normalise_path
from tests.engine_support import bearer, decide, request, seed_policy, token


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

"""The request hot path's shortcuts give the same results as the straightforward code they replace."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import tflow

from edgerules import memo
from edgerules.auth.identity import AuthFailure, Identity, identity_headers
from edgerules.edge.addon import _bytes, _response
from edgerules.edge.flowconv import edge_request
from edgerules.edge.runtime import EdgeRuntime, Exchange
from edgerules.engine import core
from edgerules.engine.headers import HeaderEdits
from edgerules.engine.values import TraceEntry
from edgerules.timefmt import utc_iso_millis
from tests.engine_support import ENVIRON, SEED_POLICY, bearer, decide, make_state, request, seed_policy

NAMES = ["Content-Type", "content-type", "Vary", "X-A", "x-a", "Cache-Control", "Set-Cookie", "X-Café"]


def _sequential(fields, edits):
    """The documented order, one mitmproxy call at a time: pop each removed name, add the absent ones,
    then each set name replaces all of its fields (the last value set wins, at the end)."""
    headers = http.Headers(fields)
    for name in edits.remove:
        headers.pop(name, None)
    for name, value in edits.add:
        if name not in headers and name.lower() not in {n.lower() for n, _ in edits.set}:
            headers.add(name, value)
    final = {}
    for name, value in edits.set:
        final[name.lower()] = (name, value)
    for low in final:
        headers.pop(low, None)
    for name, value in final.values():
        headers.add(name, value)
    return headers.fields


@settings(max_examples=300, deadline=None)
@given(
    fields=st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(["1", "2", "é"])), max_size=6),
    to_add=st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(["a", "é"])), max_size=3),
    to_set=st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(["v", "w", "é"])), max_size=5),
    to_remove=st.lists(st.sampled_from(NAMES), max_size=2),
)
def test_header_edits_on_bytes_equal_the_documented_order_one_by_one(fields, to_add, to_set, to_remove):
    raw = tuple((n.encode(), v.encode()) for n, v in fields)
    edits = HeaderEdits(tuple(n.lower() for n in to_remove), tuple(to_add), tuple(to_set))
    assert tuple(edits.apply(raw, _bytes)) == _sequential(raw, edits)
    as_text = edits.apply([(n.decode(), v.decode()) for n, v in raw])
    assert [(n.encode(), v.encode()) for n, v in as_text] == list(_sequential(raw, edits))


def _made(status, headers, body):
    """What `_response` did before: Response.make, then the raw body and its length."""
    response = http.Response.make(
        status, b"", [(k.encode(), v.encode("latin-1", "replace")) for k, v in headers]
    )
    response.raw_content = body
    if status in (204, 304) or 100 <= status < 200:
        response.headers.pop("content-length", None)
    else:
        response.headers["content-length"] = str(len(body))
    return response


@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [
        (200, [("Content-Type", "application/json")], b"{}"),
        (200, [("Content-Length", "99"), ("X-A", "1"), ("content-length", "5")], b"abc"),
        (304, [("ETag", '"x"'), ("Content-Length", "10")], b""),
        (204, [], b""),
        (200, [("Content-Encoding", "gzip")], b"\x1f\x8b not really gzip"),
        (503, [("Retry-After", "5"), ("X-Note", "é")], b"down"),
        (599, [], b"x"),
    ],
)
def test_response_is_built_like_response_make(status, headers, body):
    new, old = _response(status, headers, body), _made(status, headers, body)
    assert new.headers.fields == old.headers.fields
    assert (new.status_code, new.reason, new.raw_content) == (old.status_code, old.reason, old.raw_content)


@pytest.mark.parametrize(
    "when",
    [
        0.0,
        1e-7,
        0.9999996,
        1.0005,
        1_700_000_000.0,
        1_700_000_000.4999995,
        1_799_999_999.999999,
        253402300799.9,
    ],
)
def test_utc_iso_millis_matches_datetime(when):
    expected = datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert utc_iso_millis(when) == expected


@settings(max_examples=500, deadline=None)
@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_utc_iso_millis_matches_datetime_anywhere(when):
    expected = datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert utc_iso_millis(when) == expected


def test_identity_headers_are_checked_every_time_an_identity_is_unsafe():
    bad = Identity("alice\r\nX-Admin: 1", "agent", (), "jwt", "p")
    for _ in range(2):  # a refused identity is never remembered as checked
        with pytest.raises(AuthFailure):
            identity_headers(bad, now=0.0)
    good = Identity("alice", "agent", ("calls", "agents"), "jwt", "p")
    assert identity_headers(good, now=0.0) == identity_headers(good, now=0.0)
    assert identity_headers(good, now=0.0)[2] == ("X-User-Permissions", '["calls","agents"]')


def test_trace_entries_are_cheap_tuples_with_the_same_fields():
    entry = TraceEntry("auth", "jwt", "accepted", source="rules.yaml:3")
    assert (entry.phase, entry.detail, entry.source) == ("auth", "", "rules.yaml:3")
    assert TraceEntry(**entry.to_json()) == entry
    decision = decide(request("GET", "/api/v1/agents/1", bearer()))
    assert any(e.phase == "auth" and e.outcome == "accepted" for e in decision.trace)


def test_a_state_prepares_each_policy_object_once():
    policy, state = seed_policy(), make_state()
    prepared = state.prepared(policy)
    assert (prepared.policy, prepared.state) == (policy, state)
    assert state.prepared(policy) is prepared
    other = dataclasses.replace(policy, name="other")
    assert state.prepared(other) is not prepared
    assert state.prepared(policy) is prepared  # a few recent policies are kept: the tools alternate two
    assert core.prepare(policy, state) is not prepared  # prepare itself always prepares anew
    assert core.is_stream_class(policy, "audio-stream")
    assert not core.is_stream_class(policy, "api-call")


def test_identity_headers_are_stripped_and_the_memo_stays_bounded(monkeypatch):
    monkeypatch.setattr(memo, "LIMIT", 3)
    state = make_state()
    for n in range(6):
        headers = {"X-User-Id": "mallory", "x_user_role": "admin", f"X-Other-{n}": "1"}
        decision = decide(request("GET", "/health", headers), state)
        assert set(decision.outcome.remove_headers) >= {"x-user-id", "x_user_role"}
        assert f"x-other-{n}" not in decision.outcome.remove_headers
    assert len(state.prepared(seed_policy()).spoofable) <= 3


def test_verifier_memo_is_per_state():
    policy = seed_policy()
    one, two = make_state(), make_state()
    for state in (one, two, one):
        assert (
            decide(request("GET", "/api/v1/agents/1", bearer()), state, policy).context.auth_outcome == "jwt"
        )
    assert one.prepared(policy).verifier is one.verifier(policy.auth.jwt)
    assert two.prepared(policy).verifier is two.verifier(policy.auth.jwt)
    assert one.prepared(policy).verifier is not two.prepared(policy).verifier


def test_pretty_host_is_memoised_per_host_header():
    flow = tflow.tflow()
    flow.request = http.Request.make(
        "GET", "http://127.0.0.1:8080/health", b"", {"Host": "Bücher.example:8080"}
    )
    first = edge_request(flow).host
    assert first == flow.request.pretty_host
    flow.request.headers["Host"] = "other.example"
    assert edge_request(flow).host == "other.example"


def test_finish_reads_a_header_generator_once_for_rules_and_cache(tmp_path):
    """Response rules see the origin's Content-Type even when the headers come as mitmproxy's generator."""
    runtime = EdgeRuntime(str(SEED_POLICY), "local", environ=ENVIRON)
    runtime.load_initial()
    assert runtime.policy is not None
    decision = decide(request("GET", "/api/v1/agents/1", bearer()), policy=runtime.policy)
    exchange = Exchange(runtime.policy, decision, 0.0)
    origin = [("Content-Type", "application/json"), ("Content-Length", "2")]
    edits = runtime.finish(exchange, 200, (pair for pair in origin))
    assert ("Cache-Control", "public, max-age=60, s-maxage=300") in edits.set
    assert exchange.extra["origin_headers"] == origin


def _decide_all(state, policy, reqs):
    async def run():
        return [await core.decide_request(r, policy, state) for r in reqs]

    import asyncio

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("Bearer {t}", 200),
        ("bearer {t}", 200),  # another spelling of the scheme: the full path, same answer
        ("BEARER {t}", 200),
        ("Bearer  {t}", 401),  # two spaces: refused although the token itself is known
        ("Bearer {t} ", 401),
        ("Bearer {t}, Bearer {t}", 401),
        ("API-Key {t}", 401),
    ],
)
def test_known_bearer_shortcut_answers_like_the_full_path(spelling, expected):
    """Once a token is in the verifier's cache the engine skips parsing for `Bearer <token>`: every other
    spelling still goes through parse_authorization and gets the same answer as before it was cached."""
    policy, state = seed_policy(), make_state()
    tok = bearer()["Authorization"].removeprefix("Bearer ")
    first, again, spelled = _decide_all(
        state,
        policy,
        [
            request("GET", "/api/v1/agents/1", {"Authorization": f"Bearer {tok}"}),
            request("GET", "/api/v1/agents/1", {"Authorization": f"Bearer {tok}"}),
            request("GET", "/api/v1/agents/1", {"Authorization": spelling.format(t=tok)}),
        ],
    )
    assert first.context.identity is not None and again.context.identity == first.context.identity
    status = 200 if spelled.context.identity is not None else spelled.outcome.status
    assert status == expected
    cold = _decide_all(
        make_state(), policy, [request("GET", "/api/v1/agents/1", {"Authorization": spelling.format(t=tok)})]
    )[0]
    assert (cold.context.identity is not None) == (spelled.context.identity is not None)


def test_known_bearer_shortcut_respects_expiry_and_duplicates():
    policy, state = seed_policy(), make_state()
    header = bearer()["Authorization"]
    assert _decide_all(state, policy, [request(headers={"Authorization": header})])[0].context.identity
    duplicate = request(headers=[("Authorization", header), ("Authorization", header)])
    assert _decide_all(state, policy, [duplicate])[0].context.auth_outcome == "failed:duplicate_header"
    verifier = state.prepared(policy).verifier
    for key, (identity, _until) in list(verifier._cache.items()):
        verifier._cache[key] = (identity, 0.0)  # the cached verdict ran out
    assert verifier.cached(header.removeprefix("Bearer ")) is None
    later = _decide_all(state, policy, [request(headers={"Authorization": header})])[0]
    assert later.context.identity is not None  # verified again from scratch (the token itself is valid)


def test_first_segment_rejection_matches_the_full_walk():
    from edgerules.paths import PathMatcher, PathPattern, split_path

    matchers = [
        PathMatcher([PathPattern("prefix", "/api/v1/agents"), PathPattern("path", "/health")]),
        PathMatcher([PathPattern("prefix", "/voice/")]),
        PathMatcher([PathPattern("prefix", "/")]),
        PathMatcher([PathPattern("path", "/")]),
        PathMatcher([PathPattern("regex", "(.*/)?health(/.*)?")]),
    ]
    assert matchers[0].first_segments == {"api", "health"}
    assert [m.first_segments for m in matchers[2:]] == [None, None, None]
    paths = [
        "/",
        "/health",
        "/health/",
        "/api",
        "/api/v1/agents/7",
        "/voice",
        "/voice/",
        "/voice/x",
        "/x/health",
    ]
    for matcher in matchers:
        for path in paths:
            segments = split_path(path)
            firsts = matcher.first_segments
            rejected = firsts is not None and (segments[0] if segments else "") not in firsts
            if rejected:
                assert matcher.match(path, segments) is None, (matcher.patterns, path)


def test_forward_targets_carry_the_path_and_query_on_each_region():
    decision = decide(request("GET", "/api/v1/agents/1", bearer(), query="a=1"))
    targets = decision.outcome.targets
    assert targets and all(t.path.endswith("/api/v1/agents/1?a=1") for t in targets)
    assert all(
        r.path + "/api/v1/agents/1?a=1" == t.path
        for r, t in zip(decision.outcome.regions, targets, strict=True)
    )


_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _header_check_field_by_field(pairs, limit):
    """The straightforward check the one-pass version replaces."""
    size = 0
    malformed = None
    for name, value in pairs:
        size += len(name) + len(value) + 4
        if malformed is None and (not _TOKEN_RE.fullmatch(name) or _BAD_VALUE_RE.search(value)):
            malformed = name
    if size > limit:
        return "headers_too_large"
    return "invalid_header" if malformed is not None else None


@settings(max_examples=400, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(
            st.text(alphabet="aZ-_:; \t\x00é", max_size=6),
            st.text(alphabet="ab \t\r\n\x00\x7f\x1féΩ,;=", max_size=12),
        ),
        max_size=5,
    ),
    limit=st.integers(0, 80),
)
def test_header_syntax_check_in_one_pass_equals_field_by_field(pairs, limit):
    policy = seed_policy()
    policy = dataclasses.replace(
        policy, validation=dataclasses.replace(policy.validation, max_header_size=limit)
    )
    run = core._Run(request("GET", "/health", pairs), core.prepare(policy, make_state()))
    refusal = core._check_header_syntax(run)
    got = None if refusal is None else (refusal.context.error, refusal.outcome.status)
    expected = _header_check_field_by_field(pairs, limit)
    if expected is None:
        assert got is None
    elif expected == "headers_too_large":
        assert got is not None and got[1] == 431
    else:
        assert got is not None and got[1] == 400

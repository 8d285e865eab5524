"""One header path: the buffered client, mitmproxy's streams, the response phase, the cache and the offline
tools build header fields with the same two functions (`engine/headers.py`), so they agree."""

from __future__ import annotations

import json

import pytest
from mitmproxy import http as mhttp

from edgerules.cache.http import storable_headers
from edgerules.edge.addon import _bytes
from edgerules.edge.upstream import request_headers
from edgerules.engine.core import response_headers
from edgerules.engine.headers import HOP_BY_HOP, HeaderEdits, end_to_end, forwarded_request_fields
from edgerules.engine.values import EdgeResponse, Forward, HeaderView
from edgerules.policy.load import load_policy_file
from edgerules.tools.policytest import client_response_headers, forwarded_headers
from tests.engine_support import decide, request
from tests.support.origins import start_origins
from tests.support.policies import ENV, write_policy
from tests.support.policies import bearer as e2e_bearer
from tests.support.proxy import http, start_edge_process

FRAMING = {"content-length", "transfer-encoding"}


PORTS = {"us-east-1": 1, "us-west-2": 2, "eu-west-1": 3}
TWO_FOO_RULES = {
    "headers": {
        "request": [
            {"name": "foo-a", "set": {"X-Foo": "a"}},
            {"name": "foo-b", "set": {"x-foo": "b"}},
        ]
    }
}


def _policy(tmp_path, overlay):
    path = write_policy(tmp_path, PORTS, overlay)
    return load_policy_file(path, "e2e", environ=ENV, for_serving=True).policy


def bearer():
    return e2e_bearer()


def _normal(pairs) -> list[tuple[str, str]]:
    out = []
    for name, value in pairs:
        if isinstance(name, bytes):
            name, value = name.decode(), value.decode()
        if name.lower() not in FRAMING:
            out.append((name.lower(), value))
    return sorted(out)


ISSUE_HEADERS = [
    ("Connection", "keep-alive, X-Secret"),
    ("X-Secret", "s3cret"),
    ("Keep-Alive", "timeout=5"),
    ("TE", "trailers"),
    ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
    ("X-Keep", "1"),
    ("Content-Length", "0"),
]


def test_connection_listed_fields_and_two_set_rules_give_one_request_on_every_path(tmp_path):
    """The issue's example: buffered, streamed and `test`/`explain` send the same fields (framing aside)."""
    policy = _policy(tmp_path, TWO_FOO_RULES)
    req = request("GET", "/api/v1/agents/1", [*ISSUE_HEADERS, *bearer().items()])
    decision = decide(req, policy=policy)
    forward = decision.outcome
    assert isinstance(forward, Forward)
    target = forward.targets[0]
    buffered = request_headers(req.headers.pairs, forward.edits, target)
    flow_headers = mhttp.Headers([(n.encode(), v.encode()) for n, v in req.headers.pairs])
    streamed = forwarded_request_fields(
        flow_headers.fields, forward.target_edits(target), framing_kept=True, encode=_bytes
    )
    offline = forwarded_headers(req, decision)
    assert _normal(buffered) == _normal(streamed) == _normal(offline)
    sent = HeaderView(buffered)
    assert sent.get_all("x-foo") == ["b"]  # set twice: the last rule wins, once
    for name in ("connection", "x-secret", "keep-alive", "te", "proxy-authorization"):
        assert name not in sent, name
    assert sent.get("x-keep") == "1"


def test_a_client_cannot_remove_what_the_edge_adds_by_naming_it_in_connection(tmp_path):
    policy = _policy(tmp_path, {})
    named = "X-Forwarded-For, X-Forwarded-Proto, X-User-ID, X-CF-Target-Region, Host, CF-Cache-Control"
    req = request("GET", "/api/v1/agents/1", [("Connection", named), *bearer().items()])
    decision = decide(req, policy=policy)
    sent = HeaderView(forwarded_headers(req, decision))
    assert sent.get("x-forwarded-for") == "127.0.0.1"
    assert sent.get("x-forwarded-proto") == "http"
    assert sent.get("x-user-id") == "user-1"
    assert sent.get("x-cf-target-region") == "us-east-1"
    assert sent.get("cf-cache-control") == "public, max-age=300"
    assert sent.get("host")


def test_the_origin_cannot_pass_connection_listed_fields_to_the_client_or_the_cache(tmp_path):
    policy = _policy(tmp_path, {})
    origin = [
        ("Content-Type", "application/json"),
        ("Connection", "close, X-Private"),
        ("X-Private", "origin-internal"),
        ("Keep-Alive", "timeout=5"),
        ("Upgrade", "h2c"),
        ("ETag", '"v1"'),
    ]
    decision = decide(request("GET", "/api/v1/agents/1", bearer()), policy=policy)
    client = HeaderView(client_response_headers(decision, policy, EdgeResponse(200, HeaderView(origin)), 0.0))
    for name in ("x-private", "connection", "keep-alive", "upgrade"):
        assert name not in client, name
    assert client.get("etag") == '"v1"'
    stored = HeaderView(storable_headers(origin))
    assert "x-private" not in stored and "connection" not in stored


def test_one_hop_by_hop_definition():
    from edgerules.cache import http as httpcache
    from edgerules.edge import upstream

    assert httpcache.HOP_BY_HOP is HOP_BY_HOP
    assert upstream.HOP_BY_HOP is HOP_BY_HOP
    assert end_to_end([("Connection", "a, B"), ("a", "1"), ("b", "2"), ("c", "3")]) == [("c", "3")]


def test_header_edits_order_remove_add_set():
    edits = HeaderEdits(
        remove=("x-a",), add=(("X-A", "added"), ("X-B", "added")), set=(("X-C", "1"), ("x-c", "2"))
    )
    assert edits.apply([("X-A", "client"), ("X-B", "client"), ("X-C", "client")]) == [
        ("X-B", "client"),
        ("X-A", "added"),
        ("x-c", "2"),
    ]


def test_response_rules_see_the_request_method_and_headers(tmp_path):
    """A response rule for POST answers (or one keyed on a request header) fires; before, response rules were
    matched as a GET without headers and such a rule never fired."""
    overlay = {
        "headers": {
            "response": [
                {"name": "posted", "match": {"methods": ["POST"]}, "set": {"X-Posted": "1"}},
                {
                    "name": "twilio",
                    "match": {"header": {"name": "User-Agent", "contains": "Twilio"}},
                    "set": {"X-Twilio": "1"},
                },
            ]
        }
    }
    policy = _policy(tmp_path, overlay)
    origin = EdgeResponse(200, HeaderView([("Content-Type", "application/json")]))
    json_post = [("Content-Type", "application/json"), ("User-Agent", "TwilioProxy/1.1"), *bearer().items()]
    post = decide(request("POST", "/api/v1/calls", json_post, body_size=2), policy=policy)
    get = decide(request("GET", "/api/v1/agents/1", bearer()), policy=policy)
    assert isinstance(post.outcome, Forward), post.trace_text()
    assert ("X-Posted", "1") in response_headers(post, policy, origin, now=0).set
    assert ("X-Twilio", "1") in response_headers(post, policy, origin, now=0).set
    assert ("X-Posted", "1") not in response_headers(get, policy, origin, now=0).set
    assert ("X-Twilio", "1") not in response_headers(get, policy, origin, now=0).set


# ------------------------------------------------------------------------------------------ through the proxy


@pytest.mark.e2e
def test_live_edge_sends_and_relays_end_to_end_fields_only(tmp_path):
    overlay = TWO_FOO_RULES
    with start_origins(["us-east-1", "us-west-2", "eu-west-1"]) as origins:
        policy = write_policy(tmp_path, {n: o.port for n, o in origins.items()}, overlay)
        with start_edge_process(policy, environ=ENV) as proxy:
            private = json.dumps({"Connection": "X-Private", "X-Private": "origin-internal"})
            headers = [
                ("Connection", "keep-alive, X-Secret, X-Forwarded-For"),
                ("X-Secret", "s3cret"),
                ("X-Test-Response-Headers", private),
                *e2e_bearer().items(),
            ]
            first = http("GET", f"{proxy.url}/api/v1/agents/42", headers)
            assert first.status == 200, first.body
            seen: dict[str, str] = {}  # the origin reports each spelling once, repeated values joined
            for name, value in first.json()["headers"].items():
                low = name.lower()
                seen[low] = f"{seen[low]}, {value}" if low in seen else value
            assert seen["x-foo"] == "b"  # once, the last rule's value
            assert "x-secret" not in seen and "connection" not in seen
            assert seen["x-forwarded-for"] == "127.0.0.1"
            assert first.headers.get("X-Private") is None
            again = http("GET", f"{proxy.url}/api/v1/agents/42", e2e_bearer())
            assert again.headers.get("CF-Cache-Status") == "HIT"
            assert again.headers.get("X-Private") is None  # never stored either

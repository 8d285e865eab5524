"""The hot-path shortcuts give exactly the answers of the plain code they replace."""

from __future__ import annotations

import hashlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from edgerules.cache import http as hc
from edgerules.paths import PathMatcher, PathPattern, split_path


def _reference_key(method, scheme, host, path, query, principal, key_headers) -> str:
    """`cache_key` as it was first written: SHA-256 of a sorted-keys JSON dump."""
    scheme = scheme.lower()
    method = method.upper()
    parts = {
        "m": "GET" if method == "HEAD" else method,
        "u": [
            scheme,
            hc._normalise_host(scheme, host),
            hc.normalise_percent_encoding(path),
            hc.normalise_query(query),
        ],
        "p": "anonymous" if principal is None else "sha256:" + hc.principal_hash(principal),
        "h": sorted(
            (n.lower(), None if v is None else hc._WS_AROUND_COMMA.sub(",", v.strip()))
            for n, v in key_headers.items()
        ),
    }
    return (
        hc.KEY_PREFIX
        + hashlib.sha256(json.dumps(parts, separators=(",", ":"), sort_keys=True).encode()).hexdigest()
    )


_text = st.text(max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(["GET", "head", "POST"]),
    scheme=st.sampled_from(["http", "HTTPS"]),
    host=_text,
    path=_text,
    query=_text,
    principal=st.none() | _text,
    key_headers=st.dictionaries(
        st.text(min_size=1, max_size=6).map(str.lower), st.none() | _text, max_size=3
    ),
)
def test_cache_key_is_the_json_dump_digest(method, scheme, host, path, query, principal, key_headers):
    args = (method, scheme, host, path, query, principal, key_headers)
    assert hc.cache_key(*args) == _reference_key(*args)


def test_cache_key_pinned_value():
    key = hc.cache_key("GET", "http", "api.aybiza.test", "/api/v1/agents/7", "", "jwt:user-7", {})
    assert key == "cache:e81642acbc6d7223e317cb8e7ff6a767fa7d32acba4735cfe6fc688d11c457b0"


_PATTERNS = [
    PathPattern("prefix", "/api/v1/agents"),
    PathPattern("prefix", "/voice/"),
    PathPattern("prefix", "/a/b/c"),
    PathPattern("path", "/health"),
    PathPattern("regex", "(.*/)?status(/.*)?"),
]
_segment = st.sampled_from(["api", "v1", "agents", "voice", "a", "b", "c", "status", "health", "x", ""])


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(_segment, max_size=5), trailing=st.booleans(), root=st.booleans())
def test_match_with_shared_segments_equals_match_alone(parts, trailing, root):
    patterns = [*_PATTERNS, PathPattern("prefix", "/")] if root else _PATTERNS
    matcher = PathMatcher(patterns)
    path = "/" + "/".join(parts) + ("/" if trailing and parts else "")
    assert matcher.match(path, split_path(path)) == matcher.match(path)


def test_match_answers():
    matcher = PathMatcher(_PATTERNS)
    cases = {
        "/api/v1/agents": 0,
        "/api/v1/agents/7": 0,
        "/api/v1/agentsX": None,
        "/voice": None,
        "/voice/": 1,
        "/voice/session": 1,
        "/a/b": None,
        "/a/b/c/d": 2,
        "/health": 3,
        "/x/status": 4,
        "/status/1": 4,
        "/": None,
    }
    for path, expected in cases.items():
        assert matcher.match(path) == expected, path
        assert matcher.match(path, split_path(path)) == expected, path

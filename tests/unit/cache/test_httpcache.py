"""RFC 9111 / RFC 5861 rules of edgerules.cache.http, table-driven."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerules.cache import http as hc
from edgerules.cache.http import CacheEntry, CacheRule, Freshness

T0 = 1_700_000_000.0
DATE0 = hc.http_date(T0)

FIXED = CacheRule(name="agents", source="rules.yaml:10", mode="fixed", ttl=300)
ORIGIN = CacheRule(name="api", source="rules.yaml:20", mode="origin")


def entry(headers=(), *, status=200, body=b"{}", request_time=T0, response_time=T0, vary=()) -> CacheEntry:
    return CacheEntry(
        status=status,
        headers=tuple(headers),
        body=body,
        stored_at=response_time,
        request_time=request_time,
        response_time=response_time,
        vary=vary,
        rule="r",
        url_path="/api/v1/agents",
    )


# ------------------------------------------------------------------------------------ parse_cache_control


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, {}),
        ("", {}),
        ("max-age=60", {"max-age": "60"}),
        ("Max-Age=60, PUBLIC", {"max-age": "60", "public": None}),
        ('private="Set-Cookie, X-Foo", max-age=5', {"private": "Set-Cookie, X-Foo", "max-age": "5"}),
        ('no-cache="a\\"b"', {"no-cache": 'a"b'}),
        ("max-age=60, max-age=60", {"max-age": "60"}),
        ("max-age=60, max-age=120", {"max-age": ""}),  # conflicting duplicate: invalid
        (" , ,max-age=1,, ", {"max-age": "1"}),
        ("bad directive, @@@, no-store", {"no-store": None}),
        ('max-age="30"', {"max-age": "30"}),
        ('community="UCI', {"community": ""}),  # unterminated quote
        (["max-age=1", "s-maxage=2"], {"max-age": "1", "s-maxage": "2"}),
    ],
)
def test_parse_cache_control(value, expected):
    assert hc.parse_cache_control(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0), ("60", 60), ("99999999999", 2**31), ("-1", None), ("1.5", None), ("", None), (None, None)],
)
def test_delta_seconds(value, expected):
    assert hc.delta_seconds(value) == expected


# ------------------------------------------------------------------------------------ storable

JSON = [("Content-Type", "application/json")]


@pytest.mark.parametrize(
    ("rule", "method", "req", "status", "resp", "size", "ok", "reason"),
    [
        (FIXED, "GET", [], 200, JSON, 10, True, "stored"),
        (FIXED, "POST", [], 200, JSON, 10, False, "method-not-in-rule"),
        (
            replace(FIXED, methods=frozenset({"GET", "POST"})),
            "POST",
            [],
            200,
            JSON,
            10,
            False,
            "unsafe-method",
        ),
        (FIXED, "HEAD", [], 200, JSON, 10, False, "head-not-stored"),
        (FIXED, "GET", [], 404, JSON, 10, False, "status-not-in-rule"),
        (replace(FIXED, statuses=frozenset({200, 404})), "GET", [], 404, JSON, 10, True, "stored"),
        (
            replace(FIXED, statuses=frozenset({200, 503})),
            "GET",
            [],
            503,
            JSON,
            10,
            True,
            "stored",
        ),
        (replace(FIXED, statuses=frozenset({206})), "GET", [], 206, JSON, 10, False, "status-never-cached"),
        (FIXED, "GET", [], 200, JSON, 1_000_001, False, "too-large"),
        (FIXED, "GET", [], 200, JSON, 1_000_000, True, "stored"),
        (FIXED, "GET", [("Cache-Control", "no-store")], 200, JSON, 1, False, "request-no-store"),
        (FIXED, "GET", [], 200, [*JSON, ("Cache-Control", "no-store")], 1, False, "no-store"),
        (
            replace(FIXED, override_no_store=True),
            "GET",
            [],
            200,
            [*JSON, ("Cache-Control", "no-store")],
            1,
            True,
            "stored",
        ),
        (FIXED, "GET", [], 200, [*JSON, ("Cache-Control", "private, max-age=60")], 1, False, "private"),
        (
            replace(FIXED, override_private=True),
            "GET",
            [],
            200,
            [*JSON, ("Cache-Control", "private")],
            1,
            True,
            "stored",
        ),
        (FIXED, "GET", [], 200, [*JSON, ("Vary", "Accept, *")], 1, False, "vary-star"),
        (FIXED, "GET", [], 200, [*JSON, ("Set-Cookie", "s=1")], 1, False, "set-cookie"),
        (
            replace(FIXED, store_set_cookie=True),
            "GET",
            [],
            200,
            [*JSON, ("Set-Cookie", "s=1")],
            1,
            True,
            "stored",
        ),
        (FIXED, "GET", [], 200, [("Content-Type", "audio/mpeg")], 1, False, "audio"),
        (
            replace(FIXED, content_types=("*/*",)),
            "GET",
            [],
            200,
            [("Content-Type", "Audio/Wav")],
            1,
            False,
            "audio",
        ),
        (replace(FIXED, content_types=("text/*",)), "GET", [], 200, JSON, 1, False, "content-type"),
        (
            replace(FIXED, content_types=("text/*",)),
            "GET",
            [],
            200,
            [("Content-Type", "text/html; charset=utf-8")],
            1,
            True,
            "stored",
        ),
        (replace(FIXED, content_types=("application/json",)), "GET", [], 200, [], 1, False, "content-type"),
        (replace(FIXED, ttl=None), "GET", [], 200, JSON, 1, False, "no-ttl"),
        (replace(FIXED, ttl=0), "GET", [], 200, JSON, 1, False, "no-ttl"),
        # fixed mode stores authorized responses: the key carries the principal hash
        (FIXED, "GET", [("Authorization", "Bearer a")], 200, JSON, 1, True, "stored"),
        # origin mode
        (ORIGIN, "GET", [], 200, [*JSON, ("Cache-Control", "max-age=60")], 1, True, "stored"),
        (ORIGIN, "GET", [], 200, JSON, 1, False, "no-explicit-freshness"),
        (replace(ORIGIN, default_ttl=30), "GET", [], 200, JSON, 1, True, "stored"),
        (ORIGIN, "GET", [], 200, [*JSON, ("Expires", DATE0)], 1, True, "stored"),
        (
            ORIGIN,
            "GET",
            [],
            200,
            [("Cache-Control", "no-cache"), ("ETag", '"v1"')],
            1,
            True,
            "stored-revalidate",
        ),
        (
            ORIGIN,
            "GET",
            [("Authorization", "Bearer a")],
            200,
            [("Cache-Control", "max-age=60")],
            1,
            False,
            "authorization",
        ),
        (
            ORIGIN,
            "GET",
            [("Authorization", "Bearer a")],
            200,
            [("Cache-Control", "public, max-age=60")],
            1,
            True,
            "stored",
        ),
        (
            ORIGIN,
            "GET",
            [("Authorization", "Bearer a")],
            200,
            [("Cache-Control", "s-maxage=60")],
            1,
            True,
            "stored",
        ),
        (
            ORIGIN,
            "GET",
            [("Authorization", "Bearer a")],
            200,
            [("Cache-Control", "must-revalidate, max-age=9")],
            1,
            True,
            "stored",
        ),
    ],
)
def test_storable(rule, method, req, status, resp, size, ok, reason):
    assert hc.storable(rule, method, req, status, resp, size) == (ok, reason)


def test_storable_accepts_mapping_headers_case_insensitively():
    assert hc.storable(FIXED, "get", {"cache-control": "No-Store"}, 200, {}, 1) == (False, "request-no-store")


# ------------------------------------------------------------------------------------ freshness


@pytest.mark.parametrize(
    ("rule", "headers", "expected"),
    [
        (FIXED, [("Cache-Control", "max-age=5")], 300.0),
        (ORIGIN, [("Cache-Control", "max-age=60, s-maxage=120")], 120.0),
        (ORIGIN, [("Cache-Control", "max-age=60")], 60.0),
        (ORIGIN, [("Cache-Control", "max-age=60"), ("Expires", hc.http_date(T0 + 999))], 60.0),
        (ORIGIN, [("Date", DATE0), ("Expires", hc.http_date(T0 + 90))], 90.0),
        (ORIGIN, [("Expires", hc.http_date(T0 + 90))], 90.0),  # no Date: now stands in
        (ORIGIN, [("Date", DATE0), ("Expires", hc.http_date(T0 - 90))], 0.0),
        (ORIGIN, [("Expires", "0")], 0.0),
        (ORIGIN, [("Expires", DATE0), ("Expires", DATE0)], 0.0),  # duplicate Expires: invalid
        (ORIGIN, [("Cache-Control", "max-age=abc")], 0.0),
        (ORIGIN, [("Cache-Control", "max-age=1, max-age=2")], 0.0),
        (ORIGIN, [], 0.0),
        (replace(ORIGIN, default_ttl=45), [], 45.0),
        (replace(ORIGIN, default_ttl=45), [("Cache-Control", "max-age=10")], 10.0),
    ],
)
def test_freshness_lifetime(rule, headers, expected):
    assert hc.freshness_lifetime(rule, headers, T0) == expected


def test_current_age_rfc9111_4_2_3():
    # origin says Age: 10; the response took 2 s to arrive; it has been resident 30 s
    e = entry([("Date", DATE0), ("Age", "10")], request_time=T0 - 2, response_time=T0)
    assert hc.current_age(e, T0 + 30) == 10 + 2 + 30
    # apparent age wins when Date is far in the past (clock skew / upstream cache)
    e = entry([("Date", hc.http_date(T0 - 100))], request_time=T0, response_time=T0)
    assert hc.current_age(e, T0) == 100
    # no Date, invalid Age: just resident time
    e = entry([("Age", "x")], request_time=T0, response_time=T0)
    assert hc.current_age(e, T0 + 7) == 7
    assert hc.age_header(entry([("Age", "3")]), T0 + 4.9) == "7"


@pytest.mark.parametrize(
    ("rule", "headers", "req", "elapsed", "expected"),
    [
        (FIXED, [], [], 0, Freshness.FRESH),
        (FIXED, [], [], 299, Freshness.FRESH),
        (FIXED, [], [], 300, Freshness.EXPIRED),
        (replace(FIXED, stale_while_revalidate=60), [], [], 330, Freshness.STALE_WHILE_REVALIDATE),
        (
            replace(FIXED, stale_while_revalidate=60, stale_if_error=600),
            [],
            [],
            400,
            Freshness.STALE_IF_ERROR,
        ),
        (replace(FIXED, stale_if_error=600), [], [], 901, Freshness.EXPIRED),
        # fixed mode ignores the origin's freshness directives and the client's no-cache
        (
            FIXED,
            [("Cache-Control", "no-cache, must-revalidate, max-age=0")],
            [("Cache-Control", "no-cache")],
            10,
            Freshness.FRESH,
        ),
        (ORIGIN, [("Cache-Control", "max-age=60")], [], 59, Freshness.FRESH),
        (ORIGIN, [("Cache-Control", "max-age=60")], [], 61, Freshness.EXPIRED),
        (ORIGIN, [("Cache-Control", "max-age=60"), ("ETag", '"a"')], [], 61, Freshness.MUST_REVALIDATE),
        (
            ORIGIN,
            [("Cache-Control", "max-age=60, stale-while-revalidate=30")],
            [],
            80,
            Freshness.STALE_WHILE_REVALIDATE,
        ),
        (
            ORIGIN,
            [("Cache-Control", "max-age=60, stale-while-revalidate=30, stale-if-error=300")],
            [],
            100,
            Freshness.STALE_IF_ERROR,
        ),
        # the origin's directive wins over the rule's default
        (
            replace(ORIGIN, stale_while_revalidate=1000),
            [("Cache-Control", "max-age=60, stale-while-revalidate=5")],
            [],
            70,
            Freshness.EXPIRED,
        ),
        (
            replace(ORIGIN, stale_while_revalidate=30),
            [("Cache-Control", "max-age=60")],
            [],
            70,
            Freshness.STALE_WHILE_REVALIDATE,
        ),
        # must-revalidate forbids stale use, even with windows
        (
            replace(ORIGIN, stale_while_revalidate=30),
            [("Cache-Control", "max-age=60, must-revalidate")],
            [],
            70,
            Freshness.EXPIRED,
        ),
        (
            ORIGIN,
            [("Cache-Control", "max-age=60, proxy-revalidate, stale-while-revalidate=30"), ("ETag", '"a"')],
            [],
            70,
            Freshness.MUST_REVALIDATE,
        ),
        # s-maxage implies proxy-revalidate: the rule's default window does not apply, the origin's does
        (
            replace(ORIGIN, stale_while_revalidate=30),
            [("Cache-Control", "s-maxage=60")],
            [],
            70,
            Freshness.EXPIRED,
        ),
        (
            ORIGIN,
            [("Cache-Control", "s-maxage=60, stale-while-revalidate=30")],
            [],
            70,
            Freshness.STALE_WHILE_REVALIDATE,
        ),
        # no-cache: always revalidate, even when fresh
        (ORIGIN, [("Cache-Control", "no-cache, max-age=600")], [], 1, Freshness.MUST_REVALIDATE),
        # request directives (origin mode)
        (
            ORIGIN,
            [("Cache-Control", "max-age=600")],
            [("Cache-Control", "no-cache")],
            1,
            Freshness.MUST_REVALIDATE,
        ),
        (ORIGIN, [("Cache-Control", "max-age=600")], [("Pragma", "no-cache")], 1, Freshness.MUST_REVALIDATE),
        (
            ORIGIN,
            [("Cache-Control", "max-age=600")],
            [("Cache-Control", "max-age=10")],
            11,
            Freshness.MUST_REVALIDATE,
        ),
        (ORIGIN, [("Cache-Control", "max-age=600")], [("Cache-Control", "max-age=10")], 9, Freshness.FRESH),
        (
            ORIGIN,
            [("Cache-Control", "max-age=600")],
            [("Cache-Control", "min-fresh=100")],
            550,
            Freshness.MUST_REVALIDATE,
        ),
    ],
)
def test_classify(rule, headers, req, elapsed, expected):
    assert hc.classify(rule, entry(headers), T0 + elapsed, req) is expected


def test_stale_if_error_ok():
    rule = replace(FIXED, stale_if_error=600)
    assert hc.stale_if_error_ok(rule, entry(), T0 + 800)
    assert not hc.stale_if_error_ok(rule, entry(), T0 + 901)
    assert not hc.stale_if_error_ok(ORIGIN, entry([("Cache-Control", "max-age=1, must-revalidate")]), T0 + 2)


@pytest.mark.parametrize(
    ("rule", "headers", "expected"),
    [
        (FIXED, [], 300.0),
        (replace(FIXED, stale_if_error=600, stale_while_revalidate=60), [], 900.0),
        (FIXED, [("ETag", '"x"')], 600.0),  # kept as long again for 304 revalidation
        (replace(FIXED, ttl=10), [("ETag", '"x"')], 70.0),  # at least 60 s
        (ORIGIN, [("Cache-Control", "max-age=60"), ("Age", "50")], 10.0),
        (ORIGIN, [("Cache-Control", "max-age=60"), ("Age", "70")], 0.0),
    ],
)
def test_storage_ttl(rule, headers, expected):
    assert hc.storage_ttl(rule, entry(headers)) == expected


# ------------------------------------------------------------------------------------ vary


def test_vary_names_and_values():
    resp = [("Vary", "Accept-Encoding, accept"), ("vary", "Origin")]
    assert hc.vary_names(resp) == ("accept", "accept-encoding", "origin")
    req = [("Accept", "application/json"), ("accept-encoding", "gzip ,  br")]
    values = hc.vary_values(hc.vary_names(resp), req)
    assert values == (("accept", "application/json"), ("accept-encoding", "gzip,br"), ("origin", None))


@pytest.mark.parametrize(
    ("req", "matches"),
    [
        ([("Accept-Encoding", "gzip,br")], True),
        ([("accept-encoding", " gzip , br ")], True),  # whitespace is normalised
        ([("Accept-Encoding", "gzip"), ("Accept-Encoding", "br")], True),  # combined lines
        ([("Accept-Encoding", "br,gzip")], False),
        ([], False),
        ([("Accept-Encoding", "gzip,br"), ("Origin", "https://a.example")], False),  # absent != present
    ],
)
def test_vary_matches(req, matches):
    e = entry(vary=(("accept-encoding", "gzip,br"), ("origin", None)))
    assert hc.vary_matches(e, req) is matches


def test_variant_keys_differ_per_values_and_stay_under_the_primary_key():
    a = hc.variant_key("cache:k", (("accept", "application/json"),))
    b = hc.variant_key("cache:k", (("accept", "text/html"),))
    absent = hc.variant_key("cache:k", (("accept", None),))
    assert len({a, b, absent}) == 3
    assert all(k.startswith("cache:k:v:") for k in (a, b, absent))


# ------------------------------------------------------------------------------------ conditional requests

ETAGGED = [("ETag", '"v1"'), ("Last-Modified", hc.http_date(T0 - 3600)), ("Date", DATE0)]


@pytest.mark.parametrize(
    ("stored", "req", "status", "expected"),
    [
        (ETAGGED, [("If-None-Match", '"v1"')], 200, True),
        (ETAGGED, [("If-None-Match", 'W/"v1"')], 200, True),  # weak comparison
        ([("ETag", 'W/"v1"')], [("If-None-Match", '"v1"')], 200, True),
        (ETAGGED, [("If-None-Match", '"v0", "v1"')], 200, True),
        (ETAGGED, [("If-None-Match", '"v0"'), ("If-None-Match", '"v1"')], 200, True),
        (ETAGGED, [("If-None-Match", '"v2"')], 200, False),
        (ETAGGED, [("If-None-Match", "*")], 200, True),
        ([], [("If-None-Match", '"v1"')], 200, False),
        # If-None-Match takes precedence over If-Modified-Since
        (ETAGGED, [("If-None-Match", '"v2"'), ("If-Modified-Since", hc.http_date(T0))], 200, False),
        (ETAGGED, [("If-Modified-Since", hc.http_date(T0 - 3600))], 200, True),
        (ETAGGED, [("If-Modified-Since", hc.http_date(T0 - 3601))], 200, False),
        (ETAGGED, [("If-Modified-Since", "yesterday")], 200, False),
        ([("Date", DATE0)], [("If-Modified-Since", hc.http_date(T0))], 200, True),  # Date stands in
        ([], [("If-Modified-Since", hc.http_date(T0 - 1))], 200, False),  # receive time stands in
        ([], [("If-Modified-Since", hc.http_date(T0))], 200, True),
        (ETAGGED, [("If-None-Match", '"v1"')], 404, False),  # only 2xx entries
        (ETAGGED, [], 200, False),
    ],
)
def test_evaluate_conditional(stored, req, status, expected):
    assert hc.evaluate_conditional(req, entry(stored, status=status)) is expected


def test_revalidation_and_304_headers():
    e = entry([*ETAGGED, ("Content-Type", "application/json"), ("Cache-Control", "max-age=60"), ("X-A", "1")])
    assert hc.revalidation_headers(e) == {
        "If-None-Match": '"v1"',
        "If-Modified-Since": hc.http_date(T0 - 3600),
    }
    assert hc.revalidation_headers(entry()) == {}
    names = [n.lower() for n, _ in hc.not_modified_headers(e, T0 + 5)]
    assert names == ["etag", "last-modified", "date", "cache-control", "age"]
    assert hc.not_modified_headers(e, T0 + 5)[-1] == ("Age", "5")


def test_merge_304_updates_headers_and_restarts_the_age_clock():
    e = entry(
        [
            ("ETag", '"v1"'),
            ("Cache-Control", "max-age=60"),
            ("Content-Length", "2"),
            ("Age", "30"),
            ("X-Old", "1"),
        ]
    )
    merged = hc.merge_304(
        e,
        [
            ("ETag", '"v1"'),
            ("Cache-Control", "max-age=120"),
            ("Content-Length", "0"),
            ("Connection", "close"),
            ("Date", hc.http_date(T0 + 500)),
        ],
        request_time=T0 + 500,
        response_time=T0 + 500,
    )
    assert merged is not None
    view = hc.HeaderView(merged.headers)
    assert view.get("cache-control") == "max-age=120"
    assert view.get("content-length") == "2"  # never updated from a 304
    assert view.get("x-old") == "1"
    assert "connection" not in view and "age" not in view
    assert merged.body == e.body
    assert hc.classify(ORIGIN, merged, T0 + 600, ()) is Freshness.FRESH
    assert hc.current_age(merged, T0 + 600) == 100


@pytest.mark.parametrize(
    ("stored", "new", "selected"),
    [
        ([("ETag", '"v1"')], [("ETag", '"v2"')], False),
        ([], [("ETag", '"v2"')], False),
        ([("ETag", '"v1"')], [("ETag", 'W/"v1"')], True),
        ([("Last-Modified", DATE0)], [("Last-Modified", hc.http_date(T0 + 1))], False),
        ([("Last-Modified", DATE0)], [("Last-Modified", DATE0)], True),
        ([("ETag", '"v1"')], [], True),
    ],
)
def test_merge_304_selects_only_matching_entries(stored, new, selected):
    merged = hc.merge_304(entry(stored), new, request_time=T0, response_time=T0)
    assert (merged is not None) is selected


# ------------------------------------------------------------------------------------ invalidation


@pytest.mark.parametrize(
    ("method", "status", "expected"),
    [
        ("POST", 201, True),
        ("put", 200, True),
        ("DELETE", 204, True),
        ("PATCH", 302, True),
        ("POST", 400, False),
        ("POST", 500, False),
        ("GET", 200, False),
        ("HEAD", 200, False),
        ("OPTIONS", 200, False),
    ],
)
def test_invalidates(method, status, expected):
    assert hc.invalidates(method, status) is expected


def test_invalidation_targets_same_origin_only():
    resp = [("Location", "/api/v1/agents/7"), ("Content-Location", "https://evil.example/api/v1/agents")]
    assert hc.invalidation_targets("https", "api.example", "/api/v1/agents", resp) == ["/api/v1/agents/7"]
    assert hc.invalidation_targets("https", "api.example", "/a", [("Location", "b")]) == ["/b"]


# ------------------------------------------------------------------------------------ headers


def test_storable_headers_drop_hop_by_hop_and_connection_nominated():
    headers = [
        ("Content-Type", "text/plain"),
        ("Connection", "keep-alive, X-Secret-Hop"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("TE", "trailers"),
        ("Trailer", "X"),
        ("Upgrade", "h2c"),
        ("Proxy-Authenticate", "Basic"),
        ("Proxy-Authorization", "x"),
        ("X-Secret-Hop", "1"),
        ("Set-Cookie", "s=1"),
        ("ETag", '"1"'),
    ]
    kept = hc.storable_headers(headers, drop=("Set-Cookie",))
    assert kept == (("Content-Type", "text/plain"), ("ETag", '"1"'))


def test_replay_headers_replace_age():
    e = entry([("Age", "10"), ("X-A", "1")], request_time=T0, response_time=T0)
    assert hc.replay_headers(e, T0 + 5) == [("X-A", "1"), ("Age", "15")]


# ------------------------------------------------------------------------------------ serialization


def test_entry_round_trip():
    e = CacheEntry(
        status=203,
        headers=(
            ("Content-Type", "application/json"),
            ("X-Ünïcode", "välue \udcff"),
            ("Set", "a"),
            ("Set", "b"),
        ),
        body=bytes(range(256)) * 3,
        stored_at=T0 + 0.5,
        request_time=T0 - 0.25,
        response_time=T0,
        vary=(("accept", "a/b"), ("origin", None)),
        rule="agents",
        url_path="/api/v1/agents/ä",
    )
    data = e.to_bytes()
    assert hc.CacheEntry.from_bytes(data) == e
    assert hc.decode_record(data) == e
    assert len(data) < len(e.body) + 400  # body is raw, not base64


@pytest.mark.parametrize(
    "data", [b"", b"ERC1", b"ERC1\x00\x00\x00\xff{}", b"ERC1\x00\x00\x00\x02{}", b"XXXXjunk", b"ERV1[1"]
)
def test_malformed_records_raise_value_error(data):
    with pytest.raises(ValueError):
        hc.decode_record(data)


def test_variant_index_round_trip():
    idx = hc.VariantIndex(("accept", "origin"), T0 + 60)
    assert hc.decode_record(idx.to_bytes()) == idx


header_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@given(
    status=st.integers(100, 599),
    headers=st.lists(st.tuples(header_text, header_text), max_size=5),
    body=st.binary(max_size=200),
    times=st.tuples(*[st.floats(0, 4e9, allow_nan=False)] * 3),
    vary=st.lists(st.tuples(header_text, st.none() | header_text), max_size=3),
)
def test_entry_round_trip_property(status, headers, body, times, vary):
    e = CacheEntry(status, tuple(headers), body, *times, vary=tuple(vary), rule="r", url_path="/p")
    assert CacheEntry.from_bytes(e.to_bytes()) == e


# ------------------------------------------------------------------------------------ cache keys


def key(principal=None, *, method="GET", host="api.example", path="/api/v1/agents", query="", headers=None):
    return hc.cache_key(method, "https", host, path, query, principal, headers or {})


def test_seed_flaw_1_two_bearer_tokens_never_share_a_key():
    token_a = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.sigA"
    token_b = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJiIn0.sigB"
    # the seed's key: btoa(header).substring(0, 8) - identical for every Bearer token
    key_a = key(hc.effective_principal(None, {"Authorization": token_a}))
    key_b = key(hc.effective_principal(None, {"Authorization": token_b}))
    assert key_a != key_b
    assert key_a == key(hc.effective_principal(None, [("authorization", token_a)]))
    assert key("user:a") != key("user:b")
    assert key("user:a") == key("user:a")
    assert key(None) != key("user:a") != key("anonymous")
    assert key(None) != key(hc.effective_principal(None, {"X-API-Key": "k1"}))


def test_key_shape_never_contains_raw_credentials():
    k = key("user:alice-secret-token")
    assert k.startswith("cache:") and len(k) == len("cache:") + 64
    assert "alice" not in k
    int(k.removeprefix("cache:"), 16)


def test_effective_principal_prefers_the_authenticated_principal():
    assert hc.effective_principal("jwt:alice", {"Authorization": "Bearer x"}) == "jwt:alice"
    assert hc.effective_principal(None, {"Cookie": "_ga=1"}) is None
    assert hc.effective_principal(None, {}) is None


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ({"query": "b=2&a=1"}, {"query": "a=1&b=2"}, True),
        ({"query": "?a=1"}, {"query": "a=1"}, True),
        ({"query": "a=%7e&b=%2f"}, {"query": "a=~&b=%2F"}, True),
        ({"query": "a=1&&b=2&"}, {"query": "a=1&b=2"}, True),
        ({"query": "a=2&a=1"}, {"query": "a=1&a=2"}, False),  # repeated names keep their order
        ({"query": "a=1+2"}, {"query": "a=1%202"}, False),
        ({"query": "a"}, {"query": "a="}, False),
        ({"query": "a=1"}, {"query": ""}, False),
        ({"path": "/api/v1/%61gents"}, {"path": "/api/v1/agents"}, True),
        ({"path": "/api/v1/agents"}, {"path": "/api/v1/agents/"}, False),
        ({"host": "API.example:443"}, {"host": "api.example"}, True),
        ({"host": "api.example:8443"}, {"host": "api.example"}, False),
        ({"method": "HEAD"}, {"method": "GET"}, True),
        ({"method": "POST"}, {"method": "GET"}, False),
        ({"headers": {"X-Tenant": "a"}}, {"headers": {"x-tenant": "a"}}, True),
        ({"headers": {"x-tenant": "a"}}, {"headers": {"x-tenant": "b"}}, False),
        ({"headers": {"x-tenant": None}}, {"headers": {"x-tenant": ""}}, False),
    ],
)
def test_cache_key_normalisation(a, b, same):
    assert (key(**a) == key(**b)) is same


def test_key_header_values():
    assert hc.key_header_values(("X-Tenant", "x-region"), {"x-tenant": "t1"}) == {
        "x-tenant": "t1",
        "x-region": None,
    }


def test_path_tags_support_segment_prefix_purge():
    tags = hc.path_tags("/api/v1/agents/42")
    for prefix in ("/", "/api", "/api/v1", "/api/v1/agents", "/api/v1/agents/", "/api/v1/agents/42"):
        assert hc.prefix_tag(prefix) in tags
    assert hc.prefix_tag("/api/v1/agent") not in tags
    assert hc.url_tag("/api/v1/agents/42") in tags
    assert hc.url_tag("/api/v1/agents") not in tags
    deep = hc.path_tags("/a/b/c/d/e/f/g/h")
    assert hc.prefix_tag("/a/b/c/d/e/f/g") in deep  # deeper prefixes over-purge via their ancestor


def _age_by_the_book(entry: CacheEntry, now: float) -> float:
    """RFC 9111 4.2.3 written out, as the entry's precomputed initial age must reproduce it."""
    view = hc.HeaderView(entry.headers)
    age_value = 0
    for raw in view.get_all("age"):
        parsed = hc.delta_seconds(raw.strip())
        if parsed is not None:
            age_value = parsed
            break
    date_value = hc.parse_http_date(view.joined("date"))
    if date_value is None:
        date_value = entry.response_time
    apparent_age = max(0.0, entry.response_time - date_value)
    corrected = max(apparent_age, age_value + max(0.0, entry.response_time - entry.request_time))
    return corrected + max(0.0, now - entry.response_time)


@given(
    age=st.one_of(st.none(), st.sampled_from(["0", "30", "x", " 7 ", "99999999999"])),
    date_offset=st.one_of(st.none(), st.integers(-100, 100)),
    delay=st.floats(0, 5),
    later=st.floats(-10, 1000),
)
def test_precomputed_initial_age_gives_the_rfc_age(age, date_offset, delay, later):
    received = 1_700_000_000.0
    headers = []
    if age is not None:
        headers.append(("Age", age))
    if date_offset is not None:
        headers.append(("Date", hc.http_date(received + date_offset)))
    entry = CacheEntry(200, tuple(headers), b"x", received, received - delay, received)
    assert hc.current_age(entry, received + later) == pytest.approx(_age_by_the_book(entry, received + later))
    merged = replace(entry, headers=(("Age", "5"),), response_time=received + 1)  # derived fields follow
    assert merged.initial_age == _age_by_the_book(merged, merged.response_time)


def test_decoded_records_are_reused_per_exact_bytes_and_bounded(monkeypatch):
    monkeypatch.setattr(hc, "_decoded", {})
    monkeypatch.setattr(hc, "DECODED_MEMO_SIZE", 3)
    entries = [CacheEntry(200, (("X-N", str(n)),), b"body", 1.0, 1.0, 1.0) for n in range(5)]
    blobs = [e.to_bytes() for e in entries]
    first = hc.decode_record(blobs[0])
    assert first == entries[0] and hc.decode_record(bytes(blobs[0])) is first  # equal bytes: same entry
    for blob, entry in zip(blobs, entries, strict=True):
        assert hc.decode_record(blob) == entry
    assert len(hc._decoded) == 3  # oldest dropped
    big = CacheEntry(200, (), b"y" * (hc.DECODED_MEMO_MAX_BYTES + 1), 1.0, 1.0, 1.0).to_bytes()
    assert hc.decode_record(big) == hc.decode_record(big)
    assert big not in hc._decoded  # large bodies are decoded each time, never held twice
    with pytest.raises(ValueError):
        hc.decode_record(b"ERC1garbage")


# ------------------------------------------------------------------ RFC 9110 5.6.7 HTTP-date, strictly


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850 format
        "Sun Nov  6 08:49:37 1994",  # ANSI C's asctime() format
        "SUN, 06 NOV 1994 08:49:37 gmt",  # names in another case: robust, the structure is the same
    ],
)
def test_the_three_http_date_forms_are_parsed(value):
    assert hc.parse_http_date(value) == 784111777.0


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 UTC",  # only GMT
        "Sun, 06 Nov 1994 08:49:37 AEST",
        "Sun, 06 Nov 1994 08:49:37 +0000",
        "Sun, 06 Nov 94 08:49:37 GMT",  # IMF-fixdate has a 4-digit year
        "Sun 06 Nov 1994 08:49:37 GMT",  # no comma
        "Sun, 06  Nov  1994 08:49:37 GMT",  # extra spaces
        "Sun, 06-Nov-1994 08:49:37 GMT",  # dashes in an IMF-fixdate
        "Sun, 06 Nov 1994 08.49.37 GMT",  # periods
        "Sun, 06 Nov 1994 8:49:37 GMT",  # 1-digit hour
        "Sun, 31 Feb 1994 08:49:37 GMT",  # no such day
        "0",
        "-1",
    ],
)
def test_anything_else_is_not_an_http_date(value):
    assert hc.parse_http_date(value) is None


def test_rfc850_two_digit_year_more_than_50_years_ahead_is_in_the_past():
    now = hc.parse_http_date("Mon, 07 Dec 2026 00:00:00 GMT")
    assert hc.time_year(hc.parse_http_date("Thursday, 18-Aug-50 02:01:18 GMT", now)) == 2050
    assert hc.time_year(hc.parse_http_date("Friday, 18-Aug-95 02:01:18 GMT", now)) == 1995


@pytest.mark.parametrize(
    "expires", ["Sun, 06 Nov 2050 08:49:37 UTC", "Sun, 06 Nov 50 08:49:37 GMT", "tomorrow"]
)
def test_an_invalid_expires_means_already_stale(expires):
    """RFC 9111 5.3: a cache recipient MUST interpret invalid date formats as a time in the past."""
    e = entry([("Date", DATE0), ("Expires", expires)])
    assert hc.storable(ORIGIN, "GET", [], 200, e.headers, 2)[0]  # explicit freshness, of zero
    assert hc.freshness_lifetime(ORIGIN, e.view, T0) == 0.0
    assert hc.classify(ORIGIN, e, T0 + 1) is not Freshness.FRESH


# ----------------------------------------------------------------------------------- Age (RFC 9111 5.1)


@pytest.mark.parametrize(("value", "age"), [("7200, 0", 7200), ("0, 7200", 0), ("7200", 7200), ("abc", 0)])
def test_an_age_list_counts_by_its_first_value(value, age):
    e = entry([("Date", DATE0), ("Cache-Control", "max-age=3600"), ("Age", value)])
    assert hc.current_age(e, T0) == age
    assert (hc.classify(ORIGIN, e, T0) is Freshness.FRESH) == (age < 3600)


# -------------------------------------------------------------- statuses: explicit freshness vs heuristic


@pytest.mark.parametrize("status", [203, 299, 302, 307, 400, 404, 410, 499, 500, 502, 503, 504, 599])
def test_any_final_status_with_explicit_freshness_is_stored(status):
    rule = replace(ORIGIN, statuses=hc.ANY_FINAL_STATUS)
    ok, reason = hc.storable(rule, "GET", [], status, [("Cache-Control", "max-age=60")], 2)
    assert (ok, reason) == (True, "stored")
    assert hc.storable(rule, "GET", [], status, [("Expires", hc.http_date(T0 + 60)), ("Date", DATE0)], 2)[0]


@pytest.mark.parametrize(
    ("status", "stored"), [(200, True), (404, True), (410, True), (302, False), (500, False)]
)
def test_heuristic_freshness_only_for_heuristically_cacheable_statuses(status, stored):
    """RFC 9111 4.2.2: `default_ttl` (heuristic freshness) only for statuses RFC 9110 defines as such."""
    rule = replace(ORIGIN, statuses=hc.ANY_FINAL_STATUS, default_ttl=60.0)
    assert hc.storable(rule, "GET", [], status, [("Content-Type", "text/plain")], 2)[0] is stored


@pytest.mark.parametrize("status", [100, 103, 206, 304])
def test_interim_partial_and_not_modified_are_never_stored(status):
    rule = replace(ORIGIN, statuses=frozenset(range(100, 600)))
    assert hc.storable(rule, "GET", [], status, [("Cache-Control", "max-age=60")], 2) == (
        False,
        "status-never-cached",
    )


# ------------------------------------------------------------------------ stale use (RFC 9111 4.2.4)


@pytest.mark.parametrize("directive", ["must-revalidate", "proxy-revalidate", "no-cache", "s-maxage=2"])
def test_directives_that_forbid_serving_stale_even_when_disconnected(directive):
    rule = replace(ORIGIN, stale_if_error=3600.0)
    e = entry([("Date", DATE0), ("Cache-Control", f"max-age=2, {directive}")])
    assert hc.stale_windows(rule, e) == (0.0, 0.0)
    assert not hc.stale_if_error_ok(rule, e, T0 + 10)


def test_the_rules_stale_if_error_applies_when_the_origin_says_nothing():
    rule = replace(ORIGIN, stale_if_error=3600.0)
    e = entry([("Date", DATE0), ("Cache-Control", "max-age=2")])
    assert hc.stale_if_error_ok(rule, e, T0 + 10)


# ------------------------------------------------------------- targeted fields (RFC 9213 CDN-Cache-Control)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("max-age=3600", {"max-age": "3600"}),
        ("foobar, max-age=3600", {"foobar": None, "max-age": "3600"}),
        ("max-age=99999999999", {"max-age": "99999999999"}),
        ("no-store;x=1, private", {"no-store": None, "private": None}),
        ("max-age =100", None),  # not a Structured Field dictionary
        ("max-age= 100", None),
        ("MaX-aGe=3600", None),  # keys are lower case
        ("max-age=10000, &&&&&", None),
        ('max-age="10000"', None),  # a string where an integer belongs
        ("max-age", None),
        ("max-age=1,", None),
    ],
)
def test_targeted_field_is_a_structured_field_dictionary(value, expected):
    assert hc.parse_targeted_cache_control(value) == expected


def _fresh_for(rule, headers):
    return hc.freshness_lifetime(rule, headers, T0)


def test_cdn_cache_control_takes_precedence_over_cache_control_and_expires():
    expires = ("Expires", hc.http_date(T0 + 3600))
    assert _fresh_for(ORIGIN, [("Cache-Control", "max-age=1"), ("CDN-Cache-Control", "max-age=3600")]) == 3600
    assert _fresh_for(ORIGIN, [("Cache-Control", "max-age=3600"), ("CDN-Cache-Control", "max-age=1")]) == 1
    assert _fresh_for(ORIGIN, [("Date", DATE0), expires, ("CDN-Cache-Control", "max-age=0")]) == 0
    # invalid: ignored, Cache-Control applies
    assert _fresh_for(ORIGIN, [("Cache-Control", "max-age=5"), ("CDN-Cache-Control", 'max-age="9"')]) == 5
    stored = hc.storable(
        ORIGIN, "GET", [], 200, [("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=9")], 2
    )
    assert stored == (True, "stored")
    for directive, reason in (("no-store", "no-store"), ("private", "private")):
        headers = [("Cache-Control", "max-age=10000"), ("CDN-Cache-Control", directive)]
        assert hc.storable(ORIGIN, "GET", [], 200, headers, 2) == (False, reason)
    no_cache = entry([("Date", DATE0), ("Cache-Control", "max-age=10000"), ("CDN-Cache-Control", "no-cache")])
    assert hc.classify(ORIGIN, no_cache, T0) is Freshness.MUST_REVALIDATE


def test_the_policys_targeted_field_goes_before_cdn_cache_control():
    rule = replace(ORIGIN, targeted=("edgerules-cache-control", "cdn-cache-control"))
    headers = [
        ("Cache-Control", "max-age=1"),
        ("CDN-Cache-Control", "max-age=60"),
        ("Edgerules-Cache-Control", "max-age=600"),
    ]
    assert _fresh_for(rule, headers) == 600
    assert _fresh_for(ORIGIN, headers) == 60  # a rule without it ignores the field


# ------------------------------------------------------------------------------------------- Cache-Tag


def test_cache_tags_are_comma_separated_case_insensitive_and_bounded():
    tags = hc.cache_tags([("Cache-Tag", "Product-1, news ,product-1,,"), ("Cache-Tag", "Extra")])
    assert tags == (hc.label_tag("product-1"), hc.label_tag("news"), hc.label_tag("extra"))
    assert hc.label_tag("NEWS") == hc.label_tag("news")
    huge = ",".join(f"t{i:05d}" for i in range(5000))  # 35 KB: only the first 16 KB count
    assert len(hc.cache_tags([("Cache-Tag", huge)])) == hc.MAX_CACHE_TAG_BYTES // 7 + 1


def test_connection_nominated_fields_are_not_stored():
    assert hc.storable_headers([("Connection", "a, b"), ("a", "1"), ("b", "2"), ("c", "3")]) == (("c", "3"),)


# ------------------------------------------------------------------------ Range from a stored 200 (RFC 9110 14)

BODY = b"01234567890"


def _answer(range_value=None, **extra):
    from edgerules.engine.core import answer_from_entry

    stored = entry([("Date", DATE0), ("Cache-Control", "max-age=60"), ("ETag", '"v1"')], body=BODY)
    method = extra.pop("method", "GET")
    headers = dict(extra)
    if range_value is not None:
        headers["Range"] = range_value
    return answer_from_entry(stored, headers, T0, method)


@pytest.mark.parametrize(
    ("value", "content_range", "body"),
    [
        ("bytes=0-1", "bytes 0-1/11", b"01"),
        ("bytes=1-", "bytes 1-10/11", b"1234567890"),
        ("bytes=-1", "bytes 10-10/11", b"0"),
        ("bytes=-100", "bytes 0-10/11", BODY),
        ("bytes=5-100", "bytes 5-10/11", b"567890"),
        ("BYTES = 0-1", "bytes 0-1/11", b"01"),
    ],
)
def test_a_range_of_a_stored_200_is_a_206(value, content_range, body):
    answer = _answer(value)
    assert answer.status == 206 and answer.body == body
    assert dict(answer.headers)["Content-Range"] == content_range


@pytest.mark.parametrize("value", ["bytes=11-", "bytes=20-30", "bytes=-0"])
def test_an_unsatisfiable_range_is_a_416(value):
    answer = _answer(value)
    assert answer.status == 416 and answer.body == b""
    assert dict(answer.headers)["Content-Range"] == "bytes */11"


@pytest.mark.parametrize(
    ("value", "extra"),
    [
        ("bytes=0-1,3-4", {}),  # several ranges: the whole response (a cache may ignore Range)
        ("items=0-1", {}),
        ("bytes=3-1", {}),
        ("bytes=a-b", {}),
        ("bytes=0-1", {"If-Range": '"other"'}),
        ("bytes=0-1", {"If-Range": 'W/"v1"'}),  # If-Range needs a strong comparison
    ],
)
def test_a_range_the_cache_ignores_gets_the_whole_200(value, extra):
    answer = _answer(value, **extra)
    assert answer.status == 200 and answer.body == BODY


def test_if_range_with_the_stored_etag_gets_the_range():
    assert _answer("bytes=0-1", **{"If-Range": '"v1"'}).status == 206

"""Semantic checks, one at a time, on small documents (loaded with the real loader, so marks are real)."""

from __future__ import annotations

import pytest

from edgerules.diagnostics import Diagnostic
from edgerules.policy.loader import load_yaml_text
from edgerules.policy.semantic import check_merged, check_raw, covers, regex_problems

BASE = """\
version: 1
regions:
  a: {upstream: http://127.0.0.1:9101}
  b: {upstream: http://127.0.0.1:9102}
routing:
  default: [a, b]
"""


def check(
    extra: str, *, for_serving: bool = False, environ: dict[str, str] | None = None
) -> list[Diagnostic]:
    doc = load_yaml_text(BASE + extra, "t.yaml")
    return check_raw(doc) + check_merged(doc, for_serving=for_serving, environ=environ or {})


def errors(diags: list[Diagnostic]) -> list[str]:
    return [f"{d.mark.line if d.mark else 0}: {d.message}" for d in diags if d.severity == "error"]


def warnings(diags: list[Diagnostic]) -> list[str]:
    return [f"{d.mark.line if d.mark else 0}: {d.message}" for d in diags if d.severity == "warning"]


def test_clean_document_has_no_findings() -> None:
    assert check("") == []


def test_undefined_and_repeated_regions() -> None:
    diags = check("  countries:\n    US: [a, c, a]\n")
    assert errors(diags) == [
        "8: region 'c' is not defined in regions",
        "8: region 'a' is listed twice in this list",
    ]
    assert diags[0].pointer == "/routing/countries/US/1"
    assert diags[0].hint == "defined: a, b"


def test_region_did_you_mean() -> None:
    doc = load_yaml_text(
        "regions:\n  us-east-1: {upstream: http://h}\nrouting:\n  default: [us-east1]\n", "t.yaml"
    )
    (d,) = check_merged(doc)
    assert d.hint == "did you mean 'us-east-1'?" and d.mark is not None and d.mark.line == 4


def test_undefined_class_and_default_class_is_defined() -> None:
    diags = check(
        "classify:\n  classes:\n    - {name: audio, match: {prefix: /voice}}\n  default_class: api\n"
        "headers:\n  request:\n    - {name: r1, match: {class: [audio, api]}, set: {X: y}}\n"
        "    - {name: r2, match: {class: audoi}, set: {X: y}}\n"
    )
    assert errors(diags) == ["14: class 'audoi' is not defined in classify.classes"]
    assert diags[0].hint == "did you mean 'audio'?"


@pytest.mark.parametrize(
    ("pattern", "severity", "needle"),
    [
        ("(?<=a)b", "error", "RE2 does not support lookaround"),
        ("a(?!b)", "error", "linear time"),
        ("(a)\\1", "error", "backreferences"),
        ("[a", "error", "missing ]"),
        ("(a+)+", "warning", "nested quantifier"),
        ("/x/(\\w+/)*y", "warning", "nested quantifier"),
        ("(a{2,})*", "warning", "nested quantifier"),
        ("^/health$", "warning", "anchors"),
    ],
)
def test_regex_problems(pattern: str, severity: str, needle: str) -> None:
    problems = regex_problems(pattern)
    assert any(s == severity and needle in m for s, m, _ in problems), problems


@pytest.mark.parametrize(
    "pattern", ["(.*/)?health(/.*)?", "/api/v[0-9]+/x", "[(+*]+", "\\(a+\\)+", "(ab)+", "\\$"]
)
def test_regex_fine(pattern: str) -> None:
    assert regex_problems(pattern) == []


def test_regexes_are_checked_everywhere() -> None:
    diags = check(
        "validation:\n  allow_paths:\n    - regex: '(?=x)'\n"
        "classify:\n  priorities:\n    - priority: high\n      match: {header: {name: User-Agent, regex: '[z'}}\n"
    )
    assert sorted(d.pointer for d in diags) == [
        "/classify/priorities/0/match/header/regex",
        "/validation/allow_paths/0/regex",
    ]


@pytest.mark.parametrize(
    ("kind", "value", "hint"),
    [
        ("prefix", "/a/../b", "'/b'"),
        ("prefix", "//api", "'/api'"),
        ("path", "/%2e%2e/x", None),
        ("path", "/%61pi", "'/api'"),
        ("path", "/health ", "'/health'"),
        ("prefix", "api", None),
    ],
)
def test_paths_must_be_normalised(kind: str, value: str, hint: str | None) -> None:
    diags = check(f"validation:\n  allow_paths:\n    - {kind}: '{value}'\n")
    assert len(errors(diags)) == 1
    if hint:
        assert hint in diags[0].hint


def test_normalised_paths_pass() -> None:
    assert (
        check("validation:\n  allow_paths:\n    - prefix: /voice/\n    - path: /\n    - prefix: /a%3Ab\n")
        == []
    )


def test_cache_principal_false_only_on_public_paths() -> None:
    auth = "auth:\n  public: [{path: /health}, {prefix: /docs}]\n  jwt: {secret: '${env:S}'}\n"
    ok = (
        auth
        + "cache:\n  rules:\n    - {name: h, match: {prefix: /docs/v1}, ttl: 1m, key: {principal: false}}\n"
    )
    assert check(ok) == []
    bad = (
        auth + "cache:\n  rules:\n    - {name: h, match: {prefix: /api}, ttl: 1m, key: {principal: false}}\n"
    )
    assert errors(check(bad)) == [
        "12: key.principal: false on a path that requires authentication would share one user's cached "
        "response with every other user"
    ]
    # a rule that matches everything is not covered by a public path either
    everything = auth + "cache:\n  rules:\n    - {name: h, ttl: 1m, key: {principal: false}}\n"
    assert len(errors(check(everything))) == 1
    # public through auth.rules with no schemes; and no auth at all
    public_rule = (
        "auth:\n  rules:\n    - {match: {prefix: /api}, schemes: []}\n  jwt: {secret: '${env:S}'}\n"
        "cache:\n  rules:\n    - {name: h, match: {path: /api/x}, ttl: 1m, key: {principal: false}}\n"
    )
    assert check(public_rule) == []
    assert check("cache:\n  rules:\n    - {name: h, ttl: 1m, key: {principal: false}}\n") == []


def test_cache_error_statuses_may_be_stored() -> None:
    """RFC 9111 3: any final status may be stored with explicit freshness (an origin's fresh 404 or 503 too)."""
    assert check("cache:\n  rules:\n    - {name: h, ttl: 1m, statuses: [200, 301, 500]}\n") == []
    assert check("cache:\n  rules:\n    - {name: h, ttl: 1m, statuses: any}\n") == []


def test_cors() -> None:
    diags = check(
        "cors:\n  - name: x\n    allow_origins: ['*', https://a.example/, https://A.example, ftp://x, https://ok.example:8443]\n"
        "    allow_credentials: true\n"
    )
    msgs = errors(diags)
    assert msgs[0].startswith("9: allow_origins '*' with allow_credentials")
    assert [d.pointer for d in diags[1:]] == [f"/cors/0/allow_origins/{i}" for i in (1, 2, 3)]
    assert "write https://a.example" in diags[1].hint
    assert check("cors:\n  - {name: x, allow_origins: ['*']}\n") == []


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("auth:\n  jwt: {secret: hunter2hunter2}\n", "auth.jwt.secret is a literal string"),
        ("auth:\n  jwt: {secret: '${env:S:-fallback}'}\n", "auth.jwt.secret has a literal default"),
        ("admin: {token: abc}\n", "admin.token is a literal string"),
        ("store: {backend: redis, url: 'redis://:pw@h:6379/0'}\n", "store.url contains a literal password"),
        (
            "environments:\n  prod:\n    admin: {token: abc}\n",
            "admin.token is a literal string",
        ),
    ],
)
def test_literal_secrets(extra: str, needle: str) -> None:
    assert any(needle in m for m in errors(check(extra)))


@pytest.mark.parametrize(
    "extra",
    [
        "auth:\n  jwt: {secret: '${env:S}'}\n",
        "admin: {token: '${env:T:-}'}\n",
        "store: {backend: redis, url: 'redis://:${env:P}@h:6379/0'}\n",
        "store: {backend: redis, url: 'redis://user@h:6379/0'}\n",
        "store: {backend: redis, url: '${env:REDIS_URL}'}\n",
    ],
)
def test_secrets_from_the_environment_pass(extra: str) -> None:
    assert errors(check(extra)) == []


def test_for_serving_env_vars_and_secret_length() -> None:
    extra = "auth:\n  jwt: {secret: '${env:S}'}\nadmin: {token: '${env:T:-}'}\n"
    assert errors(check(extra)) == []  # not serving: nothing is required
    missing = errors(check(extra, for_serving=True))
    assert missing == ["8: environment variable S is not set (needed by ${env:S})"]  # T has a default
    short = errors(check(extra, for_serving=True, environ={"S": "x" * 31}))
    assert short == ["8: the JWT secret from S is 31 bytes; HMAC needs at least 32"]
    assert errors(check(extra, for_serving=True, environ={"S": "x" * 32})) == []


def test_jwt_algorithm_families() -> None:
    mixed = errors(
        check("auth:\n  jwt: {algorithms: [HS256, ES256], secret: '${env:S}', jwks_url: 'https://k'}\n")
    )
    assert len(mixed) == 1 and "algorithm confusion" in mixed[0]
    no_keys = errors(check("auth:\n  jwt: {algorithms: [RS256]}\n"))
    assert no_keys == ["8: asymmetric JWT algorithms (RS256) need jwks_file or jwks_url"]
    assert errors(check("auth:\n  jwt: {algorithms: [EdDSA], jwks_file: keys.json}\n")) == []
    no_secret = errors(check("auth:\n  jwt: {algorithms: [HS512]}\n"))
    assert no_secret == ["8: HMAC JWT algorithms (HS512) need auth.jwt.secret"]
    assert errors(check("auth:\n  schemes: [api_key]\n")) == []
    assert "bearer scheme is enabled" in errors(check("auth:\n  schemes: [bearer]\n"))[0]


def test_duplicate_names() -> None:
    diags = check(
        "rate_limits:\n  - {name: k, key: api_key, limit: 1, window: 1s}\n  - {name: k, key: client_ip, limit: 1, window: 1s}\n"
    )
    assert errors(diags) == ["9: duplicate rule name 'k' (first used at line 8)"]


def test_shadowed_rules_warn() -> None:
    diags = check(
        "cache:\n  rules:\n"
        "    - {name: all-get, match: {methods: [GET, HEAD]}, ttl: 1m}\n"
        "    - {name: agents, match: {prefix: /agents, methods: [GET]}, ttl: 1m}\n"
        "cors:\n"
        "  - {name: one, match: {prefix: /voice}, allow_origins: ['https://a.example']}\n"
        "  - {name: two, match: {path: /voice/x}, allow_origins: ['https://b.example']}\n"
        "  - {name: three, match: {prefix: /voices}, allow_origins: ['https://b.example']}\n"
        "classify:\n  classes:\n"
        "    - {name: a1, match: {prefix: /v/}}\n"
        "    - {name: a2, match: {prefix: /v}}\n"
        "    - {name: a3, match: {prefix: /v/x}}\n"
    )
    assert sorted(warnings(diags)) == [
        "10: rule 'agents' can never match: the earlier rule 'all-get' (line 9) matches every request it does",
        "13: rule 'two' can never match: the earlier rule 'one' (line 12) matches every request it does",
        "19: rule 'a3' can never match: the earlier rule 'a1' (line 17) matches every request it does",
    ]
    assert errors(diags) == []


def test_covers() -> None:
    assert covers({}, {"prefix": "/a"})
    assert covers({"prefix": "/a"}, {"path": ["/a", "/a/b"]})
    assert not covers({"prefix": "/a"}, {"path": "/ab"})
    assert not covers({"prefix": "/a/"}, {"prefix": "/a"})
    assert covers({"prefix": "/a"}, {"prefix": "/a/"})
    assert covers({"regex": "x.*"}, {"regex": "x.*", "methods": ["GET"]})
    assert not covers({"regex": "x.*"}, {"path": "/x"})  # unsure: not claimed
    assert not covers({"methods": ["GET"]}, {"prefix": "/a"})
    assert covers(
        {"header": {"name": "User-Agent", "contains": "T"}},
        {"header": [{"name": "user-agent", "contains": "T"}]},
    )
    assert not covers({"country": ["US"]}, {"country": ["US", "CA"]})


def test_health_and_latency() -> None:
    h = check("health: {interval: 5s, timeout: 5s}\n")
    assert warnings(h) == [
        "7: health timeout (5s) is not shorter than the interval (5s): probes would overlap"
    ]
    region = load_yaml_text(
        "regions:\n  a: {upstream: http://h, health: {timeout: 30s}}\nrouting: {default: [a]}\n", "t.yaml"
    )
    assert [d.pointer for d in check_merged(region)] == ["/regions/a/health/timeout"]
    lat = load_yaml_text(
        "regions:\n  a: {upstream: http://h}\nrouting: {default: [a], latency_target: {min_ms: 90, max_ms: 80}}\n",
        "t.yaml",
    )
    assert [d.message for d in check_merged(lat)] == [
        "latency_target.min_ms (90) is greater than max_ms (80)"
    ]


def test_wrong_types_never_crash() -> None:
    weird = [
        "routing: 3\n",
        "regions: [1]\nrouting: {default: {a: 1}, countries: [1]}\n",
        "cache: {rules: {a: 1}, never: 3}\nauth: {public: 3, jwt: []}\ncors: {x: 1}\n",
        "cache: {rules: [{key: {principal: false}, match: 3, statuses: 'x'}]}\nauth: {jwt: {algorithms: 3}}\n",
        "classify: {classes: [{name: 3, match: {class: [1, null]}}]}\nvalidation: {allow_paths: [{regex: [1]}]}\n",
        "health: {interval: nope, timeout: []}\nheaders: {request: [{match: {header: [1, {regex: 2}]}}]}\n",
    ]
    for text in weird:
        doc = load_yaml_text(text, "t.yaml")
        for d in check_raw(doc) + check_merged(doc, for_serving=True, environ={}):
            assert isinstance(d, Diagnostic)

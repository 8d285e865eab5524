"""The policy JSON Schema and `edgerules.policy.schema.validate_document`: shape of the schema, the shipped policy,
a table of broken documents (message + line:col), and a fuzz run that must never raise."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from edgerules.diagnostics import Diagnostic
from edgerules.policy.loader import LoadedDocument, deep_merge, load_policy, load_yaml_text
from edgerules.policy.schema import load_schema, validate_document

ROOT = Path(__file__).resolve().parents[3]
AYBIZA = ROOT / "rules" / "aybiza.yaml"

BASE = """\
version: 1
regions:
  us-east-1:
    upstream: https://use1.example.com
routing:
  default: [us-east-1]
"""
BASE_LINES = BASE.count("\n")


def check(text: str) -> list[Diagnostic]:
    return validate_document(load_yaml_text(text, "p.yaml"))


# ------------------------------------------------------------------------------------------------ the schema


def test_schema_is_a_valid_draft_2020_12_schema_with_id_and_title() -> None:
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith("/policy.schema.json")
    assert schema["title"] and schema["description"]


def _walk(node: Any, path: str = "#") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, value in node.items():
            out.extend(_walk(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.extend(_walk(value, f"{path}/{i}"))
    return out


def test_every_property_and_definition_has_a_description() -> None:
    schema = load_schema()
    missing = []
    for path, node in _walk(schema):
        for name, prop in (
            node.get("properties", {}).items() if isinstance(node.get("properties"), dict) else []
        ):
            if "/if/" not in f"{path}/" and not prop.get("description"):
                missing.append(f"{path}/properties/{name}")
    for name, definition in schema["$defs"].items():
        if not definition.get("description") or not definition.get("title"):
            missing.append(f"#/$defs/{name}")
    assert missing == []


def test_every_object_with_properties_rejects_unknown_keys() -> None:
    schema = load_schema()
    open_objects = [
        path
        for path, node in _walk(schema)
        if isinstance(node.get("properties"), dict)
        and node.get("additionalProperties") is not False
        and "/$defs/complete_policy" not in path  # applied with allOf next to a closed schema
        and "/if" not in path
    ]
    assert open_objects == []


def test_repo_root_schema_is_a_relative_symlink_to_the_packaged_file() -> None:
    link = ROOT / "schemas" / "policy.schema.json"
    assert link.is_symlink()
    assert not os.path.isabs(os.readlink(link))
    assert link.resolve() == (ROOT / "edgerules" / "schemas" / "policy.schema.json").resolve()


def test_load_schema_returns_a_fresh_copy() -> None:
    first = load_schema()
    first["title"] = "changed"
    assert load_schema()["title"] == "edgerules policy"


def test_error_kinds_match_the_model() -> None:
    model = pytest.importorskip("edgerules.policy.model", reason="model imports modules still being written")
    assert tuple(load_schema()["$defs"]["errors"]["properties"]) == model.ERROR_KINDS


def test_the_editor_comment_points_at_the_schema() -> None:
    first = AYBIZA.read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schemas/policy.schema.json"
    assert (AYBIZA.parent / "../schemas/policy.schema.json").resolve().is_file()


# ------------------------------------------------------------------------------------------------ valid input


def test_aybiza_validates_clean() -> None:
    assert validate_document(load_policy(AYBIZA)) == []


@pytest.mark.parametrize("env", ["local", "staging", "production"])
def test_aybiza_environment_overlays_validate_clean_merged_and_alone(env: str) -> None:
    doc = load_policy(AYBIZA)
    assert env in doc.data["environments"]
    merged = deep_merge(doc.without("/environments"), doc.subtree(f"/environments/{env}"))
    assert validate_document(merged) == []
    overlay_only = Draft202012Validator({"$ref": "#/$defs/overlay", "$defs": load_schema()["$defs"]})
    assert list(overlay_only.iter_errors(doc.data["environments"][env])) == []


def test_minimal_policy_and_partial_overlays_are_valid() -> None:
    text = BASE + textwrap.dedent("""\
        environments:
          local:
            regions:
              us-east-1: {upstream: "http://127.0.0.1:9101"}
              extra: {location: {lat: 1, lon: 2}}
            routing: {timeout: 10s}
            store: {url: "${env:REDIS_URL}"}
        """)
    assert check(text) == []


@pytest.mark.parametrize(
    "snippet",
    [
        "routing: {default: [us-east-1], countries: {NO: [us-east-1], ON: [us-east-1]}}",
        "routing: {default: [us-east-1], timeout: 1h30m, connect_timeout: 0.5}",
        "routing: {default: [us-east-1], timeout: '${env:TIMEOUT:-30s}'}",
        "validation: {max_body_size: 10MiB, max_url_length: 8192}",
        "auth: {jwt: {secret: '${env:JWT_SECRET}', algorithms: [HS256, HS512]}}",
        "geo: {trusted_proxies: [127.0.0.0/8, '::1/128', 10.1.2.3]}",
        "store: {backend: redis, url: 'redis://cache.internal:6379/2'}",
        "classify: {classes: [{name: a, match: {header: [{name: X-A, present: true}], country: [US, GB]}}]}",
        "cache: {rules: [{name: o, match: {prefix: /a}, mode: origin}]}",
        # RFC 9110 9.1: any token is a method; only near-misses of the standard ones are typos
        "validation: {methods: [GET, M-SEARCH, PROPFIND, PURGE], content_types: {REPORT: [application/xml]}}",
    ],
)
def test_valid_snippets(snippet: str) -> None:
    text = BASE.replace("routing:\n  default: [us-east-1]\n", "") if snippet.startswith("routing") else BASE
    assert check(text + snippet + "\n") == []


# ------------------------------------------------------------------------------------------------ broken input

# (snippet appended to BASE, line within the snippet, column, substring of the message, substring of the hint)
BROKEN = [
    pytest.param(
        "cache:\n  rules:\n    - name: a\n      match: {prefix: /a}\n      tll: 5m\n",
        5,
        7,
        "unknown key 'tll' in cache.rules[0]; did you mean 'ttl'?",
        "allowed keys: name, match",
        id="unknown-key-did-you-mean",
    ),
    pytest.param(
        "rouing: {}\n",
        1,
        1,
        "unknown key 'rouing' in the top level; did you mean 'routing'?",
        "",
        id="unknown-top-level-key",
    ),
    pytest.param(
        "errors:\n  rate_limitd: {status: 429}\n",
        2,
        3,
        "unknown key 'rate_limitd' in errors; did you mean 'rate_limited'?",
        "",
        id="unknown-error-kind",
    ),
    pytest.param(
        "metrics: {enabled: yes}\n",
        1,
        20,
        "metrics.enabled: expected true or false, got 'yes'",
        "",
        id="wrong-type-bool",
    ),
    pytest.param(
        "health:\n  healthy_threshold: two\n",
        2,
        22,
        "health.healthy_threshold: expected an integer, got 'two'",
        "",
        id="wrong-type-int",
    ),
    pytest.param("cache: [a]\n", 1, 8, "cache: expected a mapping, got a list", "", id="wrong-type-section"),
    pytest.param(
        "store: {backend: redys}\n",
        1,
        18,
        "store.backend: 'redys' is not a store backend; allowed: memory, diskcache, redis",
        "did you mean 'redis'?",
        id="bad-enum",
    ),
    pytest.param(
        "validation:\n  methods: [GET, GETT]\n",
        2,
        18,
        "validation.methods[1]: expected an HTTP method, got 'GETT' (a near-miss of the standard method GET)",
        "did you mean 'GET'?",
        id="bad-http-method",
    ),
    pytest.param(
        "validation:\n  methods: [GET, 'BAD METHOD']\n",
        2,
        18,
        "expected an HTTP method, got 'BAD METHOD' (a method is a token",
        "",
        id="method-not-a-token",
    ),
    pytest.param(
        "validation:\n  content_types: {post: [application/json]}\n",
        2,
        19,
        "validation.content_types: key 'post' is not an HTTP method",
        "did you mean 'POST'?",
        id="bad-method-key",
    ),
    pytest.param(
        "metrics:\n  flush_interval: fast\n",
        2,
        19,
        "metrics.flush_interval: expected a duration like 30s, 5m, 1h (or a number of seconds), got 'fast'",
        "",
        id="bad-duration",
    ),
    pytest.param(
        "metrics:\n  raw_retention: 1m1h\n",
        2,
        18,
        "units must go from largest to smallest",
        "",
        id="bad-duration-order",
    ),
    pytest.param(
        "validation:\n  max_body_size: 10 megs\n",
        2,
        18,
        "expected a size like 512KB, 10MiB (or a number of bytes), got '10 megs'",
        "",
        id="bad-size",
    ),
    pytest.param(
        "cache:\n  rules:\n    - match: {prefix: /a}\n      ttl: 1m\n",
        3,
        7,
        "missing required key 'name' in cache.rules[0]",
        "",
        id="missing-required",
    ),
    pytest.param(
        "cache:\n  rules:\n    - name: a\n      match: {prefix: /a}\n",
        3,
        7,
        "missing required key 'ttl' in cache.rules[0]",
        "",
        id="fixed-mode-needs-ttl",
    ),
    pytest.param(
        "geo:\n  trusted_proxies: [10.0.0.1/8]\n",
        2,
        21,
        "expected a network in CIDR notation like 10.0.0.0/8 or 2400:cb00::/32, got '10.0.0.1/8' "
        "(10.0.0.1/8 has host bits set)",
        "",
        id="bad-cidr-host-bits",
    ),
    pytest.param(
        "admin:\n  allow_cidrs: [localhost]\n",
        2,
        17,
        "expected a network in CIDR notation",
        "",
        id="bad-cidr",
    ),
    pytest.param(
        "environments:\n  local:\n    routing:\n      countries:\n        us: [us-east-1]\n",
        5,
        9,
        "environments.local.routing.countries: key 'us' is not a country code (2 upper-case letters",
        "",
        id="bad-country-key",
    ),
    pytest.param(
        "classify:\n  classes:\n    - {name: a, match: {country: usa}}\n",
        3,
        34,
        "classify.classes[0].match.country: expected a country code or a list of them, got 'usa'",
        "",
        id="bad-country-value",
    ),
    pytest.param(
        "auth:\n  jwt: {secret: hunter2}\n",
        2,
        17,
        "auth.jwt.secret: expected a reference to an environment variable like ${env:NAME} (secrets "
        "only from the environment), got 'hunter2'",
        "",
        id="literal-secret",
    ),
    pytest.param(
        "auth:\n  jwt: {algorithms: [none]}\n",
        2,
        22,
        "'none' is not a JWT algorithm edgerules accepts",
        "",
        id="alg-none",
    ),
    pytest.param(
        "store: {url: 'redis://:s3cret@redis:6379'}\n",
        1,
        14,
        "without a literal password",
        "",
        id="redis-password",
    ),
    pytest.param(
        "classify:\n  priorities:\n    - priority: high\n      match: {header: {name: UA, equal: x}}\n",
        4,
        34,
        "unknown key 'equal' in classify.priorities[0].match.header; did you mean 'equals'?",
        "",
        id="header-condition-typo",
    ),
    pytest.param(
        "classify:\n  priorities:\n    - priority: high\n      match: {prefix: [/a, 5]}\n",
        4,
        28,
        "classify.priorities[0].match.prefix[1]: expected a path starting with '/', got 5",
        "",
        id="item-in-string-or-list",
    ),
    pytest.param(
        "cors:\n  - name: c\n    match: {prefix: /a}\n    allow_origins: ['https://a.example/']\n",
        4,
        21,
        "expected an origin like https://app.example.com (no path) or *",
        "",
        id="cors-origin",
    ),
    pytest.param(
        "cache:\n  rules:\n    - {name: a, match: {}, ttl: 1m, statuses: [200, 103]}\n",
        3,
        53,
        "cache.rules[0].statuses[1]: expected a final status (200-599), got 103",
        "",
        id="cache-interim-status",
    ),
    pytest.param(
        "validation:\n  methods: [GET, POST, GET]\n",
        2,
        24,
        "validation.methods: 'GET' is listed more than once",
        "",
        id="duplicate-item",
    ),
    pytest.param(
        "environments:\n  local:\n    version: 1\n",
        3,
        5,
        "unknown key 'version' in environments.local",
        "allowed keys: name, description, regions",
        id="overlay-has-no-version",
    ),
    pytest.param("health:\n  retries: 3\n", 2, 3, "unknown key 'retries' in health", "", id="unknown-nested"),
    pytest.param(
        "version: 2\n",
        1,
        10,
        "version: expected 1 (the only policy format version), got 2",
        "",
        id="bad-version",
    ),
    pytest.param(
        "headers:\n  security: {X-Num: 1}\n",
        2,
        21,
        "headers.security.X-Num: expected a header value (a string without line breaks; quote numbers",
        "",
        id="header-value-number",
    ),
    pytest.param(
        "routing:\n  retries: 9\n", 2, 12, "routing.retries: must be at most 5, got 9", "", id="out-of-range"
    ),
]


@pytest.mark.parametrize(("snippet", "line", "col", "message", "hint"), BROKEN)
def test_broken_documents(snippet: str, line: int, col: int, message: str, hint: str) -> None:
    base = BASE.replace("version: 1\n", "") if snippet.startswith("version") else BASE
    if snippet.startswith("routing:"):
        snippet = snippet.replace("routing:\n", "routing:\n  default: [us-east-1]\n", 1)
        base = base.replace("routing:\n  default: [us-east-1]\n", "")
        line += 1
    offset = base.count("\n")
    diags = check(base + snippet)
    found = [d for d in diags if message in d.message]
    assert found, f"no diagnostic containing {message!r}; got:\n" + "\n".join(map(str, diags))
    d = found[0]
    assert d.severity == "error"
    assert d.mark is not None
    assert (d.mark.file, d.mark.line, d.mark.col) == ("p.yaml", offset + line, col), str(d)
    assert hint in d.hint
    assert d.pointer.startswith("/")


def test_missing_required_top_level_keys_point_at_the_document_start() -> None:
    diags = check("version: 1\nname: x\n")
    assert [(d.message, d.mark.line if d.mark else None) for d in diags] == [
        ("missing required key 'regions' in the policy", 1),
        ("missing required key 'routing' in the policy", 1),
    ]


def test_base_needs_upstream_and_default_but_overlays_do_not() -> None:
    text = "regions:\n  a: {location: {lat: 1, lon: 2}}\nrouting: {countries: {US: [a]}}\n"
    messages = [d.message for d in check(text)]
    assert messages == [
        "missing required key 'upstream' in regions.a",
        "missing required key 'default' in routing",
    ]
    overlay = (
        BASE + "environments:\n  e:\n    regions:\n      a: {location: {lat: 1, lon: 2}}\n    routing: {}\n"
    )
    assert check(overlay) == []


def test_one_diagnostic_per_unknown_key_and_sorted_by_line() -> None:
    text = BASE + "zeta: 1\ncache: {statos_header: X}\nalpha: 2\n"
    diags = check(text)
    assert [d.message.split(";")[0] for d in diags] == [
        "unknown key 'zeta' in the top level",
        "unknown key 'statos_header' in cache",
        "unknown key 'alpha' in the top level",
    ]
    assert [d.mark.line for d in diags if d.mark] == [7, 8, 9]
    assert "did you mean 'status_header'?" in diags[1].message


def test_no_raw_jsonschema_wording() -> None:
    text = (
        BASE + "cache: {rules: [{name: 1, match: 2, mode: 3, tll: 4}]}\nmetrics: []\nstore: {timeout: -1}\n"
    )
    diags = check(text)
    assert len(diags) >= 5
    for d in diags:
        assert "is not valid under any of the given schemas" not in d.message
        assert "Additional properties" not in d.message
        assert "is not of type" not in d.message


# ------------------------------------------------------------------------------------------------ never a traceback

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=30,
)
_KEYS = [
    "regions",
    "routing",
    "health",
    "geo",
    "cache",
    "rules",
    "match",
    "header",
    "prefix",
    "methods",
    "ttl",
    "environments",
    "local",
    "countries",
    "NO",
    "name",
    "auth",
    "jwt",
    "secret",
    "errors",
    "cors",
    "store",
    "url",
]
_policyish = st.recursive(
    _scalars | st.sampled_from(["30s", "1MiB", "GET", "US", "${env:X}", "10.0.0.0/8", "/a"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_json | _policyish)
def test_fuzz_arbitrary_data_never_raises(data: Any) -> None:
    diags = validate_document(LoadedDocument("f.yaml", data, {}, {}))
    assert all(isinstance(d, Diagnostic) and d.message for d in diags)
    if not isinstance(data, dict):
        assert diags


_AYBIZA_DOC = load_policy(AYBIZA)
_POINTERS = sorted(_AYBIZA_DOC.marks)


@settings(max_examples=150, deadline=None)
@given(pointer=st.sampled_from(_POINTERS), value=_policyish)
def test_fuzz_replacing_any_node_of_aybiza_never_raises(pointer: str, value: Any) -> None:
    data = _replace(_AYBIZA_DOC.data, pointer, value)
    doc = LoadedDocument(_AYBIZA_DOC.file, data, _AYBIZA_DOC.marks, _AYBIZA_DOC.key_marks)
    for d in validate_document(doc):
        assert d.message
        assert d.mark is not None  # every problem is located somewhere in the file


def _replace(data: Any, pointer: str, value: Any) -> Any:
    if pointer == "":
        return value
    head, _, rest = pointer[1:].partition("/")
    token = head.replace("~1", "/").replace("~0", "~")
    if isinstance(data, list):
        copy = list(data)
        copy[int(token)] = _replace(copy[int(token)], "/" + rest if rest else "", value)
        return copy
    copy = dict(data)
    copy[token] = _replace(copy[token], "/" + rest if rest else "", value)
    return copy


def test_a_misspelt_required_key_is_reported_once_as_unknown() -> None:
    text = BASE + "cache:\n  rules:\n    - name: a\n      match: {}\n      tll: 5m\n"
    assert [d.message for d in check(text)] == ["unknown key 'tll' in cache.rules[0]; did you mean 'ttl'?"]
    # a different unknown key does not hide the missing one
    text = BASE + "cache:\n  rules:\n    - name: a\n      match: {}\n      colour: red\n"
    assert "missing required key 'ttl' in cache.rules[0]" in [d.message for d in check(text)]


def test_header_condition_needs_exactly_one_comparison() -> None:
    text = (
        BASE
        + "classify:\n  priorities:\n    - priority: high\n      match: {header: {name: UA, equals: a, contains: b}}\n"
    )
    (d,) = check(text)
    assert d.message == (
        "classify.priorities[0].match.header: expected a header condition: name plus exactly one of equals, "
        "contains, regex, present, got name, equals, contains"
    )
    assert d.mark is not None
    assert (d.mark.line, d.mark.col) == (BASE_LINES + 4, 23)

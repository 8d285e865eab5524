"""Silent dead rules and near misses that `validate` and `test` report (issue 19): each with a hint that itself
validates.

- policies: country codes outside ISO 3166-1, regexes that can never match, `ttl: 0`, rate limits that can never
  count, durations and sizes with a did-you-mean;
- test files: options placed inside `jwt:` (they became claims), expectation values that no decision has, and
  names (regions, rate limits, classes, error kinds) the policy does not define.
"""

from __future__ import annotations

import ast
import io
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgerules.diagnostics import PolicyError
from edgerules.policy.semantic import ISO_COUNTRIES, country_problem, regex_problems
from edgerules.tools.cli import main
from edgerules.tools.policytest import load_test_file, run_file
from edgerules.units import parse_duration, parse_size, suggest_duration, suggest_size

ROOT = Path(__file__).resolve().parents[3]
SEED = ROOT / "rules" / "aybiza.yaml"
SECRET = "test-secret-at-least-32-bytes-long!!"

MINIMAL = """version: 1
regions:
  a: {upstream: http://127.0.0.1:9101}
  b: {upstream: http://127.0.0.1:9102}
routing:
  default: [a, b]
"""


def validate(tmp_path: Path, text: str, *argv: str) -> tuple[int, list[dict]]:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    out = io.StringIO()
    code = main(["validate", "--format", "json", str(path), *argv], out=out)
    return code, json.loads(out.getvalue())["diagnostics"]


def write_tests(tmp_path: Path, cases: str) -> Path:
    path = tmp_path / "t.test.yaml"
    path.write_text(
        f"policy: {SEED}\nenv: local\nenviron: {{JWT_SECRET: {SECRET!r}}}\n"
        f'time: "2026-01-01T00:00:00Z"\ncases:\n{cases}'
    )
    return path


def hint_value(hint: str) -> str:
    m = re.match(r"(?:write|did you mean) '([^']*)'", hint)
    assert m, hint
    return m.group(1)


# ------------------------------------------------------------------------------------------------ countries


@pytest.mark.parametrize(("code", "fix"), [("UK", "GB"), ("EL", "GR"), ("ON", "CA"), ("EN", "GB")])
def test_country_mistakes_get_a_did_you_mean_that_is_a_country(tmp_path: Path, code: str, fix: str) -> None:
    status, diags = validate(tmp_path, MINIMAL + f"  countries:\n    {code}: [b]\n")
    assert status == 1
    (d,) = diags
    assert d["line"] == 8 and "not an ISO 3166-1 alpha-2 country code" in d["message"]
    assert hint_value(d["hint"]) == fix and fix in ISO_COUNTRIES
    fixed, _ = validate(tmp_path, MINIMAL + f"  countries:\n    {fix}: [b]\n")
    assert fixed == 0


def test_every_assigned_and_special_code_is_accepted() -> None:
    assert len(ISO_COUNTRIES) == 249
    for code in [*ISO_COUNTRIES, "XX", "T1", "ZZ", "XK"]:
        assert country_problem(code) is None, code
    assert country_problem("QQ") is None  # user-assigned: a custom geo header may send it
    assert country_problem("OO") is not None


def test_country_in_a_match_and_default_country(tmp_path: Path) -> None:
    text = (
        MINIMAL
        + "geo: {default_country: UK}\nclassify:\n  classes:\n    - {name: k, match: {country: [US, UK]}}\n"
    )
    status, diags = validate(tmp_path, text)
    assert status == 1
    assert sorted(d["pointer"] for d in diags) == [
        "/classify/classes/0/match/country/1",
        "/geo/default_country",
    ]


# ------------------------------------------------------------------------------------------------ regexes


def test_dollar_then_more_characters_can_never_match_and_the_hint_validates(tmp_path: Path) -> None:
    text = MINIMAL + "validation:\n  allow_paths:\n    - regex: '^/authors/[0-9]+$/'\n"
    status, diags = validate(tmp_path, text)
    assert status == 1
    (d,) = diags
    assert "can never match" in d["message"] and d["line"] == 9
    fixed = hint_value(d["hint"])
    assert regex_problems(fixed) == []
    assert validate(tmp_path, text.replace("'^/authors/[0-9]+$/'", repr(fixed)))[0] == 0


def test_path_regex_without_a_leading_slash(tmp_path: Path) -> None:
    status, diags = validate(tmp_path, MINIMAL + "validation:\n  allow_paths:\n    - regex: 'api/v1/.*'\n")
    assert status == 1 and "every path starts with '/'" in diags[0]["message"]
    assert hint_value(diags[0]["hint"]) == "/api/v1/.*"
    # header regexes are not paths
    header = "headers:\n  request:\n    - {name: h, set: {X-A: '1'}, match: {header: {name: Accept, regex: 'json.*'}}}\n"
    assert validate(tmp_path, MINIMAL + header)[0] == 0


PARTS = ["/", "a", "[0-9]", "+", "*", "?", "$", "^", ".", "\\.", "\\$", "[$]", "x{2}"]


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.lists(st.sampled_from(PARTS), min_size=1, max_size=8).map("".join))
def test_every_regex_hint_that_proposes_a_pattern_validates(pattern: str) -> None:
    for _severity, _message, hint in regex_problems(pattern):
        quoted = re.findall(r"'(?:[^'\\]|\\.)*'", hint) if hint.startswith("write ") else []
        for proposed in map(ast.literal_eval, quoted):
            assert [p for p in regex_problems(proposed) if p[0] == "error"] == [], (pattern, proposed)


# ------------------------------------------------------------------------------------------------ cache, limits


def test_ttl_zero_is_reported(tmp_path: Path) -> None:
    text = MINIMAL + "cache:\n  rules:\n    - {name: c, match: {prefix: /api}, ttl: 0}\n"
    status, diags = validate(tmp_path, text)
    assert status == 0  # a warning: it is valid, just useless
    assert [d["severity"] for d in diags] == ["warning"] and "ttl 0" in diags[0]["message"]
    assert validate(tmp_path, text.replace("ttl: 0", "ttl: 5m"))[1] == []


def test_principal_rate_limit_on_public_paths_is_reported(tmp_path: Path) -> None:
    text = MINIMAL + (
        "auth:\n  public: [{prefix: /login}]\n  jwt: {secret: '${env:NOT_SET_HERE}'}\n"
        "rate_limits:\n  - {name: login, key: principal, limit: 5, window: 1m, match: {prefix: /login}}\n"
    )
    status, diags = validate(tmp_path, text)
    assert status == 0
    assert ["can never count" in d["message"] for d in diags] == [True]
    assert validate(tmp_path, text.replace("key: principal", "key: client_ip"))[1] == []


# ------------------------------------------------------------------------------------------------ units


@pytest.mark.parametrize(
    ("text", "fixed"), [("5 min", "5m"), ("1hr", "1h"), ("2 weeks", "14d"), ("30secs", "30s")]
)
def test_duration_suggestions_parse(text: str, fixed: str) -> None:
    assert suggest_duration(text) == fixed
    parse_duration(fixed)


@pytest.mark.parametrize(("text", "fixed"), [("10M", "10MiB"), ("1k", "1KiB"), ("512 kilobytes", "512KB")])
def test_size_suggestions_parse(text: str, fixed: str) -> None:
    assert suggest_size(text) == fixed
    parse_size(fixed)


def test_validate_suggests_units(tmp_path: Path) -> None:
    status, diags = validate(tmp_path, MINIMAL + "  timeout: 5 min\nvalidation: {max_body_size: 10M}\n")
    assert status == 1
    assert sorted(hint_value(d["hint"]) for d in diags) == ["10MiB", "5m"]


# ------------------------------------------------------------------------------------------------ test files


def test_expires_in_inside_jwt_is_refused(tmp_path: Path) -> None:
    path = write_tests(
        tmp_path,
        "  - name: an expired token is refused\n"
        "    request: {url: /api/v1/agents, auth: {jwt: {sub: u1, expires_in: -1h}}}\n"
        "    expect: {status: 401}\n",
    )
    with pytest.raises(PolicyError) as exc:
        load_test_file(path)
    (d,) = exc.value.diagnostics
    assert d.mark is not None and d.mark.line == 7
    assert "expires_in is an option of auth, not a claim" in d.message


@pytest.mark.parametrize(
    ("expect", "message", "hint"),
    [
        ("{cache: miss}", "cache 'miss' is not a cache status", "did you mean 'MISS'?"),
        ("{auth: jwtt}", "auth 'jwtt' is not an auth outcome", "did you mean 'jwt'?"),
    ],
)
def test_expectation_values_no_decision_has(tmp_path: Path, expect: str, message: str, hint: str) -> None:
    path = write_tests(tmp_path, f"  - name: x\n    request: {{url: /health}}\n    expect: {expect}\n")
    with pytest.raises(PolicyError) as exc:
        load_test_file(path)
    (d,) = exc.value.diagnostics
    assert message in d.message and d.hint == hint and d.mark is not None and d.mark.line == 8


@pytest.mark.parametrize(
    ("case", "message", "hint"),
    [
        ("    expect: {region: us-east1}\n", "region 'us-east1' is not defined", "did you mean 'us-east-1'?"),
        (
            "    world: {down: [eu-west]}\n    expect: {status: 200}\n",
            "region 'eu-west' is not defined",
            "did you mean",
        ),
        (
            "    world: {rate_limit_usage: {api-keys: 5}}\n    expect: {status: 200}\n",
            "rate limit 'api-keys'",
            "did you mean 'api-key'?",
        ),
        (
            "    expect: {error: rate_limit}\n",
            "error 'rate_limit' is not an error kind",
            "did you mean 'rate_limited'?",
        ),
    ],
)
def test_names_the_policy_does_not_define(tmp_path: Path, case: str, message: str, hint: str) -> None:
    path = write_tests(tmp_path, f"  - name: x\n    request: {{url: /health}}\n{case}")
    with pytest.raises(PolicyError) as exc:
        run_file(path)
    (d,) = exc.value.diagnostics
    assert message in d.message and d.hint.startswith(hint) and d.mark is not None and d.mark.line >= 7
    out = io.StringIO()
    assert main(["test", str(path)], out=out) == 1
    assert f"{path}:" in out.getvalue()

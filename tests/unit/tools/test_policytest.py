"""`edgerules test`: the shipped policy tests, failure diffs with traces, coverage, output formats, broken files."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from edgerules.diagnostics import PolicyError
from edgerules.tools.cli import main
from edgerules.tools.policytest import load_test_file, run_file

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "rules"
SEED = RULES / "aybiza.yaml"
SECRET = "test-secret-at-least-32-bytes-long!!"


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def write_tests(tmp_path: Path, cases: str, *, policy: Path = SEED, name: str = "t.test.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        f"policy: {policy}\nenv: local\nenviron: {{JWT_SECRET: {SECRET!r}}}\n"
        f'time: "2026-01-01T00:00:00Z"\ncases:\n{cases}'
    )
    return path


def test_shipped_policy_tests_pass() -> None:
    result = run_file(RULES / "aybiza.test.yaml")
    failed = [r for r in result.results if not r.passed]
    assert len(result.results) > 60
    assert not failed, "\n".join(r.case.name for r in failed)
    code, out = cli("test", str(RULES))
    assert code == 0, out
    assert re.search(r"\b\d+ passed, 0 failed", out)


def test_shipped_tests_exercise_every_rule() -> None:
    result = run_file(RULES / "aybiza.test.yaml")
    assert result.coverage.rules, "coverage found no rules in the shipped policy"
    assert result.coverage.missing() == []


def test_wrong_expectation_prints_a_diff_and_the_trace(tmp_path: Path) -> None:
    path = write_tests(
        tmp_path,
        "  - name: health is not public (wrong on purpose)\n"
        "    request: {url: /health, country: GB}\n"
        "    expect: {status: 401, region: us-east-1}\n",
    )
    code, out = cli("test", str(path))
    assert code == 1
    assert f"FAIL {path}:6: health is not public (wrong on purpose)" in out
    assert re.search(r"status\s+expected: 401\n\s+actual:\s+200", out), out
    assert re.search(r"region\s+expected: us-east-1\n\s+actual:\s+eu-west-1", out), out
    # the trace names the rules that fired with their file:line in the policy
    assert re.search(r"auth\s+matched\s+public\s+\(.*aybiza\.yaml:\d+\)", out), out
    assert re.search(r"routing\s+primary\s+eu-west-1.*aybiza\.yaml:\d+", out), out
    assert "0 passed, 1 failed" in out


def test_case_setup_errors_fail_the_case(tmp_path: Path) -> None:
    path = write_tests(
        tmp_path,
        "  - name: unknown key name\n"
        "    request: {url: /api/v1/agents, auth: {api_key: nobody}}\n"
        "    expect: {status: 200}\n",
    )
    code, out = cli("test", str(path))
    assert code == 1
    assert "no key named 'nobody' in world.api_keys" in out


def test_coverage_reports_a_rule_nobody_exercised(tmp_path: Path) -> None:
    text = SEED.read_text()
    anchor = "  classes:\n"
    assert anchor in text
    policy = tmp_path / "extra.yaml"
    policy.write_text(
        text.replace(
            anchor, anchor + "    - name: never-tested\n      match: {prefix: /webhooks/legacy}\n", 1
        )
    )
    line = policy.read_text().splitlines().index("    - name: never-tested") + 1
    path = write_tests(
        tmp_path, "  - name: health\n    request: {url: /health}\n    expect: {status: 200}\n", policy=policy
    )
    code, out = cli("test", "--coverage", str(path))
    assert code == 0, out
    assert f"not exercised: class never-tested ({policy}:{line})" in out
    assert "not exercised: class webhook" in out  # the single case exercises no class rule at all
    assert not re.search(r"not exercised: auth public", out)  # /health did exercise the public rule

    code, out = cli("test", "--coverage", "--format", "json", str(path))
    doc = json.loads(out)
    missing = doc["files"][0]["not_exercised"]
    assert {"kind": "class", "name": "never-tested", "source": f"{policy}:{line}"} in missing


def test_junit_output_parses(tmp_path: Path) -> None:
    path = write_tests(
        tmp_path,
        "  - name: passes\n    request: {url: /health}\n    expect: {status: 200}\n"
        "  - name: fails\n    request: {url: /admin}\n    expect: {status: 200}\n",
    )
    code, out = cli("test", "--format", "junit", str(path))
    assert code == 1
    root = ET.fromstring(out.split("\n", 1)[1])
    suite = root.find("testsuite")
    assert suite is not None
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["passes"].find("failure") is None
    failure = cases["fails"].find("failure")
    assert failure is not None and "expected 200" in failure.get("message", "")
    assert "actual:   400" in (failure.text or "")


def test_github_format_annotates_the_case_line(tmp_path: Path) -> None:
    path = write_tests(tmp_path, "  - name: fails\n    request: {url: /admin}\n    expect: {status: 200}\n")
    code, out = cli("test", "--format", "github", str(path))
    assert code == 1
    assert out.startswith(f"::error file={path},line=6,title=policy test failed: fails::")


def test_broken_test_file_gives_file_and_line(tmp_path: Path) -> None:
    path = write_tests(
        tmp_path,
        "  - name: typo\n    request: {url: /health}\n    expect: {staus: 200}\n",
    )
    with pytest.raises(PolicyError) as info:
        load_test_file(path)
    diag = info.value.diagnostics[0]
    assert diag.mark is not None and (diag.mark.file, diag.mark.line) == (str(path), 8)
    assert "did you mean 'status'" in diag.hint
    code, out = cli("test", str(path))
    assert code == 1
    assert f"{path}:8:" in out and "unknown key 'staus'" in out


@pytest.mark.parametrize(
    ("body", "message", "line"),
    [
        (
            "  - name: x\n    request: {url: /health, body_size: big}\n    expect: {}\n",
            "body_size must be",
            7,
        ),
        ("  - name: x\n    expect: {}\n", "missing required key 'url'", 6),
        (
            "  - name: x\n    request: {url: /a, auth: {jwt: {}, api_key: k}}\n    expect: {}\n",
            "exactly one",
            7,
        ),
    ],
)
def test_more_broken_test_files(tmp_path: Path, body: str, message: str, line: int) -> None:
    path = write_tests(tmp_path, body)
    with pytest.raises(PolicyError) as info:
        load_test_file(path)
    text = str(info.value)
    assert message in text
    assert f"{path}:{line}:" in text


def test_directories_are_searched_and_missing_paths_are_usage_errors(tmp_path: Path) -> None:
    sub = tmp_path / "nested"
    sub.mkdir()
    write_tests(
        sub, "  - name: ok\n    request: {url: /health}\n    expect: {status: 200}\n", name="a.test.yaml"
    )
    (sub / "ignored.yaml").write_text("not: a test file\n")
    code, out = cli("test", str(tmp_path))
    assert code == 0 and "1 passed, 0 failed" in out
    code, out = cli("test", str(tmp_path / "missing.test.yaml"))
    assert code == 2 and "no test files found" in out

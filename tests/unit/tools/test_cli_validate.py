"""`edgerules validate`: output formats, exit codes, summaries, and no tracebacks."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgerules.tools import cli

REPO = Path(__file__).resolve().parents[3]
AYBIZA = "rules/aybiza.yaml"
BROKEN = """\
version: 1
regions:
  a: {upstream: http://127.0.0.1:9101}
routing:
  default: [a, z]
cache:
  rules:
    - name: r
      match: {prefix: /x}
      tll: 5m
"""


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return cli.main(list(argv), out=out), out.getvalue()


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("JWT_SECRET", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)


def test_aybiza_is_valid_with_a_summary() -> None:
    code, out = run("validate", AYBIZA)
    assert code == 0, out
    assert out.splitlines()[-1].startswith("rules/aybiza.yaml: ok (3 regions, 13 countries, 3 environments")


def test_each_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in ("local", "staging", "production"):
        code, out = run("validate", "--env", env, AYBIZA)
        assert code == 0, out
    code, out = run("validate", "--env", "qa", AYBIZA)
    assert code == 1
    assert "unknown environment 'qa'" in out and "local, staging, production" in out


def test_for_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = run("validate", "--for-serving", "--env", "local", AYBIZA)
    assert code == 1 and "JWT_SECRET is not set" in out
    assert out.startswith("rules/aybiza.yaml:136:13: error:")
    monkeypatch.setenv("JWT_SECRET", "x" * 20)
    code, out = run("validate", "--for-serving", "--env", "local", AYBIZA)
    assert code == 1 and "from JWT_SECRET is 20 bytes" in out and "x" * 20 not in out
    monkeypatch.setenv("JWT_SECRET", "x" * 40)
    code, out = run("validate", "--for-serving", "--env", "local", AYBIZA)
    assert code == 0, out


def test_text_output_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    code, out = run("validate", str(path), AYBIZA)
    assert code == 1
    lines = out.splitlines()
    assert any(x.startswith(f"{path}:5:16: error: region 'z' is not defined") for x in lines), out
    assert any(
        x.startswith(f"{path}:10:7: error: unknown key 'tll'") and "did you mean 'ttl'" in x for x in lines
    )
    assert any("[at /routing/default/1]" in x for x in lines)
    assert any(x.startswith("rules/aybiza.yaml: ok") for x in lines)  # the good file still gets its summary
    assert lines[-1].endswith("in 1 file")


def test_json_output(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    code, out = run("validate", "--format", "json", str(path), AYBIZA)
    assert code == 1
    doc = json.loads(out)
    assert doc["ok"] is False
    assert [f["ok"] for f in doc["files"]] == [False, True]
    assert doc["files"][1]["regions"] == 3 and doc["files"][1]["environments"] == [
        "local",
        "staging",
        "production",
    ]
    region = next(d for d in doc["diagnostics"] if "region 'z'" in d["message"])
    assert (region["file"], region["line"], region["col"], region["severity"]) == (str(path), 5, 16, "error")
    assert region["pointer"] == "/routing/default/1" and region["hint"]


def test_github_output(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    code, out = run("validate", "--format", "github", str(path))
    assert code == 1
    assert f"::error file={path},line=5,col=16,title=edgerules::region 'z' is not defined" in out


def test_missing_file_is_a_policy_problem() -> None:
    code, out = run("validate", "does/not/exist.yaml")
    assert code == 1
    assert "does/not/exist.yaml: no such file" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["validate"], ["validate", "--format", "xml", AYBIZA], ["frobnicate"], []):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_internal_error_is_reported_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import edgerules.policy.load

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(edgerules.policy.load, "validate_file", boom)
    code, _ = run("validate", AYBIZA)
    err = capsys.readouterr().err
    assert code == 3
    assert "internal error: RuntimeError: kaboom" in err and "Traceback" not in err


def test_console_script_as_a_subprocess() -> None:
    exe = Path(sys.executable).parent / "edgerules"
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "edgerules.tools.cli"]
    proc = subprocess.run([*argv, "validate", AYBIZA], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rules/aybiza.yaml: ok (3 regions, 13 countries, 3 environments" in proc.stdout
    assert proc.stderr == ""

"""Every broken policy in tests/corpus/ through `edgerules validate`.

Each file says what must be reported in header comments: `# expect: LINE: substring` (one or more; the
substring must appear in a reported line for that file and line) and optionally `# args: --env qa` (extra
arguments). Files without `# expect:` (include siblings) only have to be handled without an internal error.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgerules.tools import cli

CORPUS = Path(__file__).resolve().parents[2] / "corpus"
REPO = Path(__file__).resolve().parents[3]
FILES = sorted(CORPUS.glob("*.yaml"))
EXPECT = re.compile(rb"^# expect: (\d+): (.+?)\s*$", re.MULTILINE)
ARGS = re.compile(rb"^# args: (.+?)\s*$", re.MULTILINE)
UNSET = "EDGERULES_CORPUS_UNSET_SECRET"


def expectations(path: Path) -> tuple[list[tuple[int, str]], list[str]]:
    raw = path.read_bytes()[:4096]
    expects = [(int(line), text.decode()) for line, text in EXPECT.findall(raw)]
    args = ARGS.search(raw)
    return expects, args.group(1).decode().split() if args else []


def run_validate(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(["validate", *argv], out=out)
    return code, out.getvalue()


def check_output(path: Path, output: str, expects: list[tuple[int, str]]) -> None:
    lines = output.splitlines()
    for line, text in expects:
        # The file is usually `path`; an include problem may be reported in the included sibling.
        at_line = re.compile(rf"^(?:{re.escape(str(path))}|{re.escape(str(CORPUS))}/[^:]+):{line}:\d+: ")
        hits = [x for x in lines if at_line.match(x) and text in x]
        assert hits, f"{path.name}: expected {text!r} at line {line}; got:\n{output}"


def test_corpus_is_big_enough() -> None:
    mine = [f for f in FILES if f.name.startswith(("schema_", "semantic_"))]
    assert len(mine) >= 20
    assert all(expectations(f)[0] for f in mine), "every schema_/semantic_ file declares what it expects"


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_corpus_file(path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(UNSET, raising=False)
    expects, args = expectations(path)
    code, output = run_validate([str(path), *args])
    assert "internal error" not in capsys.readouterr().err
    if not expects:
        assert code in (0, 1), output
        return
    assert code == 1, f"{path.name} should be invalid; output:\n{output}"
    check_output(path, output, expects)


def test_no_internal_error_across_the_corpus_in_every_format(capsys: pytest.CaptureFixture[str]) -> None:
    for fmt in ("text", "json", "github"):
        code, output = run_validate(["--format", fmt, *map(str, FILES)])
        assert code == 1
        assert output.strip()
        assert "internal error" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "name",
    ["schema_misspelt_ttl.yaml", "semantic_undefined_region.yaml", "semantic_unknown_environment.yaml"],
)
def test_corpus_as_a_real_subprocess(name: str) -> None:
    path = CORPUS / name
    expects, args = expectations(path)
    proc = subprocess.run(
        [sys.executable, "-m", "edgerules.tools.cli", "validate", str(path), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    check_output(path, proc.stdout, expects)


EXPECTING = [f for f in FILES if expectations(f)[0]]
ENVS = re.compile(r"^environments:\s*$", re.MULTILINE)


def _environments(path: Path) -> list[str]:
    """The environment names declared in a corpus file (top-level `environments:` children)."""
    text = path.read_text(errors="replace")
    m = ENVS.search(text)
    if not m:
        return []
    names = []
    for line in text[m.end() :].splitlines():
        if line and not line.startswith(" "):
            break
        if re.match(r"^  [A-Za-z0-9_-]+:", line):
            names.append(line.strip().split(":")[0])
    return names


@pytest.mark.parametrize("path", EXPECTING, ids=[f.name for f in EXPECTING])
def test_corpus_file_in_json_and_github_formats(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same problems at the same lines in every output format, never an internal error or empty output."""
    expects, args = expectations(path)
    code, output = run_validate(["--format", "json", str(path), *args])
    assert "internal error" not in capsys.readouterr().err
    assert code == 1, output
    doc = json.loads(output)
    assert doc["ok"] is False
    for line, text in expects:
        hits = [
            d
            for d in doc["diagnostics"]
            if d["line"] == line
            and text in f"{d['severity']}: {d['message']} [at {d['pointer']}] (hint: {d['hint']})"
        ]
        assert hits, f"{path.name}: json has no {text!r} at line {line}:\n{output}"
    code, output = run_validate(["--format", "github", str(path), *args])
    assert "internal error" not in capsys.readouterr().err
    assert code == 1, output
    for line, text in expects:
        severity, _, rest = text.partition(": ")
        severity, text = (severity, rest) if severity in ("error", "warning") and rest else ("", text)
        hits = [
            x
            for x in output.splitlines()
            if x.startswith(f"::{severity}") and f",line={line}," in x and text in x
        ]
        assert hits, f"{path.name}: github has no {text!r} at line {line}:\n{output}"


ENV_FILES = [f for f in FILES if _environments(f)]


@pytest.mark.parametrize("path", ENV_FILES, ids=[f.name for f in ENV_FILES])
def test_corpus_file_for_each_environment(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--env X` for every environment: exit 0 or 1 with file:line:col, never an internal error; and a file
    that is invalid for some environment is invalid without --env (which checks them all)."""
    code_all, _ = run_validate([str(path)])
    assert "internal error" not in capsys.readouterr().err
    for env in _environments(path):
        code, output = run_validate([str(path), "--env", env])
        assert "internal error" not in capsys.readouterr().err, env
        assert code in (0, 1), output
        if code == 1:
            assert code_all == 1, f"{path.name}: invalid with --env {env} but valid without --env"
            assert re.search(rf"^{re.escape(str(path))}:\d+:\d+: error: ", output, re.MULTILINE), output

"""Every broken policy in tests/corpus/ through `edgerules validate`.

Each file says what must be reported in header comments: `# expect: LINE: substring` (one or more; the
substring must appear in a reported line for that file and line) and optionally `# args: --env qa` (extra
arguments). Files without `# expect:` (include siblings) only have to be handled without an internal error.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgerules import cli

CORPUS = Path(__file__).parent / "corpus"
REPO = Path(__file__).parent.parent
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
        [sys.executable, "-m", "edgerules.cli", "validate", str(path), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    check_output(path, proc.stdout, expects)

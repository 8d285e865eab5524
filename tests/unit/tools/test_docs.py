"""docs/policy-reference.md is generated from the schema and must not go stale."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgerules.policy.schema import load_schema
from edgerules.tools import docgen
from edgerules.tools.docgen import render_reference

ROOT = Path(__file__).resolve().parents[3]
REFERENCE = ROOT / "docs" / "policy-reference.md"


def test_committed_reference_is_up_to_date() -> None:
    expected = render_reference(load_schema())
    assert REFERENCE.read_text("utf-8") == expected, (
        "docs/policy-reference.md is stale: run `python -m edgerules.tools.docgen > docs/policy-reference.md`"
    )


def test_check_flag_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fresh = tmp_path / "fresh.md"
    fresh.write_text(render_reference(load_schema()), "utf-8")
    assert docgen.main(["--check", str(fresh)]) == 0
    stale = tmp_path / "stale.md"
    stale.write_text(render_reference(load_schema()) + "edited by hand\n", "utf-8")
    assert docgen.main(["--check", str(stale)]) == 1
    assert docgen.main(["--check", str(tmp_path / "missing.md")]) == 1
    assert "stale" in capsys.readouterr().err


def test_module_entry_point_prints_the_reference() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edgerules.tools.docgen"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout == render_reference(load_schema())


def test_every_top_level_key_and_nested_field_is_documented() -> None:
    text = render_reference(load_schema())
    for key in load_schema()["properties"]:
        assert f"`{key}`" in text
    for field in (
        "cache.rules[].ttl",
        "routing.countries",
        "regions.<name>.upstream",
        "auth.jwt.algorithms",
        "environments.<name>.routing",
        "routing.latency_target.max_ms",
        "errors.uri_too_long",
    ):
        assert f"`{field}`" in text, field


def test_enums_defaults_and_examples_are_shown() -> None:
    text = render_reference(load_schema())
    assert "one of `fallback_primary`, `reject`" in text
    row = next(line for line in text.splitlines() if line.startswith("| `routing.timeout`"))
    assert "`30s`" in row and "[Duration](#type-duration)" in row
    assert "Examples: `30s`, `5m`, `1h30m`, `10`." in text


def test_every_link_has_an_anchor() -> None:
    text = render_reference(load_schema())
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', text))
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links, "the reference links its types"
    assert links - anchors == set()


def test_tables_are_well_formed() -> None:
    for line in render_reference(load_schema()).splitlines():
        if line.startswith("| "):
            cells = re.split(r"(?<!\\)\|", line)[1:-1]
            assert len(cells) == 4, line

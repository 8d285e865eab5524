"""The YAML loader: safe parsing, marks, YAML 1.1 traps, limits, includes, merging; and diagnostics output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgerules.diagnostics import Diagnostic, Mark, PolicyError, format_diagnostics
from edgerules.policy import loader
from edgerules.policy.loader import (
    LoadedDocument,
    deep_merge,
    join_pointer,
    load_policy,
    load_yaml_file,
    load_yaml_text,
    resolve_pointer,
    split_pointer,
)

CORPUS = Path(__file__).resolve().parents[2] / "corpus"
EXPECT = re.compile(rb"^# expect: (\d+): (.*)$")


@pytest.fixture(params=loader._LOADERS, ids=lambda cls: cls.__name__)
def any_loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> type:
    """Run the test with libyaml's composer and with the pure-Python one."""
    monkeypatch.setattr(loader, "_Loader", request.param)
    return request.param


def error_of(text: str | bytes, filename: str = "p.yaml") -> Diagnostic:
    with pytest.raises(PolicyError) as exc:
        load_yaml_text(text, filename)
    assert len(exc.value.diagnostics) == 1
    return exc.value.diagnostics[0]


def load(text: str) -> LoadedDocument:
    return load_yaml_text(text, "p.yaml")


# ------------------------------------------------------------------------------------------------ corpus


def corpus_expectations(path: Path) -> list[tuple[int, str]]:
    out = []
    for raw in path.read_bytes().splitlines():
        m = EXPECT.match(raw)
        if m is None:
            break
        out.append((int(m.group(1)), m.group(2).decode("utf-8").strip()))
    return out


CORPUS_FILES = sorted(CORPUS.glob("loader_*.yaml"))


def test_corpus_is_there() -> None:
    assert len(CORPUS_FILES) >= 14
    for path in CORPUS_FILES:
        assert corpus_expectations(path), f"{path.name} has no '# expect: LINE: message' header"


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_corpus(path: Path, any_loader: type) -> None:
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    diags = exc.value.diagnostics
    for line, substring in corpus_expectations(path):
        assert any(d.mark is not None and d.mark.line == line and substring in d.message for d in diags), (
            f"expected line {line}: {substring!r}; got:\n{exc.value}"
        )
    assert "Traceback" not in str(exc.value)


# ------------------------------------------------------------------------------------------------ scalars


def test_norway_and_other_yaml11_booleans_stay_strings(any_loader: type) -> None:
    doc = load("{NO: [eu-west-1], ON: x}\n")
    assert doc.data == {"NO": ["eu-west-1"], "ON": "x"}
    doc = load("countries:\n  - NO\n  - 'NO'\n  - \"ON\"\n  - YES\n  - OFF\n  - y\n  - n\n  - yes\n  - off\n")
    assert doc.data["countries"] == ["NO", "NO", "ON", "YES", "OFF", "y", "n", "yes", "off"]
    doc = load("routing:\n  NO: [eu-north-1]\n  'ON': [us-east-1]\n  Y: [x]\n")
    assert list(doc.data["routing"]) == ["NO", "ON", "Y"]


def test_true_false_any_case_are_booleans(any_loader: type) -> None:
    assert load("a: true\nb: False\nc: TRUE\nd: fAlSe\ne: 'true'\n").data == {
        "a": True,
        "b": False,
        "c": True,
        "d": False,
        "e": "true",
    }


def test_no_sexagesimal_octal_hex_timestamps_or_specials(any_loader: type) -> None:
    doc = load(
        "a: 1:30\nb: 0755\nc: 2024-01-31\nd: 2024-01-31T10:00:00Z\ne: 0x1f\nf: .inf\ng: .nan\n"
        "h: 1_000\ni: =\n"
    )
    assert doc.data == {
        "a": "1:30",
        "b": "0755",
        "c": "2024-01-31",
        "d": "2024-01-31T10:00:00Z",
        "e": "0x1f",
        "f": ".inf",
        "g": ".nan",
        "h": "1_000",
        "i": "=",
    }


def test_numbers_and_nulls(any_loader: type) -> None:
    doc = load("a: 42\nb: -7\nc: 0\nd: 1.5\ne: 1e3\nf: -0.25\ng: null\nh: ~\ni:\nj: NULL\nk: 'null'\nl: +3\n")
    assert doc.data == {
        "a": 42,
        "b": -7,
        "c": 0,
        "d": 1.5,
        "e": 1000.0,
        "f": -0.25,
        "g": None,
        "h": None,
        "i": None,
        "j": None,
        "k": "null",
        "l": 3,
    }
    assert isinstance(doc.data["a"], int) and isinstance(doc.data["d"], float)


def test_keys_are_their_source_text(any_loader: type) -> None:
    assert load("1: a\ntrue: b\nnull: c\n1.50: d\n'x': e\n").data == {
        "1": "a",
        "true": "b",
        "null": "c",
        "1.50": "d",
        "x": "e",
    }


def test_keys_equal_by_text_are_duplicates(any_loader: type) -> None:
    d = error_of("1: a\n'1': b\n")
    assert d.mark == Mark("p.yaml", 2, 1)
    assert "duplicate key '1' (first defined at line 1)" in d.message


def test_standard_tags_are_allowed(any_loader: type) -> None:
    doc = load(
        "a: !!str 0755\nb: !!int '42'\nc: !!float 2\nd: !!bool 'true'\ne: !!null ''\nf: !!map {x: 1}\n"
        "g: !!seq [1]\n"
    )
    assert doc.data == {"a": "0755", "b": 42, "c": 2.0, "d": True, "e": None, "f": {"x": 1}, "g": [1]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: !!python/name:os.system ''\n", "unsupported YAML tag !!python/name:os.system"),
        ("a: !!binary aGVsbG8=\n", "unsupported YAML tag !!binary"),
        ("a: !!timestamp 2024-01-01\n", "unsupported YAML tag !!timestamp"),
        ("a: !!set {x, y}\n", "unsupported YAML tag !!set"),
        ("a: !Ref other\n", "unsupported YAML tag !Ref"),
        ("a: !<tag:example.com,2024:x> 1\n", "unsupported YAML tag tag:example.com,2024:x"),
        ("a: !!int 0755\n", "'0755' is not a decimal integer"),
        ("a: !!bool on\n", "'on' is not a boolean"),
        ("a: !!float .inf\n", "not a finite decimal number"),
        ("a: !!map x\n", "the tag !!map does not fit"),
        ("a: !!str [1]\n", "the tag !!str does not fit"),
        ("!!python/name:os.system k: 1\n", "unsupported YAML tag"),
    ],
)
def test_bad_tags_are_errors_at_their_line(text: str, message: str, any_loader: type) -> None:
    d = error_of("ok: 1\n" + text)
    assert d.mark is not None and d.mark.line == 2
    assert message in d.message


def test_python_object_tag_does_not_execute(any_loader: type, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    d = error_of(f"a: !!python/object/apply:os.system ['touch {marker}']\n")
    assert "unsupported YAML tag" in d.message
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ structure


def test_marks_and_key_marks(any_loader: type) -> None:
    doc = load("version: 1\nregions:\n  us-east-1:\n    upstream: https://a\n    tags: [x, 'y']\n")
    assert doc.file == "p.yaml"
    assert doc.marks[""] == Mark("p.yaml", 1, 1)
    assert doc.marks["/regions/us-east-1/upstream"] == Mark("p.yaml", 4, 15)
    assert doc.key_marks["/regions/us-east-1/upstream"] == Mark("p.yaml", 4, 5)
    assert doc.marks["/regions/us-east-1/tags/1"] == Mark("p.yaml", 5, 15)
    assert doc.mark_for("/regions/us-east-1/nope/deeper") == doc.marks["/regions/us-east-1"]
    assert doc.key_mark_for("/regions/us-east-1") == Mark("p.yaml", 3, 3)
    assert str(doc.marks["/regions/us-east-1/upstream"]) == "p.yaml:4:15"


def test_pointer_escaping(any_loader: type) -> None:
    doc = load("paths:\n  /api/v1/x~y: {ttl: 5m}\n")
    pointer = join_pointer("/paths", "/api/v1/x~y")
    assert pointer == "/paths/~1api~1v1~1x~0y"
    assert doc.marks[pointer + "/ttl"].line == 2
    assert split_pointer(pointer) == ["paths", "/api/v1/x~y"]
    assert resolve_pointer(doc.data, pointer + "/ttl") == "5m"
    with pytest.raises(KeyError):
        resolve_pointer(doc.data, "/paths/nope")


def test_crlf_bom_and_explicit_markers(any_loader: type) -> None:
    doc = load_yaml_text(b"\xef\xbb\xbf---\r\na: 1\r\nb:\r\n  c: 2\r\n...\r\n", "p.yaml")
    assert doc.data == {"a": 1, "b": {"c": 2}}
    assert doc.marks["/b/c"] == Mark("p.yaml", 4, 6)


def test_anchors_aliases_and_merge_keys(any_loader: type) -> None:
    doc = load(
        "probe: &probe {path: /health, interval: 10s, timeout: 2s}\n"
        "extra: &extra {timeout: 9s, expect: 200}\n"
        "a:\n"
        "  health:\n"
        "    <<: [*probe, *extra]\n"
        "    interval: 5s\n"
        "b: *probe\n"
        "c:\n"
        "  '<<': literal\n"
    )
    assert doc.data["a"]["health"] == {"interval": "5s", "path": "/health", "timeout": "2s", "expect": 200}
    assert doc.data["b"] == {"path": "/health", "interval": "10s", "timeout": "2s"}
    assert doc.data["c"] == {"<<": "literal"}
    # aliased content points at the anchored definition; the explicit key at its own line
    assert doc.marks["/b/path"].line == 1
    assert doc.marks["/a/health/interval"].line == 6
    assert doc.marks["/a/health/expect"].line == 2
    # the result shares no objects between alias sites
    assert doc.data["b"] is not doc.data["probe"]


def test_merge_key_needs_mappings(any_loader: type) -> None:
    d = error_of("a: &a [1]\nb:\n  <<: *a\n")
    assert "'<<' merge key needs a mapping" in d.message


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a: 1\nb:\n  c: 2\n  c: 3\n", 4, "duplicate key 'c' (first defined at line 3)"),
        ("a: 1\na: 2\n", 2, "duplicate key 'a' (first defined at line 1)"),
        ("x:\n  - {k: 1, k: 2}\n", 2, "duplicate key 'k'"),
        ("? [a, b]\n: 1\n", 1, "mapping keys must be scalars"),
        ("a:\n  {x: 1}: 2\n", 2, "mapping keys must be scalars"),
        ("a: *missing\n", 1, "undefined alias"),
        ("a: 1\n\tb: 2\n", 2, "YAML syntax error"),
        ("a: b: c\n", 1, "mapping values are not allowed"),
        ("a: [1, 2\n", 1, "YAML syntax error"),
        ("a: 'open\nb: 2\n", 1, "YAML syntax error"),
        ("- a\n- b\n", 1, "found a list"),
        ("\n\n42\n", 3, "found the scalar '42'"),
        ("a: 1\n---\nb: 2\n", 2, "exactly one YAML document"),
        ("a: 1\n...\n---\nb: 2\n", 3, "exactly one YAML document"),
        ("a: 1\n--- \n", 2, "exactly one YAML document"),
    ],
)
def test_structural_errors_have_line(text: str, line: int, message: str, any_loader: type) -> None:
    d = error_of(text)
    assert d.severity == "error"
    assert d.mark is not None and d.mark.file == "p.yaml" and d.mark.line == line, d
    assert message in d.message


def test_tab_indentation_gets_a_hint(any_loader: type) -> None:
    d = error_of("regions:\n\tus-east-1: x\n")
    assert d.mark == Mark("p.yaml", 2, 1)
    assert "tab" in d.hint


@pytest.mark.parametrize("text", ["", "   \n\n", "# only\n# comments\n", b"", "---\n", "---\n...\n"])
def test_empty(text: str | bytes, any_loader: type) -> None:
    d = error_of(text)
    assert d.message == "policy file is empty"
    assert d.mark == Mark("p.yaml", 1, 1)


# ------------------------------------------------------------------------------------------------ limits


def billion_laughs(levels: int) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused(any_loader: type) -> None:
    d = error_of(billion_laughs(10))
    assert "more than 200000" in d.message
    assert "alias bomb" in d.hint


def test_alias_bomb_in_mapping_values_and_merges(any_loader: type) -> None:
    lines = ["m0: &m0 {" + ", ".join(f"k{j}: v" for j in range(10)) + "}"]
    for i in range(1, 9):
        lines.append(f"m{i}: &m{i} {{" + ", ".join(f"k{j}: *m{i - 1}" for j in range(10)) + "}")
    d = error_of("\n".join(lines) + "\n")
    assert "more than 200000" in d.message


def test_deeply_nested_aliases_are_refused(any_loader: type) -> None:
    lines = ["a0: &a0 [x]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 15)]
    d = error_of("\n".join(lines) + "\n")
    assert "aliases are nested more than" in d.message


def test_moderate_alias_use_is_fine(any_loader: type) -> None:
    doc = load(billion_laughs(4))  # 10**4 nodes: under the limit
    assert len(doc.data["l3"]) == 10 and doc.data["l3"][9][9][9][9] == "lol"


def test_large_documents_without_aliases_are_refused_too() -> (
    None
):  # default loader only: pure Python is slow
    d = error_of("a:\n" + "  - 1\n" * (loader.MAX_NODES + 1))
    assert "more than 200000" in d.message and "alias" not in d.hint


@pytest.mark.parametrize("depth", [150, 5000])
def test_deep_nesting(depth: int, any_loader: type) -> None:
    d = error_of("a: " + "[" * depth + "]" * depth + "\n")
    assert "nest" in d.message
    assert d.mark is not None and d.mark.line == 1


def test_recursive_alias_is_refused(any_loader: type) -> None:
    d = error_of("a: &a {b: *a}\n")
    assert "recursive alias" in d.message


def test_invalid_utf8_nul_and_control_characters(any_loader: type) -> None:
    d = error_of(b"a: 1\nb: caf\xe9\n")
    assert "not valid UTF-8 (byte 0xe9)" in d.message and d.mark == Mark("p.yaml", 2, 7)
    d = error_of(b"a: 1\nb: x\x00y\n\xff\xfe")
    assert "NUL byte" in d.message and d.mark == Mark("p.yaml", 2, 5)
    d = error_of("a: 1\nb: \x07\n")
    assert "U+0007" in d.message and d.mark == Mark("p.yaml", 2, 4)
    d = error_of(bytes(range(256)) * 4)
    assert "binary" in d.message


def test_too_large_is_refused(any_loader: type, tmp_path: Path) -> None:
    big = b"a: " + b"x" * loader.MAX_FILE_BYTES + b"\n"
    assert "too large" in error_of(big).message
    path = tmp_path / "big.yaml"
    path.write_bytes(big)
    with pytest.raises(PolicyError, match="too large"):
        load_yaml_file(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as exc:
        load_yaml_file(tmp_path / "nope.yaml")
    assert "nope.yaml: no such file" in str(exc.value)
    with pytest.raises(PolicyError, match="is a directory"):
        load_policy(tmp_path)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([*"ab: -[]{}'\"&*!|>#\t\n,?%@`~0\\", "NO", "<<", "---", "\n  "]), max_size=40)
)
def test_garbage_never_raises_anything_but_policy_error(pieces: list[str]) -> None:
    text = "".join(pieces)
    try:
        doc = load_yaml_text(text, "fuzz.yaml")
    except PolicyError as e:
        assert e.diagnostics and all(d.severity == "error" for d in e.diagnostics)
    else:
        assert isinstance(doc.data, dict) and "" in doc.marks


# ------------------------------------------------------------------------------------------------ merge


def test_deep_merge_semantics_and_marks() -> None:
    base = load_yaml_text(
        "cache:\n  ttl: 5m\n  vary: [Accept]\n  max: 1MiB\nregions:\n  a: {url: x}\nkeep: 1\n", "base.yaml"
    )
    over = load_yaml_text(
        "cache:\n  ttl: 10m\n  vary: [Origin, Accept]\nregions: []\nnew: {k: v}\n", "over.yaml"
    )
    merged = deep_merge(base, over)
    assert merged.file == "over.yaml"
    assert merged.data == {
        "cache": {"ttl": "10m", "vary": ["Origin", "Accept"], "max": "1MiB"},
        "regions": [],
        "keep": 1,
        "new": {"k": "v"},
    }
    assert merged.marks["/cache/ttl"] == Mark("over.yaml", 2, 8)
    assert merged.marks["/cache/max"] == Mark("base.yaml", 4, 8)
    assert merged.marks["/cache/vary/1"] == Mark("over.yaml", 3, 18)
    assert merged.key_marks["/keep"] == Mark("base.yaml", 7, 1)
    assert merged.key_marks["/new/k"].file == "over.yaml"
    # marks of replaced subtrees are gone
    assert "/regions/a" not in merged.marks and "/regions/a/url" not in merged.key_marks
    assert merged.marks["/cache"].file == "over.yaml"
    # inputs untouched, result not sharing containers
    assert base.data["cache"]["ttl"] == "5m" and base.data["regions"] == {"a": {"url": "x"}}
    assert merged.data["new"] is not over.data["new"]


def test_subtree_and_without() -> None:
    doc = load_yaml_text("a: 1\nenvironments:\n  staging:\n    cache: {ttl: 1m}\n", "p.yaml")
    sub = doc.subtree("/environments/staging")
    assert sub.data == {"cache": {"ttl": "1m"}}
    assert sub.marks["/cache/ttl"] == Mark("p.yaml", 4, 18)
    assert sub.key_marks["/cache"] == Mark("p.yaml", 4, 5)
    rest = doc.without("/environments")
    assert rest.data == {"a": 1}
    assert "/environments" not in rest.marks and "/environments/staging" not in rest.key_marks
    assert doc.data["environments"]  # original untouched
    staged = deep_merge(rest, sub)
    assert staged.data == {"a": 1, "cache": {"ttl": "1m"}}
    assert staged.marks["/cache/ttl"].line == 4


# ------------------------------------------------------------------------------------------------ include


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_include_merges_and_keeps_each_files_marks(tmp_path: Path) -> None:
    write(
        tmp_path / "common" / "regions.yaml", "regions:\n  us: {url: https://us}\n  eu: {url: https://eu}\n"
    )
    write(tmp_path / "common" / "base.yaml", "include: [regions.yaml]\ncache:\n  ttl: 5m\n  max: 1MiB\n")
    write(tmp_path / "common" / "errors.yaml", "errors: {timeout: 504}\ncache: {ttl: 1m}\n")
    top = write(
        tmp_path / "policy.yaml",
        "# top\ninclude:\n  - common/base.yaml\n  - common/errors.yaml\ncache:\n  ttl: 30s\nregions:\n"
        "  eu: {url: https://eu2}\n",
    )
    doc = load_policy(top)
    assert doc.data == {
        "regions": {"us": {"url": "https://us"}, "eu": {"url": "https://eu2"}},
        "cache": {"ttl": "30s", "max": "1MiB"},
        "errors": {"timeout": 504},
    }
    assert "include" not in doc.data and not any(p.startswith("/include") for p in doc.marks)
    assert doc.file == str(top)
    assert doc.marks["/cache/ttl"] == Mark(str(top), 6, 8)
    assert doc.marks["/cache/max"] == Mark(str(tmp_path / "common" / "base.yaml"), 4, 8)
    assert doc.marks["/regions/us/url"].file == str(tmp_path / "common" / "regions.yaml")
    assert doc.marks["/regions/eu/url"].file == str(top)
    assert doc.marks["/errors/timeout"] == Mark(str(tmp_path / "common" / "errors.yaml"), 1, 19)


def test_diamond_include_is_not_a_cycle(tmp_path: Path) -> None:
    write(tmp_path / "d.yaml", "shared: 1\n")
    write(tmp_path / "b.yaml", "include: [d.yaml]\nb: 1\n")
    write(tmp_path / "c.yaml", "include: [d.yaml]\nc: 1\n")
    top = write(tmp_path / "a.yaml", "include: [b.yaml, c.yaml]\na: 1\n")
    assert load_policy(top).data == {"shared": 1, "b": 1, "c": 1, "a": 1}


def test_include_cycle_three_files(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "include: [b.yaml]\n")
    write(tmp_path / "b.yaml", "x: 1\ninclude: [c.yaml]\n")
    write(tmp_path / "c.yaml", "y: 1\nz: 2\ninclude:\n  - a.yaml\n")
    with pytest.raises(PolicyError) as exc:
        load_policy(tmp_path / "a.yaml")
    d = exc.value.diagnostics[0]
    assert d.message == "include cycle: a.yaml -> b.yaml -> c.yaml -> a.yaml"
    assert d.mark == Mark(str(tmp_path / "c.yaml"), 4, 5)


def test_error_inside_included_file_points_into_it(tmp_path: Path) -> None:
    write(tmp_path / "inc.yaml", "a: 1\na: 2\n")
    top = write(tmp_path / "top.yaml", "include: [inc.yaml]\n")
    with pytest.raises(PolicyError) as exc:
        load_policy(top)
    assert exc.value.diagnostics[0].mark == Mark(str(tmp_path / "inc.yaml"), 2, 1)


def test_policy_without_include_is_just_the_file(tmp_path: Path) -> None:
    top = write(tmp_path / "p.yaml", "a: {b: 1}\n")
    doc = load_policy(top)
    assert doc.data == {"a": {"b": 1}} and doc.marks["/a/b"] == Mark(str(top), 1, 8)


# ------------------------------------------------------------------------------------------------ diagnostics


DIAGS = [
    Diagnostic("error", "unknown key 'tll'", Mark("rules/p.yaml", 3, 5), "/cache/tll", "did you mean 'ttl'?"),
    Diagnostic("warning", "100%, really: a\nb", Mark("a,b:c.yaml", 1, 2)),
    Diagnostic("error", "no such file: x.yaml"),
]


def test_text_format() -> None:
    assert format_diagnostics(DIAGS, "text").splitlines() == [
        "rules/p.yaml:3:5: error: unknown key 'tll' [at /cache/tll] (hint: did you mean 'ttl'?)",
        "a,b:c.yaml:1:2: warning: 100%, really: a",
        "b",
        "error: no such file: x.yaml",
    ]
    assert str(PolicyError(DIAGS[0])) == format_diagnostics(DIAGS[:1], "text")
    assert PolicyError(DIAGS).diagnostics == DIAGS


def test_json_format() -> None:
    data = json.loads(format_diagnostics(DIAGS, "json"))
    assert data[0] == {
        "file": "rules/p.yaml",
        "line": 3,
        "col": 5,
        "severity": "error",
        "message": "unknown key 'tll'",
        "pointer": "/cache/tll",
        "hint": "did you mean 'ttl'?",
    }
    assert data[2]["file"] is None and data[2]["line"] is None


def test_github_format_escapes() -> None:
    lines = format_diagnostics(DIAGS, "github").splitlines()
    assert lines == [
        "::error file=rules/p.yaml,line=3,col=5,title=edgerules::unknown key 'tll' [at /cache/tll] "
        "(hint: did you mean 'ttl'?)",
        "::warning file=a%2Cb%3Ac.yaml,line=1,col=2,title=edgerules::100%25, really: a%0Ab",
        "::error title=edgerules::no such file: x.yaml",
    ]


def test_policy_error_needs_a_diagnostic_and_unknown_format_fails() -> None:
    with pytest.raises(ValueError):
        PolicyError([])
    with pytest.raises(ValueError):
        format_diagnostics(DIAGS, "xml")  # type: ignore[arg-type]

"""YAML policy loader: plain JSON-like data plus a JSON pointer -> file:line:col map.

Safe and boring on purpose:

* Only the YAML 1.2 core scalars: ``true``/``false`` (any case) are booleans, ``null``/``~``/empty is
  null, decimal integers without leading zeros are ints, decimal floats are floats. Everything else
  (``yes``, ``NO``, ``on``, ``0755``, ``1:30``, ``2024-01-01``, ``0x1f``, ``.inf``) stays a string.
* Mapping keys must be scalars and become their source text (``1: x`` has the key ``"1"``).
* Tags: only the standard ``!!str !!int !!float !!bool !!null !!map !!seq``; anything else is an error.
* Duplicate keys are an error at the second occurrence.
* Anchors, aliases and ``<<`` merge keys are supported (merge-key semantics: the mapping's own keys win,
  then earlier merge sources win over later ones). Marks of aliased content point at the anchored
  definition. Expansion is bounded: at most ``MAX_NODES`` nodes in total (checked on the node graph before
  anything is expanded), aliases nested at most ``MAX_ALIAS_NESTING`` deep, data nested at most
  ``MAX_DEPTH`` deep, recursive aliases refused.
* ``load_policy`` resolves a top-level ``include:`` list (paths relative to the including file).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from edgerules.diagnostics import Mark, PolicyError

MAX_FILE_BYTES = 5 * 1024 * 1024
MAX_NODES = 200_000
MAX_DEPTH = 100
MAX_ALIAS_NESTING = 10
MAX_INCLUDE_DEPTH = 16

_T = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL, SEQ, MAP = (
    _T + t for t in ("str", "int", "float", "bool", "null", "seq", "map")
)
_SCALAR_TAGS = frozenset({STR, INT, FLOAT, BOOL, NULL})

_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_INT_RE = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_FLOAT_RE = re.compile(r"[-+]?(?:\.[0-9]+|(?:0|[1-9][0-9]*)(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
# Characters YAML does not allow in a stream (same set as PyYAML's reader), plus lone surrogates.
_NON_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_DOC_START = re.compile(r"^---(?:[ \t]|$)", re.MULTILINE)


# --------------------------------------------------------------------------------------------- pointers


def escape_token(token: str) -> str:
    """Escape one JSON pointer reference token (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


def unescape_token(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def join_pointer(pointer: str, token: str | int) -> str:
    return f"{pointer}/{escape_token(str(token))}"


def split_pointer(pointer: str) -> list[str]:
    """``"/a/b~1c"`` -> ``["a", "b/c"]``; ``""`` (the root) -> ``[]``."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ValueError(f"JSON pointer must be empty or start with '/': {pointer!r}")
    return [unescape_token(t) for t in pointer[1:].split("/")]


def resolve_pointer(data: Any, pointer: str) -> Any:
    """The value at ``pointer`` inside ``data``; ``KeyError`` if there is none."""
    node = data
    for token in split_pointer(pointer):
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise KeyError(pointer)
    return node


def _parent(pointer: str) -> str:
    return pointer.rsplit("/", 1)[0]


# --------------------------------------------------------------------------------------------- document


@dataclass(frozen=True)
class LoadedDocument:
    """Loaded policy data (treat as read-only) with the source position of every node."""

    file: str
    data: Any
    marks: Mapping[str, Mark] = field(default_factory=dict)
    key_marks: Mapping[str, Mark] = field(default_factory=dict)

    def mark_for(self, pointer: str) -> Mark | None:
        """The node's mark, else its nearest ancestor's."""
        while True:
            mark = self.marks.get(pointer)
            if mark is not None or pointer == "":
                return mark
            pointer = _parent(pointer)

    def key_mark_for(self, pointer: str) -> Mark | None:
        """The mark of the mapping key naming ``pointer`` (for "unknown key"), else ``mark_for``."""
        return self.key_marks.get(pointer) or self.mark_for(pointer)

    def subtree(self, pointer: str) -> LoadedDocument:
        """The node at ``pointer`` as a document of its own (its pointers rebased to "")."""
        value = resolve_pointer(self.data, pointer)
        marks: dict[str, Mark] = {}
        key_marks: dict[str, Mark] = {}
        data = _copy_with_marks(value, "", self, marks, key_marks, src_prefix=pointer)
        if "" not in marks and (m := self.mark_for(pointer)) is not None:
            marks[""] = m
        return LoadedDocument(self.file, data, MappingProxyType(marks), MappingProxyType(key_marks))

    def without(self, pointer: str) -> LoadedDocument:
        """A copy with the mapping entry at ``pointer`` (not the root) removed."""
        tokens = split_pointer(pointer)
        if not tokens:
            raise ValueError("cannot remove the root")
        marks: dict[str, Mark] = {}
        key_marks: dict[str, Mark] = {}
        data = _copy_with_marks(self.data, "", self, marks, key_marks, skip=pointer)
        return LoadedDocument(self.file, data, MappingProxyType(marks), MappingProxyType(key_marks))


def _copy_with_marks(
    value: Any,
    pointer: str,
    src: LoadedDocument,
    marks: dict[str, Mark],
    key_marks: dict[str, Mark],
    *,
    src_prefix: str = "",
    skip: str | None = None,
) -> Any:
    """Deep-copy ``value`` and copy the marks of every node in it from ``src``.

    ``src_prefix`` is where ``value`` sits in ``src`` (``pointer`` is where it goes in the result); the
    entry at ``skip`` (a source pointer) is left out.
    """
    src_ptr = src_prefix + pointer
    if (m := src.marks.get(src_ptr)) is not None:
        marks[pointer] = m
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            child = join_pointer(pointer, k)
            if src_prefix + child == skip:
                continue
            if (km := src.key_marks.get(src_prefix + child)) is not None:
                key_marks[child] = km
            out[k] = _copy_with_marks(v, child, src, marks, key_marks, src_prefix=src_prefix, skip=skip)
        return out
    if isinstance(value, list):
        return [
            _copy_with_marks(
                v, join_pointer(pointer, i), src, marks, key_marks, src_prefix=src_prefix, skip=skip
            )
            for i, v in enumerate(value)
        ]
    return value


def deep_merge(base: LoadedDocument, overlay: LoadedDocument) -> LoadedDocument:
    """``overlay`` on top of ``base``: mappings merge recursively, lists and scalars replace.

    Marks follow the winner (a merged mapping takes the overlay's mark). The result's ``file`` is the
    overlay's. Neither input is modified.
    """
    marks: dict[str, Mark] = {}
    key_marks: dict[str, Mark] = {}
    data = _merge(base.data, overlay.data, "", base, overlay, marks, key_marks)
    return LoadedDocument(overlay.file, data, MappingProxyType(marks), MappingProxyType(key_marks))


def _merge(
    b_value: Any,
    o_value: Any,
    pointer: str,
    base: LoadedDocument,
    overlay: LoadedDocument,
    marks: dict[str, Mark],
    key_marks: dict[str, Mark],
) -> Any:
    if not (isinstance(b_value, dict) and isinstance(o_value, dict)):
        return _copy_with_marks(o_value, pointer, overlay, marks, key_marks, src_prefix="")
    mark = overlay.marks.get(pointer) or base.marks.get(pointer)
    if mark is not None:
        marks[pointer] = mark
    out: dict[str, Any] = {}
    for k, v in b_value.items():
        child = join_pointer(pointer, k)
        if k in o_value:
            out[k] = _merge(v, o_value[k], child, base, overlay, marks, key_marks)
            km = overlay.key_marks.get(child)
        else:
            out[k] = _copy_with_marks(v, child, base, marks, key_marks)
            km = base.key_marks.get(child)
        if km is not None:
            key_marks[child] = km
    for k, v in o_value.items():
        if k not in b_value:
            child = join_pointer(pointer, k)
            out[k] = _copy_with_marks(v, child, overlay, marks, key_marks)
            if (km := overlay.key_marks.get(child)) is not None:
                key_marks[child] = km
    return out


# --------------------------------------------------------------------------------------------- YAML


def _resolve_plain(value: str) -> str:
    if value in _NULLS:
        return NULL
    if value.lower() in ("true", "false"):
        return BOOL
    if _INT_RE.fullmatch(value):
        return INT
    if _FLOAT_RE.fullmatch(value):
        return FLOAT
    return STR


class _Resolver(BaseResolver):
    """Resolves untagged plain scalars with the YAML 1.2 core rules only (no yes/no/on/off, no 1:30)."""

    def resolve(self, kind: type[Node], value: Any, implicit: Any) -> str:
        if kind is ScalarNode:
            return _resolve_plain(value) if implicit[0] else STR
        return SEQ if kind is SequenceNode else MAP


class _PyLoader(Reader, Scanner, Parser, Composer, _Resolver):
    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        _Resolver.__init__(self)


_LOADERS: list[type] = []
try:
    from yaml._yaml import CParser
except ImportError:  # PyYAML built without libyaml
    pass
else:

    class _CLoader(CParser, _Resolver):
        """libyaml's parser and composer (keeps marks) with our resolver: much faster than pure Python."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _Resolver.__init__(self)

    _LOADERS.append(_CLoader)
_LOADERS.append(_PyLoader)
_Loader: type = _LOADERS[0]  # tests swap this to cover the pure-Python path


def _mark(file: str, ymark: Any) -> Mark:
    return Mark(file, ymark.line + 1, ymark.column + 1)


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_T) :] if tag.startswith(_T) else tag


def _mark_at_offset(file: str, text: str, offset: int) -> Mark:
    line_start = text.rfind("\n", 0, offset) + 1
    return Mark(file, text.count("\n", 0, offset) + 1, offset - line_start + 1)


def _decode(data: bytes, file: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        col = len(data[line_start : e.start].decode("utf-8", "replace")) + 1
        raise PolicyError.at(
            Mark(file, data.count(b"\n", 0, e.start) + 1, col),
            f"file is not valid UTF-8 (byte 0x{data[e.start]:02x})",
            hint="policy files must be UTF-8 text",
        ) from None
    return text


def load_yaml_text(text: str | bytes, filename: str) -> LoadedDocument:
    """Parse one YAML document that must be a mapping; raises ``PolicyError`` with file:line:col."""
    size = len(text)
    if size > MAX_FILE_BYTES:
        raise PolicyError.at(
            None, f"{filename}: policy file is too large ({size} bytes, limit {MAX_FILE_BYTES})"
        )
    if isinstance(text, bytes):
        if (nul := text.find(b"\0")) >= 0:  # before decoding: binary files usually fail UTF-8 later on
            text = text[:nul].decode("utf-8", "replace") + "\0"
        else:
            text = _decode(text, filename)
    text = text.removeprefix("\ufeff")
    if (bad := _NON_PRINTABLE.search(text)) is not None:
        ch = bad.group()
        what = "a NUL byte" if ch == "\0" else f"the control character U+{ord(ch):04X}"
        raise PolicyError.at(
            _mark_at_offset(filename, text, bad.start()),
            f"file contains {what}; is it a binary file?",
            hint="policy files must be UTF-8 text",
        )
    root = _compose(text, filename)
    if root is None or (isinstance(root, ScalarNode) and root.tag == NULL and root.value == ""):
        raise PolicyError.at(Mark(filename, 1, 1), "policy file is empty")
    if not isinstance(root, MappingNode):
        found = "a list" if isinstance(root, SequenceNode) else f"the scalar {root.value[:40]!r}"
        raise PolicyError.at(
            _mark(filename, root.start_mark),
            f"a policy must be a mapping (key: value pairs) at the top level, found {found}",
        )
    conv = _Converter(filename)
    conv.check_size(root)
    data = conv.convert(root, "", 0, 0)
    return LoadedDocument(filename, data, MappingProxyType(conv.marks), MappingProxyType(conv.key_marks))


def _compose(text: str, file: str) -> Node | None:
    loader = _Loader(text)
    try:
        if not loader.check_node():
            return None
        root: Node = loader.get_node()
        if loader.check_node():
            raise PolicyError.at(
                _second_document_mark(text, file, root),
                "a policy file must hold exactly one YAML document, found a second one",
                hint="remove the '---' separator or split the documents into separate files",
            )
        return root
    except yaml.MarkedYAMLError as e:
        raise _syntax_error(e, text, file) from None
    except yaml.reader.ReaderError as e:  # normally caught by the NON_PRINTABLE scan above
        raise PolicyError.at(_mark_at_offset(file, text, e.position), f"YAML error: {e.reason}") from None
    except RecursionError:
        raise PolicyError.at(Mark(file, 1, 1), "YAML nesting is too deep") from None
    finally:
        dispose = getattr(loader, "dispose", None)
        if dispose is not None:
            dispose()


def _second_document_mark(text: str, file: str, first: Node) -> Mark:
    lines_before = first.end_mark.line
    offset = 0
    for _ in range(lines_before):  # skip to the line where the first document's node ends
        offset = text.find("\n", offset) + 1
    m = _DOC_START.search(text, offset)
    if m is not None:
        return _mark_at_offset(file, text, m.start())
    return Mark(file, first.end_mark.line + 1, 1)


def _syntax_error(e: yaml.MarkedYAMLError, text: str, file: str) -> PolicyError:
    problem = (e.problem or e.context or "invalid YAML").strip()
    at_eof = e.problem_mark is None or _at_end(text, e.problem_mark.line, e.problem_mark.column)
    # An unclosed quote or bracket fails at the end of the file: report where the construct started.
    ymark = (e.context_mark if at_eof else None) or e.problem_mark or e.context_mark
    mark = _mark(file, ymark) if ymark is not None else None
    message = f"YAML syntax error: {problem}"
    if e.context and e.problem and e.context_mark is not None:
        cm = e.context_mark
        message += f" ({e.context} at line {cm.line + 1}, column {cm.column + 1})"
    hint = ""
    lines = text.splitlines()
    if mark is not None and mark.line <= len(lines):
        line = lines[mark.line - 1]
        if "\t" in line[: max(mark.col, 1)] or "tab" in problem:
            hint = "YAML does not allow tab characters for indentation; indent with spaces"
    return PolicyError.at(mark, message, hint=hint)


def _at_end(text: str, line: int, column: int) -> bool:
    """Is (0-based) line:column at the end of ``text``, give or take whitespace?"""
    offset = 0
    for _ in range(line):
        offset = text.find("\n", offset) + 1
        if offset == 0:
            return True
    return not text[offset + column :].strip()


def _is_merge_key(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.value == "<<" and not node.style and node.tag == STR


class _Converter:
    """Node graph -> plain data, recording marks and enforcing the expansion limits."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.marks: dict[str, Mark] = {}
        self.key_marks: dict[str, Mark] = {}
        self.count = 0
        self.seen: set[int] = set()  # nodes already converted once: meeting one again means an alias
        self.active: set[int] = set()  # collections on the current path (recursive alias detection)
        self.used_alias = False

    def error(self, node: Node, message: str, hint: str = "", pointer: str = "") -> PolicyError:
        return PolicyError.at(_mark(self.file, node.start_mark), message, pointer=pointer, hint=hint)

    def check_size(self, root: Node) -> None:
        """Refuse alias bombs before expanding anything: the expanded size is computed on the node graph."""
        sizes: dict[int, int] = {}
        culprit: list[Node] = []
        aliased: list[int] = []

        def size(node: Node, depth: int) -> int:
            if depth > MAX_DEPTH:
                raise self.error(node, f"data is nested more than {MAX_DEPTH} levels deep")
            nid = id(node)
            if (known := sizes.get(nid)) is not None:
                aliased.append(nid)
                return known
            if isinstance(node, ScalarNode):
                return 1
            if nid in self.active:
                raise self.error(node, "recursive alias: a node contains itself")
            self.active.add(nid)
            children = node.value if isinstance(node, SequenceNode) else [v for _, v in node.value]
            total = 1 + sum(size(child, depth + 1) for child in children)
            self.active.discard(nid)
            if total > MAX_NODES and not culprit:
                culprit.append(node)
            sizes[nid] = total
            return total

        total = size(root, 0)
        if total > MAX_NODES:
            how, hint = (
                ("expands to", "an alias bomb?")
                if aliased
                else ("has", "split the policy into smaller files")
            )
            raise self.error(culprit[0], f"document {how} {total} nodes, more than {MAX_NODES}", hint=hint)

    def tick(self, node: Node, pointer: str) -> None:
        self.count += 1
        if self.count > MAX_NODES:
            why = " (an alias bomb?)" if self.used_alias else ""
            raise self.error(node, f"document expands to more than {MAX_NODES} nodes{why}", pointer=pointer)

    def convert(self, node: Node, pointer: str, depth: int, alias_depth: int) -> Any:
        self.tick(node, pointer)
        if depth > MAX_DEPTH:
            raise self.error(node, f"data is nested more than {MAX_DEPTH} levels deep", pointer=pointer)
        nid = id(node)
        if nid in self.seen:
            self.used_alias = True
            alias_depth += 1
            if alias_depth > MAX_ALIAS_NESTING:
                raise self.error(
                    node, f"aliases are nested more than {MAX_ALIAS_NESTING} levels deep", pointer=pointer
                )
        else:
            self.seen.add(nid)
        self.marks[pointer] = _mark(self.file, node.start_mark)
        if isinstance(node, ScalarNode):
            return self.scalar(node, pointer)
        if nid in self.active:
            raise self.error(node, "recursive alias: a node contains itself", pointer=pointer)
        self.active.add(nid)
        try:
            if isinstance(node, SequenceNode):
                self.check_tag(node, SEQ, pointer)
                return [
                    self.convert(item, join_pointer(pointer, i), depth + 1, alias_depth)
                    for i, item in enumerate(node.value)
                ]
            if not isinstance(node, MappingNode):  # the composer builds only scalars, sequences and mappings
                raise self.error(node, f"unsupported YAML node {type(node).__name__}", pointer=pointer)
            self.check_tag(node, MAP, pointer)
            out: dict[str, Any] = {}
            for key, key_node, value_node in self.pairs(node, pointer, 0):
                child = join_pointer(pointer, key)
                self.key_marks[child] = _mark(self.file, key_node.start_mark)
                out[key] = self.convert(value_node, child, depth + 1, alias_depth)
            return out
        finally:
            self.active.discard(nid)

    def check_tag(self, node: Node, expected: str, pointer: str) -> None:
        if node.tag == expected:
            return
        if node.tag in _SCALAR_TAGS | {SEQ, MAP}:
            raise self.error(node, f"the tag {_short_tag(node.tag)} does not fit this node", pointer=pointer)
        raise self.error(
            node,
            f"unsupported YAML tag {_short_tag(node.tag)}",
            hint="policies use plain YAML values only; remove the tag",
            pointer=pointer,
        )

    def pairs(self, node: MappingNode, pointer: str, merge_depth: int) -> Iterator[tuple[str, Node, Node]]:
        """The mapping's entries with ``<<`` merges flattened; duplicate explicit keys are errors."""
        first: dict[str, Node] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            if _is_merge_key(key_node):
                merges.append(value_node)
                continue
            key = self.key_text(key_node, pointer)
            if key in first:
                line = first[key].start_mark.line + 1
                raise self.error(
                    key_node,
                    f"duplicate key {key!r} (first defined at line {line})",
                    hint="each key may appear only once in a mapping",
                    pointer=join_pointer(pointer, key),
                )
            first[key] = key_node
            yield key, key_node, value_node
        for merge_value in merges:
            for key, key_node, value_node in self.merge_sources(merge_value, pointer, merge_depth):
                if key not in first:
                    first[key] = key_node
                    yield key, key_node, value_node

    def merge_sources(self, value: Node, pointer: str, merge_depth: int) -> Iterator[tuple[str, Node, Node]]:
        self.used_alias = True
        if merge_depth >= MAX_ALIAS_NESTING:
            raise self.error(value, f"merge keys are nested more than {MAX_ALIAS_NESTING} levels deep")
        sources = value.value if isinstance(value, SequenceNode) else [value]
        for src in sources:
            if not isinstance(src, MappingNode):
                raise self.error(
                    src, "a '<<' merge key needs a mapping or a list of mappings", pointer=pointer
                )
            if id(src) in self.active:
                raise self.error(src, "recursive alias: a mapping merges itself", pointer=pointer)
            self.active.add(id(src))
            try:
                for entry in self.pairs(src, pointer, merge_depth + 1):
                    self.tick(src, pointer)
                    yield entry
            finally:
                self.active.discard(id(src))

    def key_text(self, key_node: Node, pointer: str) -> str:
        if not isinstance(key_node, ScalarNode):
            raise self.error(
                key_node,
                "mapping keys must be scalars, not a list or mapping",
                hint="complex keys ('? ' or '[a, b]: x') are not supported",
                pointer=pointer,
            )
        if key_node.tag not in _SCALAR_TAGS:
            self.check_tag(key_node, STR, pointer)
        return str(key_node.value)

    def scalar(self, node: ScalarNode, pointer: str) -> Any:
        tag, value = node.tag, node.value
        if tag == STR:
            return value
        if tag == NULL:
            if value in _NULLS:
                return None
            raise self.error(
                node, f"{value!r} is not null; null is written null, ~ or nothing", pointer=pointer
            )
        if tag == BOOL:
            if value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise self.error(node, f"{value!r} is not a boolean; write true or false", pointer=pointer)
        if tag == INT:
            if _INT_RE.fullmatch(value) and len(value) <= 100:
                return int(value)
            raise self.error(node, f"{value!r} is not a decimal integer (or is too long)", pointer=pointer)
        if tag == FLOAT:
            if _FLOAT_RE.fullmatch(value) and len(value) <= 100:
                number = float(value)
                if number not in (float("inf"), float("-inf")):
                    return number
            raise self.error(node, f"{value!r} is not a finite decimal number", pointer=pointer)
        self.check_tag(node, STR, pointer)  # raises: unsupported tag
        return value


# --------------------------------------------------------------------------------------------- files


def load_yaml_file(path: str | os.PathLike[str]) -> LoadedDocument:
    """Read and parse one policy file (no ``include:`` processing)."""
    file = os.fspath(path)
    try:
        # non-blocking: a FIFO at the path must not hang the loader (it is refused just below)
        with os.fdopen(os.open(file, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise PolicyError.at(None, f"{file}: not a regular file")
            size = info.st_size
            if size > MAX_FILE_BYTES:
                raise PolicyError.at(
                    None, f"{file}: policy file is too large ({size} bytes, limit {MAX_FILE_BYTES})"
                )
            data = f.read(MAX_FILE_BYTES + 1)  # bounded even for /dev/zero-like files
    except FileNotFoundError:
        raise PolicyError.at(None, f"{file}: no such file") from None
    except IsADirectoryError:
        raise PolicyError.at(None, f"{file}: is a directory, not a policy file") from None
    except OSError as e:
        raise PolicyError.at(None, f"{file}: cannot read: {e.strerror or e}") from None
    return load_yaml_text(data, file)


def load_policy(path: str | os.PathLike[str]) -> LoadedDocument:
    """``load_yaml_file`` plus ``include:`` resolution.

    ``include`` is an optional top-level list of paths relative to the including file. Included files are
    loaded (recursively; cycles are an error) and merged in order, then the including file is merged on top
    of them. Marks keep the file each node came from; ``include`` is removed from the result.
    """
    file = os.fspath(path)
    return _load_with_includes(file, (os.path.realpath(file),), {})


def _load_with_includes(
    file: str, stack: tuple[str, ...], cache: dict[str, LoadedDocument]
) -> LoadedDocument:
    doc = load_yaml_file(file)
    if "include" not in doc.data:
        return doc
    entries = doc.data["include"]
    if not isinstance(entries, list) or not all(isinstance(e, str) and e for e in entries):
        raise PolicyError.at(
            doc.mark_for("/include"),
            "include must be a list of file paths",
            pointer="/include",
            hint="include: [common.yaml, regions.yaml]",
        )
    base: LoadedDocument | None = None
    for i, entry in enumerate(entries):
        pointer = f"/include/{i}"
        target = os.path.normpath(os.path.join(os.path.dirname(file), entry))
        real = os.path.realpath(target)
        if real in stack:
            chain = [*stack[stack.index(real) :], real]
            raise PolicyError.at(
                doc.mark_for(pointer),
                "include cycle: " + " -> ".join(os.path.basename(p) for p in chain),
                pointer=pointer,
            )
        if len(stack) >= MAX_INCLUDE_DEPTH:
            raise PolicyError.at(doc.mark_for(pointer), f"includes nested more than {MAX_INCLUDE_DEPTH} deep")
        if not os.path.isfile(target):
            raise PolicyError.at(
                doc.mark_for(pointer),
                f"included file {entry!r} not found: no such file {target}",
                pointer=pointer,
            )
        included = cache.get(real)
        if included is None:
            included = cache[real] = _load_with_includes(target, (*stack, real), cache)
        base = included if base is None else deep_merge(base, included)
    own = doc.without("/include")
    return own if base is None else deep_merge(base, own)

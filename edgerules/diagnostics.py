"""Diagnostics: where a policy problem is (file:line:col + JSON pointer) and how to print it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from edgerules.kinds import EdgeRulesError

Severity = Literal["error", "warning"]
Format = Literal["text", "json", "github"]


@dataclass(frozen=True, slots=True)
class Mark:
    """A position in a source file; line and col are 1-based."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    severity: Severity
    message: str
    mark: Mark | None = None
    pointer: str = ""  # JSON pointer of the offending node, e.g. "/regions/us-east-1/upstream"
    hint: str = ""  # how to fix it, e.g. "did you mean 'ttl'?"

    def __str__(self) -> str:
        return _text_line(self)


class PolicyError(EdgeRulesError):
    """A policy could not be loaded or compiled; carries one or more diagnostics.

    ``str(err)`` is the text format, one diagnostic per line.
    """

    diagnostics: list[Diagnostic]

    def __init__(self, diagnostics: Diagnostic | Sequence[Diagnostic]) -> None:
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics = list(diagnostics)
        if not self.diagnostics:
            raise ValueError("PolicyError needs at least one diagnostic")
        super().__init__(format_diagnostics(self.diagnostics, "text"))

    @classmethod
    def at(cls, mark: Mark | None, message: str, *, pointer: str = "", hint: str = "") -> PolicyError:
        """Shorthand for an error with a single diagnostic."""
        return cls(Diagnostic("error", message, mark, pointer, hint))


def format_diagnostics(diags: Sequence[Diagnostic], fmt: Format) -> str:
    """Render diagnostics as ``text`` (one per line), ``json`` (a list) or ``github`` workflow commands."""
    if fmt == "text":
        return "\n".join(_text_line(d) for d in diags)
    if fmt == "json":
        return json.dumps([_json_obj(d) for d in diags], indent=2)
    if fmt == "github":
        return "\n".join(_github_line(d) for d in diags)
    raise ValueError(f"unknown diagnostics format {fmt!r} (expected text, json or github)")


def _body(d: Diagnostic) -> str:
    text = d.message
    if d.pointer:
        text += f" [at {d.pointer}]"
    if d.hint:
        text += f" (hint: {d.hint})"
    return text


def _text_line(d: Diagnostic) -> str:
    prefix = f"{d.mark}: " if d.mark is not None else ""
    return f"{prefix}{d.severity}: {_body(d)}"


def _json_obj(d: Diagnostic) -> dict[str, object]:
    return {
        "file": d.mark.file if d.mark else None,
        "line": d.mark.line if d.mark else None,
        "col": d.mark.col if d.mark else None,
        "severity": d.severity,
        "message": d.message,
        "pointer": d.pointer,
        "hint": d.hint,
    }


def _escape_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(s: str) -> str:
    return _escape_data(s).replace(":", "%3A").replace(",", "%2C")


def _github_line(d: Diagnostic) -> str:
    props = []
    if d.mark is not None:
        props += [
            f"file={_escape_property(d.mark.file)}",
            f"line={d.mark.line}",
            f"col={d.mark.col}",
        ]
    props.append("title=edgerules")
    return f"::{d.severity} {','.join(props)}::{_escape_data(_body(d))}"

"""JSON Schema validation of a loaded policy: every problem at its file:line:col, in plain words.

`schemas/policy.schema.json` is the single source of truth for what a policy may say. jsonschema's own messages
("Additional properties are not allowed ('tll' was unexpected)") are rewritten here into ones people act on
("unknown key 'tll' in cache.rules[0]; did you mean 'ttl'?"), positioned at the offending key (unknown keys,
bad mapping keys) or value (everything else). Schemas may carry an `x-expected` annotation: a noun phrase for
"expected ..., got ..." messages, which editors ignore.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError, best_match

from edgerules.diagnostics import Diagnostic
from edgerules.policy.loader import LoadedDocument, join_pointer
from edgerules.units import check_method, parse_duration, parse_size, suggest_method

_MAX_SHOWN = 60
_IDENT = re.compile(r"[A-Za-z0-9_-]+")
_TYPE_NOUNS = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


def load_schema() -> dict[str, Any]:
    """The policy JSON Schema (a fresh copy: callers may modify it)."""
    schema: dict[str, Any] = json.loads(_schema_text())
    return schema


@functools.cache
def _schema_text() -> str:
    return resources.files("edgerules").joinpath("schemas", "policy.schema.json").read_text("utf-8")


@functools.cache
def _validator() -> Draft202012Validator:
    # The schema ships with the package and tests/unit/policy/test_schema.py checks it against the meta-schema; checking it
    # again here cost every `edgerules validate` more than all the imports together.
    schema = load_schema()
    checker = FormatChecker(formats=())
    checker.checks("edgerules-cidr", raises=ValueError)(
        _checking(lambda v: ipaddress.ip_network(v, strict=True))
    )
    checker.checks("edgerules-duration", raises=ValueError)(_checking(parse_duration))
    checker.checks("edgerules-size", raises=ValueError)(_checking(parse_size))
    checker.checks("edgerules-method", raises=ValueError)(_checking(check_method))
    return Draft202012Validator(schema, format_checker=checker)


def _checking(parse: Callable[[str], object]) -> Callable[[object], bool]:
    """A format check: ``parse`` raises ValueError for a bad string; ``${env:...}`` is checked after substitution."""

    def check(value: object) -> bool:
        if isinstance(value, str) and "${env:" not in value:
            parse(value)
        return True

    return check


def validate_document(doc: LoadedDocument) -> list[Diagnostic]:
    """Check ``doc`` against the policy schema; errors sorted by position, one per problem."""
    try:
        errors = list(_validator().iter_errors(doc.data))
    except RecursionError:
        return [Diagnostic("error", "the policy is nested too deeply to check", doc.mark_for(""))]
    typos = _typos(errors)
    diags: list[Diagnostic] = []
    for error in errors:
        diags.extend(_safe_diagnose(error, doc, typos))
    return sorted(_dedupe(diags), key=_position)


def _dedupe(diags: list[Diagnostic]) -> list[Diagnostic]:
    """One diagnostic per problem: drop repeats, and a message another one at the same node extends."""
    by_node: dict[str, list[Diagnostic]] = {}
    for d in diags:
        same_node = by_node.setdefault(d.pointer, [])
        if any(o.message.startswith(d.message) for o in same_node):
            continue
        same_node[:] = [o for o in same_node if not d.message.startswith(o.message)]
        same_node.append(d)
    return [d for same_node in by_node.values() for d in same_node]


def _position(d: Diagnostic) -> tuple[int, str, int, int]:
    if d.mark is None:
        return (1, "", 0, 0)
    return (0, d.mark.file, d.mark.line, d.mark.col)


def _typos(errors: Iterable[ValidationError]) -> dict[str, set[str]]:
    """Object pointer -> the known keys its unknown keys look like (``tll`` -> ``ttl``)."""
    out: dict[str, set[str]] = {}
    for error in errors:
        schema = error.schema if isinstance(error.schema, dict) else {}
        if error.validator == "additionalProperties" and schema.get("additionalProperties") is False:
            allowed = list(schema.get("properties", {}))
            instance = error.instance if isinstance(error.instance, dict) else {}
            guesses = {_did_you_mean(str(k), allowed) for k in instance if k not in allowed}
            out.setdefault(_pointer(error.absolute_path), set()).update(g for g in guesses if g)
    return out


def _safe_diagnose(
    error: ValidationError, doc: LoadedDocument, typos: dict[str, set[str]]
) -> list[Diagnostic]:
    try:
        return list(_diagnose(error, doc, typos))
    except Exception:  # never let a message-formatting bug hide the problem itself
        pointer = _pointer(error.absolute_path)
        return [
            Diagnostic(
                "error", f"{_where(error.absolute_path)}: {error.message}", doc.mark_for(pointer), pointer
            )
        ]


# ------------------------------------------------------------------------------------------------ messages


def _diagnose(
    error: ValidationError, doc: LoadedDocument, typos: dict[str, set[str]]
) -> Iterator[Diagnostic]:
    path = list(error.absolute_path)
    pointer = _pointer(path)
    where = _where(path)
    schema: dict[str, Any] = error.schema if isinstance(error.schema, dict) else {}
    keyword = error.validator
    value = error.instance

    if keyword == "additionalProperties" and schema.get("additionalProperties") is False:
        yield from _unknown_keys(value, schema, path, doc)
        return
    if "propertyNames" in error.relative_schema_path:
        key_pointer = join_pointer(pointer, str(value))
        message, hint = _value_problem(error, schema, value)
        if keyword != "enum":
            message = f"{_show(value)} is not {schema.get('x-expected') or 'allowed here'}"
        yield Diagnostic(
            "error",
            f"{where}: key {message}",
            doc.key_marks.get(key_pointer) or doc.mark_for(pointer),
            key_pointer,
            hint,
        )
        return
    if keyword == "required":
        required = error.validator_value if isinstance(error.validator_value, list) else []
        for key in required:
            # A misspelt key is reported once, as unknown with "did you mean", not also as missing.
            if isinstance(value, dict) and key not in value and key not in typos.get(pointer, ()):
                yield Diagnostic(
                    "error",
                    f"missing required key '{key}' in {where}",
                    doc.key_marks.get(pointer) or doc.mark_for(pointer),
                    pointer,
                )
        return
    if keyword in ("anyOf", "oneOf") and _should_descend(error, schema):
        inner = [e for e in error.context if _is_inner(e)]
        best = best_match(inner)
        if best is not None:
            branch = best.relative_schema_path[0]
            for sub in inner:
                if sub.relative_schema_path[0] == branch:
                    yield from _diagnose(sub, doc, typos)
            return
    if keyword == "uniqueItems" and isinstance(value, list):
        yield from _duplicates(value, path, doc)
        return
    message, hint = _value_problem(error, schema, value)
    yield Diagnostic("error", f"{where}: {message}", doc.mark_for(pointer), pointer, hint)


def _should_descend(error: ValidationError, schema: dict[str, Any]) -> bool:
    """A mapping or list that fits one branch's type: its inner problem is the useful one."""
    if "x-expected" in schema and not isinstance(error.instance, dict | list):
        return False
    return any(_is_inner(e) for e in error.context)


def _is_inner(error: ValidationError) -> bool:
    """Not just "this branch wants another type": a problem inside a value of the branch's type (a list or
    mapping measured against a constant such as `any` is of another type too)."""
    if error.validator in ("const", "enum") and isinstance(error.instance, dict | list):
        return len(error.relative_path) > 0
    return error.validator != "type" or len(error.relative_path) > 0


def _unknown_keys(
    value: Any, schema: dict[str, Any], path: list[str | int], doc: LoadedDocument
) -> Iterator[Diagnostic]:
    allowed = list(schema.get("properties", {}))
    where = _where(path, top="the top level")
    pointer = _pointer(path)
    for key in value:
        if key in allowed:
            continue
        key_pointer = join_pointer(pointer, str(key))
        message = f"unknown key '{key}' in {where}"
        guess = _did_you_mean(str(key), allowed)
        if guess:
            message += f"; did you mean '{guess}'?"
        hint = f"allowed keys: {', '.join(allowed)}" if allowed else "no keys are allowed here"
        yield Diagnostic(
            "error", message, doc.key_marks.get(key_pointer) or doc.mark_for(pointer), key_pointer, hint
        )


def _duplicates(items: list[Any], path: list[str | int], doc: LoadedDocument) -> Iterator[Diagnostic]:
    seen: list[Any] = []
    for index, item in enumerate(items):
        if any(_same(item, other) for other in seen):
            pointer = _pointer([*path, index])
            yield Diagnostic(
                "error",
                f"{_where(path)}: {_show(item)} is listed more than once",
                doc.mark_for(pointer),
                pointer,
            )
        else:
            seen.append(item)


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _value_problem(error: ValidationError, schema: dict[str, Any], value: Any) -> tuple[str, str]:
    """(message without the location, hint) for a problem with one value."""
    message, hint = _value_problem_text(error, schema, value)
    if not hint and isinstance(value, str) and (guess := _unit_suggestion(schema, value)):
        hint = f"did you mean {guess!r}?"
    return message, hint


def _unit_suggestion(schema: dict[str, Any], value: str) -> str | None:
    """A near-miss duration or size (`5 min`, `10M`) rewritten the way the parsers take it."""
    from edgerules.units import suggest_duration, suggest_size

    branches = [schema, *(b for b in schema.get("anyOf", []) if isinstance(b, dict))]
    formats = {b.get("format") for b in branches}
    if "edgerules-duration" in formats:
        return suggest_duration(value)
    if "edgerules-size" in formats:
        return suggest_size(value)
    return None


def _value_problem_text(error: ValidationError, schema: dict[str, Any], value: Any) -> tuple[str, str]:
    keyword = error.validator
    expected = schema.get("x-expected")
    shown = _show(value)
    if keyword == "enum":
        choices = [str(c) for c in error.validator_value] if isinstance(error.validator_value, list) else []
        what = expected or "a valid value"
        guess = _did_you_mean(str(value), choices) if isinstance(value, str) else None
        return (
            f"{shown} is not {what}; allowed: {', '.join(choices)}",
            f"did you mean '{guess}'?" if guess else "",
        )
    if keyword == "format":
        cause = f" ({error.cause})" if error.cause else ""
        guess = (
            suggest_method(value)
            if error.validator_value == "edgerules-method" and isinstance(value, str)
            else None
        )
        return (
            f"expected {expected or error.validator_value}, got {shown}{cause}",
            f"did you mean '{guess}'?" if guess else "",
        )
    if expected and keyword in ("anyOf", "oneOf"):
        return f"expected {expected}, got {shown}{_format_cause(error.context)}", ""
    if expected and keyword in ("minProperties", "maxProperties") and isinstance(value, dict):
        return f"expected {expected}, got {', '.join(map(str, value)) or 'no keys'}", ""
    if expected and keyword in ("type", "pattern", "const"):
        return f"expected {expected}, got {shown}", ""
    if expected and keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"expected {expected}, got {shown}", ""
    limit: Any = error.validator_value  # set on every error iter_errors yields (the stubs allow Unset)
    match keyword:
        case "type":
            types = limit if isinstance(limit, list) else [limit]
            return f"expected {' or '.join(_TYPE_NOUNS.get(t, str(t)) for t in types)}, got {shown}", ""
        case "minimum":
            return f"must be at least {limit}, got {shown}", ""
        case "maximum":
            return f"must be at most {limit}, got {shown}", ""
        case "exclusiveMinimum":
            return f"must be more than {limit}, got {shown}", ""
        case "exclusiveMaximum":
            return f"must be less than {limit}, got {shown}", ""
        case "minItems":
            return ("must not be empty" if limit == 1 else f"must have at least {limit} items"), ""
        case "maxItems":
            return f"must have at most {limit} items", ""
        case "minLength":
            return ("must not be empty" if limit == 1 else f"must be at least {limit} characters long"), ""
        case "maxLength":
            return f"must be at most {limit} characters long", ""
        case "minProperties":
            return ("must not be empty" if limit == 1 else f"must have at least {limit} entries"), ""
        case "maxProperties":
            return f"must have at most {limit} entries", ""
        case "pattern":
            return f"expected a string matching {limit}, got {shown}", ""
        case "const":
            return f"expected {_show(limit)}, got {shown}", ""
        case "anyOf" | "oneOf":
            return f"expected {_describe_branches(limit)}, got {shown}", ""
    return error.message, ""


def _format_cause(errors: Iterable[ValidationError]) -> str:
    """The parser's own reason (e.g. "units must go from largest to smallest") when a format check failed."""
    for e in errors:
        if e.validator == "format" and e.cause is not None:
            reason = str(e.cause).split("; expected", 1)[0]
            return f" ({reason})"
    return ""


def _describe_branches(branches: Iterable[Any]) -> str:
    nouns = []
    for branch in branches:
        if isinstance(branch, dict):
            noun = (
                branch.get("x-expected") or branch.get("title") or _TYPE_NOUNS.get(branch.get("type", ""), "")
            )
            if noun:
                nouns.append(str(noun))
    return " or ".join(nouns) or "a different value"


def _did_you_mean(word: str, choices: Sequence[str]) -> str | None:
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered and lowered[word.lower()] != word:
        return lowered[word.lower()]
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        text = value if len(value) <= _MAX_SHOWN else value[: _MAX_SHOWN - 3] + "..."
        return repr(text)
    return repr(value)


# ------------------------------------------------------------------------------------------------ locations


def _pointer(path: Iterable[str | int]) -> str:
    pointer = ""
    for token in path:
        pointer = join_pointer(pointer, str(token))
    return pointer


def _where(path: Iterable[str | int], top: str = "the policy") -> str:
    """A readable location: ``cache.rules[0].ttl``, ``routing.countries.NO``, ``headers.security["a b"]``."""
    out = ""
    for token in path:
        if isinstance(token, int):
            out += f"[{token}]"
        elif _IDENT.fullmatch(token):
            out += f".{token}" if out else token
        else:
            out += f"[{json.dumps(token)}]"
    return out or top

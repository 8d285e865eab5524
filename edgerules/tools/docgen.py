"""Generate docs/policy-reference.md from the policy JSON Schema.

    python -m edgerules.tools.docgen > docs/policy-reference.md      # regenerate
    python -m edgerules.tools.docgen --check [docs/policy-reference.md]  # exit 1 when the file is stale

One section per top-level key with a table of every field (nested objects flattened to dotted names, lists as
`[]`, maps as `<name>`), then the shared types (duration, size, match ...) that the tables link to. A definition
used in one place only is expanded in place; one used in several places (or a scalar type) gets its own entry.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Schema = dict[str, Any]

_NOUNS = {
    "object": "mapping",
    "array": "list",
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
    "null": "null",
}
_SKIP_DEFS = frozenset({"complete_policy"})
DEFAULT_OUTPUT = Path("docs/policy-reference.md")


def render_reference(schema: Schema) -> str:
    """The Markdown reference for ``schema`` (deterministic: same schema, same text)."""
    return "\n".join(_Renderer(schema).render()) + "\n"


class _Renderer:
    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.defs: dict[str, Schema] = schema.get("$defs", {})
        self.sections: dict[str, str] = {}  # def name -> top-level key whose section documents it
        for key, prop in schema.get("properties", {}).items():
            name = _ref_name(prop) or _ref_name(prop.get("items", {}))
            if name and self._is_structured(self.defs[name]):
                self.sections.setdefault(name, key)
        self.ref_counts = Counter(_refs(schema))

    # -------------------------------------------------------------------------------------------- layout

    def render(self) -> Iterator[str]:
        props: dict[str, Schema] = self.schema.get("properties", {})
        required = set(self.schema.get("required", []))
        yield "# Policy reference"
        yield ""
        yield (
            "<!-- Generated from edgerules/schemas/policy.schema.json by `python -m edgerules.tools.docgen`; "
            "do not edit by hand. -->"
        )
        yield ""
        yield _cell(self.schema.get("description", ""))
        yield ""
        yield "Every mapping rejects unknown keys. Durations, sizes and `${env:NAME}` references are described under"
        yield "[shared types](#shared-types)."
        yield ""
        yield "## Top-level keys"
        yield ""
        yield "| key | type | required | description |"
        yield "|---|---|---|---|"
        for key, prop in props.items():
            name = f"[`{key}`](#{_anchor(key)})" if self._has_section(prop) else f"`{key}`"
            req = "yes" if key in required else "no"
            yield f"| {name} | {self.type_of(prop)} | {req} | {self.describe(prop)} |"
        for key, prop in props.items():
            if self._has_section(prop):
                yield from self.section(key, prop)
        yield ""
        yield '<a id="shared-types"></a>'
        yield ""
        yield "## Shared types"
        for name, definition in self.defs.items():
            if self._linked(name) and name not in self.sections and name not in _SKIP_DEFS:
                yield from self.shared_type(name, definition)

    def section(self, key: str, prop: Schema) -> Iterator[str]:
        target = self.resolve(prop, force=True)
        yield ""
        yield f'<a id="{_anchor(key)}"></a>'
        yield ""
        yield f"## `{key}`"
        yield ""
        described = target if target is not None and target.get("description") else prop
        yield _cell(described.get("description", ""))
        yield ""
        yield "| field | type | default | description |"
        yield "|---|---|---|---|"
        yield from self.nested_rows(key, prop, force=True)

    def shared_type(self, name: str, definition: Schema) -> Iterator[str]:
        yield ""
        yield f'<a id="{_anchor("type-" + name)}"></a>'
        yield ""
        yield f"### {definition.get('title', name)}"
        yield ""
        yield _cell(definition.get("description", ""))
        yield ""
        yield f"Type: {self.type_of(definition, link_self=False)}."
        if definition.get("x-expected"):
            yield f"Expected: {_cell(definition['x-expected'])}."
        if "examples" in definition:
            yield "Examples: " + ", ".join(_code(e) for e in definition["examples"]) + "."
        if definition.get("properties"):
            yield ""
            yield "| field | type | default | description |"
            yield "|---|---|---|---|"
            yield from self.rows("", definition)

    # -------------------------------------------------------------------------------------------- rows

    def rows(self, prefix: str, schema: Schema) -> Iterator[str]:
        """A row per property of ``schema`` (an object), followed by the rows of what it expands in place."""
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            field = f"{prefix}{name}"
            label = f"`{field}`" + (" (required)" if name in required else "")
            default = _code(prop["default"]) if "default" in prop else ""
            yield f"| {label} | {self.type_of(prop)} | {default} | {self.describe(prop)} |"
            yield from self.nested_rows(field, prop)

    def nested_rows(self, field: str, prop: Schema, *, force: bool = False) -> Iterator[str]:
        """Rows for what lies inside ``prop`` when it is expanded here rather than linked."""
        target = self.resolve(prop, force=force)
        if target is None:
            return
        if target.get("properties"):
            yield from self.rows(f"{field}.", target)
            return
        items = target.get("items")
        if isinstance(items, dict):
            inner = self.resolve(items, force=force)
            if inner is not None and inner.get("properties"):
                yield from self.rows(f"{field}[].", inner)
            return
        values = target.get("additionalProperties")
        if isinstance(values, dict):
            inner = self.resolve(values, force=force)
            if inner is not None and inner.get("properties"):
                placeholder = _placeholder(target)
                yield f"| `{field}.{placeholder}` | mapping | | {_cell(inner.get('description', ''))} |"
                yield from self.rows(f"{field}.{placeholder}.", inner)

    def resolve(self, schema: Schema, *, force: bool = False) -> Schema | None:
        """``schema`` itself, or the definition it refers to when that is expanded here (None: linked)."""
        name = _ref_name(schema)
        if name is None:
            return schema
        if force or not self._linked(name):
            return self.defs[name]
        return None

    # -------------------------------------------------------------------------------------------- cells

    def type_of(self, schema: Schema, *, link_self: bool = True) -> str:
        name = _ref_name(schema)
        if name is not None:
            definition = self.defs[name]
            if self._linked(name):
                anchor = self.sections.get(name) or "type-" + name
                return f"[{definition.get('title', name)}](#{_anchor(anchor)})"
            return self.type_of(definition)
        if "const" in schema:
            return _code(schema["const"])
        if "enum" in schema:
            return "one of " + ", ".join(_code(v) for v in schema["enum"])
        if "anyOf" in schema:
            return " or ".join(self.type_of(branch) for branch in schema["anyOf"])
        kind = schema.get("type")
        if isinstance(kind, list):
            return " or ".join(_NOUNS.get(k, str(k)) for k in kind)
        if kind == "array":
            return f"list of {self.type_of(schema.get('items', {}))}"
        if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
            keys = schema.get("propertyNames")
            key_type = self.type_of(keys) if keys else "string"
            return f"map of {key_type} → {self.type_of(schema['additionalProperties'])}"
        if kind in ("integer", "number"):
            return _NOUNS[kind] + _range(schema)
        return _NOUNS.get(kind, "any") if isinstance(kind, str) else "any"

    def describe(self, prop: Schema) -> str:
        text = prop.get("description", "")
        examples = prop.get("examples")
        if examples:
            text += " Example: " + ", ".join(_code(e) for e in examples) + "."
        return _cell(text)

    # -------------------------------------------------------------------------------------------- helpers

    def _linked(self, name: str) -> bool:
        definition = self.defs[name]
        return name in self.sections or self.ref_counts[name] >= 2 or not self._is_structured(definition)

    def _is_structured(self, schema: Schema) -> bool:
        return bool(schema.get("properties")) or (
            schema.get("type") == "object" and isinstance(schema.get("additionalProperties"), dict)
        )

    def _has_section(self, prop: Schema) -> bool:
        name = _ref_name(prop) or _ref_name(prop.get("items", {}))
        if name is not None:
            return name in self.sections
        values = prop.get("additionalProperties")
        return isinstance(values, dict) and _ref_name(values) is not None and not self._linked_values(values)

    def _linked_values(self, values: Schema) -> bool:
        name = _ref_name(values)
        return name is not None and self._linked(name)


def _ref_name(schema: Any) -> str | None:
    if isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
        ref: str = schema["$ref"]
        if ref.startswith("#/$defs/"):
            return ref.removeprefix("#/$defs/")
    return None


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        name = _ref_name(node)
        if name is not None:
            yield name
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _placeholder(schema: Schema) -> str:
    keys = _ref_name(schema.get("propertyNames", {}))
    return "<code>" if keys == "country_code" else "<name>"


def _range(schema: Schema) -> str:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        return f" ({low}..{high})"
    if low is not None:
        return f" (≥ {low})"
    if high is not None:
        return f" (≤ {high})"
    return ""


def _code(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _anchor(name: str) -> str:
    return name.lower().replace("_", "-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgerules.tools.docgen", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--check",
        nargs="?",
        const=str(DEFAULT_OUTPUT),
        metavar="FILE",
        help=f"exit 1 if FILE (default {DEFAULT_OUTPUT}) differs from the generated reference",
    )
    args = parser.parse_args(argv)
    from edgerules.policy.schema import load_schema

    text = render_reference(load_schema())
    if args.check is None:
        sys.stdout.write(text)
        return 0
    path = Path(args.check)
    try:
        current = path.read_text("utf-8")
    except OSError as e:
        print(f"{path}: cannot read ({e.strerror})", file=sys.stderr)
        return 1
    if current != text:
        print(f"{path} is stale: run `python -m edgerules.tools.docgen > {path}`", file=sys.stderr)
        return 1
    print(f"{path} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())

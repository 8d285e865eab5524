"""`edgerules schema`: print the policy JSON Schema (for editors and CI outside a checkout).

edgerules schema > policy.schema.json
# yaml-language-server: $schema=./policy.schema.json
"""

from __future__ import annotations

import argparse
from typing import TextIO


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "schema",
        help="print the policy JSON Schema (editor completion: save it and point $schema at it)",
        description="Print the JSON Schema that `validate` uses (the one shipped in the installed package).",
    )
    p.add_argument("--out", metavar="FILE", help="write it to FILE instead of stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    from edgerules.policy.schema import _schema_text

    text = _schema_text()
    if not text.endswith("\n"):
        text += "\n"
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        out.write(text)
    return 0

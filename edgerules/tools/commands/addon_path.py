"""`edgerules addon-path`: where the mitmproxy script of the installed package is, for `mitmdump -s`.

mitmdump -s "$(edgerules addon-path)" --mode reverse:http://127.0.0.1:9101 --set edgerules_policy=rules/p.yaml
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TextIO


def script_path() -> Path:
    import edgerules

    return Path(edgerules.__file__).resolve().parent / "addon_script.py"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "addon-path",
        help='print the path of the mitmproxy script (mitmdump -s "$(edgerules addon-path)")',
        description="Print the absolute path of the addon script inside the installed package, so mitmdump "
        "can load edgerules without a checkout of the repository.",
    )
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    path = script_path()
    if not path.is_file():  # a broken installation: say so rather than print a path mitmdump cannot load
        raise FileNotFoundError(f"the addon script is missing from the installed package: {path}")
    print(json.dumps({"path": str(path)}) if args.format == "json" else str(path), file=out)
    return 0

"""The `edgerules` console script.

One function per subcommand: `_add_<name>(subparsers)` declares its arguments and `cmd_<name>(args) -> int`
runs it. Add a command by writing both and listing the adder in `COMMANDS`. Exit codes (README "The CLI" has the
table): 0 ok, 1 the policy (or the input) is invalid, 2 usage error (argparse) or nothing to work on, 3 internal
error (a bug: reported, never a traceback). mitmdump and `serve` exit 1 on an invalid policy too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from edgerules.policy.load import FileReport

from edgerules.diagnostics import PolicyError

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


# --------------------------------------------------------------------------------------------- validate


def _add_validate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "validate",
        help="check policy files (schema, semantics, every environment) and report every problem",
        description="Check policy files. Without --env the base and every environment overlay are checked.",
    )
    p.add_argument(
        "files",
        nargs="+",
        metavar="PATH",
        help="policy files (YAML) or directories (every *.yaml/*.yml below, except *.test.yaml and files "
        "another policy includes)",
    )
    p.add_argument("--env", metavar="NAME", help="check only this environment overlay")
    p.add_argument("--format", choices=("text", "json", "github"), default="text", help="output format")
    p.add_argument(
        "--for-serving",
        action="store_true",
        help="also require every ${env:NAME} without default to be set and secrets to be strong enough",
    )
    p.set_defaults(func=cmd_validate)


def cmd_validate(args: argparse.Namespace, out: TextIO) -> int:
    from edgerules.diagnostics import format_diagnostics
    from edgerules.policy.load import validate_file

    paths = policy_paths(args.files)
    if not paths:
        print(
            f"edgerules validate: no policy files (*.yaml, *.yml) in {', '.join(args.files)}", file=sys.stderr
        )
        return EXIT_USAGE
    reports: list[FileReport] = [
        validate_file(path, args.env, environ=os.environ, for_serving=args.for_serving) for path in paths
    ]
    ok = all(r.ok for r in reports)
    if args.format == "json":
        doc = {
            "ok": ok,
            "files": [{"file": r.path, "ok": r.ok, **(_summary_fields(r) if r.ok else {})} for r in reports],
            "diagnostics": json.loads(
                format_diagnostics([d for r in reports for d in r.diagnostics], "json")
            ),
        }
        print(json.dumps(doc, indent=2), file=out)
        return EXIT_OK if ok else EXIT_INVALID
    for r in reports:
        if r.diagnostics:
            print(format_diagnostics(r.diagnostics, args.format), file=out)
        if r.ok:
            print(_summary_line(r), file=out)
    if not ok:
        errors = sum(d.severity == "error" for r in reports for d in r.diagnostics)
        bad = sum(not r.ok for r in reports)
        print(f"{errors} error{'s' * (errors != 1)} in {bad} file{'s' * (bad != 1)}", file=out)
    return EXIT_OK if ok else EXIT_INVALID


def policy_paths(args: Sequence[str]) -> list[str]:
    """Files as given; directories searched recursively for policies: *.yaml/*.yml except test files
    (*.test.yaml) and files that another file in the same search includes (fragments are checked through
    the policy that includes them)."""
    from pathlib import Path

    out: list[str] = []
    for arg in args:
        if not os.path.isdir(arg):
            out.append(arg)
            continue
        found = sorted(
            str(p)
            for pattern in ("*.yaml", "*.yml")
            for p in Path(arg).rglob(pattern)
            if not p.name.endswith((".test.yaml", ".test.yml")) and p.is_file()
        )
        included = {os.path.realpath(i) for f in found for i in _includes(f)}
        out += [f for f in found if os.path.realpath(f) not in included]
    return out


def _includes(path: str) -> list[str]:
    """Paths a policy's top-level `include:` names (relative to it); [] when it cannot be read."""
    from edgerules.policy.loader import load_yaml_file

    try:
        data = load_yaml_file(path).data
    except (PolicyError, OSError):
        return []
    entries = data.get("include") if isinstance(data, dict) else None
    base = os.path.dirname(path)
    return [os.path.join(base, e) for e in entries if isinstance(e, str)] if isinstance(entries, list) else []


def _summary_fields(report: FileReport) -> dict[str, object]:
    policy = next(iter(report.policies.values()), None)
    warnings = sum(d.severity == "warning" for d in report.diagnostics)
    return {
        "regions": len(policy.regions) if policy else 0,
        "countries": len(policy.routing.countries) if policy else 0,
        "environments": report.environments,
        "warnings": warnings,
    }


def _summary_line(report: FileReport) -> str:
    f = _summary_fields(report)
    envs = f["environments"]
    assert isinstance(envs, list)
    parts = [
        _plural(f["regions"], "region"),
        _plural(f["countries"], "country", "countries"),
        _plural(len(envs), "environment"),
    ]
    if f["warnings"]:
        parts.append(_plural(f["warnings"], "warning"))
    return f"{report.path}: ok ({', '.join(parts)})"


def _plural(n: object, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


# --------------------------------------------------------------------------------------------- main

COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [_add_validate]


def build_parser() -> argparse.ArgumentParser:
    from edgerules import __version__

    parser = argparse.ArgumentParser(
        prog="edgerules",
        description="A declarative rules engine for mitmproxy: validate and test YAML policies.",
        epilog="exit codes: 0 ok; 1 invalid policy/test file/input (file:line:col), failed test, changes with "
        "--fail-on-change, store or edge unreachable (mitmdump and serve also exit 1 on an invalid policy); "
        "2 usage error or nothing to work on; 3 internal error (a bug; EDGERULES_DEBUG=1 shows the traceback). "
        'Start with: edgerules init NAME. Run the addon from the installed package: mitmdump -s "$(edgerules '
        'addon-path)" --set edgerules_policy=FILE',
    )
    parser.add_argument("--version", action="version", version=f"edgerules {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    from edgerules.tools.commands import register_all

    register_all(sub)
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the CLI; returns the exit code (argparse exits 2 itself on a usage error)."""
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args, out))
    except KeyboardInterrupt:
        print("edgerules: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except PolicyError as e:  # a command that needs a policy got a bad one: file:line for each problem
        print(str(e), file=sys.stderr)
        return EXIT_INVALID
    except Exception as e:  # a bug in edgerules, never the user's fault: say so without a traceback
        print(f"edgerules: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        print("please report this; set EDGERULES_DEBUG=1 to see the traceback", file=sys.stderr)
        if os.environ.get("EDGERULES_DEBUG"):
            traceback.print_exc()
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())

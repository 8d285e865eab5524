"""`edgerules diff OLD NEW`: what a policy change changes (`deck gateway diff` for edgerules).

1. Structurally: every setting added, removed or changed in the effective policy (includes merged, `--env`
   overlay applied), by JSON pointer.
2. With `--requests FILE` (a YAML list of requests like a test case's `request:`, or a `*.test.yaml` file whose
   cases' requests are used) or `--flows FILE` (recorded with `mitmdump -w`): which requests the two policies
   decide differently, what changed (status, region, auth, cache...) and the rules of the new policy that now
   decide them (with file:line). Offline, like `replay`.

Exit codes: 0 (no difference, or differences without --fail-on-change), 1 (differences with --fail-on-change, or
an invalid policy or requests file), 2 (usage, unreadable flow file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, TextIO

from edgerules.diagnostics import Diagnostic, PolicyError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "diff",
        help="compare two policies: settings that differ and, with --requests/--flows, decisions that change",
        description="Structural diff of two effective policies, plus (with --requests or --flows) the requests "
        "they decide differently and by which rule.",
    )
    p.add_argument("old", metavar="OLD", help="the policy serving today")
    p.add_argument("new", metavar="NEW", help="the candidate policy")
    p.add_argument("--env", metavar="NAME", help="environment overlay applied to both")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--requests", metavar="FILE", help="YAML list of requests, or a *.test.yaml file")
    what.add_argument("--flows", metavar="FILE", help="flows recorded with `mitmdump -w FILE`")
    p.add_argument("--down", action="append", default=[], metavar="REGION", help="treat REGION as unhealthy")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--fail-on-change", action="store_true", help="exit 1 when anything differs (for CI)")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------------------ structure


def _esc(token: object) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


def structural_diff(old: Any, new: Any, pointer: str = "") -> list[dict[str, Any]]:
    """[{op: added|removed|changed, path, old?, new?}] from `old` to `new` (lists of named rules by name)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[dict[str, Any]] = []
        for key in old:
            if key not in new:
                out.append({"op": "removed", "path": f"{pointer}/{_esc(key)}", "old": old[key]})
            else:
                out += structural_diff(old[key], new[key], f"{pointer}/{_esc(key)}")
        out += [
            {"op": "added", "path": f"{pointer}/{_esc(k)}", "new": v} for k, v in new.items() if k not in old
        ]
        return out
    if isinstance(old, list) and isinstance(new, list) and _named(old) and _named(new):
        before = {item["name"]: item for item in old}
        after = {item["name"]: item for item in new}
        out = []
        for name, item in before.items():
            if name not in after:
                out.append({"op": "removed", "path": f"{pointer}[name={name}]", "old": item})
            else:
                out += structural_diff(item, after[name], f"{pointer}[name={name}]")
        out += [
            {"op": "added", "path": f"{pointer}[name={n}]", "new": item}
            for n, item in after.items()
            if n not in before
        ]
        if [n for n in before if n in after] != [n for n in after if n in before]:
            out.append({"op": "reordered", "path": pointer, "old": list(before), "new": list(after)})
        return out
    if old != new:
        return [{"op": "changed", "path": pointer or "/", "old": old, "new": new}]
    return []


def _named(items: list[Any]) -> bool:
    names = [i.get("name") for i in items if isinstance(i, dict)]
    return (
        bool(items)
        and len(names) == len(items)
        and all(isinstance(n, str) for n in names)
        and len(set(names)) == len(names)
    )


def _short(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


# ------------------------------------------------------------------------------------------------ requests


def load_requests(path: str, policy: Any, skipped: dict[str, int]) -> list[Any]:
    """EdgeRequests from a requests file (`requests: [...]`) or from a test file's cases; PolicyError
    (file:line) if bad. Test cases that need their world (API keys) are counted in `skipped`."""
    from edgerules.policy.loader import load_yaml_file
    from edgerules.tools.policytest import CaseError, _authorization, build_request

    doc = load_yaml_file(path)
    data = doc.data
    pointer = ""
    test_file = isinstance(data, dict) and isinstance(data.get("cases"), list)
    if test_file:
        items = [(f"/cases/{i}/request", (c or {}).get("request") or {}) for i, c in enumerate(data["cases"])]
    elif isinstance(data, dict) and isinstance(data.get("requests"), list):
        items = [(f"/requests/{i}", item) for i, item in enumerate(data["requests"])]
    else:
        raise PolicyError.at(
            doc.mark_for(pointer),
            "a requests file has a list under requests: (or is a test file with cases:)",
            hint="requests: [{url: /health, country: GB}, {method: POST, url: /api/v1/calls}]",
        )
    out = []
    allowed = {"method", "url", "headers", "country", "client_ip", "body_size", "auth", "websocket"}
    for ptr, item in items:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            raise PolicyError.at(doc.mark_for(ptr), "each request needs url: (a path or an absolute URL)")
        unknown = [k for k in item if k not in allowed]
        if unknown:
            raise PolicyError(
                Diagnostic(
                    "error",
                    f"unknown key {unknown[0]!r} in a request",
                    doc.key_mark_for(f"{ptr}/{unknown[0]}"),
                    f"{ptr}/{unknown[0]}",
                    f"expected one of {', '.join(sorted(allowed))}",
                )
            )
        headers = [(str(k), str(v)) for k, v in (item.get("headers") or {}).items()]
        auth = item.get("auth")
        if isinstance(auth, dict):
            if "api_key" in auth and test_file:
                reason = "test cases with api_key auth (they need their world)"
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            if "api_key" in auth:
                raise PolicyError.at(
                    doc.mark_for(f"{ptr}/auth"),
                    "auth: api_key needs a world with keys; diff requests take jwt: or bearer:",
                    pointer=f"{ptr}/auth",
                )
            try:
                headers.append(("Authorization", _authorization(policy, auth, {}, time.time())))
            except (CaseError, ValueError, KeyError, TypeError) as exc:
                raise PolicyError.at(
                    doc.mark_for(f"{ptr}/auth"), f"auth: {exc}", pointer=f"{ptr}/auth"
                ) from None
        out.append(
            build_request(
                policy,
                str(item.get("method", "GET")),
                item["url"],
                headers,
                country=item.get("country"),
                client_ip=item.get("client_ip"),
                body_size=item.get("body_size"),
                websocket=bool(item.get("websocket", False)),
            )
        )
    return out


def _test_file_environ(path: str) -> dict[str, str]:
    """A test file's `environ:` (its secrets sign the cases' tokens); empty for a plain requests list."""
    from edgerules.policy.loader import load_yaml_file

    data = load_yaml_file(path).data
    environ = data.get("environ") if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in environ.items()} if isinstance(environ, dict) else {}


# ------------------------------------------------------------------------------------------------ command


def run(args: argparse.Namespace, out: TextIO) -> int:
    import asyncio

    from edgerules.policy.load import load_policy_file
    from edgerules.tools.commands.show import effective_document

    old_doc = effective_document(args.old, args.env)
    new_doc = effective_document(args.new, args.env)
    changes = structural_diff(old_doc, new_doc)
    report = None
    if args.requests or args.flows:
        from edgerules.tools.replay import FlowFileError, load_flow_file, replay

        environ = {**os.environ, **(_test_file_environ(args.requests) if args.requests else {})}
        old = load_policy_file(args.old, args.env, environ=environ).policy
        new = load_policy_file(args.new, args.env, environ=environ).policy
        skipped: dict[str, int] = {}
        if args.flows:
            try:
                flows = load_flow_file(args.flows)
            except FlowFileError as exc:
                print(f"edgerules diff: {exc}", file=sys.stderr)
                return 2
            requests, skipped = flows.requests, flows.skipped
        else:
            requests = load_requests(args.requests, old, skipped)
        report = asyncio.run(replay(requests, old, new, down=args.down, skipped=skipped))
    if args.format == "json":
        doc: dict[str, Any] = {"old": args.old, "new": args.new, "env": args.env, "settings": changes}
        if report is not None:
            doc["decisions"] = report.to_json()
        print(json.dumps(doc, indent=2, default=str), file=out)
    else:
        print(render_text(args, changes, report), file=out)
    differs = bool(changes) or bool(report and report.changes)
    return 1 if args.fail_on_change and differs else 0


def render_text(args: argparse.Namespace, changes: list[dict[str, Any]], report: Any) -> str:
    from edgerules.tools.replay import render_text as render_replay

    lines = [f"--- {args.old}", f"+++ {args.new}" + (f" (environment {args.env})" if args.env else "")]
    if not changes:
        lines.append("settings: identical")
    else:
        lines.append(f"settings: {len(changes)} difference{'s' * (len(changes) != 1)}")
        for c in changes:
            if c["op"] == "changed":
                lines.append(f"  ~ {c['path']}: {_short(c['old'])} -> {_short(c['new'])}")
            elif c["op"] == "added":
                lines.append(f"  + {c['path']}: {_short(c['new'])}")
            elif c["op"] == "removed":
                lines.append(f"  - {c['path']}: {_short(c['old'])}")
            else:
                lines.append(f"  ~ {c['path']}: order {', '.join(c['old'])} -> {', '.join(c['new'])}")
    if report is not None:
        lines += [
            "",
            "decisions:",
            *("  " + line if line else "" for line in render_replay(report).splitlines()),
        ]
    return "\n".join(lines)

"""`edgerules replay FLOWS --old OLD.yaml --new NEW.yaml`: what would change for recorded traffic."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

EXIT_CHANGED, EXIT_BAD_FLOWS = 1, 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "replay",
        help="replay recorded flows (mitmdump -w) through two policies and report changed decisions",
        description="Decide every recorded request with the old and the new policy (offline, memory store, "
        "all regions healthy unless --down) and list each request whose decision changed: status, target "
        "region, routing priority, failover order, auth outcome, cache rule/status, request headers set.",
    )
    parser.add_argument("flows", metavar="FLOWS", help="flow file written by `mitmdump -w FILE`")
    parser.add_argument("--old", required=True, metavar="FILE", help="the policy serving today")
    parser.add_argument("--new", required=True, metavar="FILE", help="the candidate policy")
    parser.add_argument("--env", metavar="NAME", help="environment overlay applied to both policies")
    parser.add_argument(
        "--down", action="append", default=[], metavar="REGION", help="treat REGION as unhealthy (repeatable)"
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--fail-on-change", action="store_true", help="exit 1 when any decision changed (for CI)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    import asyncio

    from edgerules.policy.load import load_policy_file
    from edgerules.tools.replay import FlowFileError, load_flow_file, render_json, render_text, replay

    old = load_policy_file(args.old, args.env, environ=os.environ).policy
    new = load_policy_file(args.new, args.env, environ=os.environ).policy
    try:
        flows = load_flow_file(args.flows)
    except FlowFileError as exc:
        print(f"edgerules replay: {exc}", file=sys.stderr)
        return EXIT_BAD_FLOWS
    report = asyncio.run(replay(flows.requests, old, new, down=args.down, skipped=flows.skipped))
    print(render_json(report) if args.format == "json" else render_text(report), file=out)
    return EXIT_CHANGED if args.fail_on_change and report.changes else 0

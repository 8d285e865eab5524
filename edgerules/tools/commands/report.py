"""`edgerules report`: the hourly rollups in the policy's store as a table, JSON or one HTML page.

    edgerules report --policy FILE [--env NAME] [--since 24h] [--format table|json|html] [--out FILE]

Reads the same store the proxy writes (so with a Redis store it covers every proxy instance). Exit 0 with the
report, 1 when the store cannot be reached, 2 for a bad `--since`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from edgerules.policy.model import Policy
from edgerules.tools.commands._common import add_policy_arguments, load_policy, open_policy_store
from edgerules.units import parse_duration

if TYPE_CHECKING:
    from edgerules.observe.metrics import HourRollup

FORMATS = ("table", "json", "html")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "report",
        help="hourly traffic report (requests, errors, cache hits, latency) from the policy's store",
        description="Render the hourly metric rollups the proxy wrote to the policy's store.",
    )
    add_policy_arguments(parser)
    parser.add_argument(
        "--since", default="24h", metavar="DURATION", help="how far back to report (e.g. 1h, 24h, 7d)"
    )
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format")
    parser.add_argument("--out", metavar="FILE", help="write the report to FILE instead of stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    import asyncio

    from edgerules.observe.report import render_report

    try:
        since = parse_duration(args.since)
    except ValueError as exc:
        out.write(f"error: --since: {exc}\n")
        return 2
    policy = load_policy(args)
    now = time.time()
    try:
        rollups = asyncio.run(_read(policy, now - since, now))
    except Exception as exc:  # StoreUnavailable, or a backend that cannot even be opened
        out.write(f"error: report failed: store {policy.store.backend} unavailable: {exc}\n")
        return 1
    title = f"edgerules report: {policy.name}" + (f" ({args.env})" if args.env else "")
    text = render_report(rollups, args.format, title=title)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        out.write(f"wrote {args.format} report ({len(rollups)} hours with data) to {args.out}\n")
    else:
        out.write(text)
    return 0


async def _read(policy: Policy, since: float, now: float) -> list[HourRollup]:
    from edgerules.observe.metrics import read_rollups

    store = open_policy_store(policy)
    try:
        return await read_rollups(store, since, now)
    finally:
        await store.close()

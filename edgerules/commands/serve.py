"""`edgerules serve`: run the edge (a lean mitmproxy master with the edgerules addon) in reverse-proxy mode."""

from __future__ import annotations

import argparse
from typing import TextIO

from edgerules.commands._common import add_policy_arguments


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the edge: a reverse proxy applying the policy (like `mitmdump -s addon.py`, leaner)",
        description=(
            "Serve the policy as a reverse proxy. A bad policy exits 1 with file:line before anything listens; "
            "SIGTERM/SIGINT shut it down cleanly."
        ),
    )
    add_policy_arguments(p)
    p.add_argument(
        "--listen",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:8080; port 0 picks a free port)",
    )
    p.add_argument(
        "--mode",
        metavar="reverse:URL",
        help="mitmproxy mode (default: reverse to the policy's first region's upstream)",
    )
    p.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="set a mitmproxy or edgerules option (repeatable), e.g. --set edgerules_reload_interval=5",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    from edgerules.serve import ServeConfig, parse_listen
    from edgerules.serve import run as serve

    try:
        parse_listen(args.listen)
    except ValueError as exc:
        print(f"edgerules serve: {exc}", file=out)
        return 2
    config = ServeConfig(
        policy_path=args.policy,
        env=args.env,
        listen=args.listen,
        mode=args.mode,
        settings=tuple(args.settings),
    )
    return serve(config)

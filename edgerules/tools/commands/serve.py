"""`edgerules serve`: run the edge (a lean mitmproxy master with the edgerules addon) in reverse-proxy mode."""

from __future__ import annotations

import argparse
from typing import TextIO

from edgerules.tools.commands._common import add_policy_arguments


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the edge: a reverse proxy applying the policy (like `mitmdump -s addon.py`, leaner)",
        description=(
            "Serve the policy as a reverse proxy. A bad policy exits 1 with file:line before anything listens; "
            "SIGTERM/SIGINT stop accepting, let requests in flight finish and exit 0; SIGHUP reloads the policy."
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
    p.add_argument(
        "--certs",
        action="append",
        default=[],
        metavar="[DOMAIN=]PEM",
        help="terminate TLS with this certificate: a PEM file holding the certificate (chain) and its private key; "
        "DOMAIN (may be *.example.com) picks it by SNI (repeatable; default domain *). HTTP/2 is offered by ALPN. "
        "Plain-HTTP clients are still served on the same port",
    )
    p.add_argument(
        "--workers",
        default="1",
        metavar="N|auto",
        help="worker processes accepting on the one --listen port (default 1; auto: one per core); a supervisor "
        "restarts crashed workers, SIGTERM drains them all, SIGHUP reloads them all",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long requests in flight may still take before the edge exits (default 30)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    from edgerules.edge.serve import ServeConfig, parse_listen
    from edgerules.edge.serve import run as serve
    from edgerules.edge.supervisor import worker_count

    try:
        parse_listen(args.listen)
        workers = worker_count(args.workers)
    except ValueError as exc:
        print(f"edgerules serve: {exc}", file=out)
        return 2
    config = ServeConfig(
        policy_path=args.policy,
        env=args.env,
        listen=args.listen,
        mode=args.mode,
        settings=tuple(args.settings),
        certs=tuple(args.certs),
        workers=workers,
        drain_timeout=args.drain_timeout,
    )
    return serve(config)

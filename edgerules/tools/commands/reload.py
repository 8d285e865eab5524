"""`edgerules reload`: ask a running edge to reload its policy now (POST /__edgerules/reload).

The edge also reloads by itself when the file changes; this is for deploy scripts that want the answer (and the
file:line of the problem) before they move on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO

DEFAULT_ADMIN_URL = "http://127.0.0.1:8080"
DEFAULT_TOKEN_ENV = "EDGERULES_ADMIN_TOKEN"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "reload",
        help="make a running edge reload its policy and report the result",
        description="POST /__edgerules/reload on a running edge. Exit 0 when the new policy is serving, 1 when "
        "the reload failed (the edge keeps serving the last good policy) or the edge could not be asked.",
    )
    parser.add_argument(
        "--admin-url",
        default=DEFAULT_ADMIN_URL,
        metavar="URL",
        help=f"the edge's address, e.g. http://127.0.0.1:8080 (default {DEFAULT_ADMIN_URL})",
    )
    parser.add_argument(
        "--token-env",
        default=DEFAULT_TOKEN_ENV,
        metavar="NAME",
        help=f"environment variable holding the admin token, if any (default {DEFAULT_TOKEN_ENV})",
    )
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(func=run)


def post_reload(admin_url: str, token: str | None, timeout: float) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of the reload endpoint; OSError when the edge cannot be reached."""
    import urllib.error
    import urllib.request

    url = admin_url.rstrip("/") + "/__edgerules/reload"
    request = urllib.request.Request(url, data=b"", method="POST")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:  # 422 (reload failed), 404 (not allowed) ...: still an answer
        status, body = exc.code, exc.read()
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        payload = {"error": body[:200].decode("utf-8", "replace")}
    return status, payload if isinstance(payload, dict) else {"answer": payload}


def run(args: argparse.Namespace, out: TextIO) -> int:
    token = os.environ.get(args.token_env) or None
    try:
        status, payload = post_reload(args.admin_url, token, args.timeout)
    except (OSError, ValueError) as exc:
        print(f"edgerules reload: cannot reach {args.admin_url}: {exc}", file=sys.stderr)
        return 1
    ok = status == 200 and payload.get("reloaded") is True
    if args.format == "json":
        print(json.dumps({"status": status, **payload}), file=out)
    elif ok:
        print(f"reloaded: policy version {payload.get('version')}", file=out)
    elif status == 422:
        print(f"reload failed, still serving version {payload.get('version')}:", file=out)
        print(f"  {payload.get('last_error')}", file=out)
    elif status == 404:
        print(
            f"reload refused by {args.admin_url} (404): not an edgerules edge, or this client is not allowed "
            f"(set the admin token in ${args.token_env} or connect from admin.allow_cidrs)",
            file=out,
        )
    else:
        print(f"reload failed: HTTP {status}: {payload}", file=out)
    return 0 if ok else 1

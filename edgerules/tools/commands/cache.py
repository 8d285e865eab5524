"""`edgerules cache purge`: drop response-cache entries from the policy's store (the one the proxy uses).

    edgerules cache purge --policy FILE [--env NAME] (--all | --prefix PATH | --key KEY | --tag TAG [--tag TAG2])

`--prefix` is segment-wise (`/api/v1/agents` covers `/api/v1/agents/7`, not `/api/v1/agentsX`); `--key` is a
store key as shown in traces (`cache:<sha256>`), removed with its Vary variants; `--tag` drops every response
the origin labelled with that `Cache-Tag` (case-insensitive; repeat it for several). Exit 0 with the count purged,
1 when the store cannot be reached.
"""

from __future__ import annotations

import argparse
import json
from typing import TextIO

from edgerules.tools.commands._common import add_policy_arguments, load_policy, open_policy_store


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("cache", help="operate on the response cache")
    actions = parser.add_subparsers(dest="cache_action", metavar="ACTION", required=True)
    purge = actions.add_parser("purge", help="remove cached responses from the policy's store")
    add_policy_arguments(purge)
    what = purge.add_mutually_exclusive_group(required=True)
    what.add_argument("--all", action="store_true", help="every cached response")
    what.add_argument("--prefix", metavar="PATH", help="every response under this path (segment-wise)")
    what.add_argument("--key", metavar="KEY", help="one cache key (cache:<sha256>) and its variants")
    what.add_argument(
        "--tag",
        metavar="TAG",
        action="append",
        help="every response labelled with this Cache-Tag (repeatable)",
    )
    purge.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    purge.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    import asyncio

    if args.prefix is not None and not args.prefix.startswith("/"):
        out.write(f"error: --prefix must be a path starting with '/', got {args.prefix!r}\n")
        return 2
    if args.tag is not None and not all(t.strip() for t in args.tag):
        out.write("error: --tag must not be empty\n")
        return 2
    policy = load_policy(args)
    try:
        removed = asyncio.run(_purge(policy, all=args.all, prefix=args.prefix, key=args.key, tags=args.tag))
    except Exception as exc:  # StoreUnavailable, or a backend that cannot even be opened
        if args.format == "json":
            out.write(
                json.dumps({"purged": None, "error": f"store {policy.store.backend} unavailable: {exc}"})
                + "\n"
            )
        else:
            out.write(f"error: cache purge failed: store {policy.store.backend} unavailable: {exc}\n")
        return 1
    scope = (
        "all entries"
        if args.all
        else f"prefix {args.prefix}"
        if args.prefix
        else f"tags {', '.join(args.tag)}"
        if args.tag
        else f"key {args.key}"
    )
    if args.format == "json":
        what = (
            {"all": True}
            if args.all
            else {"prefix": args.prefix}
            if args.prefix
            else {"tags": args.tag}
            if args.tag
            else {"key": args.key}
        )
        out.write(json.dumps({"purged": removed, **what}) + "\n")
        return 0
    out.write(f"purged {removed} cache entr{'y' if removed == 1 else 'ies'} ({scope})\n")
    return 0


async def _purge(
    policy, *, all: bool, prefix: str | None, key: str | None, tags: list[str] | None = None
) -> int:
    from edgerules.cache.response import ResponseCache

    store = open_policy_store(policy)
    try:
        return await ResponseCache(store).purge(all=all, path_prefix=prefix, key=key, tags=tags)
    finally:
        await store.close()

"""`edgerules keys add|list|show|revoke`: manage API keys in the store the proxy uses for this policy.

The new key is printed once, as the last line of `keys add`, and nowhere else: not in errors, not in logs.
Exit codes: 0 ok, 1 unknown key id, bad input or the store is unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, TextIO

from edgerules.commands._common import add_policy_arguments, load_policy, open_policy_store

if TYPE_CHECKING:
    from edgerules.auth.apikeys import ApiKeyStore

EXIT_OK, EXIT_FAILED = 0, 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser(
        "keys",
        help="manage API keys (add, list, show, revoke) in the policy's store",
        description="Manage API keys in the same store the proxy uses for --policy/--env.",
    )
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    add = actions.add_parser("add", help="create a key; the key is printed once, as the last line")
    add_policy_arguments(add)
    add.add_argument("--user", required=True, help="user id forwarded as the identity header")
    add.add_argument("--role", required=True, help="role forwarded as the identity header")
    add.add_argument("--permissions", default="", metavar="A,B", help="comma-separated permissions")
    add.add_argument("--rate-limit", metavar="N/WINDOW", help="this key's own limit, e.g. 100/1h")
    add.add_argument("--expires", metavar="DURATION", help="expire after this long, e.g. 30d")
    add.set_defaults(func=run)

    lst = actions.add_parser("list", help="list keys (ids, users, status; never the keys themselves)")
    add_policy_arguments(lst)
    lst.set_defaults(func=run)

    for name, text in (("show", "details of one key"), ("revoke", "revoke one key (the record is kept)")):
        p = actions.add_parser(name, help=text)
        add_policy_arguments(p)
        p.add_argument("key_id", metavar="KEY_ID", help="the 12-character key id shown by `keys list`")
        p.set_defaults(func=run)


def _permissions(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


async def _dispatch(args: argparse.Namespace, keys: ApiKeyStore) -> str:
    from edgerules.auth import apikeys

    match args.keys_command:
        case "add":
            return await apikeys.cmd_keys_add(
                keys,
                args.user,
                args.role,
                _permissions(args.permissions),
                rate_limit=args.rate_limit,
                expires=args.expires,
            )
        case "list":
            return await apikeys.cmd_keys_list(keys)
        case "show":
            return await apikeys.cmd_keys_show(keys, args.key_id)
        case "revoke":
            return await apikeys.cmd_keys_revoke(keys, args.key_id)
    raise AssertionError(f"unknown keys action {args.keys_command!r}")


async def _run_on_store(args: argparse.Namespace) -> str:
    from edgerules.auth.apikeys import ApiKeyStore

    store = open_policy_store(load_policy(args))
    try:
        return await _dispatch(args, ApiKeyStore(store))
    finally:
        await store.close()


def run(args: argparse.Namespace, out: TextIO) -> int:
    from edgerules.stores import StoreUnavailable

    try:
        text = asyncio.run(_run_on_store(args))
    except LookupError as exc:  # unknown (or malformed) key id
        print(f"edgerules keys: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as exc:  # bad --user/--role/--rate-limit/--expires
        print(f"edgerules keys: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except StoreUnavailable as exc:
        print(f"edgerules keys: store unavailable: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(text, file=out)
    return EXIT_OK

"""`edgerules keys add|list|show|revoke`: manage API keys in the store the proxy uses for this policy.

The new key is printed once, as the last line of `keys add` (with `--format json`: the `key` field), and nowhere
else: not in errors, not in logs. `keys add --rate-limit` is refused when no rate limit of the policy would use it
(one with `key: api_key` and `per_key_override: true`): the key would silently get the policy's limit instead.
Exit codes: 0 ok, 1 unknown key id, bad input, an option the policy ignores, or the store is unavailable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, TextIO

from edgerules.kinds import EdgeRulesError
from edgerules.tools.commands._common import add_policy_arguments, load_policy, open_policy_store

if TYPE_CHECKING:
    from edgerules.auth.apikeys import ApiKeyRecord, ApiKeyStore
    from edgerules.policy.model import Policy

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
    _add_format(add)
    add.set_defaults(func=run)

    lst = actions.add_parser("list", help="list keys (ids, users, status; never the keys themselves)")
    add_policy_arguments(lst)
    _add_format(lst)
    lst.set_defaults(func=run)

    for name, text in (("show", "details of one key"), ("revoke", "revoke one key (the record is kept)")):
        p = actions.add_parser(name, help=text)
        add_policy_arguments(p)
        p.add_argument("key_id", metavar="KEY_ID", help="the 12-character key id shown by `keys list`")
        _add_format(p)
        p.set_defaults(func=run)


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format")


def ignored_options(args: argparse.Namespace, policy: Policy) -> list[str]:
    """Why the options of `keys add` would have no effect under this policy (empty: all are used)."""
    problems = []
    if args.rate_limit and not any(rule.key == "api_key" and own for _, rule, own in policy.rate_limits):
        problems.append(
            f"--rate-limit {args.rate_limit} would have no effect: no rate limit in {args.policy} has "
            "key: api_key with per_key_override: true, so every key gets the policy's own limit "
            "(add per_key_override: true to the api_key rate limit, or leave out --rate-limit)"
        )
    auth = policy.auth
    if auth is None or not ("api_key" in auth.schemes or any("api_key" in r.schemes for r in auth.rules)):
        problems.append(
            f"the policy {args.policy} does not accept API keys (auth.schemes has no api_key): "
            "the key would never authenticate"
        )
    return problems


def _iso(ts: float | None) -> str | None:
    from datetime import UTC, datetime

    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _record_json(record: ApiKeyRecord, now: float) -> dict[str, object]:
    expired = record.expires_at is not None and record.expires_at <= now
    return {
        "key_id": record.key_id,
        "user": record.user,
        "role": record.role,
        "permissions": list(record.permissions),
        "status": "revoked" if not record.active else "expired" if expired else "active",
        "rate_limit": {"limit": record.rate_limit[0], "window_seconds": record.rate_limit[1]}
        if record.rate_limit
        else None,
        "created": _iso(record.created_at),
        "expires": _iso(record.expires_at),
    }


async def _dispatch_json(args: argparse.Namespace, keys: ApiKeyStore) -> dict[str, object]:
    from edgerules.auth import apikeys
    from edgerules.units import parse_duration

    now = time.time()
    match args.keys_command:
        case "add":
            limit = apikeys.parse_rate_limit(args.rate_limit) if args.rate_limit else None
            expires_at = None
            if args.expires:
                seconds = parse_duration(args.expires)
                if seconds <= 0:
                    raise ValueError(f"{args.expires!r}: the duration must be positive")
                expires_at = now + seconds
            key, record = await keys.add(
                args.user,
                args.role,
                _permissions(args.permissions),
                rate_limit=limit,
                expires_at=expires_at,
                now=now,
            )
            return {**_record_json(record, now), "key": key}
        case "list":
            records, malformed = await keys.scan()
            return {"keys": [_record_json(r, now) for r in records], "malformed": len(malformed)}
        case "show":
            try:
                found = await keys.get(args.key_id)
            except apikeys.MalformedRecord:
                raise LookupError(f"API key {args.key_id!r} has a malformed record") from None
            if found is None:
                raise LookupError(f"no API key with id {args.key_id!r}")
            return _record_json(found, now)
        case "revoke":
            text = await apikeys.cmd_keys_revoke(keys, args.key_id)
            return {"revoked": args.key_id, "message": text}
    raise AssertionError(f"unknown keys action {args.keys_command!r}")


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


class IgnoredOption(EdgeRulesError):
    """`keys add` was given an option the policy would ignore."""


async def _run_on_store(args: argparse.Namespace) -> str:
    from edgerules.auth.apikeys import ApiKeyStore

    policy = load_policy(args)
    if args.keys_command == "add" and (problems := ignored_options(args, policy)):
        raise IgnoredOption(problems)
    store = open_policy_store(policy)
    try:
        if args.format == "json":
            return json.dumps(await _dispatch_json(args, ApiKeyStore(store)), indent=2)
        return await _dispatch(args, ApiKeyStore(store))
    finally:
        await store.close()


def run(args: argparse.Namespace, out: TextIO) -> int:
    import asyncio

    from edgerules.stores import StoreUnavailable

    try:
        text = asyncio.run(_run_on_store(args))
    except IgnoredOption as exc:
        for problem in exc.args[0]:
            print(f"edgerules keys add: refused: {problem}", file=sys.stderr)
        if args.format == "json":
            print(json.dumps({"error": "ignored_option", "problems": exc.args[0]}), file=out)
        return EXIT_FAILED
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

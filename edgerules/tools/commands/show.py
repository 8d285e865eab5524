"""`edgerules show --policy P [--env E]`: the effective policy, as the edge runs it (`nginx -T`, `caddy adapt`).

Includes are merged and the environment overlay is applied; `environments:` is dropped. `${env:NAME}` references
stay as written unless `--resolve` substitutes them, and then every secret (auth.jwt.secret, admin.token, the
password in store.url) is masked. The output is itself a valid policy (YAML or JSON). A policy that does not
validate prints its problems as file:line:col and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from edgerules.tools.commands._common import add_policy_arguments

MASK = "********"
SECRET_PATHS = (("auth", "jwt", "secret"), ("admin", "token"))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "show",
        help="print the effective policy after includes and the environment overlay (secrets masked)",
        description="Print the policy the edge would run for --policy/--env: includes merged, the overlay "
        "applied, as YAML (default) or JSON. It validates first (exit 1 with file:line:col if it does not).",
    )
    add_policy_arguments(p)
    p.add_argument("--format", choices=("yaml", "json"), default="yaml", help="output format (default yaml)")
    p.add_argument(
        "--resolve",
        action="store_true",
        help="substitute ${env:...} from the environment (secrets are masked either way)",
    )
    p.set_defaults(func=run)


def effective_document(path: str, env: str | None, *, resolve: bool = False) -> dict[str, Any]:
    """The merged document for `env`; PolicyError when the policy is invalid for it."""
    from edgerules.policy.compiler import apply_environment
    from edgerules.policy.envsubst import substitute_env
    from edgerules.policy.load import load_policy_file
    from edgerules.policy.loader import load_policy

    load_policy_file(path, env, environ=os.environ)  # every check (as validate), or PolicyError
    data = apply_environment(load_policy(path), env).data
    if resolve:
        data, _ = substitute_env(data, os.environ)
    return mask_secrets(data)


def mask_secrets(data: dict[str, Any]) -> dict[str, Any]:
    from edgerules.policy.envsubst import ENV_REF

    out = json.loads(json.dumps(data))  # a deep copy of plain data
    for path in SECRET_PATHS:
        node = out
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(path[-1]), str):
            value = node[path[-1]]
            if not ENV_REF.fullmatch(value):  # a reference names the variable; anything else is the secret
                node[path[-1]] = MASK
    store = out.get("store")
    if isinstance(store, dict) and isinstance(store.get("url"), str):
        store["url"] = _mask_url(store["url"])
    return out


def _mask_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.password and not parts.password.startswith("${env:"):
            netloc = parts.netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
            return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        pass
    return url


def render(data: dict[str, Any], fmt: str, header: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2)
    import yaml

    body = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110)
    return f"{header}\n{body}".rstrip("\n")


def run(args: argparse.Namespace, out: TextIO) -> int:
    data = effective_document(args.policy, args.env, resolve=args.resolve)
    header = (
        f"# effective policy: {args.policy}, environment {args.env or '(base)'}"
        + ("" if args.resolve else "; ${env:...} as written")
        + "; secrets masked"
    )
    print(render(data, args.format, header), file=out)
    return 0

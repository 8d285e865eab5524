"""`edgerules init NAME`: a new policy with its test file and a pre-commit config, all passing at once.

    edgerules init shop            # rules/shop.yaml, rules/shop.test.yaml, .pre-commit-config.yaml (if absent)
    edgerules validate rules/ && edgerules test rules/

Nothing is overwritten: an existing file is an error (exit 1) and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import TextIO

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

POLICY = """\
# yaml-language-server: $schema=./policy.schema.json
# {name}: made by `edgerules init`. Every field: `edgerules schema` (JSON Schema) and docs/policy-reference.md.
version: 1
name: {name}

regions:
  primary: {{upstream: "https://primary.example.com"}}
  backup: {{upstream: "https://backup.example.com"}}

routing:
  default: [primary, backup]          # the first healthy region wins
  countries:
    GB: [backup, primary]             # ISO 3166-1 alpha-2 codes (the United Kingdom is GB)

geo:
  country_header: CF-IPCountry
  trusted_proxies: []                 # peers whose country header is believed (e.g. your CDN's ranges)

validation:
  allow_paths:
    - prefix: /api
    - path: /health
  methods: [GET, POST]
  max_body_size: 1MiB

auth:
  schemes: [bearer]
  public:
    - path: /health
  jwt:
    secret: ${{env:{secret_var}}}       # set {secret_var} where the edge runs (at least 32 bytes)
    algorithms: [HS256]

rate_limits:
  - name: per-client
    key: client_ip
    limit: 600
    window: 1m

cache:
  rules:
    - name: health
      match: {{path: /health, methods: [GET]}}
      ttl: 30s

environments:
  local:
    regions:
      primary: {{upstream: "http://127.0.0.1:9101"}}
      backup: {{upstream: "http://127.0.0.1:9102"}}
    geo:
      trusted_proxies: [127.0.0.0/8]
"""

TESTS = """\
# Cases for {name}.yaml: `edgerules test rules/` (format: docs/policy-tests.md).
policy: {name}.yaml
env: local
environ:
  {secret_var}: test-secret-that-is-at-least-32-bytes-long
time: "2026-01-01T00:00:00Z"
cases:
  - name: health is public and goes to the primary region
    request: {{url: /health}}
    expect: {{status: 200, outcome: forward, region: primary, auth: public}}

  - name: clients in GB go to the backup region first
    request: {{url: /health, country: GB}}
    expect: {{region: backup}}

  - name: the API needs a token
    request: {{url: /api/orders}}
    expect: {{status: 401, error: unauthorized}}

  - name: a valid token is forwarded
    request: {{url: /api/orders, auth: {{jwt: {{sub: user-1}}}}}}
    expect: {{status: 200, auth: jwt, identity: {{user: user-1}}}}

  - name: an expired token is refused
    request: {{url: /api/orders, auth: {{jwt: {{sub: user-1}}, expires_in: -1h}}}}
    expect: {{status: 401, auth: failed}}

  - name: paths outside the allowlist are refused
    request: {{url: /admin}}
    expect: {{status: 400, error: path_not_allowed}}
"""

PRE_COMMIT = """\
# edgerules checks before every commit: `pip install pre-commit && pre-commit install`.
repos:
  - repo: local
    hooks:
      - id: edgerules-validate
        name: edgerules validate
        entry: edgerules validate
        language: system
        files: ^rules/.*\\.ya?ml$
        exclude: \\.test\\.ya?ml$
      - id: edgerules-test
        name: edgerules test
        entry: edgerules test rules/
        language: system
        files: ^rules/.*\\.ya?ml$
        pass_filenames: false
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "init",
        help="create rules/NAME.yaml, its test file and a pre-commit config that pass at once",
        description="Scaffold a policy: rules/NAME.yaml (two regions, an allowlist, JWT auth, a rate limit, a "
        "cache rule, a `local` environment), rules/NAME.test.yaml, rules/policy.schema.json (editor "
        "completion) and .pre-commit-config.yaml (unless one exists). Never overwrites a file.",
    )
    p.add_argument("name", metavar="NAME", help="policy name: lower-case letters, digits, - and _")
    p.add_argument("--dir", default=".", metavar="DIR", help="project directory (default: the current one)")
    p.add_argument(
        "--secret-var", default="JWT_SECRET", metavar="NAME", help="environment variable of the JWT secret"
    )
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    from edgerules.policy.schema import _schema_text

    if not NAME.fullmatch(args.name):
        print(
            f"edgerules init: {args.name!r} is not a policy name (a-z, 0-9, - and _, e.g. shop-edge)",
            file=out,
        )
        return 1
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args.secret_var):
        print(f"edgerules init: {args.secret_var!r} is not an environment variable name", file=out)
        return 1
    root = Path(args.dir)
    rules = root / "rules"
    values = {"name": args.name, "secret_var": args.secret_var}
    files = {
        rules / f"{args.name}.yaml": POLICY.format(**values),
        rules / f"{args.name}.test.yaml": TESTS.format(**values),
    }
    optional = {rules / "policy.schema.json": _schema_text(), root / ".pre-commit-config.yaml": PRE_COMMIT}
    clash = [str(p) for p in files if p.exists()]
    if clash:
        print(f"edgerules init: refusing to overwrite {', '.join(clash)}", file=out)
        return 1
    files.update({p: text for p, text in optional.items() if not p.exists()})
    rules.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    written = [str(p) for p in files]
    if args.format == "json":
        print(json.dumps({"created": written}), file=out)
        return 0
    for name in written:
        print(f"created {name}", file=out)
    print(
        f"\nnext:\n  edgerules validate {rules}/\n  edgerules test {rules}/\n"
        f"  export {args.secret_var}=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')\n"
        f"  edgerules serve --policy {rules}/{args.name}.yaml --env local --listen 127.0.0.1:8080",
        file=out,
    )
    return 0

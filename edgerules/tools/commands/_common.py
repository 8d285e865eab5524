"""Helpers shared by subcommands: the `--policy/--env` pair and opening the policy's store."""

from __future__ import annotations

import argparse
import os
import sys

from edgerules.policy.model import Policy


def add_policy_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--policy", required=required, metavar="FILE", help="policy file (YAML)")
    parser.add_argument("--env", metavar="NAME", help="environment overlay (e.g. local, staging, production)")


def load_policy(args: argparse.Namespace, *, for_serving: bool = False) -> Policy:
    """The compiled policy for `--policy/--env`; PolicyError propagates (the CLI prints it, exit 1)."""
    from edgerules.policy.load import load_policy_file

    return load_policy_file(args.policy, args.env, environ=os.environ, for_serving=for_serving).policy


def open_policy_store(policy: Policy):
    """The same store the proxy uses for this policy and environment. Says which one on stderr (stdout stays
    the command's output: a new key as the last line, a JSON report)."""
    from edgerules.stores import describe_store, open_store

    print(f"store: {describe_store(policy.store)}", file=sys.stderr, flush=True)
    return open_store(policy.store)

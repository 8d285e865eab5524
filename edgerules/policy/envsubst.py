"""`${env:NAME}` references in policy values: found, reported and substituted.

Shared by the semantic checks (which report unset variables and weak secrets) and the compiler (which builds
the policy from the substituted values); it imports nothing above the loader.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgerules.policy.loader import escape_token

__all__ = ["ENV_REF", "EnvUse", "substitute_env", "substitute_string"]

# `${env:NAME}` or `${env:NAME:-default}` (the default may be empty and may not contain `}`).
ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True, slots=True)
class EnvUse:
    """One `${env:NAME}` reference found during substitution."""

    name: str
    pointer: str
    has_default: bool
    is_set: bool


def substitute_string(value: str, environ: Mapping[str, str]) -> str:
    """Replace every `${env:...}` in one string; an unset variable without default becomes ''."""

    def repl(m: re.Match[str]) -> str:
        got = environ.get(m.group(1))
        if got is not None:
            return got
        return m.group(2) or ""

    return ENV_REF.sub(repl, value)


def substitute_env(data: Any, environ: Mapping[str, str], pointer: str = "") -> tuple[Any, list[EnvUse]]:
    """A copy of `data` with `${env:...}` substituted in every string value (keys are left alone)."""
    uses: list[EnvUse] = []

    def walk(value: Any, ptr: str) -> Any:
        if isinstance(value, str):
            if "${env:" not in value:
                return value
            for m in ENV_REF.finditer(value):
                uses.append(EnvUse(m.group(1), ptr, m.group(2) is not None, m.group(1) in environ))
            return substitute_string(value, environ)
        if isinstance(value, dict):
            return {k: walk(v, f"{ptr}/{escape_token(k)}") for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{ptr}/{i}") for i, v in enumerate(value)]
        return value

    return walk(data, pointer), uses

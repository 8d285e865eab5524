"""CORS per path rule: preflight answered at the edge, origins from an allowlist, always `Vary: Origin`.

Browsers send the preflight without credentials (Fetch standard, "CORS-preflight request"), so it is answered
here, before authentication; the allowed origin is echoed on every response of the rule, never a fixed one.
"""

from __future__ import annotations

from collections.abc import Sequence

from edgerules.engine.values import HeaderView
from edgerules.policy.model import CorsRule


def find_rule(
    rules: tuple[CorsRule, ...], path: str, segments: Sequence[str] | None = None
) -> CorsRule | None:
    """The first rule for `path` (`segments`: `paths.split_path(path)` when the caller has it)."""
    for rule in rules:
        if rule.match.paths is None or rule.match.paths.match(path, segments) is not None:
            return rule
    return None


def is_preflight(method: str, headers: HeaderView) -> bool:
    return method == "OPTIONS" and "origin" in headers and "access-control-request-method" in headers


def origin_allowed(rule: CorsRule, origin: str | None) -> bool:
    if not origin:
        return False
    return origin in rule.allow_origins or ("*" in rule.allow_origins and not rule.allow_credentials)


def _allow_origin_value(rule: CorsRule, origin: str) -> str:
    return origin if origin in rule.allow_origins else "*"


def preflight(rule: CorsRule, headers: HeaderView) -> tuple[bool, list[tuple[str, str]], str]:
    """(allowed, headers to answer with, why)."""
    origin = headers.get("origin")
    if not origin_allowed(rule, origin):
        return False, [("Vary", "Origin")], f"origin {origin!r} not in the allowlist"
    method = (headers.get("access-control-request-method") or "").strip().upper()
    if method not in rule.allow_methods:
        return False, [("Vary", "Origin")], f"method {method} not allowed"
    requested = [
        h.strip().lower()
        for h in (headers.get("access-control-request-headers") or "").split(",")
        if h.strip()
    ]
    allowed_headers = {h.lower() for h in rule.allow_headers}
    refused = [h for h in requested if h not in allowed_headers]
    if refused:
        return False, [("Vary", "Origin")], f"headers not allowed: {', '.join(refused)}"
    assert origin is not None
    out = [
        ("Access-Control-Allow-Origin", _allow_origin_value(rule, origin)),
        ("Access-Control-Allow-Methods", ", ".join(rule.allow_methods)),
        ("Access-Control-Allow-Headers", ", ".join(rule.allow_headers)),
        ("Vary", "Origin"),
    ]
    if rule.max_age is not None:
        out.append(("Access-Control-Max-Age", str(rule.max_age)))
    if rule.allow_credentials:
        out.append(("Access-Control-Allow-Credentials", "true"))
    return True, out, "preflight allowed"


def response_headers(rule: CorsRule, origin: str | None) -> list[tuple[str, str]]:
    """Headers for an actual (non-preflight) response on a path the rule covers."""
    if not origin_allowed(rule, origin):
        return []
    assert origin is not None
    out = [("Access-Control-Allow-Origin", _allow_origin_value(rule, origin))]
    if rule.allow_credentials:
        out.append(("Access-Control-Allow-Credentials", "true"))
    if rule.expose_headers:
        out.append(("Access-Control-Expose-Headers", ", ".join(rule.expose_headers)))
    return out

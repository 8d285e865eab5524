"""Test policies: the shipped policy plus an `e2e` environment pointing at origins on free ports.

The overlay is written as JSON (valid YAML) next to a copy of the loaded document, so tests exercise the real
loader and compiler while never touching the fixed ports of the `local` environment.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt

from edgerules.policy.loader import load_yaml_file

from .processes import REPO_ROOT

SEED = REPO_ROOT / "rules" / "aybiza.yaml"
JWT_SECRET = "e2e-secret-that-is-long-enough-for-hs256!!"
ENV = {"JWT_SECRET": JWT_SECRET}


def deep_merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def write_policy(
    directory: Path,
    ports: Mapping[str, int],
    overlay: Mapping[str, Any] | None = None,
    *,
    name: str = "policy.yaml",
) -> Path:
    """Write the seed policy with an `e2e` environment: origins on `ports`, fast health checks, short timeouts."""
    data = load_yaml_file(SEED).data
    env: dict[str, Any] = {
        "regions": {region: {"upstream": f"http://127.0.0.1:{port}"} for region, port in ports.items()},
        "health": {"interval": "0.5s", "timeout": "0.5s", "passive": {"ejection": "3s"}},
        "geo": {"trusted_proxies": ["127.0.0.0/8", "::1/128"]},
        "routing": {"timeout": "2s", "connect_timeout": "0.5s"},
        "store": {"backend": "diskcache", "path": str(directory / "state")},
        "metrics": {"flush_interval": "0.2s"},
        # A test machine: loopback clients are admins (the validator warns, as it should for a real one).
        "admin": {"allow_cidrs": ["127.0.0.0/8", "::1/128"]},
    }
    env = deep_merge(env, overlay or {})
    data.setdefault("environments", {})["e2e"] = env
    path = directory / name
    path.write_text(json.dumps(data, indent=1))
    return path


def bearer(
    sub: str = "user-1", *, role: str = "admin", permissions: tuple[str, ...] = ("a",)
) -> dict[str, str]:
    """An Authorization header with a valid HS256 token for the e2e environment's JWT_SECRET."""
    claims = {"sub": sub, "role": role, "permissions": list(permissions), "exp": int(time.time()) + 600}
    return {"Authorization": f"Bearer {jwt.encode(claims, JWT_SECRET, algorithm='HS256')}"}


# The seed's cache rules plus analytics in origin mode (freshness, Vary and validators from the origin).
ORIGIN_MODE_CACHE_RULES = [
    {"name": "agent-configs", "match": {"prefix": "/api/v1/agents", "methods": ["GET"]}, "ttl": "5m"},
    {"name": "health", "match": {"regex": "(.*/)?health(/.*)?", "methods": ["GET"]}, "ttl": "1m"},
    {"name": "analytics", "match": {"prefix": "/api/v1/analytics", "methods": ["GET"]}, "mode": "origin"},
]

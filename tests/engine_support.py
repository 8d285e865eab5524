"""Helpers for engine unit tests: the shipped policy compiled once, requests built in one line, tokens."""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path

import jwt

from edgerules.engine.core import decide_request
from edgerules.engine.health import HealthRegistry
from edgerules.engine.state import EngineState
from edgerules.engine.values import Decision, EdgeRequest, HeaderView
from edgerules.policy.load import load_policy_file
from edgerules.policy.model import Policy
from edgerules.stores.memory import MemoryStore

ROOT = Path(__file__).resolve().parent.parent
SEED_POLICY = ROOT / "rules" / "aybiza.yaml"
JWT_SECRET = "test-secret-that-is-long-enough-for-hs256!!"
ENVIRON = {"JWT_SECRET": JWT_SECRET, "REDIS_URL": "redis://127.0.0.1:6379/0", "EDGERULES_ADMIN_TOKEN": ""}


@functools.cache
def seed_policy(env: str = "local") -> Policy:
    return load_policy_file(SEED_POLICY, env, environ=ENVIRON, for_serving=True).policy


def make_state() -> EngineState:
    return EngineState(MemoryStore(), HealthRegistry())


def request(
    method: str = "GET",
    path: str = "/api/v1/agents/1",
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    *,
    query: str = "",
    client_ip: str = "127.0.0.1",
    body_size: int | None = None,
) -> EdgeRequest:
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    return EdgeRequest(
        method=method,
        path=path,
        query=query,
        host="api.aybiza.test",
        headers=HeaderView(pairs),
        client_ip=client_ip,
        body_size=body_size,
        timestamp=time.time(),
    )


def token(claims: dict | None = None, *, secret: str = JWT_SECRET, algorithm: str = "HS256", **extra) -> str:
    payload = {
        "sub": "user-1",
        "role": "admin",
        "permissions": ["agents:read"],
        "exp": int(time.time()) + 600,
    }
    payload.update(claims or {})
    payload.update(extra)
    return jwt.encode(payload, secret, algorithm=algorithm)


def bearer(claims: dict | None = None, **extra) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(claims, **extra)}"}


def decide(req: EdgeRequest, state: EngineState | None = None, policy: Policy | None = None) -> Decision:
    return asyncio.run(decide_request(req, policy or seed_policy(), state or make_state()))

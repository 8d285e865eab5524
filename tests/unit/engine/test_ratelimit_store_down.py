"""A rate limit whose store is down: let through by default, refused with `on_store_error: reject`."""

from __future__ import annotations

import dataclasses

import pytest

from edgerules.engine.health import HealthRegistry
from edgerules.engine.ratelimit import RateLimitRule
from edgerules.engine.state import EngineState
from edgerules.engine.values import Forward
from edgerules.policy.load import load_policy_file
from edgerules.stores.base import StoreUnavailable
from edgerules.stores.memory import MemoryStore
from tests.engine_support import decide, request, seed_policy
from tests.support.policies import ENV, write_policy


class CountersDown(MemoryStore):
    async def incr(self, key, amount=1, ttl=None):  # type: ignore[no-untyped-def]
        raise StoreUnavailable("redis://10.0.0.5:6379: connection refused")


def _with_limit(on_store_error: str):
    policy = seed_policy()
    rule = RateLimitRule("per-ip", "client_ip", 100, 60.0, "rules.yaml:1", on_store_error=on_store_error)  # type: ignore[arg-type]
    return dataclasses.replace(policy, rate_limits=((None, rule, False),))


@pytest.mark.parametrize(("mode", "status"), [("allow", None), ("reject", 503)])
def test_store_down(mode, status):
    state = EngineState(CountersDown(), HealthRegistry())
    decision = decide(request("GET", "/health"), state, _with_limit(mode))
    if status is None:
        assert isinstance(decision.outcome, Forward)
        assert any(e.phase == "ratelimit" and e.outcome == "skipped" for e in decision.trace)
    else:
        assert decision.outcome.status == status
        assert decision.context.error == "limits_unavailable"
        assert ("Retry-After", "5") in decision.outcome.headers


def test_on_store_error_compiles_and_defaults_to_allow(tmp_path):
    limits = [
        {"name": "strict", "key": "client_ip", "limit": 5, "window": "1m", "on_store_error": "reject"},
        {"name": "lenient", "key": "client_ip", "limit": 5, "window": "1m"},
    ]
    path = write_policy(tmp_path, {"us-east-1": 9, "us-west-2": 9, "eu-west-1": 9}, {"rate_limits": limits})
    policy = load_policy_file(str(path), "e2e", environ=ENV).policy
    assert [rule.on_store_error for _, rule, _ in policy.rate_limits] == ["reject", "allow"]

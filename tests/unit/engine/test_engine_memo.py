"""The engine's per-policy memos (routing plans, trusted peers, cache keys) never serve a stale answer."""

from __future__ import annotations

import asyncio

from edgerules.engine.core import decide_request
from edgerules.engine.values import Forward
from tests.engine_support import make_state, request, seed_policy


def _forward(policy, state, country: str) -> Forward:
    req = request("GET", "/health", headers={"CF-IPCountry": country})
    outcome = asyncio.run(decide_request(req, policy, state)).outcome
    assert isinstance(outcome, Forward)
    return outcome


def test_routing_follows_health_changes_between_identical_requests():
    policy, state = seed_policy(), make_state()
    assert [t.region for t in _forward(policy, state, "GB").targets] == [
        "eu-west-1",
        "us-east-1",
        "us-west-2",
    ]
    state.health.force("eu-west-1", False)
    targets = _forward(policy, state, "GB").targets
    assert [t.region for t in targets] == ["us-east-1", "us-west-2"]
    assert targets[0].priority == "secondary"
    for name in ("us-east-1", "us-west-2"):
        state.health.force(name, False)
    (fallback,) = _forward(policy, state, "GB").targets
    assert (fallback.region, fallback.priority, fallback.degraded) == ("eu-west-1", "fallback", True)
    state.health.force("eu-west-1", None)
    assert _forward(policy, state, "GB").targets[0].region == "eu-west-1"


def test_each_request_gets_its_own_path_on_shared_routing_plans():
    policy, state = seed_policy(), make_state()
    first = asyncio.run(decide_request(request("GET", "/health", query="x=1"), policy, state))
    second = asyncio.run(decide_request(request("GET", "/health"), policy, state))
    assert [t.path for t in first.outcome.targets] == ["/health?x=1"] * 3
    assert [t.path for t in second.outcome.targets] == ["/health"] * 3

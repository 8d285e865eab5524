"""EdgeRuntime without a proxy: what a reload can and cannot apply."""

from __future__ import annotations

import asyncio

from edgerules.edge.runtime import EdgeRuntime
from tests.support.policies import ENV, write_policy

PORTS = {"us-east-1": 9, "us-west-2": 9, "eu-west-1": 9}


def test_reload_that_changes_the_store_is_applied_but_asks_for_a_restart(tmp_path):
    path = write_policy(tmp_path, PORTS, {"store": {"backend": "memory", "prefix": "one:"}})
    runtime = EdgeRuntime(str(path), "e2e", environ=ENV)
    runtime.load_initial()
    store = runtime.state.store

    write_policy(
        tmp_path, PORTS, {"store": {"backend": "memory", "prefix": "two:"}, "routing": {"retries": 1}}
    )
    assert asyncio.run(runtime.reload()) is True
    assert runtime.policy.routing.retries == 1  # the rest of the new policy serves
    assert runtime.state.store is store  # state is never swapped under running requests
    assert "restart" in runtime.reload_status.restart_required


def test_reload_without_store_changes_needs_no_restart(tmp_path):
    path = write_policy(tmp_path, PORTS, {"store": {"backend": "memory"}})
    runtime = EdgeRuntime(str(path), "e2e", environ=ENV)
    runtime.load_initial()
    write_policy(tmp_path, PORTS, {"store": {"backend": "memory"}, "routing": {"retries": 1}})
    assert asyncio.run(runtime.reload()) is True
    assert runtime.reload_status.restart_required is None


def test_a_store_skipped_under_overload_is_noted_in_the_trace(tmp_path):
    """The overload branch of after_response once called a helper that no longer existed (AttributeError)."""
    import dataclasses

    from edgerules.cache.http import CacheRule
    from edgerules.edge import runtime as rt
    from edgerules.edge.runtime import Exchange
    from edgerules.engine.headers import HeaderEdits
    from edgerules.engine.values import Context, Decision, EdgeRequest, Forward

    path = write_policy(tmp_path, PORTS, {"store": {"backend": "memory"}})
    runtime = EdgeRuntime(str(path), "e2e", environ=ENV)
    runtime.load_initial()
    ctx = dataclasses.replace(Context(), cache_rule=CacheRule(name="api", source="p.yaml:1"), cache_key="k")
    forward = Forward((), "/x", HeaderEdits(), 1.0, 1.0)
    exchange = Exchange(runtime.policy, Decision(forward, ctx, ()), 0.0)
    runtime.cache_stats.stores_in_flight = rt.MAX_STORES_IN_FLIGHT
    asyncio.run(runtime.after_response(exchange, EdgeRequest("GET", "/x"), 200, [], b"{}"))
    assert runtime.cache_stats.stores_skipped == 1
    assert exchange.decision.trace[-1][:4] == ("cache", "api", "not-stored", "overload")

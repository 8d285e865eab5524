"""EdgeRuntime without a proxy: what a reload can and cannot apply."""

from __future__ import annotations

import asyncio

from edgerules.runtime import EdgeRuntime
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

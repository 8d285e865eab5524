"""Options change the mitmproxy way, tested as mitmproxy tests its own addons (`taddons.context`): `configure` only
compiles and swaps the policy, resources start in `running` and stop in `done` once, and changing
`edgerules_policy`, `edgerules_env` or `edgerules_reload_interval` at runtime takes effect with nothing left running.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow

from edgerules.edge.addon import EdgeRules
from edgerules.edge.runtime import EdgeRuntime
from tests.support.policies import ENV, bearer, write_policy

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")


@pytest.fixture(autouse=True)
def jwt_secret(monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def policies(tmp_path: Path) -> tuple[Path, Path]:
    """One policy file with two environments on different stores (`e2e` and `other`), and a second file with
    the same `e2e` store but US traffic routed to eu-west-1 first."""
    first = write_policy(tmp_path, dict.fromkeys(REGIONS, 9))
    data = json.loads(first.read_text())
    other = json.loads(json.dumps(data["environments"]["e2e"]))
    other["store"] = {"backend": "diskcache", "path": str(tmp_path / "other-state")}
    data["environments"]["other"] = other
    first.write_text(json.dumps(data, indent=1))
    data["environments"]["e2e"]["routing"]["countries"] = {"US": ["eu-west-1", "us-east-1", "us-west-2"]}
    second = tmp_path / "second.yaml"
    second.write_text(json.dumps(data, indent=1))
    return first, second


async def region_for(addon: EdgeRules) -> str:
    """The region the addon sends a US request to (decided through its hook, not sent anywhere)."""
    flow = tflow.tflow()
    flow.request = http.Request.make(
        "GET", "http://api.example/api/v1/calls/1", b"", {"CF-IPCountry": "US", **bearer("alice")}
    )
    await addon.requestheaders(flow)
    assert flow.response is None, flow.response.content
    live = addon.live.pop(flow.id)
    return live.exchange.decision.outcome.regions[0].region


def closed(runtime: EdgeRuntime) -> bool:
    store = runtime.state.store if runtime.state is not None else None
    return runtime.stopped and not runtime.tasks() and (store is None or getattr(store, "_closed", True))


async def until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_configure_compiles_only_and_running_starts_the_resources(tmp_path):
    first, _ = policies(tmp_path)

    async def scenario():
        addon = EdgeRules()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, edgerules_policy=str(first), edgerules_env="e2e")
            runtime = addon.runtime
            assert runtime is not None and runtime.policy is not None
            assert runtime.state is None and not runtime.tasks()  # no store, no task before `running`
            await addon.running()
            assert runtime.state is not None and runtime.prober is not None and runtime.tasks()
            await addon.running()  # once
            await addon.done()
            assert closed(runtime)
            await addon.done()  # once: nothing to stop twice

    asyncio.run(scenario())


def test_each_option_changes_at_runtime_and_nothing_is_left_running(tmp_path):
    first, second = policies(tmp_path)

    async def scenario():
        baseline = asyncio.all_tasks()
        addon = EdgeRules()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, edgerules_policy=str(first), edgerules_env="e2e")
            await addon.running()
            runtime = addon.runtime
            assert await region_for(addon) == "us-east-1"

            # edgerules_policy, same store: installed in place, as a hot reload would
            tctx.configure(addon, edgerules_policy=str(second))
            assert addon.runtime is runtime and runtime.policy_path == str(second)
            assert await region_for(addon) == "eu-west-1"
            assert not runtime.reload_status.restart_required

            # edgerules_reload_interval: the watcher uses it at once (an edit is picked up within it)
            tctx.configure(addon, edgerules_reload_interval="0.05")
            assert runtime.reload_interval == 0.05
            reloads = runtime.reload_status.reloads
            data = json.loads(second.read_text())
            data["environments"]["e2e"]["routing"]["countries"] = {"US": ["us-west-2", "us-east-1"]}
            second.write_text(json.dumps(data, indent=1))
            await until(lambda: runtime.reload_status.reloads > reloads)
            assert await region_for(addon) == "us-west-2"

            # edgerules_env onto another store: a runtime of its own starts, the old one stops and closes
            tctx.configure(addon, edgerules_policy=str(first), edgerules_env="other")
            fresh = addon.runtime
            assert fresh is not runtime
            assert await region_for(addon) == "us-east-1"  # waited for the new runtime to start
            await until(lambda: closed(runtime))
            assert fresh.started and not fresh.stopped and fresh.tasks()

            # an invalid value is refused: the option keeps its value, the edge its policy
            with pytest.raises(exceptions.OptionsError):
                tctx.configure(addon, edgerules_reload_interval="soon")
            broken = tmp_path / "broken.yaml"
            broken.write_text("version: 1\nname: [")
            with pytest.raises(exceptions.OptionsError):
                tctx.configure(addon, edgerules_policy=str(broken))
            assert tctx.options.edgerules_policy == str(first)
            assert addon.runtime is fresh and fresh.policy_path == str(first)

            await addon.done()
            assert closed(fresh) and closed(runtime)
        left = {task for task in asyncio.all_tasks() - baseline if not task.done()}
        assert left <= {asyncio.current_task()}, left

    asyncio.run(scenario())

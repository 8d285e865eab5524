"""What the addon keeps on flows and about them, in-process on mitmproxy test flows (no proxy, origins never
contacted): plain data on the flow, live state off it and forgotten when the flow ends."""

from __future__ import annotations

import asyncio

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from edgerules.edge import addon as addon_module
from edgerules.edge.addon import EdgeRules
from edgerules.edge.runtime import EdgeRuntime
from tests.support.policies import ENV, bearer, write_policy

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")


@pytest.fixture
def addon(tmp_path) -> EdgeRules:
    policy = write_policy(tmp_path, dict.fromkeys(REGIONS, 9))
    runtime = EdgeRuntime(str(policy), "e2e", environ=ENV)
    runtime.load_initial()
    edge = EdgeRules()
    edge.runtime = runtime
    return edge


def flow_for(path: str, headers=None) -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.request = http.Request.make(
        "GET", f"http://api.example{path}", b"", {"CF-IPCountry": "US", **(headers or {})}
    )
    return flow


def decided(addon: EdgeRules, path: str, headers=None) -> http.HTTPFlow:
    flow = flow_for(path, headers)
    asyncio.run(addon.requestheaders(flow))
    return flow


def test_the_state_of_a_flow_is_forgotten_when_it_ends(addon):
    answered = decided(addon, "/admin/secrets")  # the edge answers 400 itself
    forwarded = decided(addon, "/api/v1/calls/1", bearer("alice"))
    assert answered.response.status_code == 400 and forwarded.response is None
    assert set(addon.live) == {answered.id, forwarded.id}
    asyncio.run(addon.response(answered))
    forwarded.response = http.Response.make(200, b"{}", {"Content-Type": "application/json"})
    asyncio.run(addon.response(forwarded))
    assert forwarded.response.headers["X-Frame-Options"] == "DENY"  # still decided with the live state
    assert addon.live == {}


def test_errors_and_kills_forget_the_flow(addon):
    failed = decided(addon, "/voice/stream", bearer("alice"))
    killed = decided(addon, "/api/v1/calls/1", bearer("alice"))
    failed.error = failed.error or tflow.terr()
    addon.error(failed)
    killed.live = True
    killed.kill()
    addon.error(killed)  # mitmproxy triggers the error hook for a killed flow
    assert addon.live == {}


def test_flows_that_never_end_cannot_grow_the_table(addon, monkeypatch):
    monkeypatch.setattr(addon_module, "LIVE_LIMIT", 5)
    flows = [decided(addon, "/api/v1/calls/1", bearer("alice")) for _ in range(12)]
    assert len(addon.live) == 5
    assert set(addon.live) == {f.id for f in flows[-5:]}
    # a forgotten flow that comes back is refused, never passed on with the origin's response unchecked
    oldest = flows[0]
    oldest.response = http.Response.make(200, b"the origin's body", {"Content-Type": "text/plain"})
    asyncio.run(addon.response(oldest))
    assert oldest.response.status_code == 500
    assert b"the origin's body" not in oldest.response.content


def test_flow_metadata_is_plain_data(addon):
    for flow in (decided(addon, "/admin/secrets"), decided(addon, "/api/v1/calls/1", bearer("alice"))):
        if flow.response is None:
            flow.response = http.Response.make(200, b"{}", {"Content-Type": "application/json"})
        asyncio.run(addon.response(flow))
        copied = flow.copy()  # deep-copies metadata: fails on live objects (compiled regex sets)
        assert copied.metadata == flow.metadata
        http.HTTPFlow.from_state(flow.get_state())


def test_flow_metadata_carries_the_decision(addon):
    flow = decided(addon, "/api/v1/calls/1", bearer("alice"))
    flow.response = http.Response.make(200, b"{}", {"Content-Type": "application/json"})
    asyncio.run(addon.response(flow))
    data = flow.metadata["edgerules"]
    assert data["outcome"] == "forward" and data["auth"] == "jwt" and data["status"] == 200
    assert data["trace"] and all(
        set(e) == {"phase", "rule", "outcome", "detail", "source"} for e in data["trace"]
    )
    assert "auth jwt" in flow.comment and not flow.marked


def test_an_internal_error_is_marked_and_named(addon, monkeypatch):
    flow = decided(addon, "/api/v1/calls/1", bearer("alice"))
    flow.response = http.Response.make(200, b"the origin's body", {"Content-Type": "text/plain"})

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the response phase")

    monkeypatch.setattr(addon.runtime, "finish", broken)
    asyncio.run(addon.response(flow))
    assert flow.response.status_code == 500
    assert flow.marked == ":no_entry:"
    assert flow.comment.startswith("edge error: 500 internal_error")
    assert flow.metadata["edgerules"]["edge_error"] is True


def test_flow_details_can_be_turned_off(addon):
    addon.flow_details = False  # edgerules_flow_details=false (what `edgerules serve` sets)
    flow = decided(addon, "/admin/secrets")
    addon.response(flow)
    assert flow.response.status_code == 400  # decided as before
    assert flow.comment == "" and not flow.marked and "edgerules" not in flow.metadata


def test_edgerules_serve_turns_flow_details_off_unless_asked(tmp_path, monkeypatch):
    from mitmproxy.addons import proxyserver
    from mitmproxy.test import taddons

    from edgerules.edge.serve import ServeConfig, configure_options

    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    policy = write_policy(tmp_path, dict.fromkeys(REGIONS, 9))

    async def scenario():
        for settings, expected in (((), False), (("edgerules_flow_details=true",), True)):
            edge = EdgeRules()
            with taddons.context(proxyserver.Proxyserver(), edge) as tctx:
                config = ServeConfig(str(policy), "e2e", listen="127.0.0.1:0", settings=settings)
                configure_options(tctx.options, config, "reverse:http://127.0.0.1:9")
                assert tctx.options.edgerules_flow_details is expected and edge.flow_details is expected
                assert edge.runtime is not None and edge.runtime.state is None  # compiled, nothing opened

    asyncio.run(scenario())

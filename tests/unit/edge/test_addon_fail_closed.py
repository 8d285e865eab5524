"""The addon's response phase fails closed: an origin's response never leaves without the policy's headers.

In-process (no proxy): the hooks are called on mitmproxy test flows, with a runtime on a test policy."""

from __future__ import annotations

import asyncio

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from edgerules.edge.addon import EdgeRules
from edgerules.edge.runtime import EdgeRuntime
from tests.support.policies import ENV, bearer, write_policy

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")


@pytest.fixture
def addon(tmp_path) -> EdgeRules:
    policy = write_policy(tmp_path, dict.fromkeys(REGIONS, 9))  # origins are never contacted here
    runtime = EdgeRuntime(str(policy), "e2e", environ=ENV)
    runtime.load_initial()
    edge = EdgeRules()
    edge.runtime = runtime
    return edge


def _decided(addon: EdgeRules, path: str) -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.request = http.Request.make(
        "GET", f"http://api.example{path}", b"", {"CF-IPCountry": "US", **bearer("alice")}
    )
    asyncio.run(addon.requestheaders(flow))
    assert flow.response is None  # forwarded: the origin answers
    flow.response = http.Response.make(200, b"the origin's body", {"Content-Type": "text/plain"})
    return flow


def _break_finish(addon: EdgeRules, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the response phase")

    assert addon.runtime is not None
    monkeypatch.setattr(addon.runtime, "finish", broken)


def test_response_gets_the_policys_headers(addon):
    flow = _decided(addon, "/api/v1/calls/1")
    asyncio.run(addon.response(flow))
    assert flow.response.status_code == 200
    assert flow.response.headers["X-Frame-Options"] == "DENY"


def test_a_failure_before_the_headers_are_set_answers_500_instead_of_the_origins_response(addon, monkeypatch):
    flow = _decided(addon, "/api/v1/calls/1")
    _break_finish(addon, monkeypatch)
    asyncio.run(addon.response(flow))
    assert flow.response.status_code == 500
    assert b"the origin's body" not in flow.response.content
    assert flow.response.headers["Content-Type"] == "application/json"


def test_a_failure_on_a_streamed_response_kills_the_stream(addon, monkeypatch):
    flow = _decided(addon, "/voice/stream")
    flow.live = True  # as in the proxy, where the hook sees a live flow
    _break_finish(addon, monkeypatch)
    addon.responseheaders(flow)
    assert flow.error is not None and flow.error.msg == flow.error.KILLED_MESSAGE

"""The mitmproxy private API edgerules relies on (all of it in `edgerules/edge/mitmprivate.py`) is still there and still
behaves as assumed. When one of these fails after a mitmproxy upgrade, adapt that function (or drop the shortcut for
the public API); don't silence the test."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import subprocess

import mitmproxy
from mitmproxy import addonmanager, hooks, http, master, options
from mitmproxy.test import tflow

from edgerules.edge import mitmprivate
from tests.support.processes import REPO_ROOT


def test_mitmproxy_major_version_is_the_tested_one():
    major = int(mitmproxy.version.VERSION.split(".")[0])
    assert major == mitmprivate.TESTED_MAJOR, (
        f"mitmproxy {mitmproxy.version.VERSION}: edgerules/edge/mitmprivate.py was written for "
        f"{mitmprivate.TESTED_MAJOR}.x; check every function there, then update TESTED_MAJOR"
    )


def test_fast_response_sets_every_field_the_constructor_sets():
    fields = tuple(f.name for f in dataclasses.fields(http.ResponseData))
    assert sorted(fields) == sorted(mitmprivate.RESPONSE_FIELDS), (
        f"http.ResponseData fields changed: {fields}; update mitmprivate.fast_response"
    )
    headers = http.Headers([(b"content-type", b"application/json"), (b"content-length", b"2")])
    fast = mitmprivate.fast_response(201, b"Created", headers, b"{}", 1000.0)
    stock = http.Response(b"HTTP/1.1", 201, b"Created", headers.copy(), b"{}", None, 1000.0, 1000.0)
    assert fast.get_state() == stock.get_state()
    assert (
        fast.status_code == 201
        and fast.content == b"{}"
        and fast.headers["content-type"] == "application/json"
    )
    flow = tflow.tflow()
    flow.response = fast  # what the addon does: it must behave as a stock response on a flow
    assert http.HTTPFlow.from_state(flow.get_state()).response.get_state() == stock.get_state()


def test_iter_hooks_is_the_managers_private_hook_iterator():
    assert hasattr(addonmanager.AddonManager, "_iter_hooks"), "AddonManager._iter_hooks is gone"
    params = list(inspect.signature(addonmanager.AddonManager._iter_hooks).parameters)
    assert params == ["self", "addon", "event"], params

    class Addon:
        def running(self):
            pass

    opts = options.Options()
    loop = asyncio.new_event_loop()
    manager = master.Master(opts, event_loop=loop).addons
    addon = Addon()
    found = list(mitmprivate.iter_hooks(manager, addon, hooks.RunningHook()))
    assert [(a, getattr(f, "__name__", "")) for a, f in found] == [(addon, "running")]
    loop.close()


def test_detach_configure_all_disconnects_the_stock_manager():
    assert hasattr(addonmanager.AddonManager, "_configure_all"), "AddonManager._configure_all is gone"
    opts = options.Options()
    loop = asyncio.new_event_loop()
    manager = master.Master(opts, event_loop=loop).addons
    calls = []

    class Addon:
        def configure(self, updated):
            calls.append(set(updated))

    manager.add(Addon())
    calls.clear()
    opts.update(listen_port=1)
    assert calls == [{"listen_port"}]
    mitmprivate.detach_configure_all(opts, manager)
    opts.update(listen_port=2)
    assert calls == [{"listen_port"}]  # no longer configured by the stock manager
    loop.close()


def test_http1_server_internals_the_head_guard_reads():
    from mitmproxy.proxy import context

    server = mitmprivate.Http1Server(context.Context(_client(), options.Options()))
    assert callable(server.read_headers), "Http1Server.read_headers is gone (edgerules/edge/guard.py)"
    assert callable(server.state), "Http1Server.state (its current handler) changed"
    assert len(server.buf) == 0 and isinstance(bytes(server.buf), bytes), "Http1Server.buf changed"


def _client():
    from mitmproxy import connection

    return connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2), timestamp_start=0.0)


def test_private_mitmproxy_api_is_used_nowhere_else():
    """`._name` on a mitmproxy object outside mitmprivate.py: move it there (with a check here)."""
    found = subprocess.run(
        ["grep", "-rnE", r"(addons|manager|master|opts|http|flow|request|response)\._[a-z]", "edgerules"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    offenders = [line for line in found if not line.startswith("edgerules/edge/mitmprivate.py")]
    offenders += [
        line
        for line in subprocess.run(
            ["grep", "-rnE", r"from mitmproxy[a-z.]*\._|import mitmproxy[a-z.]*\._", "edgerules"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout.splitlines()
        if not line.startswith("edgerules/edge/mitmprivate.py")
    ]
    offenders += [
        line
        for line in subprocess.run(
            ["grep", "-rn", "object.__new__(http.", "edgerules"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout.splitlines()
        if not line.startswith("edgerules/edge/mitmprivate.py")
    ]
    assert offenders == [], offenders

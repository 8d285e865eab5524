"""Every use of mitmproxy's private API, in one place (mitmproxy 12).

Each is a measured shortcut on the request path or a hook mitmproxy offers no public way to reach. An upgrade
may change any of them without notice: `tests/unit/edge/test_mitmprivate.py` checks each against the installed mitmproxy
and fails loudly, naming the function here to adapt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from mitmproxy import addonmanager, hooks, http, options

# `edgerules.edge.guard` reads an HTTP/1 client connection's unfinished request head: the server half of mitmproxy's
# HTTP/1 layer, its `state` (`read_headers` while a head is being read) and its receive buffer `buf`.
from mitmproxy.proxy.layers.http._http1 import Http1Server  # noqa: F401 (re-exported for edgerules.edge.guard)

TESTED_MAJOR = 12  # the mitmproxy major version these shortcuts were written and tested against

# The fields `http.ResponseData.__init__` sets (its dataclass fields): `fast_response` sets exactly these.
RESPONSE_FIELDS = (
    "http_version",
    "headers",
    "content",
    "trailers",
    "timestamp_start",
    "timestamp_end",
    "status_code",
    "reason",
)


def fast_response(
    status: int, reason: bytes, headers: http.Headers, body: bytes, now: float
) -> http.Response:
    """`http.Response(b"HTTP/1.1", status, reason, headers, body, None, now, now)` without the type check
    mitmproxy's message data runs field by field when Python is not started with -O (about a third of the cost
    of building a response, for every response): every value here already has the checked type.

    Private: relies on `Response` keeping its state in `.data` and on `ResponseData`'s field names."""
    data = object.__new__(http.ResponseData)
    vars(data).update(
        http_version=b"HTTP/1.1",
        headers=headers,
        content=body,
        trailers=None,
        timestamp_start=now,
        timestamp_end=now,
        status_code=status,
        reason=reason,
    )
    response = object.__new__(http.Response)
    response.data = data
    return response


def iter_hooks(
    manager: addonmanager.AddonManager, addon: Any, event: hooks.Hook
) -> Iterator[tuple[Any, Callable[..., Any]]]:
    """(addon, handler) for `event` on `addon` and its children, in mitmproxy's order.

    Private: `AddonManager._iter_hooks`, which `trigger_event` uses."""
    return manager._iter_hooks(addon, event)


def detach_configure_all(opts: options.Options, manager: addonmanager.AddonManager) -> None:
    """Stop the stock addon manager from configuring addons on option changes (a replacement manager will).

    Private: `AddonManager._configure_all`, which `AddonManager.__init__` connects to `options.changed`."""
    opts.changed.disconnect(manager._configure_all)

"""Connection-level bounds the mitmproxy hooks alone cannot give.

mitmproxy 12 reads (and buffers) a request's whole body before it sends a response an addon set in
`requestheaders`, and buffers a request head without bound until its blank line. For refusals that is the
wrong way round: a client declaring 200 MiB would be read to the end before it hears 413.

So every client HTTP layer gets a `ClientGuard` in front of it (set in the `next_layer` hook). It passes
events through, except:

- client data that would take an unfinished HTTP/1 request head past the head limit: the client gets the
  policy's 431 and the connection is closed;
- after a refusal at the head (`answer_and_close`): the response is written to the client directly
  (`Connection: close`), our side is half-closed, and whatever the client still sends is read and thrown
  away (never buffered) for at most `LINGER_SECONDS`, then the connection is closed. The lingering read is
  what lets an ordinary client that sends its body before reading (Python's http.client, most libraries)
  see the 413 instead of a connection reset (as nginx's lingering close).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layer import CommandGenerator
from mitmproxy.proxy.layers.http import HttpLayer

from edgerules.mitmprivate import Http1Server

log = logging.getLogger("edgerules")

# Bodies up to this size are read (and thrown away) after an error answered at the head, keeping the
# connection open for the client's next request; above it (or chunked, of unknown size) the connection is
# closed after the answer instead.
DISCARD_ALLOWANCE = 64 * 1024
# After a refusal at the head: how long the rest of the client's upload is read and dropped before closing.
LINGER_SECONDS = 5.0

_guards: weakref.WeakValueDictionary[str, ClientGuard] = weakref.WeakValueDictionary()


def pending_body(request: http.Request) -> int | None:
    """Bytes of body still to come after the head: the declared length, -1 when chunked (unknown), None
    when there is none."""
    headers = request.headers
    if "transfer-encoding" in headers:
        return -1
    value = headers.get("content-length", "").strip()
    if value.isdigit():
        size = int(value)
        return size or None
    return None


def closes_unread(request: http.Request) -> bool:
    """Should an answer given at the head close the connection rather than read the body?"""
    pending = pending_body(request)
    return pending is not None and (pending < 0 or pending > DISCARD_ALLOWANCE)


class ClientGuard:
    """Stands in for mitmproxy's `HttpLayer` of one client connection and passes every event on to it, but
    for the two cases in the module's docstring."""

    def __init__(self, inner: HttpLayer, head_limit: int, head_refusal: Callable[[], bytes]) -> None:
        self.inner = inner
        self.head_limit = head_limit
        self.head_refusal = head_refusal
        self.context = inner.context
        self.discarding = False
        self.discarded = 0
        self.closed = False
        _guards[self.context.client.id] = self

    def __repr__(self) -> str:
        return f"ClientGuard({self.inner!r})"

    def handle_event(self, event: events.Event) -> CommandGenerator[None]:
        if self.closed:
            return
        client = self.context.client
        if (
            self.discarding
            and isinstance(event, (events.DataReceived, events.ConnectionClosed))
            and event.connection is client
        ):
            if isinstance(event, events.DataReceived):
                self.discarded += len(event.data)
                return
            self.closed = True
            yield commands.CloseConnection(client)
            return
        if isinstance(event, events.DataReceived) and event.connection is client and self.head_limit > 0:
            server = self.inner.connections.get(client)
            if isinstance(server, Http1Server) and server.state == server.read_headers:
                buffered = bytes(server.buf) if len(server.buf) else b""
                if _head_length(buffered, event.data) > self.head_limit:
                    self.closed = True
                    yield commands.SendData(client, self.head_refusal())
                    yield commands.CloseConnection(client)
                    return
        yield from self.inner.handle_event(event)

    def linger(self, writer: Any) -> None:
        """Our answer is written: half-close, drop what the client still sends, close after the linger time."""
        self.discarding = True
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            writer.close()
            return
        self.context.client.state &= ~ConnectionState.CAN_WRITE  # mitmproxy must write nothing more
        asyncio.get_running_loop().call_later(LINGER_SECONDS, writer.close)


def _head_length(buffered: bytes, data: bytes) -> int:
    """Length of the request head so far: up to its blank line if `data` completes it, else all of it."""
    tail = buffered[-3:]
    end = (tail + data).find(b"\r\n\r\n")
    if end < 0:
        return len(buffered) + len(data)
    return len(buffered) - len(tail) + end + 4


def wrap_http_layer(nextlayer: Any, head_limit: int, head_refusal: Callable[[], bytes]) -> None:
    """In a `next_layer` hook: put a `ClientGuard` in front of the client's HTTP layer."""
    layer = nextlayer.layer
    if isinstance(layer, HttpLayer):
        nextlayer.layer = ClientGuard(layer, head_limit, head_refusal)


def _client_writer(flow: http.HTTPFlow) -> Any | None:
    try:
        server = ctx.master.addons.get("proxyserver")
        handler = server.connections.get(flow.client_conn.id) if server is not None else None
    except Exception:  # no master (unit tests): nothing to write to
        return None
    if handler is None:
        return None
    io = handler.transports.get(flow.client_conn)
    return getattr(io, "writer", None)


def answer_and_close(flow: http.HTTPFlow, response: http.Response) -> bool:
    """From `requestheaders`: send `response` now and close the connection, without buffering the body.

    True when the response was written; False when the connection cannot take raw bytes from us (TLS or
    HTTP/2 clients, or no guard on it): the flow is killed then, so the client sees the connection closed -
    never its body read to the end first."""
    guard = _guards.get(flow.client_conn.id)
    writer = None
    if (
        guard is not None
        and not flow.client_conn.tls
        and flow.request.http_version in ("HTTP/1.1", "HTTP/1.0")
    ):
        writer = _client_writer(flow)
    flow.response = response
    flow.request.headers.pop("expect", None)  # no "100 Continue" after our answer
    if writer is not None and not writer.is_closing() and guard is not None:
        response.headers["Connection"] = "close"
        try:
            writer.write(http1.assemble_response(response))
        except (OSError, RuntimeError):
            pass
        else:
            guard.linger(writer)
            return True
    if flow.killable:
        flow.kill()
    return False


def raw_response(status: int, headers: Any, body: bytes) -> bytes:
    response = http.Response.make(status, body, [(n.encode(), v.encode()) for n, v in headers])
    response.headers["Connection"] = "close"
    return http1.assemble_response(response)


__all__ = [
    "DISCARD_ALLOWANCE",
    "LINGER_SECONDS",
    "ClientGuard",
    "answer_and_close",
    "closes_unread",
    "pending_body",
    "raw_response",
    "wrap_http_layer",
]

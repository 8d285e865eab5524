"""Connection-level bounds the mitmproxy hooks alone cannot give.

mitmproxy 12 reads (and buffers) a request's whole body before it sends a response an addon set in
`requestheaders`, and buffers a request head without bound until its blank line. For refusals that is the
wrong way round: a client declaring 200 MiB would be read to the end before it hears 413.

So every client HTTP layer gets a `ClientGuard` in front of it (set in the `next_layer` hook). It passes
events through, except:

- client data that would take an unfinished HTTP/1 request head past the head limit: the client gets the
  policy's 431 and the connection is closed;
- after a refusal decided in a hook (`answer_and_close` at the head, a streamed body cut before anything
  was forwarded) or by the guard itself (a body read whole past its limit): the response goes out as soon as
  the event being handled is done (`Connection: close`, through mitmproxy's layers, so TLS applies), our
  side is half-closed, and whatever the client still sends is read and thrown away (never buffered) for at
  most `LINGER_SECONDS`, then the connection is closed. The lingering read is
  what lets an ordinary client that sends its body before reading (Python's http.client, most libraries)
  see the 413 instead of a connection reset (as nginx's lingering close).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layer import CommandGenerator
from mitmproxy.proxy.layers.http import HttpLayer

from edgerules.edge.mitmprivate import Http1Server

log = logging.getLogger("edgerules")

# Bodies up to this size are read (and thrown away) after an error answered at the head, keeping the
# connection open for the client's next request; above it (or chunked, of unknown size) the connection is
# closed after the answer instead.
DISCARD_ALLOWANCE = 64 * 1024
# After a refusal at the head: how long the rest of the client's upload is read and dropped before closing.
LINGER_SECONDS = 5.0

# What a client connection is doing (ClientGuard.phase)
HEAD = "head"  # reading a request head (or waiting for the first one)
IDLE = "idle"  # keep-alive, between requests
BODY = "body"  # reading a body the edge reads whole
BUSY = "busy"  # waiting for the origin, streaming, lingering: no client timeout applies

_TIMEOUT_BODY = b'{"error":"Request timeout","reason":"client_too_slow"}'

_guards: weakref.WeakValueDictionary[str, ClientGuard] = weakref.WeakValueDictionary()


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """Seconds (0: off) and the connection cap; see the `edgerules_*` options in the addon."""

    head_timeout: float = 10.0
    keepalive_timeout: float = 60.0
    body_timeout: float = 60.0
    max_connections: int = 10000


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
        # the request being read: the most of its body mitmproxy may buffer, what to answer past it and who
        # to tell (set from `requestheaders` by `limit_buffered_body`)
        self.body_limit: int | None = None
        self.body_refusal: Callable[[], bytes] | None = None
        self.on_body_cut: Callable[[http.HTTPFlow], None] | None = None
        # an answer a hook decided (`answer_and_close`, a stream cut): sent once the event being handled is
        self.pending: bytes | None = None
        # what the client connection is doing, and since when (for the client timeouts, see `sweep`)
        self.phase = HEAD
        self.phase_since = time.monotonic()
        _guards[self.context.client.id] = self

    def __repr__(self) -> str:
        return f"ClientGuard({self.inner!r})"

    def handle_event(self, event: events.Event) -> CommandGenerator[None]:
        if self.closed:
            return
        try:
            yield from self._handle(event)
        finally:
            self._note_phase()

    def _note_phase(self) -> None:
        phase = BUSY
        server = self.inner.connections.get(self.context.client)
        if self.discarding or self.closed:
            phase = BUSY  # lingering has its own end
        elif isinstance(server, Http1Server):
            state = server.state
            if state == server.read_headers:
                # the first request's head is timed from the connection, a later one from its first byte
                phase = HEAD if len(server.buf) or server.stream_id == 1 else IDLE
            elif state == server.read_body:
                stream = self.inner.streams.get(server.stream_id)
                if stream is not None and stream.client_state == stream.state_consume_request_body:
                    phase = BODY
        if phase != self.phase:
            self.phase = phase
            self.phase_since = time.monotonic()

    def _handle(self, event: events.Event) -> CommandGenerator[None]:
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
        if self.pending is not None:  # a refusal decided in a hook while this event was handled
            refusal, self.pending = self.pending, None
            yield from self._refuse(refusal)
            return
        if (
            self.body_limit is not None
            and isinstance(event, events.DataReceived)
            and event.connection is client
        ):
            yield from self._check_body()

    def _check_body(self) -> CommandGenerator[None]:
        """The body mitmproxy buffered for the current request, against its limit (chunked bodies have no
        declared size to refuse at the head)."""
        server = self.inner.connections.get(self.context.client)
        stream = self.inner.streams.get(getattr(server, "stream_id", -1))  # -1: no stream has it
        buffer = getattr(stream, "request_body_buf", None)
        if buffer is None or len(buffer) <= (self.body_limit or 0):
            return
        size = len(buffer)
        buffer.clear()
        self.body_limit = None
        refusal = self.body_refusal
        if refusal is not None:
            yield from self._refuse(refusal())
        if self.on_body_cut is not None and stream is not None:
            try:
                self.on_body_cut(stream.flow)
            except Exception:
                log.exception("edgerules: body cut callback failed")
        log.info("edgerules: request body over its limit after %d bytes: 413, connection closed", size)

    def _refuse(self, answer: bytes) -> CommandGenerator[None]:
        """Send `answer`, close our side, then read and drop whatever the client still sends (never handing
        it to mitmproxy) until it closes or LINGER_SECONDS pass. Layer commands, so TLS applies as usual."""
        client = self.context.client
        yield commands.SendData(client, answer)
        yield commands.CloseTcpConnection(client, half_close=True)
        self.discarding = True
        asyncio.get_running_loop().call_later(LINGER_SECONDS, self._close_late)

    def _close_late(self) -> None:
        try:
            server = ctx.master.addons.get("proxyserver")
            handler = server.connections.get(self.context.client.id)
            writer = handler.transports[self.context.client].writer
        except Exception:
            return
        if writer is not None:
            writer.close()

    def phase_never_read(self) -> bool:
        """Waiting for the first request and not one byte of it: closed without an answer."""
        server = self.inner.connections.get(self.context.client)
        return isinstance(server, Http1Server) and server.stream_id == 1 and not len(server.buf)


def _head_length(buffered: bytes, data: bytes) -> int:
    """Length of the request head so far: up to its blank line if `data` completes it, else all of it."""
    tail = buffered[-3:]
    end = (tail + data).find(b"\r\n\r\n")
    if end < 0:
        return len(buffered) + len(data)
    return len(buffered) - len(tail) + end + 4


def wrap_http_layer(nextlayer: Any, head_limit: int, head_refusal: Callable[[], bytes]) -> None:
    """In a `next_layer` hook: put a `ClientGuard` in front of the client's HTTP layer, at the top of the
    chosen layers or under the ones before it (a stack such as ClientTLSLayer / HttpLayer)."""
    layer = nextlayer.layer
    if isinstance(layer, HttpLayer):
        nextlayer.layer = ClientGuard(layer, head_limit, head_refusal)
        return
    for _ in range(8):  # the few layers of one stack
        child = getattr(layer, "child_layer", None)
        if child is None:
            return
        if isinstance(child, HttpLayer):
            layer.child_layer = ClientGuard(child, head_limit, head_refusal)
            return
        layer = child


def answer_and_close(flow: http.HTTPFlow, response: http.Response) -> bool:
    """From `requestheaders`: send `response` and close the connection, without reading the body.

    The client's guard sends it as soon as the hook returns (through mitmproxy's own layers, so TLS applies),
    half-closes, and drops whatever the client still sends. True when it will be sent; False for a client
    the guard cannot answer in HTTP/1 (HTTP/2, or no guard): the flow is killed then, so the client sees the
    connection closed - never its body read to the end first."""
    guard = _guards.get(flow.client_conn.id)
    flow.response = response
    flow.request.headers.pop("expect", None)  # no "100 Continue" after our answer
    if guard is not None and flow.request.http_version in ("HTTP/1.1", "HTTP/1.0"):
        response.headers["Connection"] = "close"
        guard.pending = http1.assemble_response(response)
        return True
    if flow.killable:
        flow.kill()
    return False


def _proxyserver() -> Any | None:
    try:
        return ctx.master.addons.get("proxyserver")
    except Exception:
        return None


def over_connection_cap(limits: ClientLimits) -> bool:
    """From `client_connected`: is this connection one too many (it is counted already)?"""
    server = _proxyserver()
    if server is None or limits.max_connections <= 0:
        return False
    return len(server.connections) > limits.max_connections


def sweep(limits: ClientLimits, now: float | None = None) -> dict[str, int]:
    """Close the client connections past a timeout: a head not complete within `head_timeout` (408), a
    keep-alive connection idle for `keepalive_timeout` (closed), a whole-read body not complete within
    `body_timeout` (408). Returns {"connections": open ones, "head": n, "idle": n, "body": n} closed now."""
    closed = {"connections": 0, HEAD: 0, IDLE: 0, BODY: 0}
    server = _proxyserver()
    if server is None:
        return closed
    now = time.monotonic() if now is None else now
    wall = time.time()
    handlers = list(server.connections.values())
    closed["connections"] = len(handlers)
    for handler in handlers:
        client = getattr(handler, "client", None)
        if client is None:
            continue
        guard = _guards.get(client.id)
        if guard is None:  # no byte yet (no layer chosen): a head that has not begun
            started = client.timestamp_start or wall
            if limits.head_timeout > 0 and wall - started > limits.head_timeout:
                _close(handler, client, None)
                closed[HEAD] += 1
            continue
        limit = {HEAD: limits.head_timeout, IDLE: limits.keepalive_timeout, BODY: limits.body_timeout}.get(
            guard.phase, 0.0
        )
        if limit > 0 and now - guard.phase_since > limit:
            phase = guard.phase
            guard.closed = True
            answer = (
                None if phase == IDLE or (phase == HEAD and guard.phase_never_read()) else _timeout_answer()
            )
            _close(handler, client, answer)
            closed[phase] += 1
    return closed


def _timeout_answer() -> bytes:
    return raw_response(
        408, [("Content-Type", "application/json"), ("Cache-Control", "no-store")], _TIMEOUT_BODY
    )


def _close(handler: Any, client: Any, answer: bytes | None) -> None:
    io = handler.transports.get(client)
    writer = getattr(io, "writer", None)
    if writer is None or writer.is_closing():
        return
    try:
        # raw bytes only in clear text: a TLS client is just closed
        if answer is not None and not client.tls and client.state & ConnectionState.CAN_WRITE:
            writer.write(answer)
        writer.close()
    except (OSError, RuntimeError):
        _abort(writer)


def limit_buffered_body(
    flow: http.HTTPFlow,
    limit: int | None,
    refusal: Callable[[], bytes],
    on_cut: Callable[[http.HTTPFlow], None],
) -> None:
    """From `requestheaders`: mitmproxy may buffer at most `limit` bytes of this request's body; past that
    the client gets `refusal()` (413) and the connection is closed. None: no limit."""
    guard = _guards.get(flow.client_conn.id)
    if guard is not None:
        guard.body_limit = limit
        guard.body_refusal = refusal
        guard.on_body_cut = on_cut


def _writer(flow: http.HTTPFlow, connection: Any) -> Any | None:
    try:
        server = ctx.master.addons.get("proxyserver")
        handler = server.connections.get(flow.client_conn.id) if server is not None else None
    except Exception:
        return None
    io = handler.transports.get(connection) if handler is not None else None
    return getattr(io, "writer", None)


def _abort(writer: Any | None) -> None:
    if writer is not None:
        transport = getattr(writer, "transport", None)
        if transport is not None:
            transport.abort()
        else:
            writer.close()


class StreamBudget:
    """`flow.request.stream` for a streamed request: passes the body through chunk by chunk, counting it.
    Past `limit` nothing more is forwarded, and

    - if no byte of the body was forwarded yet: the client gets `refusal` (413) and the connection is closed
      (after the lingering read), the origin connection is aborted;
    - else both connections are aborted (the origin has part of a body: only closing tells it so).

    `on_cut(flow, seen, answered)` is called once, to log and count it."""

    def __init__(
        self,
        flow: http.HTTPFlow,
        limit: int,
        refusal: Callable[[], http.Response],
        on_cut: Callable[[http.HTTPFlow, int, bool], None],
    ) -> None:
        self.flow = flow
        self.limit = limit
        self.refusal = refusal
        self.on_cut = on_cut
        self.seen = 0
        self.forwarded = 0
        self.cut = False

    def __call__(self, data: bytes) -> bytes:
        if self.cut or not data:
            return b""
        self.seen += len(data)
        if self.seen <= self.limit:
            self.forwarded += len(data)
            return data
        self.cut = True
        flow = self.flow
        answered = False
        if self.forwarded == 0:
            answered = _answer_streaming(flow, self.refusal())
        if not answered:
            _abort(_writer(flow, flow.client_conn))
        _abort(_writer(flow, flow.server_conn))
        try:
            self.on_cut(flow, self.seen, answered)
        except Exception:
            log.exception("edgerules: stream cut callback failed")
        return b""


def _answer_streaming(flow: http.HTTPFlow, response: http.Response) -> bool:
    """As `answer_and_close`, for a flow mid-stream (called from the stream callable, while the guard is
    handling the client's data): the flow's state is left alone."""
    guard = _guards.get(flow.client_conn.id)
    if guard is None or flow.request.http_version not in ("HTTP/1.1", "HTTP/1.0"):
        return False
    response.headers["Connection"] = "close"
    guard.pending = http1.assemble_response(response)
    return True


def raw_response(status: int, headers: Any, body: bytes) -> bytes:
    response = http.Response.make(status, body, [(n.encode(), v.encode()) for n, v in headers])
    response.headers["Connection"] = "close"
    return http1.assemble_response(response)


__all__ = [
    "DISCARD_ALLOWANCE",
    "LINGER_SECONDS",
    "ClientGuard",
    "ClientLimits",
    "StreamBudget",
    "answer_and_close",
    "closes_unread",
    "limit_buffered_body",
    "over_connection_cap",
    "pending_body",
    "raw_response",
    "sweep",
    "wrap_http_layer",
]

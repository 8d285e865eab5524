"""The addon's own HTTP client to origins: timeouts, failover to the next region, passive health.

mitmproxy 12 has no upstream connect/read timeout and answers connection failures with its own HTML 502, which
an addon cannot replace. So for buffered requests the addon sends the request itself and hands mitmproxy a
finished response.

The client is a small HTTP/1.1 implementation on an `asyncio.Protocol` (a general-purpose client cost about four
times the CPU of the bare exchange): one future and one timer per request, a keep-alive pool per (scheme, host,
port) with a bounded number of idle connections and an idle timeout. Responses are framed strictly: duplicate or
malformed Content-Length, Content-Length with Transfer-Encoding, any coding but plain `chunked`, bare CR/LF or
NUL in the head, and heads over `max_header_bytes` are "protocol" errors (response smuggling, runaway origins).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edgerules.engine.headers import FRAMING, HOP_BY_HOP, HeaderEdits, end_to_end, forwarded_request_fields
from edgerules.engine.steps import IDEMPOTENT
from edgerules.engine.values import Target
from edgerules.kinds import EdgeRulesError, UpstreamFailure

_NOT_RELAYED = HOP_BY_HOP | FRAMING  # response fields the parser consumes (framing) or drops (hop-by-hop)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # Content-Length: 0 even without a body
_NO_BODY_STATUSES = frozenset({204, 304})
_HEX = b"0123456789abcdefABCDEF"
_MAX_CHUNK_LINE = 4096
# Buffered origin answers are read whole into memory: one larger than this is refused ("too_large", 502
# `upstream_too_large` for the client) rather than read. `edgerules_max_origin_body` changes it.
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    target: Target
    elapsed: float  # seconds, from sending to the full body


class UpstreamError(EdgeRulesError):
    """`kind` is "connect" (nothing was sent), "timeout" or "protocol" (the origin broke the exchange)."""

    def __init__(self, kind: UpstreamFailure, detail: str, target: Target) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.target = target


class _ProtocolError(Exception):
    pass


class _TooLarge(_ProtocolError):
    """The response body passed the client's `max_body_bytes`: not read further."""


class _DeadConnection(Exception):
    """The connection ended before any byte of the response: a pooled one the origin had already dropped."""


class _Timeout(Exception):
    pass


_Result = tuple[int, str, list[tuple[str, str]], bytes, bool]  # status, reason, headers, body, reusable

# parser states
_IDLE, _HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _TO_CLOSE = range(8)


class _Connection(asyncio.Protocol):
    """One origin connection: writes a request, parses one response into a future, then waits in the pool."""

    def __init__(self, max_header_bytes: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._max_head = max_header_bytes
        self._buf = bytearray()
        self._state = _IDLE
        self._waiter: asyncio.Future[_Result] | None = None
        self._head_only = False
        self._received = False  # any byte of the current response
        self._scan_from = 0
        self._status = 0
        self._reason = ""
        self._headers: list[tuple[str, str]] = []
        self._reusable = True
        self._remaining = 0
        self._trailer_bytes = 0
        self._parts: list[bytes | bytearray] = []
        self._max_body = DEFAULT_MAX_BODY_BYTES
        self._body_size = 0  # chunked and read-to-close bodies: bytes announced or read so far

    # ------------------------------------------------------------------------------------------ used by the client

    def start(
        self,
        head: bytes,
        body: bytes,
        head_only: bool,
        waiter: asyncio.Future[_Result],
        max_body: int = 0,
    ) -> None:
        self._waiter = waiter
        self._max_body = max_body or DEFAULT_MAX_BODY_BYTES
        self._body_size = 0
        self._state = _HEAD
        self._head_only = head_only
        self._received = False
        self._scan_from = 0
        transport = self.transport
        assert transport is not None
        if not body:
            transport.write(head)
        elif len(body) <= 65536:  # one segment for the common small body
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)

    def timed_out(self) -> None:
        self._fail(_Timeout())

    def abort(self) -> None:
        self.closed = True
        self._state = _IDLE
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == _IDLE:  # nothing was asked: the connection is out of step with us
            self.abort()
            return
        self._received = True
        try:
            if not self._buf:  # fast paths: no copy through the buffer
                if state == _BODY:
                    self._take_body(data)
                    return
                if state == _HEAD:
                    end = data.find(b"\r\n\r\n")
                    if 0 <= end <= self._max_head:
                        self._head(data[:end].decode("latin-1"))
                        if len(data) == end + 4:
                            return
                        data = data[end + 4 :]
                        if self._state == _BODY:
                            self._take_body(data)
                            return
                        if self._state == _IDLE:  # a complete bodiless answer with bytes after it
                            self.abort()
                            return
            self._buf += data
            self._parse()
        except _ProtocolError as exc:
            self._fail(exc)
        except (
            ValueError,
            UnicodeError,
        ) as exc:  # whatever slipped past the checks is still the origin's fault
            self._fail(_ProtocolError(f"unparseable response: {exc}"))

    def _take_body(self, data: bytes) -> None:
        remaining = self._remaining
        if len(data) < remaining:
            self._parts.append(data)
            self._remaining = remaining - len(data)
            return
        self._parts.append(data if len(data) == remaining else data[:remaining])
        self._complete()
        if len(data) > remaining:  # bytes after the response: nothing we can trust on this connection
            self.abort()

    def eof_received(self) -> bool:
        self._ended(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)

    # ------------------------------------------------------------------------------------------ parsing

    def _ended(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        if self._state == _TO_CLOSE and exc is None:
            self._parts.append(self._buf)
            self._buf = bytearray()
            self._complete()
        elif not self._received:
            self._fail(_DeadConnection(f"connection closed before the response{_why(exc)}"))
        else:
            self._fail(_ProtocolError(f"connection closed before the response ended{_why(exc)}"))

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self._waiter = None
        self.abort()

    def _complete(self) -> None:
        parts = self._parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        self._parts = []
        self._state = _IDLE
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, self._reason, self._headers, bytes(body), self._reusable))
        if self._buf:  # bytes after the response: nothing we can trust on this connection
            self.abort()

    def _parse(self) -> None:
        buf = self._buf
        while True:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n", self._scan_from)
                if end < 0:
                    if len(buf) > self._max_head:
                        raise _ProtocolError(f"response head over {self._max_head} bytes")
                    self._scan_from = max(0, len(buf) - 3)
                    return
                if end > self._max_head:
                    raise _ProtocolError(f"response head over {self._max_head} bytes")
                head = buf[:end].decode("latin-1")
                del buf[: end + 4]
                self._scan_from = 0
                self._head(head)
            elif state == _BODY:
                remaining = self._remaining
                if len(buf) < remaining:
                    if buf:
                        self._parts.append(bytes(buf))
                        self._remaining = remaining - len(buf)
                        buf.clear()
                    return
                if len(buf) == remaining:  # hand the buffer over rather than copy it
                    self._parts.append(buf)
                    self._buf = bytearray()
                else:
                    self._parts.append(buf[:remaining])
                    del buf[:remaining]
                self._complete()
                return
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > _MAX_CHUNK_LINE:
                        raise _ProtocolError("chunk size line too long")
                    return
                size = buf[:end].split(b";", 1)[0].strip(b" \t")
                del buf[: end + 2]
                if not size or len(size) > 15 or size.lstrip(_HEX):
                    raise _ProtocolError(f"bad chunk size {bytes(size)[:20]!r}")
                self._remaining = int(size, 16)
                self._body_size += self._remaining
                if self._body_size > self._max_body:
                    raise _TooLarge(f"response body over {self._max_body} bytes")
                self._state = _CHUNK_DATA if self._remaining else _TRAILERS
            elif state == _CHUNK_DATA:
                if not buf:
                    return
                take = min(self._remaining, len(buf))
                self._parts.append(buf[:take])
                del buf[:take]
                self._remaining -= take
                if self._remaining:
                    return
                self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise _ProtocolError("chunk data not followed by CRLF")
                del buf[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:  # trailers are read and discarded
                end = buf.find(b"\r\n")
                if end < 0:
                    if self._trailer_bytes + len(buf) > self._max_head:
                        raise _ProtocolError(f"trailers over {self._max_head} bytes")
                    return
                del buf[: end + 2]
                self._trailer_bytes += end + 2
                if end == 0:
                    self._complete()
                    return
                if self._trailer_bytes > self._max_head:
                    raise _ProtocolError(f"trailers over {self._max_head} bytes")
            elif state == _TO_CLOSE:
                if buf:
                    self._body_size += len(buf)
                    if self._body_size > self._max_body:
                        raise _TooLarge(f"response body over {self._max_body} bytes")
                    self._parts.append(bytes(buf))
                    buf.clear()
                return
            else:
                return

    def _head(self, head: str) -> None:
        """Status line and headers; chooses the body framing (RFC 9112 section 6.3)."""
        lines = head.split("\r\n")
        breaks = len(lines) - 1
        if head.count("\n") != breaks or head.count("\r") != breaks or "\x00" in head:
            raise _ProtocolError("bare CR, LF or NUL in the response head")
        version, _, rest = lines[0].partition(" ")
        if version == "HTTP/1.1":
            reusable = True
        elif version == "HTTP/1.0":
            reusable = False
        else:
            raise _ProtocolError(f"bad status line {lines[0][:60]!r}")
        code, _, reason = rest.partition(" ")
        if len(code) != 3 or not code.isdigit() or not code.isascii():
            raise _ProtocolError(f"bad status line {lines[0][:60]!r}")
        status = int(code)
        headers: list[tuple[str, str]] = []
        length: str | None = None
        coding: str | None = None
        connection = ""
        for i in range(1, len(lines)):
            name, sep, value = lines[i].partition(":")
            if not sep or not name or name[-1] in " \t" or name[0] in " \t":
                raise _ProtocolError(f"malformed header line {lines[i][:60]!r}")
            value = value.strip(" \t")
            lower = name.lower()
            if lower not in _NOT_RELAYED:
                headers.append((name, value))
            elif lower == "content-length":
                if length is not None:
                    raise _ProtocolError("more than one Content-Length")
                length = value
            elif lower == "transfer-encoding":
                coding = value if coding is None else f"{coding},{value}"
            elif lower == "connection":
                connection = f"{connection},{value.lower()}"
        if status < 200:
            if status == 101:
                raise _ProtocolError("101 Switching Protocols to a request that asked for no upgrade")
            return  # interim response (100 Continue, 103 Early Hints): the real one follows
        if length is not None and coding is not None:
            raise _ProtocolError("both Content-Length and Transfer-Encoding")
        if connection:
            tokens = {t.strip() for t in connection.split(",")}
            if "close" in tokens:
                reusable = False
            elif "keep-alive" in tokens:
                reusable = True
            if tokens & {n.lower() for n, _ in headers}:  # RFC 9110 7.6.1: fields Connection names
                headers = end_to_end([*headers, ("Connection", connection)])
        self._status, self._reason, self._headers, self._reusable = status, reason, headers, reusable
        if length is not None and (not length.isdigit() or not length.isascii() or len(length) > 18):
            raise _ProtocolError(f"bad Content-Length {length[:30]!r}")
        if self._head_only or status in _NO_BODY_STATUSES:
            self._complete()
        elif coding is not None:
            if coding.replace(" ", "").replace("\t", "").lower() != "chunked":
                raise _ProtocolError(f"unsupported Transfer-Encoding {coding[:40]!r}")
            self._state = _CHUNK_SIZE
            self._trailer_bytes = 0
        elif length is not None:
            self._remaining = int(length)
            if self._remaining > self._max_body:  # refused from the head: not one byte of it is read
                raise _TooLarge(f"response body of {self._remaining} bytes, over {self._max_body}")
            self._state = _BODY
            if not self._remaining:
                self._complete()
        else:
            self._state = _TO_CLOSE  # the body ends when the origin closes
            self._reusable = False


def _why(exc: BaseException | None) -> str:
    return f" ({type(exc).__name__}: {exc})" if exc is not None else ""


_Key = tuple[str, str, int]


class UpstreamClient:
    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_idle_per_host: int = 64,
        idle_timeout: float = 15.0,
        max_header_bytes: int = 65536,
        max_body_bytes: int = 0,
    ) -> None:
        """`ssl_context` verifies https origins (default: `ssl.create_default_context()`, made on first use)."""
        self._ssl = ssl_context
        self._max_idle = max_idle_per_host
        self._idle_timeout = idle_timeout
        self._max_head = max_header_bytes
        # the most of an origin's answer read into memory (0: DEFAULT_MAX_BODY_BYTES); over it: "too_large"
        self.max_body_bytes = max_body_bytes or DEFAULT_MAX_BODY_BYTES
        self._idle: dict[_Key, deque[_Connection]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def send(
        self,
        method: str,
        target: Target,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        *,
        timeout: float,
        connect_timeout: float,
    ) -> UpstreamResponse:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # pooled connections belong to the loop that made them
            self._idle.clear()
            self._sweeper = None
            self._loop = loop
        head = encode_head(method, target, headers, body)
        key = (target.scheme, target.host, target.port)
        deadline = loop.time() + timeout
        conn = self._checkout(key, loop.time())
        retried = False
        while True:
            reused = conn is not None
            if conn is None:
                conn = await self._connect(target, min(connect_timeout, timeout))
            waiter: asyncio.Future[_Result] = loop.create_future()
            conn.start(head, body, method == "HEAD", waiter, self.max_body_bytes)
            timer = loop.call_at(deadline, conn.timed_out)
            try:
                status, reason, out_headers, payload, reusable = await waiter
            except _DeadConnection as exc:
                if reused and not retried and method in IDEMPOTENT:
                    retried, conn = True, None
                    continue
                raise UpstreamError("protocol", str(exc), target) from exc
            except _TooLarge as exc:
                raise UpstreamError("too_large", str(exc), target) from exc
            except _ProtocolError as exc:
                raise UpstreamError("protocol", str(exc), target) from exc
            except _Timeout as exc:
                raise UpstreamError("timeout", f"no answer within {timeout:g}s", target) from exc
            except BaseException:  # cancelled: the connection is mid-exchange, it must not be reused
                conn.abort()
                raise
            finally:
                timer.cancel()
            if reusable and not conn.closed:
                self._release(key, conn, loop)
            else:
                conn.close()
            return UpstreamResponse(
                status=status,
                reason=reason,
                headers=out_headers,
                body=payload,
                target=target,
                elapsed=time.perf_counter() - started,
            )

    async def _connect(self, target: Target, connect_timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if target.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        max_head = self._max_head
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(max_head),
                    target.host,
                    target.port,
                    ssl=tls,
                    server_hostname=target.host if tls is not None else None,
                )
        except TimeoutError as exc:
            raise UpstreamError("connect", f"no connection within {connect_timeout:g}s", target) from exc
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake and certificate errors
            raise UpstreamError("connect", f"{type(exc).__name__}: {exc}", target) from exc
        return conn

    def _checkout(self, key: _Key, now: float) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been dropped
            if conn.closed:
                continue
            if now - conn.idle_since > self._idle_timeout:  # and everything older below it
                conn.close()
                while idle:
                    idle.pop().close()
                return None
            return conn
        return None

    def _release(self, key: _Key, conn: _Connection, loop: asyncio.AbstractEventLoop) -> None:
        conn.idle_since = loop.time()
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = deque()
        elif len(idle) >= self._max_idle:
            idle.popleft().close()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._idle_timeout, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle past the timeout (also those of origins that get no more traffic)."""
        self._sweeper = None
        loop = self._loop
        if loop is None:
            return
        limit = loop.time() - self._idle_timeout
        for key, idle in list(self._idle.items()):
            while idle and (idle[0].closed or idle[0].idle_since <= limit):
                idle.popleft().close()
            if not idle:
                del self._idle[key]
        if self._idle:
            self._sweeper = loop.call_later(self._idle_timeout, self._sweep)

    def idle_connections(self) -> int:
        """Open connections waiting in the pool (for tests and diagnostics)."""
        return sum(1 for idle in self._idle.values() for conn in idle if not conn.closed)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()


def encode_head(method: str, target: Target, headers: Sequence[tuple[str, str]], body: bytes) -> bytes:
    """Request line and headers: the headers as given, a Host when they have none, Content-Length for bodies
    (and 0 for POST/PUT/PATCH without one); never Transfer-Encoding. Names and values are str as mitmproxy
    decodes them (UTF-8, surrogateescape), so encoding them back gives the client's bytes."""
    path = target.path
    block = "\r\n".join(map(": ".join, headers))
    lines = len(headers) - 1
    if (
        (lines >= 0 and (block.count("\n") != lines or block.count("\r") != lines or "\x00" in block))
        or " " in path
        or "\r" in path
        or "\n" in path
    ):
        raise UpstreamError("protocol", "CR, LF or NUL in a request header, or a space in the path", target)
    lowered = "\r\n" + block.lower()
    if "\r\ncontent-length:" in lowered or "\r\ntransfer-encoding:" in lowered:  # framing is ours alone
        kept = [(n, v) for n, v in headers if n.lower() not in ("content-length", "transfer-encoding")]
        block = "\r\n".join(map(": ".join, kept))
    if "\r\nhost:" not in lowered:
        block = f"Host: {_authority(target)}\r\n{block}" if block else f"Host: {_authority(target)}"
    if body or method in _BODY_METHODS:
        block = f"{block}\r\nContent-Length: {len(body)}"
    return f"{method} {path} HTTP/1.1\r\n{block}\r\n\r\n".encode("utf-8", "surrogateescape")


def _authority(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


def request_headers(
    original: Iterable[tuple[str, str]], edits: HeaderEdits, target: Target
) -> list[tuple[str, str]]:
    """The headers the origin gets on the buffered path: the client's end-to-end fields (no hop-by-hop, no
    framing, no Expect), then the decision's edits and the target's own headers (`headers.py`)."""
    fields = original if isinstance(original, list | tuple) else list(original)
    return forwarded_request_fields(fields, edits.then_set(target.headers), framing_kept=False)

"""The upstream HTTP/1.1 client against real servers on 127.0.0.1: the demo origin (`examples/origin.py`) for
ordinary exchanges, small scripted asyncio servers for the odd framings and failures, a local TLS origin."""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgerules.edge.upstream import (
    HOP_BY_HOP,
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
    encode_head,
    request_headers,
)
from edgerules.engine.headers import HeaderEdits
from edgerules.engine.values import Target
from tests.support.origins import Origin, start_origin
from tests.support.ports import free_port

STREAM_BODY = bytes(range(256)) * 16 * 20  # examples/origin.py /voice/stream: 20 chunks of 4 KiB


def run[T](coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(bounded())


def target(port: int, path: str = "/echo", *, host: str = "127.0.0.1", scheme: str = "http") -> Target:
    return Target(
        region="r",
        priority="primary",
        scheme=scheme,
        host=host,
        port=port,
        path=path,
        headers=(("Host", f"{host}:{port}"),),
    )


async def send(
    client: UpstreamClient,
    tgt: Target,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    timeout: float = 5.0,
    connect_timeout: float = 2.0,
) -> UpstreamResponse:
    return await client.send(
        method,
        tgt,
        list(tgt.headers) if headers is None else headers,
        body,
        timeout=timeout,
        connect_timeout=connect_timeout,
    )


async def error_of(coro: Awaitable[object]) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        await coro
    return caught.value


# ---------------------------------------------------------------------------------------------- scripted servers


class Script:
    """An asyncio server on 127.0.0.1 running `handler(script, reader, writer)` for every connection; counts
    connections and keeps every request head and body it read through `read_request`."""

    Handler = Callable[["Script", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Script:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.sleep(0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
        self.requests.append((head, body))
        return head, body


def replies(*answers: bytes, then_close: bool = False) -> Script.Handler:
    """Answer the n-th request on each connection with answers[n] (the last one repeats)."""

    async def handler(script: Script, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        while await script.read_request(reader) is not None:
            writer.write(answers[min(n, len(answers) - 1)])
            await writer.drain()
            n += 1
            if then_close:
                return

    return handler


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Seq: 1\r\n\r\nok"


# ---------------------------------------------------------------------------------------------- the demo origin


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    started = start_origin("upstream-test")
    try:
        yield started
    finally:
        started.stop()


def echo(response: UpstreamResponse) -> dict:
    return json.loads(response.body)


def test_get_reaches_the_origin_as_given_and_the_connection_is_reused(origin: Origin) -> None:
    async def scenario() -> None:
        client = UpstreamClient()
        tgt = target(origin.port, "/api/v1/calls/7?x=1&y=%20")
        headers = [("Accept", "application/json"), ("X-Multi", "a"), ("X-Multi", "b"), *tgt.headers]
        first = await send(client, tgt, headers=headers)
        assert first.status == 200 and first.reason == "OK"
        seen = echo(first)
        assert (seen["method"], seen["path"], seen["query"]) == ("GET", "/api/v1/calls/7", "x=1&y=%20")
        assert seen["headers"]["Host"] == f"127.0.0.1:{origin.port}"
        assert seen["headers"]["X-Multi"] == "a, b"
        assert "Content-Length" not in seen["headers"] and "Transfer-Encoding" not in seen["headers"]
        assert ("X-Origin-Region", "upstream-test") in first.headers
        assert not {name.lower() for name, _ in first.headers} & HOP_BY_HOP
        assert first.target is tgt and first.elapsed > 0
        assert client.idle_connections() == 1
        second = await send(client, tgt, headers=headers)
        assert second.status == 200 and client.idle_connections() == 1
        await client.close()
        assert client.idle_connections() == 0

    run(scenario())


def test_bodies_and_content_length(origin: Origin) -> None:
    async def scenario() -> None:
        client = UpstreamClient()
        tgt = target(origin.port, "/submit")
        posted = echo(await send(client, tgt, "POST", body=b"x" * 70_000))  # head and body written apart
        assert posted["body_size"] == 70_000 and posted["headers"]["Content-Length"] == "70000"
        empty = echo(await send(client, tgt, "POST"))
        assert empty["body_size"] == 0 and empty["headers"]["Content-Length"] == "0"
        patched = echo(await send(client, tgt, "PATCH", body=b"{}"))
        assert patched["headers"]["Content-Length"] == "2"
        got = echo(await send(client, tgt, "GET"))
        assert "Content-Length" not in got["headers"]
        await client.close()

    run(scenario())


def test_chunked_stream_is_read_byte_for_byte(origin: Origin) -> None:
    async def scenario() -> None:
        client = UpstreamClient()
        response = await send(client, target(origin.port, "/voice/stream"))
        assert response.status == 200 and response.body == STREAM_BODY
        assert client.idle_connections() == 1  # a chunked body ends cleanly: the connection is kept
        await client.close()

    run(scenario())


def test_bodiless_answers_head_204_304(origin: Origin) -> None:
    async def scenario() -> None:
        client = UpstreamClient()
        tgt = target(origin.port, "/thing")
        head = await send(client, tgt, "HEAD")
        assert head.status == 200 and head.body == b""
        no_content = await send(client, tgt, headers=[*tgt.headers, ("X-Test-Status", "204")])
        assert no_content.status == 204 and no_content.body == b""
        etag = [*tgt.headers, ("X-Test-Response-Headers", json.dumps({"ETag": '"v1"'}))]
        not_modified = await send(client, tgt, headers=[*etag, ("If-None-Match", '"v1"')])
        assert not_modified.status == 304 and not_modified.body == b""
        assert ("ETag", '"v1"') in not_modified.headers
        after = await send(client, tgt)  # the same connection still frames the next answer right
        assert after.status == 200 and echo(after)["path"] == "/thing"
        assert client.idle_connections() == 1
        await client.close()

    run(scenario())


def test_timeout_then_a_fresh_connection(origin: Origin) -> None:
    async def scenario() -> None:
        client = UpstreamClient()
        tgt = target(origin.port, "/slow")
        error = await error_of(send(client, tgt, headers=[*tgt.headers, ("X-Test-Delay", "2")], timeout=0.2))
        assert error.kind == "timeout" and error.target is tgt
        assert client.idle_connections() == 0
        response = await send(client, target(origin.port, "/fast"))
        assert echo(response)["path"] == "/fast"  # not the slow answer arriving late on a reused connection
        await client.close()

    run(scenario())


# ---------------------------------------------------------------------------------------------- request encoding


def test_request_head_host_framing_and_injection() -> None:
    tgt = target(8080, "/p?q=1", host="origin.example")
    head = encode_head("GET", tgt, [("Accept", "*/*")], b"").decode()
    assert head == "GET /p?q=1 HTTP/1.1\r\nHost: origin.example:8080\r\nAccept: */*\r\n\r\n"
    kept = encode_head("GET", tgt, [("host", "client.example")], b"").decode()
    assert kept == "GET /p?q=1 HTTP/1.1\r\nhost: client.example\r\n\r\n"
    framed = encode_head(
        "PUT", tgt, [("Host", "h"), ("Content-Length", "99"), ("Transfer-Encoding", "chunked")], b"abc"
    )
    assert framed == b"PUT /p?q=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n"
    default_port = Target("r", "primary", "https", "::1", 443, "/", ())
    assert b"Host: [::1]\r\n" in encode_head("GET", default_port, [], b"")
    assert "é".encode() in encode_head("GET", tgt, [("X-Name", "é")], b"")
    for bad in ([("X-A", "1\r\nX-Injected: 1")], [("X-A", "1\nX")], [("X-A", "nul\x00")]):
        with pytest.raises(UpstreamError) as caught:
            encode_head("GET", tgt, [("Host", "h"), *bad], b"")
        assert caught.value.kind == "protocol"
    with pytest.raises(UpstreamError):
        encode_head("GET", target(80, "/a b HTTP/1.1\r\nX: y"), [], b"")


def test_request_headers_drop_hop_by_hop_and_set_ours() -> None:
    tgt = target(80)
    out = request_headers(
        [
            ("Connection", "close"),
            ("Expect", "100-continue"),
            ("X-Keep", "1"),
            ("X-Drop", "1"),
            ("Host", "c"),
        ],
        HeaderEdits(remove=("x-drop",), set=(("X-Set", "2"),)),
        tgt,
    )
    assert out == [("X-Keep", "1"), ("X-Set", "2"), ("Host", "127.0.0.1:80")]


def test_the_origin_sees_a_host_when_the_caller_sets_none() -> None:
    async def scenario() -> None:
        async with Script(replies(OK)) as script:
            client = UpstreamClient()
            await send(client, target(script.port), headers=[("X-A", "1")])
            assert f"\r\nHost: 127.0.0.1:{script.port}\r\n".encode() in script.requests[0][0]
            await client.close()

    run(scenario())


# ---------------------------------------------------------------------------------------------- response framing


def test_chunked_with_extensions_and_trailers_discarded() -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\nX-A: 1\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Sum: abc\r\n\r\n"
    )

    async def scenario() -> None:
        async with Script(replies(answer, OK)) as script:
            client = UpstreamClient()
            response = await send(client, target(script.port))
            assert response.body == b"hello 0123456789"
            assert response.headers == [("X-A", "1")]  # Transfer-Encoding and Trailer dropped, trailers too
            assert (await send(client, target(script.port))).body == b"ok"
            assert script.connections == 1
            await client.close()

    run(scenario())


def test_chunked_body_split_across_many_reads() -> None:
    body = bytes(range(256)) * 40

    async def handler(script: Script, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await script.read_request(reader) is not None:
            raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            for i in range(0, len(body), 1000):
                piece = body[i : i + 1000]
                raw += b"%x\r\n%s\r\n" % (len(piece), piece)
            raw += b"0\r\n\r\n"
            for i in range(0, len(raw), 7):  # the client must cope with any split
                writer.write(raw[i : i + 7])
                await writer.drain()

    async def scenario() -> None:
        async with Script(handler) as script:
            client = UpstreamClient()
            assert (await send(client, target(script.port))).body == body
            assert (await send(client, target(script.port))).body == body
            assert script.connections == 1
            await client.close()

    run(scenario())


def test_content_length_body_in_pieces() -> None:
    async def handler(script: Script, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await script.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(b"ngth: 10\r\n\r\n01234")
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(b"56789")

    async def scenario() -> None:
        async with Script(handler) as script:
            client = UpstreamClient()
            assert (await send(client, target(script.port))).body == b"0123456789"
            assert (await send(client, target(script.port))).body == b"0123456789"
            assert script.connections == 1
            await client.close()

    run(scenario())


def test_read_to_close_body_and_no_reuse() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"

    async def scenario() -> None:
        async with Script(replies(answer, then_close=True)) as script:
            client = UpstreamClient()
            assert (await send(client, target(script.port))).body == b"until the end"
            assert client.idle_connections() == 0
            assert (await send(client, target(script.port))).body == b"until the end"
            assert script.connections == 2
            await client.close()

    run(scenario())


@pytest.mark.parametrize(
    ("answer", "reused"),
    [
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
        (
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok",
            True,
        ),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.1 200 OK\r\nConnection: x-foo, Close\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True),
    ],
)
def test_connection_reuse_follows_version_and_connection_header(answer: bytes, reused: bool) -> None:
    async def scenario() -> None:
        async with Script(replies(answer)) as script:
            client = UpstreamClient()
            first = await send(client, target(script.port))
            assert (first.status, first.body) == (200, b"ok")
            assert not any(name.lower() in ("connection", "keep-alive") for name, _ in first.headers)
            assert (await send(client, target(script.port))).body == b"ok"
            assert script.connections == (1 if reused else 2)
            await client.close()

    run(scenario())


def test_interim_100_continue_responses_are_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK

    async def scenario() -> None:
        async with Script(replies(answer)) as script:
            client = UpstreamClient()
            response = await send(client, target(script.port), "POST", body=b"data")
            assert (response.status, response.body) == (200, b"ok")
            assert ("Link", "</a>") not in response.headers
            assert script.requests[0][1] == b"data"
            await client.close()

    run(scenario())


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nok",  # superscript two: a digit to str.isdigit
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nNoColon\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/2 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # then the origin closes
    ],
)
def test_malformed_or_ambiguous_framing_is_a_protocol_error(answer: bytes) -> None:
    async def scenario() -> None:
        async with Script(replies(answer, then_close=True)) as script:
            client = UpstreamClient()
            error = await error_of(send(client, target(script.port)))
            assert error.kind == "protocol", error
            assert client.idle_connections() == 0
            await client.close()

    run(scenario())


def test_response_head_over_the_limit() -> None:
    big = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\nContent-Length: 2\r\n\r\nok"

    async def scenario() -> None:
        async with Script(replies(big)) as script:
            client = UpstreamClient()
            error = await error_of(send(client, target(script.port)))
            assert error.kind == "protocol" and "head over" in error.detail
            small = UpstreamClient(max_header_bytes=1024)
            just_over = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 1100 + b"\r\n\r\n"
            async with Script(replies(just_over)) as other:
                assert (await error_of(send(small, target(other.port)))).kind == "protocol"
            await client.close()

    run(scenario())


def test_slow_body_is_a_timeout() -> None:
    async def handler(script: Script, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await script.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst bytes")
        await writer.drain()
        await asyncio.sleep(5)

    async def scenario() -> None:
        async with Script(handler) as script:
            client = UpstreamClient()
            error = await error_of(send(client, target(script.port), timeout=0.2))
            assert error.kind == "timeout"
            assert client.idle_connections() == 0
            await client.close()

    run(scenario())


# ---------------------------------------------------------------------------------------------- dead connections


def dies_on_second_request(*, reset: bool = False) -> Script.Handler:
    """Answers the first request of a connection, then reads the second and drops the connection unanswered
    (the race of an origin closing an idle keep-alive connection just as a request goes out)."""

    async def handler(script: Script, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await script.read_request(reader)
        writer.write(OK)
        await writer.drain()
        await script.read_request(reader)
        if reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

    return handler


@pytest.mark.parametrize("reset", [False, True], ids=["eof", "rst"])
def test_dead_pooled_connection_is_retried_once_on_a_fresh_one(reset: bool) -> None:
    async def scenario() -> None:
        async with Script(dies_on_second_request(reset=reset)) as script:
            client = UpstreamClient()
            assert (await send(client, target(script.port))).body == b"ok"
            assert (await send(client, target(script.port))).body == b"ok"  # retried transparently
            assert script.connections == 2 and len(script.requests) == 3
            await client.close()

    run(scenario())


def test_dead_pooled_connection_is_not_retried_for_post() -> None:
    async def scenario() -> None:
        async with Script(dies_on_second_request()) as script:
            client = UpstreamClient()
            assert (await send(client, target(script.port), "POST", body=b"1")).body == b"ok"
            error = await error_of(send(client, target(script.port), "POST", body=b"2"))
            assert error.kind == "protocol"  # it was sent: the origin may have acted on it
            assert script.connections == 1
            await client.close()

    run(scenario())


def test_fresh_connection_closed_unanswered_is_not_retried() -> None:
    async def scenario() -> None:
        async with Script(replies(b"", then_close=True)) as script:
            client = UpstreamClient()
            error = await error_of(send(client, target(script.port)))
            assert error.kind == "protocol" and script.connections == 1
            await client.close()

    run(scenario())


def test_idle_connection_closed_by_the_origin_is_not_used() -> None:
    async def handler(script: Script, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await script.read_request(reader)
        writer.write(OK)
        await writer.drain()  # then close: an origin's own keep-alive timeout

    async def scenario() -> None:
        async with Script(handler) as script:
            client = UpstreamClient()
            assert (await send(client, target(script.port))).body == b"ok"
            for _ in range(50):  # until the client has seen the close
                if client.idle_connections() == 0:
                    break
                await asyncio.sleep(0.01)
            assert client.idle_connections() == 0
            assert (await send(client, target(script.port), "POST")).body == b"ok"
            assert script.connections == 2
            await client.close()

    run(scenario())


def test_cancelled_request_does_not_return_its_connection() -> None:
    abandoned = asyncio.Event()

    async def handler(script: Script, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await script.read_request(reader)) is not None:
            if b"/slow" in request[0]:
                assert await reader.read() == b""  # never answered: the client must close this connection
                abandoned.set()
                return
            else:
                writer.write(OK)

    async def scenario() -> None:
        async with Script(handler) as script:
            client = UpstreamClient()
            assert (await send(client, target(script.port))).body == b"ok"
            task = asyncio.create_task(send(client, target(script.port, "/slow")))
            while len(script.requests) < 2:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert client.idle_connections() == 0
            await asyncio.wait_for(abandoned.wait(), 5)
            assert (await send(client, target(script.port))).body == b"ok"
            assert script.connections == 2
            await client.close()

    run(scenario())


def test_refused_port_is_a_connect_error() -> None:
    async def scenario() -> None:
        client = UpstreamClient()
        tgt = target(free_port())
        error = await error_of(send(client, tgt, "POST", body=b"x"))
        assert error.kind == "connect" and error.target is tgt
        await client.close()

    run(scenario())


# ---------------------------------------------------------------------------------------------- the pool


def test_idle_connections_are_bounded_and_expire() -> None:
    async def scenario() -> None:
        async with Script(replies(OK)) as script:
            client = UpstreamClient(max_idle_per_host=2, idle_timeout=0.05)
            answers = await asyncio.gather(*(send(client, target(script.port)) for _ in range(5)))
            assert [a.body for a in answers] == [b"ok"] * 5
            assert script.connections == 5 and client.idle_connections() == 2
            await asyncio.sleep(0.3)  # the sweep runs after idle_timeout
            assert client.idle_connections() == 0
            assert (await send(client, target(script.port))).body == b"ok"
            assert script.connections == 6
            await client.close()

    run(scenario())


def test_pools_are_per_origin() -> None:
    async def scenario() -> None:
        answer_a = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"
        answer_b = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"
        async with Script(replies(answer_a)) as a, Script(replies(answer_b)) as b:
            client = UpstreamClient()
            for _ in range(3):
                assert (await send(client, target(a.port))).body == b"a"
                assert (await send(client, target(b.port))).body == b"b"
            assert (a.connections, b.connections, client.idle_connections()) == (1, 1, 2)
            await client.close()

    run(scenario())


# ---------------------------------------------------------------------------------------------- TLS


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for DNS:localhost signed by it: (ca.pem, server.pem, server.key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgerules test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def test_https_origin_with_sni_and_hostname_verification(tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path)
    server_names: list[str | None] = []
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    server_tls.sni_callback = lambda _sock, name, _ctx: server_names.append(name)  # type: ignore[assignment,func-returns-value]

    script = Script(replies(OK))

    async def scenario() -> None:
        server = await asyncio.start_server(script._serve, "127.0.0.1", 0, ssl=server_tls)
        port = server.sockets[0].getsockname()[1]
        try:
            trusted = UpstreamClient(ssl_context=ssl.create_default_context(cafile=str(ca)))
            tgt = target(port, host="localhost", scheme="https")
            assert (await send(trusted, tgt)).body == b"ok"
            assert (await send(trusted, tgt)).body == b"ok"
            assert server_names == ["localhost"] and script.connections == 1
            # the certificate names localhost, not 127.0.0.1
            wrong_name = await error_of(send(trusted, target(port, scheme="https")))
            assert wrong_name.kind == "connect" and "certificate" in wrong_name.detail.lower()
            untrusted = UpstreamClient()  # the system's CAs do not know our test CA
            assert (await error_of(send(untrusted, tgt))).kind == "connect"
            assert len(script.requests) == 2  # nothing was sent on the failed handshakes
            await trusted.close()
        finally:
            server.close()

    run(scenario())


def test_stalled_tls_handshake_is_a_connect_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts TCP, never answers the ClientHello
        writer.close()

    async def scenario() -> None:
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            client = UpstreamClient(ssl_context=ssl.create_default_context())
            error = await error_of(send(client, target(port, scheme="https"), connect_timeout=0.2))
            assert error.kind == "connect" and "0.2" in error.detail
            await asyncio.sleep(0.05)  # the server sees the client give up
        finally:
            server.close()

    run(scenario())

"""Bounded under hostile clients (issue #16), through a real `mitmdump -s addon.py` and `edgerules serve`:
refusals at the request head (413/404/431) without reading the body, streamed uploads cut at their limit,
client timeouts and the connection cap, capped origin answers.

Every test talks raw bytes to the proxy on loopback, is bounded in time and checks what an origin saw.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.resilience.test_hostile import base_headers, bearer_token, responses
from tests.support.origins import Origins, start_origins
from tests.support.policies import ENV, write_policy
from tests.support.proxy import Proxy, http, start_edge_process

pytestmark = [pytest.mark.e2e, pytest.mark.resilience]

REGIONS = ("us-east-1", "us-west-2")
MAX_BODY = 64 * 1024  # validation.max_body_size in this file's policy
AUDIO_MAX_BODY = 16 * 1024  # the audio-stream class's own limit
ADMIN_TOKEN = "bounded-admin-token-0123456789"


@dataclass
class Edge:
    proxy: Proxy
    origins: Origins
    policy: Path

    def hits(self, fragment: str) -> int:
        return sum(
            n
            for origin in self.origins.values()
            for path, n in origin.stats()["paths"].items()
            if fragment in path
        )

    def seen(self, m: str) -> bool:
        """Did any origin log a request whose path or query carries `m`?"""
        return any(
            m in entry["path"] or m in entry["query"]
            for origin in self.origins.values()
            for entry in origin.stats()["log"]
        )


@pytest.fixture(scope="module")
def origins() -> Iterator[Origins]:
    started = start_origins(list(REGIONS))
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture(scope="module", params=["mitmdump", "serve"])
def edge(request, origins, tmp_path_factory) -> Iterator[Edge]:
    tmp = tmp_path_factory.mktemp(f"bounded-{request.param}")
    policy = write_policy(
        tmp,
        {name: o.port for name, o in origins.items()},
        {
            "validation": {"max_body_size": MAX_BODY},
            # strangers are everyone but the token holder: the admin endpoints must refuse them unread
            "admin": {"token": "${env:EDGERULES_ADMIN_TOKEN}", "allow_cidrs": []},
        },
    )
    # the audio class gets a smaller limit of its own (classify.classes[].max_body_size)
    data = json.loads(policy.read_text())
    for cls in data["classify"]["classes"]:
        if cls["name"] == "audio-stream":
            cls["max_body_size"] = AUDIO_MAX_BODY
    policy.write_text(json.dumps(data, indent=1))
    proxy = start_edge_process(
        policy, environ={**ENV, "EDGERULES_ADMIN_TOKEN": ADMIN_TOKEN}, serve=request.param == "serve"
    )
    try:
        yield Edge(proxy, origins, policy)
    finally:
        proxy.stop()


def marker() -> str:
    return uuid.uuid4().hex


def head_only(edge: Edge, head: bytes, *, timeout: float = 8.0) -> tuple[bytes, bool]:
    """Send a request head (no body, though it may declare one) and read until the proxy closes or `timeout`.
    Returns what came back and whether the proxy closed the connection."""
    received = bytearray()
    closed = False
    deadline = time.monotonic() + timeout
    with socket.create_connection((edge.proxy.host, edge.proxy.port), timeout=timeout) as sock:
        sock.sendall(head)
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    return bytes(received), closed


# ---------------------------------------------------------------------------------------- 413 at the head


def test_declared_oversized_upload_is_413_before_the_body(edge):
    """200 MiB declared, not one byte of body sent: the policy's JSON 413 comes back at once and the proxy
    closes the connection (it never waits for, or buffers, the body)."""
    m = marker()
    head = (
        f"POST /api/v1/calls/{m} HTTP/1.1\r\n".encode()
        + base_headers()
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {200 * 1024 * 1024}\r\n\r\n".encode()
    )
    received, closed = head_only(edge, head)
    got = responses(received)
    assert [status for status, _ in got] == [413], received[:300]
    assert json.loads(got[0][1])["error"] == "Request too large"  # the policy's payload_too_large message
    assert closed, "the connection must be closed after a refusal at the head"
    assert edge.hits(m) == 0


def test_declared_upload_within_the_limit_is_still_served(edge):
    m = marker()
    body = b"{" + b" " * (MAX_BODY - 2) + b"}"
    r = http(
        "POST",
        f"{edge.proxy.url}/api/v1/calls/{m}",
        {
            "CF-IPCountry": "US",
            "Authorization": "Bearer " + bearer_token(),
            "Content-Type": "application/json",
        },
        body,
    )
    assert r.status == 200, r.body[:200]
    assert r.json()["body_size"] == MAX_BODY
    assert edge.hits(m) == 1


def test_admin_refuses_a_stranger_before_reading_the_body(edge):
    """No token, not an allowed address: the same 404 as an unknown path, without waiting for the 1 MiB the
    request declares."""
    head = (
        b"POST /__edgerules/analytics HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {1024 * 1024}\r\n\r\n".encode()
    )
    received, closed = head_only(edge, head)
    assert [status for status, _ in responses(received)] == [404], received[:300]
    assert closed


def test_admin_body_over_its_own_limit_is_413_at_the_head(edge):
    """Even the token holder: an admin body has a small limit of its own (documented in docs/operations.md)."""
    head = (
        b"POST /__edgerules/analytics HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {ADMIN_TOKEN}\r\n".encode()
        + f"Content-Length: {8 * 1024 * 1024}\r\n\r\n".encode()
    )
    received, closed = head_only(edge, head)
    assert [status for status, _ in responses(received)] == [413], received[:300]
    assert closed


def test_admin_still_answers_the_token_holder(edge):
    r = http("GET", f"{edge.proxy.url}/__edgerules/health", {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status == 200


# ---------------------------------------------------------------------------------------- 431 at the head


def test_endless_request_head_is_431_and_closed_before_it_is_buffered(edge):
    """A head that never ends (8 MiB of header lines, no blank line): 431 once it passes the head limit and
    the connection closed; the proxy does not wait for (or keep) the rest."""
    sent = 0
    received = bytearray()
    with socket.create_connection((edge.proxy.host, edge.proxy.port), timeout=10) as sock:
        sock.sendall(b"GET /api/v1/calls/endless HTTP/1.1\r\nHost: edge\r\n")
        line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
        try:
            while sent < 8 * 1024 * 1024:
                sock.sendall(line * 64)
                sent += len(line) * 64
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(10)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert [status for status, _ in responses(bytes(received))] == [431], bytes(received[:300])
    assert sent < 8 * 1024 * 1024, "the proxy kept reading a head far past its limit"
    assert edge.hits("endless") == 0


# ------------------------------------------------------------------------------------ streams are counted


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _stream_head(m: str) -> bytes:
    return (
        f"POST /voice/stream?m={m} HTTP/1.1\r\n".encode()
        + base_headers()
        + b"Content-Type: audio/wav\r\nTransfer-Encoding: chunked\r\n\r\n"
    )


def _metric(edge: Edge, name: str) -> float:
    r = http("GET", f"{edge.proxy.url}/__edgerules/metrics", {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status == 200
    total = 0.0
    for line in r.body.decode().splitlines():
        if line.startswith(name):
            total += float(line.split()[-1])
    return total


def test_declared_stream_upload_over_its_class_limit_is_413(edge):
    """The audio class's own limit (16 KiB) applies to it, not validation.max_body_size (64 KiB); a body that
    small is read (and dropped) rather than the connection closed."""
    m = marker()
    head = _stream_head(m).replace(
        b"Transfer-Encoding: chunked", f"Content-Length: {AUDIO_MAX_BODY + 1}".encode()
    )
    received, _ = head_only(edge, head + b"a" * (AUDIO_MAX_BODY + 1), timeout=3)
    assert [status for status, _ in responses(received)] == [413], received[:300]
    assert not edge.seen(m)


def test_streamed_upload_over_the_limit_before_anything_was_forwarded_is_413(edge):
    """The first chunk alone is over the limit: nothing of the body went to the origin, so the client gets a
    clean 413 and the connection is closed."""
    m = marker()
    received, closed = head_only(edge, _stream_head(m) + _chunk(b"a" * (AUDIO_MAX_BODY + 4096)))
    assert [status for status, _ in responses(received)] == [413], received[:300]
    assert closed


def test_streamed_upload_several_times_the_limit_is_cut(edge):
    """A chunked upload to a streamed path of 20x its class's limit, 4 KiB at a time: the edge counts the bytes as
    they pass and, once past the limit, closes both sides. The origin never gets the whole body; the cut is
    counted."""
    m = marker()
    before = _metric(edge, "edgerules_streams_cut_total")
    total = 20 * AUDIO_MAX_BODY
    sent = 0
    received = bytearray()
    with socket.create_connection((edge.proxy.host, edge.proxy.port), timeout=10) as sock:
        try:
            sock.sendall(_stream_head(m))
            while sent < total:
                sock.sendall(_chunk(b"b" * 4096))
                sent += 4096
                time.sleep(0.002)
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(10)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    statuses = [status for status, _ in responses(bytes(received))]
    assert 200 not in statuses, received[:300]
    assert statuses in ([], [413]), statuses
    assert _metric(edge, "edgerules_streams_cut_total") >= before + 1


def test_chunked_upload_to_a_buffered_path_is_cut_at_the_limit_not_buffered_whole(edge):
    """Chunked (no declared size) to a path whose body the edge reads whole: once the bytes read pass the limit
    the client gets 413 and the connection is closed; the proxy stops reading long before the 8 MiB sent."""
    m = marker()
    head = (
        f"POST /api/v1/calls/{m} HTTP/1.1\r\n".encode()
        + base_headers()
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    received = bytearray()
    sent = 0
    with socket.create_connection((edge.proxy.host, edge.proxy.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.sendall(head)
        sock.settimeout(0.5)
        try:
            while sent < 8 * 1024 * 1024:
                sock.sendall(_chunk(b"c" * 16384))
                sent += 16384
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        sock.settimeout(10)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert [status for status, _ in responses(bytes(received))] == [413], received[:300]
    assert not edge.seen(m)


# ----------------------------------------------------------------------------- client timeouts and the cap

TIGHT = {
    "edgerules_head_timeout": "1",
    "edgerules_keepalive_timeout": "1",
    "edgerules_body_timeout": "1",
    "edgerules_max_origin_body": "1m",
}
CAPPED = {"edgerules_max_connections": "40"}


def _edge_with(request, origins, tmp_path_factory, options) -> Iterator[Edge]:
    tmp = tmp_path_factory.mktemp(f"options-{request.param}")
    policy = write_policy(
        tmp,
        {name: o.port for name, o in origins.items()},
        {"admin": {"token": "${env:EDGERULES_ADMIN_TOKEN}", "allow_cidrs": []}},
    )
    proxy = start_edge_process(
        policy,
        environ={**ENV, "EDGERULES_ADMIN_TOKEN": ADMIN_TOKEN},
        serve=request.param == "serve",
        options=options,
    )
    try:
        yield Edge(proxy, origins, policy)
    finally:
        proxy.stop()


@pytest.fixture(scope="module", params=["mitmdump", "serve"])
def tight(request, origins, tmp_path_factory) -> Iterator[Edge]:
    """An edge with one-second client timeouts."""
    yield from _edge_with(request, origins, tmp_path_factory, TIGHT)


@pytest.fixture(scope="module", params=["mitmdump", "serve"])
def capped(request, origins, tmp_path_factory) -> Iterator[Edge]:
    """An edge with room for 40 client connections (default timeouts)."""
    yield from _edge_with(request, origins, tmp_path_factory, CAPPED)


def _wait_closed(sock: socket.socket, timeout: float = 8.0) -> tuple[bytes, float]:
    """Read until the proxy closes; (what came, seconds it took). Fails if it is still open after `timeout`."""
    started = time.monotonic()
    received = bytearray()
    sock.settimeout(timeout)
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the connection was still open after {timeout}s; got {bytes(received[:200])!r}")
    return bytes(received), time.monotonic() - started


def test_a_request_head_that_never_completes_gets_408(tight):
    with socket.create_connection((tight.proxy.host, tight.proxy.port), timeout=10) as sock:
        sock.sendall(b"GET /api/v1/calls/slow HTTP/1.1\r\nHost: edge\r\nX-Slow: ")
        received, _ = _wait_closed(sock)
    assert [status for status, _ in responses(received)] == [408], received[:300]


def test_a_silent_connection_is_closed(tight):
    with socket.create_connection((tight.proxy.host, tight.proxy.port), timeout=10) as sock:
        received, _ = _wait_closed(sock)
    assert received == b""


def test_an_idle_keep_alive_connection_is_closed_after_a_request(tight):
    with socket.create_connection((tight.proxy.host, tight.proxy.port), timeout=10) as sock:
        sock.sendall(
            b"GET /__edgerules/health HTTP/1.1\r\nHost: edge\r\n"
            + f"Authorization: Bearer {ADMIN_TOKEN}\r\n\r\n".encode()
        )
        received, _ = _wait_closed(sock)
    assert [status for status, _ in responses(received)] == [200], received[:300]


def test_a_body_that_stops_arriving_gets_408(tight):
    m = marker()
    with socket.create_connection((tight.proxy.host, tight.proxy.port), timeout=10) as sock:
        sock.sendall(
            f"POST /api/v1/calls/{m} HTTP/1.1\r\n".encode()
            + base_headers()
            + b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"a": '
        )
        received, _ = _wait_closed(sock)
    assert [status for status, _ in responses(received)] == [408], received[:300]
    assert not tight.seen(m)


def test_connections_over_the_cap_are_refused_and_the_admitted_still_served(capped):
    """40 admitted connections sit idle (each within its timeout, renewed); more are refused at once; one of
    the admitted ones still gets its answer."""
    admitted: list[socket.socket] = []
    try:
        for _ in range(40):
            admitted.append(socket.create_connection((capped.proxy.host, capped.proxy.port), timeout=10))
        time.sleep(0.3)
        refused = 0
        for _ in range(10):
            with socket.create_connection((capped.proxy.host, capped.proxy.port), timeout=10) as extra:
                extra.settimeout(3)
                try:
                    if extra.recv(1) == b"":
                        refused += 1
                except ConnectionResetError:
                    refused += 1
                except TimeoutError:
                    pass
        assert refused == 10
        sock = admitted[0]
        sock.sendall(
            b"GET /__edgerules/health HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n"
            + f"Authorization: Bearer {ADMIN_TOKEN}\r\n\r\n".encode()
        )
        received, _ = _wait_closed(sock)
        assert [status for status, _ in responses(received)] == [200], received[:300]
    finally:
        for sock in admitted:
            sock.close()
    # once they are gone, new clients are admitted again
    deadline = time.monotonic() + 10
    while True:
        r = http("GET", f"{capped.proxy.url}/__edgerules/health", {"Authorization": f"Bearer {ADMIN_TOKEN}"})
        if r.status == 200 or time.monotonic() > deadline:
            break
    assert r.status == 200


# ---------------------------------------------------------------------------------- capped origin answers


def test_an_origin_answer_over_the_cap_is_refused_with_its_own_error(tight):
    """The edge reads buffered origin answers whole: one over edgerules_max_origin_body (1 MiB here) is not
    read further; the client gets 502 `upstream_too_large` (no failover: every region would answer the same),
    and the region is not marked down for it."""
    headers = {"CF-IPCountry": "US", "Authorization": "Bearer " + bearer_token()}
    big = http("GET", f"{tight.proxy.url}/api/v1/calls/big", {**headers, "X-Test-Body-Size": str(4 << 20)})
    assert big.status == 502, big.body[:200]
    assert big.json()["error"] == "Upstream response too large"
    small = http(
        "GET", f"{tight.proxy.url}/api/v1/calls/small", {**headers, "X-Test-Body-Size": str(512 << 10)}
    )
    assert small.status == 200
    assert len(small.body) == 512 << 10
    assert small.headers["X-CF-Processed-Region"] == "us-east-1"


# ------------------------------------------------------------------------------------------------ over TLS


@pytest.fixture(scope="module", params=["mitmdump", "serve"])
def tls_edge(request, origins, tmp_path_factory) -> Iterator[tuple[Proxy, object]]:
    from tests.e2e.test_tls_http2 import start
    from tests.support.tls import make_certs

    tmp = tmp_path_factory.mktemp(f"bounded-tls-{request.param}")
    certs = make_certs(tmp)
    policy = write_policy(
        tmp, {name: o.port for name, o in origins.items()}, {"validation": {"max_body_size": MAX_BODY}}
    )
    proxy = start(request.param, policy, certs)
    try:
        yield proxy, certs
    finally:
        proxy.stop()


def test_declared_oversized_upload_over_tls_is_413_before_the_body(tls_edge):
    """The refusal at the head goes out through mitmproxy's TLS layer (not as raw bytes under it)."""
    proxy, certs = tls_edge
    context = certs.client_context()
    context.set_alpn_protocols(["http/1.1"])
    head = (
        b"POST /api/v1/calls/tls-oversized HTTP/1.1\r\n"
        + base_headers()
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {200 * 1024 * 1024}\r\n\r\n".encode()
    )
    received = bytearray()
    closed = False
    with (
        socket.create_connection((proxy.host, proxy.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(head)
        try:
            while chunk := sock.recv(65536):
                received += chunk
            closed = True
        except (ConnectionResetError, ssl.SSLError):
            closed = True
        except TimeoutError:
            pass
    got = responses(bytes(received))
    assert [status for status, _ in got] == [413], bytes(received[:300])
    assert json.loads(got[0][1])["error"] == "Request too large"
    assert closed

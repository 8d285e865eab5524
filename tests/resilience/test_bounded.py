"""Bounded under hostile clients (issue #16), through a real `mitmdump -s addon.py` and `edgerules serve`:
refusals at the request head (413/404/431) without reading the body, streamed uploads cut at their limit,
client timeouts and the connection cap, capped origin answers.

Every test talks raw bytes to the proxy on loopback, is bounded in time and checks what an origin saw.
"""

from __future__ import annotations

import json
import socket
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

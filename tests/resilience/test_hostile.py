"""Hostile clients against the live edge: raw bytes through a real mitmdump and through `edgerules serve`.

Every case either gets a clean refusal (a status below 500, or the connection closed) with nothing reaching an
origin, or - where the input is legal after all (an OWS before `chunked`, `/./health`) - reaches the origin
exactly once in its normalised form. The edge's own answers are never a 500, smuggled requests never reach an
origin, and a slow client does not stop the proxy serving everyone else.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

from edgerules.auth.apikeys import ApiKeyStore, generate_key, hash_key
from edgerules.policy.load import load_policy_file
from edgerules.stores import open_store
from tests.e2e.test_e2e_auth import _bad_bearer_tokens
from tests.support.origins import Origins, start_origins
from tests.support.policies import ENV, JWT_SECRET, write_policy
from tests.support.proxy import Proxy, http, http_raw, start_edge_process

pytestmark = [pytest.mark.e2e, pytest.mark.resilience]

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
MAX_URL = 2048  # validation.max_url_length in this file's policy
MAX_BODY = 64 * 1024  # validation.max_body_size


@dataclass
class Edge:
    proxy: Proxy
    origins: Origins
    policy: Path

    def routed(self) -> int:
        """Requests the origins saw, health probes excluded."""
        total = 0
        for origin in self.origins.values():
            stats = origin.stats()
            total += stats["requests"] - stats["paths"].get("/health", 0)
        return total

    def paths_seen(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for origin in self.origins.values():
            for path, n in origin.stats()["paths"].items():
                out[path] = out.get(path, 0) + n
        return out

    def entries(self, marker: str) -> list[dict[str, Any]]:
        """Logged origin requests whose path or query carries `marker`."""
        return [
            entry
            for origin in self.origins.values()
            for entry in origin.stats()["log"]
            if marker in entry["path"] or marker in entry["query"]
        ]


@pytest.fixture(scope="module")
def origins() -> Iterator[Origins]:
    started = start_origins(list(REGIONS))
    try:
        yield started
    finally:
        started.stop_all()


def _start(kind: str, policy: Path) -> Proxy:
    return start_edge_process(policy, environ=ENV, serve=kind == "serve")


@pytest.fixture(scope="module", params=["mitmdump", "serve"])
def edge(request, origins, tmp_path_factory) -> Iterator[Edge]:
    tmp = tmp_path_factory.mktemp(f"hostile-{request.param}")
    policy = write_policy(
        tmp,
        {name: o.port for name, o in origins.items()},
        {"validation": {"max_url_length": MAX_URL, "max_body_size": MAX_BODY}},
    )
    proxy = _start(request.param, policy)
    try:
        yield Edge(proxy, origins, policy)
    finally:
        proxy.stop()


# ------------------------------------------------------------------------------------------------ helpers


def bearer_token(sub: str = "alice") -> str:
    claims = {"sub": sub, "role": "admin", "permissions": ["a"], "exp": int(time.time()) + 600}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def base_headers(authorization: str | None = None) -> bytes:
    auth = authorization if authorization is not None else "Bearer " + bearer_token()
    return f"Host: api.example\r\nCF-IPCountry: US\r\nAuthorization: {auth}\r\n".encode()


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})[^\r\n]*\r?\n")
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*(\d+)[ \t]*\r?$")


def responses(raw: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of every response in a raw byte stream, read one after the other by Content-Length.

    Empty when the proxy closed the connection without answering: that counts as refused, never as passed.
    """
    out: list[tuple[int, bytes]] = []
    pos = 0
    while (line := _STATUS_LINE.match(raw, pos)) is not None:
        end = raw.find(b"\r\n\r\n", line.start())
        if end < 0:
            break
        length = _CONTENT_LENGTH.search(raw, line.start(), end + 2)
        size = int(length[1]) if length else len(raw) - end - 4
        out.append((int(line[1]), raw[end + 4 : end + 4 + size]))
        pos = end + 4 + size
    return out


def statuses(raw: bytes) -> list[int]:
    return [status for status, _ in responses(raw)]


def first_body(raw: bytes) -> bytes:
    return responses(raw)[0][1]


def send(edge: Edge, raw: bytes, *, idle: float = 1.0) -> list[int]:
    return statuses(http_raw(edge.proxy.host, edge.proxy.port, raw, timeout=10, idle=idle))


def assert_refused(edge: Edge, raw: bytes, marker: str, *, idle: float = 1.0) -> list[int]:
    """A clean refusal: no status >= 500, nothing 2xx/3xx, the origins saw nothing, the marker nowhere."""
    before = edge.routed()
    got = send(edge, raw, idle=idle)
    assert all(400 <= s < 500 for s in got), got
    assert edge.routed() == before
    assert not [p for p in edge.paths_seen() if marker in p]
    return got


def marker() -> str:
    return uuid.uuid4().hex


# ------------------------------------------------------------------------------------- request smuggling


def _smuggle_cases(m: str) -> dict[str, bytes]:
    """Ambiguous framing: a POST whose body may or may not end before a second, smuggled request."""
    inner = (
        f"GET /api/v1/calls/{m}-smuggled HTTP/1.1\r\n".encode()
        + base_headers()
        + b"Connection: close\r\n\r\n"
    )
    head = f"POST /api/v1/calls/{m} HTTP/1.1\r\n".encode() + base_headers()
    head += b"Content-Type: application/json\r\n"
    chunked_end = b"0\r\n\r\n"
    return {
        "cl-and-te": head
        + f"Content-Length: {len(chunked_end) + len(inner)}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + chunked_end
        + inner,
        "te-and-cl": head
        + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
        + b"1\r\nZ\r\n0\r\n\r\n"
        + inner,
        "two-content-lengths": head
        + f"Content-Length: 2\r\nContent-Length: {2 + len(inner)}\r\n\r\n{{}}".encode()
        + inner,
        "content-length-list": head + f"Content-Length: 2, {2 + len(inner)}\r\n\r\n{{}}".encode() + inner,
        "te-xchunked": head + b"Transfer-Encoding: xchunked\r\n\r\n" + chunked_end + inner,
        "te-space-before-colon": head + b"Transfer-Encoding : chunked\r\n\r\n" + chunked_end + inner,
        "te-chunked-identity": head + b"Transfer-Encoding: chunked, identity\r\n\r\n" + chunked_end + inner,
        "te-identity": head + b"Transfer-Encoding: identity\r\n\r\n" + inner,
        "te-vertical-tab": head + b"Transfer-Encoding:\x0bchunked\r\n\r\n" + chunked_end + inner,
        "te-obs-fold": head + b"Transfer-Encoding:\r\n chunked\r\n\r\n" + chunked_end + inner,
        "cl-negative": head + b"Content-Length: -1\r\n\r\n" + inner,
        "cl-plus-sign": head + f"Content-Length: +{2 + len(inner)}\r\n\r\n{{}}".encode() + inner,
        "cl-hex": head + b"Content-Length: 0x10\r\n\r\n{}" + inner,
        "chunk-size-overflow": head
        + b"Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF1\r\nZ\r\n0\r\n\r\n"
        + inner,
        "chunk-size-not-hex": head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nZ\r\n0\r\n\r\n" + inner,
    }


# Ambiguous framing must be refused outright; the rest (`\x0b` is whitespace to mitmproxy) must at least be
# framed one way only: every request an origin saw is one the client got its own answer for.
LENIENT = {"te-vertical-tab"}


@pytest.mark.parametrize("case", sorted(_smuggle_cases("x")))
def test_smuggling_attempts_are_refused_and_nothing_is_smuggled(edge, case):
    m = marker()
    before = edge.routed()
    got = send(edge, _smuggle_cases(m)[case])
    assert all(s < 500 for s in got), got
    reached = edge.entries(m)
    assert len(reached) == sum(200 <= s < 300 for s in got), (got, reached)
    assert edge.routed() - before == len(reached)
    if case not in LENIENT:
        assert reached == [] and all(400 <= s < 500 for s in got), (got, reached)


def test_te_with_leading_whitespace_is_plain_chunked_and_frames_one_request(edge):
    """`Transfer-Encoding:  chunked` is legal (OWS): the body is the chunked one, nothing else is a request."""
    m = marker()
    raw = (
        f"POST /api/v1/calls/{m} HTTP/1.1\r\n".encode()
        + base_headers()
        + b"Content-Type: application/json\r\nTransfer-Encoding: \t chunked\r\nConnection: close\r\n\r\n"
        + b"2\r\n{}\r\n0\r\n\r\n"
    )
    received = http_raw(edge.proxy.host, edge.proxy.port, raw, timeout=10)
    assert statuses(received) == [200]
    assert json.loads(first_body(received))["body_size"] == 2
    (entry,) = edge.entries(m)
    assert entry["path"] == f"/api/v1/calls/{m}"


# ------------------------------------------------------------------------------------ malformed headers


def _malformed_header_cases() -> dict[str, bytes]:
    return {
        "no-colon": b"X-Broken-Header\r\n",
        "space-before-colon": b"X-Test : value\r\n",
        "nul-in-value": b"X-Test: a\x00b\r\n",
        "cr-in-value": b"X-Test: a\rb\r\n",
        "obs-fold": b"X-Test: a\r\n folded\r\n",
        "obs-fold-tab": b"X-Test: a\r\n\tfolded\r\n",
        "control-in-name": b"X-Te\x01st: a\r\n",
        "empty-name": b": value\r\n",
        "del-in-value": b"X-Test: a\x7fb\r\n",
        "injected-header-via-cr": b"X-Test: a\rX-User-ID: root\r\n",
    }


@pytest.mark.parametrize("case", sorted(_malformed_header_cases()))
def test_malformed_header_syntax_is_a_clean_4xx(edge, case):
    m = marker()
    raw = (
        f"GET /api/v1/calls/{m} HTTP/1.1\r\n".encode()
        + base_headers()
        + _malformed_header_cases()[case]
        + b"Connection: close\r\n\r\n"
    )
    got = assert_refused(edge, raw, m)
    assert got, "the proxy should answer a malformed header (at least mitmproxy's own 400)"


def test_two_host_headers_never_reach_the_origin(edge):
    """The edge sets Host itself (host_rewrite): neither client value, let alone both, is forwarded."""
    m = marker()
    raw = (
        f"GET /api/v1/calls/{m} HTTP/1.1\r\n".encode()
        + base_headers()
        + b"Host: internal.admin\r\nConnection: close\r\n\r\n"
    )
    got = send(edge, raw)
    assert got in ([200], [400]), got
    upstreams = {f"127.0.0.1:{origin.port}" for origin in edge.origins.values()}
    for entry in edge.entries(m):
        assert entry["headers"]["Host"] in upstreams, entry["headers"]


def test_malformed_requests_do_not_eject_a_healthy_region(edge):
    """A client's broken request is the client's failure, not the origin's: five of them (passive health
    ejects after three failures) leave US traffic on its primary region."""
    for _ in range(5):
        m = marker()
        assert_refused(edge, _smuggle_cases(m)["te-xchunked"], m, idle=0.5)
    response = http("GET", f"{edge.proxy.url}/api/v1/calls/after", {"CF-IPCountry": "US", **_bearer()})
    assert response.status == 200
    assert response.json()["region"] == "us-east-1"
    assert response.headers["X-CF-Processed-Region"] == "us-east-1"


def test_edge_refusal_bodies_are_json_with_the_reason(edge):
    m = marker()
    raw = (
        f"GET /api/v1/calls/{m} HTTP/1.1\r\n".encode()
        + base_headers()
        + b"X-Test: a\r\n folded\r\nConnection: close\r\n\r\n"
    )
    received = http_raw(edge.proxy.host, edge.proxy.port, raw, timeout=10)
    assert statuses(received) == [400]
    assert json.loads(first_body(received)) == {"error": "Invalid request format", "reason": "invalid_header"}


# ------------------------------------------------------------------------------------ oversized input


def test_64kib_header_is_431_at_the_edge(edge):
    m = marker()
    raw = (
        f"GET /api/v1/calls/{m} HTTP/1.1\r\n".encode()
        + base_headers()
        + b"X-Big: "
        + b"a" * 65536
        + b"\r\nConnection: close\r\n\r\n"
    )
    assert assert_refused(edge, raw, m) == [431]


def test_thousands_of_small_headers_are_431(edge):
    m = marker()
    many = b"".join(f"X-H{i}: {'v' * 20}\r\n".encode() for i in range(3000))
    raw = (
        f"GET /api/v1/calls/{m} HTTP/1.1\r\n".encode() + base_headers() + many + b"Connection: close\r\n\r\n"
    )
    assert assert_refused(edge, raw, m) == [431]


@pytest.mark.parametrize("where", ["path", "query"])
def test_url_over_max_url_length_is_414(edge, where):
    m = marker()
    target = f"/api/v1/calls/{m}" + ("/" + "a" * MAX_URL if where == "path" else "?q=" + "a" * MAX_URL)
    raw = f"GET {target} HTTP/1.1\r\n".encode() + base_headers() + b"Connection: close\r\n\r\n"
    assert assert_refused(edge, raw, m) == [414]


def test_oversized_body_without_content_length_is_413(edge):
    m = marker()
    chunk = b"x" * 4096
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY // 4096 + 4)) + b"0\r\n\r\n"
    raw = (
        f"POST /api/v1/calls/{m} HTTP/1.1\r\n".encode()
        + base_headers()
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + body
    )
    assert assert_refused(edge, raw, m) == [413]


# ------------------------------------------------------------------------------------------- slow clients


def test_slow_clients_do_not_stop_the_proxy_serving_others(edge):
    """A handful of slowloris connections dribbling headers while ordinary requests keep being answered."""
    m = marker()
    request_bytes = (
        f"GET /api/v1/calls/{m} HTTP/1.1\r\n".encode() + base_headers() + b"Connection: close\r\n\r\n"
    )
    stop = threading.Event()
    slow_answers: list[list[int]] = []
    lock = threading.Lock()

    def dribble(split: int) -> None:
        # the first `split` bytes one at a time (bounded: 0.01 s apart, at most ~3 s), then the rest at once
        with socket.create_connection((edge.proxy.host, edge.proxy.port), timeout=10) as sock:
            for i in range(split):
                if stop.is_set():
                    return
                sock.sendall(request_bytes[i : i + 1])
                time.sleep(0.01)
            sock.sendall(request_bytes[split:])
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        with lock:
            slow_answers.append(statuses(received))

    slow = [threading.Thread(target=dribble, args=(split,)) for split in (120, 160, 200, 240)]
    for thread in slow:
        thread.start()
    served = []
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            r = http("GET", f"{edge.proxy.url}/api/v1/calls/fast", {"CF-IPCountry": "US", **_bearer()})
            served.append(r.status)
    finally:
        for thread in slow:
            thread.join(timeout=15)
        stop.set()
    assert len(served) >= 5 and set(served) == {200}, served
    assert not any(t.is_alive() for t in slow)
    # the slow clients themselves were served too, each exactly once
    assert sorted(slow_answers) == [[200]] * 4
    # counted per path, not in the origins' request log: that keeps the last 200, fewer than the fast loop sends
    assert sum(origin.hits(f"/api/v1/calls/{m}") for origin in edge.origins.values()) == 4


def test_half_open_connections_are_not_forwarded(edge):
    """Headers that never finish: nothing reaches an origin, and the proxy still answers others."""
    m = marker()
    partial = f"GET /api/v1/calls/{m} HTTP/1.1\r\n".encode() + base_headers()[:30]
    before = edge.routed()
    sockets = []
    try:
        for _ in range(20):
            sock = socket.create_connection((edge.proxy.host, edge.proxy.port), timeout=5)
            sock.sendall(partial)
            sockets.append(sock)
        r = http("GET", f"{edge.proxy.url}/api/v1/calls/still-served", {"CF-IPCountry": "US", **_bearer()})
        assert r.status == 200
    finally:
        for sock in sockets:
            sock.close()
    time.sleep(0.2)
    assert edge.routed() == before + 1
    assert not edge.entries(m)


def _bearer() -> dict[str, str]:
    return {"Authorization": "Bearer " + bearer_token()}


# -------------------------------------------------------------------------------------------- path tricks

REFUSED_PATHS = [
    "/api/v1/agents/..%2f..%2fadmin",
    "/api/v1/agents/..%2F..%2Fadmin",
    "/api/v1/agents%2f..%2f..%2fadmin",
    "/api/v1/agents/%2e%2e/%2e%2e/admin",
    "/api/v1/agents/%2E%2E/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
    "/api/v1/agents/../../admin",
    "//admin",
    "///admin/",
    "/admin/./",
    "/api/v1/agents/..;/..;/admin",
    "/api/v1/agents/.;/../../admin",
    "/api/v1/agents;jsessionid=1/../../admin",
    "/admin;/api/v1/agents",
    "/api/v1/agents\\..\\..\\admin",
    "/api/v1/agents/%5c..%5c..%5cadmin",
    "/health%0a",
    "/health%00",
    "/health%20",
    "/health%",
    "/health%zz",
    "/HEALTH",
    "/api/v1/agents/\u2025/admin",
    "/api/v1/agents/\uff0e\uff0e/\uff0e\uff0e/admin",
    "/api/v1/agents/%u002e%u002e/%u002e%u002e/admin",
    "*",
    "http://evil.example/admin",
    "api/v1/agents",
]

# Legal once normalised: they reach the origin exactly once, as the normalised path, inside the allowlist.
NORMALISED_PATHS = {
    "/./health": "/health",
    "/api/v1/agents/./1": "/api/v1/agents/1",
    "/api/v1//agents//1": "/api/v1/agents/1",
    "/api/v1/agents/x/../1": "/api/v1/agents/1",
    "/api/v1/%61gents/1": "/api/v1/agents/1",
    "/api/v1/agents/%252e%252e/%252e%252e/admin": "/api/v1/agents/%252e%252e/%252e%252e/admin",
    "/api/v1/agents/%c0%ae%c0%ae/admin": "/api/v1/agents/%C0%AE%C0%AE/admin",
    "/api/v1/agents/%e2%80%a5/admin": "/api/v1/agents/%E2%80%A5/admin",
    "/api/v1/agents/a;b=c": "/api/v1/agents/a;b=c",
}


@pytest.mark.parametrize("path", REFUSED_PATHS)
def test_path_tricks_are_refused_before_any_origin(edge, path):
    m = marker()
    raw = f"GET {path}?m={m} HTTP/1.1\r\n".encode() + base_headers() + b"Connection: close\r\n\r\n"
    before = edge.routed()
    got = send(edge, raw)
    assert all(400 <= s < 500 for s in got), got
    assert edge.routed() == before
    assert not edge.entries(m)


@pytest.mark.parametrize("path", sorted(NORMALISED_PATHS))
def test_path_tricks_that_are_legal_reach_the_origin_normalised(edge, path):
    m = marker()
    raw = f"GET {path}?m={m} HTTP/1.1\r\n".encode() + base_headers() + b"Connection: close\r\n\r\n"
    assert send(edge, raw) == [200]
    (entry,) = edge.entries(m)
    assert entry["path"] == NORMALISED_PATHS[path]
    assert ".." not in entry["path"].split("/") and "//" not in entry["path"]


# ------------------------------------------------------------------------------------------- credentials


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(
    header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, key: bytes = JWT_SECRET.encode()
) -> str:
    """An HS256-signed token from raw parts (so the parts can be anything, valid JSON or not)."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    p = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{_b64(h)}.{_b64(p)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _more_bad_tokens() -> dict[str, str]:
    now = int(time.time())
    hs = {"alg": "HS256", "typ": "JWT"}
    ok = {"sub": "mallory", "role": "admin", "exp": now + 600}
    return {
        "unknown-crit": signed({**hs, "crit": ["exp"]}, ok),
        "crit-unknown-name": signed({**hs, "crit": ["x-magic"], "x-magic": True}, ok),
        "sub-number": signed(hs, {**ok, "sub": 12345}),
        "sub-empty": signed(hs, {**ok, "sub": ""}),
        "role-list": signed(hs, {**ok, "role": ["admin"]}),
        "role-crlf": signed(hs, {**ok, "role": "admin\r\nX-Injected: yes"}),
        "role-lf": signed(hs, {**ok, "role": "admin\nX-User-ID: root"}),
        "role-nul": signed(hs, {**ok, "role": "admin\x00"}),
        "role-line-separator": signed(hs, {**ok, "role": "admin\u2028x"}),
        "permissions-string": signed(hs, {**ok, "permissions": "everything"}),
        "permissions-with-crlf": signed(hs, {**ok, "permissions": ["a\r\nb"]}),
        "exp-string": signed(hs, {**ok, "exp": "tomorrow"}),
        "exp-bool": signed(hs, {**ok, "exp": True}),
        "exp-nan-like": signed(hs, b'{"sub":"m","role":"r","exp":1e999}'),
        "nbf-string": signed(hs, {**ok, "nbf": "now"}),
        "iat-future": signed(hs, {**ok, "iat": now + 86400}),
        "payload-array": signed(hs, b'["sub","mallory"]'),
        "payload-not-json": signed(hs, b"sub=mallory"),
        "duplicate-claim": signed(hs, b'{"sub":"alice","sub":"root","role":"admin","exp":%d}' % (now + 600)),
        "duplicate-alg": signed(b'{"alg":"HS256","alg":"none"}', ok),
        "alg-lowercase": signed({"alg": "hs256"}, ok),
        "alg-rs256-with-secret": signed({"alg": "RS256"}, ok),
        "deeply-nested-header": signed(b"[" * 2000 + b"]" * 2000, ok),
        "deeply-nested-payload": signed(hs, b"[" * 2000 + b"]" * 2000),
        "padded-segments": signed(hs, ok) + "==",
        "empty-signature": signed(hs, ok).rsplit(".", 1)[0] + ".",
        "four-segments": signed(hs, ok) + ".AAAA",
        "token-with-space": signed(hs, ok).replace(".", ". ", 1),
        "oversized-20k": signed(hs, {**ok, "pad": "x" * 20000}),
    }


def _all_bad_tokens() -> dict[str, str]:
    out = {f"e2e-auth-{name}": value for name, (value, _) in _bad_bearer_tokens().items()}
    out.update(_more_bad_tokens())
    return out


def assert_unauthorized(edge: Edge, authorization: str | list[str]) -> None:
    m = marker()
    values = [authorization] if isinstance(authorization, str) else authorization
    headers = [("CF-IPCountry", "US"), *(("Authorization", v) for v in values)]
    before = edge.routed()
    response = http("GET", f"{edge.proxy.url}/api/v1/calls/{m}", headers)
    assert response.status == 401, (response.status, response.body)
    assert response.json()["error"] == "Authentication required"
    assert edge.routed() == before
    assert not edge.entries(m)


@pytest.mark.parametrize("case", sorted(_all_bad_tokens()))
def test_every_bad_jwt_is_401_and_never_reaches_an_origin(edge, case):
    assert_unauthorized(edge, "Bearer " + _all_bad_tokens()[case])


def test_the_control_token_is_accepted(edge):
    """The helpers above are right: the same construction with good claims passes."""
    now = int(time.time())
    token = signed({"alg": "HS256", "typ": "JWT"}, {"sub": "carol", "role": "admin", "exp": now + 600})
    response = http("GET", f"{edge.proxy.url}/api/v1/calls/ok", {"Authorization": "Bearer " + token})
    assert response.status == 200
    assert response.json()["headers"]["X-User-ID"] == "carol"


@pytest.mark.parametrize(
    "values",
    [
        ["Bearer {jwt}", "Bearer {jwt}"],
        ["Bearer {jwt}", "Bearer garbage"],
        ["Bearer garbage", "Bearer {jwt}"],
        ["Bearer {jwt}, Bearer {jwt}"],
        ["Bearer {jwt}", ""],
    ],
    ids=["same-twice", "good-then-bad", "bad-then-good", "comma-list", "good-then-empty"],
)
def test_duplicate_authorization_headers_are_401(edge, values):
    token = bearer_token()
    assert_unauthorized(edge, [v.format(jwt=token) for v in values])


def _keys(edge: Edge):
    """An ApiKeyStore on the proxy's own store (records planted here are what the proxy reads)."""
    policy = load_policy_file(edge.policy, "e2e", environ=ENV).policy
    store = open_store(policy.store)
    return store, ApiKeyStore(store)


def _plant(edge: Edge, action: str) -> str:
    """Create a key in a given state directly in the store; returns the key."""

    async def go() -> str:
        store, keys = _keys(edge)
        try:
            if action == "revoked":
                key, record = await keys.add("rev-user", "service")
                assert await keys.revoke(record.key_id)
                return key
            if action == "valid":
                key, _ = await keys.add("good-user", "service")
                return key
            key = generate_key()
            digest = hash_key(key)
            good = {
                "v": 1,
                "key_id": digest[:12],
                "user": "u",
                "role": "r",
                "permissions": [],
                "active": True,
                "expires_at": None,
                "rate_limit": None,
                "created_at": time.time(),
            }
            records = {
                "garbage": b"\x00\xff not json",
                "empty": b"",
                "json-list": b"[]",
                "missing-field": json.dumps({k: v for k, v in good.items() if k != "active"}).encode(),
                "extra-field": json.dumps({**good, "admin": True}).encode(),
                "active-string": json.dumps({**good, "active": "yes"}).encode(),
                "role-crlf": json.dumps({**good, "role": "r\r\nX-User-ID: root"}).encode(),
                "foreign-key-id": json.dumps({**good, "key_id": "0" * 12}).encode(),
                "wrong-version": json.dumps({**good, "v": 2}).encode(),
                "rate-limit-zero": json.dumps({**good, "rate_limit": [0, 60]}).encode(),
                "huge-permissions": json.dumps({**good, "permissions": ["p"] * 5000}).encode(),
            }
            await store.set(keys.prefix + digest, records[action])
            return key
        finally:
            await store.close()

    return asyncio.run(go())


MALFORMED_RECORDS = [
    "garbage",
    "empty",
    "json-list",
    "missing-field",
    "extra-field",
    "active-string",
    "role-crlf",
    "foreign-key-id",
    "wrong-version",
    "rate-limit-zero",
    "huge-permissions",
]


@pytest.mark.parametrize("record", MALFORMED_RECORDS)
def test_malformed_key_record_planted_in_the_store_never_authenticates(edge, record):
    assert_unauthorized(edge, "API-Key " + _plant(edge, record))


@pytest.mark.parametrize(
    "case", ["unknown", "revoked", "wrong-prefix", "too-short", "too-long", "huge", "as-bearer", "bad-chars"]
)
def test_bad_api_keys_are_401(edge, case):
    if case == "revoked":
        key = _plant(edge, "revoked")
    elif case == "unknown":
        key = generate_key()
    else:
        valid = _plant(edge, "valid")
        key = {
            "wrong-prefix": "ak_" + valid[3:],
            "too-short": valid[:-1],
            "too-long": valid + "A",
            "huge": valid + "A" * 20000,
            "as-bearer": valid,
            "bad-chars": valid[:-1] + "$",
        }[case]
    assert_unauthorized(edge, ("Bearer " if case == "as-bearer" else "API-Key ") + key)


def test_a_planted_valid_key_is_accepted(edge):
    """Control for the cases above: a well-formed record in the same store authenticates."""
    key = _plant(edge, "valid")
    response = http("GET", f"{edge.proxy.url}/api/v1/calls/ok", {"Authorization": "API-Key " + key})
    assert response.status == 200, response.body
    assert response.json()["headers"]["X-User-ID"] == "good-user"


def test_the_proxy_never_logged_an_internal_error(edge):
    """Runs last in this module for each proxy: nothing above made our code fail (fail-closed 500)."""
    output = edge.proxy.output()
    assert "internal error" not in output, output[-4000:]
    assert "Traceback" not in output, output[-4000:]

"""Trust and hygiene at the live edge (issue 17), through a real `mitmdump -s addon.py` (and `edgerules serve`
with EDGERULES_E2E_RUNNER=serve): request-targets and Host, method overrides, 401 reasons."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid

import jwt
import pytest

from tests.support.origins import start_origins
from tests.support.policies import ENV, JWT_SECRET, bearer, write_policy
from tests.support.proxy import http, http_raw, start_edge_process

pytestmark = pytest.mark.e2e

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    origins = start_origins(list(REGIONS))
    policy = write_policy(
        tmp_path_factory.mktemp("trust"),
        {name: origin.port for name, origin in origins.items()},
        {"metrics": {"access_log": True}},
    )
    proxy = start_edge_process(policy, environ=ENV)
    try:
        yield proxy, origins
    finally:
        proxy.stop()
        origins.stop_all()


def unique(prefix: str = "/api/v1/calls") -> str:
    return f"{prefix}/{uuid.uuid4().hex}"


def origin_log(origins, path: str) -> list[dict]:
    """Every request the origins received whose raw path starts with `path`."""
    return [e for o in origins.values() for e in o.stats()["log"] if e["path"].startswith(path)]


def raw_status(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split(b" ", 2)[1])


# -- item 9: duplicate Host, generic 401 reasons -------------------------------------------------------------


def test_two_host_headers_are_refused(edge):
    proxy, origins = edge
    path = unique()
    auth = bearer()["Authorization"]
    raw = (
        f"GET {path} HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nCF-IPCountry: US\r\n"
        f"Authorization: {auth}\r\nConnection: close\r\n\r\n"
    ).encode()
    response = http_raw("127.0.0.1", proxy.port, raw)
    assert raw_status(response) == 400, response[:300]
    assert origin_log(origins, path) == []


def test_401_tells_the_client_one_reason_per_scheme_and_the_log_the_precise_one(edge):
    proxy, origins = edge
    expired = jwt.encode(
        {"sub": "a", "role": "r", "exp": int(time.time()) - 3600}, JWT_SECRET, algorithm="HS256"
    )
    forged = jwt.encode({"sub": "a", "role": "r", "exp": int(time.time()) + 600}, "x" * 40, algorithm="HS256")
    path = unique()
    for token in (expired, forged):
        response = http("GET", proxy.url + path, {"Authorization": f"Bearer {token}"})
        assert response.status == 401
        assert response.json() == {"error": "Authentication required", "reason": "invalid_token"}
    response = http("GET", proxy.url + path, {"Authorization": "API-Key " + "k" * 40})
    assert response.status == 401
    assert response.json()["reason"] == "invalid_api_key"
    assert http("GET", proxy.url + path).json()["reason"] == "missing"
    assert origin_log(origins, path) == []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and '"auth:bad_signature"' not in proxy.output():
        time.sleep(0.1)
    log = proxy.output()
    assert '"auth:expired"' in log and '"auth:bad_signature"' in log  # the precise reason stays in the log


# -- item 3: request-target characters, method overrides ----------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["/voice/..#", "/api/v1/calls/x?a=1#frag", "/api/v1/calls/x?a=<b>", "/api/v1/calls/x?a=%zz"],
)
def test_fragment_and_forbidden_request_target_characters_are_400(edge, target):
    proxy, origins = edge
    before = routed(origins)
    raw = f"GET {target} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n".encode()
    response = http_raw("127.0.0.1", proxy.port, raw)
    assert raw_status(response) == 400, response[:300]
    assert routed(origins) == before  # nothing but health probes reached an origin


def routed(origins) -> int:
    stats = [o.stats() for o in origins.values()]
    return sum(s["requests"] - s["paths"].get("/health", 0) for s in stats)


def test_method_override_headers_and_parameter_are_stripped(edge):
    proxy, _ = edge
    path = unique()
    response = http(
        "GET",
        f"{proxy.url}{path}?_method=DELETE&a=1&%5Fmethod=PUT",
        [
            ("X-HTTP-Method-Override", "DELETE"),
            ("X-HTTP-Method", "DELETE"),
            ("X-Method-Override", "PATCH"),
            *bearer().items(),
        ],
    )
    assert response.status == 200, response.body
    echo = response.json()
    seen = {k.lower() for k in echo["headers"]}
    assert not seen & {"x-http-method-override", "x-http-method", "x-method-override"}
    assert echo["query"] == "a=1"


# -- item 1: admin behind a load balancer on the same host ---------------------------------------------------


class Forwarder:
    """A loopback TCP forwarder (what HAProxy in `mode tcp` on the same host is to the edge): every client
    the edge sees through it is 127.0.0.1."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


ADMIN_TOKEN = "admin-token-for-the-e2e-test-0123456789"


@pytest.fixture(scope="module")
def balanced(tmp_path_factory):
    """The edge with the shipped policy's admin settings (not the test environment's loopback trust), behind
    a loopback TCP forwarder, as docs/operations.md's load-balancer section sets it up."""
    origins = start_origins(list(REGIONS))
    directory = tmp_path_factory.mktemp("balanced")
    path = write_policy(directory, {name: origin.port for name, origin in origins.items()})
    data = json.loads(path.read_text())
    del data["environments"]["e2e"]["admin"]  # what the base policy says, as in `production`
    path.write_text(json.dumps(data))
    proxy = start_edge_process(path, environ={**ENV, "EDGERULES_ADMIN_TOKEN": ADMIN_TOKEN})
    forwarder = Forwarder(proxy.port)
    try:
        yield proxy, forwarder, origins
    finally:
        forwarder.close()
        proxy.stop()
        origins.stop_all()


@pytest.mark.parametrize(
    ("method", "endpoint"),
    [
        ("GET", "status"),
        ("GET", "metrics"),
        ("POST", "reload"),
        ("POST", "cache/purge"),
        ("POST", "analytics"),
    ],
)
def test_admin_behind_a_local_balancer_needs_the_token(balanced, method, endpoint):
    _, forwarder, _ = balanced
    url = f"http://127.0.0.1:{forwarder.port}/__edgerules/{endpoint}"
    body = (
        {"all": True} if endpoint == "cache/purge" else ({"records": []} if endpoint == "analytics" else None)
    )
    response = http(method, url, json=body)
    assert response.status == 404, response.body  # the same 404 as an unknown path
    response = http(
        "GET", f"http://127.0.0.1:{forwarder.port}/__edgerules/status", {"Authorization": "Bearer x"}
    )
    assert response.status == 404
    response = http(
        "GET",
        f"http://127.0.0.1:{forwarder.port}/__edgerules/status",
        {"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert response.status == 200 and response.json()["policy"]["name"] == "aybiza"


def test_purge_by_key_only_touches_cache_entries(balanced):
    _, forwarder, _ = balanced
    url = f"http://127.0.0.1:{forwarder.port}/__edgerules/cache/purge"
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for request in ({"key": "ratelimit:api-key:someone"}, {"key": "apikey:abc"}, {"key": 7}, {"prefix": 3}):
        response = http("POST", url, auth, json=request)
        assert response.status == 400, (request, response.body)
    assert http("POST", url, auth, json={"key": "cache:" + "0" * 64}).status == 200
    assert http("POST", url, auth, json={"prefix": "/api/v1/agents"}).status == 200


# -- item 2: forwarding headers are the edge's --------------------------------------------------------------

SPOOFED = [
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-Proto", "https"),
    ("Forwarded", "for=6.6.6.6;host=evil.example"),
    ("X-Original-URL", "/admin"),
    ("X-Rewrite-URL", "/admin"),
    ("X-Host", "evil.example"),
    ("X-Forwarded-Scheme", "https"),
    ("X-Forwarded-Server", "evil.example"),
]


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """The edge where no peer is a trusted proxy (as in the shipped base and `production` for loopback)."""
    origins = start_origins(list(REGIONS))
    policy = write_policy(
        tmp_path_factory.mktemp("strict"),
        {name: origin.port for name, origin in origins.items()},
        {
            "geo": {"trusted_proxies": []},
            # the shipped /health rule, and an anonymous write path under a cached prefix
            "auth": {
                "public": [
                    {"path": "/health", "methods": ["GET", "HEAD"]},
                    {"prefix": "/api/v1/agents/open", "methods": ["GET", "POST"]},
                ]
            },
        },
    )
    proxy = start_edge_process(policy, environ=ENV)
    try:
        yield proxy, origins
    finally:
        proxy.stop()
        origins.stop_all()


def test_client_forwarding_headers_are_replaced_by_what_the_edge_saw(strict):
    proxy, _ = strict
    response = http("GET", proxy.url + unique(), [*SPOOFED, *bearer().items()])
    assert response.status == 200, response.body
    seen = {k.lower(): v for k, v in response.json()["headers"].items()}
    host = f"127.0.0.1:{proxy.port}"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == host
    assert seen["forwarded"] == f'for=127.0.0.1;host="{host}";proto=http'
    for name in ("x-original-url", "x-rewrite-url", "x-host", "x-forwarded-scheme", "x-forwarded-server"):
        assert name not in seen, name
    assert "evil.example" not in response.body.decode()


def test_a_spoofed_forwarding_header_cannot_poison_the_shared_cache(strict):
    proxy, _ = strict
    path = unique("/api/v1/agents")
    auth = bearer("shared-user")
    first = http("GET", proxy.url + path, [("X-Forwarded-Host", "evil.example"), *auth.items()])
    assert first.status == 200 and first.headers["CF-Cache-Status"] == "MISS"
    second = http("GET", proxy.url + path, auth)
    assert second.status == 200 and second.headers["CF-Cache-Status"] == "HIT"
    assert b"evil.example" not in first.body + second.body


# -- item 6: public by method; anonymous writes never invalidate ----------------------------------------------


def test_shipped_health_is_public_for_get_only(edge):
    proxy, origins = edge
    before = sum(o.hits("/health") for o in origins.values())
    for method in ("POST", "PUT", "DELETE"):
        response = http(method, f"{proxy.url}/health", json={"status": "down"})
        assert response.status == 401, (method, response.body)
    assert http("GET", f"{proxy.url}/health").status == 200
    probes_only = sum(o.hits("/health") for o in origins.values()) - before
    assert probes_only >= 0  # the GET may be a cache HIT; the writes never reached an origin
    for origin in origins.values():
        assert not [e for e in origin.stats()["log"] if e["path"] == "/health" and e["method"] != "GET"]


def test_an_anonymous_write_does_not_invalidate_the_shared_entry(strict):
    proxy, _ = strict
    path = unique("/api/v1/agents/open")
    assert http("GET", proxy.url + path).headers["CF-Cache-Status"] == "MISS"
    assert http("GET", proxy.url + path).headers["CF-Cache-Status"] == "HIT"
    write = http("POST", proxy.url + path, json={"x": 1})
    assert write.status == 200, write.body  # public: it reached the origin
    time.sleep(1.0)  # invalidations run in the background: give one the time it would take
    assert http("GET", proxy.url + path).headers["CF-Cache-Status"] == "HIT"
    # the control: an authenticated write does invalidate
    path, auth = unique("/api/v1/agents"), bearer().items()
    assert http("GET", proxy.url + path, auth).headers["CF-Cache-Status"] == "MISS"
    assert http("GET", proxy.url + path, auth).headers["CF-Cache-Status"] == "HIT"
    assert http("POST", proxy.url + path, auth, json={"x": 2}).status == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if http("GET", proxy.url + path, auth).headers["CF-Cache-Status"] != "HIT":
            break
        time.sleep(0.2)
    else:
        raise AssertionError("an authenticated write did not invalidate the entry")


# -- item 4: CORS is the edge's ----------------------------------------------------------------------------

REFLECTING = json.dumps(
    {
        "Access-Control-Allow-Origin": "https://evil.example",
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Expose-Headers": "X-Secret",
    }
)


def test_on_a_cors_path_the_origins_cors_headers_are_replaced_by_the_edges(edge):
    proxy, _ = edge
    path = unique()  # /api/v1/calls: the voice-apps rule (allow https://app.aybiza.com, no credentials)
    headers = [("X-Test-Response-Headers", REFLECTING), *bearer().items()]
    foreign = http("GET", proxy.url + path, [("Origin", "https://evil.example"), *headers])
    assert foreign.status == 200
    assert not [name for name in foreign.headers if name.lower().startswith("access-control-")], (
        foreign.headers
    )
    allowed = http("GET", proxy.url + path, [("Origin", "https://app.aybiza.com"), *headers])
    assert allowed.headers.get_all("Access-Control-Allow-Origin") == ["https://app.aybiza.com"]
    assert allowed.headers["Access-Control-Allow-Credentials"] is None
    assert allowed.headers["Access-Control-Expose-Headers"] is None


def test_elsewhere_a_wildcard_origin_with_credentials_is_stripped(edge):
    proxy, _ = edge
    wildcard = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Credentials": "true"}
    sent = [
        ("X-Test-Response-Headers", json.dumps(wildcard)),
        ("Origin", "https://x.example"),
        *bearer().items(),
    ]
    response = http("GET", proxy.url + unique("/api/v1/phone-numbers"), sent)
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] is None
    assert response.headers["Access-Control-Allow-Credentials"] is None
    public = [
        ("X-Test-Response-Headers", json.dumps({"Access-Control-Allow-Origin": "*"})),
        *bearer().items(),
    ]
    response = http("GET", proxy.url + unique("/api/v1/phone-numbers"), public)
    assert response.headers["Access-Control-Allow-Origin"] == "*"  # without credentials: the origin's choice


# -- item 7: secrets in paths never reach the access log ----------------------------------------------------


def test_a_webhook_secret_in_the_path_is_redacted_in_the_access_log(edge):
    proxy, _ = edge
    secret = "whsec_" + uuid.uuid4().hex[:8] + "Kx9" + uuid.uuid4().hex[:12]
    marker = "hook-" + uuid.uuid4().hex[:8]
    path = f"/webhooks/{marker}/{secret}"
    offset = len(proxy.output())
    response = http("POST", proxy.url + path, bearer().items(), json={"event": "x"})
    assert response.status == 200, response.body
    deadline = time.monotonic() + 10
    lines: list[str] = []
    while time.monotonic() < deadline and not lines:
        lines = [line for line in proxy.output()[offset:].splitlines() if marker in line]
        time.sleep(0.1)
    assert lines, proxy.output()[offset:]
    assert secret not in proxy.output()[offset:]
    assert f"/webhooks/{marker}/[redacted]" in lines[0]


# -- item 8: ejection damping ------------------------------------------------------------------------------


def get_from(source: str, port: int, path: str, headers: dict[str, str]) -> int:
    """A GET from another loopback address (127.0.0.2 is a different client to the edge)."""
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    raw = f"GET {path} HTTP/1.1\r\nHost: edge\r\n{lines}Connection: close\r\n\r\n".encode()
    with socket.socket() as sock:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return raw_status(data)


def region_of(proxy) -> str:
    response = http("GET", proxy.url + unique(), {"CF-IPCountry": "US", **bearer()})
    assert response.status == 200, response.body
    return response.headers["X-CF-Processed-Region"]


def test_one_client_provoking_errors_does_not_eject_a_region_but_many_clients_do(strict_errors):
    proxy, _ = strict_errors
    provoke = {"CF-IPCountry": "US", "X-Test-Status": "503", **bearer()}
    assert region_of(proxy) == "us-east-1"
    for _ in range(8):
        assert get_from("127.0.0.1", proxy.port, unique(), provoke) == 503
    assert region_of(proxy) == "us-east-1"  # one client's 503s: still the primary
    assert get_from("127.0.0.2", proxy.port, unique(), provoke) == 503
    assert region_of(proxy) == "us-west-2"  # errors from two clients, over half the answers: ejected


@pytest.fixture
def strict_errors(tmp_path):
    """An edge of its own (ejections must not leak into other tests), no retries: each 503 is one answer."""
    origins = start_origins(list(REGIONS))
    policy = write_policy(
        tmp_path,
        {name: origin.port for name, origin in origins.items()},
        {"routing": {"retries": 0}, "health": {"passive": {"ejection": "30s"}}},
    )
    proxy = start_edge_process(policy, environ=ENV)
    try:
        yield proxy, origins
    finally:
        proxy.stop()
        origins.stop_all()


# -- item 5: the collector's closed label sets --------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        {"latency": 5, "region": "attacker-region-1"},
        {"latency": 5, "requestType": "made-up-class"},
        {"latency": 5, "cacheStatus": "PWNED"},
        {"latency": 5, "error": "anything-goes"},
        {"latency": 5, "clientCountry": "Narnia"},
        {"latency": 5, "timestamp": int((time.time() - 3600) * 1000)},  # rewriting a past hour
    ],
    ids=["region", "class", "cache", "error", "country", "old-timestamp"],
)
def test_the_collector_refuses_labels_outside_the_closed_sets(edge, record):
    proxy, _ = edge
    response = http("POST", f"{proxy.url}/__edgerules/analytics", json=record)
    assert response.status == 400, response.body
    ok = {
        "latency": 5,
        "region": "us-east-1",
        "requestType": "webhook",
        "cacheStatus": "HIT",
        "error": "auth:expired",
    }
    assert http("POST", f"{proxy.url}/__edgerules/analytics", json=ok).status == 200


def test_the_collector_can_be_switched_off(strict_errors_off):
    response = http("POST", f"{strict_errors_off.url}/__edgerules/analytics", json={"latency": 5})
    assert response.status == 404


@pytest.fixture
def strict_errors_off(tmp_path):
    origins = start_origins(["us-east-1"])
    policy = write_policy(
        tmp_path, {"us-east-1": origins["us-east-1"].port}, {"metrics": {"collector": False}}
    )
    data = json.loads(policy.read_text())
    for region in ("us-west-2", "eu-west-1"):  # one origin is enough here
        data["environments"]["e2e"]["regions"][region] = {
            "upstream": f"http://127.0.0.1:{origins['us-east-1'].port}"
        }
    policy.write_text(json.dumps(data))
    proxy = start_edge_process(policy, environ=ENV)
    try:
        yield proxy
    finally:
        proxy.stop()
        origins.stop_all()


@pytest.fixture
def checking(tmp_path):
    """An edge whose policy honours method overrides, checked against its methods (no DELETE)."""
    origins = start_origins(list(REGIONS))
    validation = {"method_override": "check", "methods": ["GET", "POST", "PUT", "PATCH", "OPTIONS"]}
    policy = write_policy(tmp_path, {n: o.port for n, o in origins.items()}, {"validation": validation})
    proxy = start_edge_process(policy, environ=ENV)
    try:
        yield proxy
    finally:
        proxy.stop()
        origins.stop_all()


def test_honoured_method_overrides_are_checked_against_the_allowed_methods(checking):
    sent = {"CF-IPCountry": "US", **bearer()}
    refused = http("POST", checking.url + unique(), {**sent, "X-HTTP-Method-Override": "DELETE"}, json={})
    assert refused.status == 405 and refused.headers["Allow"] == "GET, OPTIONS, PATCH, POST, PUT"
    refused = http("POST", checking.url + unique() + "?_method=delete", sent, json={})
    assert refused.status == 405
    allowed = http("POST", checking.url + unique(), {**sent, "X-HTTP-Method-Override": "PUT"}, json={})
    assert allowed.status == 200, allowed.body
    seen = {k.lower(): v for k, v in allowed.json()["headers"].items()}
    assert seen["x-http-method-override"] == "PUT"  # honoured: the origin gets it

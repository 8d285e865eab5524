"""The differential test: what `edgerules explain` shows is what the live edge does.

A fixed corpus of generated requests (methods, tricky path encodings, header spellings and duplicates,
`Connection` lists, identities, CORS preflights and actual requests, cacheable and uncacheable answers, a dead
region, origin errors and timeouts, audio streams that mitmproxy forwards itself) goes through a real
`mitmdump -s addon.py`, through `edgerules serve`, and
through `explain` (in-process, the function behind `edgerules explain --format json`, told what each region's
origin does). For every request, what the origin received (method, target, header fields and values) and what
the client received (status, header fields and values, and the body of the edge's own answers) must be the
same on all three. A mismatch prints the request and a diff.

Left out of the comparison, and why: framing (`Content-Length`, `Transfer-Encoding`: each hop writes its own),
the origin's own `Date` and `Server` (the simulated origin has no clock), and the value of the edge's
`X-Cache-Processed` time stamp (present on all three, the time differs).
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import random
import time
from http.client import HTTPConnection
from typing import Any

import jwt
import pytest

from edgerules.policy.load import load_policy_file
from edgerules.tools.commands.explain import explain
from edgerules.tools.policytest import OriginBehaviour
from tests.support.origins import start_origins
from tests.support.policies import ENV, JWT_SECRET, write_policy
from tests.support.ports import free_port
from tests.support.proxy import start_edge_process

pytestmark = pytest.mark.e2e

LIVE = ("us-east-1", "eu-west-1")
DEAD = "us-west-2"  # nothing listens on its port: connect errors, failover
CORPUS_SIZE = 220
SEED = 13
ORIGIN_TIMEOUT = 1.0  # routing.timeout of the test policy; X-Test-Delay beyond it gives a 504
FRAMING = {"content-length", "transfer-encoding"}
ORIGIN_OWN = {"date", "server"}
VARIABLE_VALUES = {"x-cache-processed", "x-authenticated-at"}  # time stamps

OVERLAY = {
    # no state that changes between the requests of the corpus: no rate limits, no ejections
    "rate_limits": [],
    "health": {
        "interval": "1h",
        "unhealthy_threshold": 1000,
        "passive": {"failures": 1000000, "ejection": 0},
    },
    "routing": {"timeout": f"{ORIGIN_TIMEOUT}s", "connect_timeout": "0.5s"},
    "headers": {
        "request": [
            {"name": "compress-non-audio", "set": {"Accept-Encoding": "gzip, br"}},
            {"name": "foo-a", "set": {"X-Foo": "a"}},
            {"name": "foo-b", "set": {"x-foo": "b"}},
            {"name": "tag-if-absent", "add_if_absent": {"X-Tag": "edge"}},
            {"name": "drop-debug", "remove": ["X-Debug"]},
        ],
        "response": [
            {
                "name": "json-ttl",
                "content_type": ["application/json"],
                "set": {"Cache-Control": "public, max-age=60"},
            },
            {"name": "posted", "match": {"methods": ["POST"]}, "set": {"X-Posted": "yes"}},
            {"name": "strip-origin-secret", "remove": ["X-Origin-Secret"]},
        ],
    },
}


# ------------------------------------------------------------------------------------------------ the corpus


def _token(rng: random.Random, kind: str) -> str:
    now = int(time.time())
    claims = {
        "sub": f"user-{rng.randint(1, 5)}",
        "role": "admin",
        "permissions": ["agents:read"],
        "exp": now + 900,
    }
    if kind == "expired":
        claims["exp"] = now - 60
    secret = JWT_SECRET if kind != "forged" else "another-secret-that-is-long-enough-for-hs256"
    return jwt.encode(claims, secret, algorithm="HS256")


PATHS = [
    "/api/v1/agents/{n}",
    "/api/v1/agents/{n}?page=2&q=a%20b",
    "/api/v1/agents/./{n}",
    "/api/v1/agents//{n}",
    "/api/v1/agents/%7e{n}",
    "/api/v1/agents/a%2Fb{n}",
    "/api/v1/agents/x/../{n}",
    "/api/v1/agents/%2e%2e/calls/{n}",
    "/api/v1/calls/{n}",
    "/api/v1/calls",
    "/API/v1/agents/{n}",
    "/health?probe={n}",  # one cache key per request: the edges keep their cache, explain starts empty
    "/webhooks/twilio/{n}",
    "/nope/{n}",
    "/api/v1/agents/caf%C3%A9{n}",
    "/api/v1/analytics/{n}",
    "/voice/stream/{n}",  # audio-stream class: forwarded by mitmproxy itself (the streamed path)
]


def corpus() -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    out = []
    for n in range(CORPUS_SIZE):
        method = rng.choice(["GET"] * 6 + ["POST"] * 3 + ["PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"])
        path = rng.choice(PATHS).format(n=n)
        if n % 11 == 5:  # a CORS preflight of the voice apps (allowed or refused by its request headers)
            method, path = "OPTIONS", rng.choice(["/api/v1/calls/{n}", "/voice/stream/{n}"]).format(n=n)
        headers: list[tuple[str, str]] = [("Host", "edge.test"), ("X-Diff-Id", str(n))]
        body = b""
        identity = rng.choice(["jwt"] * 6 + ["none", "expired", "forged", "garbage"])
        if identity == "garbage":
            headers.append(("Authorization", "Bearer not.a.token"))
        elif identity != "none":
            headers.append(
                (rng.choice(["Authorization", "authorization"]), f"Bearer {_token(rng, identity)}")
            )
        if rng.random() < 0.3:
            named = rng.sample(
                ["keep-alive", "X-Secret", "X-Forwarded-For", "X-User-ID", "X-Foo", "close"], 2
            )
            headers.append(("Connection", ", ".join(named)))
            headers.append(("X-Secret", "s3cret"))
        if rng.random() < 0.25:
            headers += [("X-Dup", "one"), ("x-dup", "two"), ("X-DUP", "three")]
        if rng.random() < 0.2:
            headers += [("X-User-ID", "spoofed"), ("X-Forwarded-For", "10.9.8.7")]
        if rng.random() < 0.2:
            headers += [
                ("TE", "trailers"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Authorization", "Basic eDp5"),
            ]
        if rng.random() < 0.2:
            headers += [("X-Tag", "client"), ("X-Debug", "1")]
        if rng.random() < 0.3:
            headers.append(("CF-IPCountry", rng.choice(["US", "GB", "JP", "MX", "DE"])))  # JP/MX: dead first
        if rng.random() < 0.25:
            headers.append(("Origin", rng.choice(["https://app.aybiza.com", "https://evil.example"])))
        if method == "OPTIONS" and rng.random() < 0.8:
            headers.append(("Origin", "https://app.aybiza.com"))
            headers.append(("Access-Control-Request-Method", rng.choice(["POST", "GET", "PATCH"])))
            headers.append(("Access-Control-Request-Headers", rng.choice(["content-type", "x-evil", ""])))
        if method in ("POST", "PUT", "PATCH"):
            body = b'{"n": %d}' % n
            content_type = rng.choice(["application/json"] * 4 + ["text/plain", None])
            if content_type:
                headers.append(("Content-Type", content_type))
        roll = rng.random()
        if roll < 0.08:
            headers.append(("X-Test-Status", rng.choice(["500", "503", "404", "201"])))
        elif roll < 0.11:
            headers.append(("X-Test-Delay", str(ORIGIN_TIMEOUT + 0.5)))
        if rng.random() < 0.15:
            extra = {"X-Origin-Secret": "inner", "Connection": "X-Private", "X-Private": "p"}
            headers.append(("X-Test-Response-Headers", json.dumps(extra)))
        if path.startswith("/voice/stream"):
            # mitmproxy carries streams to the first region itself: no failover, no timeout of the edge's
            headers = [
                (k, v)
                for k, v in headers
                if k != "X-Test-Delay" and not (k == "CF-IPCountry" and v in ("JP", "MX"))
            ]
        out.append({"n": n, "method": method, "path": path, "headers": headers, "body": body})
    return out


# ------------------------------------------------------------------------------------------------ observing


def _send(port: int, req: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    conn = HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.putrequest(req["method"], req["path"], skip_host=True, skip_accept_encoding=True)
        for name, value in req["headers"]:
            conn.putheader(name, value)
        if req["body"] or req["method"] in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", str(len(req["body"])))
        conn.endheaders(req["body"] or None)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, list(resp.headers.items()), body
    finally:
        conn.close()


def _fields(pairs, drop: set[str]) -> dict[str, list[str]]:
    """Header fields as {lower-case name: [values, in order]}: spelling and order across names aside."""
    out: dict[str, list[str]] = {}
    for name, value in pairs:
        low = name.lower()
        if low in drop:
            continue
        out.setdefault(low, []).append("<varies>" if low in VARIABLE_VALUES else value)
    return out


def _origin_fields(logged: dict[str, str]) -> dict[str, list[str]]:
    """The origin logs one entry per spelling with repeated values joined; the same for the others."""
    return _fields(sorted(logged.items(), key=lambda kv: kv[0].lower()), FRAMING)


def _joined(pairs) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _behaviours(
    req: dict[str, Any], port_of: dict[str, int]
) -> tuple[dict[str, OriginBehaviour], OriginBehaviour]:
    """What each region's origin (examples/origin.py) does with this request, for the simulation."""
    sent = {n.lower(): v for n, v in req["headers"]}
    if req["path"].startswith("/health?") and req["method"] in (
        "GET",
        "HEAD",
    ):  # the origin's own health answer
        does = {
            r: OriginBehaviour(
                "response", 200, (("X-Origin-Region", r), ("Content-Type", "application/json; charset=utf-8"))
            )
            for r in LIVE
        }
    elif "x-test-delay" in sent:
        does = {r: OriginBehaviour("timeout") for r in LIVE}
    else:
        status = int(sent.get("x-test-status", "200"))
        does = {}
        for region in LIVE:
            headers = {"X-Origin-Region": region, **json.loads(sent.get("x-test-response-headers", "{}"))}
            if status not in (204, 304):
                headers["Content-Type"] = "application/json"
            does[region] = OriginBehaviour("response", status, tuple(headers.items()))
    does[DEAD] = OriginBehaviour("connect_error")
    return does, OriginBehaviour("connect_error")


def _explained(policy, port: int, req: dict[str, Any], port_of: dict[str, int]) -> dict[str, Any]:
    origins, default = _behaviours(req, port_of)
    headers = list(req["headers"])
    body_size = len(req["body"]) if req["method"] in ("POST", "PUT", "PATCH") else None
    if body_size is not None:
        headers.append(("Content-Length", str(body_size)))
    args = argparse.Namespace(
        down=[],
        country=None,
        client_ip="127.0.0.1",
        body_size=body_size,
        origins=origins,
        default_origin=default,
        origin_headers=(),
        cached=None,
        now=None,
    )
    return asyncio.run(explain(policy, req["method"], f"http://127.0.0.1:{port}{req['path']}", headers, args))


def _view(status, client_headers, body, edge_made, origin_req) -> dict[str, Any]:
    return {
        "status": status,
        "client_headers": _fields(client_headers, FRAMING | ORIGIN_OWN),
        "body": body.decode("utf-8", "replace") if edge_made else None,
        "origin": origin_req,
    }


def _diff(a: dict, b: dict, names: tuple[str, str]) -> str:
    left = json.dumps(a, indent=1, sort_keys=True).splitlines()
    right = json.dumps(b, indent=1, sort_keys=True).splitlines()
    return "\n".join(difflib.unified_diff(left, right, names[0], names[1], lineterm="", n=2))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("differential")
    with start_origins(list(LIVE)) as origins:
        ports = {name: origin.port for name, origin in origins.items()}
        ports[DEAD] = free_port()
        # one store per edge: each edge's cache sees only its own requests
        for name in ("mitmdump", "serve"):
            (tmp / name).mkdir()
        paths = {name: write_policy(tmp / name, ports, OVERLAY) for name in ("mitmdump", "serve")}
        policy = load_policy_file(paths["mitmdump"], "e2e", environ=ENV, for_serving=True).policy
        edges = {}
        try:
            edges["mitmdump"] = start_edge_process(paths["mitmdump"], environ=ENV)
            edges["serve"] = start_edge_process(paths["serve"], environ=ENV, serve=True)
            yield policy, origins, ports, edges
        finally:
            for edge in edges.values():
                edge.stop()


def _origin_log(origins) -> dict[str, dict[str, Any]]:
    """Every request the origins received, by X-Diff-Id (the origins keep their last 200)."""
    seen: dict[str, dict[str, Any]] = {}
    for origin in origins.values():
        for entry in origin.stats()["log"]:
            ident = next((v for k, v in entry["headers"].items() if k.lower() == "x-diff-id"), None)
            if ident is not None:
                seen[ident] = entry
    return seen


def test_live_edges_and_explain_agree(world):
    policy, origins, ports, edges = world
    requests = corpus()
    assert len(requests) >= 200
    failures: list[str] = []
    kinds: dict[str, int] = {}
    for batch_start in range(0, len(requests), 50):
        batch = requests[batch_start : batch_start + 50]
        got: dict[str, dict[int, tuple]] = {name: {} for name in edges}
        for name, edge in edges.items():
            for origin in origins.values():
                origin.reset()
            for req in batch:
                got[name][req["n"]] = _send(edge.port, req)
            logs = _origin_log(origins)
            for req in batch:
                entry = logs.pop(str(req["n"]), None)
                got[name][req["n"]] = (*got[name][req["n"]], entry)
        for req in batch:
            doc = _explained(policy, edges["mitmdump"].port, req, ports)
            client = doc["client_response"]
            edge_made = client["from"] == "edge"
            seen = [f"{client['from']} {client['status']}", f"cache {doc['context']['cache']}"]
            seen += [f"tried {t['origin']}" for t in doc.get("tries", [])]
            if doc["decision"].get("stream"):
                seen.append("stream")
            if doc["decision"]["outcome"] == "answer":
                seen.append(f"answer {doc['decision']['kind']}")
            for kind in seen:
                kinds[kind] = kinds.get(kind, 0) + 1
            sim_origin = None
            if doc.get("origin_request") and doc["tries"] and doc["tries"][-1]["origin"] != "connect_error":
                o = doc["origin_request"]
                path, _, query = o["target"].partition("?")
                sim_origin = {
                    "method": o["method"],
                    "path": path,
                    "query": query,
                    "headers": _origin_fields(_joined(o["headers"])),
                }
            views = {
                "explain": _view(
                    client["status"],
                    client["headers"],
                    (client["body"] or "").encode("utf-8", "surrogateescape"),
                    edge_made,
                    sim_origin,
                )
            }
            for name in edges:
                status, headers, body, entry = got[name][req["n"]]
                live_origin = None
                if entry is not None:
                    live_origin = {
                        "method": entry["method"],
                        "path": entry["path"],
                        "query": entry["query"],
                        "headers": _origin_fields(entry["headers"]),
                    }
                views[name] = _view(status, headers, body, edge_made, live_origin)
            for name in edges:
                if views[name] != views["explain"]:
                    shown = json.dumps({k: req[k] for k in ("method", "path", "headers")}, default=str)
                    failures.append(
                        f"request {req['n']} {shown}\n"
                        + _diff(views["explain"], views[name], ("explain", name))
                    )
    assert not failures, f"{len(failures)} of {len(requests)} requests differ:\n\n" + "\n\n".join(
        failures[:15]
    )
    # the corpus exercises what it is meant to: failover, timeouts, 5xx, preflights, refusals, the cache
    for kind in (
        "tried connect_error",
        "tried timeout",
        "edge 504",
        "origin 200",
        "origin 503",
        "answer preflight",
        "answer unauthorized",
        "answer path_not_allowed",
        "cache MISS",
        "cache none",
        "stream",
    ):
        assert kinds.get(kind, 0) >= 1, (kind, json.dumps(kinds, sort_keys=True))
    print(json.dumps(kinds, sort_keys=True))

"""Policy test files (`*.test.yaml`): cases run through the engine offline, with a readable diff on failure.

A test file names a policy (relative to itself), an environment and values for `${env:...}`, then lists cases.
Each case builds a fresh world (a MemoryStore, region health, API keys, rate-limit usage, cached responses),
sends one request through `decide_request`, simulates the origin's response when the request is forwarded,
and compares what the edge did with `expect`. Nothing here touches the network or mitmproxy.

Test files are checked strictly (unknown keys, wrong types) with file:line errors, like policies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import difflib
import ipaddress
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import jwt

from edgerules.auth.apikeys import hash_key, parse_rate_limit
from edgerules.diagnostics import Diagnostic, Mark, PolicyError
from edgerules.engine.core import decide_request, response_headers
from edgerules.engine.headers import forwarded_request_fields, relayed_response_fields
from edgerules.engine.health import HealthRegistry
from edgerules.engine.ratelimit import RateLimiter
from edgerules.engine.state import EngineState
from edgerules.engine.steps import (
    CONNECT_ERROR,
    PROTOCOL_ERROR,
    RESPONSE,
    TIMEOUT,
    Done,
    OriginEvent,
    Try,
    drive,
)
from edgerules.engine.values import (
    Answer,
    Decision,
    EdgeRequest,
    EdgeResponse,
    Forward,
    HeaderView,
    TraceEntry,
)
from edgerules.kinds import EdgeRulesError
from edgerules.policy.load import load_policy_file
from edgerules.policy.loader import LoadedDocument, join_pointer, load_policy, load_yaml_file
from edgerules.policy.model import Policy
from edgerules.stores.memory import MemoryStore
from edgerules.units import parse_duration

DEFAULT_HOST = "edge.test"
ORIGIN_FAILURES = (CONNECT_ERROR, TIMEOUT, PROTOCOL_ERROR)

# ------------------------------------------------------------------------------------------- file shape

_STR, _INT, _BOOL, _MAP, _LIST = "a string", "an integer", "a boolean", "a mapping", "a list"
_INT_OR_NULL = "an integer or null"
_FILE_KEYS = {"policy": _STR, "env": _STR, "environ": _MAP, "time": _STR, "host": _STR, "cases": _LIST}
_CASE_KEYS = {
    "name": _STR,
    "request": _MAP,
    "world": _MAP,
    "response": _MAP,
    "origin": _MAP,
    "expect": _MAP,
}
_REQUEST_KEYS = {
    "method": _STR,
    "url": _STR,
    "headers": _MAP,
    "client_ip": _STR,
    "country": _STR,
    "auth": _MAP,
    "body_size": _INT,
    "time": _STR,
    "websocket": _BOOL,
}
_AUTH_KEYS = {
    "jwt": _MAP,
    "api_key": _STR,
    "bearer": _STR,
    "secret": _STR,
    "algorithm": _STR,
    "expires_in": _STR,
}
_WORLD_KEYS = {"down": _LIST, "api_keys": _LIST, "rate_limit_usage": _MAP, "cached": _LIST}
_API_KEY_KEYS = {
    "name": _STR,
    "user": _STR,
    "role": _STR,
    "permissions": _LIST,
    "rate_limit": _STR,
    "active": _BOOL,
    "expires_in": _STR,
}
_CACHED_KEYS = {"url": _STR, "status": _INT, "headers": _MAP, "body": None, "auth": _MAP, "age": _STR}
_RESPONSE_KEYS = {"status": _INT, "headers": _MAP, "body_size": _INT}
_EXPECT_KEYS = {
    "status": _INT,
    "outcome": _STR,
    "answer": _STR,
    "error": None,
    "body": None,
    "region": _STR,
    "priority": _STR,
    "degraded": _BOOL,
    "country": _STR,
    "class": _STR,
    "request_priority": _STR,
    "request_headers": _MAP,
    "request_headers_absent": _LIST,
    "response_headers": _MAP,
    "response_headers_absent": _LIST,
    "cache": _STR,
    "auth": _STR,
    "identity": _MAP,
    "rate_limit_remaining": _INT_OR_NULL,
    "tries": _LIST,
}
_TYPES: dict[str, Callable[[object], bool]] = {
    _STR: lambda v: isinstance(v, str),
    _INT: lambda v: isinstance(v, int) and not isinstance(v, bool),
    _BOOL: lambda v: isinstance(v, bool),
    _INT_OR_NULL: lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
    _MAP: lambda v: isinstance(v, dict),
    _LIST: lambda v: isinstance(v, list),
}


class _Checker:
    """Strict shape checks on a loaded test file; every problem becomes a file:line diagnostic."""

    def __init__(self, doc: LoadedDocument) -> None:
        self.doc = doc
        self.diags: list[Diagnostic] = []

    def error(self, pointer: str, message: str, hint: str = "", *, key: bool = False) -> None:
        mark = self.doc.key_mark_for(pointer) if key else self.doc.mark_for(pointer)
        self.diags.append(Diagnostic("error", message, mark, pointer, hint))

    def mapping(self, value: Any, pointer: str, spec: Mapping[str, str | None], required: Iterable[str] = ()):
        if not isinstance(value, dict):
            self.error(pointer, f"{pointer or 'the file'} must be a mapping")
            return {}
        for key, item in value.items():
            child = join_pointer(pointer, key)
            if key not in spec:
                close = difflib.get_close_matches(str(key), list(spec), n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"expected one of {', '.join(spec)}"
                self.error(child, f"unknown key {key!r}", hint, key=True)
                continue
            kind = spec[key]
            if kind is not None and not _TYPES[kind](item):
                self.error(child, f"{key} must be {kind}")
        for key in required:
            if key not in value:
                self.error(pointer, f"missing required key {key!r}")
        return value

    def strings(self, value: Any, pointer: str, *, allow_null: bool = False) -> None:
        """A mapping of name -> scalar (header maps, environ)."""
        if not isinstance(value, dict):
            return
        for key, item in value.items():
            if allow_null and item is None:
                continue
            if not isinstance(item, str | int | float) or isinstance(item, bool):
                self.error(join_pointer(pointer, key), f"{key} must be a string")


def _check(doc: LoadedDocument) -> None:
    c = _Checker(doc)
    top = c.mapping(doc.data, "", _FILE_KEYS, required=("policy", "cases"))
    c.strings(top.get("environ"), "/environ")
    cases = top.get("cases")
    for i, case in enumerate(cases if isinstance(cases, list) else []):
        p = f"/cases/{i}"
        case = c.mapping(case, p, _CASE_KEYS, required=("name", "expect"))
        req = c.mapping(case.get("request", {}), f"{p}/request", _REQUEST_KEYS, required=("url",))
        c.strings(req.get("headers"), f"{p}/request/headers")
        if isinstance(req.get("auth"), dict):
            _check_auth(c, req["auth"], f"{p}/request/auth")
        world = c.mapping(case.get("world", {}), f"{p}/world", _WORLD_KEYS)
        for j, key in enumerate(world.get("api_keys") or []):
            c.mapping(key, f"{p}/world/api_keys/{j}", _API_KEY_KEYS, required=("name",))
        for j, entry in enumerate(world.get("cached") or []):
            entry = c.mapping(entry, f"{p}/world/cached/{j}", _CACHED_KEYS, required=("url",))
            c.strings(entry.get("headers"), f"{p}/world/cached/{j}/headers")
            if isinstance(entry.get("auth"), dict):
                _check_auth(c, entry["auth"], f"{p}/world/cached/{j}/auth")
        for name, used in (world.get("rate_limit_usage") or {}).items():
            if not _TYPES[_INT](used):
                c.error(f"{p}/world/rate_limit_usage/{name}", f"{name} must be an integer")
        resp = c.mapping(case.get("response", {}), f"{p}/response", _RESPONSE_KEYS)
        c.strings(resp.get("headers"), f"{p}/response/headers")
        for region, does in (case.get("origin") or {}).items():
            where = f"{p}/origin/{region}"
            if isinstance(does, str):
                if does not in ORIGIN_FAILURES:
                    c.error(
                        where, f"{region}: expected one of {', '.join(ORIGIN_FAILURES)} or a response mapping"
                    )
            else:
                does = c.mapping(does, where, _RESPONSE_KEYS)
                c.strings(does.get("headers"), f"{where}/headers")
        expect = c.mapping(case.get("expect", {}), f"{p}/expect", _EXPECT_KEYS)
        for name in ("request_headers", "response_headers"):
            c.strings(expect.get(name), f"{p}/expect/{name}")
        if "outcome" in expect and expect["outcome"] not in ("answer", "forward"):
            c.error(f"{p}/expect/outcome", "outcome must be 'answer' or 'forward'")
        _check_expect_values(c, expect, f"{p}/expect")
        for j, key in enumerate(world.get("api_keys") or []):
            if isinstance(key, dict):
                _check_duration(c, key.get("expires_in"), f"{p}/world/api_keys/{j}/expires_in", signed=True)
                _check_rate_limit(c, key.get("rate_limit"), f"{p}/world/api_keys/{j}/rate_limit")
    if isinstance(cases, list) and not cases:
        c.error("/cases", "a test file needs at least one case")
    if c.diags:
        raise PolicyError(c.diags)


def _check_auth(c: _Checker, auth: dict, pointer: str) -> None:
    c.mapping(auth, pointer, _AUTH_KEYS)
    kinds = [k for k in ("jwt", "api_key", "bearer") if k in auth]
    if len(kinds) != 1:
        c.error(pointer, "auth needs exactly one of jwt, api_key, bearer")
    claims = auth.get("jwt")
    if isinstance(claims, dict):
        # These are options of the token, not claims: inside jwt: they would silently become claims (an
        # "expired token" case with `jwt: {expires_in: -1h}` would send a valid token and test nothing).
        for option in ("expires_in", "secret", "algorithm"):
            if option in claims:
                c.error(
                    join_pointer(f"{pointer}/jwt", option),
                    f"{option} is an option of auth, not a claim: inside jwt: it would be sent as a claim",
                    f"move it next to jwt:, e.g. auth: {{jwt: {{sub: u1}}, {option}: ...}}",
                    key=True,
                )
    _check_duration(c, auth.get("expires_in"), f"{pointer}/expires_in", signed=True)


_CACHE_VALUES = ("HIT", "MISS", "BYPASS", "EXPIRED", "STALE", "REVALIDATED", "none")
_AUTH_VALUES = ("public", "jwt", "api_key", "none", "failed")


def _check_expect_values(c: _Checker, expect: dict, pointer: str) -> None:
    """Values `expect` compares that can only be one of a few words: a typo would never match anything."""
    cache = expect.get("cache")
    if isinstance(cache, str) and cache not in _CACHE_VALUES:
        close = [v for v in _CACHE_VALUES if v.lower() == cache.lower()] or difflib.get_close_matches(
            cache, _CACHE_VALUES, n=1
        )
        c.error(
            f"{pointer}/cache",
            f"cache {cache!r} is not a cache status the edge reports; expected one of {', '.join(_CACHE_VALUES)}",
            f"did you mean {close[0]!r}?" if close else "",
        )
    auth = expect.get("auth")
    if isinstance(auth, str) and auth not in _AUTH_VALUES and not auth.startswith("failed:"):
        close = difflib.get_close_matches(auth, _AUTH_VALUES, n=1)
        c.error(
            f"{pointer}/auth",
            f"auth {auth!r} is not an auth outcome; expected one of {', '.join(_AUTH_VALUES)} or failed:REASON",
            f"did you mean {close[0]!r}?" if close else "",
        )


def _check_duration(c: _Checker, value: Any, pointer: str, *, signed: bool) -> None:
    if not isinstance(value, str):
        return
    text = value.strip()
    if signed and text.startswith("-"):
        text = text[1:]
    try:
        parse_duration(text)
    except ValueError as e:
        from edgerules.units import suggest_duration

        guess = suggest_duration(value)
        c.error(pointer, str(e), f"did you mean {guess!r}?" if guess else "")


def _check_rate_limit(c: _Checker, value: Any, pointer: str) -> None:
    if isinstance(value, str):
        try:
            parse_rate_limit(value)
        except ValueError as e:
            c.error(pointer, str(e), "write LIMIT/WINDOW, e.g. 100/1h")


def check_against_policy(tf: TestFile, policy: Policy) -> list[Diagnostic]:
    """Names in the test file that the policy does not define (regions, classes, rate limits, error kinds):
    compared as written they could never match, so the case would fail (or pass) for the wrong reason."""
    from edgerules.policy.model import ERROR_KINDS

    doc = tf.doc
    if doc is None:
        return []
    out: list[Diagnostic] = []

    def error(pointer: str, message: str, choices: Iterable[str], *, key: bool = False) -> None:
        names = list(choices)
        word = pointer.rsplit("/", 1)[-1] if key else ""
        value = _get_pointer(doc.data, pointer) if not key else word
        close = difflib.get_close_matches(str(value), names, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"defined: {', '.join(names) or 'none'}"
        mark = doc.key_mark_for(pointer) if key else doc.mark_for(pointer)
        out.append(Diagnostic("error", message, mark, pointer, hint))

    regions = list(policy.regions)
    classes = [c.name for c in policy.classify.classes] + [policy.classify.default_class]
    priorities = [p.priority for p in policy.classify.priorities] + [policy.classify.default_priority]
    limits = [rule.name for _, rule, _ in policy.rate_limits]
    kinds = sorted({*ERROR_KINDS, *policy.errors})
    answers = [*kinds, "preflight", "cache_hit", "not_modified"]
    routing = [*policy.routing.priorities, "fallback"]
    for i, case in enumerate(tf.cases):
        p = f"/cases/{i}"
        expect = case.data.get("expect") or {}
        world = case.data.get("world") or {}
        checks: list[tuple[str, Sequence[str], str]] = [
            ("region", regions, "region {!r} is not defined in the policy's regions"),
            ("class", classes, "class {!r} is not a request class of the policy"),
            ("request_priority", priorities, "request priority {!r} is not one the policy assigns"),
            ("priority", routing, "routing priority {!r} is not one the edge reports"),
            ("error", kinds, "error {!r} is not an error kind"),
            ("answer", answers, "answer {!r} is not an answer kind"),
        ]
        for name, choices, message in checks:
            value = expect.get(name)
            if isinstance(value, str) and value not in choices:
                error(f"{p}/expect/{name}", message.format(value), choices)
        for j, region in enumerate(world.get("down") or []):
            if isinstance(region, str) and region not in regions:
                error(
                    f"{p}/world/down/{j}",
                    f"region {region!r} is not defined in the policy's regions",
                    regions,
                )
        for rule in world.get("rate_limit_usage") or {}:
            if rule not in limits:
                error(
                    join_pointer(f"{p}/world/rate_limit_usage", rule),
                    f"rate limit {rule!r} is not a rate limit of the policy",
                    limits,
                    key=True,
                )
    return out


def _get_pointer(data: Any, pointer: str) -> Any:
    for part in pointer.strip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(data, list):
            data = data[int(part)]
        elif isinstance(data, dict):
            data = data.get(part)
    return data


# ------------------------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    file: str
    line: int
    data: dict[str, Any]  # the case as written (checked)


@dataclass(slots=True)
class TestFile:
    path: str
    policy_path: str
    env: str | None
    environ: dict[str, str]
    time: float | None
    host: str
    cases: list[Case]
    doc: LoadedDocument | None = None  # the file as loaded (marks for checks against the policy)


def load_test_file(path: str | os.PathLike[str]) -> TestFile:
    """Parse and check one test file; PolicyError (file:line) when it is malformed."""
    file = os.fspath(path)
    doc = load_yaml_file(file)
    _check(doc)
    data = doc.data
    base = Path(file).parent
    cases = []
    for i, case in enumerate(data["cases"]):
        mark = doc.mark_for(f"/cases/{i}")
        cases.append(Case(str(case["name"]), file, mark.line if mark else 0, case))
    when = None
    if "time" in data:
        when = _parse_time(data["time"], doc.mark_for("/time"))
    return TestFile(
        path=file,
        policy_path=str(base / data["policy"]),
        env=data.get("env"),
        environ={k: str(v) for k, v in (data.get("environ") or {}).items()},
        time=when,
        host=data.get("host", DEFAULT_HOST),
        cases=cases,
        doc=doc,
    )


def _parse_time(text: str, mark: Mark | None) -> float:
    try:
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise PolicyError.at(mark, f"time {text!r} is not an ISO 8601 timestamp") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def find_test_files(paths: Iterable[str]) -> list[str]:
    """Files as given; directories searched (recursively) for `*.test.yaml`."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            out.extend(sorted(str(f) for f in Path(p).rglob("*.test.yaml")))
        else:
            out.append(p)
    return out


# ------------------------------------------------------------------------------------------- building requests


def trusted_client_ip(policy: Policy) -> str:
    """A client address the policy believes geo headers from: loopback when trusted, else a trusted proxy."""
    for candidate in ("127.0.0.1", "::1"):
        address = ipaddress.ip_address(candidate)
        if any(address.version == n.version and address in n for n in policy.geo.trusted_proxies):
            return candidate
    if policy.geo.trusted_proxies:
        net = policy.geo.trusted_proxies[0]
        return str(net.network_address + (1 if net.num_addresses > 1 else 0))
    return "127.0.0.1"


def build_request(
    policy: Policy,
    method: str,
    url: str,
    headers: Iterable[tuple[str, str]] = (),
    *,
    country: str | None = None,
    client_ip: str | None = None,
    body_size: int | None = None,
    host: str = DEFAULT_HOST,
    now: float | None = None,
    websocket: bool = False,
) -> EdgeRequest:
    """An EdgeRequest from a URL (absolute, or a path with an optional query) as the commands see it."""
    parts = urlsplit(url)
    scheme = parts.scheme or "https"
    host = parts.hostname or host
    port = parts.port or (443 if scheme == "https" else 80)
    pairs = list(headers)
    if country is not None and policy.geo.country_header:
        pairs = [(n, v) for n, v in pairs if n.lower() != policy.geo.country_header.lower()]
        pairs.append((policy.geo.country_header, country))
        client_ip = client_ip or trusted_client_ip(policy)
    if not any(n.lower() == "host" for n, _ in pairs):
        pairs.insert(0, ("Host", host))
    if body_size is None and method.upper() in ("POST", "PUT", "PATCH"):
        body_size = 0
    return EdgeRequest(
        method=method.upper(),
        path=parts.path or "/",
        query=parts.query,
        scheme=scheme,
        host=host,
        port=port,
        headers=HeaderView(pairs),
        client_ip=client_ip or "127.0.0.1",
        body_size=body_size,
        timestamp=time.time() if now is None else now,
        websocket=websocket,
    )


# ------------------------------------------------------------------------------------------- observing


def forwarded_headers(
    request: EdgeRequest, decision: Decision, target_index: int = 0
) -> list[tuple[str, str]]:
    """The header fields a target region receives, as the live edge builds them (`engine/headers.py`): the
    buffered client's for ordinary requests, mitmproxy's (framing kept) for streams and WebSockets."""
    outcome = decision.outcome
    assert isinstance(outcome, Forward)
    targets = outcome.targets
    edits = outcome.target_edits(targets[target_index]) if targets else outcome.edits
    return forwarded_request_fields(
        list(request.headers.pairs),
        edits,
        framing_kept=outcome.stream,
        websocket=outcome.stream and request.websocket,
    )


def client_response_headers(
    decision: Decision, policy: Policy, base: EdgeResponse, now: float
) -> list[tuple[str, str]]:
    """The header fields the client receives for `base` (an origin's response or the edge's own answer):
    its end-to-end fields, then the response phase's edits, as the addon applies them (framing aside)."""
    edits = response_headers(decision, policy, base, now=now)
    upgrade = base.status == 101 and decision.request is not None and decision.request.websocket
    pairs = list(base.headers.pairs)
    return relayed_response_fields(pairs, edits, framing_kept=False, upgrade=upgrade)


def final_response(
    decision: Decision, policy: Policy, origin: EdgeResponse, now: float
) -> tuple[int, list[tuple[str, str]], bytes | None]:
    """(status, headers, body) the client gets: the edge's answer or the simulated origin response."""
    outcome = decision.outcome
    if isinstance(outcome, Answer):
        base = EdgeResponse(outcome.status, HeaderView(outcome.headers), len(outcome.body))
        body: bytes | None = outcome.body
    else:
        base, body = origin, None
    return base.status, client_response_headers(decision, policy, base, now), body


class OriginBehaviour(NamedTuple):
    """What a simulated region does with a request: a failure kind, or a response's status and headers."""

    kind: str = RESPONSE  # RESPONSE | CONNECT_ERROR | TIMEOUT | PROTOCOL_ERROR
    status: int = 200
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
    body_size: int | None = None


@dataclass(slots=True)
class Simulation:
    """A request carried to its end through the engine's steps against simulated origins."""

    decision: Decision  # the finished decision
    tries: list[tuple[Try, OriginEvent]]
    origin: EdgeResponse | None  # the response relayed to the client, None when the edge answered
    forward: Forward | None = None  # what the request phase decided, when it forwarded


async def simulate(
    policy: Policy,
    state: EngineState,
    request: EdgeRequest,
    decision: Decision,
    origins: Mapping[str, OriginBehaviour],
    default: OriginBehaviour,
    now: float,
) -> Simulation:
    """`steps.drive` (the live edge's loop) with each try answered by `origins[region]` (else `default`)."""
    forward = decision.outcome
    if not isinstance(forward, Forward):
        return Simulation(decision, [], None)
    behaviours: dict[int, OriginBehaviour] = {}

    async def send(step: Try) -> OriginEvent:
        does = origins.get(step.target.region, default)
        behaviours[len(behaviours)] = does
        if does.kind != RESPONSE:
            return OriginEvent(does.kind, detail=f"simulated {does.kind}", sent_at=now, received_at=now)
        return OriginEvent(RESPONSE, does.status, does.headers, "", now, now)

    if forward.stream:
        # mitmproxy carries streams and WebSockets to the first target itself: no failover, no cache
        first = forward.targets[0]
        step = Try(first, 0, request.method, forward.target_edits(first))
        event = await send(step)
        if event.kind != RESPONSE:
            raise CaseError(
                "a stream goes to its first region only (mitmproxy forwards it): simulate a response"
            )
        done, tries = Done(decision, relay=True), [(step, event)]
    else:
        done, tries = await drive(policy, decision, request.method, send, lambda: now)
    ctx = done.decision.context
    if done.freshen is not None and ctx.cache_rule is not None and ctx.cache_lookup is not None:
        await state.cache.write_revalidated(ctx.cache_rule, ctx.cache_lookup, done.freshen)
    origin = None
    if done.relay:
        last = tries[-1][1]
        origin = EdgeResponse(last.status, HeaderView(last.headers), behaviours[len(tries) - 1].body_size)
    return Simulation(done.decision, tries, origin, forward)


def origin_request(request: EdgeRequest, forward: Forward, step: Try) -> dict[str, Any]:
    """What the origin of one try receives: method, target and header fields, as the live edge sends them."""
    headers = forwarded_request_fields(
        list(request.headers.pairs),
        step.edits,
        framing_kept=forward.stream,
        websocket=forward.stream and request.websocket,
    )
    target = step.target
    return {
        "region": target.region,
        "method": step.method,
        "url": f"{target.scheme}://{target.host}:{target.port}{target.path}",
        "target": target.path,
        "headers": [list(p) for p in headers],
    }


@dataclass(slots=True)
class Observation:
    """What the edge did with one request, as the fields `expect` may name."""

    fields: dict[str, Any]
    request_headers: list[tuple[str, str]] | None  # what the last origin tried received; None: no origin
    response_headers: list[tuple[str, str]]
    trace: list[TraceEntry]
    origin_request: dict[str, Any] | None = None  # method, target, headers of the last try
    status: int = 0
    body: bytes | None = None  # the edge's own answer's body (None: relayed from the origin)


def observe(request: EdgeRequest, sim: Simulation, policy: Policy, now: float) -> Observation:
    decision = sim.decision
    ctx = decision.context
    answered = isinstance(decision.outcome, Answer)
    if answered:
        status, resp_headers, body = final_response(decision, policy, EdgeResponse(0, HeaderView()), now)
    else:
        assert sim.origin is not None
        status, resp_headers, body = final_response(decision, policy, sim.origin, now)
    parsed_body: Any = None
    if body is not None:
        try:
            parsed_body = json.loads(body) if body else ""
        except ValueError:
            parsed_body = body.decode("utf-8", "replace")
    identity = ctx.identity
    fields: dict[str, Any] = {
        "status": status,
        "outcome": "answer" if answered else "forward",
        "answer": decision.outcome.kind if isinstance(decision.outcome, Answer) else None,
        "error": ctx.error,
        "body": parsed_body,
        "region": ctx.region,
        "priority": ctx.routing_priority,
        "degraded": ctx.degraded,
        "country": ctx.country,
        "class": ctx.request_class,
        "request_priority": ctx.priority,
        "cache": ctx.cache_status or "none",
        "auth": ctx.auth_outcome,
        "identity": (
            {"user": identity.user, "role": identity.role, "permissions": list(identity.permissions)}
            if identity is not None
            else None
        ),
        "rate_limit_remaining": min((r.remaining for r in ctx.rate_limits), default=None),
        "tries": [
            f"{step.target.region}: {event.status if event.kind == RESPONSE else event.kind}"
            for step, event in sim.tries
        ],
    }
    req_headers = None
    origin_req = None
    if sim.tries:
        assert sim.forward is not None
        origin_req = origin_request(request, sim.forward, sim.tries[-1][0])
        req_headers = [tuple(p) for p in origin_req["headers"]]
    return Observation(fields, req_headers, resp_headers, list(decision.trace), origin_req, status, body)


# ------------------------------------------------------------------------------------------- comparing


@dataclass(frozen=True, slots=True)
class Mismatch:
    field: str
    expected: str
    actual: str


def compare(expect: Mapping[str, Any], obs: Observation) -> list[Mismatch]:
    out: list[Mismatch] = []
    for key, want in expect.items():
        if key in ("request_headers", "request_headers_absent"):
            if obs.request_headers is None:
                out.append(Mismatch(key, _show(want), f"(not forwarded: answered {obs.fields['status']})"))
                continue
            out.extend(_compare_headers(key, want, obs.request_headers))
        elif key in ("response_headers", "response_headers_absent"):
            out.extend(_compare_headers(key, want, obs.response_headers))
        elif key == "auth":
            got = obs.fields["auth"]
            ok = got == want or (want == "failed" and got.startswith("failed:"))
            if not ok:
                out.append(Mismatch(key, _show(want), _show(got)))
        elif key in ("body", "identity"):
            got = obs.fields[key]
            if not _subset(want, got):
                out.append(Mismatch(key, _show(want), _show(got)))
        else:
            got = obs.fields[key]
            if got != want:
                out.append(Mismatch(key, _show(want), _show(got)))
    return out


def _subset(want: Any, got: Any) -> bool:
    """Mappings match when every expected key matches (extra keys in the actual value are fine)."""
    if isinstance(want, dict):
        return isinstance(got, dict) and all(k in got and _subset(v, got[k]) for k, v in want.items())
    return want == got


def _compare_headers(key: str, want: Any, pairs: list[tuple[str, str]]) -> list[Mismatch]:
    view = HeaderView(pairs)
    out = []
    if key.endswith("_absent"):
        for name in want:
            if name in view:
                out.append(Mismatch(f"{key}.{name}", "(absent)", ", ".join(view.get_all(name))))
        return out
    for name, value in want.items():
        values = view.get_all(name)
        if value is None:
            if values:
                out.append(Mismatch(f"{key}.{name}", "(absent)", ", ".join(values)))
        elif str(value) not in values:
            out.append(Mismatch(f"{key}.{name}", str(value), ", ".join(values) if values else "(absent)"))
    return out


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


# ------------------------------------------------------------------------------------------- running


@dataclass(slots=True)
class CaseResult:
    case: Case
    mismatches: list[Mismatch] = field(default_factory=list)
    error: str | None = None  # the case could not run (bad world, unknown key name, ...)
    observation: Observation | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.error is None and not self.mismatches


@dataclass(slots=True)
class FileResult:
    test_file: TestFile
    policy: Policy
    results: list[CaseResult]
    coverage: Coverage


class CaseError(EdgeRulesError):
    """A case's setup is inconsistent with the policy or itself (reported as a failure of that case)."""


def run_file(path: str | os.PathLike[str]) -> FileResult:
    """Load a test file and its policy, run every case. PolicyError for a broken test file or policy."""
    tf = load_test_file(path)
    policy = load_policy_file(tf.policy_path, tf.env, environ=tf.environ, for_serving=False).policy
    if problems := check_against_policy(tf, policy):
        raise PolicyError(problems)
    coverage = Coverage.for_policy(policy)
    results = asyncio.run(_run_cases(tf, policy, coverage))
    return FileResult(tf, policy, results, coverage)


async def _run_cases(tf: TestFile, policy: Policy, coverage: Coverage) -> list[CaseResult]:
    results = []
    for case in tf.cases:
        started = time.perf_counter()
        result = CaseResult(case)
        try:
            obs, decision = await _run_case(tf, policy, case)
            result.observation = obs
            result.mismatches = compare(case.data["expect"], obs)
            coverage.record(policy, decision, obs)
        except CaseError as exc:
            result.error = str(exc)
        result.seconds = time.perf_counter() - started
        results.append(result)
    return results


async def _run_case(tf: TestFile, policy: Policy, case: Case) -> tuple[Observation, Decision]:
    req_data = case.data.get("request") or {}
    world = case.data.get("world") or {}
    now = tf.time if tf.time is not None else time.time()
    if "time" in req_data:
        try:
            now = _parse_time(req_data["time"], Mark(case.file, case.line, 1))
        except PolicyError as exc:
            raise CaseError(str(exc)) from None
    store = MemoryStore()
    health = HealthRegistry()
    state = EngineState(store, health, now=lambda: now)
    for region in world.get("down") or []:
        if region not in policy.regions:
            raise CaseError(f"world.down: unknown region {region!r} (regions: {', '.join(policy.regions)})")
        health.force(region, False)
    keys = await _add_api_keys(state, world.get("api_keys") or [], now)

    request = _case_request(tf, policy, req_data, keys, now)
    if world.get("cached"):
        await _seed_cache(tf, policy, state, world["cached"], keys, now)
    for rule_name, used in (world.get("rate_limit_usage") or {}).items():
        await _use_rate_limit(policy, state, request, keys, rule_name, used, now)

    decision = await decide_request(request, policy, state)
    default = behaviour(case.data.get("response") or {})
    origins = {}
    for region, does in (case.data.get("origin") or {}).items():
        if region not in policy.regions:
            raise CaseError(f"origin: unknown region {region!r} (regions: {', '.join(policy.regions)})")
        origins[region] = behaviour(does)
    sim = await simulate(policy, state, request, decision, origins, default, now)
    return observe(request, sim, policy, now), sim.decision


def behaviour(spec: str | Mapping[str, Any]) -> OriginBehaviour:
    """A region's simulated behaviour from a test case: a failure kind, or a response mapping
    (`status`, default 200; `headers`, Content-Type application/json unless given; `body_size`)."""
    if isinstance(spec, str):
        return OriginBehaviour(spec)
    headers = {"Content-Type": "application/json", **(spec.get("headers") or {})}
    return OriginBehaviour(
        RESPONSE,
        spec.get("status", 200),
        tuple((str(k), str(v)) for k, v in headers.items()),
        spec.get("body_size"),
    )


def signed_duration(text: str) -> float:
    """A duration that may be negative (`-1h`: already expired an hour ago)."""
    text = text.strip()
    if text.startswith("-"):
        return -parse_duration(text[1:])
    return parse_duration(text)


@dataclass(frozen=True, slots=True)
class _Key:
    key: str
    rate_limit: tuple[int, float] | None


async def _add_api_keys(state: EngineState, specs: list[dict], now: float) -> dict[str, _Key]:
    keys: dict[str, _Key] = {}
    for spec in specs:
        name = spec["name"]
        try:
            limit = parse_rate_limit(spec["rate_limit"]) if "rate_limit" in spec else None
            expires = now + signed_duration(spec["expires_in"]) if "expires_in" in spec else None
        except ValueError as exc:
            raise CaseError(f"world.api_keys {name}: {exc}") from None
        key, record = await state.keys.add(
            spec.get("user", name),
            spec.get("role", "user"),
            [str(p) for p in spec.get("permissions") or []],
            rate_limit=limit,
            expires_at=expires,
            now=now,
        )
        if spec.get("active", True) is False:
            await state.keys.revoke(record.key_id)
        keys[name] = _Key(key, limit)
    return keys


def _authorization(policy: Policy, auth: Mapping[str, Any], keys: Mapping[str, _Key], now: float) -> str:
    if "bearer" in auth:
        return f"Bearer {auth['bearer']}"
    if "api_key" in auth:
        name = auth["api_key"]
        if name not in keys:
            raise CaseError(f"auth.api_key: no key named {name!r} in world.api_keys")
        scheme = policy.auth.api_key_scheme if policy.auth else "API-Key"
        return f"{scheme} {keys[name].key}"
    claims = {"role": "user", "permissions": [], **auth["jwt"]}
    try:
        lifetime = signed_duration(auth.get("expires_in", "10m"))
    except ValueError as exc:
        raise CaseError(f"auth.expires_in: {exc}") from None
    claims.setdefault("exp", int(now + lifetime))
    claims.setdefault("iat", int(now))
    algorithm = auth.get("algorithm", "HS256")
    secret: str | bytes | None
    if "secret" in auth:
        secret = auth["secret"]
    else:
        config = policy.auth.jwt if policy.auth else None
        secret = config.secret if config is not None else None
    if algorithm == "none":
        secret = ""  # PyJWT's "none" algorithm takes no key ("" or None)
    elif secret is None:
        from edgerules.policy.load import jwt_secret_variables

        names = jwt_secret_variables(policy.files[0], policy.environment) if policy.files else []
        raise CaseError(
            "auth.jwt: the policy has no JWT secret: "
            + (
                f"set {names[0]} (auth.jwt.secret is ${{env:{names[0]}}}) in the test file's environ"
                if names
                else "set auth.jwt.secret's variable in the test file's environ"
            )
        )
    token = jwt.encode(claims, secret, algorithm=algorithm)
    return f"Bearer {token}"


def _case_request(
    tf: TestFile, policy: Policy, data: Mapping[str, Any], keys: Mapping[str, _Key], now: float
) -> EdgeRequest:
    headers = [(str(k), str(v)) for k, v in (data.get("headers") or {}).items()]
    if "auth" in data:
        headers.append(("Authorization", _authorization(policy, data["auth"], keys, now)))
    return build_request(
        policy,
        data.get("method", "GET"),
        data["url"],
        headers,
        country=data.get("country"),
        client_ip=data.get("client_ip"),
        body_size=data.get("body_size"),
        host=tf.host,
        now=now,
        websocket=data.get("websocket", False),
    )


async def _seed_cache(
    tf: TestFile,
    policy: Policy,
    state: EngineState,
    entries: list[dict],
    keys: Mapping[str, _Key],
    now: float,
) -> None:
    """Store each entry under the key the engine computes for a GET of its URL (with its credentials)."""
    # A side state on the same store: its own limiter, so seeding never spends the case's rate limits.
    seeder = EngineState(state.store, state.health, now=state.now)
    seeder.limiter = RateLimiter(MemoryStore(), now=state.now)
    for entry in entries:
        data: dict[str, Any] = {"url": entry["url"]}
        if "auth" in entry:
            data["auth"] = entry["auth"]
        request = _case_request(tf, policy, data, keys, now)
        decision = await decide_request(request, policy, seeder)
        ctx = decision.context
        if ctx.cache_rule is None or ctx.cache_key is None:
            raise CaseError(
                f"world.cached {entry['url']}: no cache rule applies to this URL ({_why(decision)})"
            )
        body = entry.get("body", {})
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(entry.get("headers") or {})}
        try:
            stored_at = now - signed_duration(entry["age"]) if "age" in entry else now
        except ValueError as exc:
            raise CaseError(f"world.cached {entry['url']}: age: {exc}") from None
        stored = await state.cache.store(
            ctx.cache_rule,
            ctx.cache_key,
            ctx.path or request.path,
            "GET",
            request.headers.pairs,
            entry.get("status", 200),
            [(k, str(v)) for k, v in headers.items()],
            raw,
            stored_at,
            stored_at,
        )
        if not stored:
            raise CaseError(f"world.cached {entry['url']}: the cache rule refused to store this response")


async def seed_entry(
    policy: Policy,
    state: EngineState,
    request: EdgeRequest,
    now: float,
    age: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"{}",
) -> None:
    """A 200 answer to `request` stored `age` ago, under the key the engine computes for it (`explain --cached`)."""
    seeder = EngineState(state.store, state.health, now=state.now)
    seeder.limiter = RateLimiter(MemoryStore(), now=state.now)
    probe = dataclasses.replace(request, method="GET")
    decision = await decide_request(probe, policy, seeder)
    ctx = decision.context
    if ctx.cache_rule is None or ctx.cache_key is None:
        raise CaseError(f"--cached: no cache rule applies to this request ({_why(decision)})")
    stored_at = now - signed_duration(age)
    pairs = list(headers) or [("Content-Type", "application/json")]
    if not await state.cache.store(
        ctx.cache_rule,
        ctx.cache_key,
        ctx.path or request.path,
        "GET",
        request.headers.pairs,
        200,
        pairs,
        body,
        stored_at,
        stored_at,
    ):
        raise CaseError("--cached: the cache rule refused to store this answer")


def _why(decision: Decision) -> str:
    last = decision.trace[-1] if decision.trace else None
    return f"{last.phase} {last.rule} {last.outcome}" if last else "no rule matched"


async def _use_rate_limit(
    policy: Policy,
    state: EngineState,
    request: EdgeRequest,
    keys: Mapping[str, _Key],
    rule_name: str,
    used: int,
    now: float,
) -> None:
    """Spend `used` requests of this request's subject under the named rule, in the current window."""
    found = [(rule, override) for _m, rule, override in policy.rate_limits if rule.name == rule_name]
    if not found:
        names = ", ".join(r.name for _m, r, _o in policy.rate_limits) or "none"
        raise CaseError(f"world.rate_limit_usage: no rate limit named {rule_name!r} (policy has: {names})")
    rule, override = found[0]
    window = rule.window
    subject: str | None
    if rule.key == "client_ip":
        subject = request.client_ip
    else:
        subject, own = _principal(request, keys)
        if subject is None:
            raise CaseError(f"world.rate_limit_usage {rule_name}: the request has no credentials to count")
        if rule.key == "api_key" and override and own is not None:
            window = own[1]
    counter = state.limiter.counter_key(rule.name, subject, window, now)
    await state.store.incr(counter, used, ttl=window + 1)


def _principal(request: EdgeRequest, keys: Mapping[str, _Key]) -> tuple[str | None, tuple[int, float] | None]:
    value = request.headers.get("authorization") or ""
    scheme, _, credential = value.partition(" ")
    for key in keys.values():
        if key.key == credential.strip():
            return "key:" + hash_key(key.key), key.rate_limit
    if scheme.lower() == "bearer":
        try:
            claims = jwt.decode(credential.strip(), options={"verify_signature": False})
        except jwt.PyJWTError:
            return None, None
        return f"jwt:{claims.get('sub')}", None
    return None, None


# ------------------------------------------------------------------------------------------- coverage


@dataclass(frozen=True, slots=True)
class RuleRef:
    kind: str
    name: str
    source: str


_COVERAGE_PROBE = ("X-Edgerules-Coverage-Probe", "1")


@dataclass(slots=True)
class Coverage:
    """Which rules of a policy the cases exercised, by the `source` (file:line) each rule carries."""

    rules: list[RuleRef]
    seen_sources: set[str] = field(default_factory=set)
    seen_refs: set[RuleRef] = field(default_factory=set)

    @classmethod
    def for_policy(cls, policy: Policy) -> Coverage:
        refs: list[RuleRef] = []
        for rc in policy.classify.classes:
            refs.append(RuleRef("class", rc.name, rc.source))
        for pr in policy.classify.priorities:
            refs.append(RuleRef("priority", pr.priority, pr.source))
        if policy.validation.allow_paths is not None:
            for p in policy.validation.allow_paths.patterns:
                refs.append(RuleRef("allow_paths", f"{p.kind} {p.value}", p.source))
        if policy.auth is not None:
            if policy.auth.public is not None:  # each entry (the trace cites the one that matched)
                refs += _entry_refs("auth", "public", policy.auth.public, policy.auth.public_source)
            for arule in policy.auth.rules:
                refs.append(RuleRef("auth", f"rule schemes={list(arule.schemes)}", arule.source))
        for _m, rule, _o in policy.rate_limits:
            refs.append(RuleRef("rate_limit", rule.name, rule.source))
        if policy.cache is not None:
            if policy.cache.never is not None:
                refs += _entry_refs("cache", "never", policy.cache.never, policy.cache.source)
            for _m, crule in policy.cache.rules:
                refs.append(RuleRef("cache", crule.name, crule.source))
        for hr in policy.headers.request:
            refs.append(RuleRef("request header", hr.name, hr.source))
        for hr in policy.headers.response:
            refs.append(RuleRef("response header", hr.name, hr.source))
        for cr in policy.cors:
            refs.append(RuleRef("cors", cr.name, cr.source))
        marks = _country_marks(policy)
        for country in policy.routing.countries:
            refs.append(RuleRef("routing", f"country {country}", marks.get(country, policy.routing.source)))
        refs.append(RuleRef("routing", "default", marks.get("", policy.routing.source)))
        return cls([r for r in refs if r.source])

    def record(self, policy: Policy, decision: Decision, obs: Observation) -> None:
        self.seen_sources.update(e.source for e in decision.trace if e.source)
        ctx = decision.context
        if any(e.phase == "routing" for e in decision.trace):
            name = f"country {ctx.country}" if ctx.country in policy.routing.countries else "default"
            self.seen_refs.update(r for r in self.rules if r.kind == "routing" and r.name == name)
        # Response header rules leave no trace: probe each one with a marker header.
        status = obs.fields["status"]
        content_type = HeaderView(obs.response_headers).get("content-type") or ""
        response = EdgeResponse(status, HeaderView([("Content-Type", content_type)] if content_type else []))
        for rule in policy.headers.response:
            probe_rule = dataclasses.replace(rule, set=(_COVERAGE_PROBE,), add_if_absent=(), remove=())
            probe = dataclasses.replace(
                policy, headers=dataclasses.replace(policy.headers, response=(probe_rule,))
            )
            edits = response_headers(decision, probe, response, now=0.0)
            if _COVERAGE_PROBE in edits.set:
                self.seen_refs.add(RuleRef("response header", rule.name, rule.source))

    def merge(self, other: Coverage) -> None:
        self.seen_sources |= other.seen_sources
        self.seen_refs |= other.seen_refs

    def covered(self, ref: RuleRef) -> bool:
        if ref.kind in ("routing", "response header"):
            return ref in self.seen_refs
        return ref.source in self.seen_sources

    def missing(self) -> list[RuleRef]:
        return [r for r in self.rules if not self.covered(r)]


def _country_marks(policy: Policy) -> dict[str, str]:
    """file:line of each routing country (and "" for the default route), from the policy's own files."""
    if not policy.files:
        return {}
    try:
        doc = load_policy(policy.files[0])
    except PolicyError:
        return {}
    out: dict[str, str] = {}
    for country in policy.routing.countries:
        mark = doc.key_marks.get(f"/routing/countries/{country}")
        if mark is not None:
            out[country] = f"{mark.file}:{mark.line}"
    mark = doc.key_marks.get("/routing/default")
    if mark is not None:
        out[""] = f"{mark.file}:{mark.line}"
    return out


# ------------------------------------------------------------------------------------------- reporting


def failure_text(result: CaseResult) -> str:
    """A failing case: where it is, expected vs actual per field, and the engine's trace with file:line."""
    case = result.case
    lines = [f"FAIL {case.file}:{case.line}: {case.name}"]
    if result.error:
        lines.append(f"  error: {result.error}")
    if result.mismatches:
        width = max(len(m.field) for m in result.mismatches)
        for m in result.mismatches:
            lines.append(f"  {m.field:<{width}}  expected: {m.expected}")
            lines.append(f"  {'':<{width}}  actual:   {m.actual}")
    if result.observation is not None:
        lines.append("  trace:")
        lines.extend("    " + line for line in trace_lines(result.observation.trace))
    return "\n".join(lines)


def trace_lines(trace: Iterable[TraceEntry]) -> list[str]:
    out = []
    for e in trace:
        detail = f": {e.detail}" if e.detail else ""
        where = f"  ({e.source})" if e.source else ""
        out.append(f"{e.phase:<11} {e.outcome:<9} {e.rule}{detail}{where}")
    return out


_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def case_id(case: Case) -> str:
    return _SAFE_NAME.sub("_", case.name).strip("_")


def _entry_refs(kind: str, name: str, match: Any, fallback: str) -> list[RuleRef]:
    """One RuleRef per path entry of a combined matcher (`auth.public`, `cache.never`)."""
    paths = getattr(match, "paths", None)
    if paths is None or not paths.patterns:
        return [RuleRef(kind, name, fallback)]
    return [RuleRef(kind, f"{name} {p.kind} {p.value}", p.source) for p in paths.patterns]

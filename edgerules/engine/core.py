"""The request and response phases: a policy and a request in, a decision and its trace out.

Order matters and is fixed: identity headers are stripped first (whatever happens next), the path is normalised
before any rule sees it, CORS preflight is answered before authentication (browsers send it without
credentials), validation and authentication happen before anything touches the cache or an origin, and the
cache key always carries the authenticated principal.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote_plus

from edgerules import memo
from edgerules.auth.apikeys import authenticate_api_key
from edgerules.auth.identity import (
    CheckedIdentity,
    Identity,
    identity_headers,
    is_spoofable_header,
    parse_authorization,
)
from edgerules.auth.jwt import AuthFailure, JwtConfig, JwtVerifier
from edgerules.cache.http import (
    CacheEntry,
    CacheRule,
    HeaderInput,
    cache_key,
    effective_principal,
    evaluate_conditional,
    not_modified_headers,
    partial_answer,
    replay_headers,
    revalidation_headers,
    stale_if_error_ok,
)
from edgerules.cache.response import CacheStatus
from edgerules.engine import cors
from edgerules.engine.errors import error_answer
from edgerules.engine.geo import is_trusted, locate
from edgerules.engine.headers import HeaderEdits
from edgerules.engine.match import match_request, media_matches, media_type
from edgerules.engine.ratelimit import RateLimitResult
from edgerules.engine.routing import RoutePlan, candidates, plan_route
from edgerules.engine.state import EngineState
from edgerules.engine.values import (
    Answer,
    Context,
    Decision,
    EdgeRequest,
    EdgeResponse,
    Forward,
    HeaderView,
    TraceEntry,
)
from edgerules.kinds import ErrorKind, TracePhase
from edgerules.memo import remember
from edgerules.paths import PathError, check_query, normalise_path, split_path
from edgerules.policy.model import Auth, Match, Policy, RateLimitRule
from edgerules.stores.base import StoreUnavailable
from edgerules.timefmt import utc_iso_millis

_SCHEME_NAMES = {"bearer": "Bearer"}
_new_tuple = tuple.__new__


class PreparedPolicy:
    """A policy prepared for one engine state (`prepare`): what the request phases derive from the policy once
    instead of on every request, and the memo tables of its pure results. Policies are immutable; a reload
    brings a new policy and so a new prepared policy, and everything here lives exactly as long as it is used.
    """

    __slots__ = (
        "accepted",
        "answers",
        "auth_rule_notes",
        "cache_notes",
        "checked",
        "class_notes",
        "header_notes",
        "identity_names",
        "located",
        "policy",
        "priority_notes",
        "protected",
        "routes",
        "spoofable",
        "state",
        "stream_classes",
        "trusted",
        "verifier",
    )

    def __init__(self, policy: Policy, state: EngineState) -> None:
        self.policy = policy
        self.state = state
        auth = policy.auth
        names = auth.identity_headers if auth else None
        extra = (names.user, names.role, names.permissions, names.authenticated_at) if names else ()
        self.protected: tuple[str, ...] = (
            *(auth.strip_headers if auth else ()),
            *(n.lower() for n in extra),
        )
        self.spoofable: dict[str, bool] = {}  # header name -> is_spoofable_header(name, protected)
        self.identity_names = (
            {
                "user": names.user,
                "role": names.role,
                "permissions": names.permissions,
                "authenticated_at": names.authenticated_at,
            }
            if names
            else None
        )
        # (country, lat, lon, candidates' health) -> routing.RoutePlan: a pure function of the policy and the key
        self.routes: dict[tuple[str, float | None, float | None, tuple[bool, ...]], RoutePlan] = {}
        self.stream_classes = frozenset(rc.name for rc in policy.classify.classes if rc.stream)
        # state.verifier(policy.auth.jwt), found on the first token: saves hashing the JWT configuration per request
        self.verifier: JwtVerifier | None = None
        self.trusted: dict[str, bool] = {}  # client IP -> geo.is_trusted(policy.geo, ip)
        # (client IP, its geo header values) -> geo.locate(...): a pure function of the policy and the key
        self.located: dict[tuple[object, ...], tuple[str, float | None, float | None, str]] = {}
        # (kind, reason, extra headers) -> error_answer(policy, ...): answers are immutable values
        self.answers: dict[tuple[ErrorKind, str | None, tuple[tuple[str, str], ...]], Answer] = {}
        # id(identity) -> (identity, its "accepted" trace entry); the entry keeps the id from being reused
        self.accepted: dict[int, tuple[Identity, TraceEntry]] = {}
        # id(identity) -> identity_headers' checks of it (the entry holds the identity)
        self.checked: dict[int, CheckedIdentity] = {}
        # The trace entries of rules that matched, which carry nothing request-specific: built once, in the
        # rules' order.
        classify = policy.classify
        self.class_notes = tuple(
            TraceEntry("classify", f"class {rc.name}", "matched", "", rc.source) for rc in classify.classes
        )
        self.priority_notes = tuple(
            TraceEntry("classify", f"priority {pr.priority}", "matched", "", pr.source)
            for pr in classify.priorities
        )
        self.auth_rule_notes = tuple(
            TraceEntry(
                "auth",
                f"rule schemes={list(rule.schemes)}" if rule.schemes else "public",
                "matched",
                "",
                rule.source,
            )
            for rule in (auth.rules if auth else ())
        )
        self.cache_notes = tuple(
            TraceEntry("cache", rule.name, "matched", "", rule.source)
            for _, rule in (policy.cache.rules if policy.cache else ())
        )
        self.header_notes = tuple(
            TraceEntry("headers", rule.name, "applied", "", rule.source) for rule in policy.headers.request
        )


def prepare(policy: Policy, state: EngineState) -> PreparedPolicy:
    """Prepare `policy` for `state` once (at install, as OPA prepares a query); `decide` then takes it."""
    return PreparedPolicy(policy, state)


class _Run:
    """One request's pass through the phases (kept as an object so each phase stays a small method)."""

    __slots__ = (
        "add",
        "ctx",
        "edited",
        "facts",
        "plan",
        "policy",
        "query",
        "remove",
        "req",
        "segments",
        "set_headers",
        "state",
        "trace",
    )

    def __init__(self, req: EdgeRequest, prepared: PreparedPolicy) -> None:
        self.req = req
        self.policy = prepared.policy
        self.plan = prepared
        self.state = prepared.state
        self.ctx = Context()
        self.trace: list[TraceEntry] = []
        self.set_headers: list[tuple[str, str]] = []
        self.add: list[tuple[str, str]] = []
        self.remove: list[str] = []
        self.segments: list[str] = []  # paths.split_path of the normalised path, split once for every rule
        self.edited = False  # _edge_headers ran (before the cache lookup, or when routing)
        self.query = req.query  # the query forwarded and keyed: without `_method` when overrides are stripped
        # match_request's arguments after match, once the class is known (see _classify)
        self.facts: tuple[Any, ...] = ()

    def note(self, phase: TracePhase, rule: str, outcome: str, detail: str = "", source: str = "") -> None:
        # tuple.__new__ directly: the named tuple's own __new__ is a Python-level call, for every note
        self.trace.append(_new_tuple(TraceEntry, (phase, rule, outcome, detail, source)))

    def answer(self, answer: Answer) -> Decision:
        self.ctx.error = answer.kind if answer.status >= 400 else None
        return Decision(answer, self.ctx, tuple(self.trace), self.req)

    def fail(
        self,
        kind: ErrorKind,
        phase: TracePhase,
        detail: str,
        source: str = "",
        *,
        headers: Sequence[tuple[str, str]] = (),
        reason: str | None = None,
    ) -> Decision:
        self.note(phase, kind, "refused", detail, source)
        return self.answer(_error_answer(self.plan, self.policy, kind, tuple(headers), reason))


async def decide_request(req: EdgeRequest, policy: Policy, state: EngineState) -> Decision:
    """`decide` for callers that hold a policy and a state (the tools, tests): the state keeps the policies it
    prepared last (`EngineState.prepared`)."""
    return await decide(req, state.prepared(policy))


async def decide(req: EdgeRequest, prepared: PreparedPolicy) -> Decision:
    """The request phase: every check, in order, up to an `Answer` or a `Forward`."""
    run = _Run(req, prepared)
    policy = prepared.policy
    ctx = run.ctx
    headers = req.headers

    _strip_identity_headers(run)

    if len(req.path) + len(req.query) > policy.validation.max_url_length:
        return run.fail(
            "uri_too_long", "validation", f"URL longer than {policy.validation.max_url_length} bytes"
        )
    refusal = _check_header_syntax(run)
    if refusal is not None:
        return refusal
    try:
        check_query(req.query)
        ctx.path = path = normalise_path(req.path)
    except PathError as exc:
        return run.fail("invalid_request", "validation", str(exc), reason="invalid_path")
    if path != req.path:
        run.note("normalise", "path", "rewritten", f"{req.path} -> {path}")
    run.segments = segments = split_path(path)

    ctx.country, ctx.lat, ctx.lon, how = _locate(run)
    run.note("geo", "country", ctx.country, how)
    _classify(run)

    # Path allowlist first: nothing below (not even CORS) runs for a path the policy does not serve.
    validation = policy.validation
    if validation.allow_paths is not None:
        hit = validation.allow_paths.match(path, segments)
        if hit is None:
            return run.fail(
                "path_not_allowed",
                "validation",
                f"{path} is not in allow_paths",
                validation.allow_paths_source,
            )
        pattern = validation.allow_paths.patterns[hit]
        run.note(
            "validation", f"allow_paths {pattern.kind} {pattern.value}", "matched", source=pattern.source
        )

    ctx.origin = headers.get("origin")
    ctx.cors_rule = rule = cors.find_rule(policy.cors, path, segments)
    if rule is not None and cors.is_preflight(req.method, headers):
        allowed, cors_headers, why = cors.preflight(rule, headers)
        run.note("cors", rule.name, "preflight" if allowed else "refused", why, rule.source)
        if not allowed:
            return run.answer(_error_answer(run.plan, policy, "forbidden", tuple(cors_headers), "cors"))
        return run.answer(Answer(204, tuple(cors_headers), b"", "preflight"))

    refusal = _validate(run)
    if refusal is not None:
        return refusal

    refusal = await _authenticate(run)
    if refusal is not None:
        return refusal

    limits = _applicable_limits(run)
    if limits:
        refusal = await _rate_limit(run, limits)
        if refusal is not None:
            return refusal

    cached = await _cache_lookup(run)
    if cached is not None:
        return cached

    return _route(run)


def _trusted(run: _Run) -> bool:
    """`geo.is_trusted` for the client, memoised per policy (a pure function of the policy and the IP)."""
    known = run.plan.trusted
    client_ip = run.req.client_ip
    trusted = known.get(client_ip)
    if trusted is None:
        trusted = remember(known, client_ip, is_trusted(run.policy.geo, client_ip))
    return trusted


def _locate(run: _Run) -> tuple[str, float | None, float | None, str]:
    """`geo.locate` for the client, memoised per policy on the client IP and the geo headers it sent."""
    geo, req = run.policy.geo, run.req
    headers = req.headers
    key = (
        req.client_ip,
        headers.get(geo.country_header) if geo.country_header else None,
        headers.get(geo.latitude_header) if geo.latitude_header else None,
        headers.get(geo.longitude_header) if geo.longitude_header else None,
    )
    known = run.plan.located
    found = known.get(key)
    if found is None:
        found = remember(known, key, locate(geo, req.client_ip, headers, _trusted(run)))
    return found


def _error_answer(
    plan: PreparedPolicy,
    policy: Policy,
    kind: ErrorKind,
    headers: tuple[tuple[str, str], ...],
    reason: str | None,
) -> Answer:
    """`error_answer`, memoised per policy: the same few refusals are built over and over."""
    key = (kind, reason, headers)
    answer = plan.answers.get(key)
    if answer is None:
        answer = remember(plan.answers, key, error_answer(policy, kind, headers=headers, reason=reason))
    return answer


def _strip_identity_headers(run: _Run) -> None:
    plan = run.plan
    known = plan.spoofable
    for name in run.req.headers.names():
        spoofable = known.get(name)
        if spoofable is None:
            spoofable = remember(known, name, is_spoofable_header(name, plan.protected))
        if spoofable:
            run.remove.append(name)
            run.note("strip", name, "removed", "client-sent identity header")


# RFC 9110 field-name (token); a field value may hold anything but controls other than HTAB (an obs-fold, a bare
# CR or a NUL an HTTP parser let through must not reach an origin, nor make the upstream client fail).
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _check_header_syntax(run: _Run) -> Decision | None:
    limit = run.policy.validation.max_header_size
    pairs = run.req.headers.pairs
    if pairs:
        names, values = zip(*pairs, strict=True)
        joined_names, joined_values = "".join(names), " ".join(values)
        size = len(joined_names) + len(joined_values) + 3 * len(pairs) + 1  # name + ": " + value + CRLF each
    else:
        names = values = ()
        joined_names = joined_values = ""
        size = 0
    malformed = None  # the first malformed name; the size is checked first all the same
    if len(run.req.headers.get_all("host")) > 1:  # RFC 9112 3.2: a request with more than one Host is a 400
        return run.fail("invalid_request", "validation", "more than one Host header", reason="duplicate_host")
    # One pass over the whole header block for the common case (token names, printable ASCII values); the
    # regexes only when something else is there, and the field-by-field search only when one of them fails.
    clean_values = joined_values.isascii() and joined_values.isprintable()
    if (
        not all(names)
        or _FIELD_NAME.fullmatch(joined_names) is None
        or (not clean_values and _FIELD_VALUE_BAD.search("\t".join(values)) is not None)
    ):
        for name, value in pairs:
            if not _FIELD_NAME.fullmatch(name) or _FIELD_VALUE_BAD.search(value):
                malformed = name
                break
    if size > limit:
        return run.fail(
            "headers_too_large",
            "validation",
            f"headers are {size} bytes, over {limit}",
            run.policy.validation.source,
        )
    if malformed is not None:
        return run.fail(
            "invalid_request", "validation", f"malformed header {malformed[:64]!r}", reason="invalid_header"
        )
    return None


def _classify(run: _Run) -> None:
    classify = run.policy.classify
    req, ctx = run.req, run.ctx
    path, method, headers, country, segments = ctx.path, req.method, req.headers, ctx.country, run.segments
    assert path is not None and country is not None  # set by the normalise and geo phases, which ran first
    plan = run.plan
    ctx.request_class = classify.default_class
    for rc, note in zip(classify.classes, plan.class_notes, strict=True):
        if match_request(rc.match, path, method, headers, None, country, segments):
            ctx.request_class = rc.name
            run.trace.append(note)
            break
    ctx.priority = classify.default_priority
    for pr, note in zip(classify.priorities, plan.priority_notes, strict=True):
        if match_request(pr.match, path, method, headers, ctx.request_class, country, segments):
            ctx.priority = pr.priority
            run.trace.append(note)
            break
    run.facts = (path, method, headers, ctx.request_class, country, segments)


def is_stream_class(policy: Policy, name: str | None) -> bool:
    return any(rc.stream and rc.name == name for rc in policy.classify.classes)


def _validate(run: _Run) -> Decision | None:
    v = run.policy.validation
    req = run.req
    if v.methods is not None and req.method not in v.methods:
        allow = ", ".join(sorted(v.methods))
        return run.fail(
            "method_not_allowed",
            "validation",
            f"{req.method} not in {allow}",
            v.source,
            headers=[("Allow", allow)],
        )
    refusal = _method_override(run)
    if refusal is not None:
        return refusal
    content_types = req.headers.get_all("content-type")
    if len(content_types) > 1:  # a singleton field: the origin might read another one than we checked
        return run.fail("invalid_request", "validation", "more than one Content-Type", reason="content_type")
    content_type = content_types[0] if content_types else None
    if req.method in v.require_content_type and not content_type:
        return run.fail("content_type_required", "validation", f"{req.method} needs a Content-Type", v.source)
    allowed_types = v.content_types.get(req.method)
    if content_type and allowed_types is not None:
        media = media_type(content_type)
        if not media_matches(media, allowed_types):
            return run.fail(
                "unsupported_media_type",
                "validation",
                f"{content_type!r} is not one of {', '.join(allowed_types)}",
                v.source,
            )
    limit = body_limit(run.policy, run.ctx.request_class)
    if limit is not None:
        declared = _declared_length(req.headers)
        if declared == -1:
            return run.fail(
                "invalid_request", "validation", "malformed Content-Length", reason="content_length"
            )
        size = req.body_size if req.body_size is not None else declared
        if size is not None and size > limit:
            return run.fail("payload_too_large", "validation", f"{size} bytes > {limit}", v.source)
    return None


def body_limit(policy: Policy, request_class: str | None) -> int | None:
    """The body limit that applies to a request: its class's own, else `validation.max_body_size`."""
    if request_class is not None:
        for rc in policy.classify.classes:  # a handful: no index needed
            if rc.name == request_class and rc.max_body_size is not None:
                return rc.max_body_size
    return policy.validation.max_body_size


# Headers and the query parameter frameworks (Rack, Laravel, Express, ASP.NET, Symfony) read as "the real
# method": a request line the policy allows could otherwise run a method it refuses.
METHOD_OVERRIDE_HEADERS = ("x-http-method-override", "x-http-method", "x-method-override")
METHOD_OVERRIDE_PARAM = "_method"


def _method_override(run: _Run) -> Decision | None:
    """`validation.method_override`: `strip` (default) removes every override; `check` lets them through only
    when each names a method `validation.methods` allows (and they agree)."""
    req, v = run.req, run.policy.validation
    headers = req.headers
    sent = [(name, value) for name in METHOD_OVERRIDE_HEADERS for value in headers.get_all(name)]
    params = _override_params(req.query)
    if not sent and not params:
        return None
    if v.method_override == "strip":
        for name, _ in sent:
            run.remove.append(name)
        if params:
            run.query = "&".join(part for part in req.query.split("&") if not _is_override_param(part))
        run.note("strip", "method override", "removed", ", ".join([n for n, _ in sent] + params[:1]))
        return None
    wanted = {value.strip().upper() for _, value in sent}
    wanted.update(unquote_plus(p.partition("=")[2]).strip().upper() for p in params)
    if len(wanted) > 1:
        return run.fail(
            "invalid_request", "validation", f"conflicting method overrides {sorted(wanted)}", reason="method"
        )
    (method,) = wanted
    if v.methods is not None and method not in v.methods:
        allow = ", ".join(sorted(v.methods))
        return run.fail(
            "method_not_allowed",
            "validation",
            f"method override {method[:32]!r} not in {allow}",
            v.source,
            headers=[("Allow", allow)],
        )
    return None


def _override_params(query: str) -> list[str]:
    if not query or ("method" not in query and "%" not in query):
        return []
    return [part for part in query.split("&") if _is_override_param(part)]


def _is_override_param(part: str) -> bool:
    """`_method=...`, spelled any way a framework decodes to that name (`%5Fmethod`, `_method` alone)."""
    return unquote_plus(part.partition("=")[0]).strip() == METHOD_OVERRIDE_PARAM


def _declared_length(headers: HeaderView) -> int | None:
    """Content-Length as an int; -1 when it is malformed or repeated with different values."""
    values = headers.get_all("content-length")
    if not values:
        return None
    distinct = {v.strip() for v in values}
    if len(distinct) != 1:
        return -1
    (value,) = distinct
    return int(value) if value.isdigit() else -1


def _entry_source(match: Match, run: _Run) -> str:
    """file:line of the list entry that matched (`auth.public`, `cache.never` combine their entries into one
    path matcher), so the trace cites the rule that decided rather than the block; "" when unknown."""
    paths = match.paths
    if paths is None:
        return ""
    hit = paths.match(run.facts[0], run.facts[5])
    return paths.patterns[hit].source if hit is not None else ""


def _auth_schemes_for(run: _Run, auth: Auth) -> tuple[str, ...] | None:
    """Accepted schemes for this request; None means public."""
    facts = run.facts
    if auth.public is not None and match_request(auth.public, *facts):
        run.note("auth", "public", "matched", source=_entry_source(auth.public, run) or auth.public_source)
        return None
    for rule, note in zip(auth.rules, run.plan.auth_rule_notes, strict=True):
        if match_request(rule.match, *facts):
            run.trace.append(note)
            return rule.schemes or None
    return auth.schemes


async def _authenticate(run: _Run) -> Decision | None:
    auth = run.policy.auth
    if auth is None:
        return None
    ctx, req = run.ctx, run.req
    schemes = _auth_schemes_for(run, auth)
    if schemes is None:
        ctx.auth_outcome = "public"
        return None
    values = req.headers.get_all("authorization")
    identity = _known_bearer(run, auth, schemes, values)
    if identity is not None:
        _accepted(run, auth, identity)
        return None
    scheme_key = None
    try:
        scheme, credentials = parse_authorization(values)
        scheme_key = "bearer" if scheme == "bearer" else _scheme_key(auth, scheme)  # parse lower-cases it
        if scheme_key is None or scheme_key not in schemes:
            raise AuthFailure("scheme_not_allowed", f"the {scheme} scheme is not accepted here")
        if scheme_key == "bearer":
            if auth.jwt is None:
                raise AuthFailure("scheme_not_allowed", "no JWT configuration")
            verifier = _verifier(run, auth.jwt)
            try:
                identity = verifier.verify(credentials)
            except AuthFailure as exc:
                if exc.reason != "unknown_kid":
                    raise
                identity = await verifier.verify_async(credentials)
        else:
            identity = await authenticate_api_key(run.state.keys, credentials, run.state.now())
    except AuthFailure as exc:
        # The log, the metrics and the trace keep the precise reason; the client learns only which scheme
        # failed (not whether a key it found is unknown, revoked or expired, nor a JWT's bad signature from
        # its expiry).
        ctx.auth_outcome = f"failed:{exc.reason}"
        challenge = _challenges(run, auth, schemes)
        public = client_reason(exc.reason, scheme_key if scheme_key in schemes else None)
        return run.fail("unauthorized", "auth", exc.reason, auth.source, headers=challenge, reason=public)
    except StoreUnavailable as exc:
        ctx.auth_outcome = "failed:store_unavailable"
        return run.fail("auth_unavailable", "auth", f"key store unavailable: {exc}", auth.source)
    _accepted(run, auth, identity)
    return None


# What a 401 tells the client: one reason per scheme (the precise one stays in the log and the trace).
CLIENT_AUTH_REASONS = {"bearer": "invalid_token", "api_key": "invalid_api_key"}


def client_reason(reason: str, scheme_key: str | None) -> str:
    """The reason a 401 carries: `missing` without credentials, else the generic one of the scheme that was
    tried (`invalid_credentials` when the Authorization header itself was unusable or not accepted here)."""
    if reason == "missing":
        return reason
    return CLIENT_AUTH_REASONS.get(scheme_key or "", "invalid_credentials")


def _known_bearer(run: _Run, auth: Auth, schemes: tuple[str, ...], values: list[str]) -> Identity | None:
    """The fast path for the common case, a `Bearer` token the verifier accepted before: one hash lookup.

    Equivalent to the full path: a cached token passed `parse_authorization` (token68 characters, length)
    and verification when it was first seen, so `Bearer ` + the same token parses the same way now. Anything
    else (other spellings, other schemes, unknown tokens) returns None and takes the full path."""
    if len(values) != 1 or auth.jwt is None or "bearer" not in schemes:
        return None
    value = values[0]
    if not value.startswith("Bearer "):
        return None
    return _verifier(run, auth.jwt).cached(value[7:])


def _accepted(run: _Run, auth: Auth, identity: Identity) -> None:
    ctx = run.ctx
    ctx.identity = identity
    ctx.auth_outcome = identity.method
    plan = run.plan
    names = plan.identity_names
    assert names is not None  # the policy has an auth section: it names the identity headers
    run.set_headers.extend(identity_headers(identity, names, run.state.now(), plan.checked))
    known = plan.accepted.get(id(identity))  # (identity, its trace entry): the same users come back
    if known is None or known[0] is not identity:
        note = TraceEntry("auth", identity.method, "accepted", f"user {identity.user}", auth.source)
        known = remember(plan.accepted, id(identity), (identity, note))
    run.trace.append(known[1])


def _verifier(run: _Run, config: JwtConfig) -> JwtVerifier:
    plan = run.plan
    verifier = plan.verifier
    if verifier is None:
        verifier = plan.verifier = run.state.verifier(config)
    return verifier


def _scheme_key(auth: Auth, scheme: str) -> str | None:
    lowered = scheme.lower()
    if lowered == "bearer":
        return "bearer"
    if lowered == auth.api_key_scheme.lower():
        return "api_key"
    return None


def _challenges(run: _Run, auth: Auth, schemes: tuple[str, ...]) -> list[tuple[str, str]]:
    realm = run.policy.name
    out = []
    for scheme in schemes:
        name = _SCHEME_NAMES.get(scheme) or auth.api_key_scheme
        out.append(("WWW-Authenticate", f'{name} realm="{realm}"'))
    return out


def _applicable_limits(run: _Run) -> list[tuple[RateLimitRule, str, int, float]]:
    """(rule, subject, limit, window) of the rate limits that count this request, in the policy's order
    (synchronous: most requests have none, and then no coroutine is made)."""
    identity = run.ctx.identity
    out = []
    for match, rule, per_key_override in run.policy.rate_limits:
        if match is not None and not match_request(match, *run.facts):
            continue
        limit, window = rule.limit, rule.window
        if rule.key == "client_ip":
            subject = run.req.client_ip
        elif identity is None:
            continue
        elif rule.key == "api_key":
            if identity.method != "api_key":
                continue
            subject = identity.principal
            own = getattr(identity, "rate_limit", None)
            if per_key_override and own:
                limit, window = own
        else:
            subject = identity.principal
        out.append((rule, subject, limit, window))
    return out


async def _rate_limit(run: _Run, limits: list[tuple[RateLimitRule, str, int, float]]) -> Decision | None:
    ctx = run.ctx
    for rule, subject, limit, window in limits:
        try:
            result = await run.state.limiter.hit(rule.name, subject, limit, window)
        except StoreUnavailable as exc:
            if rule.on_store_error == "reject":
                return run.fail("limits_unavailable", "ratelimit", f"store unavailable: {exc}", rule.source)
            # By default limits are abuse control, not authentication: with the store down they let traffic
            # through (API keys already failed closed in the auth phase). Traced.
            run.note("ratelimit", rule.name, "skipped", f"store unavailable: {exc}", rule.source)
            continue
        ctx.rate_limits.append(result)
        if not result.allowed:
            ctx.rate_limited_by = rule.name
            return run.fail(
                "rate_limited",
                "ratelimit",
                f"{rule.name}: {limit} per {window:g}s",
                rule.source,
                headers=run.state.limiter.headers(result),
            )
        run.note("ratelimit", rule.name, "allowed", f"{result.remaining} left", rule.source)
    return None


def _cache_rule(run: _Run) -> CacheRule | None:
    cache = run.policy.cache
    if cache is None:
        return None
    ctx, req = run.ctx, run.req
    facts = run.facts
    if cache.never is not None and match_request(cache.never, *facts):
        run.note("cache", "never", "matched", source=_entry_source(cache.never, run) or cache.source)
        return None
    if req.websocket or ctx.request_class in run.plan.stream_classes:
        return None
    for (match, rule), note in zip(cache.rules, run.plan.cache_notes, strict=True):
        if match_request(match, *facts):
            run.trace.append(note)
            return rule
    return None


async def _cache_lookup(run: _Run) -> Decision | None:
    ctx, req = run.ctx, run.req
    rule = _cache_rule(run)
    if rule is None:
        return None
    ctx.cache_rule = rule
    principal = None
    if rule.key_principal:
        # The authenticated principal, or a hash of whatever credentials came on a public path: never a prefix
        # of the credential (distinct credentials could share it and read each other's entries).
        principal = effective_principal(ctx.identity.principal if ctx.identity else None, req.headers)
    key_headers = tuple([(name, req.headers.get(name) or "") for name in rule.key_headers])
    ctx.cache_key = _cache_key(req.method, req.scheme, req.host, ctx.path, run.query, principal, key_headers)
    # Vary is about the request the origin got: the client's headers with the edge's edits (a header the
    # edge strips or sets, X-Forwarded-Host say, selects the variant by the value the origin saw).
    _edge_headers(run)
    ctx.cache_request_headers = forwarded = _as_forwarded(run)
    lookup = await run.state.cache.lookup(rule, ctx.cache_key, req.method, forwarded)
    ctx.cache_status = str(lookup.status)
    ctx.cache_reason = lookup.reason
    entry = lookup.entry
    run.note("cache", rule.name, ctx.cache_status, ctx.cache_reason)
    if entry is None:
        return None
    ctx.cache_lookup = lookup
    if lookup.servable:
        if lookup.status is CacheStatus.STALE:
            ctx.cache_revalidate = _background_revalidation(run, rule.name, entry)
        return run.answer(answer_from_entry(entry, req.headers, run.state.now(), req.method))
    _make_conditional(run, rule.name, entry)  # EXPIRED with validators: the origin may answer 304
    if not stale_if_error_ok(rule, entry, run.state.now()):
        return None
    # The runtime serves the entry if the origin fails; when routing itself refuses (every region down under
    # `when_all_unhealthy: reject`) there is no origin to fail, so stale-if-error applies here.
    routed = _route(run)
    if isinstance(routed.outcome, Answer) and routed.outcome.kind == "all_regions_down":
        ctx.cache_status, ctx.error = str(CacheStatus.STALE), None
        run.note("cache", rule.name, ctx.cache_status, "stale-if-error: every region is down")
        return run.answer(answer_from_entry(entry, req.headers, run.state.now()))
    return routed


@functools.lru_cache(maxsize=memo.LIMIT)
def _cache_key(
    method: str,
    scheme: str,
    host: str,
    path: str,
    query: str,
    principal: str | None,
    key_headers: tuple[tuple[str, str], ...],
) -> str:
    """`httpcache.cache_key`, memoised: a pure function of its arguments (no policy, no state, no clock), and
    the same users come back for the same cacheable paths, which is when the cache matters."""
    return cache_key(method, scheme, host, path, query, principal, dict(key_headers))


def answer_from_entry(
    entry: CacheEntry, request_headers: HeaderInput, now: float, method: str = "GET"
) -> Answer:
    """A stored entry as the client gets it: 304 when its own conditional matches, 206/416 for a GET's Range
    (RFC 9110 14), else the replay."""
    if evaluate_conditional(request_headers, entry):
        return Answer(304, tuple(not_modified_headers(entry, now)), b"", "not_modified")
    headers = replay_headers(entry, now)
    if method == "GET" and (partial := partial_answer(entry, headers, request_headers)) is not None:
        status, partial_headers, body = partial
        return Answer(status, tuple(partial_headers), body, "cache_hit")
    return Answer(entry.status, tuple(headers), entry.body, "cache_hit")


def _make_conditional(run: _Run, rule_name: str, entry: CacheEntry) -> bool:
    """Send the entry's validators instead of the client's own (RFC 9111 4.3.1); True when it has any."""
    validators = revalidation_headers(entry)
    if not validators:
        return False
    run.remove.extend(("if-none-match", "if-modified-since"))
    run.set_headers.extend(validators.items())
    run.note("cache", rule_name, "conditional", ", ".join(f"{n}: {v}" for n, v in validators.items()))
    return True


def _background_revalidation(run: _Run, rule_name: str, entry: CacheEntry) -> Forward | None:
    """The request a STALE answer sends to the origin afterwards: normal routing, conditional when it can.

    The routing phase runs for it, but the client was answered by the cache: the context keeps no region and
    no error from it (None when every region is down: nothing to revalidate against).
    """
    ctx = run.ctx
    saved = (ctx.region, ctx.routing_priority, ctx.degraded, ctx.error)
    set_headers, remove, add = list(run.set_headers), list(run.remove), list(run.add)
    _make_conditional(run, rule_name, entry)
    run.note("cache", rule_name, "revalidate", "in the background (stale-while-revalidate)")
    decision = _route(run)
    ctx.region, ctx.routing_priority, ctx.degraded, ctx.error = saved
    run.set_headers, run.remove, run.add = set_headers, remove, add
    return decision.outcome if isinstance(decision.outcome, Forward) else None


def _route(run: _Run) -> Decision:
    policy, req, ctx = run.policy, run.req, run.ctx
    route = _route_plan(run)
    if route.note is None:
        return run.fail(
            "all_regions_down", "routing", f"none of {list(route.order)} is healthy", policy.routing.source
        )
    run.trace.append(route.note)
    first = route.targets[0]
    ctx.region, ctx.routing_priority, ctx.degraded = first.region, first.priority, first.degraded
    _edge_headers(run)
    stream = req.websocket or ctx.request_class in run.plan.stream_classes
    assert ctx.path is not None  # set by the normalise phase
    forward = Forward(
        regions=route.targets,
        path_and_query=ctx.path + (f"?{run.query}" if run.query else ""),
        edits=HeaderEdits(
            tuple(dict.fromkeys([n.lower() for n in run.remove])) if run.remove else (),
            tuple(run.add),
            tuple(run.set_headers),
        ),
        timeout=policy.routing.timeout,
        connect_timeout=policy.routing.connect_timeout,
        stream=stream,
    )
    return Decision(forward, ctx, tuple(run.trace), req)


def _route_plan(run: _Run) -> RoutePlan:
    """The memoised `plan_route` for this request's country, coordinates and its candidates' health now."""
    ctx = run.ctx
    country = ctx.country
    assert country is not None  # set by the geo phase
    is_healthy = run.state.health.is_healthy
    healthy = tuple([is_healthy(name) for name in candidates(run.policy, country)])
    key = (country, ctx.lat, ctx.lon, healthy)
    routes = run.plan.routes
    route = routes.get(key)
    if route is None:  # coordinates come from a header: the table is bounded
        route = remember(routes, key, plan_route(run.policy, country, ctx.lat, ctx.lon, healthy))
    return route


def _as_forwarded(run: _Run) -> HeaderView:
    """The client's headers as the origin gets them (before hop-by-hop and per-region headers)."""
    replaced = {name.lower() for name, _ in run.set_headers}
    dropped = replaced.union(name.lower() for name in run.remove)
    kept = [(n, v) for n, v in run.req.headers.pairs if n.lower() not in dropped]
    return HeaderView([*kept, *run.set_headers])


def _edge_headers(run: _Run) -> None:
    """The request header edits that do not depend on the region: class and priority, the forwarding
    headers, the policy's request rules. Made once, before the cache lookup when there is one (the cache's
    Vary handling compares what the origin was sent), else when routing."""
    if run.edited:
        return
    run.edited = True
    policy, ctx = run.policy, run.ctx
    classify = policy.classify
    if classify.class_header and ctx.request_class:
        run.set_headers.append((classify.class_header, ctx.request_class))
    if classify.priority_header and ctx.priority:
        run.set_headers.append((classify.priority_header, ctx.priority))
    _forwarding_headers(run)
    _request_header_rules(run)


def _forwarding_headers(run: _Run) -> None:
    """The edge owns the forwarding headers: client copies of `routing.headers.strip_untrusted` are removed
    unless the peer is a trusted proxy (`geo.trusted_proxies`), and X-Forwarded-For/-Proto/-Host and
    Forwarded say what the edge saw (appended to a trusted proxy's)."""
    req = run.req
    headers = req.headers
    names = run.policy.routing.headers
    trusted = _trusted(run)
    if not trusted:
        stripped = [name for name in names.strip_untrusted if name in headers]
        if stripped:
            run.remove.extend(stripped)
            run.note("strip", "forwarding headers", "removed", ", ".join(stripped))
    if not names.forwarded:
        return
    client_ip, scheme = req.client_ip, req.scheme
    host = headers.get("host") or req.host
    previous = headers.joined("x-forwarded-for") if trusted else None
    run.set_headers.append(("X-Forwarded-For", f"{previous}, {client_ip}" if previous else client_ip))
    proto = headers.get("x-forwarded-proto") if trusted else None
    run.set_headers.append(("X-Forwarded-Proto", proto or scheme))
    forwarded_host = headers.get("x-forwarded-host") if trusted else None
    run.set_headers.append(("X-Forwarded-Host", forwarded_host or host))
    element = f"for={_forwarded_node(client_ip)};host={_forwarded_value(host)};proto={scheme}"
    previous = headers.joined("forwarded") if trusted else None
    run.set_headers.append(("Forwarded", f"{previous}, {element}" if previous else element))


def _forwarded_node(ip: str) -> str:
    """RFC 7239 node: an IPv6 address in brackets and quotes."""
    return f'"[{ip}]"' if ":" in ip else (ip or "unknown")


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _forwarded_value(value: str) -> str:
    if _TOKEN.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _request_header_rules(run: _Run) -> None:
    facts = run.facts
    for rule, note in zip(run.policy.headers.request, run.plan.header_notes, strict=True):
        if rule.match is not None and not match_request(rule.match, *facts):
            continue
        if rule.unless is not None and match_request(rule.unless, *facts):
            continue
        run.set_headers.extend(rule.set)
        run.add.extend(rule.add_if_absent)
        run.remove.extend(rule.remove)
        run.trace.append(note)


# ---------------------------------------------------------------------------------------------------- response


def response_headers(
    decision: Decision, policy: Policy, response: EdgeResponse, *, now: float
) -> HeaderEdits:
    """The edits to the response the client gets (`HeaderEdits.apply`: remove, add if absent, set).

    Runs for every response: from an origin, from the cache, and the edge's own answers. Response header
    rules see their request as the request phase saw it (normalised path, method, headers, class, country).
    """
    ctx = decision.context
    to_set: list[tuple[str, str]] = []
    to_add: list[tuple[str, str]] = []
    to_remove: list[str] = []
    headers = policy.headers
    if headers.response and (
        not isinstance(decision.outcome, Answer) or decision.outcome.kind in ("cache_hit", "not_modified")
    ):
        content_type = media_type(response.headers.get("content-type"))
        req = decision.request
        for rule in headers.response:
            if rule.response_statuses is not None and response.status not in rule.response_statuses:
                continue
            if rule.response_content_types is not None and not media_matches(
                content_type, rule.response_content_types
            ):
                continue
            if rule.match is not None or rule.unless is not None:
                if ctx.path is None or req is None:
                    continue  # refused before the path was known: no request-scoped rule applies
                facts = (ctx.path, req.method, req.headers, ctx.request_class, ctx.country)
                if rule.match is not None and not match_request(rule.match, *facts):
                    continue
                if rule.unless is not None and match_request(rule.unless, *facts):
                    continue
            to_set.extend(rule.set)
            to_add.extend(rule.add_if_absent)
            to_remove.extend(n.lower() for n in rule.remove)
    to_set.extend(headers.security)
    if headers.processed_region and ctx.region:
        to_set.append((headers.processed_region, ctx.region))
    cache = policy.cache
    if cache is not None:
        to_remove.extend(cache.edge_only_headers)  # the policy's targeted field, Cache-Tag
    if cache is not None and ctx.cache_status:
        to_set.append((cache.status_header, ctx.cache_status))
        to_set.extend((name, ctx.cache_status) for name in cache.extra_status_headers)
        if cache.processed_header:
            to_set.append((cache.processed_header, utc_iso_millis(now)))
    if ctx.cors_rule is not None:
        # CORS is the edge's on this path: the origin's Access-Control-* answer is replaced by the rule's.
        # (the edge's own preflight answer carries the rule's headers already: kept)
        outcome = decision.outcome
        if not isinstance(outcome, Answer) or outcome.kind in ("cache_hit", "not_modified"):
            to_remove.extend(name for name in response.headers.names() if name.startswith("access-control-"))
        to_set.extend(cors.response_headers(ctx.cors_rule, ctx.origin))
        vary = response.headers.joined("vary")
        if vary is None:
            to_set.append(("Vary", "Origin"))
        elif vary.strip() != "*" and "origin" not in {v.strip().lower() for v in vary.split(",")}:
            to_set.append(("Vary", f"{vary}, Origin"))
    elif (
        # `*` with credentials: a misconfigured origin's answer (browsers refuse it; some proxies and old
        # clients do not), never passed on
        headers.strip_wildcard_credentials
        and (response.headers.get("access-control-allow-origin") or "").strip() == "*"
        and "access-control-allow-credentials" in response.headers
    ):
        to_remove.extend(("access-control-allow-origin", "access-control-allow-credentials"))
    if ctx.rate_limits and not (
        isinstance(decision.outcome, Answer) and decision.outcome.kind == "rate_limited"
    ):
        tightest = min(ctx.rate_limits, key=lambda r: r.remaining)
        to_set.extend(
            (name, value) for name, value in _rate_limit_headers(tightest) if name.lower() != "retry-after"
        )
    return HeaderEdits(tuple(to_remove), tuple(to_add), tuple(to_set))


def _rate_limit_headers(result: RateLimitResult) -> list[tuple[str, str]]:
    return [
        ("RateLimit-Limit", str(result.limit)),
        ("RateLimit-Remaining", str(result.remaining)),
        ("RateLimit-Reset", str(max(0, round(result.reset_after)))),
    ]

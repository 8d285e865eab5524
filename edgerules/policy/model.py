"""The compiled policy: immutable values the engine reads on every request.

The compiler (`edgerules.policy.compiler`) builds these from the YAML after the schema and semantic checks passed, so
nothing here re-validates. Every rule keeps `source` ("file:line") for traces. Every feature's compiled settings
live here (auth, rate limits, metrics, the store), so loading a policy loads no feature module (no PyJWT, no
HTTP client, no asyncio); only `CacheRule` still lives in `httpcache` (pure rules, no I/O).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Literal

from edgerules.cache.http import CacheRule
from edgerules.kinds import ErrorKind
from edgerules.paths import PathMatcher

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class HeaderCondition:
    """One request-header test; exactly one of the comparisons is set."""

    name: str  # lower-case
    equals: str | None = None
    contains: str | None = None
    regex: object | None = None  # compiled re2 pattern, full match
    present: bool | None = None


@dataclass(frozen=True, slots=True)
class Match:
    """Request conditions, all of which must hold (each list is an OR). An empty Match matches everything."""

    paths: PathMatcher | None = None  # path / prefix / regex, on the normalised path
    methods: frozenset[str] | None = None
    headers: tuple[HeaderCondition, ...] = ()
    content_types: tuple[str, ...] | None = None  # request media-type patterns ("audio/*")
    classes: frozenset[str] | None = None
    countries: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class HealthProbe:
    path: str = "/health"
    interval: float = 10.0
    timeout: float = 5.0
    expect_status: frozenset[int] = frozenset({200})
    expect_json: tuple[tuple[str, object], ...] = ()  # top-level key/value pairs the JSON body must contain
    healthy_threshold: int = 1
    unhealthy_threshold: int = 2
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class PassiveHealth:
    """Outlier detection from real traffic (Envoy's as the model): connect errors and timeouts eject after
    `failures` in a row; error statuses only when, over `window`, at least `min_requests` answers were seen,
    `status_ratio` of them were errors, and the errors came from at least `min_clients` client addresses (one
    client provoking 503s cannot eject a region for everyone)."""

    failures: int = 3
    statuses: frozenset[int] = frozenset({502, 503, 504})
    ejection: float = 30.0
    status_ratio: float = 0.5
    window: float = 30.0
    min_requests: int = 5
    min_clients: int = 2


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    upstream: str  # scheme://host[:port][/base]
    scheme: str
    host: str
    port: int
    base_path: str  # "" or "/prefix" without trailing slash
    lat: float | None
    lon: float | None
    health: HealthProbe
    source: str


@dataclass(frozen=True, slots=True)
class Geo:
    country_header: str | None = "cf-ipcountry"
    latitude_header: str | None = None
    longitude_header: str | None = None
    trusted_proxies: tuple[IPNetwork, ...] = ()
    maxmind_db: str | None = None
    default_country: str = "XX"


@dataclass(frozen=True, slots=True)
class LatencyTarget:
    base_ms: float = 30.0
    per_100km_ms: float = 1.0
    min_ms: float = 50.0
    max_ms: float = 200.0
    default_ms: float = 100.0


# Request headers that say where a request came from or what it asked for, which frameworks believe (absolute
# URLs, redirects, routing, client IPs): removed from a client's request unless it came through a trusted proxy.
DEFAULT_STRIP_UNTRUSTED: tuple[str, ...] = (
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-original-url",
    "x-rewrite-url",
    "x-host",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
)


@dataclass(frozen=True, slots=True)
class RoutingHeaders:
    target_region: str | None = "X-CF-Target-Region"
    priority: str | None = "X-CF-Routing-Priority"
    latency_target: str | None = "X-CF-Latency-Target"
    degraded: str | None = "X-Edge-Degraded"
    forwarded: bool = True
    strip_untrusted: tuple[str, ...] = DEFAULT_STRIP_UNTRUSTED  # lower-case names


@dataclass(frozen=True, slots=True)
class Routing:
    default: tuple[str, ...]
    countries: dict[str, tuple[str, ...]]  # never mutated after compile
    priorities: tuple[str, ...] = ("primary", "secondary", "tertiary")
    when_all_unhealthy: Literal["fallback_primary", "reject"] = "fallback_primary"
    host_rewrite: Literal["upstream", "keep"] = "upstream"
    timeout: float = 30.0
    connect_timeout: float = 5.0
    retries: int = 2
    headers: RoutingHeaders = field(default_factory=RoutingHeaders)
    latency_target: LatencyTarget = field(default_factory=LatencyTarget)
    source: str = ""


@dataclass(frozen=True, slots=True)
class RequestClass:
    name: str
    match: Match
    stream: bool
    source: str
    max_body_size: int | None = None  # None: validation.max_body_size applies


@dataclass(frozen=True, slots=True)
class PriorityRule:
    priority: str
    match: Match
    source: str


@dataclass(frozen=True, slots=True)
class Classify:
    classes: tuple[RequestClass, ...] = ()
    default_class: str = "default"
    priorities: tuple[PriorityRule, ...] = ()
    default_priority: str = "normal"
    class_header: str | None = None
    priority_header: str | None = None


@dataclass(frozen=True, slots=True)
class Validation:
    allow_paths: PathMatcher | None = None  # None: every (normalised) path is allowed
    allow_paths_source: str = ""
    methods: frozenset[str] | None = None
    require_content_type: frozenset[str] = frozenset()
    content_types: dict[str, tuple[str, ...]] = field(default_factory=dict)  # METHOD -> media-type patterns
    max_body_size: int | None = None
    max_url_length: int = 8192
    max_header_size: int = 32768  # names + values of all request headers
    method_override: Literal["strip", "check"] = "strip"
    source: str = ""


# Auth settings (the verifiers in edgerules.auth read them).


@dataclass(frozen=True, slots=True)
class ClaimMapping:
    user: str = "sub"
    role: str = "role"
    permissions: str = "permissions"


@dataclass(frozen=True, slots=True)
class JwtConfig:
    algorithms: tuple[str, ...] = ("HS256",)
    secret: bytes | None = field(default=None, repr=False)  # HS* secret, >= 32 bytes
    jwks_file: str | None = None
    jwks_url: str | None = None
    jwks_refresh: float = 3600.0
    leeway: float = 30.0
    require: tuple[str, ...] = ("exp",)
    issuer: str | None = None
    audience: str | None = None
    claims: ClaimMapping = ClaimMapping()
    max_token_length: int = 8192
    cache_size: int = 10_000


@dataclass(frozen=True, slots=True)
class IdentityHeaderNames:
    user: str = "X-User-ID"
    role: str = "X-User-Role"
    permissions: str = "X-User-Permissions"
    authenticated_at: str = "X-Authenticated-At"

    def all(self) -> tuple[str, ...]:
        return (self.user, self.role, self.permissions, self.authenticated_at)


@dataclass(frozen=True, slots=True)
class AuthRule:
    """Per-path override: which schemes are accepted there (empty tuple: public)."""

    match: Match
    schemes: tuple[str, ...]
    source: str


@dataclass(frozen=True, slots=True)
class Auth:
    public: Match | None = None
    public_source: str = ""
    rules: tuple[AuthRule, ...] = ()
    schemes: tuple[str, ...] = ("bearer", "api_key")
    jwt: JwtConfig | None = None
    api_key_scheme: str = "API-Key"
    identity_headers: IdentityHeaderNames = field(default_factory=IdentityHeaderNames)
    strip_headers: tuple[str, ...] = ()  # names or "Prefix-*" patterns, lower-case
    source: str = ""


@dataclass(frozen=True, slots=True)
class CacheSettings:
    rules: tuple[tuple[Match, CacheRule], ...] = ()
    never: Match | None = None
    status_header: str = "X-Cache-Status"
    extra_status_headers: tuple[str, ...] = ()
    processed_header: str | None = None
    key_headers: tuple[str, ...] = ()
    targeted_field: str | None = None  # lower-cased; obeyed before CDN-Cache-Control (RFC 9213)
    invalidation: str = "authenticated"  # who invalidates with an unsafe method: "authenticated" | "any"
    source: str = ""

    @property
    def edge_only_headers(self) -> tuple[str, ...]:
        """Response fields meant for this edge alone, removed before the client sees a response (CDN-Cache-Control
        is for every CDN on the way, so it is forwarded)."""
        return (*((self.targeted_field,) if self.targeted_field else ()), "cache-tag")


@dataclass(frozen=True, slots=True)
class HeaderRule:
    """Request rule (match/unless) or response rule (also content_type/status of the response)."""

    name: str
    match: Match | None
    unless: Match | None
    set: tuple[tuple[str, str], ...] = ()
    add_if_absent: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()
    response_content_types: tuple[str, ...] | None = None
    response_statuses: frozenset[int] | None = None
    source: str = ""


@dataclass(frozen=True, slots=True)
class Headers:
    request: tuple[HeaderRule, ...] = ()
    response: tuple[HeaderRule, ...] = ()
    security: tuple[tuple[str, str], ...] = ()
    processed_region: str | None = None
    security_source: str = ""
    strip_wildcard_credentials: bool = True  # on paths without a CORS rule: drop ACAO `*` + ACAC


@dataclass(frozen=True, slots=True)
class CorsRule:
    name: str
    match: Match
    allow_origins: frozenset[str]  # exact origins; "*" allowed only without credentials
    allow_methods: tuple[str, ...]
    allow_headers: tuple[str, ...]
    expose_headers: tuple[str, ...]
    max_age: int | None
    allow_credentials: bool
    source: str


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    status: int
    message: str
    retry_after: int | None = None
    headers: tuple[tuple[str, str], ...] = ()


# Every kind of answer the edge gives itself, with its default; a policy's `errors` may change each one.
DEFAULT_ERRORS: dict[ErrorKind, ErrorAnswer] = {
    "path_not_allowed": ErrorAnswer(400, "Invalid API path"),
    "invalid_request": ErrorAnswer(400, "Invalid request format"),
    "method_not_allowed": ErrorAnswer(405, "Method not allowed"),
    "content_type_required": ErrorAnswer(400, "Content-Type header required"),
    "unsupported_media_type": ErrorAnswer(415, "Unsupported media type"),
    "payload_too_large": ErrorAnswer(413, "Request too large"),
    "uri_too_long": ErrorAnswer(414, "URI too long"),
    "headers_too_large": ErrorAnswer(431, "Request header fields too large"),
    "unauthorized": ErrorAnswer(401, "Authentication required"),
    "forbidden": ErrorAnswer(403, "Forbidden"),
    "rate_limited": ErrorAnswer(429, "Rate limit exceeded"),
    "upstream_timeout": ErrorAnswer(504, "Request timeout"),
    "upstream_unreachable": ErrorAnswer(502, "Upstream unreachable"),
    "upstream_too_large": ErrorAnswer(502, "Upstream response too large"),
    "upstream_protocol_error": ErrorAnswer(502, "Invalid response from upstream"),
    "all_regions_down": ErrorAnswer(503, "Service temporarily unavailable", retry_after=30),
    "auth_unavailable": ErrorAnswer(503, "Authentication service unavailable", retry_after=5),
    "limits_unavailable": ErrorAnswer(503, "Rate limiting unavailable", retry_after=5),
    "not_found": ErrorAnswer(404, "Not found"),
    "internal_error": ErrorAnswer(500, "Internal server error"),
}
ERROR_KINDS = tuple(DEFAULT_ERRORS)


# Settings of the features built on a store (rate limits, metrics, the store itself): the feature modules read
# them; they live here so that the compiled policy imports no feature module.


RateLimitKey = Literal["api_key", "principal", "client_ip"]


@dataclass(frozen=True, slots=True)
class RateLimitRule:
    name: str
    key: RateLimitKey
    limit: int
    window: float  # seconds
    source: str = ""  # file:line of the rule, for traces
    on_store_error: Literal["allow", "reject"] = "allow"  # the store cannot count: let through, or refuse


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True
    raw_retention: float = 3600.0
    rollup_retention: float = 7 * 86400.0
    flush_interval: float = 1.0
    access_log: bool = False
    latency_buckets_ms: tuple[float, ...] = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
    max_buffer: int = 100_000
    """Raw records kept in memory while the store is unavailable; the oldest beyond this are dropped."""
    redact_path_segments: tuple[
        Any, ...
    ] = ()  # compiled RE2 patterns: a path segment matching one is redacted
    redact_random_segments: bool = True  # long random-looking segments (tokens, webhook secrets) too
    collector: bool = True  # POST /__edgerules/analytics accepts records (false: 404)
    collector_max_age: float = 300.0  # collector records older than this (or 5 min ahead) are refused


@dataclass(frozen=True, slots=True)
class StoreConfig:
    backend: Literal["memory", "diskcache", "redis"] = "diskcache"
    path: str = ".edgerules-state"  # diskcache directory
    size_limit: int = 256 * 1024**2  # bytes; diskcache evicts past it
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "edgerules:"  # every key is namespaced with it (diskcache and redis)
    timeout: float = 1.0  # per-operation timeout (seconds) for redis; StoreUnavailable past it
    cluster: bool = False  # redis: `url` is one node of a Redis Cluster (also: a redis+cluster:// URL)


@dataclass(frozen=True, slots=True)
class Admin:
    token: str | None = None
    allow_cidrs: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    """One compiled policy for one environment."""

    name: str
    version: str  # content hash of the source files, shown on the status endpoint
    files: tuple[str, ...]
    environment: str | None
    regions: dict[str, Region]
    routing: Routing
    geo: Geo
    classify: Classify
    validation: Validation
    auth: Auth | None
    rate_limits: tuple[tuple[Match | None, RateLimitRule, bool], ...]  # (match, rule, per_key_override)
    cache: CacheSettings | None
    headers: Headers
    cors: tuple[CorsRule, ...]
    errors: dict[ErrorKind, ErrorAnswer]
    metrics: MetricsConfig
    store: StoreConfig
    admin: Admin
    passive_health: PassiveHealth = field(default_factory=PassiveHealth)

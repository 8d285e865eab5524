"""The engine's inputs and outputs: small immutable values, no mitmproxy types.

The addon builds an `EdgeRequest` from a flow; `explain`, `test` and `replay` build the same value from a command
line, a YAML test case or a recorded flow. The engine answers with a `Decision`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from edgerules.engine.headers import HeaderEdits

if TYPE_CHECKING:
    from edgerules.auth.identity import Identity
    from edgerules.cache.http import CacheRule
    from edgerules.cache.response import Lookup
    from edgerules.engine.ratelimit import RateLimitResult
    from edgerules.policy.model import CorsRule

from edgerules.headerview import HeaderView as HeaderView  # re-exported: the engine's header type
from edgerules.kinds import AnswerKind, TracePhase


@dataclass(frozen=True, slots=True)
class EdgeRequest:
    method: str
    path: str  # raw path as received, without the query string
    query: str = ""
    scheme: str = "http"
    host: str = ""
    port: int = 80
    headers: HeaderView = field(default_factory=HeaderView)
    client_ip: str = "127.0.0.1"
    body_size: int | None = None  # actual size when known, else the declared Content-Length
    timestamp: float = 0.0
    websocket: bool = False

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}{'?' + self.query if self.query else ''}"


class TraceEntry(NamedTuple):
    """One step of a decision. A tuple: every request makes several, so they must be cheap to build."""

    phase: TracePhase
    rule: str
    outcome: str  # "matched", "skipped", "refused", "set", ...
    detail: str = ""
    source: str = ""  # "file:line" of the rule in the policy

    def to_json(self) -> dict[str, str]:
        return {
            "phase": self.phase,
            "rule": self.rule,
            "outcome": self.outcome,
            "detail": self.detail,
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class Answer:
    """The edge answers the client itself (errors, preflight, cache hits, admin)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    kind: AnswerKind  # an error kind ("rate_limited"), "preflight", "cache_hit", "not_modified", ...

    @classmethod
    def json(
        cls, status: int, payload: Any, kind: AnswerKind, headers: Iterable[tuple[str, str]] = ()
    ) -> Answer:
        body = json.dumps(payload, separators=(",", ":")).encode()
        return cls(status, (("Content-Type", "application/json"), *headers), body, kind)


class Target(NamedTuple):
    """One region the request may go to, in failover order (a tuple: every forwarded request builds up to
    1 + retries of them)."""

    region: str
    priority: str  # "primary" | "secondary" | "tertiary" | "fallback"
    scheme: str
    host: str
    port: int
    path: str  # base path + normalised path + query
    headers: tuple[tuple[str, str], ...]  # per-target headers (routing headers, Host)
    degraded: bool = False


@dataclass(slots=True)  # not frozen: built for every forwarded request, and frozen fields cost 2x to set
class Forward:
    """Where and how the request goes on. Treat it as a value: the runtime derives changed copies with
    `dataclasses.replace` instead of mutating one."""

    regions: tuple[Target, ...]  # failover order; each `path` is the region's base path alone
    path_and_query: str  # the request's normalised path and query, appended to each base path
    edits: HeaderEdits  # on the client's end-to-end fields; each target's own headers are set after these
    timeout: float
    connect_timeout: float
    stream: bool = False  # mitmproxy forwards it itself (audio streams, WebSockets)

    @property
    def set_headers(self) -> tuple[tuple[str, str], ...]:
        return self.edits.set

    @property
    def remove_headers(self) -> tuple[str, ...]:
        return self.edits.remove

    def target_edits(self, target: Target) -> HeaderEdits:
        """The edits for one target: the decision's, then the target's own headers (routing, Host) set."""
        return self.edits.then_set(target.headers)

    def target(self, index: int) -> Target:
        """`targets[index]` alone (the steps ask for one target at a time; most requests need only the first)."""
        t = self.regions[index]
        return Target(
            t.region,
            t.priority,
            t.scheme,
            t.host,
            t.port,
            t.path + self.path_and_query,
            t.headers,
            t.degraded,
        )

    @property
    def targets(self) -> tuple[Target, ...]:
        """Where the request goes, in failover order: each region's base path + the request's path and
        query. Built when asked (the runtime walks it once) rather than for every decision."""
        tail = self.path_and_query
        return tuple(
            [
                Target(t.region, t.priority, t.scheme, t.host, t.port, t.path + tail, t.headers, t.degraded)
                for t in self.regions
            ]
        )


@dataclass(slots=True)
class Context:
    """What the request phase learned, for the response phase, metrics and tests."""

    path: str | None = None  # normalised
    country: str | None = None
    lat: float | None = None
    lon: float | None = None
    request_class: str | None = None
    priority: str | None = None
    identity: Identity | None = None
    auth_outcome: str = "none"  # "public" | "jwt" | "api_key" | "failed:<reason>" | "none"
    rate_limits: list[RateLimitResult] = field(default_factory=list)  # per rule applied
    rate_limited_by: str | None = None  # name of the rule that refused the request
    region: str | None = None
    routing_priority: str | None = None
    degraded: bool = False
    cors_rule: CorsRule | None = None  # matched for this path
    origin: str | None = None
    cache_rule: CacheRule | None = None
    cache_key: str | None = None
    cache_status: str | None = None  # HIT/MISS/BYPASS/...
    cache_reason: str = ""
    # cache.Lookup of a stored entry that was not fresh: what a 304 from the origin freshens and what
    # stale-if-error serves when the origin fails
    cache_lookup: Lookup | None = None
    cache_revalidate: Forward | None = (
        None  #: the background revalidation a STALE answer (RFC 5861) schedules
    )
    # HeaderView: the request headers as forwarded (the edge's edits applied), what the cache's Vary compares
    cache_request_headers: HeaderView | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """Immutable once built: what happens after the request phase (`engine/steps.py`) makes a new one."""

    outcome: Answer | Forward
    context: Context  # the engine fills it while deciding; later steps replace it, never change it
    trace: tuple[TraceEntry, ...]
    request: EdgeRequest | None = None  # what was decided on (response rules match on it)

    @property
    def answered(self) -> bool:
        return isinstance(self.outcome, Answer)

    def trace_text(self) -> str:
        lines = []
        for entry in self.trace:
            where = f"  ({entry.source})" if entry.source else ""
            detail = f": {entry.detail}" if entry.detail else ""
            lines.append(f"{entry.phase:<11} {entry.outcome:<9} {entry.rule}{detail}{where}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class EdgeResponse:
    status: int
    headers: HeaderView
    body_size: int | None = None

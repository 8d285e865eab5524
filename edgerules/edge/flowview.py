"""The edge's decision as mitmproxy users see it: a one-line summary for `flow.comment` (the flow list of
mitmweb and the console, `~comment` filters) and the full decision with its trace as plain data for
`flow.metadata["edgerules"]` (saved with `-w`, shown by mitmweb, read back by `FlowReader`).

Pure: values in, str/dict/list/int/float/bool/None out; never imports mitmproxy.
"""

from __future__ import annotations

import os
from typing import Any

from edgerules.engine.values import Answer, Decision, EdgeRequest, Forward, TraceEntry
from edgerules.memo import remember

META = "edgerules"  # the flow.metadata key
ERROR_MARK = (
    ":no_entry:"  # flow.marked of a flow the edge answered with an error (mitmweb shows ⛔; `~marked`)
)
SEPARATOR = " | "

# Answers that are not refusals: the edge served the request itself.
SERVED_KINDS = frozenset({"preflight", "cache_hit", "not_modified", "admin"})


def deciding_entry(decision: Decision) -> TraceEntry | None:
    """The trace entry that decided: the refusal for an error answer, the routing choice for a forward, else the
    last entry naming a rule's place in the policy."""
    trace = decision.trace
    if isinstance(decision.outcome, Answer):
        for entry in reversed(trace):
            if entry.outcome == "refused":
                return entry
    else:
        for entry in reversed(trace):
            if entry.phase == "routing" and entry.source:
                return entry
    for entry in reversed(trace):
        # header edits apply to every answer: the rule that answered (cache, CORS, ...) came before them
        if entry.source and entry.phase != "headers":
            return entry
    for entry in reversed(trace):
        if entry.source:
            return entry
    return trace[-1] if trace else None


def is_edge_error(decision: Decision, status: int) -> bool:
    """The edge refused or failed the request itself (not an origin's error status passed on)."""
    outcome = decision.outcome
    if isinstance(outcome, Answer):
        return outcome.kind not in SERVED_KINDS and status >= 400
    return decision.context.error is not None and status >= 400


def decision_data(
    decision: Decision,
    status: int,
    *,
    request: EdgeRequest | None = None,
    origin: str | None = None,
    policy: str | None = None,
) -> dict[str, Any]:
    """The decision as plain data; `origin` is the URL base of the origin that answered (None: none did)."""
    ctx = decision.context
    outcome = decision.outcome
    data: dict[str, Any] = {"policy": policy, "status": status}
    if isinstance(outcome, Answer):
        data["outcome"] = "answer"
        data["kind"] = outcome.kind
        data["failover"] = []
    else:
        assert isinstance(outcome, Forward)
        data["outcome"] = "stream" if outcome.stream else "forward"
        data["kind"] = None
        data["failover"] = [target.region for target in outcome.regions]
    rule = ctx.cache_rule
    data.update(
        error=ctx.error,
        edge_error=is_edge_error(decision, status),
        region=ctx.region,
        routing_priority=ctx.routing_priority,
        degraded=ctx.degraded,
        origin=origin,
        country=ctx.country,
        request_class=ctx.request_class,
        auth=ctx.auth_outcome,
        rate_limited_by=ctx.rate_limited_by,
        cache_rule=getattr(rule, "name", None) if rule is not None else None,
        cache_status=ctx.cache_status,
        cache_reason=ctx.cache_reason or None,
    )
    entry = deciding_entry(decision)
    data["decided_by"] = entry.to_json() if entry is not None else None
    data["trace"] = [
        {"phase": phase, "rule": rule, "outcome": outcome, "detail": detail, "source": source}
        for phase, rule, outcome, detail, source in decision.trace
    ]
    if request is not None:
        data["client"] = {
            "scheme": request.scheme,
            "host": request.host,
            "port": request.port,
            "ip": request.client_ip,
        }
    return data


def summary(data: dict[str, Any]) -> str:
    """One line: what happened, where it went, cache, auth, the rule and file:line that decided.

    e.g. `edge: us-east-1 primary | cache MISS | auth jwt | routing us-east-1 @ aybiza.yaml:259`,
    `edge error: 401 unauthorized | auth failed:missing | auth unauthorized: missing @ aybiza.yaml:132`."""
    parts: list[str] = []
    if data.get("edge_error"):
        head = f"edge error: {data['status']} {data.get('error') or data.get('kind') or ''}".rstrip()
    elif data.get("outcome") == "answer":
        head = f"edge: answered {data['status']} {data.get('kind') or ''}".rstrip()
    elif data.get("region"):
        head = f"edge: {data['region']} {data.get('routing_priority') or ''}".rstrip()
        if data.get("degraded"):
            head += " degraded"
    else:
        head = f"edge: {data.get('outcome', 'forward')}"
    parts.append(head)
    if data.get("cache_status"):
        parts.append(f"cache {data['cache_status']}")
    if data.get("auth") and data["auth"] != "none":
        parts.append(f"auth {data['auth']}")
    if data.get("rate_limited_by"):
        parts.append(f"rate limit {data['rate_limited_by']}")
    entry = data.get("decided_by")
    if entry:
        where = f" @ {_short_source(entry['source'])}" if entry.get("source") else ""
        detail = f": {_clip(entry['detail'])}" if entry.get("detail") and entry["phase"] != "routing" else ""
        parts.append(f"{entry['phase']} {entry['rule']}{detail}{where}")
    return SEPARATOR.join(parts)


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_SOURCES: dict[str, str] = {}


def _short_source(source: str) -> str:
    """`rules/aybiza.yaml:259` -> `aybiza.yaml:259` (the flow list is narrow)."""
    short = _SOURCES.get(source)
    if short is None:
        path, sep, line = source.rpartition(":")
        short = (
            os.path.basename(source) if not sep or not line.isdigit() else f"{os.path.basename(path)}:{line}"
        )
        remember(_SOURCES, source, short)
    return short


def internal_error_data() -> dict[str, Any]:
    return {"outcome": "answer", "kind": "internal_error", "error": "internal_error", "edge_error": True}

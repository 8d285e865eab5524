"""Replay recorded traffic through two policies and report every request whose decision changed.

Flows come from `mitmdump -w FILE`. Each request is decided by the old and the new policy, each with its own
memory store and health registry (all regions healthy unless told otherwise) and the clock set to the time the
request was recorded, so the only differences are the ones the policy change causes. Nothing is sent anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgerules.edge.flowconv import edge_request
from edgerules.engine.core import decide_request
from edgerules.engine.health import HealthRegistry
from edgerules.engine.state import EngineState
from edgerules.engine.values import Answer, Decision, EdgeRequest, TraceEntry
from edgerules.kinds import EdgeRulesError
from edgerules.policy.model import Policy
from edgerules.stores.memory import MemoryStore
from edgerules.tools.policytest import forwarded_headers

# The decision fields compared, in report order.
FIELDS = ("outcome", "status", "region", "routing_priority", "failover", "auth", "cache_rule", "cache_status")


class FlowFileError(EdgeRulesError):
    """The flow file is missing, empty, truncated, not a mitmproxy flow dump, or holds no request to replay."""


ADMIN_PREFIX = "/__edgerules"  # the edge's own endpoints: answered by the proxy, never by the policy


@dataclass(slots=True)
class FlowFile:
    """The requests of a `mitmdump -w` file, as the addon would have seen them (at their recorded time), and the
    flows that are not replayed, counted per reason."""

    path: str
    flows: int = 0
    requests: list[EdgeRequest] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def load_flow_file(path: str) -> FlowFile:
    """Read every flow; raise FlowFileError (a message for the user) unless there is at least one request to
    replay: a gate that replays nothing must not pass."""
    from mitmproxy import http, io  # only this reader needs mitmproxy
    from mitmproxy.exceptions import FlowReadException

    result = FlowFile(path)
    try:
        with open(path, "rb") as handle:
            for flow in io.FlowReader(handle).stream():
                result.flows += 1
                if not isinstance(flow, http.HTTPFlow):
                    result.skip(f"not HTTP ({flow.type})")
                    continue
                req = edge_request(flow, timestamp=flow.request.timestamp_start)
                if req.path == ADMIN_PREFIX or req.path.startswith(ADMIN_PREFIX + "/"):
                    result.skip("edge admin endpoint")
                    continue
                result.requests.append(req)
    except OSError as exc:
        raise FlowFileError(f"{path}: {exc.strerror or exc}") from exc
    except FlowReadException as exc:
        if result.flows == 0:
            raise FlowFileError(f"{path}: not a mitmproxy flow file ({exc})") from exc
        raise FlowFileError(
            f"{path}: truncated or corrupt after {result.flows} flow(s) ({exc}); nothing was replayed"
        ) from exc
    if result.flows == 0:
        raise FlowFileError(
            f"{path}: the file holds no flows (empty); record traffic with `mitmdump ... -w {path}` first"
        )
    if not result.requests:
        raise FlowFileError(
            f"{path}: none of its {result.flows} flow(s) is an HTTP request to replay "
            f"(skipped: {_reasons(result.skipped)})"
        )
    return result


def read_requests(path: str) -> Iterator[EdgeRequest]:
    """The HTTP requests of a `mitmdump -w` file (see `load_flow_file`)."""
    yield from load_flow_file(path).requests


def _reasons(skipped: dict[str, int]) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in skipped.items()) or "none"


class _Clock:
    """The engine's notion of now, pinned to the request being replayed."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True, slots=True)
class Digest:
    """What an author cares about in one decision (values as short strings; "-" when not applicable)."""

    values: dict[str, str]
    headers: dict[
        str, str
    ]  # header fields the first region receives (lower-case names), as the edge sends them
    trace: tuple[TraceEntry, ...]

    @classmethod
    def of(cls, decision: Decision) -> Digest:
        ctx = decision.context
        outcome = decision.outcome
        values = dict.fromkeys(FIELDS, "-")
        headers: dict[str, str] = {}
        if isinstance(outcome, Answer):
            values["outcome"] = f"answer {outcome.kind}"
            values["status"] = str(outcome.status)
        else:
            values["outcome"] = "stream" if outcome.stream else "forward"
            first = outcome.targets[0] if outcome.targets else None
            if first is not None:
                values["region"] = first.region
                values["routing_priority"] = first.priority + (" (degraded)" if first.degraded else "")
            values["failover"] = " > ".join(t.region for t in outcome.targets) or "-"
            sent = forwarded_headers(decision.request, decision) if decision.request is not None else []
            for name, value in sent:
                key = name.lower()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
        values["auth"] = ctx.auth_outcome
        rule = ctx.cache_rule
        values["cache_rule"] = getattr(rule, "name", None) or ("-" if rule is None else str(rule))
        values["cache_status"] = ctx.cache_status or "-"
        return cls(values, headers, tuple(decision.trace))


@dataclass(slots=True)
class Change:
    index: int  # 1-based position in the flow file
    request: EdgeRequest
    country: str | None
    fields: dict[str, tuple[str, str]]  # field -> (old, new)
    headers: dict[str, tuple[str | None, str | None]]  # header -> (old, new); None = not set
    new_trace: list[TraceEntry]  # trace entries of the new decision that the old one did not have

    def to_json(self) -> dict[str, Any]:
        req = self.request
        return {
            "index": self.index,
            "method": req.method,
            "path": req.path + (f"?{req.query}" if req.query else ""),
            "country": self.country,
            "changes": {name: {"old": old, "new": new} for name, (old, new) in self.fields.items()},
            "headers": {name: {"old": old, "new": new} for name, (old, new) in self.headers.items()},
            "new_trace": [entry.to_json() for entry in self.new_trace],
        }


@dataclass(slots=True)
class ReplayReport:
    total: int = 0
    changes: list[Change] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # flows not replayed, per reason

    def counts(self) -> dict[str, int]:
        """How many requests changed per field ("headers" included)."""
        out: dict[str, int] = {}
        for change in self.changes:
            for name in (*change.fields, *(["headers"] if change.headers else [])):
                out[name] = out.get(name, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.total,
            "changed": len(self.changes),
            "skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(self.skipped),
            "by_field": self.counts(),
            "changes": [change.to_json() for change in self.changes],
        }


def _new_state(clock: _Clock, down: Sequence[str]) -> EngineState:
    health = HealthRegistry()
    for region in down:
        health.force(region, False)
    return EngineState(MemoryStore(), health, now=clock)


def compare(index: int, req: EdgeRequest, old: Decision, new: Decision) -> Change | None:
    a, b = Digest.of(old), Digest.of(new)
    fields = {name: (a.values[name], b.values[name]) for name in FIELDS if a.values[name] != b.values[name]}
    headers = {
        name: (a.headers.get(name), b.headers.get(name))
        for name in sorted(a.headers.keys() | b.headers.keys())
        if a.headers.get(name) != b.headers.get(name)
    }
    if not fields and not headers:
        return None
    seen = {_trace_key(entry) for entry in a.trace}
    return Change(
        index,
        req,
        new.context.country or old.context.country,
        fields,
        headers,
        [entry for entry in b.trace if _trace_key(entry) not in seen],
    )


def _trace_key(entry: TraceEntry) -> tuple[str, str, str, str]:
    """A trace entry without its source: the same rule at another line (or in another file) is not news."""
    return (entry.phase, entry.rule, entry.outcome, entry.detail)


async def replay(
    requests: Iterable[EdgeRequest],
    old: Policy,
    new: Policy,
    *,
    down: Sequence[str] = (),
    skipped: dict[str, int] | None = None,
) -> ReplayReport:
    """Decide every request with both policies (in order, each policy keeping its own rate-limit state)."""
    clock = _Clock()
    old_state, new_state = _new_state(clock, down), _new_state(clock, down)
    report = ReplayReport(skipped=dict(skipped or {}))
    try:
        for index, req in enumerate(requests, start=1):
            clock.now = req.timestamp
            before = await decide_request(req, old, old_state)
            after = await decide_request(req, new, new_state)
            report.total += 1
            change = compare(index, req, before, after)
            if change is not None:
                report.changes.append(change)
    finally:
        await old_state.store.close()
        await new_state.store.close()
    return report


# ------------------------------------------------------------------------------------------------- rendering


def render_json(report: ReplayReport) -> str:
    return json.dumps(report.to_json(), indent=2)


def render_text(report: ReplayReport) -> str:
    lines = [
        f"replayed {report.total} requests: {len(report.changes)} changed, "
        f"{report.total - len(report.changes)} unchanged",
        f"skipped {sum(report.skipped.values())} flows"
        + (f": {_reasons(report.skipped)}" if report.skipped else ""),
    ]
    if not report.changes:
        return "\n".join(lines)
    lines += ["", "changed per field:"]
    lines += [f"  {name:<17} {count}" for name, count in report.counts().items()]
    rows = [("#", "METHOD", "PATH", "COUNTRY", "CHANGED")]
    for change in report.changes:
        req = change.request
        summary = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in change.fields.items())
        if change.headers:
            summary = ", ".join(filter(None, [summary, f"{len(change.headers)} header(s)"]))
        rows.append((str(change.index), req.method, req.path, change.country or "-", summary))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines.append("")
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    lines += ["", "details:"]
    for change in report.changes:
        req = change.request
        lines.append(f"#{change.index} {req.method} {req.url} (country {change.country or '-'})")
        for name, (old, new) in change.fields.items():
            lines.append(f"    {name}: {old} -> {new}")
        for name, (old_value, new_value) in change.headers.items():
            lines.append(
                f"    header {name}: {old_value if old_value is not None else '(unset)'} -> "
                f"{new_value if new_value is not None else '(unset)'}"
            )
        for entry in change.new_trace:
            where = f"  ({entry.source})" if entry.source else ""
            detail = f": {entry.detail}" if entry.detail else ""
            lines.append(f"    now: {entry.phase} {entry.outcome} {entry.rule}{detail}{where}")
    return "\n".join(lines)

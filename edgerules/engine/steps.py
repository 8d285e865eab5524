"""After the request phase: the engine's step function for a forwarded request.

The request phase (`core.decide_request`) ends with a `Forward`: the regions to try in order and the header
edits. What happens next depends on what the origins do, and that is decided here too, by a pure function:

    first_step(decision, method)                        -> Try(target 0)
    next_step(policy, decision, step, event, now)       -> Try(next target) | Done(final decision)

`event` says what the origin did on that try (`OriginEvent`: a response's status and headers, or
`connect_error`, `timeout`, `protocol_error`). The rules, in one place:

- `connect_error` (nothing was sent): the next target; after the last one, 503 `all_regions_down`.
- `protocol_error` (the origin broke the exchange): the next target for idempotent methods, else stop; 502
  `upstream_protocol_error` (one origin's fault, not every region down).
- `timeout`: stop, 504 `upstream_timeout` (the request may have had effects; waiting again would double the
  client's wait).
- a 304 to the conditional request the engine made from a stored entry: the entry, freshened by the 304,
  answers the client (`REVALIDATED`, `Done.freshen` is what the cache writes); a 304 that does not select the
  entry: the request again, from the first target, without conditions.
- a 5xx, or any stop above, while the stored entry is within its stale-if-error window: the entry (`STALE`);
  not a stored 5xx in place of the origin's own 5xx.
- any other response: relayed to the client (`Done.relay`).

The live edge (`runtime.forward`, and the stale-while-revalidate refresh), `edgerules test` and
`edgerules explain` all run `drive`, which loops over these two functions with their own `send`: real
I/O in the runtime, a simulated origin offline. So what the offline tools show is what the edge does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from edgerules.cache.http import CacheEntry, merge_304, revalidation_headers, stale_if_error_ok
from edgerules.engine.core import answer_from_entry, body_limit
from edgerules.engine.errors import error_answer
from edgerules.engine.headers import HeaderEdits
from edgerules.engine.values import Answer, Decision, Forward, Target, TraceEntry
from edgerules.kinds import ErrorKind
from edgerules.policy.model import Policy

if TYPE_CHECKING:
    from edgerules.cache.response import Lookup

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
RESPONSE, CONNECT_ERROR, TIMEOUT, PROTOCOL_ERROR = "response", "connect_error", "timeout", "protocol_error"
TOO_LARGE = "too_large"  # the answer passed the edge's cap on buffered origin bodies: no failover
EVENT_KINDS = (RESPONSE, CONNECT_ERROR, TIMEOUT, PROTOCOL_ERROR)
_REASON = {
    CONNECT_ERROR: "connect",
    TIMEOUT: "timeout",
    PROTOCOL_ERROR: "protocol",
    TOO_LARGE: "too_large",
}  # in error bodies
_CONDITIONAL = frozenset({"if-none-match", "if-modified-since"})


class OriginEvent(NamedTuple):
    """What the origin did on one try."""

    kind: str  # RESPONSE | CONNECT_ERROR | TIMEOUT | PROTOCOL_ERROR
    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()  # the response's end-to-end fields
    detail: str = ""
    sent_at: float = 0.0  # epoch seconds the request went out and the response came back (cache ages)
    received_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Try:
    """Send the request to `target` with `edits` applied to the client's end-to-end header fields."""

    target: Target
    attempt: int  # index in the decision's targets
    method: str
    edits: HeaderEdits
    unconditional: bool = False  # the refetch after a 304 that did not select the stored entry
    notes: tuple[TraceEntry, ...] = ()  # what the tries so far added to the trace


@dataclass(frozen=True, slots=True)
class Done:
    """The finished decision. Its outcome is the `Answer` the client gets (an error, the stored entry), or,
    with `relay`, the `Forward` whose origin response (the last event) the client gets."""

    decision: Decision
    relay: bool = False
    freshen: CacheEntry | None = None  # the stored entry freshened by a 304: the cache writes it back


def first_step(decision: Decision, method: str) -> Try:
    forward = decision.outcome
    assert isinstance(forward, Forward)
    target = forward.target(0)
    return Try(target, 0, method, forward.target_edits(target))


def next_step(policy: Policy, decision: Decision, step: Try, event: OriginEvent, now: float) -> Try | Done:
    forward = decision.outcome
    assert isinstance(forward, Forward)
    target = step.target
    if event.kind != RESPONSE:
        notes = (*step.notes, TraceEntry("upstream", target.region, event.kind, event.detail))
        again = event.kind == CONNECT_ERROR or (event.kind == PROTOCOL_ERROR and step.method in IDEMPOTENT)
        if again and step.attempt + 1 < len(forward.regions):
            return _try(forward, step, step.attempt + 1, notes, step.unconditional)
        stale = _stale_if_error(decision, step, now, notes, None)
        if stale is not None:
            return stale
        kind: ErrorKind = (
            "upstream_timeout"
            if event.kind == TIMEOUT
            else "upstream_too_large"
            if event.kind == TOO_LARGE
            else "upstream_protocol_error"
            if event.kind == PROTOCOL_ERROR
            else "all_regions_down"
        )
        ctx = dataclasses.replace(decision.context, error=kind)
        answer = error_answer(policy, kind, reason=_REASON.get(event.kind))
        return Done(Decision(answer, ctx, (*decision.trace, *notes), decision.request))
    notes = step.notes
    ctx = decision.context
    if event.status == 304 and not step.unconditional and _made_conditional(decision):
        lookup, rule = ctx.cache_lookup, ctx.cache_rule
        # _made_conditional: a stored entry was looked up under a cache rule
        assert lookup is not None and lookup.entry is not None and rule is not None
        merged = merge_304(
            lookup.entry, event.headers, request_time=event.sent_at, response_time=event.received_at
        )
        if merged is None:
            notes = (*notes, TraceEntry("cache", rule.name, "refetch", "304 for another entry"))
            return _try(forward, step, 0, notes, True)
        return _from_entry(decision, merged, "REVALIDATED", now, notes, target, freshen=merged)
    if event.status >= 500 and ctx.cache_lookup is not None and _entry_status(ctx.cache_lookup) < 500:
        stale = _stale_if_error(decision, step, now, notes, target)
        if stale is not None:
            return stale
    if not notes and target.region == ctx.region and target.priority == ctx.routing_priority:
        return Done(decision, relay=True)  # the common case: the first target answered
    ctx = dataclasses.replace(ctx, region=target.region, routing_priority=target.priority)
    return Done(Decision(forward, ctx, (*decision.trace, *notes), decision.request), relay=True)


def _try(
    forward: Forward, step: Try, attempt: int, notes: tuple[TraceEntry, ...], unconditional: bool
) -> Try:
    target = forward.target(attempt)
    edits = forward.target_edits(target)
    if unconditional:
        edits = edits.without_set(_CONDITIONAL)
    return Try(target, attempt, step.method, edits, unconditional, notes)


def _entry_status(lookup: Lookup) -> int:
    return lookup.entry.status if lookup.entry is not None else 0


def _made_conditional(decision: Decision) -> bool:
    """Did the engine send a stored entry's validators with this request (so a 304 is for the cache)?"""
    lookup = decision.context.cache_lookup
    return lookup is not None and lookup.entry is not None and bool(revalidation_headers(lookup.entry))


def _stale_if_error(
    decision: Decision, step: Try, now: float, notes: tuple[TraceEntry, ...], target: Target | None
) -> Done | None:
    """The origin failed (unreachable, timeout, broken, 5xx): the stale entry within its stale-if-error
    window, if the request phase found one (not after a refetch: that entry was not selected)."""
    ctx = decision.context
    lookup, rule = ctx.cache_lookup, ctx.cache_rule
    if step.unconditional or lookup is None or lookup.entry is None or rule is None:
        return None
    if not stale_if_error_ok(rule, lookup.entry, now):
        return None
    return _from_entry(decision, lookup.entry, "STALE", now, notes, target)


def _from_entry(
    decision: Decision,
    entry: CacheEntry,
    status: str,
    now: float,
    notes: tuple[TraceEntry, ...],
    target: Target | None,
    *,
    freshen: CacheEntry | None = None,
) -> Done:
    ctx = decision.context
    request = decision.request
    request_headers = request.headers if request is not None else ()
    answer = answer_from_entry(entry, request_headers, now, request.method if request is not None else "GET")
    changes: dict[str, Any] = {"cache_status": status, "error": None}
    if target is not None:
        changes.update(region=target.region, routing_priority=target.priority)
    ctx = dataclasses.replace(ctx, **changes)
    assert ctx.cache_rule is not None  # a stored entry answers only under the rule it was stored with
    note = TraceEntry("cache", ctx.cache_rule.name, status, f"{answer.status} from the stored entry")
    trace = (*decision.trace, *notes, note)
    return Done(Decision(answer, ctx, trace, decision.request), relay=False, freshen=freshen)


def body_received(policy: Policy, decision: Decision, size: int) -> Decision | None:
    """The request body, once read, against the policy's limit (the declared length may lie or be absent):
    a new decision answering 413, or None when it fits."""
    limit = body_limit(policy, decision.context.request_class)  # its class's own, else validation's
    if limit is None or size <= limit:
        return None
    answer = error_answer(policy, "payload_too_large")
    ctx = dataclasses.replace(decision.context, error=answer.kind)
    note = TraceEntry("validation", "max_body_size", "refused", f"{size} bytes > {limit}")
    return Decision(answer, ctx, (*decision.trace, note), decision.request)


type Send = Callable[[Try], Awaitable[OriginEvent]]


async def drive(
    policy: Policy, decision: Decision, method: str, send: Send, clock: Callable[[], float]
) -> tuple[Done, list[tuple[Try, OriginEvent]]]:
    """Run the steps with `send` doing each try: the one failover loop of the edge and the offline tools.
    Returns the finished decision and every (try, event), in order."""
    tries: list[tuple[Try, OriginEvent]] = []
    step: Try | Done = first_step(decision, method)
    while isinstance(step, Try):
        event = await send(step)
        tries.append((step, event))
        step = next_step(policy, decision, step, event, clock())
    return step, tries


def is_answer(done: Done) -> bool:
    return isinstance(done.decision.outcome, Answer)

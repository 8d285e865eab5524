"""The engine's step function: what happens after the request phase, as a pure function of what origins do."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from edgerules.engine.steps import (
    CONNECT_ERROR,
    PROTOCOL_ERROR,
    RESPONSE,
    TIMEOUT,
    Done,
    OriginEvent,
    Try,
    body_received,
    drive,
    first_step,
    next_step,
)
from edgerules.engine.values import Answer, Forward
from tests.engine_support import bearer, decide, request, seed_policy


def _run(method: str, events: list[OriginEvent], body_size: int | None = None):
    policy = seed_policy()
    decision = decide(
        request(
            method, "/api/v1/calls/1", {**bearer(), "Content-Type": "application/json"}, body_size=body_size
        )
    )
    assert isinstance(decision.outcome, Forward), decision.trace_text()
    script = iter(events)

    async def send(step: Try) -> OriginEvent:
        return next(script)

    done, tries = asyncio.run(drive(policy, decision, method, send, lambda: 0.0))
    return decision, done, [step.target.region for step, _ in tries]


OK = OriginEvent(RESPONSE, 200, (("Content-Type", "application/json"),))


def test_the_first_region_answering_leaves_the_decision_as_it_was():
    decision, done, tried = _run("GET", [OK])
    assert done == Done(decision, relay=True) and tried == ["us-east-1"]


def test_connect_errors_fail_over_and_the_decision_names_the_region_that_answered():
    decision, done, tried = _run("POST", [OriginEvent(CONNECT_ERROR, detail="refused"), OK], body_size=0)
    assert tried == ["us-east-1", "us-west-2"]
    assert done.relay and done.decision.context.region == "us-west-2"
    assert done.decision.context.routing_priority == "secondary"
    assert decision.context.region == "us-east-1"  # the request phase's decision is not changed
    assert done.decision.trace[-1][:3] == ("upstream", "us-east-1", CONNECT_ERROR)


def test_a_timeout_stops_with_504():
    _, done, tried = _run("GET", [OriginEvent(TIMEOUT)])
    assert tried == ["us-east-1"]
    answer = done.decision.outcome
    assert isinstance(answer, Answer) and answer.status == 504 and answer.kind == "upstream_timeout"
    assert done.decision.context.error == "upstream_timeout"


def test_a_broken_exchange_fails_over_only_for_idempotent_methods():
    _, done, tried = _run("GET", [OriginEvent(PROTOCOL_ERROR), OK])
    assert tried == ["us-east-1", "us-west-2"] and done.relay
    _, done, tried = _run("POST", [OriginEvent(PROTOCOL_ERROR)], body_size=0)
    assert tried == ["us-east-1"] and done.decision.outcome.status == 502


def test_an_origin_protocol_error_is_a_502_of_its_own_kind_not_every_region_down():
    """One origin breaking HTTP (e.g. a Transfer-Encoding the strict parser refuses) is that origin's fault."""
    _, done, _ = _run(
        "GET", [OriginEvent(PROTOCOL_ERROR, detail="both Content-Length and Transfer-Encoding")] * 3
    )
    answer = done.decision.outcome
    assert isinstance(answer, Answer) and answer.status == 502 and answer.kind == "upstream_protocol_error"
    assert done.decision.context.error == "upstream_protocol_error"
    assert json.loads(answer.body)["reason"] == "protocol"


def test_every_region_unreachable_is_503_with_the_reason():
    _, done, tried = _run("GET", [OriginEvent(CONNECT_ERROR)] * 3)
    assert tried == ["us-east-1", "us-west-2", "eu-west-1"]
    answer = done.decision.outcome
    assert answer.status == 503 and json.loads(answer.body)["reason"] == "connect"


def test_a_5xx_without_a_stored_entry_is_relayed():
    _, done, _ = _run("GET", [OriginEvent(RESPONSE, 503)])
    assert done.relay


def test_the_body_check_is_the_engines_and_makes_a_new_decision():
    policy = seed_policy()
    decision = decide(
        request("POST", "/api/v1/calls", {**bearer(), "Content-Type": "application/json"}, body_size=0)
    )
    assert body_received(policy, decision, 10) is None
    refused = body_received(policy, decision, policy.validation.max_body_size + 1)
    assert (
        refused is not None and refused.outcome.status == 413 and refused.context.error == "payload_too_large"
    )
    assert isinstance(decision.outcome, Forward)


def test_decisions_are_immutable():
    decision = decide(request("GET", "/api/v1/calls/1", bearer()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.outcome = None  # type: ignore[misc]
    step = first_step(decision, "GET")
    assert isinstance(next_step(seed_policy(), decision, step, OK, 0.0), Done)

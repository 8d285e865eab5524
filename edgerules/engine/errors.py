"""The edge's own answers for every failure: JSON bodies like the seed's `{"error": message}`."""

from __future__ import annotations

from collections.abc import Iterable

from edgerules.engine.values import Answer
from edgerules.kinds import ErrorKind
from edgerules.policy.model import DEFAULT_ERRORS, Policy


def error_answer(
    policy: Policy | None,
    kind: ErrorKind,
    *,
    headers: Iterable[tuple[str, str]] = (),
    reason: str | None = None,
) -> Answer:
    spec = (policy.errors.get(kind) if policy is not None else None) or DEFAULT_ERRORS[kind]
    extra = list(spec.headers)
    if spec.retry_after is not None:
        extra.append(("Retry-After", str(spec.retry_after)))
    extra.extend(headers)
    payload: dict[str, str] = {"error": spec.message}
    if reason:
        payload["reason"] = reason
    return Answer.json(spec.status, payload, kind, [*extra, ("Cache-Control", "no-store")])

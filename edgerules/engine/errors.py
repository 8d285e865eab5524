"""The edge's own answers for every failure: JSON bodies like the seed's `{"error": message}`."""

from __future__ import annotations

from collections.abc import Iterable

from edgerules.engine.values import Answer
from edgerules.model import ErrorAnswer, Policy

# Used when a policy does not override a kind (the compiler fills these in too; this keeps the engine total).
DEFAULT_ERRORS: dict[str, ErrorAnswer] = {
    "path_not_allowed": ErrorAnswer(400, "Invalid API path"),
    "invalid_request": ErrorAnswer(400, "Invalid request format"),
    "method_not_allowed": ErrorAnswer(405, "Method not allowed"),
    "content_type_required": ErrorAnswer(400, "Content-Type header required"),
    "unsupported_media_type": ErrorAnswer(415, "Invalid content type"),
    "payload_too_large": ErrorAnswer(413, "Request too large"),
    "uri_too_long": ErrorAnswer(414, "URI too long"),
    "headers_too_large": ErrorAnswer(431, "Request header fields too large"),
    "unauthorized": ErrorAnswer(401, "Authentication required"),
    "forbidden": ErrorAnswer(403, "Forbidden"),
    "rate_limited": ErrorAnswer(429, "Rate limit exceeded"),
    "upstream_timeout": ErrorAnswer(504, "Request timeout"),
    "upstream_unreachable": ErrorAnswer(502, "Upstream unreachable"),
    "all_regions_down": ErrorAnswer(503, "Service temporarily unavailable", retry_after=30),
    "auth_unavailable": ErrorAnswer(503, "Authentication service unavailable", retry_after=5),
    "not_found": ErrorAnswer(404, "Not found"),
    "internal_error": ErrorAnswer(500, "Internal server error"),
}


def error_answer(
    policy: Policy | None,
    kind: str,
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

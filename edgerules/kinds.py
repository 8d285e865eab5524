"""The closed vocabularies of the edge, and the one exception root.

Every kind below is a `Literal`, so mypy (in `make lint`) refuses a misspelt kind where it is written instead of a
`KeyError` answered 500 at request time; tests/unit/test_kinds.py checks that every error kind has its default answer
(`model.DEFAULT_ERRORS`) and a key in the policy schema's `errors` section. A leaf: imports nothing from edgerules.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "ANSWER_KINDS",
    "AUTH_REASONS",
    "ERROR_KINDS",
    "TRACE_PHASES",
    "UPSTREAM_FAILURES",
    "AnswerKind",
    "AuthReason",
    "EdgeRulesError",
    "ErrorKind",
    "ServedKind",
    "TracePhase",
    "UpstreamFailure",
]


class EdgeRulesError(Exception):
    """The root of every exception edgerules raises on purpose (`except EdgeRulesError` catches them all)."""


# Every answer the edge gives itself for a failure; a policy's `errors:` section may change each one.
ErrorKind = Literal[
    "path_not_allowed",
    "invalid_request",
    "method_not_allowed",
    "content_type_required",
    "unsupported_media_type",
    "payload_too_large",
    "uri_too_long",
    "headers_too_large",
    "unauthorized",
    "forbidden",
    "rate_limited",
    "upstream_timeout",
    "upstream_unreachable",
    "upstream_too_large",
    "upstream_protocol_error",
    "all_regions_down",
    "auth_unavailable",
    "limits_unavailable",
    "not_found",
    "internal_error",
]

# `Answer.kind`: an error kind, or an answer that is no failure (served from the cache, a CORS preflight, an
# admin endpoint; `length_required` is the admin endpoints' own 411).
ServedKind = Literal["preflight", "cache_hit", "not_modified", "admin", "length_required"]
AnswerKind = ErrorKind | ServedKind

# `TraceEntry.phase`: the step of the decision (or of the forwarding) that wrote the entry.
TracePhase = Literal[
    "normalise",
    "geo",
    "validation",
    "cors",
    "strip",
    "classify",
    "auth",
    "ratelimit",
    "cache",
    "routing",
    "headers",
    "upstream",
]

# `UpstreamError.kind`: nothing was sent (connect), no answer in time (timeout), the origin broke the exchange.
# too_large: the answer's body passed the edge's cap on buffered origin bodies (`edgerules_max_origin_body`).
UpstreamFailure = Literal["connect", "timeout", "protocol", "too_large"]

# `AuthFailure.reason`: the precise reason (log, metrics, trace); a 401 tells the client only a generic one.
AuthReason = Literal[
    "missing",
    "malformed",
    "malformed_authorization",
    "duplicate_header",
    "unsupported_scheme",
    "scheme_not_allowed",
    "too_long",
    "misconfigured",
    "alg_not_allowed",
    "unsupported_crit",
    "unknown_kid",
    "bad_signature",
    "bad_key",
    "expired",
    "not_yet_valid",
    "missing_claim",
    "bad_issuer",
    "bad_audience",
    "bad_claim",
    "unknown_key",
    "inactive",
    "malformed_record",
]

ERROR_KINDS: tuple[ErrorKind, ...] = get_args(ErrorKind)
ANSWER_KINDS: tuple[AnswerKind, ...] = (*ERROR_KINDS, *get_args(ServedKind))
TRACE_PHASES: tuple[TracePhase, ...] = get_args(TracePhase)
UPSTREAM_FAILURES: tuple[UpstreamFailure, ...] = get_args(UpstreamFailure)
AUTH_REASONS: tuple[AuthReason, ...] = get_args(AuthReason)

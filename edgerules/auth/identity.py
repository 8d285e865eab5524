"""Authenticated identity, its forwarded headers, and the Authorization header parser.

A client must never be able to send its own `X-User-*` headers to the origin: `is_spoofable_header` is what
the engine uses to strip every variant from every request before adding its own.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from edgerules.kinds import AuthReason, EdgeRulesError
from edgerules.memo import remember
from edgerules.policy.model import IdentityHeaderNames
from edgerules.timefmt import utc_iso_millis

AuthMethod = Literal["jwt", "api_key"]


class AuthFailure(EdgeRulesError):
    """Authentication refused. `reason` is a short machine code (trace, metrics); `message` is for humans."""

    def __init__(self, reason: AuthReason, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.message = message or reason

    def __repr__(self) -> str:
        return f"AuthFailure({self.reason!r}, {self.message!r})"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who made the request. `principal` is stable and never contains the raw credential."""

    user: str
    role: str
    permissions: tuple[str, ...]
    method: AuthMethod
    principal: str
    # Per-credential rate limit (limit, window seconds), set for API keys that carry one.
    rate_limit: tuple[int, float] | None = None


IDENTITY_HEADERS = IdentityHeaderNames()


class HeaderNames(Protocol):
    """Anything with the four name attributes (e.g. `edgerules.policy.model.IdentityHeaderNames`)."""

    @property
    def user(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def permissions(self) -> str: ...
    @property
    def authenticated_at(self) -> str: ...


MAX_PERMISSIONS = 256
MAX_PERMISSIONS_HEADER = 8192


def safe_header_value(value: object, max_len: int = 1024) -> bool:
    """True if `value` can be forwarded verbatim as a header value.

    Refuses non-strings, CR/LF/NUL and every other control or separator character (C0, C1, U+2028...),
    surrounding whitespace (an HTTP stack would trim it and change the value) and over-long values.
    """
    return (
        isinstance(value, str)
        and len(value) <= max_len
        and value.isprintable()
        and value == value.strip(" \t")
    )


def valid_identity_fields(user: object, role: object, permissions: object) -> bool:
    """Shared claim/record check: user and role non-empty safe strings, permissions a list of safe strings."""
    if not (isinstance(user, str) and user and safe_header_value(user)):
        return False
    if not (isinstance(role, str) and role and safe_header_value(role)):
        return False
    if not isinstance(permissions, list | tuple) or len(permissions) > MAX_PERMISSIONS:
        return False
    return all(isinstance(p, str) and p and safe_header_value(p, 256) for p in permissions)


def _normalise_name(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def is_spoofable_header(name: str, protected_names: Iterable[str] = IDENTITY_HEADERS.all()) -> bool:
    """True if a client-sent header `name` could be mistaken for an identity header.

    Case-insensitive, `_` treated as `-` (some servers map `X_User_Id` to the same variable), and any
    `X-User-*` name is covered whatever the configured names are. A protected name ending in `*`
    (`X-Auth-*`) protects every name with that prefix.
    """
    return _is_spoofable(name, tuple(protected_names))


@functools.lru_cache(maxsize=4096)  # runs for every header of every request; header names repeat
def _is_spoofable(name: str, protected_names: tuple[str, ...]) -> bool:
    norm = _normalise_name(name)
    if norm.startswith("x-user-") or norm == "x-user":
        return True
    for protected in protected_names:
        p = _normalise_name(protected)
        if p.endswith("*"):
            if norm.startswith(p[:-1]):
                return True
        elif norm == p:
            return True
    return False


def identity_headers(
    identity: Identity,
    names: HeaderNames | Mapping[str, str] = IDENTITY_HEADERS,
    now: float | None = None,
    memo: dict[int, CheckedIdentity] | None = None,
) -> list[tuple[str, str]]:
    """Headers the engine adds to the upstream request. Values are re-checked here (defence in depth).

    `names` has attributes (or keys) user, role, permissions, authenticated_at; `now` is epoch seconds. `memo`
    (the prepared policy's) remembers the checks per identity object: the verifier's cache hands out the same
    Identity for the same token, and the checks cost more than the rest. Keyed by object identity (hashing the
    dataclass costs more than the lookup); the entry holds the identity, so its id cannot be reused meanwhile.
    """
    entry = memo.get(id(identity)) if memo is not None else None
    if entry is None or entry[0] is not identity or entry[1] is not names:
        entry = _check(identity, names)
        if memo is not None:
            remember(memo, id(identity), entry)
    return [*entry[2], (entry[3], utc_iso_millis(time.time() if now is None else now))]


# What `_check` returns: (identity, names, its user/role/permissions headers, the authenticated-at header name).
CheckedIdentity = tuple[Identity, object, tuple[tuple[str, str], ...], str]


def _check(identity: Identity, names: HeaderNames | Mapping[str, str]) -> CheckedIdentity:
    """The defence-in-depth checks and the JSON encoding of the permissions."""
    if type(names) is dict or isinstance(names, Mapping):  # dict first: an ABC check is slow
        user_h, role_h, perms_h, at_h = (
            names["user"],
            names["role"],
            names["permissions"],
            names["authenticated_at"],
        )
    else:
        user_h, role_h, perms_h, at_h = names.user, names.role, names.permissions, names.authenticated_at
    if not valid_identity_fields(identity.user, identity.role, identity.permissions):
        raise AuthFailure("bad_claim", "identity contains a value that is not a safe header value")
    permissions = json.dumps(list(identity.permissions), separators=(",", ":"), ensure_ascii=True)
    if len(permissions) > MAX_PERMISSIONS_HEADER:
        raise AuthFailure("bad_claim", "permissions too large for a header")
    pairs = ((user_h, identity.user), (role_h, identity.role), (perms_h, permissions))
    return (identity, names, pairs, at_h)


# RFC 9110 auth-scheme (token) SP token68. Exactly one space, nothing around, no commas (so no
# "Bearer a, API-Key b" lists), no second credential.
_AUTHZ = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([0-9A-Za-z._~+/-]+=*)")
MAX_AUTHORIZATION_LENGTH = 16_384


def parse_authorization(header_values: list[str], schemes: Collection[str] | None = None) -> tuple[str, str]:
    """Parse the Authorization header(s) of a request into (scheme lower-cased, credentials).

    `header_values` is every Authorization value the client sent. Missing, repeated, empty,
    whitespace-padded, list-valued or control-character values raise AuthFailure. If `schemes` is
    given (e.g. {"bearer", "api-key"}), any other scheme raises AuthFailure("unsupported_scheme").
    """
    if not header_values:
        raise AuthFailure("missing", "Authorization header required")
    if len(header_values) > 1:
        raise AuthFailure("duplicate_header", "more than one Authorization header")
    value = header_values[0]
    if not isinstance(value, str):
        raise AuthFailure("malformed_authorization", "Authorization header is not text")
    if len(value) > MAX_AUTHORIZATION_LENGTH:
        raise AuthFailure("too_long", "Authorization header too long")
    match = _AUTHZ.fullmatch(value)
    if match is None:
        raise AuthFailure("malformed_authorization", "Authorization must be '<scheme> <credentials>'")
    scheme, credentials = match.groups()
    scheme = scheme.lower()
    if schemes is not None and scheme not in {s.lower() for s in schemes}:
        raise AuthFailure("unsupported_scheme", "unsupported authorization scheme")
    return scheme, credentials

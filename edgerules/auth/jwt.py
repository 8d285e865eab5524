"""Bearer JWT verification: strict parsing, algorithm allowlist, PyJWT for signatures and claims, LRU cache.

RFC 7515/7519 with the RFC 8725 best practices (the classic mistakes: `atob` instead of base64url, no
algorithm allowlist, no `nbf`, a non-constant-time compare). Every segment is strict base64url, `alg` must be
allowlisted and match the key type (HS* only with the configured secret, asymmetric only with a JWKS key),
PyJWT verifies the signature (constant time) and iss/aud/required claims.

Time claims (exp/nbf/iat) are checked here, with the same rules as PyJWT, against the injected clock so that
the verification cache and the claim checks share one notion of "now" (PyJWT reads the wall clock itself).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import jwt as pyjwt
from jwt import PyJWK
from jwt import exceptions as jwt_errors

from edgerules.auth.identity import AuthFailure, Identity, valid_identity_fields
from edgerules.auth.jwks import ASYMMETRIC_ALGORITHMS, JwksSource
from edgerules.kinds import AuthReason
from edgerules.policy.model import ClaimMapping, JwtConfig

__all__ = ["AuthFailure", "ClaimMapping", "Identity", "JwtConfig", "JwtVerifier"]

# RFC 7518 3.2: an HMAC key at least as long as the hash output (PyJWT enforces it when verifying).
HMAC_MIN_SECRET = {"HS256": 32, "HS384": 48, "HS512": 64}
HMAC_ALGORITHMS = frozenset(HMAC_MIN_SECRET)
SUPPORTED_ALGORITHMS = HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS
CACHE_MAX_AGE = 300.0
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url_decode_strict(segment: str) -> bytes:
    """Decode unpadded base64url, refusing padding, other alphabets and non-canonical trailing bits."""
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise AuthFailure("malformed", "segment is not base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise AuthFailure("malformed", "segment is not base64url") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != segment:
        raise AuthFailure("malformed", "non-canonical base64url")
    return raw


class _DuplicateMember(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _DuplicateMember("duplicate member")
    return result


def _parse_header(segment: str) -> dict[str, Any]:
    try:
        header = json.loads(b64url_decode_strict(segment), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError):
        raise AuthFailure("malformed", "header is not a JSON object") from None
    if not isinstance(header, dict):
        raise AuthFailure("malformed", "header is not a JSON object")
    return header


def _no_duplicate_claims(segment: str) -> None:
    """Refuse a payload that names a claim twice: PyJWT keeps the last value, other parsers the first, so
    `{"sub": "alice", "sub": "root"}` would mean different users to the edge and to the origin."""
    try:
        json.loads(b64url_decode_strict(segment), object_pairs_hook=_no_duplicates)
    except _DuplicateMember:
        raise AuthFailure("malformed", "duplicate claim in the payload") from None
    except ValueError:
        pass  # not JSON at all: PyJWT says so below
    except RecursionError:
        raise AuthFailure("malformed", "payload nested too deeply") from None


def _numeric_date(payload: dict[str, Any], claim: str) -> float | None:
    if claim not in payload:
        return None
    value = payload[claim]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AuthFailure("bad_claim", f"{claim} must be a number")
    return float(value)


_PYJWT_REASONS: tuple[tuple[type[Exception], AuthReason], ...] = (
    (jwt_errors.InvalidSignatureError, "bad_signature"),
    (jwt_errors.ExpiredSignatureError, "expired"),
    (jwt_errors.ImmatureSignatureError, "not_yet_valid"),
    (jwt_errors.MissingRequiredClaimError, "missing_claim"),
    (jwt_errors.InvalidIssuerError, "bad_issuer"),
    (jwt_errors.InvalidAudienceError, "bad_audience"),
    (jwt_errors.InvalidAlgorithmError, "alg_not_allowed"),
    (jwt_errors.InvalidKeyError, "bad_key"),
    (jwt_errors.DecodeError, "malformed"),
)


def _reason_for(exc: jwt_errors.PyJWTError) -> AuthReason:
    for cls, reason in _PYJWT_REASONS:
        if isinstance(exc, cls):
            return reason
    return "bad_claim"


def jwt_config_problems(config: JwtConfig, *, has_jwks: bool = False) -> list[str]:
    """Configuration errors that make a verifier refuse every token (for compile-time diagnostics).

    `has_jwks`: a JwksSource is supplied separately (not through jwks_file/jwks_url).
    """
    problems = []
    algs = set(config.algorithms)
    if not algs:
        problems.append("at least one algorithm is required")
    unknown = algs - SUPPORTED_ALGORITHMS
    if unknown:  # includes "none"
        problems.append(
            f"unsupported algorithms {sorted(unknown)} (supported: {sorted(SUPPORTED_ALGORITHMS)})"
        )
    for alg in sorted(algs & HMAC_ALGORITHMS):
        if config.secret is None or len(config.secret) < HMAC_MIN_SECRET[alg]:
            problems.append(f"{alg} needs a secret of at least {HMAC_MIN_SECRET[alg]} bytes")
    if algs & ASYMMETRIC_ALGORITHMS and not (has_jwks or config.jwks_file or config.jwks_url):
        problems.append("asymmetric algorithms need jwks_file or jwks_url")
    return problems


class JwtVerifier:
    """Verifies bearer tokens for one compiled `JwtConfig`. `verify` is CPU only; cache hits are O(1).

    The constructor never raises: with a bad configuration (`problems` non-empty) every token is refused
    with AuthFailure("misconfigured"), so a mistake fails closed even if it reaches the request path.
    """

    def __init__(
        self,
        config: JwtConfig,
        *,
        jwks: JwksSource | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.problems = jwt_config_problems(config, has_jwks=jwks is not None)
        if jwks is None and (config.jwks_file or config.jwks_url):
            jwks = JwksSource(
                file=config.jwks_file, url=config.jwks_url, refresh=config.jwks_refresh, now=now
            )
        self.config = config
        self.jwks = jwks
        self._now = now
        self._algorithms = frozenset(config.algorithms) & SUPPORTED_ALGORITHMS
        self._cache: OrderedDict[bytes, tuple[Identity, float]] = OrderedDict()
        self._jwks_version = jwks.version if jwks else 0
        # PyJWT: signature, required claims, iss, aud, sub/jti types. Time claims: ours (module doc).
        self._options: dict[str, Any] = {
            "require": list(config.require),
            "verify_signature": True,
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_iss": True,
            "verify_aud": True,
            "enforce_minimum_key_length": True,
        }

    def cache_clear(self) -> None:
        self._cache.clear()

    def cached(self, token: str) -> Identity | None:
        """The identity of a token this verifier accepted before and still vouches for (not expired, keys
        unchanged), without verifying anything again; None otherwise (then call `verify`)."""
        if self.problems:
            return None
        if self.jwks is not None and self.jwks.version != self._jwks_version:
            self._cache.clear()  # keys changed (maybe revoked): re-verify everything
            self._jwks_version = self.jwks.version
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        hit = self._cache.get(digest)
        if hit is None:
            return None
        if hit[1] <= self._now():
            del self._cache[digest]
            return None
        self._cache.move_to_end(digest)
        return hit[0]

    def verify(self, token: str) -> Identity:
        """Return the identity a valid token carries, or raise AuthFailure."""
        if self.problems:
            raise AuthFailure("misconfigured", "JWT configuration: " + "; ".join(self.problems))
        if not isinstance(token, str):
            raise AuthFailure("malformed", "token is not text")
        if len(token) > self.config.max_token_length:
            raise AuthFailure("too_long", "token too long")
        hit = self.cached(token)
        if hit is not None:
            return hit
        now = self._now()
        identity, exp = self._verify_cold(token, now)
        until = min(exp, now + CACHE_MAX_AGE) if exp is not None else now + CACHE_MAX_AGE
        if self.config.cache_size > 0 and until > now:
            digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
            self._cache[digest] = (identity, until)
            while len(self._cache) > self.config.cache_size:
                self._cache.popitem(last=False)
        return identity

    async def verify_async(self, token: str) -> Identity:
        """`verify`, but on an unknown `kid` ask the JWKS for a (rate-limited) refresh and retry once."""
        try:
            return self.verify(token)
        except AuthFailure as failure:
            if failure.reason != "unknown_kid" or self.jwks is None:
                raise
            if not await self.jwks.refresh_on_demand():
                raise
        return self.verify(token)

    def _key_for(self, header: dict[str, Any]) -> bytes | PyJWK:
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthFailure("alg_not_allowed", f"algorithm {alg!r} not allowed")
        if alg in HMAC_ALGORITHMS:
            assert self.config.secret is not None  # `problems` is empty
            return self.config.secret
        if self.jwks is None:
            raise AuthFailure("misconfigured", "no JWKS for asymmetric algorithms")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthFailure("malformed", "kid must be a string")
        key = self.jwks.key_for(kid, alg)
        if key is None:
            raise AuthFailure("unknown_kid", f"no key for kid {kid!r} and {alg}")
        return key

    def _verify_cold(self, token: str, now: float) -> tuple[Identity, float | None]:
        parts = token.split(".")
        if len(parts) != 3:
            raise AuthFailure("malformed", "a JWT has three segments")
        for part in parts[1:]:
            b64url_decode_strict(part)  # PyJWT tolerates '=' padding; we do not
        header = _parse_header(parts[0])
        _no_duplicate_claims(parts[1])
        if "crit" in header:
            raise AuthFailure("unsupported_crit", "critical header extensions are not supported")
        if "b64" in header:
            raise AuthFailure("malformed", "unencoded payloads are not supported")
        key = self._key_for(header)
        config = self.config
        try:
            payload = pyjwt.decode(
                token,
                key,
                algorithms=[header["alg"]],
                options=self._options,  # type: ignore[arg-type]
                issuer=config.issuer,
                audience=config.audience,
                leeway=config.leeway,
            )
        except jwt_errors.PyJWTError as exc:
            raise AuthFailure(_reason_for(exc), str(exc)) from None
        if not isinstance(payload, dict):
            raise AuthFailure("malformed", "payload is not a JSON object")
        exp = self._check_times(payload, now)
        return self._identity(payload), exp

    def _check_times(self, payload: dict[str, Any], now: float) -> float | None:
        leeway = self.config.leeway
        exp = _numeric_date(payload, "exp")
        nbf = _numeric_date(payload, "nbf")
        iat = _numeric_date(payload, "iat")
        if exp is not None and exp <= now - leeway:
            raise AuthFailure("expired", "token expired")
        if nbf is not None and nbf > now + leeway:
            raise AuthFailure("not_yet_valid", "token not valid yet (nbf)")
        if iat is not None and iat > now + leeway:
            raise AuthFailure("not_yet_valid", "token issued in the future (iat)")
        return exp

    def _identity(self, payload: dict[str, Any]) -> Identity:
        mapping = self.config.claims
        user = payload.get(mapping.user)
        role = payload.get(mapping.role)
        permissions = payload.get(mapping.permissions, [])
        if not isinstance(permissions, list) or not valid_identity_fields(user, role, permissions):
            raise AuthFailure("bad_claim", "user/role must be safe non-empty strings, permissions a list")
        assert isinstance(user, str) and isinstance(role, str)
        return Identity(
            user=user,
            role=role,
            permissions=tuple(permissions),
            method="jwt",
            principal="jwt:" + user,
        )

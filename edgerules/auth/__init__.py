"""Authentication primitives: JWT (PyJWT + JWKS), API keys, identity headers."""

from edgerules.auth.apikeys import (
    ApiKeyRecord,
    ApiKeyStore,
    MalformedRecord,
    authenticate_api_key,
    generate_key,
    hash_key,
)
from edgerules.auth.identity import (
    IDENTITY_HEADERS,
    AuthFailure,
    Identity,
    IdentityHeaderNames,
    identity_headers,
    is_spoofable_header,
    parse_authorization,
    safe_header_value,
)
from edgerules.auth.jwks import JwksError, JwksSource
from edgerules.auth.jwt import ClaimMapping, JwtConfig, JwtVerifier

__all__ = [
    "IDENTITY_HEADERS",
    "ApiKeyRecord",
    "ApiKeyStore",
    "AuthFailure",
    "ClaimMapping",
    "Identity",
    "IdentityHeaderNames",
    "JwksError",
    "JwksSource",
    "JwtConfig",
    "JwtVerifier",
    "MalformedRecord",
    "authenticate_api_key",
    "generate_key",
    "hash_key",
    "identity_headers",
    "is_spoofable_header",
    "parse_authorization",
    "safe_header_value",
]

"""Authentication and rate limits end to end: two real mitmdump instances sharing one real redis-server.

Keys are created with the `edgerules keys` CLI (or `ApiKeyStore`) against the same Redis and prefix as the
proxies. Tests run in file order; the Redis outage test comes last and leaves Redis running again.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

from edgerules.auth.apikeys import ApiKeyStore, generate_key
from edgerules.tools import cli
from tests.support.origins import Origins
from tests.support.policies import ENV, JWT_SECRET
from tests.support.proxy import Proxy, Response, http, start_edge_process
from tests.support.ratelimits import assert_one_budget
from tests.support.redis_server import RedisServer
from tests.support.shared_store import away_from_window_edge, redis_edges, with_store

pytestmark = pytest.mark.e2e

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
PREFIX = "e2e-auth:"


@dataclass
class Stack:
    origins: Origins
    redis: RedisServer
    policy: Path
    proxies: list[Proxy]

    @property
    def proxy(self) -> Proxy:
        return self.proxies[0]

    def origin_hits(self, path: str) -> int:
        return sum(origin.hits(path) for origin in self.origins.values())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    def start(policy: Path) -> Proxy:
        return start_edge_process(policy, environ=ENV)

    with redis_edges(tmp_path_factory.mktemp("auth"), REGIONS, PREFIX, start, 2) as (
        origins,
        redis,
        policy,
        proxies,
    ):
        yield Stack(origins, redis, policy, proxies)


# -- credentials --------------------------------------------------------------------------------------


def token(claims: Mapping[str, Any] | None = None, *, key: str = JWT_SECRET, algorithm: str = "HS256") -> str:
    now = int(time.time())
    body = {
        "sub": "alice",
        "role": "admin",
        "permissions": ["calls:read"],
        "exp": now + 600,
        **(claims or {}),
    }
    return jwt.encode(body, key, algorithm=algorithm)


def b64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned_token() -> str:
    header = b64url({"alg": "none", "typ": "JWT"})
    return f"{header}.{b64url({'sub': 'mallory', 'role': 'admin', 'exp': int(time.time()) + 600})}."


def cli_keys(stack: Stack, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    action, *rest = argv
    code = cli.main(["keys", action, "--policy", str(stack.policy), "--env", "e2e", *rest], out=out)
    return code, out.getvalue()


def new_key(stack: Stack, *extra: str, user: str = "key-user", role: str = "service") -> tuple[str, str]:
    """(key, key_id) created with `edgerules keys add`."""
    code, text = cli_keys(stack, "add", "--user", user, "--role", role, *extra)
    assert code == 0, text
    key_id = re.search(r"^key_id:\s+([0-9a-f]{12})$", text, re.M)
    assert key_id is not None
    return text.strip().splitlines()[-1], key_id[1]


def add_record(stack: Stack, **kwargs: Any) -> str:
    """A key created directly with ApiKeyStore on the proxies' store (for states the CLI cannot make)."""

    async def add(store) -> str:
        key, _ = await ApiKeyStore(store).add("expired-user", "service", **kwargs)
        return key

    return with_store(stack.policy, add)


def unique_path() -> str:
    return f"/api/v1/calls/{uuid.uuid4().hex}"


def get(proxy: Proxy, path: str, authorization: str | None = None, extra: Any = ()) -> Response:
    headers = [("CF-IPCountry", "US"), *extra]
    if authorization is not None:
        headers.append(("Authorization", authorization))
    return http("GET", proxy.url + path, headers)


def seen_headers(response: Response) -> dict[str, str]:
    return {k.lower(): v for k, v in response.json()["headers"].items()}


# Reasons found before the scheme is known (the Authorization header itself is unusable or not accepted).
HEADER_REASONS = {"malformed_authorization", "duplicate_header", "scheme_not_allowed", "unsupported_scheme"}


def client_reason(reason: str, authorization: str | None) -> str:
    """What the client is told for a failure whose precise `reason` stays in the log: one per scheme."""
    if reason == "missing":
        return reason
    if reason in HEADER_REASONS or authorization is None:
        return "invalid_credentials"
    return "invalid_token" if authorization.startswith("Bearer ") else "invalid_api_key"


def assert_unauthorized(
    stack: Stack, response: Response, path: str, reason: str, authorization: str | None = None
) -> None:
    assert response.status == 401, response.body
    expected = client_reason(reason, authorization)
    assert response.json() == {"error": "Authentication required", "reason": expected}
    assert response.headers["Content-Type"] == "application/json"
    challenges = response.headers.get_all("WWW-Authenticate") or []
    assert any(c.startswith("Bearer ") for c in challenges), challenges
    assert any(c.startswith("API-Key ") for c in challenges), challenges
    assert stack.origin_hits(path) == 0


# -- JWT ----------------------------------------------------------------------------------------------


def test_valid_jwt_passes_with_identity_headers(stack):
    path = unique_path()
    response = get(stack.proxy, path, "Bearer " + token({"sub": "alice", "permissions": ["a", "b"]}))
    assert response.status == 200, response.body
    seen = seen_headers(response)
    assert seen["x-user-id"] == "alice"
    assert seen["x-user-role"] == "admin"
    assert json.loads(seen["x-user-permissions"]) == ["a", "b"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", seen["x-authenticated-at"])
    assert "authorization" in seen  # the credential itself is forwarded unchanged
    assert stack.origin_hits(path) == 1
    # JWT requests are not subject to the per-API-key limit.
    assert "RateLimit-Remaining" not in response.headers


def _bad_bearer_tokens() -> dict[str, tuple[str, str]]:
    """case -> (token, the reason the edge gives)."""
    now = int(time.time())
    header, payload, signature = token().split(".")
    not_json = base64.urlsafe_b64encode(b"{nope").decode().rstrip("=")
    with warnings.catch_warnings():  # PyJWT warns that the HS256 secret is short for HS384: that is the point
        warnings.simplefilter("ignore")
        hs384 = token(algorithm="HS384")
    return {
        "expired": (token({"exp": now - 3600}), "expired"),
        "not-yet-valid": (token({"nbf": now + 3600}), "not_yet_valid"),
        "wrong-signature": (token(key="another-secret-that-is-long-enough-for-hs256!"), "bad_signature"),
        "tampered-payload": (
            f"{header}.{b64url({'sub': 'root', 'role': 'admin', 'exp': now + 600})}.{signature}",
            "bad_signature",
        ),
        "alg-none": (unsigned_token(), "alg_not_allowed"),
        "alg-none-with-signature": (unsigned_token() + signature, "alg_not_allowed"),
        "hs384-when-only-hs256": (hs384, "alg_not_allowed"),
        "malformed-two-segments": (f"{header}.{payload}", "malformed"),
        "malformed-garbage": ("not-a-jwt", "malformed"),
        "malformed-bad-characters": ("a$b.c$d.e$f", "malformed_authorization"),
        "malformed-json-header": (f"{not_json}.{payload}.{signature}", "malformed"),
        "oversized": (token({"pad": "x" * 9000}), "too_long"),
        "no-exp": (
            jwt.encode({"sub": "alice", "role": "admin"}, JWT_SECRET, algorithm="HS256"),
            "missing_claim",
        ),
    }


@pytest.mark.parametrize("case", sorted(_bad_bearer_tokens()))
def test_bad_jwt_is_401_with_challenge_and_never_reaches_origin(stack, case):
    bad, reason = _bad_bearer_tokens()[case]
    path = unique_path()
    assert_unauthorized(stack, get(stack.proxy, path, "Bearer " + bad), path, reason, "Bearer " + bad)


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "missing"),
        ("", "malformed_authorization"),
        ("Bearer", "malformed_authorization"),
        ("Bearer  x", "malformed_authorization"),
        ("Basic YWxpY2U6c2VjcmV0", "scheme_not_allowed"),
    ],
    ids=["missing", "empty", "scheme-only", "double-space", "basic"],
)
def test_missing_or_malformed_authorization_is_401(stack, authorization, reason):
    path = unique_path()
    assert_unauthorized(stack, get(stack.proxy, path, authorization), path, reason, authorization)


def test_duplicate_authorization_headers_are_401_even_if_both_are_valid(stack):
    path = unique_path()
    key, _ = new_key(stack)
    response = http(
        "GET",
        stack.proxy.url + path,
        [("Authorization", "Bearer " + token()), ("Authorization", "API-Key " + key)],
    )
    assert_unauthorized(stack, response, path, "duplicate_header")
    response = http(
        "GET",
        stack.proxy.url + path,
        [("Authorization", "Bearer " + token()), ("Authorization", "Bearer " + token())],
    )
    assert_unauthorized(stack, response, path, "duplicate_header")


# -- API keys -----------------------------------------------------------------------------------------


def test_valid_api_key_passes_with_identity_and_rate_limit_headers(stack):
    key, _ = new_key(stack, "--permissions", "calls:read,calls:write", "--rate-limit", "5/1h", user="svc-1")
    away_from_window_edge(3600)
    remaining = []
    for _ in range(3):
        path = unique_path()
        response = get(stack.proxy, path, "API-Key " + key)
        assert response.status == 200, response.body
        seen = seen_headers(response)
        assert (seen["x-user-id"], seen["x-user-role"]) == ("svc-1", "service")
        assert json.loads(seen["x-user-permissions"]) == ["calls:read", "calls:write"]
        assert "x-authenticated-at" in seen
        assert stack.origin_hits(path) == 1
        assert response.headers["RateLimit-Limit"] == "5"
        assert 0 < int(response.headers["RateLimit-Reset"]) <= 3600
        assert "Retry-After" not in response.headers
        remaining.append(int(response.headers["RateLimit-Remaining"]))
    assert remaining == [4, 3, 2]


def test_key_without_own_limit_gets_the_policy_limit(stack):
    key, _ = new_key(stack)
    response = get(stack.proxy, unique_path(), "API-Key " + key)
    assert response.status == 200
    assert response.headers["RateLimit-Limit"] == "1000"
    assert response.headers["RateLimit-Remaining"] == "999"


def test_revoked_key_is_401(stack):
    key, key_id = new_key(stack)
    assert get(stack.proxy, unique_path(), "API-Key " + key).status == 200
    assert cli_keys(stack, "revoke", key_id)[0] == 0
    for proxy in stack.proxies:  # no proxy-side caching of key records: revocation is immediate everywhere
        path = unique_path()
        assert_unauthorized(stack, get(proxy, path, "API-Key " + key), path, "inactive", "API-Key " + key)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("expired", "expired"),
        ("unknown", "unknown_key"),
        ("malformed", "unknown_key"),
        ("as-bearer", "malformed"),
    ],
)
def test_expired_unknown_and_malformed_keys_are_401(stack, case, reason):
    if case == "expired":
        authorization = "API-Key " + add_record(stack, expires_at=time.time() - 60)
    elif case == "unknown":
        authorization = "API-Key " + generate_key()
    elif case == "malformed":
        authorization = "API-Key not-a-key"
    else:  # a real key sent as a bearer token is not a JWT
        authorization = "Bearer " + new_key(stack)[0]
    path = unique_path()
    assert_unauthorized(stack, get(stack.proxy, path, authorization), path, reason, authorization)


def test_spoofed_identity_headers_never_reach_the_origin(stack):
    spoofed = [
        ("X-User-ID", "root"),
        ("x-user-role", "superuser"),
        ("X_User_Permissions", '["*"]'),
        ("X-User-Extra", "1"),
        ("X-Authenticated-At", "1970-01-01T00:00:00.000Z"),
    ]
    key, _ = new_key(stack, user="svc-2")
    response = get(stack.proxy, unique_path(), "API-Key " + key, spoofed)
    assert response.status == 200
    seen = seen_headers(response)
    assert (seen["x-user-id"], seen["x-user-role"], seen["x-user-permissions"]) == ("svc-2", "service", "[]")
    assert seen["x-authenticated-at"] != "1970-01-01T00:00:00.000Z"
    assert "x-user-extra" not in seen and "x_user_permissions" not in seen
    # A public path: nothing authenticates, and still none of the spoofed headers is forwarded.
    marker = uuid.uuid4().hex
    response = get(stack.proxy, f"/health?probe={marker}", extra=spoofed)
    assert response.status == 200
    entries = [e for o in stack.origins.values() for e in o.stats()["log"] if e["query"] == f"probe={marker}"]
    assert len(entries) == 1
    forwarded = {k.lower() for k in entries[0]["headers"]}
    assert not forwarded & {
        "x-user-id",
        "x-user-role",
        "x_user_permissions",
        "x-user-extra",
        "x-authenticated-at",
    }


# -- rate limits --------------------------------------------------------------------------------------


def test_50_concurrent_requests_with_a_limit_of_5_let_exactly_5_through(stack):
    key, _ = new_key(stack, "--rate-limit", "5/1h")
    path = unique_path()
    away_from_window_edge(3600)
    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(lambda _: get(stack.proxy, path, "API-Key " + key), range(50)))
    statuses = Counter(r.status for r in responses)
    assert statuses == {200: 5, 429: 45}, statuses
    assert stack.origin_hits(path) == 5
    assert_one_budget(responses, 5)


def test_two_proxies_sharing_redis_share_one_budget(stack):
    key, _ = new_key(stack, "--rate-limit", "5/1h")
    away_from_window_edge(3600)
    served: Counter[int] = Counter()
    statuses = []
    for i in range(12):
        proxy_index = i % 2
        response = get(stack.proxies[proxy_index], unique_path(), "API-Key " + key)
        statuses.append(response.status)
        if response.status == 200:
            served[proxy_index] += 1
    assert statuses == [200] * 5 + [429] * 7
    assert served == {0: 3, 1: 2}  # both instances served, from one budget of 5


# -- Redis outage: API keys fail closed, JWT keeps working, recovery without restarting the proxy ------------


def test_redis_outage_fails_api_keys_closed_and_recovers(stack):
    key, _ = new_key(stack)
    assert get(stack.proxy, unique_path(), "API-Key " + key).status == 200
    stack.redis.kill()
    try:
        for proxy in stack.proxies:
            for _ in range(3):
                path = unique_path()
                response = get(proxy, path, "API-Key " + key)
                assert response.status == 503, response.body
                assert response.json() == {"error": "Authentication service unavailable"}
                assert response.headers["Content-Type"] == "application/json"
                assert response.headers["Retry-After"] == "5"
                assert stack.origin_hits(path) == 0
            # JWT needs no store: it keeps working, also on a cacheable path (the cache is in Redis too).
            for path in (unique_path(), f"/api/v1/agents/{uuid.uuid4().hex}"):
                response = get(proxy, path, "Bearer " + token())
                assert response.status == 200, response.body
                assert seen_headers(response)["x-user-id"] == "alice"
            # Still no credential, still 401 (not 503): a missing key is refused before the store.
            assert get(proxy, unique_path()).status == 401
    finally:
        stack.redis.restart()
    # This test Redis keeps nothing across a restart: the old key is unknown now (refused, never let through) ...
    path = unique_path()
    assert_unauthorized(
        stack, get(stack.proxy, path, "API-Key " + key), path, "unknown_key", "API-Key " + key
    )
    # ... and a key created after the restart works on both proxies, which were never restarted.
    fresh, _ = new_key(stack, user="after-restart")
    for proxy in stack.proxies:
        response = get(proxy, unique_path(), "API-Key " + fresh)
        assert response.status == 200, response.body
        assert seen_headers(response)["x-user-id"] == "after-restart"

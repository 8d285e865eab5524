"""JWT verification: every failure class, algorithm confusion, JWKS (file and URL with rotation), cache."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from edgerules.auth.identity import AuthFailure
from edgerules.auth.jwks import JwksError, JwksSource, parse_jwks
from edgerules.auth.jwt import ClaimMapping, JwtConfig, JwtVerifier, b64url_decode_strict, jwt_config_problems

SECRET = b"0123456789abcdef0123456789abcdef"  # 32 bytes
NOW = 1_700_000_000.0


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def claims(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "u1", "role": "admin", "permissions": ["read", "write"], "exp": NOW + 600}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def hs(payload: dict[str, Any], key: bytes = SECRET, alg: str = "HS256", **headers: Any) -> str:
    return pyjwt.encode(payload, key, algorithm=alg, headers=headers or None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], payload: dict[str, Any], key: bytes = SECRET) -> str:
    """Hand-built HS256-signed token (for headers PyJWT would refuse to produce)."""
    signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    sig = hmac.new(key, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64(sig)


def reason(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(AuthFailure) as info:
        verifier.verify(token)
    return info.value.reason


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(clock: Clock) -> JwtVerifier:
    return JwtVerifier(JwtConfig(secret=SECRET), now=clock)


# --- happy path -------------------------------------------------------------------------------------


def test_valid_token_maps_claims(verifier: JwtVerifier) -> None:
    ident = verifier.verify(hs(claims()))
    assert (ident.user, ident.role, ident.permissions) == ("u1", "admin", ("read", "write"))
    assert ident.method == "jwt"
    assert ident.principal == "jwt:u1"


def test_custom_claim_mapping(clock: Clock) -> None:
    cfg = JwtConfig(secret=SECRET, claims=ClaimMapping(user="uid", role="r", permissions="scopes"))
    ident = JwtVerifier(cfg, now=clock).verify(hs(claims(sub=None, uid="u9", r="viewer", scopes=["a"])))
    assert (ident.user, ident.role, ident.permissions) == ("u9", "viewer", ("a",))


def test_missing_permissions_means_none(verifier: JwtVerifier) -> None:
    assert verifier.verify(hs(claims(permissions=None))).permissions == ()


# --- time claims ------------------------------------------------------------------------------------


def test_expired(verifier: JwtVerifier) -> None:
    assert reason(verifier, hs(claims(exp=NOW - 31))) == "expired"


def test_expired_within_leeway_is_accepted(verifier: JwtVerifier) -> None:
    assert verifier.verify(hs(claims(exp=NOW - 10))).user == "u1"


def test_nbf_in_future(verifier: JwtVerifier) -> None:
    assert reason(verifier, hs(claims(nbf=NOW + 120))) == "not_yet_valid"


def test_iat_in_future(verifier: JwtVerifier) -> None:
    assert reason(verifier, hs(claims(iat=NOW + 120))) == "not_yet_valid"


def test_non_numeric_exp(verifier: JwtVerifier) -> None:
    assert reason(verifier, raw_token({"alg": "HS256"}, claims(exp="tomorrow"))) == "bad_claim"
    assert reason(verifier, raw_token({"alg": "HS256"}, claims(exp=True))) == "bad_claim"


def test_missing_exp(verifier: JwtVerifier) -> None:
    assert reason(verifier, hs(claims(exp=None))) == "missing_claim"


# --- signatures and algorithms ---------------------------------------------------------------------


def test_wrong_signature(verifier: JwtVerifier) -> None:
    assert reason(verifier, hs(claims(), key=b"another-secret-another-secret-!!")) == "bad_signature"


def test_tampered_payload(verifier: JwtVerifier) -> None:
    head, _, sig = hs(claims()).split(".")
    forged = b64(json.dumps(claims(role="superuser")).encode())
    assert reason(verifier, f"{head}.{forged}.{sig}") == "bad_signature"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_unsigned(verifier: JwtVerifier, alg: str) -> None:
    token = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims()).encode())
    assert reason(verifier, token + ".") == "alg_not_allowed"


def test_missing_alg(verifier: JwtVerifier) -> None:
    assert reason(verifier, raw_token({"typ": "JWT"}, claims())) == "alg_not_allowed"


def test_hs384_when_only_hs256_allowed(verifier: JwtVerifier) -> None:
    assert reason(verifier, hs(claims(), key=SECRET + SECRET, alg="HS384")) == "alg_not_allowed"


@pytest.mark.parametrize(
    "cfg",
    [
        JwtConfig(algorithms=("none",), secret=SECRET),
        JwtConfig(algorithms=("HS256", "none"), secret=SECRET),
        JwtConfig(algorithms=(), secret=SECRET),
        JwtConfig(secret=None),
        JwtConfig(secret=b"short"),
        JwtConfig(algorithms=("HS512",), secret=SECRET),  # HS512 needs 64 bytes
        JwtConfig(algorithms=("RS256",)),
    ],
)
def test_bad_config_fails_closed(cfg: JwtConfig, clock: Clock) -> None:
    assert jwt_config_problems(cfg)
    v = JwtVerifier(cfg, now=clock)  # never raises on the request path...
    assert reason(v, hs(claims())) == "misconfigured"  # ...but refuses every token
    unsigned = b64(json.dumps({"alg": "none"}).encode()) + "." + b64(json.dumps(claims()).encode()) + "."
    assert reason(v, unsigned) == "misconfigured"


def test_good_config_has_no_problems() -> None:
    assert jwt_config_problems(JwtConfig(secret=SECRET)) == []
    assert jwt_config_problems(JwtConfig(algorithms=("RS256", "ES256"), jwks_url="http://127.0.0.1/j")) == []
    assert jwt_config_problems(JwtConfig(algorithms=("RS256",)), has_jwks=True) == []


# --- encoding and structure ------------------------------------------------------------------------


@pytest.mark.parametrize("segments", [2, 4])
def test_wrong_segment_count(verifier: JwtVerifier, segments: int) -> None:
    parts = hs(claims()).split(".")
    token = ".".join(parts[:2]) if segments == 2 else ".".join([*parts, parts[2]])
    assert reason(verifier, token) == "malformed"


def test_bad_base64(verifier: JwtVerifier) -> None:
    head, body, sig = hs(claims()).split(".")
    for bad in (head + "=", head.replace(head[1], "+", 1), "!!!!", head + "A"):
        assert reason(verifier, f"{bad}.{body}.{sig}") == "malformed", bad
    assert reason(verifier, f"{head}.{body}==.{sig}") == "malformed"
    assert reason(verifier, f"{head}.{body}.{sig}=") == "malformed"


def test_non_canonical_base64_rejected() -> None:
    assert b64url_decode_strict("QQ") == b"A"
    with pytest.raises(AuthFailure):
        b64url_decode_strict("QR")  # same byte, non-zero trailing bits


def test_header_not_object_or_duplicate_member(verifier: JwtVerifier) -> None:
    body = b64(json.dumps(claims()).encode())
    assert reason(verifier, b64(b"[1]") + "." + body + ".AAAA") == "malformed"
    dup = b64(b'{"alg":"HS256","alg":"none"}')
    assert reason(verifier, dup + "." + body + ".AAAA") == "malformed"


def test_oversized_token(verifier: JwtVerifier) -> None:
    assert reason(verifier, hs(claims(pad="x" * 9000))) == "too_long"


def test_unknown_crit(verifier: JwtVerifier) -> None:
    assert (
        reason(verifier, raw_token({"alg": "HS256", "crit": ["exp"], "exp": 1}, claims()))
        == "unsupported_crit"
    )
    assert reason(verifier, raw_token({"alg": "HS256", "crit": ["b64"], "b64": False}, claims())) == (
        "unsupported_crit"
    )


# --- issuer, audience, claim values ----------------------------------------------------------------


def test_wrong_issuer_and_audience(clock: Clock) -> None:
    v = JwtVerifier(JwtConfig(secret=SECRET, issuer="https://idp", audience="edge"), now=clock)
    assert v.verify(hs(claims(iss="https://idp", aud="edge"))).user == "u1"
    assert reason(v, hs(claims(iss="https://evil", aud="edge"))) == "bad_issuer"
    assert reason(v, hs(claims(iss="https://idp", aud="other"))) == "bad_audience"
    assert reason(v, hs(claims(aud="edge"))) == "missing_claim"


def test_audience_present_but_not_configured_is_refused(verifier: JwtVerifier) -> None:
    assert reason(verifier, hs(claims(aud="someone-else"))) == "bad_audience"


@pytest.mark.parametrize(
    "over",
    [
        {"sub": 42},
        {"sub": ""},
        {"role": None},
        {"role": ["admin"]},
        {"permissions": "read"},
        {"permissions": ["read", 7]},
        {"role": "admin\r\nX-Evil: 1"},
        {"role": "admin\n"},
        {"sub": "u1\x00"},
        {"permissions": ["ok", "bad\r\nx"]},
    ],
)
def test_bad_claim_values(verifier: JwtVerifier, over: dict[str, Any]) -> None:
    assert reason(verifier, hs(claims(**over))) == "bad_claim"


# --- cache ------------------------------------------------------------------------------------------


class CountingVerifier(JwtVerifier):
    cold = 0

    def _verify_cold(self, token: str, now: float) -> Any:
        self.cold += 1
        return super()._verify_cold(token, now)


def test_cache_hit_and_expiry_at_exp(clock: Clock) -> None:
    v = CountingVerifier(JwtConfig(secret=SECRET, leeway=0), now=clock)
    token = hs(claims(exp=NOW + 100))
    first = v.verify(token)
    assert v.verify(token) is first
    assert v.cold == 1
    clock.t = NOW + 100  # exp reached: the cached entry must not outlive the token
    assert reason(v, token) == "expired"
    assert v.cold == 2


def test_cache_max_age_forces_reverification(clock: Clock) -> None:
    v = CountingVerifier(JwtConfig(secret=SECRET), now=clock)
    token = hs(claims(exp=NOW + 3600))
    v.verify(token)
    clock.t = NOW + 299
    v.verify(token)
    assert v.cold == 1
    clock.t = NOW + 301
    v.verify(token)
    assert v.cold == 2


def test_cache_is_bounded_and_failures_not_cached(clock: Clock) -> None:
    v = CountingVerifier(JwtConfig(secret=SECRET, cache_size=2), now=clock)
    tokens = [hs(claims(sub=f"u{i}")) for i in range(3)]
    for t in tokens:
        v.verify(t)
    assert len(v._cache) == 2
    v.verify(tokens[0])  # evicted (oldest): verified again
    assert v.cold == 4
    bad = hs(claims(), key=b"another-secret-another-secret-!!")
    for _ in range(2):
        reason(v, bad)
    assert v.cold == 6


# --- asymmetric keys and JWKS ----------------------------------------------------------------------


class Keys:
    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.rsa2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self, which: str) -> dict[str, Any]:
        if which == "rsa":
            d = RSAAlgorithm.to_jwk(self.rsa.public_key(), as_dict=True)
        elif which == "rsa2":
            d = RSAAlgorithm.to_jwk(self.rsa2.public_key(), as_dict=True)
        elif which == "ec":
            d = ECAlgorithm.to_jwk(self.ec.public_key(), as_dict=True)
        else:
            d = OKPAlgorithm.to_jwk(self.ed.public_key(), as_dict=True)
        return {**d, "kid": which, "use": "sig"}


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture
def jwks_file(tmp_path: Path, keys: Keys) -> Path:
    path = tmp_path / "jwks.json"
    oct_key = {"kty": "oct", "kid": "oct", "k": b64(SECRET)}
    path.write_text(json.dumps({"keys": [keys.jwk("rsa"), keys.jwk("ec"), keys.jwk("ed"), oct_key]}))
    return path


def asym_verifier(path: Path, clock: Clock, *algs: str, secret: bytes | None = None) -> JwtVerifier:
    cfg = JwtConfig(algorithms=algs, jwks_file=str(path), secret=secret)
    return JwtVerifier(cfg, now=clock)


def test_jwks_file_rsa_ec_ed25519(jwks_file: Path, keys: Keys, clock: Clock) -> None:
    v = asym_verifier(jwks_file, clock, "RS256", "ES256", "EdDSA")
    assert v.verify(pyjwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "rsa"})).user == "u1"
    assert v.verify(pyjwt.encode(claims(), keys.ec, algorithm="ES256", headers={"kid": "ec"})).user == "u1"
    assert v.verify(pyjwt.encode(claims(), keys.ed, algorithm="EdDSA", headers={"kid": "ed"})).user == "u1"


def test_jwks_wrong_kid_key_type_and_symmetric_member(jwks_file: Path, keys: Keys, clock: Clock) -> None:
    v = asym_verifier(jwks_file, clock, "RS256", "ES256")
    assert reason(v, pyjwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "nope"})) == (
        "unknown_kid"
    )
    # RS256 token pointing at the EC key: the key type does not fit the algorithm.
    assert reason(v, pyjwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "ec"})) == (
        "unknown_kid"
    )
    # Signed by another RSA key under a known kid.
    assert reason(v, pyjwt.encode(claims(), keys.rsa2, algorithm="RS256", headers={"kid": "rsa"})) == (
        "bad_signature"
    )
    assert "oct" not in v.jwks.kids  # type: ignore[union-attr]
    # Several keys and no kid: ambiguous.
    assert reason(v, pyjwt.encode(claims(), keys.rsa, algorithm="RS256")) == "unknown_kid"


def test_algorithm_confusion_public_key_as_hmac_secret(jwks_file: Path, keys: Keys, clock: Clock) -> None:
    pem = keys.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = raw_token({"alg": "HS256", "kid": "rsa"}, claims(role="superuser"), key=pem)
    only_rsa = asym_verifier(jwks_file, clock, "RS256")
    assert reason(only_rsa, forged) == "alg_not_allowed"
    # Even with HS256 allowed too, HS tokens are checked with the configured secret only, never a JWKS key.
    mixed = asym_verifier(jwks_file, clock, "RS256", "HS256", secret=SECRET)
    assert reason(mixed, forged) == "bad_signature"
    # And an RS256 header never verifies against the HMAC secret.
    rs_header_hmac_sig = raw_token({"alg": "RS256", "kid": "rsa"}, claims())
    assert reason(mixed, rs_header_hmac_sig) == "bad_signature"


def test_broken_jwks_file_fails_closed(tmp_path: Path, keys: Keys, clock: Clock) -> None:
    path = tmp_path / "jwks.json"
    path.write_text("{not json")
    v = asym_verifier(path, clock, "RS256")
    assert v.jwks is not None and v.jwks.last_error is not None
    assert reason(v, pyjwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "rsa"})) == (
        "unknown_kid"
    )
    missing = asym_verifier(tmp_path / "absent.json", clock, "RS256")
    assert missing.jwks is not None and "FileNotFoundError" in (missing.jwks.last_error or "")


def test_parse_jwks_refuses_empty_and_garbage(keys: Keys) -> None:
    with pytest.raises(JwksError):
        parse_jwks(b"not json")
    with pytest.raises(JwksError):
        parse_jwks(json.dumps({"keys": [{"kty": "oct", "k": "AAAA"}]}))
    enc_only = {**keys.jwk("rsa"), "use": "enc"}
    with pytest.raises(JwksError):
        parse_jwks(json.dumps({"keys": [enc_only]}))


class JwksServer:
    """A JWKS endpoint on 127.0.0.1 whose document and status the test can change."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.status = 200
        self.requests = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.json_response(self.doc, status=self.status)

    async def __aenter__(self) -> JwksServer:
        app = web.Application()
        app.router.add_get("/jwks.json", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/jwks.json"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def test_jwks_url_rotation_and_rate_limited_refresh(keys: Keys, clock: Clock) -> None:
    async def scenario() -> None:
        async with JwksServer({"keys": [keys.jwk("rsa")]}) as server:
            source = JwksSource(url=server.url, now=clock)
            assert await source.refresh()
            v = JwtVerifier(JwtConfig(algorithms=("RS256",)), jwks=source, now=clock)
            old = pyjwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "rsa"})
            assert (await v.verify_async(old)).user == "u1"

            # Rotation: the IdP publishes rsa2; a token with the new kid triggers one refresh.
            server.doc = {"keys": [keys.jwk("rsa"), keys.jwk("rsa2")]}
            clock.t += 31
            new = pyjwt.encode(claims(sub="u2"), keys.rsa2, algorithm="RS256", headers={"kid": "rsa2"})
            assert reason(v, new) == "unknown_kid"  # sync path never fetches
            assert (await v.verify_async(new)).user == "u2"
            assert server.requests == 2

            # Unknown kids right after: refused without hammering the IdP.
            bogus = pyjwt.encode(claims(), keys.rsa2, algorithm="RS256", headers={"kid": "bogus"})
            for _ in range(5):
                with pytest.raises(AuthFailure) as info:
                    await v.verify_async(bogus)
                assert info.value.reason == "unknown_kid"
            assert server.requests == 2
            clock.t += 31
            with pytest.raises(AuthFailure):
                await v.verify_async(bogus)
            assert server.requests == 3

            # A failing endpoint keeps the old keys and records the error.
            server.status = 500
            assert not await source.refresh()
            assert source.last_error is not None and "500" in source.last_error
            assert (await v.verify_async(new)).user == "u2"

    asyncio.run(scenario())


def test_jwks_concurrent_unknown_kid_share_one_fetch(keys: Keys, clock: Clock) -> None:
    async def scenario() -> None:
        async with JwksServer({"keys": [keys.jwk("rsa"), keys.jwk("ec")]}) as server:
            source = JwksSource(url=server.url, now=clock)
            v = JwtVerifier(JwtConfig(algorithms=("RS256",)), jwks=source, now=clock)
            token = pyjwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "rsa"})
            results = await asyncio.gather(*(v.verify_async(token) for _ in range(20)))
            assert {r.user for r in results} == {"u1"}
            assert server.requests == 1

    asyncio.run(scenario())


def test_revoked_jwks_key_clears_cache(tmp_path: Path, keys: Keys, clock: Clock) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [keys.jwk("rsa"), keys.jwk("ec")]}))
    v = asym_verifier(path, clock, "RS256")
    token = pyjwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "rsa"})
    assert v.verify(token).user == "u1"
    path.write_text(json.dumps({"keys": [keys.jwk("ec")]}))
    assert asyncio.run(v.jwks.refresh())  # type: ignore[union-attr]
    assert reason(v, token) == "unknown_kid"


def test_run_refresher_reloads_periodically(keys: Keys, clock: Clock) -> None:
    async def scenario() -> None:
        async with JwksServer({"keys": [keys.jwk("rsa")]}) as server:
            source = JwksSource(url=server.url, refresh=0.01, now=clock)
            task = asyncio.create_task(source.run_refresher())
            try:
                for _ in range(500):
                    if server.requests >= 3:
                        break
                    await asyncio.sleep(0.01)
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert server.requests >= 3
            assert source.kids == frozenset({"rsa"})

    asyncio.run(scenario())

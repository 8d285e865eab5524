"""JWKS key source: asymmetric verification keys from a file and/or URL, refreshed in the background.

Only signature keys for asymmetric algorithms are kept: symmetric (`oct`) members of a key set are dropped,
so a JWKS can never supply an HMAC secret (algorithm confusion).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from jwt import PyJWK
from jwt.exceptions import PyJWTError

from edgerules.kinds import EdgeRulesError

log = logging.getLogger(__name__)

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
MIN_ON_DEMAND_INTERVAL = 30.0  # unknown-kid refreshes at most this often (a bad kid must not DoS the IdP)
FETCH_TIMEOUT = 5.0
MAX_JWKS_BYTES = 1 << 20
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})


class JwksError(EdgeRulesError):
    """A key set could not be loaded or parsed."""


Fetcher = Callable[[str], Awaitable[bytes]]
"""Gets a JWKS document by URL; raises JwksError, OSError or TimeoutError when it cannot."""


async def fetch_url(url: str) -> bytes:
    """The default fetcher: one GET in a worker thread (stdlib, so loading auth never loads an HTTP client).

    Environment proxies are ignored (the edge talks to the IdP directly), the body is capped at
    MAX_JWKS_BYTES and the whole fetch at FETCH_TIMEOUT.
    """
    return await asyncio.wait_for(asyncio.to_thread(_get, url), FETCH_TIMEOUT)


def _get(url: str) -> bytes:
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with opener.open(request, timeout=FETCH_TIMEOUT) as resp:
            status = resp.status
            body = resp.read(MAX_JWKS_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise JwksError(f"JWKS fetch {url}: HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise JwksError(f"JWKS fetch {url}: {exc.reason}") from None
    if status != 200:
        raise JwksError(f"JWKS fetch {url}: HTTP {status}")
    if len(body) > MAX_JWKS_BYTES:
        raise JwksError(f"JWKS fetch {url}: document too large")
    return body


def parse_jwks(data: bytes | str) -> dict[str | None, dict[str, Any]]:
    """Parse a JWK Set document into {kid: jwk dict}, keeping only usable asymmetric signature keys."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise JwksError(f"JWKS is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksError("JWKS must be an object with a 'keys' list")
    keys: dict[str | None, dict[str, Any]] = {}
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict) or jwk.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        ops = jwk.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            continue
        alg = jwk.get("alg")
        if alg is not None and alg not in ASYMMETRIC_ALGORITHMS:
            continue
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            continue
        if "d" in jwk:  # private key published by mistake: use only the public half
            jwk = {k: v for k, v in jwk.items() if k not in _PRIVATE_MEMBERS}
        try:
            PyJWK(jwk)  # validates the key material now rather than on the request path
        except PyJWTError:
            continue
        if kid in keys:
            log.warning("JWKS: duplicate kid %r ignored", kid)
            continue
        keys[kid] = jwk
    if not keys:
        raise JwksError("JWKS contains no usable asymmetric signature keys")
    return keys


class JwksSource:
    """Verification keys by `kid`. `version` increases whenever the key set changes."""

    def __init__(
        self,
        file: str | None = None,
        url: str | None = None,
        refresh: float = 3600.0,
        now: Callable[[], float] = time.time,
        min_on_demand_interval: float = MIN_ON_DEMAND_INTERVAL,
        fetch: Fetcher = fetch_url,
    ) -> None:
        if file is None and url is None:
            raise ValueError("JwksSource needs a file or a url")
        self.file = file
        self.url = url
        self.refresh_interval = refresh
        self.min_on_demand_interval = min_on_demand_interval
        self._fetch = fetch
        self._now = now
        self._jwks: dict[str | None, dict[str, Any]] = {}
        self._resolved: dict[tuple[str | None, str], PyJWK | None] = {}
        self._lock: asyncio.Lock | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._last_attempt: float | None = None
        self.version = 0
        self.last_error: str | None = None
        self.last_success: float | None = None
        if file is not None:
            # Never raises: a broken key file leaves no keys (every token fails closed with unknown_kid)
            # and `last_error` says why. Validate files at compile time with `parse_jwks`.
            try:
                self._install(parse_jwks(Path(file).read_bytes()))
            except (OSError, JwksError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("JWKS file %s unusable: %s", file, self.last_error)

    @property
    def kids(self) -> frozenset[str | None]:
        return frozenset(self._jwks)

    def _install(self, keys: dict[str | None, dict[str, Any]]) -> None:
        if keys != self._jwks:
            self._jwks = keys
            self._resolved = {}
            self.version += 1
        self.last_error = None
        self.last_success = self._now()

    def key_for(self, kid: str | None, alg: str) -> PyJWK | None:
        """The key to verify a token with header (`kid`, `alg`), or None.

        A token without `kid` is accepted only when the set holds exactly one key. The key is bound to
        `alg` (PyJWT then refuses any other algorithm with it) and must be of the matching type/curve.
        """
        if alg not in ASYMMETRIC_ALGORITHMS:
            return None
        cache_key = (kid, alg)
        if cache_key in self._resolved:
            return self._resolved[cache_key]
        jwk = self._jwks.get(kid)
        if jwk is None and kid is None and len(self._jwks) == 1:
            jwk = next(iter(self._jwks.values()))
        key: PyJWK | None = None
        if jwk is not None and jwk.get("alg", alg) == alg:
            try:
                key = PyJWK(jwk, algorithm=alg)
            except PyJWTError:
                key = None
        self._resolved[cache_key] = key
        return key

    async def refresh(self) -> bool:
        """Reload keys (URL preferred, else the file). On failure keep the old keys, set `last_error`.

        Returns True if the load succeeded.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            self._last_attempt = self._now()
            try:
                if self.url is not None:
                    data = await self._fetch(self.url)
                else:
                    assert self.file is not None
                    data = await asyncio.to_thread(Path(self.file).read_bytes)
                keys = parse_jwks(data)
            except (OSError, TimeoutError, JwksError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("JWKS refresh failed, keeping %d old keys: %s", len(self._jwks), self.last_error)
                return False
            self._install(keys)
            return True

    async def refresh_on_demand(self) -> bool:
        """Refresh for an unknown `kid`, at most once per `min_on_demand_interval`.

        Concurrent callers share one refresh. Returns True if a refresh ran for (or while) this caller,
        i.e. a retry may now find the key; False if refused by the interval.
        """
        if self._inflight is not None and not self._inflight.done():
            await asyncio.shield(self._inflight)
            return True
        last = self._last_attempt
        if last is not None and self._now() - last < self.min_on_demand_interval:
            return False
        self._last_attempt = self._now()
        self._inflight = asyncio.ensure_future(self.refresh())
        await asyncio.shield(self._inflight)
        return True

    async def run_refresher(self) -> None:
        """Background loop the addon schedules: refresh every `refresh_interval` seconds, forever."""
        while True:
            await self.refresh()
            await asyncio.sleep(self.refresh_interval)

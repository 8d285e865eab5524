"""What the engine may consult besides the policy: health, the store and the things built on it.

Everything here outlives a policy reload. The engine never creates state itself; the addon, `explain` and
`test` build one `EngineState` each (with a memory store for the offline commands).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from edgerules.auth.apikeys import ApiKeyStore
from edgerules.auth.jwks import JwksSource
from edgerules.auth.jwt import JwtConfig, JwtVerifier
from edgerules.cache.response import ResponseCache
from edgerules.engine.health import HealthRegistry
from edgerules.engine.ratelimit import RateLimiter
from edgerules.stores.base import Store

if TYPE_CHECKING:
    from edgerules.engine.core import PreparedPolicy
    from edgerules.policy.model import Policy


class EngineState:
    def __init__(
        self,
        store: Store,
        health: HealthRegistry | None = None,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.now = now
        self.store = store
        self.health = health or HealthRegistry()
        self.cache = ResponseCache(store, now=now)
        self.limiter = RateLimiter(store, now=now)
        self.keys = ApiKeyStore(store)
        self._verifiers: dict[JwtConfig, JwtVerifier] = {}
        self._jwks: dict[tuple[str | None, str | None], JwksSource] = {}
        self._prepared: list[PreparedPolicy] = []  # most recent first, a few (old policies drop out)

    def prepared(self, policy: Policy) -> PreparedPolicy:
        """`policy` prepared for this state (`engine.core.prepare`), kept for the few policies used last: the
        live edge prepares its policy at install; the tools and tests that pass a policy per call come here."""
        for prepared in self._prepared:
            if prepared.policy is policy:
                return prepared
        from edgerules.engine.core import prepare

        prepared = prepare(policy, self)
        self._prepared = [prepared, *self._prepared[:3]]
        return prepared

    def verifier(self, config: JwtConfig) -> JwtVerifier:
        """One verifier (and its verified-token cache) per distinct JWT configuration; survives reloads."""
        verifier = self._verifiers.get(config)
        if verifier is None:
            jwks = None
            if config.jwks_file or config.jwks_url:
                jwks = self.jwks(config)
            verifier = self._verifiers[config] = JwtVerifier(config, jwks=jwks, now=self.now)
        return verifier

    def jwks(self, config: JwtConfig) -> JwksSource:
        key = (config.jwks_file, config.jwks_url)
        source = self._jwks.get(key)
        if source is None:
            source = self._jwks[key] = JwksSource(
                file=config.jwks_file, url=config.jwks_url, refresh=config.jwks_refresh, now=self.now
            )
        return source

    def jwks_sources(self) -> list[JwksSource]:
        return list(self._jwks.values())

"""Redis backend: state shared by several proxy instances.

The client is ``redis.asyncio`` (replies parsed by ``hiredis``, in C) with a bounded, blocking connection pool,
connect/socket timeouts from the config and no retry loop (it would hold the request while Redis is down):
idempotent reads and writes get one fresh try after a connection error (a pooled socket that died with a
restarted server), counters none.
Connection errors and timeouts become ``StoreUnavailable`` at once; the pool replaces dead connections by
itself, so calls work again as soon as Redis is back.

Key design (Redis Cluster friendly):

- every key is ``{prefix}{key}``; tag sets are ``{prefix}tag:{tag}`` (``tag:`` keys are reserved);
- every command and every MULTI block touches exactly one key (``incr``: ``INCRBY`` + ``PEXPIRE NX`` in one
  MULTI, so the TTL is set once, when the window starts; ``hincr``: ``HINCRBYFLOAT``s + ``PEXPIRE NX``);
- the entry and its tag sets are written by separate single-key commands (pipelined, not atomic); a tag set
  outlives its longest-lived member and may hold names of keys that already expired (harmless: purging
  them deletes nothing);
- ``keys``/``purge_prefix`` use ``SCAN`` (never ``KEYS``) and delete key by key (``UNLINK``), so no command
  spans slots. Callers that want related keys in one slot put a hash tag in the key, e.g. ``rl:{key-id}:..``.

Topologies (``connect``): one node (``redis://``, ``rediss://``, ``unix://``); a Redis Cluster
(``cluster: true``, or ``redis+cluster://host:port`` / ``rediss+cluster://``: any node, the others are
discovered) through ``redis.asyncio.RedisCluster``, which sends each command to the master owning its key's slot
(a MULTI block is on one key, so one slot; the tag script runs outside pipelines there, since a cluster
pipeline would not load it first); a master watched by Sentinel (``redis+sentinel://host:26379,host2:26379/
service[/db]``), found through the sentinels and looked up again when it fails over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, OutOfMemoryError, ReadOnlyError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import RESERVED_PREFIX, StoreHealth, StoreUnavailable, writable_key

# Errors that mean "Redis cannot serve us now". Other ResponseErrors (WRONGTYPE...) are bugs and propagate.
_UNAVAILABLE = (
    RedisConnectionError,
    ClusterDownError,
    SlotNotCoveredError,
    MasterNotFoundError,
    RedisTimeoutError,
    ReadOnlyError,
    OutOfMemoryError,
    OSError,
    TimeoutError,
)
_BATCH = 500
MAX_CONNECTIONS = 64  # per process; more concurrent calls queue for a connection (within their timeout)

# Add ARGV[1] to the tag set KEYS[1] and keep the set alive at least as long as that member (ARGV[2] ms, -1 =
# no expiry). One key only, so it is valid on Redis Cluster.
_TAG_ADD = """
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SADD', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
if ttl < 0 then
  redis.call('PERSIST', KEYS[1])
elseif existed == 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  local left = redis.call('PTTL', KEYS[1])
  if left >= 0 and left < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
end
return 1
"""


def _ms(ttl: float) -> int:
    return max(1, round(ttl * 1000))


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}


def topology(url: str, cluster: bool = False) -> str:
    """``single``, ``cluster`` or ``sentinel`` for a store URL (and the ``cluster`` setting)."""
    scheme = urlsplit(url).scheme
    if scheme in SENTINEL_SCHEMES:
        return "sentinel"
    if cluster or scheme in CLUSTER_SCHEMES:
        return "cluster"
    return "single"


def _sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str, int, str | None, str | None, bool]:
    """``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    sentinels = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        sentinels.append((host.strip("[]") or "127.0.0.1", int(port or 26379)) if host else (item, 26379))
    segments = [unquote(seg) for seg in parts.path.split("/") if seg]
    if not segments:
        raise ValueError(
            f"a sentinel URL names the master: redis+sentinel://host:26379/<service>, got {url!r}"
        )
    db = int(segments[1]) if len(segments) > 1 else 0
    return (
        sentinels,
        segments[0],
        db,
        unquote(username) or None,
        unquote(password) or None,
        SENTINEL_SCHEMES[parts.scheme],
    )


class RedisStore:
    def __init__(self, url: str, prefix: str, timeout: float, cluster: bool = False) -> None:
        self._prefix = prefix
        self._timeout = timeout
        self.topology = topology(url, cluster)
        # Redis, or RedisCluster (same command methods; their stubs differ in pools and pipelines)
        self._client: Any
        socket_options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        if self.topology == "cluster":
            scheme = urlsplit(url).scheme
            plain = CLUSTER_SCHEMES.get(scheme, scheme) + url[len(scheme) :]
            self._client = aioredis.RedisCluster.from_url(
                plain, max_connections=MAX_CONNECTIONS, **socket_options
            )
            first = urlsplit(plain)
            self._where = f"cluster {first.hostname}:{first.port or 6379}"
        elif self.topology == "sentinel":
            sentinels, service, db, username, password, tls = _sentinel_parts(url)
            self._sentinel = Sentinel(sentinels, sentinel_kwargs=dict(socket_options), **socket_options)
            self._client = self._sentinel.master_for(
                service,
                db=db,
                username=username,
                password=password,
                ssl=tls,
                max_connections=MAX_CONNECTIONS,
                **socket_options,
            )
            hosts = ",".join(f"{h}:{p}" for h, p in sentinels)
            self._where = f"sentinel {hosts} master {service}/{db}"
        else:
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=MAX_CONNECTIONS,
                timeout=timeout,  # how long a call may wait for a free connection
                retry_on_error=[],
                **socket_options,
            )
            client = aioredis.Redis(connection_pool=pool)
            self._client = client
            kw = client.connection_pool.connection_kwargs
            self._where = kw.get("path") or f"{kw.get('host')}:{kw.get('port')}/{kw.get('db', 0)}"
        self._tag_add = self._client.register_script(_TAG_ADD)
        # The cluster and sentinel pools raise at their connection limit instead of waiting for a connection as
        # the single-node one does: at most that many calls run at once, the rest wait (within their timeout).
        self._limit = asyncio.Semaphore(MAX_CONNECTIONS) if self.topology != "single" else None

    async def _call[T](
        self, op: Callable[[], Awaitable[T]], bounded: bool = True, idempotent: bool = False
    ) -> T:
        """Run ``op``; ``bounded`` ops (one round trip) also get an overall deadline.

        After Redis restarts, the first command on each pooled connection fails (the old socket is dead). An
        idempotent op gets one fresh try; counters never do (the command may have been applied).
        """

        async def attempt() -> T:
            try:
                return await op()
            except RedisConnectionError:
                if not idempotent:
                    raise
                return await op()

        try:
            if bounded:
                async with asyncio.timeout(self._timeout):
                    if self._limit is None:
                        return await attempt()
                    async with self._limit:
                        return await attempt()
            if self._limit is None:
                return await attempt()
            async with self._limit:
                return await attempt()
        except _UNAVAILABLE as exc:
            detail = str(exc) or "timed out"
            raise StoreUnavailable(f"redis {self._where}: {type(exc).__name__}: {detail}") from exc

    def _k(self, key: str) -> str:
        return self._prefix + key

    def _tag(self, tag: str) -> str:
        return f"{self._prefix}{RESERVED_PREFIX}{tag}"

    async def _scan(self, prefix: str) -> list[str]:
        internal = self._prefix + RESERVED_PREFIX
        found: list[str] = []
        async for raw in self._client.scan_iter(
            match=_glob_escape(self._prefix + prefix) + "*", count=_BATCH
        ):
            name = raw.decode()
            if not name.startswith(internal):
                found.append(name)
        return found

    async def _unlink_each(self, names: Sequence[str | bytes]) -> int:
        deleted = 0
        for start in range(0, len(names), _BATCH):
            async with self._client.pipeline(transaction=False) as pipe:
                for name in names[start : start + _BATCH]:
                    # the raw command: a cluster client's own `unlink` splits keys by slot (a coroutine)
                    pipe.execute_command("UNLINK", name)
                deleted += sum(await pipe.execute())
        return deleted

    # -- the Store interface ------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        # the client is built without decode_responses: every reply is bytes (the stubs also allow str)
        return await self._call(
            lambda: cast("Awaitable[bytes | None]", self._client.get(self._k(key))), idempotent=True
        )

    async def set(self, key: str, value: bytes, ttl: float | None = None, tags: Sequence[str] = ()) -> None:
        name = self._k(writable_key(key))

        async def op() -> None:
            px = None if ttl is None else _ms(ttl)
            if self.topology == "cluster":  # entry and tag sets live in different slots: one by one
                await self._client.set(name, value, px=px)
                for tag in tags:
                    await self._tag_add(keys=[self._tag(tag)], args=[name, -1 if px is None else px])
                return
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.set(name, value, px=px)
                for tag in tags:
                    await self._tag_add(
                        keys=[self._tag(tag)],
                        args=[name, -1 if px is None else px],
                        client=cast(
                            "aioredis.Redis", pipe
                        ),  # a pipeline runs the script (stubs: clients only)
                    )
                await pipe.execute()

        await self._call(op, idempotent=True)

    async def delete(self, key: str) -> bool:
        name = self._k(key)
        return bool(await self._call(lambda: self._client.execute_command("UNLINK", name), idempotent=True))

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        name = self._k(writable_key(key))

        async def op() -> int:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.incrby(name, amount)
                if ttl is not None:
                    pipe.pexpire(name, _ms(ttl), nx=True)
                value, *_ = await pipe.execute()
                return int(value)

        return await self._call(op)

    async def hincr(self, key: str, fields: Mapping[str, float], ttl: float | None = None) -> None:
        name = self._k(writable_key(key))
        if not fields:
            return

        async def op() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                for field, amount in fields.items():
                    pipe.hincrbyfloat(name, field, float(amount))
                if ttl is not None:
                    pipe.pexpire(name, _ms(ttl), nx=True)
                await pipe.execute()

        await self._call(op)

    async def hgetall(self, key: str) -> dict[str, float]:
        raw = await self._call(lambda: self._client.hgetall(self._k(key)), idempotent=True)
        return {field.decode(): float(value) for field, value in cast("dict[bytes, bytes]", raw).items()}

    async def keys(self, prefix: str) -> list[str]:
        names = await self._call(lambda: self._scan(prefix), bounded=False, idempotent=True)
        return sorted(name.removeprefix(self._prefix) for name in names)

    async def purge_prefix(self, prefix: str) -> int:
        async def op() -> int:
            return await self._unlink_each(await self._scan(prefix))

        return await self._call(op, bounded=False)

    async def purge_tag(self, tag: str) -> int:
        async def op() -> int:
            deleted = 0
            # SPOP removes members as we go, so entries tagged meanwhile are not lost from the set.
            while members := await self._client.spop(self._tag(tag), _BATCH):
                deleted += await self._unlink_each(cast("list[bytes]", members))  # SPOP with a count: a list
            return deleted

        return await self._call(op, bounded=False)

    async def health(self) -> StoreHealth:
        try:
            await self._call(self._client.ping)
        except StoreUnavailable as exc:
            return StoreHealth(False, str(exc))
        return StoreHealth(True, f"redis {self._where}: ping ok")

    async def close(self) -> None:
        if isinstance(self._client, aioredis.RedisCluster):
            await self._client.aclose()
        else:
            await self._client.aclose(close_connection_pool=True)

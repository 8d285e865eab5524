"""diskcache backend: the embedded default, shared safely by several processes on one machine.

diskcache is SQLite (in WAL mode) underneath. Where each call runs was chosen by measurement (2-core machine,
the proxy busy): a thread hop costs about 65 us of CPU, and a worker thread that runs SQLite while the event
loop is busy pays for every GIL hand-over of the sqlite3 module - 150 us of CPU per commit in the proxy, 560 us
and milliseconds of wall time in a bare two-thread test - where the same commit on one thread costs 25 us.

- Reads (``get``, ``hgetall``: cache lookups, API-key records) run inline on the event loop, as nginx reads its
  cache files: in WAL mode a reader never waits for a writer, and a read from the page cache costs about 6 us.
- Counters (``incr``: rate limits, on the request path) commit inline too: every counter write of one
  event-loop turn in one transaction. That handle waits at most ``INLINE_LOCK_TIMEOUT`` for another writer
  and never checkpoints (SQLite's only fsync in WAL mode with ``synchronous=NORMAL``, diskcache's default); a
  worker checkpoints every ``CHECKPOINT_EVERY`` inline commits.
- Other writes (``set``, ``delete``, ``hincr``: cache stores, purges of single keys, metrics rollups; none on
  the request path) go to one writer thread, which commits whatever has queued up meanwhile in a single
  transaction (group commit), so the process's own writes never contend for SQLite's lock.
- Maintenance (``keys``, purges, ``health``) runs in a small thread pool.

Every write gets its own result (``incr`` its own count) once its transaction committed; a write that raises
a plain error (a wrong type) fails alone, a disk error fails the whole transaction. Anything that goes wrong
inline - the handle not open yet, a lock held by another writer, a replaced directory - hands the work to a
worker, which waits properly (``SQLITE_BUSY_TIMEOUT``) and reports ``StoreUnavailable`` if it must. The cache
is opened lazily in a worker, so a broken directory does not stop the proxy from starting: calls raise
``StoreUnavailable``, ``health()`` says why, and the next call tries again (the directory may have been fixed).

Tags: an entry's first tag is diskcache's own indexed tag column (``evict(tag)``); the rare further tags are
kept in a small per-tag index entry. Internal entries use tuple keys, so they never collide with string keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import diskcache
from diskcache.core import DBNAME

from .base import StoreHealth, StoreUnavailable, writable_key

# How long SQLite waits for another writer's lock before diskcache raises Timeout (StoreUnavailable).
SQLITE_BUSY_TIMEOUT = 2.0
# The most writes one transaction of the writer thread commits (the rest wait for the next one).
MAX_BATCH = 128
# The inline handle never checkpoints; a worker does, after this many inline commits.
CHECKPOINT_EVERY = 200
# The longest an inline read or counter commit may hold the event loop waiting for a lock before the work
# moves to a worker thread.
INLINE_LOCK_TIMEOUT = 0.001
_DISK_ERRORS = (sqlite3.Error, OSError, diskcache.Timeout)

type _Write = tuple[Callable[[diskcache.Cache], Any], asyncio.Future[Any]]  # the write, who waits for it
type _Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]  # who waits, result, error


def _identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(os.path.join(path, DBNAME))
    except OSError:
        return None
    return info.st_dev, info.st_ino


class DiskStore:
    def __init__(self, path: str, size_limit: int, prefix: str, workers: int = 4) -> None:
        self._path = path
        self._size_limit = size_limit
        self._prefix = prefix
        self._cache: diskcache.Cache | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the database file we opened
        self._open_lock = threading.Lock()
        # The event loop's own read handle (see the module docstring) and the database file it was opened on.
        self._reader: diskcache.Cache | None = None
        self._reader_identity: tuple[int, int] | None = None
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="edgerules-disk")
        # Group commit: writes queued by the event loop, drained by the one writer thread (see the docstring).
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="edgerules-disk-writer")
        self._queued: deque[_Write] = deque()
        self._queue_lock = threading.Lock()
        self._draining = False
        # Counter writes of the current event-loop turn, committed inline (see `_count`).
        self._inline_queue: list[_Write] = []
        self._inline_tuned: diskcache.Cache | None = None  # the inline handle told not to checkpoint
        self._inline_commits = 0
        self._closed = False

    # -- plumbing -----------------------------------------------------------------------------------------

    def _open(self) -> diskcache.Cache:
        with self._open_lock:
            if self._cache is not None and _identity(self._path) != self._identity:
                # The directory was removed or replaced under us: the open SQLite connections would keep
                # writing into deleted files, unseen by other processes (and health() would still say ok).
                # Drop them (closed when collected) and open the path again, which fails while it is unusable.
                stale, self._cache = self._cache, None
                with contextlib.suppress(*_DISK_ERRORS):
                    stale.close()
            if self._cache is None:
                self._cache = diskcache.Cache(
                    self._path, timeout=SQLITE_BUSY_TIMEOUT, size_limit=self._size_limit, tag_index=True
                )
                self._identity = _identity(self._path)
            return self._cache

    async def _run[T](self, fn: Callable[[diskcache.Cache], T]) -> T:
        def call() -> T:
            return fn(self._open())

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, call)
        except _DISK_ERRORS as exc:
            raise StoreUnavailable(f"diskcache {self._path}: {type(exc).__name__}: {exc}") from exc

    async def _write[T](self, fn: Callable[[diskcache.Cache], T]) -> T:
        """Queue a write for the writer thread; its result (or error) once the batch holding it committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._to_writer(loop, [(fn, future)])
        return await self._outcome(future)

    async def _outcome[T](self, future: asyncio.Future[T]) -> T:
        try:
            return await future
        except _DISK_ERRORS as exc:
            raise StoreUnavailable(f"diskcache {self._path}: {type(exc).__name__}: {exc}") from exc

    def _to_writer(self, loop: asyncio.AbstractEventLoop, writes: list[_Write]) -> None:
        if self._closed:
            _settle(
                [(future, None, StoreUnavailable(f"diskcache {self._path}: closed")) for _, future in writes]
            )
            return
        with self._queue_lock:
            self._queued.extend(writes)
            start = not self._draining
            self._draining = True
        if start:
            loop.run_in_executor(self._writer, self._drain, loop)

    async def _count(self, fn: Callable[[diskcache.Cache], int]) -> int:
        """A counter write, on the request path: committed on the event loop itself, together with every other
        counter write of the same loop turn, on the inline handle (see the module docstring); handed to the
        writer thread when that handle is not open yet or the transaction cannot start at once."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        if self._inline_reader() is None:
            self._to_writer(loop, [(fn, future)])
        else:
            self._inline_queue.append((fn, future))
            if len(self._inline_queue) == 1:
                loop.call_soon(self._commit_inline, loop)
        return await self._outcome(future)

    def _commit_inline(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._inline_queue = self._inline_queue, []
        handle = self._inline_reader()
        if handle is None:
            self._to_writer(loop, batch)
            return
        try:
            if self._inline_tuned is not handle:  # a new handle after the directory was replaced, too
                # Never checkpoint (copy the WAL back and fsync) on the event loop: a worker does it.
                handle.reset("sqlite_wal_autocheckpoint", 0, update=False)
                self._inline_tuned = handle
            outcomes = _apply(handle, batch)
        except diskcache.Timeout:  # another writer holds the lock: the writer thread waits properly
            self._to_writer(loop, batch)
            return
        except _DISK_ERRORS:  # failed inside the transaction or at COMMIT: the writer thread decides
            self._drop_inline(handle)
            self._to_writer(loop, batch)
            return
        _settle(outcomes)
        self._inline_commits += 1
        if self._inline_commits % CHECKPOINT_EVERY == 0:
            self._pool.submit(self._checkpoint)

    def _drop_inline(self, handle: diskcache.Cache) -> None:
        """Close the event loop's connection (a transaction left open by a failed COMMIT rolls back with it,
        instead of holding SQLite's write lock) and let the next worker call open a new handle."""
        with contextlib.suppress(*_DISK_ERRORS):
            handle.close()
        if self._reader is handle:
            self._reader = None

    def _checkpoint(self) -> None:
        """Copy the WAL back into the database without blocking anyone (PASSIVE); the inline handle leaves
        checkpoints to this."""
        with (
            contextlib.suppress(*_DISK_ERRORS),
            contextlib.closing(
                sqlite3.connect(os.path.join(self._path, DBNAME), timeout=SQLITE_BUSY_TIMEOUT)
            ) as connection,
        ):
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """The writer thread: commit queued writes in batches until the queue is empty."""
        while True:
            with self._queue_lock:
                if not self._queued:
                    self._draining = False
                    return
                batch = [self._queued.popleft() for _ in range(min(len(self._queued), MAX_BATCH))]
            outcomes = self._commit(batch)
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown): nobody waits
                loop.call_soon_threadsafe(_settle, outcomes)

    def _commit(self, batch: list[_Write]) -> list[_Outcome]:
        """The writer thread's transaction: a disk error fails every write of the batch."""
        try:
            cache = self._open()
            outcomes = _apply(cache, batch)
        except _DISK_ERRORS as exc:
            return [(future, None, exc) for _, future in batch]
        self._open_reader(cache)  # counters can commit inline from now on
        return outcomes

    def _inline_reader(self) -> diskcache.Cache | None:
        """The event loop's read handle, if it is open on the database file that is there now."""
        reader = self._reader
        if reader is None or self._closed or _identity(self._path) != self._reader_identity:
            return None
        return reader

    def _open_reader(self, cache: diskcache.Cache) -> None:
        """Runs in a worker after a successful pool read or write batch: (re)open the inline handle on the
        same file (under the open lock: the pool and the writer thread may both get here)."""
        with self._open_lock:
            identity = self._identity
            if self._reader is not None and self._reader_identity == identity:
                return
            stale, self._reader = self._reader, None
            if stale is not None:
                with contextlib.suppress(*_DISK_ERRORS):
                    stale.close()
            try:  # opening writes diskcache's settings: under a writer's lock, try again next time
                self._reader = diskcache.Cache(self._path, timeout=INLINE_LOCK_TIMEOUT)
            except _DISK_ERRORS:
                return
            self._reader_identity = identity

    async def _read(self, key: str) -> object:
        full = self._prefix + key
        reader = self._inline_reader()
        if reader is not None:
            try:
                return reader.get(full)
            except _DISK_ERRORS:
                pass  # locked, or the files changed under us: the pool waits properly or says why
        return await self._run(partial(self._pool_read, full))

    def _pool_read(self, full_key: str, cache: diskcache.Cache) -> object:
        value = cache.get(full_key)
        self._open_reader(cache)
        return value

    def _k(self, key: str) -> str:
        return self._prefix + key

    def _tag(self, tag: str) -> str:
        return self._prefix + tag

    def _tag_index(self, tag: str) -> tuple[str, str, str]:
        return (self._prefix, "tag", tag)

    def _own_keys(self, cache: diskcache.Cache, prefix: str) -> list[str]:
        cache.expire()  # iterkeys() also yields expired entries
        full = self._prefix + prefix
        return [k for k in cache.iterkeys() if isinstance(k, str) and k.startswith(full)]

    # -- the Store interface ------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        value = await self._read(key)
        if value is None or isinstance(value, bytes):
            return value
        if isinstance(value, int):
            return str(value).encode()
        raise TypeError(f"key {key!r} holds a hash; use hgetall")

    async def set(self, key: str, value: bytes, ttl: float | None = None, tags: Sequence[str] = ()) -> None:
        writable_key(key)

        def op(c: diskcache.Cache) -> None:
            c.set(self._k(key), bytes(value), expire=ttl, tag=self._tag(tags[0]) if tags else None)
            for tag in tags[1:]:
                members: set[str] = c.get(self._tag_index(tag), default=set())
                members.add(self._k(key))
                c.set(self._tag_index(tag), members)

        await self._write(op)

    async def delete(self, key: str) -> bool:
        return await self._write(lambda c: c.delete(self._k(key)))

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        writable_key(key)

        def op(c: diskcache.Cache) -> int:
            try:
                return c.incr(self._k(key), amount, default=None)  # keeps the expiry set at creation
            except KeyError:  # missing or expired: create it with the window's TTL
                c.set(self._k(key), amount, expire=ttl)
                return amount

        return await self._count(op)

    async def hincr(self, key: str, fields: Mapping[str, float], ttl: float | None = None) -> None:
        writable_key(key)

        def op(c: diskcache.Cache) -> None:
            current, expire_at = c.get(self._k(key), default=None, expire_time=True)
            if current is None:
                current, remaining = {}, ttl
            elif not isinstance(current, dict):
                raise TypeError(f"key {key!r} does not hold a hash")
            else:
                remaining = None if expire_at is None else max(expire_at - time.time(), 0.001)
            for name, amount in fields.items():
                current[name] = current.get(name, 0.0) + float(amount)
            c.set(self._k(key), current, expire=remaining)

        await self._write(op)

    async def hgetall(self, key: str) -> dict[str, float]:
        value = await self._read(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise TypeError(f"key {key!r} does not hold a hash")
        return dict(value)

    async def keys(self, prefix: str) -> list[str]:
        found = await self._run(partial(self._own_keys, prefix=prefix))
        return sorted(k.removeprefix(self._prefix) for k in found)

    async def purge_prefix(self, prefix: str) -> int:
        def op(c: diskcache.Cache) -> int:
            return sum(bool(c.delete(k)) for k in self._own_keys(c, prefix))

        return await self._run(op)

    async def purge_tag(self, tag: str) -> int:
        def op(c: diskcache.Cache) -> int:
            c.expire()  # so the count leaves out entries that had already expired
            count = c.evict(self._tag(tag))
            with c.transact():
                members: set[str] = c.pop(self._tag_index(tag), default=set())
                return count + sum(bool(c.delete(k)) for k in members)

        return await self._run(op)

    async def health(self) -> StoreHealth:
        probe = (self._prefix, "health")

        def op(c: diskcache.Cache) -> int:
            c.set(probe, b"ok", expire=60)
            if c.get(probe) != b"ok":
                raise OSError("health probe read back a different value")
            return c.volume()

        try:
            volume = await self._run(op)
        except StoreUnavailable as exc:
            return StoreHealth(False, str(exc))
        return StoreHealth(True, f"diskcache {self._path}: {volume} bytes of {self._size_limit}")

    async def close(self) -> None:
        cache, self._cache = self._cache, None
        if self._closed:
            return
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(*_DISK_ERRORS):
                reader.close()  # closes the event loop's connection (this thread's)
        if cache is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, cache.close)
        self._pool.shutdown(wait=False)  # idle workers exit; their SQLite connections go with them
        self._writer.shutdown(wait=False)  # after the queued writes: the executor runs what it was given


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    """On the event loop: hand each write of a committed (or failed) batch its own result."""
    for future, result, error in outcomes:
        if future.done():  # the caller was cancelled meanwhile
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _apply(cache: diskcache.Cache, batch: list[_Write]) -> list[_Outcome]:
    """Run a batch of writes in one transaction: [(future, result, error)]. A write that raises a plain error
    (a wrong type) has written nothing and fails alone; a disk error rolls the whole transaction back and
    propagates."""
    outcomes: list[_Outcome] = []
    with cache.transact():
        for fn, future in batch:
            try:
                outcomes.append((future, fn(cache), None))
            except _DISK_ERRORS:
                raise
            except Exception as exc:
                outcomes.append((future, None, exc))
    return outcomes

"""The running edge, independent of mitmproxy: policy (with hot reload), state, health probes, upstream calls,
metrics and the admin endpoints. The mitmproxy addon and `edgerules serve` are thin adapters over this.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from edgerules.cache.http import invalidates, invalidation_targets
from edgerules.cache.response import RevalidationGate
from edgerules.diagnostics import PolicyError
from edgerules.edge.prober import HealthProber
from edgerules.edge.upstream import UpstreamClient, UpstreamError, UpstreamResponse
from edgerules.edge.workers import WorkerBoard, worker_info
from edgerules.engine.core import PreparedPolicy, body_limit, decide, prepare, response_headers
from edgerules.engine.errors import error_answer
from edgerules.engine.headers import NO_EDITS, HeaderEdits, forwarded_request_fields
from edgerules.engine.health import HealthRegistry
from edgerules.engine.state import EngineState
from edgerules.engine.steps import RESPONSE, Done, OriginEvent, Try, body_received, drive
from edgerules.engine.values import (
    Answer,
    Context,
    Decision,
    EdgeRequest,
    EdgeResponse,
    Forward,
    HeaderView,
    TraceEntry,
)
from edgerules.kinds import EdgeRulesError
from edgerules.observe.lograte import RateLimitedWarning
from edgerules.observe.metrics import (
    HTTP_METHODS,
    MetricsRecorder,
    RequestRecord,
    access_log_line,
    redact_path,
)
from edgerules.policy.load import load_policy_file
from edgerules.policy.loader import MAX_FILE_BYTES
from edgerules.policy.model import Policy
from edgerules.stores import open_store

log = logging.getLogger("edgerules")
_EVENTS = {
    "connect": "connect_error",
    "timeout": "timeout",
    "protocol": "protocol_error",
    "too_large": "too_large",
}
access_log = logging.getLogger("edgerules.access")

ADMIN_PREFIX = "/__edgerules/"


@dataclass(slots=True)
class ReloadStatus:
    loaded_at: float = 0.0
    reloads: int = 0
    failures: int = 0
    last_error: str | None = None  # "file:line:col: message" of the first problem
    fingerprint: str = ""
    restart_required: str | None = None  # settings a reload cannot apply (the store is opened once)
    signature: tuple = ()  # stat data of the policy files when `fingerprint` was taken
    watch_checks: int = 0
    watch_failures: int = 0  # checks of the policy files that failed (retried at the next interval)
    watch_error: str | None = None  # why the last check failed; None once a check succeeds again
    watch_checked_at: float = 0.0  # last successful check


class WatchError(EdgeRulesError):
    """The policy files cannot be checked (not a regular file, a check that does not finish)."""


MAX_STORES_IN_FLIGHT = 256
"""Cache stores running at once (each holds one response body); past it responses are served but not stored."""


@dataclass(slots=True)
class CacheStats:
    stores_in_flight: int = 0
    stores_skipped: int = 0  # cacheable responses not stored because MAX_STORES_IN_FLIGHT were running


@dataclass(frozen=True, slots=True)
class FinalResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(slots=True)
class Exchange:
    """What the runtime remembers about one request between its phases."""

    policy: Policy | None  # None: no policy loaded yet (the answer is all_regions_down)
    decision: Decision
    started: float
    upstream_seconds: float | None = None
    extra: dict[str, object] = field(default_factory=dict)


def files_signature(paths: Sequence[str]) -> tuple:
    """What `stat` says of each file (type, device, inode, size, mtime and ctime in ns): a change of any of
    them is a reason to read the file again; the file is never opened."""
    out: list[tuple[object, ...]] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            out.append((path, "missing", exc.errno))
            continue
        out.append(
            (path, stat.S_IFMT(st.st_mode), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        )
    return tuple(out)


def files_fingerprint(paths: Sequence[str]) -> str:
    """A hash of the files' contents, bounded like the loader: regular files only (a FIFO or a device at the
    policy path raises `WatchError` instead of blocking or reading forever), at most MAX_FILE_BYTES + 1 bytes
    each. Opened non-blocking, so a FIFO swapped in after the stat does not block either."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            digest.update(f"missing:{path}:{exc.errno}".encode())
            continue
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise WatchError(f"{path}: not a regular file")
            digest.update(handle.read(MAX_FILE_BYTES + 1))
    return digest.hexdigest()


def _changed_fingerprint(paths: Sequence[str], signature: tuple) -> tuple[tuple, str] | None:
    """None when the stat data is `signature`; else the new (signature, fingerprint)."""
    now = files_signature(paths)
    if now == signature:
        return None
    return now, files_fingerprint(paths)


def _snapshot(paths: Sequence[str]) -> tuple[tuple, str]:
    """(signature, fingerprint) of the files, taken before they are loaded: a change after it is seen at the
    next check."""
    signature = files_signature(paths)
    try:
        fingerprint = files_fingerprint(paths)
    except WatchError as exc:
        fingerprint = f"unreadable:{exc}"
    return signature, fingerprint


class EdgeRuntime:
    def __init__(
        self,
        policy_path: str,
        env: str | None,
        *,
        environ: Mapping[str, str] | None = None,
        reload_interval: float = 1.0,
    ) -> None:
        self.policy_path = policy_path
        self.env = env or None
        self.environ = environ if environ is not None else os.environ
        self.reload_interval = reload_interval
        self.reload_status = ReloadStatus()
        self.health = HealthRegistry()
        self.upstream = UpstreamClient()
        self._policy: Policy | None = None
        # the policy prepared for the state (engine.core.prepare): made once per install, when both exist
        self._prepared: PreparedPolicy | None = None
        self.state: EngineState | None = None
        self.prober: HealthProber | None = None
        self.metrics: MetricsRecorder | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task] = set()
        self._reload_lock = asyncio.Lock()
        self._revalidations = RevalidationGate()
        # a full disk or a down store fails every store: one line a minute, with the count
        self._store_warnings = RateLimitedWarning(log, interval=60.0)
        self._watch_warnings = RateLimitedWarning(log, interval=60.0)
        self._watch_job: asyncio.Future | None = None
        self.board: WorkerBoard | None = None  # set when this process is one worker of `serve --workers N`
        self.ready = asyncio.Event()  # set once start() has opened the store and started the background tasks
        self._started = False
        self._stopped = False
        self._wake: asyncio.Event | None = None  # wakes the running policy watcher (the interval changed)
        self.cache_stats = CacheStats()

    # ------------------------------------------------------------------------------------------ policy lifecycle

    @property
    def policy(self) -> Policy | None:
        return self._policy

    def load_initial(self) -> Policy:
        """Load for serving (env secrets checked) and open the store; raises PolicyError with file:line
        diagnostics. (The mitmproxy addon installs with `install` and opens the store in `start`.)"""
        result = load_policy_file(self.policy_path, self.env, environ=self.environ, for_serving=True)
        for warning in result.warnings:
            log.warning("%s", warning)
        self._install(result.policy, _snapshot(result.policy.files))
        self._open_state()
        return result.policy

    def install(self, policy: Policy, *, path: str | None = None, env: str | None = None) -> None:
        """Serve `policy`, compiled by the caller (from `path` and `env` when given: the policy option changed),
        through the step hot reload takes. Opens nothing: the store and the background tasks start in `start`."""
        if path is not None:
            self.policy_path, self.env = path, env or None
        self._install(policy, _snapshot(policy.files))

    def same_store(self, policy: Policy) -> bool:
        """Can `policy` be installed in place (its store is the one this runtime opened, or none is open yet)?"""
        return self.state is None or self._policy is None or policy.store == self._policy.store

    def set_reload_interval(self, seconds: float) -> None:
        self.reload_interval = seconds
        if self._wake is not None:
            self._wake.set()  # the watcher's current wait ends now, the next one uses the new interval

    def _open_state(self) -> None:
        policy = self._policy
        assert policy is not None and self.state is None
        store = open_store(policy.store)
        self.state = EngineState(store, self.health)
        self._prepared = prepare(policy, self.state)
        self.metrics = MetricsRecorder(
            store, policy.metrics, instance_id=f"{os.getpid()}", regions=list(policy.regions)
        )

    def _install(self, policy: Policy, snapshot: tuple[tuple, str]) -> None:
        if self.state is None:
            pass  # nothing opened yet: start() opens the store of the policy installed last
        else:
            running = self._policy
            if running is not None and policy.store != running.store:
                # Keys, limits, cache and rollups live in the store opened at start: say so, don't swap silently.
                self.reload_status.restart_required = "store settings changed: restart to use the new store"
                log.warning("policy reload: %s", self.reload_status.restart_required)
            if self.metrics is not None:
                # a reload may switch recording (or the access log) on or off
                self.metrics.config = policy.metrics
        self._policy = policy  # one reference swap: a request reads it once and keeps that policy
        self._prepared = prepare(policy, self.state) if self.state is not None else None
        self.reload_status.loaded_at = time.time()
        self.reload_status.signature, self.reload_status.fingerprint = snapshot
        if self.prober is not None:
            self.prober.sync()

    @property
    def started(self) -> bool:
        return self._started

    async def start(self) -> None:
        """Open the store (unless `load_initial` did), start the prober, the policy watcher, the metrics flush
        and the JWKS refreshers. Once: a second call does nothing."""
        if self._started or self._stopped:
            return
        self._started = True
        assert self._policy is not None
        if self.state is None:
            self._open_state()
        assert self.state is not None
        self.prober = HealthProber(self.health, lambda: self._policy)
        self.prober.sync()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._watch_policy()))
        if self.metrics is not None:
            self._tasks.append(loop.create_task(self.metrics.run()))
        for source in self.state.jwks_sources():
            self._tasks.append(loop.create_task(source.run_refresher()))
        info = worker_info(os.environ)
        if info is not None:
            self.board = WorkerBoard(info, self)
            self._tasks.append(loop.create_task(self.board.run()))
        self.ready.set()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def tasks(self) -> list[asyncio.Task]:
        """The background tasks this runtime started and has not finished (tests: nothing may be left)."""
        return [task for task in (*self._tasks, *self._pending) if not task.done()]

    async def stop(self) -> None:
        """Stop everything `start` started and close the store. Once: a second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        for task in (*self._tasks, *self._pending):
            task.cancel()
        for task in (*self._tasks, *self._pending):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._pending.clear()
        if self._watch_job is not None:
            self._watch_job.cancel()  # a file check still in its thread: nobody waits for it any more
        if self.board is not None:
            self.board.close()
        if self.prober is not None:
            await self.prober.close()
        if self.metrics is not None:
            with contextlib.suppress(Exception):
                await self.metrics.close()
        await self.upstream.close()
        if self.state is not None:
            with contextlib.suppress(Exception):
                await self.state.store.close()

    async def _watch_policy(self) -> None:
        """Never ends but by cancellation: a failed check is counted, logged (at most once a minute), shown on
        the status endpoint and as a metric, and retried at the next interval."""
        wake = self._wake = (
            asyncio.Event()
        )  # of this loop (an Event belongs to the loop that first waits on it)
        while True:
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.reload_interval)
            status = self.reload_status
            status.watch_checks += 1
            try:
                await self._check_policy_files()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                status.watch_failures += 1
                status.watch_error = str(exc) or type(exc).__name__
                self._watch_warnings.warn(
                    "policy watcher: %s (retrying every %gs)", exc, self.reload_interval
                )
                if self.metrics is not None:
                    self.metrics.prometheus.policy_watch_failed()
            else:
                if status.watch_error is not None:
                    log.info("policy watcher: the policy files can be checked again")
                status.watch_error = None
                status.watch_checked_at = time.time()

    async def _check_policy_files(self) -> None:
        """Stat the files (off the event loop); read them only when the stat data changed; reload when the
        content did. A check still running from an earlier interval (a stalled file system) is waited for, not
        started again, so at most one thread is ever stuck on it."""
        policy = self._policy
        files = tuple(policy.files if policy else (self.policy_path,))
        job = self._watch_job
        if job is None or job.done():
            job = self._watch_job = asyncio.ensure_future(
                asyncio.to_thread(_changed_fingerprint, files, self.reload_status.signature)
            )
        try:
            async with asyncio.timeout(max(5.0, 5 * self.reload_interval)):
                changed = await asyncio.shield(job)
        except TimeoutError:
            raise WatchError("checking the policy files takes too long (a stalled file system?)") from None
        if changed is None:
            return
        signature, fingerprint = changed
        if fingerprint == self.reload_status.fingerprint:
            self.reload_status.signature = signature  # touched, same content: nothing to load
            return
        await self.reload()

    async def reload(self) -> bool:
        """Load, validate and compile off the event loop, then swap; a bad file keeps the last good policy."""
        async with self._reload_lock:
            policy = self._policy
            files = tuple(policy.files if policy else (self.policy_path,))
            source = (self.policy_path, self.env)
            snapshot = await asyncio.to_thread(_snapshot, files)
            try:
                result = await asyncio.to_thread(
                    load_policy_file, self.policy_path, self.env, environ=self.environ, for_serving=True
                )
                if source != (self.policy_path, self.env):
                    # the policy option changed meanwhile: that policy is installed, not this one
                    return False
            except PolicyError as exc:
                self.reload_status.failures += 1
                first = exc.diagnostics[0] if exc.diagnostics else None
                self.reload_status.last_error = str(first) if first else str(exc)
                self.reload_status.signature, self.reload_status.fingerprint = snapshot
                log.error("policy reload failed, still serving the last good policy:\n%s", exc)
                self._count_reload("failure")
                return False
            if tuple(result.policy.files) != files:  # includes changed: watch the new set of files
                snapshot = await asyncio.to_thread(_snapshot, result.policy.files)
            self._install(result.policy, snapshot)
            self.reload_status.reloads += 1
            self.reload_status.last_error = None
            self._count_reload("success")
            log.info("policy reloaded: %s version %s", result.policy.name, result.policy.version)
            return True

    def _count_reload(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.prometheus.policy_reloaded(result == "success")

    # ---------------------------------------------------------------------------------------------- requests

    async def decide(self, req: EdgeRequest) -> Exchange:
        prepared = (
            self._prepared
        )  # read once: a reload swaps it, this request keeps the policy it started with
        started = time.perf_counter()
        if prepared is None:
            answer = error_answer(None, "all_regions_down", reason="no_policy")
            return Exchange(self._policy, Decision(answer, Context(), ()), started)
        decision = await decide(req, prepared)
        return Exchange(prepared.policy, decision, started)

    def check_body(self, exchange: Exchange, size: int) -> Answer | None:
        """The body the client sent, once read: the engine's answer when it is over the limit (the exchange
        then carries that decision), else None."""
        if exchange.policy is None:
            return None  # already answered (no policy)
        refused = body_received(exchange.policy, exchange.decision, size)
        if refused is None:
            return None
        exchange.decision = refused
        assert isinstance(refused.outcome, Answer)
        return refused.outcome

    def body_limit(self, exchange: Exchange) -> int | None:
        """The body limit of this request (its class's own, else `validation.max_body_size`)."""
        if exchange.policy is None:
            return None
        return body_limit(exchange.policy, exchange.decision.context.request_class)

    async def forward(
        self, exchange: Exchange, method: str, original_headers: Sequence[tuple[str, str]], body: bytes
    ) -> FinalResponse:
        """Carry out the engine's steps (`engine/steps.py`): each try sent with the upstream client, what the
        origin did handed back, until the engine finishes the decision. I/O only: failover, 503/504,
        stale-if-error and 304 revalidation are decided by `steps.next_step`."""
        # read once per try and again by the cache: mitmproxy's items() is a generator
        original_headers = list(original_headers)
        policy = exchange.policy
        forward = exchange.decision.outcome
        assert policy is not None and isinstance(forward, Forward)  # only a decided request is forwarded
        last: list[UpstreamResponse] = []
        request = exchange.decision.request
        client = request.client_ip if request is not None else ""

        async def send(step: Try) -> OriginEvent:
            event, response = await self._send(policy, forward, step, original_headers, body, client)
            if response is not None:
                exchange.upstream_seconds = response.elapsed
                last[:] = [response]
            return event

        done, _ = await drive(policy, exchange.decision, method, send, time.time)
        exchange.decision = done.decision
        if done.freshen is not None:
            await self._freshen(done)
        if done.relay:
            response = last[0]
            return FinalResponse(response.status, response.reason, response.headers, response.body)
        answer = done.decision.outcome
        assert isinstance(answer, Answer)
        return FinalResponse(answer.status, "", list(answer.headers), answer.body)

    async def _send(
        self,
        policy: Policy,
        forward: Forward,
        step: Try,
        original_headers: Sequence[tuple[str, str]],
        body: bytes,
        client: str = "",
    ) -> tuple[OriginEvent, UpstreamResponse | None]:
        """One try: the request as the engine shaped it, what came back as an `OriginEvent`, passive health."""
        target, passive = step.target, policy.passive_health
        headers = forwarded_request_fields(original_headers, step.edits, framing_kept=False)
        sent_at = time.time()
        try:
            response = await self.upstream.send(
                step.method,
                target,
                headers,
                body,
                timeout=forward.timeout,
                connect_timeout=forward.connect_timeout,
            )
        except UpstreamError as exc:
            if exc.kind == "connect":
                self.health.record_connect_failure(target.region, exc.detail, passive)
            elif exc.kind != "too_large":  # a large answer is no sign of an unhealthy origin
                self.health.record_failure(target.region, exc.kind, passive)
            return OriginEvent(
                _EVENTS[exc.kind], detail=exc.detail, sent_at=sent_at, received_at=time.time()
            ), None
        self.health.record_answer(target.region, response.status, client, passive)
        now = time.time()
        event = OriginEvent(
            RESPONSE, response.status, tuple(response.headers), "", now - response.elapsed, now
        )
        return event, response

    async def _freshen(self, done: Done) -> None:
        """Write back the stored entry a 304 freshened (the engine decided; this is the store write)."""
        ctx = done.decision.context
        assert self.state is not None and done.freshen is not None
        assert ctx.cache_rule is not None and ctx.cache_lookup is not None  # freshen comes only from a lookup
        await self.state.cache.write_revalidated(ctx.cache_rule, ctx.cache_lookup, done.freshen)

    def finish(self, exchange: Exchange, status: int, headers: Sequence[tuple[str, str]]) -> HeaderEdits:
        """Response-phase header edits for whatever the client is about to get."""
        now = time.time()
        if exchange.policy is None:
            return NO_EDITS
        # The cache decides on what the origin said, not on the policy's response rules applied after this.
        # `headers` may be a generator (mitmproxy's items()): read it once, for both.
        exchange.extra["origin_headers"] = headers = list(headers)
        return response_headers(
            exchange.decision, exchange.policy, EdgeResponse(status, HeaderView(headers)), now=now
        )

    def record(self, exchange: Exchange, req: EdgeRequest, status: int) -> None:
        policy = exchange.policy
        if self.metrics is None or policy is None:
            return
        if not policy.metrics.enabled and not policy.metrics.access_log:
            return  # `metrics.enabled: false`: no per-request work at all
        ctx = exchange.decision.context
        error = ctx.error
        if ctx.auth_outcome.startswith("failed:"):
            error = "auth:" + ctx.auth_outcome.removeprefix("failed:")
        elif ctx.rate_limited_by is not None:
            error = f"rate_limited:{ctx.rate_limited_by}"  # per-rule rejection counters
        latency_ms = (time.perf_counter() - exchange.started) * 1000
        upstream_ms = exchange.upstream_seconds * 1000 if exchange.upstream_seconds is not None else None
        try:
            record = RequestRecord(
                timestamp=time.time(),
                latency_ms=latency_ms,
                upstream_ms=upstream_ms,
                region=ctx.region,
                cache_status=ctx.cache_status,
                country=ctx.country,
                request_class=ctx.request_class,
                status=status,
                method=req.method
                if req.method in HTTP_METHODS
                else "OTHER",  # a closed set, as the collector's
                path_class=ctx.request_class,
                error=error,
            )
            self.metrics.record(record)
            if policy.metrics.access_log:
                path = redact_path(ctx.path, policy.metrics)  # secrets in paths never reach the log
                access_log.info(access_log_line(record, {"path": path}))
        except Exception:  # metrics must never break a request
            log.exception("metrics record failed")

    def is_admin_path(self, path: str) -> bool:
        return path.startswith(ADMIN_PREFIX) or path == ADMIN_PREFIX.rstrip("/")

    def internal_error(self) -> Answer:
        return error_answer(self._policy, "internal_error")

    # ------------------------------------------------------------------------------------------ after responses

    async def after_response(
        self,
        exchange: Exchange,
        req: EdgeRequest,
        status: int,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
    ) -> None:
        """Cache store and invalidations, done before the client gets the response (read-your-writes: the next
        request sees the entry, or no longer sees an invalidated one). At most `MAX_STORES_IN_FLIGHT` stores run
        at once: past that a cacheable response is not stored (counted) rather than queued; an invalidation is
        never skipped. Stale-while-revalidate refreshes still run in the background."""
        if self.state is None:
            return
        ctx = exchange.decision.context
        if ctx.cache_revalidate is not None:
            self.revalidate_in_background(exchange, req)
        if not isinstance(exchange.decision.outcome, Forward):
            return
        cache = self.state.cache
        origin_headers = list(exchange.extra.get("origin_headers", headers))  # type: ignore[call-overload]
        # By default only an authenticated request may invalidate shared entries: an anonymous unsafe request (a
        # public path's POST) would otherwise let anyone keep a cached answer cold (`cache.invalidation: any`
        # follows RFC 9111 4.4 for every client).
        policy = exchange.policy
        may_invalidate = ctx.identity is not None or (
            policy is not None and policy.cache is not None and policy.cache.invalidation == "any"
        )
        if (
            policy is not None
            and policy.cache is not None
            and may_invalidate
            and invalidates(req.method, status)
        ):
            path = ctx.path or req.path
            # RFC 9111 4.4: the target URI and same-origin Location / Content-Location targets
            for target in dict.fromkeys(
                (path, *invalidation_targets(req.scheme, req.host, path, origin_headers))
            ):
                await cache.invalidate_url(req.scheme, req.host, target)
        if ctx.cache_rule is None or not ctx.cache_key or body is None:
            return
        stats = self.cache_stats
        if stats.stores_in_flight >= MAX_STORES_IN_FLIGHT:
            stats.stores_skipped += 1
            if self.metrics is not None:
                self.metrics.prometheus.cache_stores_skipped.inc()
            note = TraceEntry("cache", ctx.cache_rule.name, "not-stored", "overload")
            exchange.decision = replace(exchange.decision, trace=(*exchange.decision.trace, note))
            return
        now = time.time()
        stats.stores_in_flight += 1
        try:
            await cache.store(
                ctx.cache_rule,
                ctx.cache_key,
                ctx.path or req.path,
                req.method,
                (ctx.cache_request_headers or req.headers).pairs,
                status,
                origin_headers,
                body,
                now - (exchange.upstream_seconds or 0.0),
                now,
            )
        finally:
            stats.stores_in_flight -= 1

    # ------------------------------------------------------------------------------ cache revalidation (RFC 9111/5861)

    def revalidate_in_background(self, exchange: Exchange, req: EdgeRequest) -> bool:
        """stale-while-revalidate: refresh the entry a STALE answer came from, at most once per entry at a time
        (and not again for answers looked up before the last refresh finished). True when scheduled."""
        ctx = exchange.decision.context
        forward, lookup = ctx.cache_revalidate, ctx.cache_lookup
        if forward is None or lookup is None or self.state is None or exchange.policy is None:
            return False
        if not self._revalidations.claim(lookup.key, exchange.started):
            return False
        self._background(self._revalidate(exchange.policy, ctx, req, forward, lookup))
        return True

    async def _revalidate(self, policy: Policy, ctx, req: EdgeRequest, forward: Forward, lookup) -> None:
        """One conditional GET through the engine's steps (the same failover as a client's request): a 304
        freshens the entry, another response is offered to the cache, a failure leaves the entry as it is."""
        assert self.state is not None
        cache = self.state.cache
        decision = Decision(forward, ctx, (), req)
        last: list[UpstreamResponse] = []

        async def send(step: Try) -> OriginEvent:
            event, response = await self._send(policy, forward, step, req.headers.pairs, b"", "edge")
            if response is not None:
                last[:] = [response]
            return event

        try:
            done, tries = await drive(policy, decision, "GET", send, time.time)
            if done.freshen is not None:
                await self._freshen(done)
            elif done.relay:
                response, event = last[0], tries[-1][1]
                await cache.store(
                    ctx.cache_rule,
                    ctx.cache_key,
                    ctx.path or req.path,
                    "GET",
                    (ctx.cache_request_headers or req.headers).pairs,
                    response.status,
                    response.headers,
                    response.body,
                    event.sent_at,
                    event.received_at,
                )
            else:
                log.info("background revalidation of %s failed: %s", ctx.path, done.decision.context.error)
        finally:
            self._revalidations.release(lookup.key)

    def native_failure(self, exchange: Exchange, detail: str) -> None:
        """A stream or WebSocket mitmproxy forwarded itself failed: count it against the region."""
        region = exchange.decision.context.region
        if region and exchange.policy is not None:
            self.health.record_failure(region, detail, exchange.policy.passive_health)

    def _background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._store_warnings.warn("background store task failed: %s", task.exception())

    def prometheus_text(self) -> str:
        """This process's metrics; with `serve --workers N`, the whole server's (see `edgerules.edge.workers`)."""
        own = self.own_prometheus_text()
        return self.board.prometheus_text(own) if self.board is not None else own

    def own_prometheus_text(self) -> str:
        if self.metrics is None:
            return ""
        policy = self._policy
        regions = list(policy.regions) if policy else []
        for name in regions:
            self.metrics.prometheus.set_region_health(name, self.health.is_healthy(name))
        return self.metrics.render_prometheus()

"""The mitmproxy adapter: flows in, engine values out, decisions applied. Everything else lives in `runtime`.

mitmproxy fails open: an exception in a hook is logged and the flow goes on to the origin. So every hook here
catches everything and answers a generic 500 instead, and until a policy is loaded every request gets a 503.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.net.http import http1, status_codes
from mitmproxy.utils import human

from edgerules.diagnostics import PolicyError
from edgerules.edge.admin import handle_admin, refusal_at_head
from edgerules.edge.flowconv import edge_request
from edgerules.edge.flowview import ERROR_MARK, META, decision_data, internal_error_data, summary
from edgerules.edge.guard import (
    ClientLimits,
    StreamBudget,
    answer_and_close,
    closes_unread,
    limit_buffered_body,
    over_connection_cap,
    pending_body,
    raw_response,
    sweep,
    wrap_http_layer,
)
from edgerules.edge.mitmprivate import fast_response
from edgerules.edge.runtime import EdgeRuntime, Exchange
from edgerules.edge.upstream import DEFAULT_MAX_BODY_BYTES
from edgerules.engine.errors import error_answer
from edgerules.engine.headers import forwarded_request_fields, relayed_response_fields
from edgerules.engine.values import Answer, EdgeRequest, Forward
from edgerules.gctuning import freeze_startup_objects
from edgerules.observe.lograte import RateLimitedWarning
from edgerules.policy.load import load_policy_file

log = logging.getLogger("edgerules")

# A request head (request line and every header line) above this is refused with 431 while it is being read.
# The policy's own checks (validation.max_url_length, max_header_size) apply to the heads below it.
DEFAULT_MAX_HEAD_BYTES = 65536
OPTIONS = frozenset({"edgerules_policy", "edgerules_env", "edgerules_reload_interval"})
STARTUP_WAIT = 30.0  # seconds a request waits for the runtime to start (store, prober) before a 503

# Client timeouts and the connection cap: (option, default, help). Seconds as strings (mitmproxy options have
# no float type); 0 switches one off. docs/operations.md explains how they relate to LimitNOFILE.
CLIENT_LIMIT_OPTIONS = (
    (
        "edgerules_head_timeout",
        "10",
        "Seconds a client has for a complete request head, from its connection (or its previous response); "
        "then 408 and the connection is closed.",
    ),
    (
        "edgerules_keepalive_timeout",
        "60",
        "Seconds an idle keep-alive connection (no byte of a next request) is kept open.",
    ),
    (
        "edgerules_body_timeout",
        "60",
        "Seconds a client has to send a request body the edge reads whole, from the end of its head; then 408 "
        "and the connection is closed (streamed bodies are not limited in time).",
    ),
    (
        "edgerules_max_connections",
        "10000",
        "Most client connections at once; further ones are closed as soon as they are accepted.",
    ),
)
LIVE_LIMIT = 100_000  # flows in flight the addon remembers at most (a flow that never ends must not leak)


@dataclass(slots=True)
class Live:
    """What the addon remembers about one flow between its hooks. Live objects (the exchange holds the compiled
    policy, regex sets, the cache lookup) never go on the flow: mitmproxy copies, pickles and saves flows."""

    exchange: Exchange | None  # None: an admin request
    request: EdgeRequest | None = None
    headers_done: bool = False  # the policy's response headers are on flow.response
    origin: str | None = None  # scheme://host:port of the origin that answered
    cut: bool = False  # a streamed body cut at its limit: the errors that follow are ours, not the origin's


def _response(status: int, headers, body: bytes) -> http.Response:
    """A response carrying `body` byte for byte: an origin's gzip body must not be encoded a second time.

    Built directly rather than with `Response.make` (which encodes an empty body with the response's
    Content-Encoding and rewrites the header list twice): this runs for every response. Content-Length is
    the body's length, in place of the first one given (later ones dropped), or appended; none for 1xx,
    204 and 304.
    """
    length = None if status in (204, 304) or 100 <= status < 200 else str(len(body)).encode()
    fields = []
    length_done = False
    for name, value in headers:
        key = name.encode()
        if key.lower() == b"content-length":
            if length is not None and not length_done:
                fields.append((key, length))
                length_done = True
            continue
        fields.append((key, value.encode("latin-1", "replace")))
    if length is not None and not length_done:
        fields.append((b"content-length", length))
    now = time.time()
    reason = status_codes.RESPONSES.get(status, "").encode()
    return fast_response(status, reason, http.Headers(fields), body, now)


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")  # as mitmproxy's Headers encode str names and values


def _edge_request(flow: http.HTTPFlow) -> EdgeRequest:
    return edge_request(flow)


class EdgeRules:
    def __init__(self) -> None:
        self.runtime: EdgeRuntime | None = None
        self._running = False  # mitmproxy called `running` (and not `done` since)
        self._tasks: set[asyncio.Task] = set()  # runtime replacements under way
        self._retired: list[EdgeRuntime] = []  # replaced runtimes not stopped yet
        self.flow_details = True  # edgerules_flow_details
        self.live: dict[str, Live] = {}  # flow.id -> state; dropped when the flow ends (response, error)
        self.limits = ClientLimits()
        self.origin_cap = DEFAULT_MAX_BODY_BYTES
        self._refused = RateLimitedWarning(log, interval=10.0)
        self._sweeper: asyncio.Task | None = None

    def load(self, loader) -> None:
        loader.add_option("edgerules_policy", str, "", "Path of the edgerules policy file (YAML).")
        loader.add_option(
            "edgerules_env", str, "", "Environment overlay of the policy to serve (e.g. local)."
        )
        loader.add_option(
            # mitmproxy options have no float type: a string, parsed in configure().
            "edgerules_reload_interval",
            str,
            "1.0",
            "Seconds between checks for policy changes (e.g. 0.2).",
        )

        loader.add_option(
            "edgerules_flow_details",
            bool,
            True,
            "Put each decision on its flow for mitmweb, the console and -w: a summary in the comment, the "
            "decision and its trace in the metadata, edge errors marked, the origin that answered as the "
            "request's host. `edgerules serve` turns it off (no one looks at its flows).",
        )
        loader.add_option(
            "edgerules_max_head_bytes",
            int,
            DEFAULT_MAX_HEAD_BYTES,
            "Largest HTTP/1 request head (request line and headers) read from a client; a longer one is "
            "answered 431 and the connection closed. 0: no limit.",
        )

        for name, default, text in CLIENT_LIMIT_OPTIONS:
            loader.add_option(name, str, default, text)
        loader.add_option(
            "edgerules_max_origin_body",
            str,
            "64m",
            "Largest origin answer to a buffered request read into memory (k/m/g suffixes); a larger one is "
            "answered 502 upstream_too_large.",
        )

    def next_layer(self, nextlayer) -> None:
        if nextlayer.layer is None:
            # mitmdump runs script addons before its layer chooser: let it choose now, then wrap its choice
            chooser = ctx.master.addons.get("nextlayer")
            if chooser is not None:
                chooser.next_layer(nextlayer)
        wrap_http_layer(nextlayer, ctx.options.edgerules_max_head_bytes, self._head_refusal)

    def _head_refusal(self) -> bytes:
        runtime = self.runtime
        answer = error_answer(runtime.policy if runtime is not None else None, "headers_too_large")
        return raw_response(answer.status, answer.headers, answer.body)

    def client_connected(self, client) -> None:
        if over_connection_cap(self.limits):
            client.error = "too many client connections"  # mitmproxy closes it before reading anything
            self._refused.warn(
                "edgerules: client connection refused: %d open (edgerules_max_connections)",
                self.limits.max_connections,
            )
            runtime = self.runtime
            if runtime is not None and runtime.metrics is not None:
                runtime.metrics.prometheus.connection_refused()

    async def _sweep_clients(self) -> None:
        """Every half of the shortest client timeout (0.2-1 s): close connections past theirs."""
        while True:
            limits = self.limits
            timeouts = [
                t for t in (limits.head_timeout, limits.keepalive_timeout, limits.body_timeout) if t > 0
            ]
            await asyncio.sleep(min(1.0, max(0.2, min(timeouts, default=2.0) / 2)))
            try:
                closed = sweep(limits)
            except Exception:
                log.exception("edgerules: client sweep failed")
                continue
            runtime = self.runtime
            if runtime is not None and runtime.metrics is not None:
                runtime.metrics.prometheus.client_sweep(closed)

    def configure(self, updated: set[str]) -> None:
        if {name for name, _, _ in CLIENT_LIMIT_OPTIONS} & updated:
            self.limits = _client_limits()
        if "edgerules_max_origin_body" in updated:
            self.origin_cap = _origin_cap()
            if self.runtime is not None:
                self.runtime.upstream.max_body_bytes = self.origin_cap
        """Parse and compile only: the policy is swapped in through the runtime's install step (the one hot
        reload takes); the store and background tasks start in `running`. An invalid value raises OptionsError,
        so mitmproxy keeps the previous value and the edge keeps serving the previous policy."""
        if "edgerules_flow_details" in updated:
            self.flow_details = bool(ctx.options.edgerules_flow_details)
        if not OPTIONS & updated:
            return
        interval = _reload_interval()
        runtime = self.runtime
        if runtime is not None and not {"edgerules_policy", "edgerules_env"} & updated:
            runtime.set_reload_interval(interval)
            return
        path = ctx.options.edgerules_policy
        env = ctx.options.edgerules_env or None
        if not path:
            raise exceptions.OptionsError("edgerules: set the policy file with --set edgerules_policy=FILE")
        try:
            result = load_policy_file(path, env, environ=os.environ, for_serving=True)
        except PolicyError as exc:
            message = f"edgerules: policy {path} is invalid:\n{exc}"
            if runtime is None:
                # At startup a proxy without rules would forward everything: refuse to run at all.
                log.error(message)
                _exit_now(message)
            raise exceptions.OptionsError(message) from exc
        for warning in result.warnings:
            log.warning("%s", warning)
        policy = result.policy
        if runtime is not None and not runtime.stopped and runtime.same_store(policy):
            runtime.install(policy, path=path, env=env)  # in place, as a hot reload would
            runtime.set_reload_interval(interval)
        else:
            # The first policy, or one with another store: a runtime of its own. Once mitmproxy runs, it starts
            # now and the one it replaces stops when it is up (requests wait for it, see `_runtime`).
            fresh = EdgeRuntime(path, env, reload_interval=interval)
            fresh.upstream.max_body_bytes = self.origin_cap
            fresh.install(policy)
            self.runtime = fresh
            if self._running:
                self._background(self._replace(runtime, fresh))
        log.info(
            "edgerules active: policy %s (%s) version %s, environment %s",
            policy.name,
            path,
            policy.version,
            env or "base",
        )

    async def running(self) -> None:
        if self._running:
            return
        self._running = True
        # The engine must see the Host the client sent (a second Host is refused, X-Forwarded-Host says
        # what the client asked for); the edge sets the upstream Host itself (`routing.host_rewrite`).
        if "keep_host_header" in ctx.options and not ctx.options.keep_host_header:  # proxyserver's option
            ctx.options.keep_host_header = True
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_clients())
        if self.runtime is not None:
            await self.runtime.start()
            freeze_startup_objects()  # mitmdump's long-lived objects too: shorter GC pauses, lower p99

    async def done(self) -> None:
        """Stop what `running` (or an option change) started, once."""
        self._running = False  # from here on an option change starts nothing
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        replacing = list(self._tasks)
        if replacing:
            await asyncio.gather(*replacing, return_exceptions=True)
        self._tasks.clear()
        for runtime in (*self._retired, self.runtime):
            if runtime is not None:
                await runtime.stop()
        self._retired.clear()
        self.live.clear()

    async def _replace(self, old: EdgeRuntime | None, fresh: EdgeRuntime) -> None:
        if old is not None:
            self._retired.append(old)
        try:
            await fresh.start()
        except Exception:
            log.exception("edgerules: the new policy's runtime did not start")
        finally:
            if old is not None:
                await old.stop()
                self._retired.remove(old)

    def _background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _runtime(self) -> EdgeRuntime | None:
        """The runtime to decide with, once it has started (a request that arrives while it starts waits for
        it, at most STARTUP_WAIT seconds; None then: the request is refused)."""
        runtime = self.runtime
        if runtime is None or runtime.state is not None:  # its store is open: it can decide
            return runtime
        try:
            await asyncio.wait_for(runtime.ready.wait(), STARTUP_WAIT)
        except TimeoutError:
            return None
        return self.runtime

    # -------------------------------------------------------------------------------------------------- hooks

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        try:
            await self._requestheaders(flow)
        except Exception:
            log.exception("edgerules: internal error in requestheaders")
            self._fail(flow)

    async def _requestheaders(self, flow: http.HTTPFlow) -> None:
        runtime = self.runtime
        if runtime is not None and runtime.state is None:  # starting: wait for it (not on the hot path)
            runtime = await self._runtime()
        if runtime is None:
            flow.response = _response(
                503, [("Content-Type", "application/json")], b'{"error":"No policy loaded"}'
            )
            _mark_error(flow, {**internal_error_data(), "error": "no_policy", "status": 503})
            return
        req = _edge_request(flow)
        limit_buffered_body(flow, None, self._too_large_bytes, self._body_cut)  # until decided below
        if runtime.is_admin_path(req.path):
            self._remember(flow, Live(None, req))
            refusal = refusal_at_head(runtime, req.client_ip, req.headers, pending_body(flow.request))
            if refusal is not None:  # a stranger or an oversized body: nothing of the body is read
                response = _response(refusal.status, refusal.headers, refusal.body)
                if closes_unread(flow.request):
                    answer_and_close(flow, response)
                    self.live.pop(flow.id, None)
                else:
                    flow.response = response
            return
        exchange = await runtime.decide(req)
        self._remember(flow, Live(exchange, req))
        outcome = exchange.decision.outcome
        if isinstance(outcome, Answer):
            response = _response(outcome.status, outcome.headers, outcome.body)
            if outcome.status >= 400 and closes_unread(flow.request):
                # Refused at the head (413 for a declared size over the limit, 401, ...) with a large or
                # chunked body to come: answer now and close, rather than read it all first. The response
                # hook will not run for it: recorded and described here.
                runtime.record(exchange, req, outcome.status)
                answer_and_close(flow, response)
                live = self.live.pop(flow.id, None)
                if live is not None:
                    self._describe(flow, live)
            else:
                flow.response = response
        elif outcome.stream:
            self._forward_natively(flow, outcome, req.websocket)
        elif pending_body(flow.request) is not None:
            # read whole by mitmproxy before the `request` hook: never more than the limit of it
            limit_buffered_body(flow, runtime.body_limit(exchange), self._too_large_bytes, self._body_cut)

    def _too_large_bytes(self) -> bytes:
        response = self._too_large()
        response.headers["Connection"] = "close"
        return http1.assemble_response(response)

    def _body_cut(self, flow: http.HTTPFlow) -> None:
        """A buffered body went over its limit while being read: the guard answered 413 and closes."""
        live = self.live.pop(flow.id, None)
        runtime = self.runtime
        if runtime is None or live is None or live.exchange is None or live.request is None:
            return
        live.exchange.decision.context.error = "payload_too_large"
        runtime.record(live.exchange, live.request, 413)
        self._describe(flow, live)

    def _remember(self, flow: http.HTTPFlow, live: Live) -> None:
        table = self.live
        table.pop(flow.id, None)
        if len(table) >= LIVE_LIMIT:
            # the oldest entry belongs to a flow that never ended: its hooks fail closed (500) if they come
            table.pop(next(iter(table)))
        table[flow.id] = live

    def _forward_natively(self, flow: http.HTTPFlow, forward: Forward, websocket: bool) -> None:
        """Streams and WebSockets: mitmproxy carries the bytes; we only choose where they go."""
        target = forward.targets[0]
        request = flow.request
        request.scheme = target.scheme
        request.host = target.host
        request.port = target.port
        request.path = target.path
        live = self.live.get(flow.id)
        if live is not None:
            live.origin = f"{target.scheme}://{target.host}:{target.port}"
        request.headers.fields = tuple(
            forwarded_request_fields(
                request.headers.fields,
                forward.target_edits(target),
                framing_kept=True,
                websocket=websocket,
                encode=_bytes,
            )
        )
        runtime = self.runtime
        limit = (
            runtime.body_limit(live.exchange)
            if runtime is not None and live is not None and live.exchange
            else None
        )
        if websocket or limit is None:
            request.stream = True
        else:
            request.stream = StreamBudget(flow, limit, self._too_large, self._stream_cut)

    def _too_large(self) -> http.Response:
        runtime = self.runtime
        answer = error_answer(runtime.policy if runtime is not None else None, "payload_too_large")
        return _response(answer.status, answer.headers, answer.body)

    def _stream_cut(self, flow: http.HTTPFlow, seen: int, answered: bool) -> None:
        live = self.live.get(flow.id)
        if live is not None:
            live.cut = True
        runtime = self.runtime
        path = live.request.path if live is not None and live.request is not None else flow.request.path
        log.warning(
            "edgerules: streamed request body cut at %d bytes (over its limit) for %s %s from %s: %s",
            seen,
            flow.request.method,
            path,
            flow.client_conn.peername[0] if flow.client_conn.peername else "?",
            "413 sent, origin connection closed" if answered else "client and origin connections closed",
        )
        if runtime is not None and runtime.metrics is not None:
            runtime.metrics.prometheus.stream_cut(answered)
        if (
            runtime is not None
            and live is not None
            and live.exchange is not None
            and live.request is not None
        ):
            live.exchange.decision.context.error = "payload_too_large"
            runtime.record(live.exchange, live.request, 413)

    async def request(self, flow: http.HTTPFlow) -> None:
        try:
            await self._request(flow)
        except Exception:
            log.exception("edgerules: internal error in request")
            self._fail(flow)

    async def _request(self, flow: http.HTTPFlow) -> None:
        runtime = self.runtime
        live = self.live.get(flow.id)
        if runtime is None or live is None:
            if flow.response is None:  # never decided (or forgotten): refuse rather than forward unchecked
                self._fail(flow)
            return
        exchange = live.exchange
        if exchange is None:  # admin
            req = _edge_request(flow)
            answer = await handle_admin(
                runtime, req.method, req.path, req.headers, flow.request.raw_content or b"", req.client_ip
            )
            flow.response = _response(answer.status, answer.headers, answer.body)
            return
        if flow.response is not None:
            return
        forward = exchange.decision.outcome
        if not isinstance(forward, Forward):
            self._fail(flow)  # an answer whose response went missing: never forward it
            return
        if forward.stream:
            return
        body = flow.request.raw_content or b""
        too_large = runtime.check_body(exchange, len(body))
        if too_large is not None:  # the engine's answer; the exchange now carries that decision
            flow.response = _response(too_large.status, too_large.headers, too_large.body)
            return
        final = await runtime.forward(
            exchange, flow.request.method, flow.request.headers.items(multi=True), body
        )
        flow.response = _response(final.status, final.headers, final.body)
        if final.reason:
            flow.response.reason = final.reason
        if self.flow_details:
            _show_origin(flow, live, forward, exchange.decision.context.region)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Streamed responses leave before the `response` hook: their headers are decided here."""
        live = self.live.get(flow.id)
        exchange = live.exchange if live is not None else None
        if (
            live is not None
            and exchange is not None
            and isinstance(exchange.decision.outcome, Forward)
            and exchange.decision.outcome.stream
            and flow.response is not None
        ):
            flow.response.stream = True
            try:
                self._apply_headers(flow, live, exchange)
            except Exception:
                # Its headers are about to leave without the policy's: cut the stream instead.
                log.exception("edgerules: internal error in responseheaders")
                if flow.killable:
                    flow.kill()

    async def response(self, flow: http.HTTPFlow) -> None:
        live = self.live.pop(flow.id, None)  # the flow ends here: forget it whatever happens below
        try:
            await self._finish(flow, live)
        except Exception:
            log.exception("edgerules: internal error in response")
            if live is None or not live.headers_done:
                # never an origin's response without the policy's response headers (security, CORS, cache)
                self._fail(flow, keep_error=False)
                return
        if live is not None:
            self._describe(flow, live)

    def _describe(self, flow: http.HTTPFlow, live: Live) -> None:
        """The decision where mitmproxy users look: flow.comment (one line), flow.metadata (the whole decision
        and trace, plain data), flow.marked for the edge's own error answers."""
        if not self.flow_details:
            return
        try:
            exchange = live.exchange
            if exchange is None:
                flow.metadata[META] = {"outcome": "admin", "status": _status(flow)}
                flow.comment = f"edge: admin {live.request.path if live.request else ''}".rstrip()
                return
            policy = exchange.policy
            data = decision_data(
                exchange.decision,
                _status(flow),
                request=live.request,
                origin=live.origin,
                policy=f"{policy.name} v{policy.version}" if policy is not None else None,
            )
            flow.metadata[META] = data
            flow.comment = summary(data)
            if data["edge_error"]:
                flow.marked = ERROR_MARK
        except Exception:  # what the flow shows must never break the request
            log.exception("edgerules: could not describe the decision on the flow")

    def _apply_headers(self, flow: http.HTTPFlow, live: Live, exchange: Exchange) -> None:
        assert self.runtime is not None and flow.response is not None
        response = flow.response
        edits = self.runtime.finish(exchange, response.status_code, response.headers.items(multi=True))
        request = live.request
        response.headers.fields = tuple(
            relayed_response_fields(
                response.headers.fields,
                edits,
                framing_kept=True,  # the flow's own framing: the edge's Content-Length, or the stream's
                upgrade=response.status_code == 101 and request is not None and request.websocket,
                encode=_bytes,
            )
        )
        live.headers_done = True

    async def _finish(self, flow: http.HTTPFlow, live: Live | None) -> None:
        runtime = self.runtime
        if runtime is None or flow.response is None:
            return
        if live is None:
            if META not in flow.metadata:  # not the edge's own error answer
                # decided by no one (or its state was dropped): never let an origin's answer out unchecked
                raise RuntimeError("a flow reached the response phase without a decision")
            return
        exchange = live.exchange
        if exchange is None:  # admin
            return
        if not live.headers_done:
            self._apply_headers(flow, live, exchange)
        response = flow.response
        req = live.request
        if req is not None:
            runtime.record(exchange, req, response.status_code)
            await runtime.after_response(
                exchange, req, response.status_code, response.headers.items(multi=True), response.raw_content
            )

    def error(self, flow: http.HTTPFlow) -> None:
        live = self.live.pop(flow.id, None)  # the flow ends here (errors, kills)
        exchange = live.exchange if live is not None else None
        runtime = self.runtime
        if runtime is None or live is None or exchange is None:
            return
        outcome = exchange.decision.outcome
        # Only streams and WebSockets reach the origin through mitmproxy. For any other flow the addon calls the
        # origin itself, so an error here is the client's (a malformed or aborted request): counting it would
        # let any client eject a healthy region with three bad requests.
        if isinstance(outcome, Forward) and outcome.stream and not live.cut:
            runtime.native_failure(exchange, str(flow.error) if flow.error else "error")
        self._describe(flow, live)

    def _fail(self, flow: http.HTTPFlow, *, keep_error: bool = True) -> None:
        """Fail closed: a generic 500 JSON, never the request forwarded unchecked. `keep_error`: an error
        answer already there (the edge's own refusal) stays."""
        if keep_error and flow.response is not None and flow.response.status_code >= 400:
            return
        runtime = self.runtime
        answer = runtime.internal_error() if runtime is not None else None
        if answer is None:
            flow.response = _response(
                500, [("Content-Type", "application/json")], b'{"error":"Internal server error"}'
            )
        else:
            flow.response = _response(answer.status, answer.headers, answer.body)
        flow.request.stream = False
        _mark_error(flow, {**internal_error_data(), "status": flow.response.status_code})


def _status(flow: http.HTTPFlow) -> int:
    return flow.response.status_code if flow.response is not None else 0


def _mark_error(flow: http.HTTPFlow, data: dict) -> None:
    flow.metadata[META] = data
    flow.comment = summary(data)
    flow.marked = ERROR_MARK


def _show_origin(flow: http.HTTPFlow, live: Live | None, forward: Forward, region: str | None) -> None:
    """The addon called the origin itself: let the flow name the origin that answered (not the `--mode reverse:`
    placeholder). The client's own host and port stay in the flow's metadata (`client`)."""
    if region is None:
        return
    for target in forward.regions:
        if target.region == region:
            request = flow.request
            if request.scheme != target.scheme:
                request.scheme = target.scheme
            request.host = target.host
            request.port = target.port
            if live is not None:
                live.origin = f"{target.scheme}://{target.host}:{target.port}"
            return


def _origin_cap() -> int:
    text = str(ctx.options.edgerules_max_origin_body).strip()
    try:
        size = human.parse_size(text)
    except ValueError:
        size = None
    if not size or size <= 0:
        raise exceptions.OptionsError(f"edgerules_max_origin_body must be a size like 64m, got {text!r}")
    return size


def _client_limits() -> ClientLimits:
    values: dict[str, Any] = {}
    for name, _, _ in CLIENT_LIMIT_OPTIONS:
        text = str(getattr(ctx.options, name)).strip()
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0 <= value < float("inf"):
            raise exceptions.OptionsError(f"{name} must be a number >= 0 (0: off), got {text!r}")
        values[name.removeprefix("edgerules_")] = value
    values["max_connections"] = int(values["max_connections"])
    return ClientLimits(**values)


def _reload_interval() -> float:
    text = str(ctx.options.edgerules_reload_interval).strip()
    try:
        interval = float(text)
    except ValueError:
        interval = -1.0
    if not 0 < interval < float("inf"):
        raise exceptions.OptionsError(
            f"edgerules_reload_interval must be a positive number of seconds, got {text!r}"
        )
    return interval


def _exit_now(message: str) -> None:
    """mitmproxy would keep running a script whose configuration failed (forwarding everything). Don't."""
    print(message, flush=True)
    # 1: the exit code of an invalid policy everywhere (edgerules validate, edgerules serve, mitmdump).
    os._exit(1)


addons = [EdgeRules()]

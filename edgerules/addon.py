"""The mitmproxy adapter: flows in, engine values out, decisions applied. Everything else lives in `runtime`.

mitmproxy fails open: an exception in a hook is logged and the flow goes on to the origin. So every hook here
catches everything and answers a generic 500 instead, and until a policy is loaded every request gets a 503.
"""

from __future__ import annotations

import logging
import os

from mitmproxy import ctx, exceptions, http

from edgerules.admin import handle_admin
from edgerules.diagnostics import PolicyError
from edgerules.engine.values import Answer, EdgeRequest, Forward
from edgerules.flowconv import edge_request
from edgerules.runtime import EdgeRuntime, Exchange

log = logging.getLogger("edgerules")

META = "edgerules"


def _response(status: int, headers, body: bytes) -> http.Response:
    """A response carrying `body` byte for byte: an origin's gzip body must not be encoded a second time."""
    response = http.Response.make(
        status, b"", [(k.encode(), v.encode("latin-1", "replace")) for k, v in headers]
    )
    response.raw_content = body
    if status in (204, 304) or 100 <= status < 200:
        response.headers.pop("content-length", None)
    else:
        response.headers["content-length"] = str(len(body))
    return response


def _edge_request(flow: http.HTTPFlow) -> EdgeRequest:
    return edge_request(flow)


class EdgeRules:
    def __init__(self) -> None:
        self.runtime: EdgeRuntime | None = None
        self._started = False

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

    def configure(self, updated: set[str]) -> None:
        if not {"edgerules_policy", "edgerules_env"} & updated:
            return
        path = ctx.options.edgerules_policy
        if not path:
            raise exceptions.OptionsError("edgerules: set the policy file with --set edgerules_policy=FILE")
        runtime = EdgeRuntime(path, ctx.options.edgerules_env or None, reload_interval=_reload_interval())
        try:
            policy = runtime.load_initial()
        except PolicyError as exc:
            message = f"edgerules: policy {path} is invalid:\n{exc}"
            if self.runtime is None:
                # At startup a proxy without rules would forward everything: refuse to run at all.
                log.error(message)
                _exit_now(message)
            raise exceptions.OptionsError(message) from exc
        self.runtime = runtime
        log.info(
            "edgerules active: policy %s (%s) version %s, environment %s",
            policy.name,
            path,
            policy.version,
            runtime.env or "base",
        )

    async def running(self) -> None:
        if self.runtime is not None and not self._started:
            self._started = True
            await self.runtime.start()

    async def done(self) -> None:
        if self.runtime is not None:
            await self.runtime.stop()

    # -------------------------------------------------------------------------------------------------- hooks

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        try:
            await self._requestheaders(flow)
        except Exception:
            log.exception("edgerules: internal error in requestheaders")
            self._fail(flow)

    async def _requestheaders(self, flow: http.HTTPFlow) -> None:
        runtime = self.runtime
        if runtime is None:
            flow.response = _response(
                503, [("Content-Type", "application/json")], b'{"error":"No policy loaded"}'
            )
            return
        req = _edge_request(flow)
        if runtime.is_admin_path(req.path):
            flow.metadata[META] = "admin"
            return
        exchange = await runtime.decide(req)
        flow.metadata[META] = exchange
        flow.metadata["edgerules_request"] = req
        outcome = exchange.decision.outcome
        if isinstance(outcome, Answer):
            flow.response = _response(outcome.status, outcome.headers, outcome.body)
        elif outcome.stream:
            self._forward_natively(flow, outcome)

    def _forward_natively(self, flow: http.HTTPFlow, forward: Forward) -> None:
        """Streams and WebSockets: mitmproxy carries the bytes; we only choose where they go."""
        target = forward.targets[0]
        request = flow.request
        request.scheme = target.scheme
        request.host = target.host
        request.port = target.port
        request.path = target.path
        for name in forward.remove_headers:
            request.headers.pop(name, None)
        for name, value in (*forward.set_headers, *target.headers):
            request.headers[name] = value
        request.stream = True

    async def request(self, flow: http.HTTPFlow) -> None:
        try:
            await self._request(flow)
        except Exception:
            log.exception("edgerules: internal error in request")
            self._fail(flow)

    async def _request(self, flow: http.HTTPFlow) -> None:
        runtime = self.runtime
        marker = flow.metadata.get(META)
        if runtime is None or marker is None:
            return
        if marker == "admin":
            req = _edge_request(flow)
            answer = await handle_admin(
                runtime, req.method, req.path, req.headers, flow.request.raw_content or b"", req.client_ip
            )
            flow.response = _response(answer.status, answer.headers, answer.body)
            return
        exchange: Exchange = marker
        if flow.response is not None:
            return
        forward = exchange.decision.outcome
        if not isinstance(forward, Forward) or forward.stream:
            return
        body = flow.request.raw_content or b""
        too_large = runtime.check_body(exchange, len(body))
        if too_large is not None:
            exchange.decision.outcome = too_large
            exchange.decision.context.error = too_large.kind
            flow.response = _response(too_large.status, too_large.headers, too_large.body)
            return
        final = await runtime.forward(
            exchange, flow.request.method, flow.request.headers.items(multi=True), body
        )
        flow.response = _response(final.status, final.headers, final.body)
        if final.reason:
            flow.response.reason = final.reason

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Streamed responses leave before the `response` hook: their headers are decided here."""
        exchange = flow.metadata.get(META)
        if (
            isinstance(exchange, Exchange)
            and isinstance(exchange.decision.outcome, Forward)
            and exchange.decision.outcome.stream
            and flow.response is not None
        ):
            flow.response.stream = True
            try:
                self._apply_headers(flow, exchange)
            except Exception:
                log.exception("edgerules: internal error in responseheaders")

    def response(self, flow: http.HTTPFlow) -> None:
        try:
            self._finish(flow)
        except Exception:
            log.exception("edgerules: internal error in response")

    def _apply_headers(self, flow: http.HTTPFlow, exchange: Exchange) -> None:
        assert self.runtime is not None and flow.response is not None
        response = flow.response
        to_set, to_remove = self.runtime.finish(
            exchange, response.status_code, response.headers.items(multi=True)
        )
        for name in to_remove:
            response.headers.pop(name, None)
        for name, value in to_set:
            response.headers[name] = value
        flow.metadata["edgerules_headers_done"] = True

    def _finish(self, flow: http.HTTPFlow) -> None:
        runtime = self.runtime
        exchange = flow.metadata.get(META)
        if runtime is None or not isinstance(exchange, Exchange) or flow.response is None:
            return
        if not flow.metadata.get("edgerules_headers_done"):
            self._apply_headers(flow, exchange)
        response = flow.response
        req = flow.metadata.get("edgerules_request")
        if req is not None:
            runtime.record(exchange, req, response.status_code)
            runtime.after_response(
                exchange, req, response.status_code, response.headers.items(multi=True), response.raw_content
            )

    def error(self, flow: http.HTTPFlow) -> None:
        exchange = flow.metadata.get(META)
        runtime = self.runtime
        if runtime is not None and isinstance(exchange, Exchange):
            runtime.native_failure(exchange, str(flow.error) if flow.error else "error")

    def _fail(self, flow: http.HTTPFlow) -> None:
        """Fail closed: a generic 500 JSON, never the request forwarded unchecked."""
        if flow.response is not None and flow.response.status_code >= 400:
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
    os._exit(2)


addons = [EdgeRules()]

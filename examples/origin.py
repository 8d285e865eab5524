"""A demo/test origin server (aiohttp): echoes requests and can be steered from the request headers.

Run: ``python examples/origin.py --region us-east-1 --port 9101 [--host 127.0.0.1]``.
``--port 0`` picks a free port; the ready line names the real one:
``origin us-east-1 listening on 127.0.0.1:9101``.

Endpoints
- ``GET /health``: 200 ``{"status": "healthy", "region": R}``, or 503 ``{"status": "unhealthy"}`` once
  switched off with ``POST /__origin/health`` ``{"healthy": false}``.
- ``GET /__origin/stats``: ``{"requests": N, "paths": {path: n}, "log": [...last 200]}``;
  ``POST /__origin/reset`` clears it. ``/__origin/*`` itself is never counted.
- ``GET /voice/stream``: ``audio/mpeg``, 20 chunks of 4 KiB, 20 ms apart (chunked).
- ``GET /voice/ws``: WebSocket that echoes text messages as ``"<region>: <text>"`` (binary echoed unchanged).
- anything else: 200 JSON echo ``{"region", "method", "path", "query", "headers", "body_size"}``.

Echo controls (request headers): ``X-Test-Status`` (answer that status), ``X-Test-Delay`` (seconds to sleep
first), ``X-Test-Response-Headers`` (JSON object of extra response headers), ``X-Test-Content-Type``,
``X-Test-Body-Size`` (pad with spaces, or truncate, the body to exactly that many bytes). When the response
carries an ``ETag`` and the request's ``If-None-Match`` matches it, the answer is 304 with no body.

``path`` and ``query`` are reported raw (as received, not percent-decoded) so tests can see exactly what
reached the origin. Every response carries ``X-Origin-Region``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

LOG_LIMIT = 200
STREAM_CHUNKS = 20
STREAM_CHUNK_SIZE = 4096
STREAM_INTERVAL = 0.02
NO_BODY_STATUSES = frozenset({204, 304})


@dataclass
class OriginState:
    region: str
    healthy: bool = True
    requests: int = 0
    paths: Counter[str] = field(default_factory=Counter)
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=LOG_LIMIT))

    def record(self, entry: dict[str, Any]) -> None:
        self.requests += 1
        self.paths[entry["path"]] += 1
        self.log.append(entry)

    def reset(self) -> None:
        self.requests = 0
        self.paths.clear()
        self.log.clear()


STATE_KEY = web.AppKey("origin_state", OriginState)


def _raw_path_and_query(request: web.Request) -> tuple[str, str]:
    path, _, query = request.raw_path.partition("?")
    return path, query


def _headers(request: web.Request) -> dict[str, str]:
    """Request headers as a dict; repeated headers are joined with ", " so duplicates stay visible."""
    out: dict[str, str] = {}
    for name, value in request.headers.items():
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _json_response(state: OriginState, payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(payload, status=status, headers={"X-Origin-Region": state.region})


def _etag_matches(if_none_match: str, etag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2): W/ prefixes are ignored; ``*`` matches anything."""

    def opaque(tag: str) -> str:
        tag = tag.strip()
        return tag[2:] if tag.startswith("W/") else tag

    candidates = [c.strip() for c in if_none_match.split(",") if c.strip()]
    return "*" in candidates or opaque(etag) in {opaque(c) for c in candidates}


def _extra_headers(request: web.Request) -> dict[str, str]:
    raw = request.headers.get("X-Test-Response-Headers")
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"X-Test-Response-Headers is not JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise web.HTTPBadRequest(text="X-Test-Response-Headers must be a JSON object")
    return {str(k): str(v) for k, v in parsed.items()}


def _padded(body: bytes, size_header: str | None) -> bytes:
    if size_header is None:
        return body
    size = int(size_header)
    return body[:size] if len(body) >= size else body + b" " * (size - len(body))


async def _body_size(request: web.Request) -> int:
    """Count the request body without buffering it (no client_max_size limit applies)."""
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
    return size


async def handle_control(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    action = request.match_info["action"]
    if action == "stats" and request.method == "GET":
        return _json_response(
            state, {"requests": state.requests, "paths": dict(state.paths), "log": list(state.log)}
        )
    if action == "reset" and request.method == "POST":
        state.reset()
        return _json_response(state, {"ok": True})
    if action == "health" and request.method == "POST":
        body = await request.json()
        state.healthy = bool(body.get("healthy", True))
        return _json_response(state, {"healthy": state.healthy})
    return _json_response(state, {"error": f"unknown control {request.method} {action}"}, status=404)


async def _health(state: OriginState) -> web.Response:
    if state.healthy:
        return _json_response(state, {"status": "healthy", "region": state.region})
    return _json_response(state, {"status": "unhealthy"}, status=503)


async def _stream(request: web.Request, state: OriginState) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "audio/mpeg", "X-Origin-Region": state.region})
    response.enable_chunked_encoding()
    await response.prepare(request)
    chunk = bytes(range(256)) * (STREAM_CHUNK_SIZE // 256)
    for i in range(STREAM_CHUNKS):
        if i:
            await asyncio.sleep(STREAM_INTERVAL)
        await response.write(chunk)
    await response.write_eof()
    return response


async def _websocket(request: web.Request, state: OriginState) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    ws.headers["X-Origin-Region"] = state.region
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(f"{state.region}: {msg.data}")
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def _echo(request: web.Request, state: OriginState, entry: dict[str, Any]) -> web.Response:
    delay = request.headers.get("X-Test-Delay")
    if delay:
        await asyncio.sleep(float(delay))
    status = int(request.headers.get("X-Test-Status", "200"))
    headers = {"X-Origin-Region": state.region, **_extra_headers(request)}
    etag = next((v for k, v in headers.items() if k.lower() == "etag"), None)
    if_none_match = request.headers.get("If-None-Match")
    if etag and if_none_match and _etag_matches(if_none_match, etag):
        return web.Response(status=304, headers=headers)
    if status in NO_BODY_STATUSES:
        return web.Response(status=status, headers=headers)
    payload = {**entry, "region": state.region, "body_size": await _body_size(request)}
    body = _padded(json.dumps(payload).encode(), request.headers.get("X-Test-Body-Size"))
    content_type = request.headers.get("X-Test-Content-Type", "application/json")
    headers["Content-Type"] = content_type
    return web.Response(status=status, body=body, headers=headers)


async def handle_any(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    path, query = _raw_path_and_query(request)
    entry = {"method": request.method, "path": path, "query": query, "headers": _headers(request)}
    state.record(entry)
    if request.method in ("GET", "HEAD"):
        if path == "/health":
            return await _health(state)
        if path == "/voice/stream" and request.method == "GET":
            return await _stream(request, state)
        if path == "/voice/ws" and web.WebSocketResponse().can_prepare(request).ok:
            return await _websocket(request, state)
    return await _echo(request, state, entry)


def make_app(region: str) -> web.Application:
    app = web.Application()
    app[STATE_KEY] = OriginState(region=region)
    app.router.add_route("*", "/__origin/{action}", handle_control)
    app.router.add_route("*", "/{tail:.*}", handle_any)
    return app


async def run_origin(region: str, host: str = "127.0.0.1", port: int = 0) -> web.AppRunner:
    """Start an origin in the running loop; ``runner.addresses[0]`` gives the bound (host, port)."""
    runner = web.AppRunner(make_app(region), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner


async def _serve(region: str, host: str, port: int) -> None:
    runner = await run_origin(region, host, port)
    bound_host, bound_port = runner.addresses[0][:2]
    print(f"origin {region} listening on {bound_host}:{bound_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="edgerules demo/test origin server")
    parser.add_argument("--region", required=True)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.region, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())

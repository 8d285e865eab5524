"""A mitmproxy HTTP flow as the engine's `EdgeRequest`: shared by the addon (live flows) and `edgerules replay`
(flows recorded with `mitmdump -w`). Duck-typed on the flow, so this module never imports mitmproxy."""

from __future__ import annotations

import time
from typing import Any

from edgerules.engine.values import EdgeRequest, HeaderView
from edgerules.memo import remember

_HOSTS: dict[str, str] = {}  # Host header -> host name (clients send the same few Host values)


def _pretty_host(request: Any) -> str:
    """`request.pretty_host`, which parses the Host header (IDNA and all) on every call: memoised per value."""
    authority = request.host_header
    if not authority:
        return request.host
    host = _HOSTS.get(authority)
    if host is None:
        host = remember(_HOSTS, authority, request.pretty_host, limit=1024)
    return host


def edge_request(flow: Any, *, timestamp: float | None = None) -> EdgeRequest:
    """`flow` is a `mitmproxy.http.HTTPFlow`; `timestamp` defaults to now (the addon) - replay passes the
    recorded time."""
    request = flow.request
    path, _, query = request.path.partition("?")
    headers = HeaderView(request.headers.items(multi=True))  # one pass; the lookups below use its index
    declared = headers.get("content-length")
    body_size = len(request.raw_content) if request.raw_content is not None else None
    if body_size is None and declared is not None and declared.strip().isdigit():
        body_size = int(declared)
    peer = flow.client_conn.peername
    upgrade = (headers.get("upgrade") or "").lower() == "websocket"
    host, port = _pretty_host(request), request.port
    recorded = flow.metadata.get("edgerules") if flow.metadata else None
    if isinstance(recorded, dict) and isinstance(recorded.get("client"), dict):
        # a flow the edge handled before (recorded with -w, or replayed): it names the origin that answered;
        # the host and port the client asked for are in its metadata
        client = recorded["client"]
        host, port = str(client.get("host", host)), int(client.get("port", port))
    return EdgeRequest(
        method=request.method.upper(),
        path=path,
        query=query,
        scheme="https" if flow.client_conn.tls_established else "http",
        host=host,
        port=port,
        headers=headers,
        client_ip=peer[0] if peer else "",
        body_size=body_size,
        timestamp=time.time() if timestamp is None else timestamp,
        websocket=upgrade,
    )

"""The proxy's own endpoints under `/__edgerules/`: health, status, Prometheus metrics, the analytics collector,
reload and cache purge.

Never routed to an origin. Reachable from `admin.allow_cidrs` (loopback by default) or with the admin token
(`Authorization: Bearer <token>`, compared in constant time); everyone else gets the same 404 as an unknown path.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import time
from typing import TYPE_CHECKING, Any

from edgerules.cache.http import is_cache_key
from edgerules.edge.workers import ask_supervisor_to_reload
from edgerules.engine.errors import error_answer
from edgerules.engine.values import Answer, HeaderView
from edgerules.kinds import AnswerKind
from edgerules.observe.metrics import MAX_COLLECTOR_BODY
from edgerules.stores.base import StoreUnavailable

if TYPE_CHECKING:
    from edgerules.edge.runtime import EdgeRuntime

_NOT_FOUND = Answer.json(404, {"error": "Not found"}, "not_found")


def admin_allowed(runtime: EdgeRuntime, client_ip: str, headers: HeaderView) -> bool:
    policy = runtime.policy
    if policy is None:
        return _is_loopback(client_ip)
    token = policy.admin.token
    if token:
        sent = headers.get("authorization") or ""
        # Digests compared in constant time: neither the token's bytes nor its length leak through timing.
        if sent.startswith("Bearer ") and hmac.compare_digest(_digest(sent[7:].strip()), _digest(token)):
            return True
    try:
        address = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == net.version and address in net for net in policy.admin.allow_cidrs)


# Admin bodies are small JSON documents: the analytics collector's limit is the largest one any endpoint takes.
ADMIN_MAX_BODY = MAX_COLLECTOR_BODY


def refusal_at_head(
    runtime: EdgeRuntime, client_ip: str, headers: HeaderView, pending: int | None
) -> Answer | None:
    """Decided from the request head alone, before any body is read: a stranger gets the same 404 as an
    unknown path; a declared body over `ADMIN_MAX_BODY` gets 413, one of unknown length (chunked) 411."""
    if not admin_allowed(runtime, client_ip, headers):
        return _NOT_FOUND
    if pending is not None and pending < 0:
        return _json(411, {"error": "Length required"}, "length_required")
    if pending is not None and pending > ADMIN_MAX_BODY:
        return error_answer(runtime.policy, "payload_too_large")
    return None


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def _is_loopback(client_ip: str) -> bool:
    try:
        return ipaddress.ip_address(client_ip.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _json(status: int, payload: Any, kind: AnswerKind = "admin") -> Answer:
    return Answer.json(status, payload, kind, [("Cache-Control", "no-store")])


async def handle_admin(
    runtime: EdgeRuntime, method: str, path: str, headers: HeaderView, body: bytes, client_ip: str
) -> Answer:
    if not admin_allowed(runtime, client_ip, headers):
        return _NOT_FOUND
    name = path[len("/__edgerules/") :].strip("/")
    handler = _ROUTES.get(name)
    if handler is None:
        return _NOT_FOUND
    allowed_method, func = handler
    if method != allowed_method:
        return Answer.json(
            405, {"error": "Method not allowed"}, "method_not_allowed", [("Allow", allowed_method)]
        )
    return await func(runtime, body)


async def _health(runtime: EdgeRuntime, body: bytes) -> Answer:
    policy = runtime.policy
    ok = policy is not None
    return _json(
        200 if ok else 503, {"status": "ok" if ok else "no policy", "version": policy and policy.version}
    )


async def _status(runtime: EdgeRuntime, body: bytes) -> Answer:
    policy = runtime.policy
    status = runtime.reload_status
    store: dict[str, Any] = {"ok": None}
    if runtime.state is not None:
        try:
            health = await runtime.state.store.health()
            store = {"ok": health.ok, "detail": health.detail}
        except Exception as exc:  # a broken store is exactly what this endpoint must report
            store = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    payload = {
        "policy": {
            "name": policy.name if policy else None,
            "version": policy.version if policy else None,
            "environment": runtime.env,
            "files": list(policy.files) if policy else [runtime.policy_path],
            "loaded_at": status.loaded_at,
        },
        "reload": {
            "reloads": status.reloads,
            "failures": status.failures,
            "last_error": status.last_error,
            "restart_required": status.restart_required,
            "watcher": {
                "ok": status.watch_error is None,
                "checks": status.watch_checks,
                "failures": status.watch_failures,
                "last_error": status.watch_error,
                "checked_at": status.watch_checked_at,
            },
        },
        "regions": runtime.health.snapshot(list(policy.regions)) if policy else {},
        "store": store,
        "cache": {
            "stores_in_flight": runtime.cache_stats.stores_in_flight,
            "stores_skipped_overload": runtime.cache_stats.stores_skipped,
        },
        "time": time.time(),
    }
    if runtime.board is not None:  # one worker of `serve --workers N`: describe them all
        payload.update(runtime.board.status())
    return _json(200, payload)


async def _metrics(runtime: EdgeRuntime, body: bytes) -> Answer:
    text = runtime.prometheus_text()
    return Answer(
        200, (("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),), text.encode(), "admin"
    )


async def _analytics(runtime: EdgeRuntime, body: bytes) -> Answer:
    from edgerules.observe.metrics import outside_label_sets, parse_collector_document

    policy = runtime.policy
    if policy is None or not policy.metrics.collector:
        return _NOT_FOUND  # `metrics.collector: false`: as if there were no such endpoint
    try:
        records = parse_collector_document(body, max_age=policy.metrics.collector_max_age)
    except ValueError as exc:
        return _json(400, {"error": f"Invalid metrics document: {exc}"}, "invalid_request")
    if not isinstance(records, list):
        records = [records]
    sets = label_sets(policy)
    for i, record in enumerate(records):
        problem = outside_label_sets(record, sets)
        if problem is not None:  # the labels and rollup fields are closed sets: nothing new gets in
            where = f"item {i}: " if len(records) > 1 else ""
            return _json(400, {"error": f"Invalid metrics document: {where}{problem}"}, "invalid_request")
    if runtime.metrics is not None:
        for record in records:
            runtime.metrics.record(record)
    return _json(200, {"accepted": len(records)})


_LABEL_SETS: dict[int, tuple[Any, Any]] = {}


def label_sets(policy: Any):
    """The policy's closed label sets (`metrics.LabelSets`), once per policy object."""
    from edgerules.observe.metrics import LabelSets

    known = _LABEL_SETS.get(id(policy))
    if known is not None and known[0] is policy:
        return known[1]
    classify = policy.classify
    sets = LabelSets.of(
        policy.regions,
        [*(rc.name for rc in classify.classes), classify.default_class],
        [rule.name for _, rule, _ in policy.rate_limits],
    )
    if len(_LABEL_SETS) > 16:
        _LABEL_SETS.clear()
    _LABEL_SETS[id(policy)] = (policy, sets)
    return sets


async def _reload(runtime: EdgeRuntime, body: bytes) -> Answer:
    ok = await runtime.reload()
    status = runtime.reload_status
    payload = {
        "reloaded": ok,
        "last_error": status.last_error,
        "version": runtime.policy.version if runtime.policy else None,
    }
    if ok and runtime.board is not None:  # this worker reloaded; the supervisor passes it on to every worker
        payload["workers_signalled"] = ask_supervisor_to_reload(runtime.board.info)
    return _json(200 if ok else 422, payload)


PURGE_USAGE = 'body must be JSON: {"all": true} | {"prefix": "/path"} | {"key": K} | {"tags": ["t1", "t2"]}'
MAX_PURGE_TAG_BYTES = 16 * 1024


def purge_tags(value: Any) -> list[str] | None:
    """The `tags` of a purge request (a string or a list of strings, at most 16 KB in all), None when invalid."""
    tags = [value] if isinstance(value, str) else value
    if not isinstance(tags, list) or not tags or not all(isinstance(t, str) and t.strip() for t in tags):
        return None
    if sum(len(t.encode()) for t in tags) > MAX_PURGE_TAG_BYTES:
        return None
    return tags


async def _purge(runtime: EdgeRuntime, body: bytes) -> Answer:
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        return _json(400, {"error": PURGE_USAGE})
    scopes = {"all", "prefix", "key", "tags"} & request.keys() if isinstance(request, dict) else set()
    if len(scopes) != 1:
        return _json(400, {"error": "say what to purge: one of all, prefix, key or tags"})
    prefix, key, tags = request.get("prefix"), request.get("key"), None
    if "prefix" in request and not (isinstance(prefix, str) and prefix.startswith("/")):
        return _json(400, {"error": "prefix must be a path starting with /"})
    if "key" in request and not is_cache_key(key):
        # Only cache entries: the store also holds rate-limit counters, API keys and analytics rollups.
        return _json(400, {"error": "key must be a cache key (cache:<64 hex digits>)"})
    if "all" in request and request["all"] is not True:
        return _json(400, {"error": 'say {"all": true} to purge every cache entry'})
    if "tags" in request:
        tags = purge_tags(request["tags"])
        if tags is None:
            return _json(400, {"error": "tags: a non-empty list of non-empty strings, at most 16 KB"})
    if runtime.state is None:
        return _json(503, {"error": "no policy loaded"})
    try:
        removed = await runtime.state.cache.purge(
            all="all" in request, path_prefix=prefix, key=key, tags=tags
        )
    except StoreUnavailable as exc:
        return _json(503, {"error": f"store unavailable: {exc}"})
    return _json(200, {"purged": removed})


_ROUTES = {
    "health": ("GET", _health),
    "status": ("GET", _status),
    "metrics": ("GET", _metrics),
    "analytics": ("POST", _analytics),
    "reload": ("POST", _reload),
    "cache/purge": ("POST", _purge),
}

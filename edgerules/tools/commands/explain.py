"""`edgerules explain METHOD URL`: what the edge would do with one request, and which rules decided it.

Runs the engine offline (a MemoryStore, every region healthy unless `--down`); when the request is forwarded,
the engine's steps (`engine/steps.py`, the live edge's own failover loop) run against simulated origins: each
region answers `200 application/json` unless `--origin REGION=WHAT` says otherwise (a status, `timeout`,
`connect_error`, `protocol_error`), and `--cached AGE` puts a stored answer for the request in the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from edgerules.policy.model import Policy

DEFAULT_POLICY = "rules/aybiza.yaml"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "explain",
        help="show the decision and the rule trace (file:line) for one request",
        description="Run one request through the policy offline and explain the decision.",
    )
    p.add_argument("method", metavar="METHOD", help="HTTP method, e.g. GET")
    p.add_argument("url", metavar="URL", help="a path (/api/v1/agents/1?x=1) or an absolute URL")
    p.add_argument(
        "-H", "--header", action="append", default=[], metavar="'K: V'", help="request header (repeatable)"
    )
    p.add_argument("--country", metavar="CC", help="client country (sets the geo header from a trusted peer)")
    p.add_argument("--client-ip", metavar="IP", help="client address (default loopback)")
    p.add_argument(
        "--down", action="append", default=[], metavar="REGION", help="treat REGION as unhealthy (repeatable)"
    )
    p.add_argument("--body-size", type=int, metavar="BYTES", help="request body size")
    p.add_argument(
        "--origin",
        action="append",
        default=[],
        metavar="REGION=WHAT",
        help="what a region's origin does: a status (503, 304), timeout, connect_error or protocol_error; "
        "REGION * for every region (repeatable; default 200)",
    )
    p.add_argument(
        "--origin-header",
        action="append",
        default=[],
        metavar="'K: V'",
        help="a header of the simulated origin responses (repeatable; default Content-Type: application/json)",
    )
    p.add_argument(
        "--cached",
        metavar="AGE",
        help="a 200 answer for this request stored AGE ago (e.g. 10m), with the --origin-header fields",
    )
    p.add_argument(
        "--policy", default=DEFAULT_POLICY, metavar="FILE", help=f"policy file (default {DEFAULT_POLICY})"
    )
    p.add_argument("--env", metavar="NAME", help="environment overlay (e.g. local)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    import asyncio

    from edgerules.policy.load import jwt_secret_variables, load_policy_file

    headers = []
    for raw in args.header:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            print(f"edgerules explain: bad header {raw!r} (expected 'Name: value')", file=out)
            return 2
        headers.append((name.strip(), value.strip()))
    # Tokens are verified with the secret the policy names (`${env:NAME}`, whatever NAME is); when it is set,
    # check the policy as the edge would (secret strength included).
    secret_vars = jwt_secret_variables(args.policy, args.env)
    unset = [name for name in secret_vars if not os.environ.get(name)]
    for_serving = bool(secret_vars) and not unset
    policy = load_policy_file(args.policy, args.env, environ=os.environ, for_serving=for_serving).policy
    unknown = [r for r in args.down if r not in policy.regions]
    if unknown:
        print(
            f"edgerules explain: unknown region {', '.join(unknown)} (regions: {', '.join(policy.regions)})",
            file=out,
        )
        return 2
    try:
        origins, default, origin_headers = _origins(args, policy)
    except ValueError as exc:
        print(f"edgerules explain: {exc}", file=out)
        return 2
    args.origins, args.default_origin, args.origin_headers = origins, default, origin_headers
    from edgerules.tools.policytest import CaseError

    try:
        doc = asyncio.run(explain(policy, args.method, args.url, headers, args))
    except CaseError as exc:  # --cached for a request no cache rule stores, a stream told to fail, ...
        print(f"edgerules explain: {exc}", file=out)
        return 2
    if unset:
        doc["notes"] = [
            f"auth.jwt.secret comes from ${{env:{name}}}, which is not set: every bearer token is refused "
            f"(auth failed:misconfigured); export {name}=... to verify tokens"
            for name in unset
        ]
    if args.format == "json":
        print(json.dumps(doc, indent=2, sort_keys=False), file=out)
    else:
        print(_text(doc), file=out)
    return 0


def _origins(args: argparse.Namespace, policy: Policy):
    """(per-region behaviours, the default one, the simulated response headers) from the command line."""
    from edgerules.tools.policytest import ORIGIN_FAILURES, OriginBehaviour

    headers: list[tuple[str, str]] = []
    for raw in getattr(args, "origin_header", []) or []:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"bad --origin-header {raw!r} (expected 'Name: value')")
        headers.append((name.strip(), value.strip()))
    if not any(n.lower() == "content-type" for n, _ in headers):
        headers.insert(0, ("Content-Type", "application/json"))
    default = OriginBehaviour(headers=tuple(headers))
    origins: dict[str, OriginBehaviour] = {}
    for raw in getattr(args, "origin", []) or []:
        region, sep, what = raw.partition("=")
        region, what = region.strip(), what.strip()
        if not sep or (region != "*" and region not in policy.regions):
            raise ValueError(
                f"bad --origin {raw!r} (expected REGION=WHAT, regions: {', '.join(policy.regions)})"
            )
        if what in ORIGIN_FAILURES:
            does = OriginBehaviour(what)
        elif what.isdigit() and 100 <= int(what) <= 599:
            does = OriginBehaviour(status=int(what), headers=tuple(headers))
        else:
            raise ValueError(f"bad --origin {raw!r}: WHAT is a status, {', '.join(ORIGIN_FAILURES)}")
        if region == "*":
            default = does
        else:
            origins[region] = does
    return origins, default, tuple(headers)


async def explain(
    policy: Policy, method: str, url: str, headers: list[tuple[str, str]], args: argparse.Namespace
) -> dict[str, Any]:
    from edgerules.engine.core import decide_request
    from edgerules.engine.health import HealthRegistry
    from edgerules.engine.state import EngineState
    from edgerules.engine.values import Answer
    from edgerules.stores.memory import MemoryStore
    from edgerules.tools.policytest import OriginBehaviour, build_request, observe, seed_entry, simulate

    now = getattr(args, "now", None) or time.time()
    health = HealthRegistry()
    for region in args.down:
        health.force(region, False)
    state = EngineState(MemoryStore(), health, now=lambda: now)
    request = build_request(
        policy,
        method,
        url,
        headers,
        country=args.country,
        client_ip=args.client_ip,
        body_size=args.body_size,
        now=now,
    )
    origins = getattr(args, "origins", {}) or {}
    default = getattr(args, "default_origin", None) or OriginBehaviour()
    if getattr(args, "cached", None):
        await seed_entry(policy, state, request, now, args.cached, getattr(args, "origin_headers", ()))
    decision = await decide_request(request, policy, state)
    sim = await simulate(policy, state, request, decision, origins, default, now)
    obs = observe(request, sim, policy, now)
    forward = sim.forward
    final = sim.decision.outcome
    doc: dict[str, Any] = {
        "request": {"method": request.method, "url": request.url, "client_ip": request.client_ip}
    }
    f = obs.fields
    if forward is None:
        assert isinstance(final, Answer)
        doc["decision"] = {"outcome": "answer", "status": final.status, "kind": final.kind, "body": f["body"]}
    else:
        doc["decision"] = {
            "outcome": "forward",
            "region": f["region"],
            "priority": f["priority"],
            "degraded": f["degraded"],
            "targets": [
                {"region": t.region, "priority": t.priority, "url": f"{t.scheme}://{t.host}:{t.port}{t.path}"}
                for t in forward.targets
            ],
            "stream": forward.stream,
            "request_headers_set": [list(p) for p in forward.set_headers]
            + [list(p) for p in (forward.targets[0].headers if forward.targets else ())],
            "request_headers_removed": list(forward.remove_headers),
            "request_headers_added_if_absent": [list(p) for p in forward.edits.add],
        }
        doc["tries"] = [
            {"region": step.target.region, "origin": event.status if event.kind == "response" else event.kind}
            for step, event in sim.tries
        ]
        if isinstance(final, Answer):
            doc["decision"]["finished"] = {"status": final.status, "kind": final.kind, "body": f["body"]}
    doc["context"] = {
        k: f[k]
        for k in (
            "country",
            "class",
            "request_priority",
            "auth",
            "identity",
            "cache",
            "rate_limit_remaining",
            "error",
        )
    }
    doc["origin_request"] = obs.origin_request
    body = obs.body
    if body is not None and request.method == "HEAD":
        body = b""  # the edge's answer to a HEAD carries no body (its headers are those of a GET)
    doc["client_response"] = {
        "status": obs.status,
        "headers": [list(p) for p in obs.response_headers],
        "body": None if body is None else body.decode("utf-8", "surrogateescape"),
        "from": "edge" if body is not None else "origin",
    }
    doc["response"] = {"status": f["status"], "headers": [list(p) for p in obs.response_headers]}
    doc["trace"] = [e.to_json() for e in obs.trace]
    return doc


def _text(doc: dict[str, Any]) -> str:
    from edgerules.engine.values import TraceEntry
    from edgerules.tools.policytest import trace_lines

    r, d, c = doc["request"], doc["decision"], doc["context"]
    lines = [f"{r['method']} {r['url']}  (client {r['client_ip']})", ""]
    if d["outcome"] == "answer":
        body = d["body"] if isinstance(d["body"], str) else json.dumps(d["body"])
        lines.append(f"decision: answered by the edge: {d['status']} ({d['kind']})")
        if body:
            lines.append(f"  body: {body}")
    else:
        degraded = " DEGRADED" if d["degraded"] else ""
        lines.append(f"decision: forward to {d['region']} ({d['priority']}{degraded})")
        for t in d["targets"]:
            lines.append(f"  target {t['priority']:<9} {t['region']:<12} {t['url']}")
        if d["stream"]:
            lines.append("  streamed (not buffered, not cached)")
        for t in doc.get("tries", []):
            lines.append(f"  tried {t['region']}: the origin answered {t['origin']}")
        if "finished" in d:
            fin = d["finished"]
            lines.append(f"  finished by the edge: {fin['status']} ({fin['kind']})")
        lines.append("  request headers set:")
        lines.extend(f"    {n}: {v}" for n, v in d["request_headers_set"])
        if d["request_headers_removed"]:
            lines.append(f"  request headers removed: {', '.join(d['request_headers_removed'])}")
    lines.append("")
    lines.append("context: " + ", ".join(f"{k}={_short(v)}" for k, v in c.items()))
    assumed = (
        " (simulated origins: 200 application/json unless --origin)" if d["outcome"] == "forward" else ""
    )
    lines.append(f"response {doc['response']['status']}{assumed}:")
    lines.extend(f"  {n}: {v}" for n, v in doc["response"]["headers"])
    lines.append("")
    lines.append("trace:")
    entries = [TraceEntry(**e) for e in doc["trace"]]
    lines.extend("  " + line for line in trace_lines(entries))
    lines.extend(f"note: {note}" for note in doc.get("notes", []))
    return "\n".join(lines)


def _short(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)

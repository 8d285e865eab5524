"""Compiler: a checked policy document -> an immutable `model.Policy`.

Two steps live here: picking an environment (`apply_environment`, a deep merge of `environments.<name>` onto
the base) and `compile_policy`; `${env:NAME}` substitution is `edgerules.policy.envsubst`. The compiler trusts the schema
and semantic checks that ran before it; what can still go wrong (a value that came from an environment
variable, an upstream URL that only breaks after substitution) becomes a `PolicyError` at the node's
file:line, never a traceback.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, overload
from urllib.parse import urlsplit

from edgerules.cache.http import ANY_FINAL_STATUS, CacheRule
from edgerules.diagnostics import Diagnostic, Mark, PolicyError
from edgerules.kinds import ErrorKind
from edgerules.paths import PathMatcher, PathPattern, compile_regex
from edgerules.policy import model
from edgerules.policy.loader import LoadedDocument, deep_merge, escape_token
from edgerules.policy.model import ClaimMapping, JwtConfig, MetricsConfig, RateLimitRule, StoreConfig
from edgerules.units import parse_duration, parse_size

LOOPBACK_CIDRS: tuple[model.IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


# --------------------------------------------------------------------------------------------- environments


def environment_names(doc: LoadedDocument) -> list[str]:
    envs = doc.data.get("environments") if isinstance(doc.data, dict) else None
    return list(envs) if isinstance(envs, dict) else []


def apply_environment(doc: LoadedDocument, env: str | None) -> LoadedDocument:
    """The base document (without `environments`) with `environments.<env>` deep-merged on top.

    Marks follow the winner, so a problem in an overlaid value is reported at the overlay's line. An unknown
    environment name is a `PolicyError` listing the known ones.
    """
    base = doc.without("/environments") if "environments" in doc.data else doc
    if env is None:
        return base
    known = environment_names(doc)
    if env not in known:
        listed = ", ".join(known) if known else "none are defined"
        raise PolicyError.at(
            doc.key_mark_for("/environments") if known else doc.mark_for(""),
            f"unknown environment {env!r}",
            pointer="/environments",
            hint=f"known environments: {listed}",
        )
    overlay = doc.subtree(f"/environments/{escape_token(env)}")
    if overlay.data is None:  # `staging:` with nothing under it
        return base
    return deep_merge(base, overlay)


# --------------------------------------------------------------------------------------------- compiler


class _Ctx:
    """Marks for `source` strings, and errors that carry the node's position."""

    def __init__(self, doc: LoadedDocument, base_dir: str) -> None:
        self.doc = doc
        self.base_dir = base_dir
        self.errors: list[Diagnostic] = []

    def mark(self, pointer: str) -> Mark | None:
        return self.doc.mark_for(pointer)

    def source(self, pointer: str) -> str:
        m = self.mark(pointer)
        return f"{m.file}:{m.line}" if m else ""

    @contextmanager
    def at(self, pointer: str) -> Iterator[None]:
        """Turn a ValueError/TypeError/KeyError inside into a diagnostic at `pointer`."""
        try:
            yield
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            self.errors.append(Diagnostic("error", f"cannot compile: {e}", self.mark(pointer), pointer))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _pairs(mapping: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), "" if v is None else _scalar_text(v)) for k, v in (mapping or {}).items())


def _scalar_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


@overload
def _duration(value: Any, default: float) -> float: ...
@overload
def _duration(value: Any, default: None = None) -> float | None: ...
def _duration(value: Any, default: float | None = None) -> float | None:
    return default if value is None else parse_duration(value)


@overload
def _size(value: Any, default: int) -> int: ...
@overload
def _size(value: Any, default: None = None) -> int | None: ...
def _size(value: Any, default: int | None = None) -> int | None:
    return default if value is None else parse_size(value)


def _header_name(value: Any) -> str | None:
    """A header name from YAML; null disables the header."""
    return None if value is None else str(value)


def _lower(value: Any) -> str | None:
    return None if value is None else str(value).lower()


_PATH_KINDS = ("path", "prefix", "regex")


def path_patterns(m: Mapping[str, Any], source: str) -> list[PathPattern]:
    """The path/prefix/regex patterns of one match mapping, in that order."""
    return [PathPattern(kind, str(v), source) for kind in _PATH_KINDS for v in _as_list(m.get(kind))]


def compile_match(m: Mapping[str, Any] | None, source: str = "") -> model.Match:
    """A YAML match mapping -> `model.Match` (all keys AND, list values OR)."""
    m = m or {}
    patterns = path_patterns(m, source)
    headers = tuple(_header_condition(h) for h in _as_list(m.get("header")))
    methods = m.get("methods")
    ctypes = m.get("content_type")
    classes = m.get("class")
    countries = m.get("country")
    return model.Match(
        paths=PathMatcher(patterns) if patterns else None,
        methods=frozenset(str(x).upper() for x in _as_list(methods)) if methods is not None else None,
        headers=headers,
        content_types=tuple(str(x).lower() for x in _as_list(ctypes)) if ctypes is not None else None,
        classes=frozenset(str(x) for x in _as_list(classes)) if classes is not None else None,
        countries=frozenset(str(x).upper() for x in _as_list(countries)) if countries is not None else None,
    )


def _header_condition(h: Mapping[str, Any]) -> model.HeaderCondition:
    regex = h.get("regex")
    present = h.get("present")
    return model.HeaderCondition(
        name=str(h["name"]).lower(),
        equals=None if h.get("equals") is None else str(h["equals"]),
        contains=None if h.get("contains") is None else str(h["contains"]),
        regex=compile_regex(str(regex)) if regex is not None else None,
        present=None if present is None else bool(present),
    )


def is_path_only(m: Mapping[str, Any]) -> bool:
    return bool(m) and all(k in _PATH_KINDS for k in m)


def compile_policy(
    doc: LoadedDocument,
    *,
    version: str,
    files: tuple[str, ...],
    environment: str | None,
    name: str | None = None,
) -> model.Policy:
    """Build the immutable `model.Policy` from a merged, substituted, checked document.

    Raises `PolicyError` (every problem at once) if a value cannot be compiled.
    """
    data: dict[str, Any] = doc.data
    ctx = _Ctx(doc, os.path.dirname(os.path.abspath(doc.file)))
    parts: dict[str, Any] = {}
    steps: list[tuple[str, str, Callable[[_Ctx, Any], Any], Any]] = [
        ("regions", "/regions", _regions, data),
        ("routing", "/routing", _routing, data.get("routing") or {}),
        ("geo", "/geo", _geo, data.get("geo") or {}),
        ("classify", "/classify", _classify, data.get("classify") or {}),
        ("validation", "/validation", _validation, data.get("validation") or {}),
        ("auth", "/auth", _auth, data.get("auth")),
        ("rate_limits", "/rate_limits", _rate_limits, data.get("rate_limits") or []),
        ("cache", "/cache", _cache, data.get("cache")),
        ("headers", "/headers", _headers, data.get("headers") or {}),
        ("cors", "/cors", _cors, data.get("cors") or []),
        ("errors", "/errors", _errors, data.get("errors") or {}),
        ("metrics", "/metrics", _metrics, data.get("metrics") or {}),
        ("store", "/store", _store, data.get("store") or {}),
        ("admin", "/admin", _admin, data.get("admin") or {}),
        ("passive_health", "/health/passive", _passive, (data.get("health") or {}).get("passive") or {}),
    ]
    for key, pointer, fn, value in steps:
        with ctx.at(pointer):
            parts[key] = fn(ctx, value)
    if ctx.errors:
        raise PolicyError(ctx.errors)
    policy_name = name or data.get("name") or os.path.splitext(os.path.basename(doc.file))[0]
    return model.Policy(name=str(policy_name), version=version, files=files, environment=environment, **parts)


# ---- regions, health, geo, routing


def _probe(ctx: _Ctx, raw: Mapping[str, Any]) -> model.HealthProbe:
    d = model.HealthProbe()
    return model.HealthProbe(
        path=str(raw.get("path", d.path)),
        interval=_duration(raw.get("interval"), d.interval),
        timeout=_duration(raw.get("timeout"), d.timeout),
        expect_status=frozenset(int(s) for s in raw["expect_status"])
        if "expect_status" in raw
        else d.expect_status,
        expect_json=tuple((str(k), v) for k, v in (raw.get("expect_json") or {}).items()),
        healthy_threshold=int(raw.get("healthy_threshold", d.healthy_threshold)),
        unhealthy_threshold=int(raw.get("unhealthy_threshold", d.unhealthy_threshold)),
        headers=_pairs(raw.get("headers")),
    )


def split_upstream(url: str) -> tuple[str, str, int, str]:
    """`https://host:8443/base/` -> ("https", "host", 8443, "/base"); ValueError when it is not one."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"upstream {url!r} must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"upstream {url!r} has no host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"upstream {url!r} may not have a query, fragment or credentials")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")


def _regions(ctx: _Ctx, data: Mapping[str, Any]) -> dict[str, model.Region]:
    defaults = {k: v for k, v in (data.get("health") or {}).items() if k != "passive"}
    out: dict[str, model.Region] = {}
    for name, raw in (data.get("regions") or {}).items():
        pointer = f"/regions/{escape_token(name)}"
        with ctx.at(f"{pointer}/upstream"):
            scheme, host, port, base = split_upstream(str(raw["upstream"]))
            netloc = f"[{host}]" if ":" in host else host
            default_port = 443 if scheme == "https" else 80
            upstream = f"{scheme}://{netloc}{'' if port == default_port else f':{port}'}{base}"
            location = raw.get("location") or {}
            out[name] = model.Region(
                name=name,
                upstream=upstream,
                scheme=scheme,
                host=host,
                port=port,
                base_path=base,
                lat=None if location.get("lat") is None else float(location["lat"]),
                lon=None if location.get("lon") is None else float(location["lon"]),
                health=_probe(ctx, {**defaults, **(raw.get("health") or {})}),
                source=ctx.source(pointer),
            )
    return out


def _passive(ctx: _Ctx, raw: Mapping[str, Any]) -> model.PassiveHealth:
    d = model.PassiveHealth()
    return model.PassiveHealth(
        failures=int(raw.get("failures", d.failures)),
        statuses=frozenset(int(s) for s in raw["statuses"]) if "statuses" in raw else d.statuses,
        ejection=_duration(raw.get("ejection"), d.ejection),
        status_ratio=float(raw.get("status_ratio", d.status_ratio)),
        window=_duration(raw.get("window"), d.window),
        min_requests=int(raw.get("min_requests", d.min_requests)),
        min_clients=int(raw.get("min_clients", d.min_clients)),
    )


def _networks(values: Any) -> tuple[model.IPNetwork, ...]:
    return tuple(ipaddress.ip_network(str(v), strict=False) for v in values or ())


def _geo(ctx: _Ctx, raw: Mapping[str, Any]) -> model.Geo:
    d = model.Geo()
    return model.Geo(
        country_header=_lower(raw["country_header"]) if "country_header" in raw else d.country_header,
        latitude_header=_lower(raw.get("latitude_header")),
        longitude_header=_lower(raw.get("longitude_header")),
        trusted_proxies=_networks(raw.get("trusted_proxies")),
        maxmind_db=_relative_file(ctx, raw.get("maxmind_db"), "/geo/maxmind_db"),
        default_country=str(raw.get("default_country", d.default_country)).upper(),
    )


def _relative_file(ctx: _Ctx, value: Any, pointer: str) -> str | None:
    """A file path from the policy: relative paths are relative to the file that declared them."""
    if value in (None, ""):
        return None
    path = str(value)
    if os.path.isabs(path):
        return path
    mark = ctx.mark(pointer)
    base = os.path.dirname(os.path.abspath(mark.file)) if mark else ctx.base_dir
    return os.path.normpath(os.path.join(base, path))


def _routing(ctx: _Ctx, raw: Mapping[str, Any]) -> model.Routing:
    d = model.Routing(default=(), countries={})
    hd = model.RoutingHeaders()
    headers = raw.get("headers") or {}
    lt_raw = raw.get("latency_target") or {}
    ld = model.LatencyTarget()
    return model.Routing(
        default=tuple(raw.get("default") or ()),
        countries={str(cc).upper(): tuple(regions) for cc, regions in (raw.get("countries") or {}).items()},
        priorities=tuple(raw["priorities"]) if "priorities" in raw else d.priorities,
        when_all_unhealthy=raw.get("when_all_unhealthy", d.when_all_unhealthy),
        host_rewrite=raw.get("host_rewrite", d.host_rewrite),
        timeout=_duration(raw.get("timeout"), d.timeout),
        connect_timeout=_duration(raw.get("connect_timeout"), d.connect_timeout),
        retries=int(raw.get("retries", d.retries)),
        headers=model.RoutingHeaders(
            target_region=_header_name(headers["target_region"])
            if "target_region" in headers
            else hd.target_region,
            priority=_header_name(headers["priority"]) if "priority" in headers else hd.priority,
            latency_target=(
                _header_name(headers["latency_target"]) if "latency_target" in headers else hd.latency_target
            ),
            degraded=_header_name(headers["degraded"]) if "degraded" in headers else hd.degraded,
            forwarded=bool(headers.get("forwarded", hd.forwarded)),
            strip_untrusted=tuple(str(h).lower() for h in headers["strip_untrusted"])
            if "strip_untrusted" in headers
            else hd.strip_untrusted,
        ),
        latency_target=model.LatencyTarget(
            **{
                k: float(lt_raw.get(k, getattr(ld, k)))
                for k in ("base_ms", "per_100km_ms", "min_ms", "max_ms", "default_ms")
            }
        ),
        source=ctx.source("/routing"),
    )


# ---- classify, validation


def _classify(ctx: _Ctx, raw: Mapping[str, Any]) -> model.Classify:
    d = model.Classify()
    headers = raw.get("headers") or {}
    classes = []
    for i, c in enumerate(raw.get("classes") or []):
        src = ctx.source(f"/classify/classes/{i}")
        classes.append(
            model.RequestClass(
                str(c["name"]),
                compile_match(c.get("match"), src),
                bool(c.get("stream", False)),
                src,
                _size(c.get("max_body_size")),
            )
        )
    priorities = []
    for i, p in enumerate(raw.get("priorities") or []):
        src = ctx.source(f"/classify/priorities/{i}")
        priorities.append(model.PriorityRule(str(p["priority"]), compile_match(p.get("match"), src), src))
    return model.Classify(
        classes=tuple(classes),
        default_class=str(raw.get("default_class", d.default_class)),
        priorities=tuple(priorities),
        default_priority=str(raw.get("default_priority", d.default_priority)),
        class_header=_header_name(headers.get("class")),
        priority_header=_header_name(headers.get("priority")),
    )


def _validation(ctx: _Ctx, raw: Mapping[str, Any]) -> model.Validation:
    d = model.Validation()
    allow = raw.get("allow_paths")
    patterns = [
        p
        for i, m in enumerate(allow or [])
        for p in path_patterns(m, ctx.source(f"/validation/allow_paths/{i}"))
    ]
    methods = raw.get("methods")
    return model.Validation(
        allow_paths=PathMatcher(patterns) if allow is not None else None,
        allow_paths_source=ctx.source("/validation/allow_paths") if allow is not None else "",
        methods=frozenset(str(m).upper() for m in methods) if methods is not None else None,
        require_content_type=frozenset(str(m).upper() for m in raw.get("require_content_type") or ()),
        content_types={
            str(k).upper(): tuple(str(t).lower() for t in _as_list(v))
            for k, v in (raw.get("content_types") or {}).items()
        },
        max_body_size=_size(raw.get("max_body_size")),
        max_url_length=_size(raw.get("max_url_length"), d.max_url_length) or d.max_url_length,
        max_header_size=_size(raw.get("max_header_size"), d.max_header_size) or d.max_header_size,
        method_override=raw.get("method_override", d.method_override),
        source=ctx.source("/validation"),
    )


# ---- auth, rate limits


def _combine_path_matches(entries: list[Mapping[str, Any]], sources: list[str]) -> model.Match:
    patterns = [p for m, src in zip(entries, sources, strict=True) for p in path_patterns(m, src)]
    return model.Match(paths=PathMatcher(patterns))


def _auth(ctx: _Ctx, raw: Mapping[str, Any] | None) -> model.Auth | None:
    """`auth.public` (a list of matches): path-only ones become one `public` matcher, others leading rules."""
    if raw is None:
        return None
    d = model.Auth()
    public = raw.get("public") or []
    path_only = [(m, ctx.source(f"/auth/public/{i}")) for i, m in enumerate(public) if is_path_only(m)]
    other = [(m, ctx.source(f"/auth/public/{i}")) for i, m in enumerate(public) if not is_path_only(m)]
    rules = [model.AuthRule(compile_match(m, src), (), src) for m, src in other]
    for i, r in enumerate(raw.get("rules") or []):
        src = ctx.source(f"/auth/rules/{i}")
        rules.append(model.AuthRule(compile_match(r.get("match"), src), tuple(r.get("schemes") or ()), src))
    ids = raw.get("identity_headers") or {}
    di = model.IdentityHeaderNames()
    return model.Auth(
        public=_combine_path_matches([m for m, _ in path_only], [s for _, s in path_only])
        if path_only
        else None,
        public_source=ctx.source("/auth/public") if public else "",
        rules=tuple(rules),
        schemes=tuple(raw["schemes"]) if "schemes" in raw else d.schemes,
        jwt=_jwt(ctx, raw["jwt"]) if raw.get("jwt") is not None else None,
        api_key_scheme=str((raw.get("api_key") or {}).get("scheme", d.api_key_scheme)),
        identity_headers=model.IdentityHeaderNames(
            **{
                k: str(ids.get(k, getattr(di, k)))
                for k in ("user", "role", "permissions", "authenticated_at")
            }
        ),
        strip_headers=tuple(str(h).lower() for h in raw.get("strip_headers") or ()),
        source=ctx.source("/auth"),
    )


def _jwt(ctx: _Ctx, raw: Mapping[str, Any]) -> JwtConfig:
    d = JwtConfig()
    dc = ClaimMapping()
    claims = raw.get("claims") or {}
    secret = raw.get("secret")
    audience = raw.get("audience")
    return JwtConfig(
        algorithms=tuple(raw["algorithms"]) if "algorithms" in raw else d.algorithms,
        secret=secret.encode() if isinstance(secret, str) and secret else None,
        jwks_file=_relative_file(ctx, raw.get("jwks_file"), "/auth/jwt/jwks_file"),
        jwks_url=raw.get("jwks_url") or None,
        jwks_refresh=_duration(raw.get("jwks_refresh"), d.jwks_refresh),
        leeway=_duration(raw.get("leeway"), d.leeway),
        require=tuple(raw["require"]) if "require" in raw else d.require,
        issuer=raw.get("issuer") or None,
        audience=None if audience in (None, "") else str(audience),
        claims=ClaimMapping(
            **{k: str(claims.get(k, getattr(dc, k))) for k in ("user", "role", "permissions")}
        ),
        max_token_length=_size(raw.get("max_token_length"), d.max_token_length) or d.max_token_length,
    )


def _rate_limits(
    ctx: _Ctx, raw: list[Mapping[str, Any]]
) -> tuple[tuple[model.Match | None, RateLimitRule, bool], ...]:
    out = []
    for i, r in enumerate(raw):
        src = ctx.source(f"/rate_limits/{i}")
        rule = RateLimitRule(
            name=str(r["name"]),
            key=r["key"],
            limit=int(r["limit"]),
            window=parse_duration(r["window"]),
            source=src,
            on_store_error=r.get("on_store_error", "allow"),
        )
        match = compile_match(r["match"], src) if r.get("match") is not None else None
        out.append((match, rule, bool(r.get("per_key_override", False))))
    return tuple(out)


# ---- cache


def _cache(ctx: _Ctx, raw: Mapping[str, Any] | None) -> model.CacheSettings | None:
    if raw is None:
        return None
    d = model.CacheSettings()
    global_key_headers = tuple(str(h).lower() for h in raw.get("key_headers") or ())
    global_max = _size(raw.get("max_body_size"), CacheRule(name="", source="").max_body_size)
    targeted = str(raw["targeted_field"]).lower() if raw.get("targeted_field") else None
    rules = []
    for i, r in enumerate(raw.get("rules") or []):
        pointer = f"/cache/rules/{i}"
        src = ctx.source(pointer)
        match = r.get("match") or {}
        with ctx.at(pointer):
            rules.append(
                (
                    compile_match(match, src),
                    _cache_rule(r, src, match, global_key_headers, global_max, targeted),
                )
            )
    never = raw.get("never") or []
    never_match = None
    if never:
        sources = [ctx.source(f"/cache/never/{i}") for i in range(len(never))]
        if all(is_path_only(m) for m in never):
            never_match = _combine_path_matches(never, sources)
        elif len(never) == 1:
            never_match = compile_match(never[0], sources[0])
        else:
            ctx.errors.append(
                Diagnostic(
                    "error",
                    "cache.never can combine several entries only when they use path/prefix/regex alone",
                    ctx.mark("/cache/never"),
                    "/cache/never",
                    "put methods/header/content_type conditions in a single entry, or use path patterns only",
                )
            )
    return model.CacheSettings(
        rules=tuple(rules),
        never=never_match,
        status_header=str(raw.get("status_header", d.status_header)),
        extra_status_headers=tuple(str(h) for h in raw.get("extra_status_headers") or ()),
        processed_header=_header_name(raw.get("processed_header")),
        key_headers=global_key_headers,
        targeted_field=targeted,
        invalidation=str(raw.get("invalidation", d.invalidation)),
        source=ctx.source("/cache"),
    )


def _cache_statuses(raw: Any, default: frozenset[int]) -> frozenset[int]:
    if raw is None:
        return default
    if raw == "any":
        return ANY_FINAL_STATUS
    return frozenset(int(s) for s in raw)


def _cache_rule(
    r: Mapping[str, Any],
    src: str,
    match: Mapping[str, Any],
    global_key_headers: tuple[str, ...],
    global_max: int | None,
    targeted: str | None = None,
) -> CacheRule:
    d = CacheRule(name="", source="")
    key = r.get("key") or {}
    key_headers = global_key_headers + tuple(
        h for h in (str(x).lower() for x in key.get("headers") or ()) if h not in global_key_headers
    )
    kwargs: dict[str, Any] = {
        "name": str(r["name"]),
        "source": src,
        "mode": r.get("mode", d.mode),
        "ttl": _duration(r.get("ttl")),
        "default_ttl": _duration(r.get("default_ttl")),
        "methods": frozenset(str(m).upper() for m in match["methods"]) if match.get("methods") else d.methods,
        "statuses": _cache_statuses(r.get("statuses"), d.statuses),
        "content_types": tuple(str(t).lower() for t in r.get("content_types") or ()),
        "max_body_size": _size(
            r.get("max_body_size"), global_max if global_max is not None else d.max_body_size
        ),
        "key_headers": key_headers,
        "override_no_store": bool(r.get("override_no_store", False)),
        "override_private": bool(r.get("override_private", False)),
        "store_set_cookie": bool(r.get("store_set_cookie", False)),
        "replay_set_cookie": bool(r.get("store_set_cookie", False))
        and bool(r.get("replay_set_cookie", False)),
        "stale_while_revalidate": _duration(r.get("stale_while_revalidate"), 0.0),
        "stale_if_error": _duration(r.get("stale_if_error"), 0.0),
    }
    if targeted:
        kwargs["targeted"] = (targeted, *d.targeted)
    # `key.principal` (default true) is passed only if CacheRule grows a field for it.
    if "key_principal" in CacheRule.__dataclass_fields__:
        kwargs["key_principal"] = bool(key.get("principal", True))
    return CacheRule(**kwargs)


# ---- headers, cors, errors


def _header_rule(
    ctx: _Ctx, r: Mapping[str, Any], pointer: str, default_name: str, response: bool
) -> model.HeaderRule:
    src = ctx.source(pointer)
    statuses = r.get("status")
    ctypes = r.get("content_type")
    return model.HeaderRule(
        name=str(r.get("name") or default_name),
        match=compile_match(r["match"], src) if r.get("match") is not None else None,
        unless=compile_match(r["unless"], src) if r.get("unless") is not None else None,
        set=_pairs(r.get("set")),
        add_if_absent=_pairs(r.get("add_if_absent")),
        remove=tuple(str(h) for h in r.get("remove") or ()),
        response_content_types=tuple(str(t).lower() for t in _as_list(ctypes))
        if response and ctypes is not None
        else None,
        response_statuses=frozenset(int(s) for s in _as_list(statuses))
        if response and statuses is not None
        else None,
        source=src,
    )


def _headers(ctx: _Ctx, raw: Mapping[str, Any]) -> model.Headers:
    request = tuple(
        _header_rule(ctx, r, f"/headers/request/{i}", f"request[{i}]", False)
        for i, r in enumerate(raw.get("request") or [])
    )
    response = tuple(
        _header_rule(ctx, r, f"/headers/response/{i}", f"response[{i}]", True)
        for i, r in enumerate(raw.get("response") or [])
    )
    return model.Headers(
        request=request,
        response=response,
        security=_pairs(raw.get("security")),
        processed_region=_header_name(raw.get("processed_region")),
        security_source=ctx.source("/headers/security") if raw.get("security") else "",
        strip_wildcard_credentials=bool(raw.get("strip_wildcard_credentials", True)),
    )


def _cors(ctx: _Ctx, raw: list[Mapping[str, Any]]) -> tuple[model.CorsRule, ...]:
    out = []
    for i, r in enumerate(raw):
        src = ctx.source(f"/cors/{i}")
        max_age = r.get("max_age")
        out.append(
            model.CorsRule(
                name=str(r.get("name") or f"cors[{i}]"),
                match=compile_match(r.get("match"), src),
                allow_origins=frozenset(str(o) for o in r.get("allow_origins") or ()),
                allow_methods=tuple(str(m).upper() for m in r.get("allow_methods") or ()),
                allow_headers=tuple(str(h) for h in r.get("allow_headers") or ()),
                expose_headers=tuple(str(h) for h in r.get("expose_headers") or ()),
                max_age=None if max_age is None else int(parse_duration(max_age)),
                allow_credentials=bool(r.get("allow_credentials", False)),
                source=src,
            )
        )
    return tuple(out)


def _errors(ctx: _Ctx, raw: Mapping[str, Any]) -> dict[ErrorKind, model.ErrorAnswer]:
    out: dict[ErrorKind, model.ErrorAnswer] = {}
    for kind, default in model.DEFAULT_ERRORS.items():
        given = raw.get(kind) or {}
        retry = given.get("retry_after")
        out[kind] = model.ErrorAnswer(
            status=int(given.get("status", default.status)),
            message=str(given.get("message", default.message)),
            retry_after=int(parse_duration(retry)) if retry is not None else default.retry_after,
            headers=_pairs(given.get("headers")),
        )
    return out


# ---- metrics, store, admin


def _metrics(ctx: _Ctx, raw: Mapping[str, Any]) -> MetricsConfig:
    d = MetricsConfig()
    return MetricsConfig(
        enabled=bool(raw.get("enabled", d.enabled)),
        raw_retention=_duration(raw.get("raw_retention"), d.raw_retention),
        rollup_retention=_duration(raw.get("rollup_retention"), d.rollup_retention),
        flush_interval=_duration(raw.get("flush_interval"), d.flush_interval),
        access_log=bool(raw.get("access_log", d.access_log)),
        redact_path_segments=tuple(compile_regex(str(p)) for p in raw.get("redact_path_segments") or ()),
        redact_random_segments=bool(raw.get("redact_random_segments", d.redact_random_segments)),
        collector=bool(raw.get("collector", d.collector)),
        collector_max_age=_duration(raw.get("collector_max_age"), d.collector_max_age),
    )


def _store(ctx: _Ctx, raw: Mapping[str, Any]) -> StoreConfig:
    d = StoreConfig()
    return StoreConfig(
        backend=raw.get("backend", d.backend),
        path=_store_path(ctx, raw.get("path")),
        size_limit=_size(raw.get("size_limit"), d.size_limit),
        url=str(raw.get("url") or d.url),
        prefix=str(raw.get("prefix", d.prefix)),
        timeout=_duration(raw.get("timeout"), d.timeout),
        cluster=bool(raw.get("cluster", d.cluster)),
    )


def _store_path(ctx: _Ctx, value: Any) -> str:
    """The diskcache directory, absolute: a relative `store.path` (and the default) is relative to the file that
    declared it (the main policy file for the default), never to the working directory, so `edgerules keys`,
    `cache purge` and `report` run from anywhere open the same store as the edge."""
    return _relative_file(ctx, value, "/store/path") or os.path.join(ctx.base_dir, StoreConfig().path)


def _admin(ctx: _Ctx, raw: Mapping[str, Any]) -> model.Admin:
    cidrs = raw.get("allow_cidrs")
    return model.Admin(
        token=raw.get("token") or None,
        allow_cidrs=_networks(cidrs) if cidrs is not None else LOOPBACK_CIDRS,
    )

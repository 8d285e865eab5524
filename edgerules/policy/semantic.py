"""Semantic checks: what the JSON Schema cannot express.

Two entry points, both returning diagnostics (never raising):

- `check_raw(doc)` runs on the whole loaded document, environment overlays included: literal secrets.
- `check_merged(doc, ...)` runs on one environment's merged document (`compiler.apply_environment`):
  references between sections (regions, classes), regexes, path normalisation, cache/CORS/JWT safety,
  duplicate and shadowed rules, health and latency sanity, and - for serving - environment variables and
  secret strength.

The schema may have failed too, so every accessor here tolerates wrong types (it skips what it cannot read).
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import re2

from edgerules.diagnostics import Diagnostic, Mark
from edgerules.paths import PathError, normalise_path
from edgerules.policy.envsubst import ENV_REF, substitute_string
from edgerules.units import parse_duration

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # RE2 would print every bad pattern to stderr

HS_ALGS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
JWT_MIN_SECRET_BYTES = 32


class SourceDoc(Protocol):
    """What the checks need from a document (`loader.LoadedDocument` is one)."""

    @property
    def data(self) -> Any: ...

    def mark_for(self, pointer: str) -> Mark | None: ...


class _Checker:
    def __init__(self, doc: SourceDoc) -> None:
        self.doc = doc
        self.out: list[Diagnostic] = []

    def error(self, pointer: str, message: str, hint: str = "") -> None:
        self.out.append(Diagnostic("error", message, self.doc.mark_for(pointer), pointer, hint))

    def warning(self, pointer: str, message: str, hint: str = "") -> None:
        self.out.append(Diagnostic("warning", message, self.doc.mark_for(pointer), pointer, hint))

    def line_of(self, pointer: str) -> str:
        m = self.doc.mark_for(pointer)
        return f"line {m.line}" if m else pointer


def _esc(token: str | int) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


def _get(data: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(k)
    return data


def _dicts(value: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    if isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, dict):
                yield i, item


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"defined: {', '.join(choices)}" if choices else "none are defined"


# ------------------------------------------------------------------------------------------ where matches are


def iter_matches(data: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """(pointer, match mapping) for every match in the document, `validation.allow_paths` entries included."""
    singles = [
        ("classify", "classes", "match"),
        ("classify", "priorities", "match"),
        ("auth", "rules", "match"),
        ("cache", "rules", "match"),
        ("headers", "request", "match"),
        ("headers", "request", "unless"),
        ("headers", "response", "match"),
    ]
    for section, lst, key in singles:
        for i, item in _dicts(_get(data, section, lst)):
            if isinstance(item.get(key), dict):
                yield f"/{section}/{lst}/{i}/{key}", item[key]
    for section in ("rate_limits", "cors"):
        for i, item in _dicts(_get(data, section)):
            if isinstance(item.get("match"), dict):
                yield f"/{section}/{i}/match", item["match"]
    for section, lst in (("auth", "public"), ("cache", "never"), ("validation", "allow_paths")):
        for i, item in _dicts(_get(data, section, lst)):
            yield f"/{section}/{lst}/{i}", item


def _values(m: dict[str, Any], key: str, pointer: str) -> Iterator[tuple[str, str]]:
    """(pointer, value) of a string-or-list match key."""
    value = m.get(key)
    if isinstance(value, str):
        yield f"{pointer}/{key}", value
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if isinstance(v, str):
                yield f"{pointer}/{key}/{i}", v


def _header_conditions(m: dict[str, Any], pointer: str) -> Iterator[tuple[str, dict[str, Any]]]:
    h = m.get("header")
    if isinstance(h, dict):
        yield f"{pointer}/header", h
    else:
        for i, item in _dicts(h):
            yield f"{pointer}/header/{i}", item


# --------------------------------------------------------------------------------------------- regex checks

_LOOKAROUND = re.compile(r"\(\?<?[=!]")
_BACKREF = re.compile(r"(?<!\\)(?:\\\\)*\\([1-9]|k<)")


def regex_problems(pattern: str) -> list[tuple[str, str, str]]:
    """(severity, message, hint) for one policy regex (full-match, RE2)."""
    if _LOOKAROUND.search(pattern):
        return [
            (
                "error",
                f"RE2 does not support lookaround in {pattern!r}; edgerules runs every policy regex in "
                "linear time",
                "rewrite without (?=...), (?!...), (?<=...) or (?<!...)",
            )
        ]
    if _BACKREF.search(pattern):
        return [
            (
                "error",
                f"RE2 does not support backreferences in {pattern!r}; edgerules runs every policy regex "
                "in linear time",
                "rewrite without \\1 or \\k<name>",
            )
        ]
    try:
        re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as e:
        detail = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        return [
            (
                "error",
                f"invalid regex {pattern!r}: {detail}",
                "RE2 syntax: https://github.com/google/re2/wiki/Syntax",
            )
        ]
    problems = []
    dead = _never_matches(pattern)
    if dead:
        return [("error", f"regex {pattern!r} can never match: {dead[0]}", dead[1])]
    if _has_nested_quantifier(pattern):
        problems.append(
            (
                "warning",
                f"regex {pattern!r} has a nested quantifier such as (a+)+",
                "harmless under RE2 (linear time), but it looks copied from a backtracking engine",
            )
        )
    stripped = pattern
    if stripped.startswith("^"):
        stripped = stripped[1:]
    if stripped.endswith("$") and not stripped.endswith("\\$"):
        stripped = stripped[:-1]
    if stripped != pattern:
        problems.append(
            (
                "warning",
                f"anchors in regex {pattern!r} are redundant: policy regexes match the whole value",
                f"write {stripped!r}" if _compiles(stripped) else "remove the ^ and $ anchors",
            )
        )
    return problems


def _top_level_tokens(pattern: str) -> Iterator[tuple[int, str, int]]:
    """(index, token, depth) of the pattern's tokens: an escape, a [class] or one character."""
    i, n, depth = 0, len(pattern), 0
    while i < n:
        c = pattern[i]
        if c == "\\":
            yield i, pattern[i : i + 2], depth
            i += 2
            continue
        if c == "[":
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            yield i, pattern[i : j + 1], depth
            i = j + 1
            continue
        if c == "(":
            depth += 1
        yield i, c, depth
        if c == ")":
            depth -= 1
        i += 1


def _without_inner_anchors(pattern: str) -> str:
    """The pattern with every unescaped `^`/`$` outside a character class removed."""
    return "".join(tok for _, tok, _ in _top_level_tokens(pattern) if tok not in ("^", "$"))


def _never_matches(pattern: str) -> tuple[str, str] | None:
    """(why, hint) when an unescaped `$` must be followed by a character (or `^` preceded by one) in every
    alternative of a top-level pattern, e.g. `^/authors/[0-9]+$/`: policy regexes match the whole value and
    RE2's `$` is the end of it (no multi-line mode). Conservative: only top-level alternatives without groups."""
    if "(" in pattern or "|" in pattern:
        return None
    tokens = list(_top_level_tokens(pattern))
    for k, (_, tok, _) in enumerate(tokens):
        after = [t for _, t, _ in tokens[k + 1 :]]
        before = [t for _, t, _ in tokens[:k]]
        if tok == "$" and after and _consumes(after):
            fixed = _without_inner_anchors(pattern)
            shorter = fixed[:-1] if fixed.endswith("/") and len(fixed) > 1 else ""
            hint = f"write {fixed!r}" if _compiles(fixed) else "remove the '$'"
            if shorter and _compiles(shorter):
                hint += f" or {shorter!r}"
            return (f"'$' is the end of the value, yet {''.join(after)!r} must follow it", hint)
        if tok == "^" and before and _consumes(before):
            fixed = _without_inner_anchors(pattern)
            return (
                f"'^' is the start of the value, yet {''.join(before)!r} must come before it",
                f"write {fixed!r}" if _compiles(fixed) else "remove the '^'",
            )
    return None


def _compiles(pattern: str) -> bool:
    """Would a proposed pattern pass? (A hint must never suggest a regex that is refused in turn.)"""
    if not pattern or _LOOKAROUND.search(pattern) or _BACKREF.search(pattern):
        return False
    try:
        re2.compile(pattern, _RE2_OPTIONS)
    except re2.error:
        return False
    return True


def _consumes(tokens: list[str]) -> bool:
    """Must these tokens (no groups or alternatives) match at least one character?"""
    if "{" in tokens:
        return False  # a counted repeat (`x{0,2}`) may be empty: not worth a second parser here
    for k, tok in enumerate(tokens):
        if tok in ("^", "$", "*", "+", "?") or tok.startswith("{"):
            continue
        nxt = tokens[k + 1] if k + 1 < len(tokens) else ""
        if nxt in ("*", "?") or nxt == "{":
            continue  # optional
        return True
    return False


def _has_nested_quantifier(pattern: str) -> bool:
    """True for a quantified group that itself contains a quantifier, e.g. `(a+)+`, `(a*b)*`, `(x{2,})+`."""
    stack: list[bool] = []  # per open group: contains a quantifier
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            i += 1
            if i < n and pattern[i] == "^":
                i += 1
            if i < n and pattern[i] == "]":
                i += 1
            while i < n and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
            i += 1
            continue
        if c == "(":
            stack.append(False)
        elif c == ")":
            inner = stack.pop() if stack else False
            quantified = i + 1 < n and pattern[i + 1] in "*+{"
            if inner and quantified:
                return True
            if stack and (inner or quantified):
                stack[-1] = True
        elif (c in "*+" or (c == "{" and re.match(r"\{\d*,?\d*\}", pattern[i:]))) and stack:
            stack[-1] = True
        i += 1
    return False


# --------------------------------------------------------------------------------------------- match coverage


def _path_patterns(m: dict[str, Any]) -> list[tuple[str, str]]:
    return [(kind, v) for kind in ("path", "prefix", "regex") for v in _strings(m.get(kind))]


def _under(kind: str, value: str, prefix: str) -> bool:
    """Is every path matched by (kind, value) also matched by the prefix `prefix`?"""
    if kind == "regex":
        return False
    strict = prefix.endswith("/") and prefix != "/"
    if prefix == "/":
        return True
    if strict:
        return value.startswith(prefix)
    base = prefix
    if kind == "prefix" and value.endswith("/") and value.rstrip("/") == base:
        return True
    return value == base or value.startswith(base + "/")


def _pattern_covered(kind: str, value: str, by: list[tuple[str, str]]) -> bool:
    for bkind, bvalue in by:
        if bkind == kind and bvalue == value:
            return True
        if bkind == "prefix" and _under(kind, value, bvalue):
            return True
    return False


def _norm_set(value: Any, upper: bool = False) -> frozenset[str]:
    return frozenset(s.upper() if upper else s for s in _strings(value))


def covers(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """True when every request matched by `b` is also matched by `a` (conservative: False when unsure)."""
    if any(
        k not in ("path", "prefix", "regex", "methods", "header", "content_type", "class", "country")
        for k in a
    ):
        return False
    pa = _path_patterns(a)
    if pa:
        pb = _path_patterns(b)
        if not pb or not all(_pattern_covered(k, v, pa) for k, v in pb):
            return False
    for key, upper in (("methods", True), ("content_type", False), ("class", False), ("country", True)):
        if key in a and (key not in b or not _norm_set(b[key], upper) <= _norm_set(a[key], upper)):
            return False
    if "header" in a:
        ha = [_canon_header(h) for _, h in _header_conditions(a, "")]
        hb = [_canon_header(h) for _, h in _header_conditions(b, "")]
        if not all(h in hb for h in ha):
            return False
    return True


def _canon_header(h: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v).lower() if k == "name" else str(v)) for k, v in h.items()))


# --------------------------------------------------------------------------------------------- the checks


def check_merged(
    doc: SourceDoc,
    *,
    for_serving: bool = False,
    environ: Mapping[str, str] | None = None,
    env: str | None = None,
) -> list[Diagnostic]:
    """All semantic checks on one (merged) environment document (`env`: its name, None for the base)."""
    if not isinstance(doc.data, dict):
        return []
    environ = os.environ if environ is None else environ
    c = _Checker(doc)
    data = doc.data
    _check_region_refs(c, data)
    _check_matches(c, data)
    _check_duplicate_names(c, data)
    _check_shadowed(c, data)
    _check_cache(c, data)
    _check_cors(c, data)
    _check_jwt(c, data)
    _check_health(c, data)
    _check_latency(c, data)
    _check_admin(c, data, env)
    _check_countries(c, data)
    _check_rate_limits(c, data)
    if for_serving:
        _check_serving(c, data, environ)
    return c.out


def check_raw(doc: SourceDoc) -> list[Diagnostic]:
    """Checks on the whole document, every environment overlay included (before any overlay is applied)."""
    if not isinstance(doc.data, dict):
        return []
    c = _Checker(doc)
    _check_secrets(c, doc.data, "")
    envs = doc.data.get("environments")
    if isinstance(envs, dict):
        for name, overlay in envs.items():
            if isinstance(overlay, dict):
                _check_secrets(c, overlay, f"/environments/{_esc(name)}")
    return c.out


# ---- regions


# ---- admin

# The only environment where a loopback peer is trusted as admin: behind a load balancer on the same host (or
# any local forwarder) every client connects from loopback.
LOOPBACK_ADMIN_ENVIRONMENTS = frozenset({"local"})


def _check_admin(c: _Checker, data: dict[str, Any], env: str | None) -> None:
    if env is None or env in LOOPBACK_ADMIN_ENVIRONMENTS:
        return
    raw_admin = data.get("admin")
    admin: dict[str, Any] = raw_admin if isinstance(raw_admin, dict) else {}
    cidrs = admin.get("allow_cidrs")
    pointer = "/admin/allow_cidrs" if cidrs is not None else "/admin"
    trusted = ["127.0.0.0/8", "::1/128"] if cidrs is None else _strings(cidrs)
    loopback = [cidr for cidr in trusted if _covers_loopback(cidr)]
    if loopback:
        c.warning(
            pointer,
            f"environment {env!r} trusts loopback ({', '.join(loopback)}) for the admin endpoints: behind a "
            "load balancer or forwarder on the same host every client is loopback",
            'give admin to the token alone there: admin: {token: "${env:EDGERULES_ADMIN_TOKEN}", '
            "allow_cidrs: []}",
        )


def _covers_loopback(cidr: str) -> bool:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False
    probe = ipaddress.ip_address("127.0.0.1" if net.version == 4 else "::1")
    return probe in net or (net.version == 6 and ipaddress.ip_address("::ffff:127.0.0.1") in net)


def _check_region_refs(c: _Checker, data: dict[str, Any]) -> None:
    regions = data.get("regions")
    defined = list(regions) if isinstance(regions, dict) else []
    lists: list[tuple[str, Any]] = [("/routing/default", _get(data, "routing", "default"))]
    countries = _get(data, "routing", "countries")
    if isinstance(countries, dict):
        lists += [(f"/routing/countries/{_esc(cc)}", v) for cc, v in countries.items()]
    for pointer, value in lists:
        if not isinstance(value, list):
            continue
        seen: dict[str, int] = {}
        for i, name in enumerate(value):
            if not isinstance(name, str):
                continue
            if name not in defined:
                c.error(
                    f"{pointer}/{i}",
                    f"region {name!r} is not defined in regions",
                    _did_you_mean(name, defined),
                )
            if name in seen:
                c.error(
                    f"{pointer}/{i}",
                    f"region {name!r} is listed twice in this list",
                    "each region may appear once per list (the order is the failover order)",
                )
            seen.setdefault(name, i)


# ---- matches: classes, regexes, paths


def _check_matches(c: _Checker, data: dict[str, Any]) -> None:
    classes = [
        item["name"]
        for _, item in _dicts(_get(data, "classify", "classes"))
        if isinstance(item.get("name"), str)
    ]
    default_class = _get(data, "classify", "default_class")
    defined = [*classes, default_class if isinstance(default_class, str) else "default"]
    for pointer, m in iter_matches(data):
        for ptr, name in _values(m, "class", pointer):
            if name not in defined:
                c.error(
                    ptr, f"class {name!r} is not defined in classify.classes", _did_you_mean(name, defined)
                )
        for ptr, value in _values(m, "regex", pointer):
            if not _report_regex(c, ptr, value):
                _check_path_regex_start(c, ptr, value)
        for _hptr, h in _header_conditions(m, pointer):
            if isinstance(h.get("regex"), str):
                _report_regex(c, f"{_hptr}/regex", h["regex"])
        for kind in ("path", "prefix"):
            for ptr, value in _values(m, kind, pointer):
                _check_normalised(c, ptr, kind, value)


def _report_regex(c: _Checker, pointer: str, pattern: str) -> bool:
    """Report the regex's problems; True when one of them is an error."""
    problems = regex_problems(pattern)
    for severity, message, hint in problems:
        (c.error if severity == "error" else c.warning)(pointer, message, hint)
    return any(severity == "error" for severity, _, _ in problems)


def _check_path_regex_start(c: _Checker, pointer: str, pattern: str) -> None:
    """A path regex must be able to start with '/': every normalised path does."""
    body = pattern[1:] if pattern.startswith("^") else pattern
    if "|" in body or not body:
        return
    tokens = [t for _, t, _ in _top_level_tokens(body)]
    first = tokens[0]
    optional = len(tokens) > 1 and tokens[1] in ("*", "?", "{")
    if len(first) == 1 and (first.isalnum() or first in "-_~%") and not optional:
        fixed = "/" + body
        c.error(
            pointer,
            f"path regex {pattern!r} can never match: every path starts with '/'",
            f"write {fixed!r}" if not regex_problems(fixed) else "start the pattern with '/'",
        )


def _check_normalised(c: _Checker, pointer: str, kind: str, value: str) -> None:
    try:
        normal = normalise_path(value)
    except PathError as e:
        hint = "write the path as requests arrive after normalisation"
        with contextlib.suppress(PathError):
            hint = f"write {normalise_path(value.strip())!r}"
        c.error(pointer, f"{kind} {value!r} is not a valid normalised path: {e}", hint)
        return
    if normal != value:
        c.error(
            pointer,
            f"{kind} {value!r} is not normalised; requests are matched after normalisation, so it "
            "would never match as written",
            f"write {normal!r}",
        )


# ---- names and shadowing

_NAMED_LISTS = [
    ("classify", "classes"),
    ("rate_limits", None),
    ("cache", "rules"),
    ("headers", "request"),
    ("headers", "response"),
    ("cors", None),
]
# Lists where the first matching rule wins (later identical or narrower rules are dead).
_FIRST_MATCH_LISTS = [
    ("classify", "classes", "match"),
    ("classify", "priorities", "match"),
    ("auth", "rules", "match"),
    ("cache", "rules", "match"),
    ("cors", None, "match"),
]


def _list_at(data: dict[str, Any], section: str, key: str | None) -> tuple[str, Any]:
    if key is None:
        return f"/{section}", data.get(section)
    return f"/{section}/{key}", _get(data, section, key)


def _check_duplicate_names(c: _Checker, data: dict[str, Any]) -> None:
    for section, key in _NAMED_LISTS:
        base, items = _list_at(data, section, key)
        seen: dict[str, int] = {}
        for i, item in _dicts(items):
            name = item.get("name")
            if not isinstance(name, str):
                continue
            if name in seen:
                c.error(
                    f"{base}/{i}/name",
                    f"duplicate rule name {name!r} (first used at {c.line_of(f'{base}/{seen[name]}/name')})",
                    "rule names must be unique within a list",
                )
            else:
                seen[name] = i


def _rule_label(item: dict[str, Any], base: str, i: int) -> str:
    name = item.get("name") or item.get("priority")
    return repr(name) if isinstance(name, str) else f"{base}/{i}"


def _check_shadowed(c: _Checker, data: dict[str, Any]) -> None:
    for section, key, match_key in _FIRST_MATCH_LISTS:
        base, items = _list_at(data, section, key)
        earlier: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
        for i, item in _dicts(items):
            m = item.get(match_key)
            m = m if isinstance(m, dict) else ({} if m is None else None)
            if m is None:
                continue
            for j, other, om in earlier:
                if covers(om, m):
                    c.warning(
                        f"{base}/{i}",
                        f"rule {_rule_label(item, base, i)} can never match: the earlier rule "
                        f"{_rule_label(other, base, j)} ({c.line_of(f'{base}/{j}')}) matches every request "
                        "it does",
                        "remove it, or move it above the broader rule",
                    )
                    break
            earlier.append((i, item, m))


# ---- cache


def _public_matches(data: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Matches of requests that need no credentials; None when there is no auth at all."""
    auth = data.get("auth")
    if not isinstance(auth, dict):
        return None
    if auth.get("schemes") == []:
        return None
    public = [m for _, m in _dicts(auth.get("public"))]
    public += [
        r["match"]
        for _, r in _dicts(auth.get("rules"))
        if r.get("schemes") == [] and isinstance(r.get("match"), dict)
    ]
    return public


def _check_cache(c: _Checker, data: dict[str, Any]) -> None:
    public = _public_matches(data)
    for i, rule in _dicts(_get(data, "cache", "rules")):
        pointer = f"/cache/rules/{i}"
        mode = rule.get("mode", "fixed")
        if mode == "fixed" and "ttl" in rule and _seconds(rule.get("ttl")) == 0:
            c.warning(
                f"{pointer}/ttl",
                f"cache rule {_rule_label(rule, '/cache/rules', i)} has ttl 0: it never serves a cached response",
                "give a positive ttl such as 30s or 5m, or remove the rule (cache.never bypasses the cache)",
            )
        key = rule.get("key")
        if not isinstance(key, dict) or key.get("principal") is not False or public is None:
            continue
        match = rule.get("match")
        if not any(covers(p, match if isinstance(match, dict) else {}) for p in public):
            c.error(
                f"{pointer}/key/principal",
                "key.principal: false on a path that requires authentication would share one user's cached "
                "response with every other user",
                "remove `principal: false` (the key then includes a hash of the authenticated principal), or "
                "make the path public in auth.public",
            )


# ---- CORS


def _origin_problem(origin: str) -> str | None:
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return "an origin is scheme://host[:port], e.g. https://app.example.com"
    if parts.path or parts.query or parts.fragment or origin.endswith(("/", "?", "#")):
        return f"an origin has no path or trailing slash: write {parts.scheme}://{parts.netloc!s}"
    if parts.username or parts.password:
        return "an origin has no credentials"
    try:
        parts.port  # noqa: B018 - raises for a bad port
    except ValueError:
        return "the port is not a number"
    if parts.netloc != parts.netloc.lower():
        return f"origins are compared exactly and browsers send them in lower case: write {origin.lower()}"
    return None


def _check_cors(c: _Checker, data: dict[str, Any]) -> None:
    for i, rule in _dicts(data.get("cors")):
        pointer = f"/cors/{i}"
        origins = rule.get("allow_origins")
        origins = origins if isinstance(origins, list) else []
        if "*" in origins and rule.get("allow_credentials") is True:
            c.error(
                f"{pointer}/allow_origins/{origins.index('*')}",
                "allow_origins '*' with allow_credentials: true lets any site read credentialed responses",
                "list the exact origins, or set allow_credentials: false",
            )
        for j, origin in enumerate(origins):
            if isinstance(origin, str) and origin != "*" and (problem := _origin_problem(origin)):
                c.error(f"{pointer}/allow_origins/{j}", f"{origin!r} is not an origin", problem)


# ---- JWT and secrets


def _check_jwt(c: _Checker, data: dict[str, Any]) -> None:
    auth = data.get("auth")
    if not isinstance(auth, dict):
        return
    jwt = auth.get("jwt")
    schemes = _strings(auth.get("schemes")) if "schemes" in auth else ["bearer", "api_key"]
    for _, r in _dicts(auth.get("rules")):
        schemes += _strings(r.get("schemes"))
    if "bearer" in schemes and not isinstance(jwt, dict):
        c.error(
            "/auth/schemes" if "schemes" in auth else "/auth",
            "the bearer scheme is enabled but auth.jwt is not configured",
            "add auth.jwt (secret or jwks), or remove bearer from auth.schemes",
        )
    if not isinstance(jwt, dict):
        return
    algs = _strings(jwt.get("algorithms")) if "algorithms" in jwt else ["HS256"]
    hs = [a for a in algs if a in HS_ALGS]
    asym = [a for a in algs if a in ASYMMETRIC_ALGS]  # anything else is the schema's to report
    if hs and asym:
        c.error(
            "/auth/jwt/algorithms",
            f"JWT algorithms mix HMAC ({', '.join(hs)}) with asymmetric "
            f"({', '.join(asym)}): algorithm confusion (a public key used as an HMAC secret)",
            "use one family: HS* with a secret, or RS*/PS*/ES*/EdDSA with jwks_file/jwks_url",
        )
    if asym and not (jwt.get("jwks_file") or jwt.get("jwks_url")):
        c.error(
            "/auth/jwt/algorithms",
            f"asymmetric JWT algorithms ({', '.join(asym)}) need jwks_file or jwks_url",
            "add auth.jwt.jwks_file or auth.jwt.jwks_url",
        )
    if hs and not asym and jwt.get("secret") in (None, ""):
        c.error(
            "/auth/jwt",
            f"HMAC JWT algorithms ({', '.join(hs)}) need auth.jwt.secret",
            "secret: ${env:JWT_SECRET}",
        )


def _only_env_ref(value: str) -> bool:
    """The whole string is one `${env:NAME}` reference with no (or an empty) default."""
    m = ENV_REF.fullmatch(value)
    return m is not None and not m.group(2)


def _check_secrets(c: _Checker, data: dict[str, Any], base: str) -> None:
    hint = "secrets only from the environment: write ${env:NAME} and set NAME where the proxy runs"
    for path, label in ((("auth", "jwt", "secret"), "auth.jwt.secret"), (("admin", "token"), "admin.token")):
        value = _get(data, *path)
        if isinstance(value, str) and value and not _only_env_ref(value):
            m = ENV_REF.fullmatch(value)
            what = "has a literal default" if m else "is a literal string"
            c.error(base + "/" + "/".join(path), f"{label} {what}: secrets only from the environment", hint)
    url = _get(data, "store", "url")
    if isinstance(url, str):
        placeholder = ENV_REF.sub("ENVREF", url)
        try:
            password = urlsplit(placeholder).password
        except ValueError:
            password = None
        if password and "ENVREF" not in password:
            c.error(
                f"{base}/store/url",
                "store.url contains a literal password: secrets only from the environment",
                "url: ${env:REDIS_URL}, or redis://:${env:REDIS_PASSWORD}@host:6379/0",
            )


def _walk_strings(value: Any, pointer: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield pointer, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _walk_strings(v, f"{pointer}/{_esc(k)}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk_strings(v, f"{pointer}/{i}")


def _check_serving(c: _Checker, data: dict[str, Any], environ: Mapping[str, str]) -> None:
    missing: set[str] = set()
    secret_pointers = {"/auth/jwt/secret", "/admin/token", "/store/url"}
    for pointer, value in _walk_strings(data, ""):
        for m in ENV_REF.finditer(value):
            name = m.group(1)
            if m.group(2) is None and name not in environ:
                missing.add(name)
                # A secret never gets a default in the file (check_raw refuses one): only the environment.
                hint = (
                    f"export {name}=... where the edge runs (secrets come only from the environment)"
                    if pointer in secret_pointers
                    else f"export {name}=... before serving, or give a default: ${{env:{name}:-...}}"
                )
                c.error(pointer, f"environment variable {name} is not set (needed by ${{env:{name}}})", hint)
    jwt = _get(data, "auth", "jwt")
    secret = _get(jwt, "secret")
    algs = _strings(_get(jwt, "algorithms")) if isinstance(jwt, dict) and "algorithms" in jwt else ["HS256"]
    if not isinstance(secret, str) or not any(a in HS_ALGS for a in algs):
        return
    names = [m.group(1) for m in ENV_REF.finditer(secret)]
    if any(n in missing for n in names):
        return
    size = len(substitute_string(secret, environ).encode())
    if size < JWT_MIN_SECRET_BYTES:
        source = ", ".join(names) if names else "auth.jwt.secret"
        c.error(
            "/auth/jwt/secret",
            f"the JWT secret from {source} is {size} bytes; HMAC needs at least {JWT_MIN_SECRET_BYTES}",
            "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'",
        )


# ---- health, latency


def _seconds(value: Any) -> float | None:
    try:
        return parse_duration(value) if value is not None else None
    except (ValueError, TypeError):
        return None


def _check_health(c: _Checker, data: dict[str, Any]) -> None:
    health = data.get("health")
    top: dict[str, Any] = health if isinstance(health, dict) else {}
    probes: list[tuple[str, dict[str, Any]]] = [("/health", top)]
    regions = data.get("regions")
    if isinstance(regions, dict):
        for name, region in regions.items():
            own = region.get("health") if isinstance(region, dict) else None
            if isinstance(own, dict) and ("interval" in own or "timeout" in own):
                probes.append((f"/regions/{_esc(name)}/health", {**top, **own}))
    for pointer, probe in probes:
        interval = _seconds(probe.get("interval", 10))
        timeout = _seconds(probe.get("timeout", 5))
        if interval is not None and timeout is not None and timeout >= interval:
            c.warning(
                f"{pointer}/timeout",
                f"health timeout ({timeout:g}s) is not shorter than the interval ({interval:g}s): probes "
                "would overlap",
                "make the timeout shorter than the interval",
            )


def _check_latency(c: _Checker, data: dict[str, Any]) -> None:
    lt = _get(data, "routing", "latency_target")
    if not isinstance(lt, dict):
        return
    lo, hi = lt.get("min_ms", 50), lt.get("max_ms", 200)
    if isinstance(lo, int | float) and isinstance(hi, int | float) and lo > hi:
        c.error(
            "/routing/latency_target/min_ms",
            f"latency_target.min_ms ({lo}) is greater than max_ms ({hi})",
            "min_ms must be <= max_ms",
        )


# ---- countries

# ISO 3166-1 alpha-2, officially assigned codes (249).
_ISO_TABLE = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY
    BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK
    FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR
    IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK
    ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF
    TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
"""
ISO_COUNTRIES = frozenset(_ISO_TABLE.split())
# Codes geo sources send that are not countries: unknown (XX) and Cloudflare's Tor exit nodes (T1).
SPECIAL_COUNTRIES = {"XX": "unknown", "T1": "Tor (Cloudflare)"}
# Frequent mistakes: reserved codes, language codes, regions that are not countries.
_COUNTRY_MISTAKES = {
    "UK": ("GB", "the United Kingdom is GB in ISO 3166-1 (UK is only reserved)"),
    "EL": ("GR", "Greece is GR (EL is the EU's abbreviation)"),
    "EN": ("GB", "EN is a language; countries where English is spoken have their own codes, e.g. GB, US"),
    "JA": ("JP", "JA is the Japanese language; Japan is JP"),
    "DA": ("DK", "DA is the Danish language; Denmark is DK"),
    "SV": ("SE", "SV is El Salvador (and the Swedish language); Sweden is SE"),
    "CS": ("CZ", "CS is the Czech language (formerly Serbia and Montenegro); Czechia is CZ"),
    "ZH": ("CN", "ZH is the Chinese language; China is CN, Taiwan TW, Hong Kong HK"),
    "KO": ("KR", "KO is the Korean language; South Korea is KR"),
    "HE": ("IL", "HE is the Hebrew language; Israel is IL"),
    "EU": (None, "EU is not a country: list the member states (DE, FR, ...)"),
    "ON": ("CA", "ON is not a country (Ontario is a province of CA); geo headers carry countries"),
    "QC": ("CA", "QC is not a country (Quebec is a province of CA); geo headers carry countries"),
    "BC": ("CA", "BC is not a country (British Columbia is a province of CA); geo headers carry countries"),
}


def _user_assigned(code: str) -> bool:
    """ISO 3166-1 leaves these to private use (a custom geo header may send them)."""
    return code in ("AA", "ZZ") or (code[0] == "Q" and code[1] >= "M") or code[0] == "X"


def country_problem(code: str) -> tuple[str, str] | None:
    """(message, hint) when `code` is no ISO 3166-1 alpha-2 country a geo source can report."""
    if not isinstance(code, str) or len(code) != 2 or not code.isalnum():
        return None  # the schema reports the shape
    upper = code.upper()
    if upper in ISO_COUNTRIES or upper in SPECIAL_COUNTRIES or _user_assigned(upper):
        return None
    if upper in _COUNTRY_MISTAKES:
        fix, why = _COUNTRY_MISTAKES[upper]
        return (
            f"{code!r} is not an ISO 3166-1 alpha-2 country code: no client will ever match it",
            (f"did you mean {fix!r}? " if fix else "") + why,
        )
    return (
        f"{code!r} is not an ISO 3166-1 alpha-2 country code: no client will ever match it",
        "country codes: https://www.iso.org/obp/ui/#search/code/ (XX means unknown)",
    )


def _check_countries(c: _Checker, data: dict[str, Any]) -> None:
    places: list[tuple[str, Any, bool]] = []
    countries = _get(data, "routing", "countries")
    if isinstance(countries, dict):
        places += [(f"/routing/countries/{_esc(cc)}", cc, True) for cc in countries]
    places.append(("/geo/default_country", _get(data, "geo", "default_country"), False))
    for pointer, m in iter_matches(data):
        places += [(ptr, value, False) for ptr, value in _values(m, "country", pointer)]
    for pointer, code, is_key in places:
        if not isinstance(code, str) or (problem := country_problem(code)) is None:
            continue
        message, hint = problem
        mark = c.doc.key_mark_for(pointer) if is_key and hasattr(c.doc, "key_mark_for") else None
        c.out.append(Diagnostic("error", message, mark or c.doc.mark_for(pointer), pointer, hint))


# ---- rate limits that can never count


def _auth_schemes(data: dict[str, Any]) -> set[str] | None:
    """Every scheme any request may authenticate with; None when there is no auth section."""
    auth = data.get("auth")
    if not isinstance(auth, dict):
        return None
    schemes = set(_strings(auth.get("schemes")) if "schemes" in auth else ["bearer", "api_key"])
    for _, r in _dicts(auth.get("rules")):
        schemes |= set(_strings(r.get("schemes")))
    return schemes


def _check_rate_limits(c: _Checker, data: dict[str, Any]) -> None:
    public = _public_matches(data)
    schemes = _auth_schemes(data)
    for i, rule in _dicts(data.get("rate_limits")):
        pointer = f"/rate_limits/{i}"
        key = rule.get("key")
        label = _rule_label(rule, "/rate_limits", i)
        if key not in ("api_key", "principal"):
            if rule.get("per_key_override") is True:
                c.warning(
                    f"{pointer}/per_key_override",
                    f"rate limit {label}: per_key_override only applies to key: api_key",
                    "remove per_key_override, or count per API key with key: api_key",
                )
            continue
        if schemes is None or (key == "api_key" and "api_key" not in schemes) or not schemes:
            what = "API keys are not accepted" if schemes else "no request is authenticated"
            c.warning(
                f"{pointer}/key",
                f"rate limit {label} (key: {key}) can never count: {what} by this policy's auth",
                "count per client with key: client_ip, or enable the scheme in auth.schemes",
            )
            continue
        match = rule.get("match") if isinstance(rule.get("match"), dict) else {}
        if public and match and any(covers(p, match) for p in public):
            c.warning(
                f"{pointer}/match",
                f"rate limit {label} (key: {key}) can never count: its requests are public "
                "(auth.public), so they carry no authenticated identity",
                "use key: client_ip for public paths, or make the paths require authentication",
            )


def per_key_override_rules(data: dict[str, Any]) -> list[str]:
    """Names of the rate limits an API key's own `rate_limit` applies to (key: api_key, per_key_override)."""
    return [
        str(r.get("name"))
        for _, r in _dicts(data.get("rate_limits"))
        if r.get("key") == "api_key" and r.get("per_key_override") is True
    ]

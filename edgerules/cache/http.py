"""HTTP caching rules for a shared cache (RFC 9111, RFC 5861 stale extensions) as pure functions.

No I/O and no clock: every time is a float epoch second passed in by the caller. :mod:`edgerules.cache.response` puts
these rules on top of a Store.

Two modes per cache rule:

- ``fixed``: the operator's rule decides freshness (``ttl``) and the stale windows; the origin's freshness
  directives (``max-age``, ``s-maxage``, ``Expires``, ``no-cache``, ``must-revalidate``) are ignored. The
  origin's ``no-store``/``private``/``Set-Cookie`` still prevent storage unless the rule overrides them. A
  response to a request with credentials is stored, but the cache key carries a SHA-256 of the principal (see
  :func:`cache_key` and :func:`effective_principal`), so it is only ever replayed to the same principal.
- ``origin``: RFC 9111 freshness from the origin (``s-maxage`` > ``max-age`` > ``Expires - Date``), the rule's
  ``default_ttl`` when the origin says nothing (``None``: not stored); a response to an ``Authorization``
  request is stored only with ``public``, ``s-maxage`` or ``must-revalidate`` (RFC 9111 3.5).

HEAD requests are looked up under the GET key (the engine drops the body) and HEAD responses are never stored,
so a body-less HEAD answer can never replace a GET entry.
"""

from __future__ import annotations

import calendar
import functools
import hashlib
import json
import re
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from enum import StrEnum
from json.encoder import encode_basestring_ascii as _json_string
from typing import Literal
from urllib.parse import urljoin, urlsplit

from edgerules.engine.headers import HOP_BY_HOP as _HOP_BY_HOP
from edgerules.headerview import HeaderView

type HeaderInput = Mapping[str, str] | Iterable[tuple[str, str]]
type VaryValues = tuple[tuple[str, str | None], ...]

KEY_PREFIX = "cache:"
"""Every store key written by the response cache starts with this (``purge(all=True)`` purges it)."""

HOP_BY_HOP = _HOP_BY_HOP  # one definition for every path: edgerules/engine/headers.py
NEVER_CACHED_STATUSES = frozenset({206, 304})
# RFC 9110 15.1: statuses a cache may give heuristic freshness (without explicit freshness from the origin)
HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
ANY_FINAL_STATUS = frozenset(range(200, 600))
TARGETED_FIELD = "cdn-cache-control"  # RFC 9213
CACHE_TAG_FIELD = "cache-tag"
MAX_CACHE_TAG_BYTES = 16 * 1024  # Cloudflare's limit on the Cache-Tag field of one response
MAX_DELTA = 2**31  # RFC 9111 1.2.2: delta-seconds saturate at 2^31
MIN_REVALIDATION_KEEP = 60.0
PATH_TAG_DEPTH = 6  # deeper path prefixes share the tag of their 6-segment ancestor (over-purge, never under)

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ETAG = re.compile(r'(W/)?"([^"]*)"')
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_WS_AROUND_COMMA = re.compile(r"\s*,\s*")
_PROTECTED_ON_304 = frozenset({"content-length", "content-encoding", "content-range", "age"})


@dataclass(frozen=True, slots=True)
class CacheRule:
    name: str
    source: str  # "file:line" of the rule, for traces
    mode: Literal["fixed", "origin"] = "fixed"
    ttl: float | None = None  # fixed-mode TTL (seconds)
    default_ttl: float | None = None  # origin mode: TTL without explicit freshness (None = don't store)
    methods: frozenset[str] = frozenset({"GET", "HEAD"})
    statuses: frozenset[int] = frozenset({200})
    content_types: tuple[str, ...] = ()  # "application/json", "text/*"; empty = any
    max_body_size: int = 1_000_000
    key_headers: tuple[str, ...] = ()  # lower-cased request header names that become part of the key
    # False: the principal is left out of the key (only for responses identical for every caller; the policy's
    # explicit opt-out). True (default): the key carries SHA-256(principal), see effective_principal().
    key_principal: bool = True
    override_no_store: bool = False
    override_private: bool = False
    # Responses with Set-Cookie are stored only with store_set_cookie, and without the field unless
    # replay_set_cookie (which sends it with every hit: only for cookies meant for every client).
    store_set_cookie: bool = False
    replay_set_cookie: bool = False
    # RFC 9213 targeted fields obeyed instead of Cache-Control (and Expires), first present and valid wins
    targeted: tuple[str, ...] = (TARGETED_FIELD,)
    stale_while_revalidate: float = 0.0  # policy default; the origin's directive wins in origin mode
    stale_if_error: float = 0.0


class Freshness(StrEnum):
    FRESH = "fresh"
    STALE_WHILE_REVALIDATE = "stale-while-revalidate"  # serve stale now, revalidate in the background
    STALE_IF_ERROR = "stale-if-error"  # go to the origin; serve stale if it fails (5xx / unreachable)
    MUST_REVALIDATE = "must-revalidate"  # go to the origin (conditionally); never serve without validation
    EXPIRED = "expired"  # past every window: a miss (its validators may still make the fetch conditional)


# --------------------------------------------------------------------------------------------- headers


def _view(headers: HeaderInput) -> HeaderView:
    """The engine's header view (passed through as is), or one over a mapping or a list of pairs."""
    if isinstance(headers, HeaderView):
        return headers
    return HeaderView(headers.items() if isinstance(headers, Mapping) else headers)


def _connection_nominated(view: HeaderView) -> set[str]:
    return {t.strip().lower() for v in view.get_all("connection") for t in v.split(",") if t.strip()}


def _is_hop_by_hop(name: str, nominated: set[str]) -> bool:
    lname = name.lower()
    return lname in HOP_BY_HOP or lname in nominated


def storable_headers(headers: HeaderInput, *, drop: Iterable[str] = ()) -> tuple[tuple[str, str], ...]:
    """Headers as they may be stored and replayed: hop-by-hop fields (and ``drop``) removed."""
    pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
    nominated = _connection_nominated(HeaderView(pairs)) | {d.lower() for d in drop}
    return tuple((n, v) for n, v in pairs if not _is_hop_by_hop(n, nominated))


# --------------------------------------------------------------------------------------------- parsing


def parse_cache_control(value: str | Iterable[str] | None) -> dict[str, str | None]:
    """Parse Cache-Control into ``{directive: value}`` (names lower-cased, quoted values unquoted).

    Directives without a value map to None; garbage entries are skipped; a directive repeated with a
    different value maps to ``""`` (invalid, RFC 9111 4.2.1: such freshness is treated as stale).
    """
    if value is None:
        return {}
    text = value if isinstance(value, str) else ",".join(value)
    result: dict[str, str | None] = {}
    for part in _split_outside_quotes(text):
        name, eq, raw = part.partition("=")
        name = name.strip().lower()
        if not _TOKEN.match(name):
            continue
        parsed = _unquote(raw.strip()) if eq else None
        if name in result and result[name] != parsed:
            result[name] = ""
        else:
            result[name] = parsed
    return result


def _split_outside_quotes(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
        return re.sub(r"\\(.)", r"\1", raw[1:-1])
    if raw.startswith('"'):  # unterminated quote: invalid
        return ""
    return raw


def delta_seconds(value: str | None) -> int | None:
    """RFC 9111 1.2.2 delta-seconds (digits only, saturating at 2^31); None when invalid."""
    if value is None or not value.isascii() or not value.isdigit():
        return None
    return min(int(value), MAX_DELTA)


_MONTHS = {
    m: i
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1
    )
}
_DAY = r"(?:mon|tue|wed|thu|fri|sat|sun)"
_LONG_DAY = r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
_MONTH = r"(?P<mon>jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
_TIME = r"(?P<h>\d\d):(?P<m>\d\d):(?P<s>\d\d)"
# RFC 9110 5.6.7: IMF-fixdate, and the obsolete rfc850-date and asctime-date; nothing else. Names are matched
# without regard to case (recipients may be robust about case, not about structure).
_IMF_FIXDATE = re.compile(
    rf"{_DAY}, (?P<d>\d\d) {_MONTH} (?P<y>\d{{4}}) {_TIME} gmt", re.IGNORECASE | re.ASCII
)
_RFC850_DATE = re.compile(
    rf"{_LONG_DAY}, (?P<d>\d\d)-{_MONTH}-(?P<y>\d\d) {_TIME} gmt", re.IGNORECASE | re.ASCII
)
_ASCTIME_DATE = re.compile(
    rf"{_DAY} {_MONTH} (?P<d>[ \d]\d) {_TIME} (?P<y>\d{{4}})", re.IGNORECASE | re.ASCII
)


_SF_KEY = r"[a-z*][a-z0-9_\-.*]*"
_SF_BARE = (
    r'(?:-?\d{1,15}(?:\.\d{1,3})?|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"'
    r"|[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*|:[A-Za-z0-9+/=]*:|\?[01])"
)
_SF_MEMBER = re.compile(rf"(?P<key>{_SF_KEY})(?:=(?P<value>{_SF_BARE}))?(?:;\ *{_SF_KEY}(?:={_SF_BARE})?)*")
_SF_SEPARATOR = re.compile(r"[ \t]*,[ \t]*")
_SF_INTEGER = re.compile(r"-?\d{1,15}")
_INTEGER_DIRECTIVES = ("max-age", "s-maxage", "stale-while-revalidate", "stale-if-error")


@functools.lru_cache(maxsize=1024)
def parse_targeted_cache_control(value: str) -> dict[str, str | None] | None:
    """A targeted cache-control field (RFC 9213: CDN-Cache-Control and the like) as ``{directive: value}``, or
    None when it is not a valid Structured Field Dictionary (RFC 8941 4.2.2) or a freshness directive is not an
    integer: such a field is ignored and Cache-Control applies. Parameters are ignored, ``?0`` drops a key."""
    text, pos = value.strip(" "), 0
    out: dict[str, str | None] = {}
    if not text:
        return None
    while True:
        member = _SF_MEMBER.match(text, pos)
        if member is None:
            return None
        raw = member["value"]
        if member["key"] in _INTEGER_DIRECTIVES and (raw is None or not _SF_INTEGER.fullmatch(raw)):
            return None  # a freshness directive that is not an integer: the whole field is ignored
        if raw is None or raw == "?1":
            out[member["key"]] = None
        elif raw == "?0":
            out.pop(member["key"], None)
        elif raw.startswith('"'):
            out[member["key"]] = re.sub(r"\\(.)", r"\1", raw[1:-1])
        else:
            out[member["key"]] = raw
        pos = member.end()
        if pos == len(text):
            break
        separator = _SF_SEPARATOR.match(text, pos)
        if separator is None or separator.end() == len(text):
            return None
        pos = separator.end()
    return out


def edge_cache_control(rule: CacheRule, response_headers: HeaderInput) -> tuple[dict[str, str | None], bool]:
    """The cache directives this edge obeys: the first of the rule's targeted fields (RFC 9213) present with a
    valid value, else Cache-Control. The flag says a targeted field applies (then Expires is ignored too)."""
    resp = _view(response_headers)
    for name in rule.targeted:
        values = resp.get_all(name)
        if values:
            parsed = parse_targeted_cache_control(", ".join(values))
            if parsed is not None:
                return parsed, True
    return parse_cache_control(resp.get_all("cache-control")), False


@functools.lru_cache(maxsize=1024)
def parse_http_date(value: str | None, now: float | None = None) -> float | None:
    """Epoch seconds of an HTTP-date (RFC 9110 5.6.7), None when it is not one of the three allowed forms.

    A two-digit rfc850 year more than 50 years in the future means the most recent past year with those digits.
    Memoised: the same few Date values recur (``now`` only matters for two-digit years and is rarely passed).
    """
    if not value:
        return None
    text = value.strip(" \t")
    match = _IMF_FIXDATE.fullmatch(text) or _ASCTIME_DATE.fullmatch(text)
    year: int
    if match is not None:
        year = int(match["y"])
    else:
        match = _RFC850_DATE.fullmatch(text)
        if match is None:
            return None
        current = time_year(now)
        year = current - current % 100 + int(match["y"])
        if year > current + 50:
            year -= 100
    month, day = _MONTHS[match["mon"].lower()], int(match["d"].strip())
    hour, minute, second = int(match["h"]), int(match["m"]), int(match["s"])
    if not (1 <= day <= calendar.monthrange(year, month)[1] and hour < 24 and minute < 60 and second <= 60):
        return None
    try:
        return float(calendar.timegm((year, month, day, hour, minute, min(second, 59), 0, 0, 0)))
    except (OverflowError, ValueError):
        return None


def time_year(now: float | None = None) -> int:
    return time.gmtime(now).tm_year


def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def content_type_matches(content_type: str | None, patterns: Iterable[str]) -> bool:
    """``patterns`` are media types or ``type/*`` / ``*/*`` wildcards (case-insensitive)."""
    mt = media_type(content_type)
    kind = mt.split("/", 1)[0]
    for pattern in patterns:
        p = media_type(pattern)
        if p in ("*/*", "*") or p == mt or (p.endswith("/*") and p[:-2] == kind and "/" in mt):
            return True
    return False


# --------------------------------------------------------------------------------------------- entries


@dataclass(frozen=True, slots=True)
class CacheEntry:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float
    request_time: float
    response_time: float
    vary: VaryValues = ()  # the request's values for the response's Vary fields (None = absent)
    rule: str = ""
    url_path: str = ""
    # Derived once per entry (every hit needs them): the headers' view and RFC 9111 4.2.3's corrected
    # initial age, to which the age calculation only adds the time since the response arrived.
    view: HeaderView = field(init=False, repr=False, compare=False)
    initial_age: float = field(init=False, repr=False, compare=False)

    _MAGIC = b"ERC1"

    def __post_init__(self) -> None:
        view = HeaderView(self.headers)
        object.__setattr__(self, "view", view)
        object.__setattr__(self, "initial_age", _corrected_initial_age(self, view))

    def header(self, name: str) -> str | None:
        return self.view.joined(name)

    def to_bytes(self) -> bytes:
        """``ERC1`` + 4-byte big-endian metadata length + JSON metadata + raw body (no base64 overhead)."""
        meta = {
            "s": self.status,
            "h": [list(p) for p in self.headers],
            "t": [self.stored_at, self.request_time, self.response_time],
            "v": [list(p) for p in self.vary],
            "r": self.rule,
            "p": self.url_path,
        }
        blob = json.dumps(meta, separators=(",", ":")).encode()
        return self._MAGIC + struct.pack(">I", len(blob)) + blob + self.body

    @classmethod
    def from_bytes(cls, data: bytes) -> CacheEntry:
        """Inverse of :meth:`to_bytes`; raises ValueError on anything malformed."""
        if data[:4] != cls._MAGIC or len(data) < 8:
            raise ValueError("not a cache entry")
        (size,) = struct.unpack(">I", data[4:8])
        if 8 + size > len(data):
            raise ValueError("truncated cache entry")
        try:
            meta = json.loads(data[8 : 8 + size])
            stored_at, request_time, response_time = (float(t) for t in meta["t"])
            return cls(
                status=int(meta["s"]),
                headers=tuple((str(n), str(v)) for n, v in meta["h"]),
                body=bytes(data[8 + size :]),
                stored_at=stored_at,
                request_time=request_time,
                response_time=response_time,
                vary=tuple((str(n), None if v is None else str(v)) for n, v in meta["v"]),
                rule=str(meta["r"]),
                url_path=str(meta["p"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed cache entry: {exc}") from exc


@dataclass(frozen=True, slots=True)
class VariantIndex:
    """Stored under the primary key when a response has Vary: the field names that select a variant."""

    names: tuple[str, ...]
    expires_at: float

    _MAGIC = b"ERV1"

    def to_bytes(self) -> bytes:
        return self._MAGIC + json.dumps([list(self.names), self.expires_at]).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> VariantIndex:
        if data[:4] != cls._MAGIC:
            raise ValueError("not a variant index")
        try:
            names, expires_at = json.loads(data[4:])
            return cls(tuple(str(n) for n in names), float(expires_at))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed variant index: {exc}") from exc


# Decoded small records, keyed by their exact bytes: a hit reads the record from the store every time (so a
# purge or a newer version anywhere is seen at once) but decodes each stored version once. Bounded: at most
# DECODED_MEMO_SIZE records of at most DECODED_MEMO_MAX_BYTES each are kept.
DECODED_MEMO_SIZE = 256
DECODED_MEMO_MAX_BYTES = 16 * 1024
_decoded: dict[bytes, CacheEntry | VariantIndex] = {}


def decode_record(data: bytes) -> CacheEntry | VariantIndex:
    """Decode whatever the response cache stored under a key; ValueError when it is neither."""
    record = _decoded.get(data)
    if record is not None:
        return record
    decode = VariantIndex.from_bytes if data[:4] == VariantIndex._MAGIC else CacheEntry.from_bytes
    record = decode(data)
    if len(data) <= DECODED_MEMO_MAX_BYTES:
        if len(_decoded) >= DECODED_MEMO_SIZE:
            del _decoded[next(iter(_decoded))]  # the oldest decoded
        _decoded[bytes(data)] = record
    return record


# --------------------------------------------------------------------------------------------- storability


def storable(
    rule: CacheRule,
    method: str,
    request_headers: HeaderInput,
    status: int,
    response_headers: HeaderInput,
    body_size: int,
) -> tuple[bool, str]:
    """May this response be stored under ``rule``? Returns ``(ok, reason)``; reason is a short slug."""
    method = method.upper()
    req, resp = _view(request_headers), _view(response_headers)
    if method not in rule.methods:
        return False, "method-not-in-rule"
    if method == "HEAD":
        return False, "head-not-stored"
    if method != "GET":
        return False, "unsafe-method"
    if status < 200 or status in NEVER_CACHED_STATUSES:
        return False, "status-never-cached"
    if status not in rule.statuses:
        return False, "status-not-in-rule"
    if body_size > rule.max_body_size:
        return False, "too-large"
    req_cc = parse_cache_control(req.get_all("cache-control"))
    cc, targeted = edge_cache_control(rule, resp)
    if "no-store" in req_cc:
        return False, "request-no-store"
    if "no-store" in cc and not rule.override_no_store:
        return False, "no-store"
    if "private" in cc and not rule.override_private:
        return False, "private"
    if "*" in vary_names(resp):
        return False, "vary-star"
    if "set-cookie" in resp and not rule.store_set_cookie:
        return False, "set-cookie"
    ctype = resp.joined("content-type")
    if media_type(ctype).startswith("audio/"):
        return False, "audio"
    if rule.content_types and not content_type_matches(ctype, rule.content_types):
        return False, "content-type"
    if rule.mode == "fixed":
        if not rule.ttl or rule.ttl <= 0:
            return False, "no-ttl"
        return True, "stored"
    if "authorization" in req and not ({"public", "s-maxage", "must-revalidate"} & cc.keys()):
        return False, "authorization"
    has_validator = "etag" in resp or "last-modified" in resp
    if "no-cache" in cc and has_validator:
        return True, "stored-revalidate"
    if not _explicit_freshness(cc, targeted, resp):
        if rule.default_ttl is None:
            return False, "no-explicit-freshness"
        if status not in HEURISTICALLY_CACHEABLE:
            return False, "not-heuristically-cacheable"  # RFC 9111 4.2.2: explicit freshness needed
    return True, "stored"


def has_explicit_freshness(rule: CacheRule, response_headers: HeaderInput) -> bool:
    resp = _view(response_headers)
    cc, targeted = edge_cache_control(rule, resp)
    return _explicit_freshness(cc, targeted, resp)


def _explicit_freshness(cc: Mapping[str, str | None], targeted: bool, resp: HeaderView) -> bool:
    return "s-maxage" in cc or "max-age" in cc or (not targeted and "expires" in resp)


# --------------------------------------------------------------------------------------------- freshness


def freshness_lifetime(rule: CacheRule, response_headers: HeaderInput, now: float) -> float:
    """Seconds the response is fresh for; ``now`` stands in for a missing Date (RFC 9111 4.2.1)."""
    if rule.mode == "fixed":
        return max(float(rule.ttl or 0.0), 0.0)
    resp = _view(response_headers)
    cc, targeted = edge_cache_control(rule, resp)
    for directive in ("s-maxage", "max-age"):
        if directive in cc:
            return float(delta_seconds(cc[directive]) or 0)
    expires_values = () if targeted else resp.get_all("expires")
    if expires_values:
        expires = parse_http_date(expires_values[0]) if len(expires_values) == 1 else None
        if expires is None:
            return 0.0  # invalid Expires (e.g. "0"): already expired
        date = parse_http_date(resp.joined("date"))
        return max(expires - (date if date is not None else now), 0.0)
    return max(float(rule.default_ttl or 0.0), 0.0)


def current_age(entry: CacheEntry, now: float) -> float:
    """RFC 9111 4.2.3 age calculation."""
    return entry.initial_age + max(0.0, now - entry.response_time)


def _corrected_initial_age(entry: CacheEntry, view: HeaderView) -> float:
    age_value = 0
    for raw in view.get_all("age"):  # RFC 9111 5.1: a list (invalid, but seen) counts by its first value
        parsed = delta_seconds(raw.split(",", 1)[0].strip())
        if parsed is not None:
            age_value = parsed
            break
    date_value = parse_http_date(view.joined("date"))
    if date_value is None:
        date_value = entry.response_time
    apparent_age = max(0.0, entry.response_time - date_value)
    response_delay = max(0.0, entry.response_time - entry.request_time)
    return max(apparent_age, age_value + response_delay)


def age_header(entry: CacheEntry, now: float) -> str:
    return str(min(int(current_age(entry, now)), MAX_DELTA))


def replay_headers(entry: CacheEntry, now: float) -> list[tuple[str, str]]:
    """Stored headers as sent on a hit: the stored ``Age`` replaced by the current one."""
    return [(n, v) for n, v in entry.headers if n.lower() != "age"] + [("Age", age_header(entry, now))]


def stale_windows(rule: CacheRule, entry: CacheEntry) -> tuple[float, float]:
    """``(stale_while_revalidate, stale_if_error)`` seconds allowed past freshness for this entry.

    Fixed mode: the rule's windows. Origin mode: the origin's directives win over the rule's defaults;
    ``must-revalidate``/``proxy-revalidate`` forbid any stale use, and ``s-maxage`` (which implies
    proxy-revalidate, RFC 9111 5.2.2.10) leaves only the stale windows the origin granted explicitly.
    """
    if rule.mode == "fixed":
        return rule.stale_while_revalidate, rule.stale_if_error
    cc, _ = edge_cache_control(rule, entry.view)
    if "must-revalidate" in cc or "proxy-revalidate" in cc or "no-cache" in cc:
        return 0.0, 0.0  # no stale use at all, not even when the origin is unreachable (RFC 9111 4.2.4)
    implied = "s-maxage" in cc
    windows = []
    for directive, default in (
        ("stale-while-revalidate", rule.stale_while_revalidate),
        ("stale-if-error", rule.stale_if_error),
    ):
        if directive in cc:
            windows.append(float(delta_seconds(cc[directive]) or 0))
        else:
            windows.append(0.0 if implied else default)
    return windows[0], windows[1]


def classify(rule: CacheRule, entry: CacheEntry, now: float, request_headers: HeaderInput = ()) -> Freshness:
    """Where the entry stands at ``now``.

    In origin mode the response's ``no-cache`` and the request's ``no-cache``, ``Pragma: no-cache``,
    ``max-age`` and ``min-fresh`` (RFC 9111 5.2.1) force revalidation; fixed mode ignores them.
    """
    age = current_age(entry, now)
    lifetime = freshness_lifetime(rule, entry.view, entry.response_time)
    if rule.mode == "origin":
        cc, _ = edge_cache_control(rule, entry.view)
        if "no-cache" in cc:
            return Freshness.MUST_REVALIDATE
        if _request_forces_revalidation(_view(request_headers), age, lifetime):
            return Freshness.MUST_REVALIDATE
    if age < lifetime:
        return Freshness.FRESH
    staleness = age - lifetime
    swr, sie = stale_windows(rule, entry)
    if staleness < swr:
        return Freshness.STALE_WHILE_REVALIDATE
    if staleness < sie:
        return Freshness.STALE_IF_ERROR
    if rule.mode == "origin" and swr == 0 and sie == 0 and _has_validator(entry):
        return Freshness.MUST_REVALIDATE
    return Freshness.EXPIRED


def _request_forces_revalidation(req: HeaderView, age: float, lifetime: float) -> bool:
    cc = parse_cache_control(req.get_all("cache-control"))
    if "no-cache" in cc:
        return True
    if not req.get_all("cache-control") and "no-cache" in (req.joined("pragma") or "").lower():
        return True
    if "max-age" in cc:
        max_age = delta_seconds(cc["max-age"])
        if max_age is not None and age > max_age:
            return True
    if "min-fresh" in cc:
        min_fresh = delta_seconds(cc["min-fresh"])
        if min_fresh is not None and lifetime - age < min_fresh:
            return True
    return False


def stale_if_error_ok(rule: CacheRule, entry: CacheEntry, now: float) -> bool:
    """May this (stale) entry be served because the origin failed (5xx, timeout, unreachable)?"""
    lifetime = freshness_lifetime(rule, entry.view, entry.response_time)
    staleness = current_age(entry, now) - lifetime
    swr, sie = stale_windows(rule, entry)
    return staleness < max(swr, sie)


def storage_ttl(rule: CacheRule, entry: CacheEntry) -> float:
    """How long the store keeps the entry: remaining freshness plus the longest window it can still be
    used in (stale windows, or - with validators - as long again as it was fresh, at least 60 s, so it can
    be revalidated with a 304). ``<= 0`` means not worth storing."""
    lifetime = freshness_lifetime(rule, entry.view, entry.response_time)
    remaining = lifetime - current_age(entry, entry.response_time)
    swr, sie = stale_windows(rule, entry)
    keep = max(swr, sie)
    if _has_validator(entry):
        keep = max(keep, lifetime, MIN_REVALIDATION_KEEP)
    return max(remaining, 0.0) + keep


def _has_validator(entry: CacheEntry) -> bool:
    view = entry.view
    return "etag" in view or "last-modified" in view


# --------------------------------------------------------------------------------------------- vary


def vary_names(response_headers: HeaderInput) -> tuple[str, ...]:
    """The response's Vary field names, lower-cased, de-duplicated and sorted (``*`` kept)."""
    names = {t.strip().lower() for v in _view(response_headers).get_all("vary") for t in v.split(",")}
    return tuple(sorted(n for n in names if n))


def _normalise_field_value(values: list[str]) -> str | None:
    if not values:
        return None
    return _WS_AROUND_COMMA.sub(",", ",".join(v.strip() for v in values)).strip()


def vary_values(names: Iterable[str], request_headers: HeaderInput) -> VaryValues:
    req = _view(request_headers)
    return tuple((n, _normalise_field_value(req.get_all(n))) for n in sorted({n.lower() for n in names}))


def vary_matches(entry: CacheEntry, request_headers: HeaderInput) -> bool:
    """RFC 9111 4.1: the request's (normalised) values of every Vary field equal those stored."""
    req = _view(request_headers)
    return all(_normalise_field_value(req.get_all(n)) == v for n, v in entry.vary)


def variant_key(primary_key: str, vary: VaryValues) -> str:
    digest = hashlib.sha256(json.dumps(vary, separators=(",", ":")).encode()).hexdigest()
    return f"{primary_key}:v:{digest}"


# --------------------------------------------------------------------------------------------- conditionals


def _etags(value: str) -> list[tuple[bool, str]]:
    return [(bool(m.group(1)), m.group(2)) for m in _ETAG.finditer(value)]


def evaluate_conditional(request_headers: HeaderInput, entry: CacheEntry) -> bool:
    """True when the client's conditional GET/HEAD is satisfied by the entry: answer 304 from the cache.

    If-None-Match (weak comparison, ``*``, lists) takes precedence; otherwise If-Modified-Since against
    Last-Modified, falling back to Date and then the receive time (RFC 9111 4.3.2). Only 2xx entries.
    """
    if not 200 <= entry.status < 300:
        return False
    req, stored = _view(request_headers), entry.view
    inm = req.joined("if-none-match")
    if inm is not None:
        if inm.strip() == "*":
            return True
        stored_etag = _etags(stored.joined("etag") or "")
        if not stored_etag:
            return False
        opaque = stored_etag[0][1]
        return any(tag == opaque for _weak, tag in _etags(inm))
    ims = parse_http_date(req.joined("if-modified-since"))
    if ims is None:
        return False
    last_modified = parse_http_date(stored.joined("last-modified")) or parse_http_date(stored.joined("date"))
    return (last_modified if last_modified is not None else entry.response_time) <= ims


_NOT_MODIFIED_FIELDS = (
    "cache-control",
    "content-location",
    "date",
    "etag",
    "expires",
    "vary",
    "last-modified",
)


def not_modified_headers(entry: CacheEntry, now: float) -> list[tuple[str, str]]:
    """Headers for a 304 answered from the cache (RFC 9110 15.4.5), with the current Age."""
    return [(n, v) for n, v in entry.headers if n.lower() in _NOT_MODIFIED_FIELDS] + [
        ("Age", age_header(entry, now))
    ]


_BYTE_RANGE = re.compile(r"(\d{1,18})?-(\d{1,18})?")


def byte_range(request_headers: HeaderInput, entry: CacheEntry) -> tuple[int, int] | Literal[False] | None:
    """The one byte range a GET asks of a stored complete 200 (RFC 9110 14.2): ``(first, last)`` inclusive,
    ``False`` when it cannot be satisfied (answer 416), None when the whole response is the answer: no Range,
    an ``If-Range`` that does not match, a unit other than bytes, several ranges, or a malformed field (a cache
    may always ignore Range)."""
    req = _view(request_headers)
    values = req.get_all("range")
    if len(values) != 1 or entry.status != 200:
        return None
    if (if_range := req.joined("if-range")) is not None and not _if_range_matches(if_range.strip(), entry):
        return None
    unit, eq, spec = values[0].partition("=")
    if not eq or unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = _BYTE_RANGE.fullmatch(spec.strip())
    if match is None or (match[1] is None and match[2] is None):
        return None
    size = len(entry.body)
    if match[1] is None:  # suffix: the last N bytes
        suffix = int(match[2])
        if suffix == 0 or size == 0:
            return False
        return max(size - suffix, 0), size - 1
    first = int(match[1])
    if match[2] is not None and int(match[2]) < first:
        return None  # invalid range-spec: ignored
    if first >= size:
        return False
    last = size - 1 if match[2] is None else min(int(match[2]), size - 1)
    return first, last


def _if_range_matches(value: str, entry: CacheEntry) -> bool:
    """If-Range: a strong entity-tag equal to the stored one, or exactly the stored Last-Modified."""
    if value.startswith(('"', "W/")):
        tags = _etags(value)
        stored = _etags(entry.view.joined("etag") or "")
        return bool(tags and stored) and not tags[0][0] and not stored[0][0] and tags[0][1] == stored[0][1]
    date = parse_http_date(value)
    return date is not None and date == parse_http_date(entry.view.joined("last-modified"))


def partial_answer(
    entry: CacheEntry, headers: list[tuple[str, str]], request_headers: HeaderInput
) -> tuple[int, list[tuple[str, str]], bytes] | None:
    """A 206 or 416 answered from a stored 200 for a Range request; None to answer the whole response."""
    wanted = byte_range(request_headers, entry)
    if wanted is None:
        return None
    size = len(entry.body)
    kept = [(n, v) for n, v in headers if n.lower() not in ("content-length", "content-range")]
    if wanted is False:
        return 416, [*kept, ("Content-Range", f"bytes */{size}")], b""
    first, last = wanted
    return 206, [*kept, ("Content-Range", f"bytes {first}-{last}/{size}")], entry.body[first : last + 1]


def revalidation_headers(entry: CacheEntry) -> dict[str, str]:
    """Validators to send to the origin so it can answer 304 (RFC 9111 4.3.1)."""
    stored = entry.view
    out: dict[str, str] = {}
    if (etag := stored.joined("etag")) is not None:
        out["If-None-Match"] = etag
    if (last_modified := stored.joined("last-modified")) is not None:
        out["If-Modified-Since"] = last_modified
    return out


def merge_304(
    entry: CacheEntry, response_headers_304: HeaderInput, *, request_time: float, response_time: float
) -> CacheEntry | None:
    """Freshen a stored entry from a 304 (RFC 9111 4.3.4 and 3.2).

    Returns None when the 304's validators do not select this entry (the caller must refetch without
    conditions). Header fields in the 304 replace the stored ones, except hop-by-hop fields and those the
    stored body depends on (Content-Length/-Encoding/-Range); the age clock restarts at the 304.
    """
    new = _view(response_headers_304)
    stored = entry.view
    new_etag, old_etag = _etags(new.joined("etag") or ""), _etags(stored.joined("etag") or "")
    if new_etag:
        if not old_etag or new_etag[0][1] != old_etag[0][1]:
            return None
    elif (new_lm := new.joined("last-modified")) is not None:
        old_lm = stored.joined("last-modified")
        if old_lm is not None and parse_http_date(old_lm) != parse_http_date(new_lm):
            return None
    updates = [
        (n, v)
        for n, v in storable_headers(list(_pairs(response_headers_304)))
        if n.lower() not in _PROTECTED_ON_304
    ]
    replaced = {n.lower() for n, _ in updates} | {"age"}
    headers = tuple((n, v) for n, v in entry.headers if n.lower() not in replaced) + tuple(updates)
    if (age := new.joined("age")) is not None:
        headers += (("Age", age),)
    return replace(entry, headers=headers, request_time=request_time, response_time=response_time)


def _pairs(headers: HeaderInput) -> Iterable[tuple[str, str]]:
    return headers.items() if isinstance(headers, Mapping) else headers


# --------------------------------------------------------------------------------------------- invalidation

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def invalidates(method: str, status: int) -> bool:
    """RFC 9111 4.4: an unsafe method with a non-error (2xx/3xx) response invalidates the target URI."""
    return method.upper() not in SAFE_METHODS and 200 <= status < 400


def invalidation_targets(scheme: str, host: str, path: str, response_headers: HeaderInput) -> list[str]:
    """Paths of same-origin ``Location``/``Content-Location`` targets that the response also invalidates."""
    resp = _view(response_headers)
    base = f"{scheme.lower()}://{host.lower()}{path}"
    out: list[str] = []
    for field_name in ("location", "content-location"):
        value = resp.joined(field_name)
        if not value:
            continue
        target = urlsplit(urljoin(base, value.strip()))
        if target.scheme == scheme.lower() and target.netloc.lower() == host.lower() and target.path:
            out.append(target.path)
    return out


# --------------------------------------------------------------------------------------------- keys


def normalise_percent_encoding(text: str) -> str:
    """Decode percent-escapes of unreserved characters, upper-case the rest (RFC 3986 6.2.2)."""

    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else f"%{match.group(1).upper()}"

    return _PCT.sub(fix, text)


def normalise_query(query: str) -> str:
    """Parameters sorted by name (stable: repeated names keep their order), percent-encoding normalised.

    ``+`` is left as is: whether it means a space is the origin's business, so ``+`` and ``%20`` stay
    different keys (a miss, never a wrong hit).
    """
    params = [normalise_percent_encoding(p) for p in query.lstrip("?").split("&") if p]
    return "&".join(sorted(params, key=lambda p: p.partition("=")[0]))


def principal_hash(principal: str) -> str:
    return hashlib.sha256(principal.encode("utf-8", "surrogatepass")).hexdigest()


def effective_principal(principal: str | None, request_headers: HeaderInput) -> str | None:
    """The principal a cached response belongs to.

    The authenticated principal when there is one; otherwise, when the request still carries credentials
    (``Authorization``, ``API-Key``/``X-API-Key``) their full value, so a credentialed request is never served
    a response cached for someone else. :func:`cache_key` hashes it with SHA-256. Cookies are not treated as
    credentials (browsers send analytics cookies everywhere): origins mark per-user responses with
    ``private``, ``Set-Cookie`` or ``Vary: Cookie``, which are honoured.
    """
    if principal is not None:
        return principal
    req = _view(request_headers)
    credentials = [(n, req.joined(n)) for n in ("authorization", "api-key", "x-api-key") if n in req]
    if not credentials:
        return None
    return "credentials:" + json.dumps(credentials, separators=(",", ":"))


def _normalise_host(scheme: str, host: str) -> str:
    host = host.strip().lower().rstrip(".")
    default = {"http": ":80", "https": ":443"}.get(scheme)
    if default and host.endswith(default):
        host = host[: -len(default)]
    return host


def cache_key(
    method: str,
    scheme: str,
    host: str,
    path: str,
    query: str,
    principal: str | None,
    key_headers: Mapping[str, str | None],
) -> str:
    """``cache:{sha256}`` over method (HEAD shares GET's key), scheme, host, path, normalised query, the
    principal's SHA-256 (``anonymous`` marker when None) and the named request headers' values."""
    scheme = scheme.lower()
    method = method.upper()
    headers = sorted(
        (n.lower(), None if v is None else _WS_AROUND_COMMA.sub(",", v.strip()))
        for n, v in key_headers.items()
    )
    # The text json.dumps({"h": headers, "m": ..., "p": ..., "u": [...]}, separators=(",", ":"),
    # sort_keys=True) gives, written out (json.dumps builds an encoder per call: most of this function's time).
    q = _json_string
    pairs = ",".join([f"[{q(n)},{'null' if v is None else q(v)}]" for n, v in headers])
    owner = "anonymous" if principal is None else "sha256:" + principal_hash(principal)
    url = (scheme, _normalise_host(scheme, host), normalise_percent_encoding(path), normalise_query(query))
    text = (
        f'{{"h":[{pairs}],"m":{q("GET" if method == "HEAD" else method)},"p":{q(owner)},'
        f'"u":[{",".join([q(part) for part in url])}]}}'
    )
    return KEY_PREFIX + hashlib.sha256(text.encode()).hexdigest()


_CACHE_KEY = re.compile(re.escape(KEY_PREFIX) + "[0-9a-f]{64}")


def is_cache_key(key: object) -> bool:
    """True for a key `cache_key` makes (what an operator may purge by key), nothing else in the store."""
    return isinstance(key, str) and _CACHE_KEY.fullmatch(key) is not None


def key_header_values(names: Iterable[str], request_headers: HeaderInput) -> dict[str, str | None]:
    """The values of a rule's ``key_headers`` in a request (None when absent), for :func:`cache_key`."""
    req = _view(request_headers)
    return {n.lower(): req.joined(n) for n in names}


def cache_tags(response_headers: HeaderInput) -> tuple[str, ...]:
    """Store tags for the origin's ``Cache-Tag`` labels (comma-separated, case-insensitive, the field read up to
    16 KB as Cloudflare does), hashed like the path tags."""
    text = ",".join(_view(response_headers).get_all(CACHE_TAG_FIELD))[:MAX_CACHE_TAG_BYTES]
    labels = dict.fromkeys(t.strip().lower() for t in text.split(","))
    return tuple(label_tag(label) for label in labels if label)


def label_tag(label: str) -> str:
    """The store tag purging every entry an origin labelled ``label`` with ``Cache-Tag``."""
    return "cache-label:" + _path_digest(label.strip().lower())


def _path_digest(path: str) -> str:
    return hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _segment_prefixes(path: str) -> list[str]:
    segments = [s for s in normalise_percent_encoding(path).split("/") if s]
    return ["/"] + ["/" + "/".join(segments[:i]) for i in range(1, min(len(segments), PATH_TAG_DEPTH) + 1)]


def path_tags(path: str) -> tuple[str, ...]:
    """Store tags of an entry: one per path-segment prefix (up to :data:`PATH_TAG_DEPTH`) plus the exact
    path. Tags are hashed so no store ever sees raw paths in tag names."""
    tags = [prefix_tag(p) for p in _segment_prefixes(path)]
    return (*dict.fromkeys(tags), url_tag(path))


def prefix_tag(path_prefix: str) -> str:
    """The tag that purges every entry under ``path_prefix`` (segment-wise: ``/a/b`` covers ``/a/b/c``
    but not ``/a/bc``); prefixes deeper than :data:`PATH_TAG_DEPTH` map to their ancestor (over-purge)."""
    return "cache-prefix:" + _path_digest(_segment_prefixes(path_prefix)[-1])


def url_tag(path: str) -> str:
    """The tag of one path (every query, principal and variant), for invalidation after unsafe methods."""
    return "cache-url:" + _path_digest(normalise_percent_encoding(path))

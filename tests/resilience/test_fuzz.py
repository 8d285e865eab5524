"""Property-based fuzzing (Hypothesis, derandomized for CI): the validator and the engine never crash.

- Arbitrary YAML text and arbitrary mutations of the shipped policy through `edgerules validate` (in-process,
  output captured) and `edgerules.policy.load.validate_paths`: exit 0 or 1, never 3, never a traceback.
- Arbitrary requests through `decide_request` on the shipped policy with a memory store: no exception, no
  status >= 500, and never a Forward for a request an independent oracle (below) says must be refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import json
import re
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgerules.auth.apikeys import ApiKeyStore
from edgerules.engine.core import decide_request
from edgerules.engine.health import HealthRegistry
from edgerules.engine.state import EngineState
from edgerules.engine.values import Answer, EdgeRequest, Forward, HeaderView
from edgerules.policy.load import validate_paths
from edgerules.policy.loader import load_yaml_file
from edgerules.stores.memory import MemoryStore
from edgerules.tools.cli import main as cli_main
from tests.engine_support import SEED_POLICY, seed_policy, token

pytestmark = pytest.mark.resilience

FUZZ = settings(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ------------------------------------------------------------------------------------------ the validator


def run_validate(path: Path, fmt: str = "text") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli_main(["validate", str(path), "--format", fmt], out=out)
    return code, out.getvalue(), err.getvalue()


def assert_validates_cleanly(path: Path, fmt: str = "text") -> int:
    code, out, err = run_validate(path, fmt)
    assert code in (0, 1), (code, out, err)
    assert "Traceback" not in out + err and "internal error" not in err, err
    if fmt == "json":
        doc = json.loads(out)
        assert doc["ok"] is (code == 0)
    diagnostics = validate_paths([path])  # the library entry point: returns diagnostics, never raises
    assert (code == 0) == (not any(d.severity == "error" for d in diagnostics))
    return code


YAML_TOKENS = [
    "a",
    "version",
    "regions",
    "1",
    "-1",
    "0x1F",
    "1e9",
    ".inf",
    "NO",
    "yes",
    "~",
    "null",
    ":",
    ": ",
    "- ",
    "? ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a ",
    "*a",
    "!!str ",
    "!!python/object:os.system ",
    "!custom ",
    "<<: ",
    "|",
    ">",
    "'",
    '"',
    "#",
    "%YAML 1.2",
    "---",
    "...",
    "\n",
    "\n  ",
    "\t",
    " ",
    "${env:JWT_SECRET}",
    "${env:",
    "\x00",
    "\ufeff",
    "\u2028",
    "é",
]

yaml_texts = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(YAML_TOKENS), max_size=60).map("".join),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)


@settings(FUZZ, max_examples=150)
@given(text=yaml_texts, fmt=st.sampled_from(["text", "json", "github"]))
def test_arbitrary_yaml_text_never_crashes_validate(workdir: Path, text: str, fmt: str) -> None:
    path = workdir / "arbitrary.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    assert_validates_cleanly(path, fmt)


SEED_DATA: Any = load_yaml_file(SEED_POLICY).data


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


def _keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _keys(value)
    elif isinstance(node, list):
        for value in node:
            yield from _keys(value)


SEED_PATHS = [p for p in _paths(SEED_DATA) if p]
SEED_KEYS = sorted(set(_keys(SEED_DATA)))
INTERESTING = [
    "${env:JWT_SECRET}",
    "${env:NOT_SET}",
    "${env:X:-default}",
    "${env:",
    "1h",
    "-5s",
    "0s",
    "10MiB",
    "1e400",
    "us-east-1",
    "/api",
    "(a+)+$",
    "[",
    "HS256",
    "none",
    "",
    "*",
    "0.0.0.0/0",
    "300.1.1.1/8",
    "http://127.0.0.1:1",
    "ftp://x",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16)
    | st.sampled_from(INTERESTING),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(SEED_KEYS) | st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

mutations = st.lists(
    st.tuples(
        st.sampled_from(["replace", "drop", "add"]),
        st.sampled_from(SEED_PATHS),
        json_values,
        st.sampled_from(SEED_KEYS) | st.text(max_size=10),
    ),
    min_size=1,
    max_size=3,
)


def mutate(data: Any, ops: list[tuple[str, tuple[Any, ...], Any, str]]) -> Any:
    doc = copy.deepcopy(data)
    for action, path, value, new_key in ops:
        parent: Any = doc
        try:
            for step in path[:-1]:
                parent = parent[step]
            last = path[-1]
            target = parent[last]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed it
        if action == "replace":
            parent[last] = value
        elif action == "drop":
            del parent[last]
        elif isinstance(target, dict):
            target[new_key] = value
        elif isinstance(target, list):
            target.append(value)
        else:
            parent[last] = [target, value]
    return doc


@settings(FUZZ, max_examples=60)
@given(ops=mutations)
def test_mutated_policies_never_crash_validate(workdir: Path, ops) -> None:
    path = workdir / "mutated.yaml"
    path.write_text(json.dumps(mutate(SEED_DATA, ops), indent=1))
    assert_validates_cleanly(path, "json")


def test_the_unmutated_seed_validates(workdir: Path) -> None:
    """Control: the fuzzed documents start from a valid policy (so mutations are what gets refused)."""
    path = workdir / "seed.yaml"
    path.write_text(json.dumps(SEED_DATA, indent=1))
    assert assert_validates_cleanly(path) == 0


# ------------------------------------------------------------------- the validator across environments
#
# Policies with environments and regexes in the base or in one overlay: regex features RE2 refuses
# (lookaround, backreferences, unbalanced groups) once crashed `validate` without --env (exit 3). Every
# environment must agree with the all-environments run, in every format.

REGEX_PARTS = [
    "/api",
    "/v1",
    "(?=v1)",
    "(?!x)",
    "(?<=a)",
    "(?<!b)",
    "\\1",
    "\\k<n>",
    "(",
    ")",
    "[a-z]",
    "[",
    "]",
    ".*",
    "+",
    "{2}",
    "|",
    "$",
    "^",
    "\\",
    "(?P<n>a)",
    "\\d",
    "a",
]
regexes = st.lists(st.sampled_from(REGEX_PARTS), min_size=1, max_size=6).map("".join)
REGEX_SITES = [
    ("cache", lambda r: {"cache": {"rules": [{"name": "c", "match": {"regex": r}, "ttl": "1m"}]}}),
    ("allow", lambda r: {"validation": {"allow_paths": [{"path": "/health"}, {"regex": r}]}}),
    (
        "header",
        lambda r: {
            "headers": {
                "request": [
                    {
                        "name": "h",
                        "set": {"X-A": "1"},
                        "match": {"header": {"name": "User-Agent", "regex": r}},
                    }
                ]
            }
        },
    ),
    ("class", lambda r: {"classify": {"classes": [{"name": "k", "match": {"regex": r}}]}}),
]


@settings(FUZZ, max_examples=60)
@given(
    regex=regexes,
    site=st.sampled_from(range(len(REGEX_SITES))),
    where=st.sampled_from(["base", "local", "production"]),
    fmt=st.sampled_from(["text", "json", "github"]),
)
def test_validate_agrees_across_environments(
    workdir: Path, regex: str, site: int, where: str, fmt: str
) -> None:
    part = REGEX_SITES[site][1](regex)
    data: dict[str, Any] = {
        "version": 1,
        "regions": {"a": {"upstream": "http://127.0.0.1:9101"}},
        "routing": {"default": ["a"]},
        "environments": {
            "local": {"regions": {"a": {"upstream": "http://127.0.0.1:9102"}}},
            "production": {"regions": {"a": {"upstream": "https://a.example.com"}}},
        },
    }
    if where == "base":
        data.update(part)
    else:
        data["environments"][where].update(part)
    path = workdir / "envs.yaml"
    path.write_text(json.dumps(data, indent=1))
    code_all = assert_validates_cleanly(path, fmt)
    for env in ("local", "production"):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err):
            code = cli_main(["validate", str(path), "--env", env, "--format", fmt], out=out)
        assert code in (0, 1) and "internal error" not in err.getvalue(), (env, err.getvalue())
        if code == 1:
            assert code_all == 1, f"invalid with --env {env}, valid without: {regex!r}"
            assert f"{path}" in out.getvalue()
        if where in ("base", env):
            assert code == code_all, (env, regex, out.getvalue())


# --------------------------------------------------------------------------------------------- the oracle
#
# Written from the policy's intent, not from the engine's code: an origin may percent-decode a path once,
# read `\` as `/`, drop `;params` from a segment and (for raw Unicode) apply NFKC; if any reading of the path
# escapes the allowlist, the request must not be forwarded. Likewise for methods, content types, body sizes,
# header syntax and credentials.

ALLOWED_PREFIXES = [
    ("api", "v1", "agents"),
    ("api", "v1", "calls"),
    ("api", "v1", "phone-numbers"),
    ("api", "v1", "analytics"),
    ("voice",),
    ("webhooks",),
]
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
BODY_METHODS = {"POST", "PUT", "PATCH"}
MAX_BODY = 10 * 1024 * 1024
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")


def _percent_decode_once(path: str) -> str:
    raw = _PCT.sub(lambda m: chr(int(m[1], 16)), path)
    try:  # decoded bytes as UTF-8 where they form it
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def readings(path: str) -> list[tuple[str, ...] | None]:
    """Segment lists an origin might see (None: climbs above the root)."""
    variants = {path, _percent_decode_once(path), unicodedata.normalize("NFKC", path)}
    variants |= {v.replace("\\", "/") for v in variants}
    out: list[tuple[str, ...] | None] = []
    for variant in variants:
        for drop_params in (False, True):
            stack: list[str] = []
            climbed = False
            for seg in variant.split("/"):
                if drop_params:
                    seg = seg.split(";", 1)[0]
                if seg in ("", "."):
                    continue
                if seg == "..":
                    if not stack:
                        climbed = True
                        break
                    stack.pop()
                else:
                    stack.append(seg)
            out.append(None if climbed else tuple(stack))
    return out


def allowed_reading(segments: tuple[str, ...] | None) -> bool:
    if segments is None:
        return False
    if segments == ("health",):
        return True
    return any(segments[: len(p)] == p for p in ALLOWED_PREFIXES)


def must_refuse(req: EdgeRequest, credential_ok: bool) -> str | None:
    """Why this request must not reach an origin (None: the oracle has no objection)."""
    if not req.path.startswith("/"):
        return "relative path"
    if any(not allowed_reading(r) for r in readings(req.path)):
        return "path outside the allowlist under some reading"
    if req.method not in METHODS:
        return "method"
    pairs = req.headers.pairs
    for name, value in pairs:
        if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in name + value) or not name:
            return "control character in a header"
    if len(req.path) + len(req.query) > 8192:
        return "URL too long"
    lengths = req.headers.get_all("content-length")
    if any(not v.strip().isdigit() for v in lengths) or len({v.strip() for v in lengths}) > 1:
        return "bad Content-Length"
    declared = int(lengths[0]) if lengths else None
    size = req.body_size if req.body_size is not None else declared
    if size is not None and size > MAX_BODY:
        return "body too large"
    if req.method in BODY_METHODS:
        types = req.headers.get_all("content-type")
        if not types:
            return "content type required"
        for value in types:
            media = value.split(";", 1)[0].strip().lower()
            if media not in ("application/json", "application/octet-stream") and not (
                media.startswith("audio/") and media.count("/") == 1 and len(media) > len("audio/")
            ):
                return "content type not allowed"
    plain = readings(req.path)[0]
    public = plain == ("health",) and all(r == ("health",) for r in readings(req.path))
    if not public and not credential_ok:
        return "no valid credential"
    return None


# ------------------------------------------------------------------------------------- request strategies

PATH_ALPHABET = "/.%;\\?#:@aAgenstvdmh1pic2eEfF05x~-_+ \t\u2025\uff0e\u00e9"
PREFIXES = [
    "",
    "/",
    "/api/v1/agents",
    "/api/v1/agents/",
    "/health",
    "/voice/stream",
    "/api/v1/calls/",
    "/admin",
]
HEADER_NAMES = [
    "Content-Type",
    "content-type",
    "Content-Length",
    "X-User-ID",
    "x_user_role",
    "X-User-Permissions",
    "X-Authenticated-At",
    "Origin",
    "Access-Control-Request-Method",
    "CF-IPCountry",
    "CF-IPLatitude",
    "CF-IPLongitude",
    "User-Agent",
    "If-None-Match",
    "Cache-Control",
    "Transfer-Encoding",
    "Host",
    "Cookie",
    "Upgrade",
    "X-Forwarded-For",
]
HEADER_VALUES = [
    "application/json",
    "audio/mpeg",
    "audio/",
    "text/plain",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "application/json\r\nX-User-ID: root",
    "a\x00b",
    "a\rb",
    "a\r\n folded",
    "0",
    "-1",
    "10485761",
    "1e3",
    "https://app.aybiza.com",
    "POST",
    "US",
    "nan",
    "999",
    "Twilio",
    "websocket",
    "*",
    "",
]

# Segments an origin might read differently from a naive matcher.
SEGMENTS = [
    "..",
    "..;",
    ".;",
    "..;x=1",
    "%2e%2e",
    "%2E%2e;",
    ".%2e",
    ".",
    "",
    "a",
    "1",
    "agents",
    "admin",
    "%2f",
    "..%2f",
    "..%5c",
    "\\..",
    "\u2025",
    "\uff0e\uff0e",
    ";",
    "a;b",
    "%252e%252e",
    "%00",
    "%",
]
segment_paths = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=5).map(lambda s: "/" + "/".join(s))

paths = st.one_of(
    st.builds(str.__add__, st.sampled_from(PREFIXES), st.text(PATH_ALPHABET, max_size=30)),
    st.builds(str.__add__, st.sampled_from(PREFIXES), segment_paths),
    st.text(max_size=40),
)
methods = st.sampled_from([*sorted(METHODS), "HEAD", "TRACE", "CONNECT", "get", "PROPFIND"]) | st.text(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=8
)
headers = st.lists(
    st.tuples(
        st.sampled_from(HEADER_NAMES) | st.text("abcXYZ-_0", min_size=1, max_size=12),
        st.sampled_from(HEADER_VALUES) | st.text(max_size=30),
    ),
    max_size=6,
)
CREDENTIALS = ["none", "jwt", "api_key", "jwt+api_key", "jwt-tampered", "jwt-expired", "garbage", "empty"]


def _authorization(kind: str, garbage: str, jwt_token: str, api_key: str) -> list[str]:
    return {
        "none": [],
        "jwt": ["Bearer " + jwt_token],
        "api_key": ["API-Key " + api_key],
        "jwt+api_key": ["Bearer " + jwt_token, "API-Key " + api_key],
        "jwt-tampered": ["Bearer " + jwt_token[:-2] + ("AA" if not jwt_token.endswith("AA") else "BB")],
        "jwt-expired": ["Bearer " + token(exp=int(time.time()) - 3600)],
        "garbage": [garbage],
        "empty": [""],
    }[kind]


async def _decide(req_kwargs: dict[str, Any], kind: str, garbage: str):
    state = EngineState(MemoryStore(), HealthRegistry())
    api_key, _ = await ApiKeyStore(state.store).add("key-user", "service", ["p"])
    jwt_token = token(sub="jwt-user")
    values = _authorization(kind, garbage, jwt_token, api_key)
    pairs = [*req_kwargs.pop("headers"), *(("Authorization", v) for v in values)]
    req = EdgeRequest(headers=HeaderView(pairs), timestamp=time.time(), host="edge.test", **req_kwargs)
    decision = await decide_request(req, seed_policy(), state)
    return req, decision, kind in ("jwt", "api_key")


def check_decision(req_kwargs: dict[str, Any], kind: str, garbage: str) -> None:
    req, decision, credential_ok = asyncio.run(_decide(req_kwargs, kind, garbage))
    outcome = decision.outcome
    assert isinstance(outcome, Answer | Forward)
    if isinstance(outcome, Answer):
        assert 100 <= outcome.status < 500, (outcome, decision.trace_text())
        return
    why = must_refuse(req, credential_ok)
    assert why is None, f"forwarded although {why}:\n{req!r}\n{decision.trace_text()}"
    check_forward(req, decision, outcome, kind)


@settings(FUZZ, max_examples=400)
@given(
    path=paths,
    query=st.text(max_size=20),
    method=methods,
    extra=headers,
    kind=st.sampled_from(CREDENTIALS),
    garbage=st.text(max_size=60)
    | st.builds(str.__add__, st.sampled_from(["Bearer ", "API-Key "]), st.text(max_size=40)),
    body_size=st.none() | st.integers(0, 2 * MAX_BODY),
    client_ip=st.sampled_from(["127.0.0.1", "10.1.2.3", "::1", "", "not-an-ip"]),
)
def test_engine_never_raises_never_5xx_never_forwards_what_must_be_refused(
    path, query, method, extra, kind, garbage, body_size, client_ip
) -> None:
    req_kwargs = dict(
        method=method, path=path, query=query, headers=extra, body_size=body_size, client_ip=client_ip
    )
    check_decision(req_kwargs, kind, garbage)


perturbations = st.lists(
    st.one_of(
        st.tuples(
            st.just("add_header"),
            st.sampled_from(["Content-Type", "content-type", "Content-Length", "X-User-ID", "x_user_role"]),
            st.sampled_from(HEADER_VALUES),
        ),
        st.tuples(st.just("drop_header"), st.sampled_from(["Content-Type"]), st.just("")),
        st.tuples(st.just("path"), segment_paths | st.text("abc019./%;\\-_~2eEfF", max_size=12), st.just("")),
        st.tuples(st.just("path"), st.sampled_from(SEGMENTS).map("/".__add__), st.just("")),
        st.tuples(st.just("method"), methods, st.just("")),
        st.tuples(st.just("credential"), st.sampled_from(CREDENTIALS), st.just("")),
        st.tuples(st.just("body_size"), st.integers(MAX_BODY - 2, MAX_BODY + 2).map(str), st.just("")),
    ),
    min_size=1,
    max_size=4,
)


@settings(FUZZ, max_examples=400)
@given(
    prefix=st.sampled_from(["/api/v1/agents/1", "/api/v1/calls/", "/voice/x", "/health", "/webhooks/a"]),
    method=st.sampled_from(sorted(METHODS)),
    kind=st.sampled_from(["jwt", "api_key"]),
    changes=perturbations,
)
def test_engine_on_nearly_valid_requests(prefix, method, kind, changes) -> None:
    """A valid, authenticated request with one to four things off: where a lax check would forward."""
    path, extra, body_size = prefix, [("Content-Type", "application/json")], None
    for action, a, b in changes:
        if action == "add_header":
            extra.append((a, b))
        elif action == "drop_header":
            extra = [(n, v) for n, v in extra if n.lower() != a.lower()]
        elif action == "path":
            path += a
        elif action == "method":
            method = a
        elif action == "credential":
            kind = a
        else:
            body_size = int(a)
    req_kwargs = dict(
        method=method, path=path, query="", headers=extra, body_size=body_size, client_ip="127.0.0.1"
    )
    check_decision(req_kwargs, kind, "")


def check_forward(req: EdgeRequest, decision, forward: Forward, kind: str) -> None:
    """What reaches an origin: a normalised path inside the allowlist, no spoofed identity headers."""
    for target in forward.targets:
        path = target.path.split("?", 1)[0]
        assert path.startswith("/") and "//" not in path and "\\" not in path
        assert not {".", ".."} & set(path.split("/"))
        assert all(allowed_reading(r) for r in readings(path)), path
    removed = set(forward.remove_headers)
    for name, _ in req.headers.pairs:
        if name.lower().replace("_", "-").startswith("x-user-") or name.lower() == "x-authenticated-at":
            assert name.lower() in removed, name
    identity = {n.lower(): v for n, v in forward.set_headers if n.lower().startswith("x-user-")}
    if decision.context.auth_outcome == "public":
        assert identity == {}
    else:
        expected = {"jwt": "jwt-user", "api_key": "key-user"}[kind]
        assert identity["x-user-id"] == expected


# --------------------------------------------------------------------------- the oracle on known examples


@pytest.mark.parametrize(
    ("path", "refuse"),
    [
        ("/api/v1/agents/1", False),
        ("/health", False),
        ("/api/v1/agents/../../admin", True),
        ("/api/v1/agents/..%2f..%2fadmin", True),
        ("/api/v1/agents/..;/..;/admin", True),
        ("/api/v1/agents\\..\\..\\admin", True),
        ("/api/v1/agents/\u2025/\u2025/admin", True),
        ("/admin", True),
    ],
)
def test_oracle_itself(path, refuse):
    req = EdgeRequest(method="GET", path=path, headers=HeaderView())
    assert (must_refuse(req, credential_ok=True) is not None) == refuse

"""Record `tests/data/sample.flows` for `edgerules replay`: a real `mitmdump -w` (plain reverse proxy to a demo
origin, no addon) carrying requests from several countries, paths, methods and credentials.

Run from the repo root: `.venv/bin/python -m tests.data.make_flows [OUT]`. The bearer tokens are signed with
the test secret `tests.support.policies.JWT_SECRET` and expire in 2100, so replays stay deterministic.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jwt

from tests.support.origins import start_origin
from tests.support.policies import JWT_SECRET
from tests.support.proxy import http, start_mitmdump

OUT = Path(__file__).with_name("sample.flows")
EXP_2100 = 4102444800


def bearer(sub: str) -> str:
    token = jwt.encode(
        {"sub": sub, "role": "member", "permissions": ["calls:read"], "exp": EXP_2100},
        JWT_SECRET,
        algorithm="HS256",
    )
    return f"Bearer {token}"


# (method, path, country, headers, body): the replay test counts on the per-country numbers (US: 5).
REQUESTS: list[tuple[str, str, str, dict[str, str], str | None]] = [
    ("GET", "/health", "US", {}, None),
    ("GET", "/api/v1/calls/1", "US", {"Authorization": bearer("alice")}, None),
    ("GET", "/api/v1/agents/7", "US", {"Authorization": bearer("alice")}, None),
    (
        "POST",
        "/api/v1/calls",
        "US",
        {"Authorization": bearer("bob"), "Content-Type": "application/json"},
        "{}",
    ),
    ("GET", "/api/v1/analytics/daily", "US", {}, None),
    ("GET", "/health", "GB", {}, None),
    ("GET", "/api/v1/calls/2", "GB", {"Authorization": bearer("carol")}, None),
    ("GET", "/api/v1/agents/8", "DE", {"Authorization": bearer("dave")}, None),
    ("DELETE", "/api/v1/calls/3", "FR", {"Authorization": bearer("erin")}, None),
    ("GET", "/health", "JP", {}, None),
    ("GET", "/api/v1/calls/4", "JP", {"Authorization": bearer("frank")}, None),
    ("GET", "/api/v1/phone-numbers", "AU", {"Authorization": bearer("grace")}, None),
    ("GET", "/health", "CA", {}, None),
    ("GET", "/api/v1/calls/5", "MX", {"Authorization": bearer("heidi")}, None),
    ("GET", "/health", "BR", {}, None),
    ("GET", "/admin/secrets", "GB", {}, None),
    ("GET", "/api/v1/calls/6", "DE", {}, None),
    ("GET", "/api/v1/calls/7", "SG", {"Authorization": "Bearer not-a-token"}, None),
    (
        "OPTIONS",
        "/api/v1/calls/8",
        "NL",
        {"Origin": "https://app.aybiza.com", "Access-Control-Request-Method": "POST"},
        None,
    ),
    ("TRACE", "/api/v1/calls/9", "IT", {}, None),
]


def record(out: Path = OUT) -> Path:
    out.unlink(missing_ok=True)
    origin = start_origin("us-east-1")
    try:
        proxy = start_mitmdump(addon=None, mode=f"reverse:{origin.url}", extra_args=["-w", str(out)])
        try:
            for method, path, country, headers, body in REQUESTS:
                http(method, proxy.url + path, {"CF-IPCountry": country, **headers}, body)
        finally:
            proxy.stop()
    finally:
        origin.stop()
    return out


if __name__ == "__main__":
    target = record(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
    print(f"wrote {target} ({target.stat().st_size} bytes)")

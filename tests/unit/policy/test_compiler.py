"""rules/aybiza.yaml through the whole pipeline, and the compiler's own rules (overlays, ${env}, defaults)."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest

from edgerules.diagnostics import PolicyError
from edgerules.policy import model
from edgerules.policy.envsubst import substitute_env, substitute_string
from edgerules.policy.load import load_policy_file, validate_paths
from edgerules.policy.loader import load_yaml_file

REPO = Path(__file__).resolve().parents[3]
AYBIZA = str(REPO / "rules" / "aybiza.yaml")
SECRET = "s" * 48
ENV = {"JWT_SECRET": SECRET, "REDIS_URL": "redis://127.0.0.1:6390/0"}

MINIMAL = """\
version: 1
regions:
  a: {upstream: http://127.0.0.1:9101}
routing:
  default: [a]
"""


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("env", [None, "local", "staging", "production"])
def test_aybiza_compiles_for_every_environment(env: str | None) -> None:
    result = load_policy_file(AYBIZA, env, environ=ENV, for_serving=True)
    policy = result.policy
    assert isinstance(policy, model.Policy)
    assert policy.environment == env
    assert policy.name == "aybiza"
    assert set(policy.regions) == {"us-east-1", "us-west-2", "eu-west-1"}
    assert len(policy.version) == 12
    assert policy.files == (AYBIZA,)
    assert policy.auth is not None and policy.auth.jwt is not None
    assert policy.auth.jwt.secret == SECRET.encode()


def test_aybiza_spot_checks_base() -> None:
    p = load_policy_file(AYBIZA, environ=ENV).policy
    assert p.routing.countries["NO"] == ("eu-west-1", "us-east-1", "us-west-2")
    assert p.routing.countries["JP"] == ("us-west-2", "us-east-1", "eu-west-1")
    assert len(p.routing.countries) == 13
    assert p.routing.default == ("us-east-1", "us-west-2", "eu-west-1")
    assert (p.routing.timeout, p.routing.connect_timeout, p.routing.retries) == (30.0, 5.0, 2)
    assert p.routing.latency_target == model.LatencyTarget(30, 1, 50, 200, 100)
    assert p.routing.headers.degraded == "X-Edge-Degraded"
    use1 = p.regions["us-east-1"]
    assert (use1.scheme, use1.host, use1.port, use1.base_path) == ("https", "use1.api.aybiza.com", 443, "")
    assert use1.lat == pytest.approx(39.0458) and use1.lon == pytest.approx(-76.6413)
    assert use1.health.interval == 10.0 and use1.health.timeout == 5.0
    assert use1.health.expect_json == (("status", "healthy"),)
    assert dict(use1.health.headers)["X-Health-Check"] == "true"
    assert use1.source.startswith(f"{AYBIZA}:")
    assert p.passive_health == model.PassiveHealth(3, frozenset({502, 503, 504}), 30.0)
    # cache: TTLs, methods, global max body size, principal in the key by default
    assert p.cache is not None
    ttls = {rule.name: rule.ttl for _, rule in p.cache.rules}
    assert ttls == {"agent-configs": 300.0, "health": 60.0, "analytics": 120.0}
    _, health = p.cache.rules[1]
    assert health.methods == frozenset({"GET"}) and health.max_body_size == 1_000_000
    assert p.cache.never is not None and p.cache.never.paths is not None
    assert p.cache.never.paths.match("/voice/stream/abc") is not None
    assert (
        p.cache.rules[1][0].paths is not None
        and p.cache.rules[1][0].paths.match("/api/v1/health") is not None
    )
    assert p.cache.status_header == "CF-Cache-Status"
    # validation / classification / auth
    assert (
        p.validation.allow_paths is not None
        and p.validation.allow_paths.match("/api/v1/agents/7") is not None
    )
    assert p.validation.allow_paths.match("/admin") is None
    assert p.validation.max_body_size == 10 * 1024 * 1024 and p.validation.max_url_length == 8192
    assert p.validation.content_types["POST"] == ("application/json", "audio/*", "application/octet-stream")
    assert [c.name for c in p.classify.classes] == [
        "audio-stream",
        "agent-config",
        "call-management",
        "webhook",
    ]
    assert p.classify.classes[0].stream is True and p.classify.default_class == "api-call"
    twilio = p.classify.priorities[2].match.headers[0]
    assert (twilio.name, twilio.contains) == ("user-agent", "Twilio")
    # /health is public for GET and HEAD only: a leading rule with no schemes (a path-only `public` entry
    # would be the `public` matcher)
    assert p.auth is not None and p.auth.public is None
    health = p.auth.rules[0]
    assert health.schemes == () and health.match.methods == frozenset({"GET", "HEAD"})
    assert health.match.paths is not None and health.match.paths.match("/health") is not None
    assert p.auth.strip_headers == ("x-user-*", "x-authenticated-at")
    assert p.auth.jwt is not None and p.auth.jwt.leeway == 30.0 and p.auth.jwt.algorithms == ("HS256",)
    assert p.rate_limits[0][1].limit == 1000 and p.rate_limits[0][1].window == 3600.0 and p.rate_limits[0][2]
    # headers, CORS, errors, geo, admin, store, metrics
    assert p.headers.request[0].unless is not None and p.headers.request[0].match is None
    assert p.headers.response[1].response_content_types == ("audio/*",)
    assert dict(p.headers.security)["X-Frame-Options"] == "DENY"
    assert p.cors[0].allow_origins == frozenset({"https://app.aybiza.com"}) and p.cors[0].max_age == 86400
    assert p.errors["all_regions_down"] == model.ErrorAnswer(503, "Service temporarily unavailable", 30)
    assert p.errors["forbidden"].status == 403 and p.errors["upstream_unreachable"].status == 502
    assert set(p.errors) == set(model.ERROR_KINDS)
    assert p.geo.country_header == "cf-ipcountry" and p.geo.trusted_proxies == ()
    assert p.admin.token is None
    assert p.admin.allow_cidrs == ()  # the token alone: loopback is trusted only in `local`
    assert (p.store.backend, p.store.path, p.store.size_limit) == (
        "diskcache",
        str(REPO / "rules" / ".edgerules-state" / "aybiza"),  # relative to the policy file
        256 << 20,
    )
    assert p.metrics.rollup_retention == 7 * 86400.0 and p.metrics.access_log is False


def test_aybiza_local_overlay_merges() -> None:
    p = load_policy_file(AYBIZA, "local", environ=ENV).policy
    assert [r.upstream for r in p.regions.values()] == [
        "http://127.0.0.1:9101",
        "http://127.0.0.1:9102",
        "http://127.0.0.1:9103",
    ]
    assert [r.port for r in p.regions.values()] == [9101, 9102, 9103]
    r = p.regions["eu-west-1"]
    assert r.lat == pytest.approx(53.3498)  # location kept from the base
    assert (r.health.interval, r.health.timeout, r.health.path) == (
        1.0,
        0.5,
        "/health",
    )  # health merged per field
    assert p.passive_health.ejection == 5.0 and p.passive_health.failures == 3
    assert p.geo.trusted_proxies == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert p.geo.country_header == "cf-ipcountry"
    assert (p.routing.timeout, p.routing.connect_timeout, p.routing.retries) == (10.0, 1.0, 2)
    assert (
        p.store.path == str(REPO / "rules" / ".edgerules-state" / "local") and p.store.backend == "diskcache"
    )
    assert p.store.prefix == "aybiza:"
    # a value from the overlay keeps the overlay's line as its source
    assert int(r.source.rsplit(":", 1)[1]) > 250


def test_aybiza_staging_and_production_overlays() -> None:
    staging = load_policy_file(AYBIZA, "staging", environ=ENV).policy
    assert staging.regions["us-west-2"].host == "staging-usw2.api.aybiza.com"
    assert (staging.store.backend, staging.store.url, staging.store.prefix) == (
        "redis",
        ENV["REDIS_URL"],
        "aybiza:staging:",
    )
    prod = load_policy_file(AYBIZA, "production", environ=ENV).policy
    assert len(prod.geo.trusted_proxies) == 22
    assert ipaddress.ip_network("2a06:98c0::/29") in prod.geo.trusted_proxies
    assert prod.metrics.access_log is True and prod.metrics.raw_retention == 3600.0
    assert prod.regions["us-east-1"].host == "use1.api.aybiza.com"
    assert len({staging.version, prod.version}) == 2


def test_for_serving_without_jwt_secret_names_the_variable() -> None:
    with pytest.raises(PolicyError) as exc:
        load_policy_file(AYBIZA, "local", environ={}, for_serving=True)
    assert "JWT_SECRET" in str(exc.value)
    assert exc.value.diagnostics[0].mark is not None and exc.value.diagnostics[0].mark.line == 136
    # the base policy still loads for validation (an unset secret is only fatal when serving)
    assert load_policy_file(AYBIZA, "local", environ={}).policy.auth.jwt.secret is None  # type: ignore[union-attr]


def test_for_serving_short_secret_fails_without_printing_it() -> None:
    short = "twenty-bytes-secret!"
    assert len(short) == 20
    with pytest.raises(PolicyError) as exc:
        load_policy_file(AYBIZA, "local", environ={"JWT_SECRET": short}, for_serving=True)
    text = str(exc.value)
    assert "JWT_SECRET" in text and "20 bytes" in text
    assert short not in text


def test_for_serving_staging_needs_redis_url() -> None:
    with pytest.raises(PolicyError) as exc:
        load_policy_file(AYBIZA, "staging", environ={"JWT_SECRET": SECRET}, for_serving=True)
    assert "REDIS_URL" in str(exc.value)
    # local does not use REDIS_URL, so it does not need it
    load_policy_file(AYBIZA, "local", environ={"JWT_SECRET": SECRET}, for_serving=True)


def test_validate_all_environments_reports_each_problem_once() -> None:
    diags = validate_paths([AYBIZA], environ={}, for_serving=True)
    messages = [d.message for d in diags if d.severity == "error"]
    assert sum("JWT_SECRET" in m for m in messages) == 1  # base, local, staging, production all share it
    assert sum("REDIS_URL" in m for m in messages) == 2  # one per overlay that references it
    assert not [d for d in validate_paths([AYBIZA], environ=ENV, for_serving=True) if d.severity == "error"]


def test_unknown_environment_lists_known_ones() -> None:
    with pytest.raises(PolicyError) as exc:
        load_policy_file(AYBIZA, "prod", environ=ENV)
    assert "unknown environment 'prod'" in str(exc.value)
    assert "local, staging, production" in str(exc.value)


def test_norway_unquoted_and_quoted_are_the_same_country(tmp_path: Path) -> None:
    for key in ("NO", '"NO"', "'NO'"):
        path = write(tmp_path, MINIMAL + f"  countries:\n    {key}: [a]\n    ON: [a]\n")
        # ON stays the string 'ON' (YAML 1.1 would read true) - and is then refused: it is no country.
        assert list(load_yaml_file(path).data["routing"]["countries"]) == ["NO", "ON"]
        with pytest.raises(PolicyError, match="'ON' is not an ISO 3166-1 alpha-2 country code"):
            load_policy_file(path)
        path = write(tmp_path, MINIMAL + f"  countries:\n    {key}: [a]\n")
        assert load_policy_file(path).policy.routing.countries == {"NO": ("a",)}


def test_policy_is_immutable() -> None:
    p = load_policy_file(AYBIZA, environ=ENV).policy
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.name = "x"  # type: ignore[misc]
    assert isinstance(p.routing.default, tuple) and isinstance(p.cors, tuple)


def test_version_changes_with_content_and_environment(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    v1 = load_policy_file(path).policy.version
    assert load_policy_file(path).policy.version == v1
    write(tmp_path, MINIMAL + "name: other\n")
    assert load_policy_file(path).policy.version != v1


def test_includes_are_hashed_and_listed(tmp_path: Path) -> None:
    write(tmp_path, "regions:\n  a: {upstream: http://127.0.0.1:9101}\n", "regions.yaml")
    path = write(tmp_path, "version: 1\ninclude: [regions.yaml]\nrouting:\n  default: [a]\n")
    p = load_policy_file(path).policy
    assert p.files[0] == path and p.files[1].endswith("regions.yaml")
    assert p.regions["a"].source.endswith("regions.yaml:2")
    v1 = p.version
    write(tmp_path, "regions:\n  a: {upstream: http://127.0.0.1:9102}\n", "regions.yaml")
    assert load_policy_file(path).policy.version != v1


def test_upstream_split_and_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "version: 1\nregions:\n  a: {upstream: 'https://[::1]:8443/base/'}\n  b: {upstream: 'http://h.example'}\n"
        "routing:\n  default: [a, b]\n",
    )
    p = load_policy_file(path).policy
    a, b = p.regions["a"], p.regions["b"]
    assert (a.scheme, a.host, a.port, a.base_path, a.upstream) == (
        "https",
        "::1",
        8443,
        "/base",
        "https://[::1]:8443/base",
    )
    assert (b.port, b.base_path, b.upstream) == (80, "", "http://h.example")
    assert b.health == model.HealthProbe()
    assert p.auth is None and p.cache is None and p.cors == ()
    assert p.errors["not_found"].status == 404


def test_env_substitution() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert substitute_string("x${env:A}y${env:B:-two}z${env:C}", env) == "x1ytwoz"
    assert substitute_string("${env:EMPTY:-d}", env) == ""
    data, uses = substitute_env({"k": ["${env:A}", {"n": "${env:B:-2}"}], "${env:A}": 3}, env)
    assert data == {"k": ["1", {"n": "2"}], "${env:A}": 3}  # keys are never substituted
    assert [(u.name, u.pointer, u.has_default, u.is_set) for u in uses] == [
        ("A", "/k/0", False, True),
        ("B", "/k/1/n", True, False),
    ]


def test_value_from_environment_that_breaks_compile_is_a_located_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL + "cache:\n  rules:\n    - name: r\n      match: {prefix: /a}\n      ttl: 5m\n"
        "admin:\n  token: ${env:ADMIN_TOKEN}\n",
    )
    assert load_policy_file(path, environ={"ADMIN_TOKEN": "t" * 40}).policy.admin.token == "t" * 40


def test_non_path_public_entries_become_public_rules(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + "auth:\n  schemes: [api_key]\n  public:\n    - path: /health\n    - {prefix: /docs, methods: [GET]}\n"
        "  rules:\n    - match: {prefix: /admin}\n      schemes: [api_key]\n",
    )
    auth = load_policy_file(path).policy.auth
    assert auth is not None and auth.public is not None and auth.public.paths is not None
    assert auth.public.paths.match("/health") is not None and auth.public.paths.match("/docs") is None
    assert [r.schemes for r in auth.rules] == [(), ("api_key",)]
    assert auth.rules[0].match.methods == frozenset({"GET"})

"""The CLI conveniences of issue 19: show, diff, validate DIR, init, schema, addon-path, --format json, and one
exit code for an invalid policy whether the edge runs as mitmdump or as `edgerules serve`."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from edgerules.policy.load import load_policy_file
from edgerules.tools.cli import main
from tests.support.processes import REPO_ROOT, VENV_BIN
from tests.support.proxy import mitmdump_argv, serve_argv

SEED = REPO_ROOT / "rules" / "aybiza.yaml"
SECRET = "s" * 40


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_SECRET", SECRET)


# ------------------------------------------------------------------------------------------------ show


@pytest.mark.parametrize("env", ["local", "production"])
def test_show_prints_a_policy_that_compiles_to_the_same_policy(tmp_path: Path, env: str) -> None:
    code, text = cli("show", "--policy", str(SEED), "--env", env)
    assert code == 0
    assert text.startswith(f"# effective policy: {SEED}, environment {env}")
    shown = tmp_path / "shown.yaml"
    shown.write_text(text)
    assert "environments" not in yaml.safe_load(text)
    a = load_policy_file(SEED, env).policy
    b = load_policy_file(shown, None).policy

    def essence(p):  # what the policy decides with; sources (file:line) differ by design
        return (
            {n: (r.upstream, r.health.interval) for n, r in p.regions.items()},
            p.routing.countries,
            [(rule.name, rule.limit, rule.window) for _, rule, _ in p.rate_limits],
            [(rule.name, rule.ttl) for _, rule in p.cache.rules],
        )

    assert essence(a) == essence(b)
    as_json = json.loads(cli("show", "--policy", str(SEED), "--env", env, "--format", "json")[1])
    assert as_json == yaml.safe_load(text)


def test_show_masks_secrets_when_resolving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGERULES_ADMIN_TOKEN", "t" * 40)
    code, text = cli("show", "--policy", str(SEED), "--env", "production", "--resolve", "--format", "json")
    assert code == 0
    doc = json.loads(text)
    assert doc["auth"]["jwt"]["secret"] == "********" and doc["admin"]["token"] == "********"
    assert SECRET not in text and "t" * 40 not in text
    # without --resolve the references are shown as written (they name the variable, not the secret)
    shown = json.loads(cli("show", "--policy", str(SEED), "--format", "json")[1])
    assert shown["auth"]["jwt"]["secret"] == "${env:JWT_SECRET}"


def test_show_of_an_invalid_policy_exits_1_with_file_and_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nregions: 7\n")
    assert cli("show", "--policy", str(bad))[0] == 1
    assert f"{bad}:2:" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ diff


def _candidate(tmp_path: Path) -> Path:
    text = SEED.read_text()
    text = text.replace(
        "    GB: [eu-west-1, us-east-1, us-west-2]", "    GB: [us-east-1, eu-west-1, us-west-2]"
    )
    assert "GB: [us-east-1" in text
    new = tmp_path / "new.yaml"
    new.write_text(text)
    return new


def test_diff_lists_settings_and_the_requests_that_change_with_the_rule(tmp_path: Path) -> None:
    new = _candidate(tmp_path)
    requests = tmp_path / "requests.yaml"
    requests.write_text(
        "requests:\n  - {url: /health, country: GB}\n  - {url: /health, country: US}\n"
        "  - {url: /api/v1/agents/1, country: GB, auth: {jwt: {sub: u1}}}\n"
    )
    code, text = cli(
        "diff", str(SEED), str(new), "--env", "local", "--requests", str(requests), "--format", "json"
    )
    assert code == 0
    doc = json.loads(text)
    assert doc["settings"] == [
        {
            "op": "changed",
            "path": "/routing/countries/GB",
            "old": ["eu-west-1", "us-east-1", "us-west-2"],
            "new": ["us-east-1", "eu-west-1", "us-west-2"],
        }
    ]
    changes = doc["decisions"]["changes"]
    assert [c["index"] for c in changes] == [1, 3]
    assert changes[0]["changes"]["region"] == {"old": "eu-west-1", "new": "us-east-1"}
    assert any(str(new) in e["source"] for e in changes[0]["new_trace"])
    # identical policies: nothing, and --fail-on-change passes
    assert cli("diff", str(SEED), str(SEED), "--fail-on-change")[0] == 0
    code, text = cli("diff", str(SEED), str(new), "--fail-on-change")
    assert code == 1 and "~ /routing/countries/GB" in text


def test_diff_takes_a_test_file_as_requests(tmp_path: Path) -> None:
    new = _candidate(tmp_path)
    code, text = cli(
        "diff",
        str(SEED),
        str(new),
        "--env",
        "local",
        "--requests",
        str(REPO_ROOT / "rules" / "aybiza.test.yaml"),
    )
    assert code == 0
    assert "region eu-west-1 -> us-east-1" in text


def test_diff_names_rules_by_name(tmp_path: Path) -> None:
    new = tmp_path / "new.yaml"
    new.write_text(SEED.read_text().replace("    ttl: 5m", "    ttl: 10m", 1))
    doc = json.loads(cli("diff", str(SEED), str(new), "--format", "json")[1])
    assert [c["path"] for c in doc["settings"]] == ["/cache/rules[name=agent-configs]/ttl"]


def test_diff_refuses_a_bad_requests_file_with_its_line(tmp_path: Path, capsys) -> None:
    requests = tmp_path / "requests.yaml"
    requests.write_text("requests:\n  - {url: /health, contry: GB}\n")
    assert cli("diff", str(SEED), str(SEED), "--requests", str(requests))[0] == 1
    assert f"{requests}:2:" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ validate DIR


def test_validate_a_directory_skips_test_files_and_included_fragments(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "regions.yaml").write_text("regions:\n  a: {upstream: http://127.0.0.1:9101}\n")
    (tmp_path / "sub" / "p.yaml").write_text(
        "version: 1\ninclude: [regions.yaml]\nrouting:\n  default: [a]\n"
    )
    (tmp_path / "sub" / "p.test.yaml").write_text("policy: p.yaml\ncases: []\n")
    (tmp_path / "q.yml").write_text(
        "version: 1\nregions:\n  a: {upstream: http://127.0.0.1:9101}\nrouting:\n  default: [b]\n"
    )
    code, text = cli("validate", "--format", "json", str(tmp_path))
    doc = json.loads(text)
    assert code == 1
    assert [f["file"] for f in doc["files"]] == [str(tmp_path / "q.yml"), str(tmp_path / "sub" / "p.yaml")]
    assert [f["ok"] for f in doc["files"]] == [False, True]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli("validate", str(empty))[0] == 2


# ------------------------------------------------------------------------------------------------ init, schema


def test_init_scaffolds_a_policy_that_validates_and_tests_at_once(tmp_path: Path) -> None:
    code, text = cli("init", "shop", "--dir", str(tmp_path), "--format", "json")
    assert code == 0
    created = json.loads(text)["created"]
    assert {Path(p).name for p in created} == {
        "shop.yaml",
        "shop.test.yaml",
        "policy.schema.json",
        ".pre-commit-config.yaml",
    }
    rules = tmp_path / "rules"
    assert cli("validate", str(rules))[0] == 0
    code, text = cli("test", str(rules))
    assert code == 0 and "6 passed, 0 failed" in text
    hooks = yaml.safe_load((tmp_path / ".pre-commit-config.yaml").read_text())["repos"][0]["hooks"]
    assert [h["entry"] for h in hooks] == ["edgerules validate", "edgerules test rules/"]
    # nothing is overwritten
    assert cli("init", "shop", "--dir", str(tmp_path))[0] == 1
    assert cli("init", "Bad Name", "--dir", str(tmp_path))[0] == 1


def test_schema_prints_the_shipped_schema(tmp_path: Path) -> None:
    code, text = cli("schema")
    assert code == 0
    assert json.loads(text) == json.loads((REPO_ROOT / "schemas" / "policy.schema.json").read_text())


def test_addon_path_is_a_loadable_script() -> None:
    code, text = cli("addon-path")
    path = Path(text.strip())
    assert code == 0 and path.is_absolute() and path.is_file()
    assert "from edgerules.edge.addon import addons" in path.read_text()
    assert json.loads(cli("addon-path", "--format", "json")[1]) == {"path": str(path)}


def test_cache_purge_json(tmp_path: Path) -> None:
    from tests.support.policies import write_policy

    policy = write_policy(tmp_path, {"us-east-1": 9, "us-west-2": 9, "eu-west-1": 9})
    code, text = cli("cache", "purge", "--policy", str(policy), "--env", "e2e", "--all", "--format", "json")
    assert code == 0 and json.loads(text) == {"purged": 0, "all": True}


# ------------------------------------------------------------------------------------------------ exit codes


@pytest.mark.e2e
@pytest.mark.parametrize("runner", ["mitmdump", "serve"])
def test_an_invalid_policy_exits_1_under_mitmdump_and_serve(tmp_path: Path, runner: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nregions:\n  a: {upstream: http://127.0.0.1:9101}\nrouting:\n  default: [b]\n")
    options = {"edgerules_policy": str(bad), "edgerules_env": ""}
    argv = serve_argv(options) if runner == "serve" else mitmdump_argv(options=options)
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert f"{bad}:5:" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


# ------------------------------------------------------------------------------------------------ docs fixes


def test_trace_cites_the_public_entry_not_the_block(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    seed = SEED.read_text()
    text = re.sub(
        r"(?m)^  public:\n(    - .*\n)+",
        "  public:\n    - path: /health\n    - prefix: /api/v1/agents\n",
        seed,
        count=1,
    )
    assert text != seed
    policy.write_text(text)
    argv = [
        "explain",
        "GET",
        "/api/v1/agents/1",
        "--policy",
        str(policy),
        "--env",
        "local",
        "--format",
        "json",
    ]
    code, out = cli(*argv)
    assert code == 0
    (entry,) = [e for e in json.loads(out)["trace"] if e["phase"] == "auth"]
    line = int(entry["source"].rsplit(":", 1)[1])
    assert text.splitlines()[line - 1].strip() == "- prefix: /api/v1/agents", entry


def test_explain_names_the_secret_variable_the_policy_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JWT_SECRET", raising=False)
    monkeypatch.delenv("SHOP_TOKEN_KEY", raising=False)
    policy = tmp_path / "p.yaml"
    policy.write_text(SEED.read_text().replace("${env:JWT_SECRET}", "${env:SHOP_TOKEN_KEY}"))
    argv = ["explain", "GET", "/api/v1/agents/1", "--policy", str(policy), "--env", "local"]
    code, text = cli(*argv, "-H", "Authorization: Bearer a.b.c")
    assert code == 0 and "auth=failed:misconfigured" in text
    assert "note: auth.jwt.secret comes from ${env:SHOP_TOKEN_KEY}, which is not set" in text
    assert "export SHOP_TOKEN_KEY=" in text and "JWT_SECRET" not in text.split("note:")[1]
    monkeypatch.setenv(
        "SHOP_TOKEN_KEY", SECRET
    )  # the variable the policy names, not JWT_SECRET, is what counts
    assert "note:" not in cli(*argv)[1]


def test_the_hint_for_a_missing_secret_never_suggests_a_default_in_the_file(monkeypatch) -> None:
    monkeypatch.delenv("JWT_SECRET", raising=False)
    code, text = cli("validate", "--for-serving", "--env", "production", "--format", "json", str(SEED))
    assert code == 1
    (d,) = [d for d in json.loads(text)["diagnostics"] if d["pointer"] == "/auth/jwt/secret"]
    assert "JWT_SECRET is not set" in d["message"]
    assert ":-" not in d["hint"] and "export JWT_SECRET=" in d["hint"]


def test_the_demo_curl_line_expands_the_token() -> None:
    source = (REPO_ROOT / "examples" / "demo.py").read_text()
    (line,) = [x for x in source.splitlines() if x.strip().startswith("curl") and "TOKEN" in x]
    args = line.strip().removeprefix("curl ").replace("{PROXY_PORT}", "8080")
    done = subprocess.run(
        ["bash", "-c", f'TOKEN=tok123; args=({args}); printf "%s\\n" "${{args[@]}}"'],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "Authorization: Bearer tok123" in done.stdout.splitlines(), done.stdout + done.stderr

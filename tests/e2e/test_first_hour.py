"""The newcomer's first hour, scripted: edgerules pip-installed (NOT editable) into a fresh venv from a wheel built
from this checkout, then used from a scratch directory outside the checkout: init, validate, test, show, diff,
explain, the edge started from the installed package (`mitmdump -s "$(edgerules addon-path)"` and `edgerules
serve`) and real requests through it.

The venv is built once per session (wheel ~30 s, install ~1-2 min on a loaded box, from the same pip
configuration - index, find-links, cache - that `make venv` uses). The origins are the test harness's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest

from tests.support.origins import start_origins
from tests.support.processes import REPO_ROOT, ManagedProcess
from tests.support.proxy import LISTENING, STARTUP_FAILURE, http

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(1500),
    pytest.mark.skipif(
        os.environ.get("EDGERULES_E2E_RUNNER") == "serve",
        reason="starts both runners itself (first pass only)",
    ),
]

SECRET = "first-hour-secret-that-is-at-least-32-bytes"


def run(
    argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the package installed from a wheel of the checkout's tracked files; its bin dir."""
    base = tmp_path_factory.mktemp("first-hour")
    src = base / "src"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True, timeout=60
    ).stdout.split(b"\0")
    for name in filter(None, tracked):
        path = REPO_ROOT / os.fsdecode(name)
        if path.is_file():  # tracked and not deleted in the working tree
            target = src / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    base_python = getattr(sys, "_base_executable", sys.executable)
    venv = base / "venv"
    steps = [
        [base_python, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "wheel", "--no-deps", "-w", str(base / "wheels"), "./src"],
    ]
    for argv in steps:
        done = run(argv, base, env)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = (base / "wheels").glob("edgerules-*.whl")
    done = run([str(venv / "bin" / "pip"), "install", str(wheel)], base, env, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return venv / "bin"


def test_the_first_hour_without_the_repository(installed: Path, tmp_path: Path) -> None:
    work = tmp_path / "newcomer"
    work.mkdir()
    assert REPO_ROOT not in work.parents
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "JWT_SECRET")}
    env["PATH"] = f"{installed}:{env['PATH']}"

    def er(*argv: str, expect: int = 0) -> str:
        done = run([str(installed / "edgerules"), *argv], work, env, timeout=300)
        assert done.returncode == expect, (argv, done.returncode, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr and "internal error" not in done.stderr
        return done.stdout

    # the package, not the checkout
    where = run([str(installed / "python"), "-c", "import edgerules; print(edgerules.__file__)"], work, env)
    assert where.stdout.startswith(str(installed.parent)), where
    addon = Path(er("addon-path").strip())
    assert addon.is_file() and installed.parent in addon.parents

    # init -> validate -> test, all passing at once
    er("init", "shop")
    assert "rules/shop.yaml: ok" in er("validate", "rules/")
    assert "6 passed, 0 failed" in er("test", "rules/")
    assert json.loads(er("schema"))["title"]

    # show: the effective local policy, itself valid
    shown = er("show", "--policy", "rules/shop.yaml", "--env", "local")
    (work / "shown.yaml").write_text(shown)
    er("validate", "shown.yaml")

    # diff: a candidate that routes GB elsewhere, checked against the test cases' requests
    policy = (work / "rules" / "shop.yaml").read_text()
    candidate = policy.replace("GB: [backup, primary]", "GB: [primary, backup]")
    assert candidate != policy
    (work / "candidate.yaml").write_text(candidate)
    report = json.loads(
        er("diff", "rules/shop.yaml", "candidate.yaml", "--env", "local", "--requests", "rules/shop.test.yaml",
           "--format", "json")
    )  # fmt: skip
    assert [c["path"] for c in report["settings"]] == ["/routing/countries/GB"]
    changed = report["decisions"]["changes"]
    assert changed and all(c["changes"]["region"] == {"old": "backup", "new": "primary"} for c in changed)
    er("diff", "rules/shop.yaml", "candidate.yaml", "--fail-on-change", expect=1)

    # explain
    explained = json.loads(er("explain", "GET", "/health", "--policy", "rules/shop.yaml", "--env", "local",
                              "--country", "GB", "--format", "json"))  # fmt: skip
    assert explained["decision"]["region"] == "backup" and explained["context"]["auth"] == "public"
    assert any(e["phase"] == "auth" and e["rule"] == "public" for e in explained["trace"])

    # the edge, from the installed package, in front of two origins
    origins = start_origins({"primary": None, "backup": None})
    try:
        live = policy.replace("http://127.0.0.1:9101", origins["primary"].url).replace(
            "http://127.0.0.1:9102", origins["backup"].url
        )
        (work / "rules" / "shop.yaml").write_text(live)
        edge_env = {**env, "JWT_SECRET": SECRET}
        token = jwt.encode({"sub": "user-1", "role": "user", "exp": int(time.time()) + 600}, SECRET, "HS256")
        options = ["--set", "edgerules_policy=rules/shop.yaml", "--set", "edgerules_env=local"]
        runners = {
            "mitmdump": [str(installed / "mitmdump"), "--listen-host", "127.0.0.1", "-p", "0", "--mode",
                         f"reverse:{origins['primary'].url}", "--set", "connection_strategy=lazy",
                         "-s", str(addon), *options],
            "serve": [str(installed / "edgerules"), "serve", "--policy", "rules/shop.yaml", "--env", "local",
                      "--listen", "127.0.0.1:0"],
        }  # fmt: skip
        for name, argv in runners.items():
            process = ManagedProcess(
                argv, name=f"first-hour-{name}", cwd=work, env=edge_env, ready=LISTENING, fail=STARTUP_FAILURE,
                ready_timeout=60,
            )  # fmt: skip
            match = process.start().ready_match
            assert match is not None
            url = f"http://127.0.0.1:{match['port']}"
            try:
                health = http("GET", f"{url}/health")
                assert health.status == 200, (name, health.body)
                assert http("GET", f"{url}/health", {"CF-IPCountry": "GB"}).status == 200
                assert http("GET", f"{url}/api/orders").status == 401
                ok = http("GET", f"{url}/api/orders", {"Authorization": f"Bearer {token}"})
                assert ok.status == 200, (name, ok.body)
                assert ok.json()["region"] == "primary"
                assert http("GET", f"{url}/admin", {"Authorization": f"Bearer {token}"}).status == 400
            finally:
                process.stop()
            assert "Traceback" not in process.output(), process.output()
    finally:
        origins.stop_all()

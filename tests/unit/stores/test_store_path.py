"""The diskcache store does not depend on the working directory: a relative `store.path` (and the default) is
relative to the policy file, and every command that opens the store says which one it used."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from edgerules.policy.load import load_policy_file
from edgerules.stores import StoreConfig, describe_store
from tests.support.policies import ENV, write_policy
from tests.support.processes import VENV_BIN

PORTS = {"us-east-1": 9, "us-west-2": 9, "eu-west-1": 9}  # never contacted: only the store is touched


def edgerules(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **ENV}
    return subprocess.run(
        [str(VENV_BIN / "edgerules"), *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_relative_store_path_is_relative_to_the_policy_file(tmp_path: Path) -> None:
    policy_dir = tmp_path / "etc"
    policy_dir.mkdir()
    policy = write_policy(policy_dir, PORTS, {"store": {"path": "state/edge"}})
    store = load_policy_file(policy, "e2e", environ=ENV).policy.store
    assert store.path == str(policy_dir / "state" / "edge")
    # the default too (no `path` at all): next to the policy, not in the working directory
    policy_default = write_policy(policy_dir, PORTS, {"store": {"path": None}}, name="default.yaml")
    data = json.loads(policy_default.read_text())
    data["environments"]["e2e"]["store"] = {"backend": "diskcache"}
    data["store"].pop("path", None)
    policy_default.write_text(json.dumps(data))
    default = load_policy_file(policy_default, "e2e", environ=ENV).policy.store
    assert default.path == str(policy_dir / StoreConfig().path)


def test_keys_from_another_directory_use_the_edges_store(tmp_path: Path) -> None:
    policy_dir, elsewhere, third = tmp_path / "etc", tmp_path / "home", tmp_path / "var"
    for d in (policy_dir, elsewhere, third):
        d.mkdir()
    policy = write_policy(policy_dir, PORTS, {"store": {"path": "state"}})
    expected = policy_dir / "state"

    added = edgerules(
        elsewhere, "keys", "add", "--policy", str(policy), "--env", "e2e", "--user", "u", "--role", "r"
    )
    assert added.returncode == 0, added.stderr
    assert f"store: diskcache {expected} (prefix " in added.stderr
    assert (
        added.stdout.strip().splitlines()[-1].startswith("er_")
    )  # stdout unchanged: the key is the last line
    assert expected.is_dir() and not (elsewhere / "state").exists()

    listed = edgerules(third, "keys", "list", "--policy", str(policy), "--env", "e2e")
    assert listed.returncode == 0, listed.stderr
    assert f"store: diskcache {expected} " in listed.stderr
    assert "u" in listed.stdout and "active" in listed.stdout.lower()

    purged = edgerules(third, "cache", "purge", "--all", "--policy", str(policy), "--env", "e2e")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert f"store: diskcache {expected} " in purged.stderr

    report = edgerules(third, "report", "--policy", str(policy), "--env", "e2e", "--format", "json")
    assert report.returncode == 0, report.stdout + report.stderr
    assert f"store: diskcache {expected} " in report.stderr
    json.loads(report.stdout)  # stdout is still only the report


def test_describe_store_never_shows_a_redis_password() -> None:
    text = describe_store(StoreConfig(backend="redis", url="redis://app:s3cret@10.0.0.5:6379/0", prefix="p:"))
    assert "s3cret" not in text and "10.0.0.5:6379/0" in text and "'p:'" in text

"""`edgerules keys`: add/list/show/revoke against the policy's own store (diskcache, and a real Redis)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from pathlib import Path

import pytest
import redis

from edgerules.auth.apikeys import ApiKeyRecord, ApiKeyStore, authenticate_api_key
from edgerules.auth.identity import AuthFailure
from edgerules.stores import StoreConfig, open_store
from edgerules.tools import cli
from tests.support.policies import ENV, write_policy
from tests.support.redis_server import RedisServer

PORTS = {"us-east-1": 9, "us-west-2": 9, "eu-west-1": 9}  # never contacted: keys only touch the store
KEY_LINE = re.compile(r"er_[A-Za-z0-9_-]{43}")


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def keys(policy: Path, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    action, *rest = argv
    code = cli.main(["keys", action, "--policy", str(policy), "--env", "e2e", *rest], out=out)
    return code, out.getvalue()


def add(policy: Path, *extra: str, user: str = "alice", role: str = "admin") -> tuple[str, str]:
    """Run `keys add`; returns (key, key_id)."""
    code, text = keys(policy, "add", "--user", user, "--role", role, *extra)
    assert code == 0, text
    key = text.rstrip("\n").splitlines()[-1]
    assert KEY_LINE.fullmatch(key), text
    key_id = re.search(r"^key_id:\s+([0-9a-f]{12})$", text, re.M)
    assert key_id is not None, text
    return key, key_id[1]


def store_config(policy: Path) -> StoreConfig:
    from edgerules.policy.load import load_policy_file

    return load_policy_file(policy, "e2e", environ=ENV).policy.store


def lookup(policy: Path, key: str) -> ApiKeyRecord | None:
    async def go() -> ApiKeyRecord | None:
        store = open_store(store_config(policy))
        try:
            return await ApiKeyStore(store).lookup(key)
        finally:
            await store.close()

    return asyncio.run(go())


def authenticate(policy: Path, key: str) -> str:
    """'ok' or the AuthFailure reason for `key`, as the proxy would decide."""

    async def go() -> str:
        store = open_store(store_config(policy))
        try:
            await authenticate_api_key(ApiKeyStore(store), key, time.time())
            return "ok"
        except AuthFailure as exc:
            return exc.reason
        finally:
            await store.close()

    return asyncio.run(go())


@pytest.fixture
def disk_policy(tmp_path: Path) -> Path:
    return write_policy(tmp_path, PORTS)


def test_add_prints_the_key_once_as_the_last_line_and_stores_only_its_record(disk_policy, capsys):
    key, key_id = add(disk_policy, "--permissions", "calls:read, agents:write", "--rate-limit", "5/1m")
    record = lookup(disk_policy, key)
    assert record is not None
    assert record.key_id == key_id
    assert (record.user, record.role) == ("alice", "admin")
    assert record.permissions == ("calls:read", "agents:write")
    assert record.rate_limit == (5, 60.0)
    assert record.active and record.expires_at is None
    assert authenticate(disk_policy, key) == "ok"
    # The key is shown only by `add`: never by list/show, never on stderr, never in the stored record.
    assert key not in keys(disk_policy, "list")[1]
    assert key not in keys(disk_policy, "show", key_id)[1]
    assert key not in capsys.readouterr().err
    assert key not in record.to_json().decode()


def test_expires_sets_the_expiry(disk_policy):
    before = time.time()
    key, _ = add(disk_policy, "--expires", "2h")
    record = lookup(disk_policy, key)
    assert record is not None and record.expires_at is not None
    assert before + 7200 <= record.expires_at <= time.time() + 7200


def test_list_and_show(disk_policy):
    _, first = add(disk_policy, user="alice", role="admin")
    _, second = add(disk_policy, "--rate-limit", "100/1h", user="bob", role="reader")
    code, text = keys(disk_policy, "list")
    assert code == 0
    lines = text.strip().splitlines()
    assert lines[0].split() == ["KEY_ID", "USER", "ROLE", "STATUS", "RATE", "EXPIRES"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows[first][1:4] == ["alice", "admin", "active"]
    assert rows[second][1:5] == ["bob", "reader", "active", "100/3600s"]
    code, text = keys(disk_policy, "show", second)
    assert code == 0
    assert re.search(r"^user:\s+bob$", text, re.M)
    assert re.search(r"^rate limit:\s+100/3600s$", text, re.M)


def test_revoke_makes_the_key_inactive_and_keeps_the_record(disk_policy):
    key, key_id = add(disk_policy)
    code, text = keys(disk_policy, "revoke", key_id)
    assert (code, text.strip()) == (0, f"revoked {key_id}")
    assert authenticate(disk_policy, key) == "inactive"
    code, text = keys(disk_policy, "list")
    assert code == 0
    assert text.splitlines()[1].split()[:4] == [key_id, "alice", "admin", "revoked"]
    # Revoking again is not an error (it is already revoked).
    assert keys(disk_policy, "revoke", key_id)[0] == 0


@pytest.mark.parametrize("action", ["show", "revoke"])
@pytest.mark.parametrize("key_id", ["0123456789ab", "not-a-key-id", "er_" + "A" * 43])
def test_unknown_key_id_exits_1(disk_policy, capsys, action, key_id):
    add(disk_policy)
    code, text = keys(disk_policy, action, key_id)
    assert code == 1
    assert text == ""
    assert "no API key with id" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra",
    [
        ("--rate-limit", "lots"),
        ("--rate-limit", "0/1m"),
        ("--rate-limit", "5/0s"),
        ("--expires", "soon"),
        ("--expires", "0s"),
        ("--permissions", "ok,\x07bell"),
    ],
)
def test_bad_input_exits_1_without_creating_a_key(disk_policy, capsys, extra):
    code, text = keys(disk_policy, "add", "--user", "alice", "--role", "admin", *extra)
    assert code == 1
    assert not KEY_LINE.search(text + capsys.readouterr().err)
    assert keys(disk_policy, "list")[1].strip().splitlines()[1:] == []


def test_missing_required_option_is_a_usage_error(disk_policy):
    with pytest.raises(SystemExit) as exc:
        keys(disk_policy, "add", "--user", "alice")
    assert exc.value.code == 2


def test_bad_policy_exits_1_with_file_and_line(tmp_path, capsys):
    policy = tmp_path / "bad.yaml"
    policy.write_text("version: 1\nregions: 7\n")
    out = io.StringIO()
    assert cli.main(["keys", "list", "--policy", str(policy)], out=out) == 1
    assert f"{policy}:2" in capsys.readouterr().err


def test_keys_in_redis_are_shared_with_the_proxy_store_and_only_hashes_are_stored(tmp_path, redis_server):
    prefix = "cli-test:"
    policy = write_policy(
        tmp_path, PORTS, {"store": {"backend": "redis", "url": redis_server.url, "prefix": prefix}}
    )
    key, key_id = add(policy, "--rate-limit", "5/1m")
    assert authenticate(policy, key) == "ok"
    client = redis.Redis.from_url(redis_server.url)
    try:
        names = [name.decode() for name in client.keys("*")]
        assert names and all(name.startswith(prefix) for name in names)
        dump = b"".join(client.dump(name) or b"" for name in names) + "".join(names).encode()
        assert key.encode() not in dump
        assert key_id in "".join(names)
    finally:
        client.close()
    assert keys(policy, "revoke", key_id)[0] == 0
    assert authenticate(policy, key) == "inactive"


def test_redis_down_exits_1_and_says_so(tmp_path, capsys):
    server = RedisServer()  # a free port with nothing listening
    policy = write_policy(tmp_path, PORTS, {"store": {"backend": "redis", "url": server.url}})
    code, text = keys(policy, "add", "--user", "alice", "--role", "admin")
    assert code == 1
    assert not KEY_LINE.search(text)
    err = capsys.readouterr().err
    assert "store unavailable" in err
    assert "Traceback" not in err


def test_rate_limit_the_policy_ignores_is_refused(tmp_path, capsys):
    """Without per_key_override the policy's own limit applies to every key: --rate-limit would be a silent no-op."""
    policy = write_policy(
        tmp_path,
        PORTS,
        {"rate_limits": [{"name": "api-key", "key": "api_key", "limit": 1000, "window": "1h"}]},
    )
    code, text = keys(policy, "add", "--user", "alice", "--role", "admin", "--rate-limit", "3/1m")
    err = capsys.readouterr().err
    assert code == 1
    assert "--rate-limit 3/1m would have no effect" in err and "per_key_override: true" in err
    assert not KEY_LINE.search(text + err)
    assert keys(policy, "list")[1].strip().splitlines()[1:] == []
    add(policy)  # without --rate-limit the key is fine


def test_keys_json_output(disk_policy):
    code, text = keys(
        disk_policy, "add", "--user", "alice", "--role", "admin", "--rate-limit", "5/1m", "--format", "json"
    )
    assert code == 0, text
    doc = json.loads(text)
    assert KEY_LINE.fullmatch(doc["key"]) and doc["rate_limit"] == {"limit": 5, "window_seconds": 60.0}
    assert authenticate(disk_policy, doc["key"]) == "ok"
    listed = json.loads(keys(disk_policy, "list", "--format", "json")[1])
    assert [k["key_id"] for k in listed["keys"]] == [doc["key_id"]] and doc["key"] not in json.dumps(listed)
    shown = json.loads(keys(disk_policy, "show", doc["key_id"], "--format", "json")[1])
    assert shown["status"] == "active" and shown["user"] == "alice"
    assert (
        json.loads(keys(disk_policy, "revoke", doc["key_id"], "--format", "json")[1])["revoked"]
        == doc["key_id"]
    )
    assert json.loads(keys(disk_policy, "show", doc["key_id"], "--format", "json")[1])["status"] == "revoked"

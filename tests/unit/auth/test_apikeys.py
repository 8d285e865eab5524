"""API keys: generation, hashing, strict records, authentication, CLI helpers (on MemoryStore)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence

import pytest

from edgerules.auth.apikeys import (
    ApiKeyRecord,
    ApiKeyStore,
    MalformedRecord,
    authenticate_api_key,
    cmd_keys_add,
    cmd_keys_list,
    cmd_keys_revoke,
    cmd_keys_show,
    generate_key,
    hash_key,
    parse_rate_limit,
)
from edgerules.auth.identity import AuthFailure
from edgerules.stores.base import StoreUnavailable
from edgerules.stores.memory import MemoryStore

NOW = 1_700_000_000.0


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def failure(coro) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(AuthFailure) as info:
        run(coro)
    return info.value.reason


def test_generate_and_hash() -> None:
    keys = {generate_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(re.fullmatch(r"er_[A-Za-z0-9_-]{43}", k) for k in keys)
    k = next(iter(keys))
    assert re.fullmatch(r"[0-9a-f]{64}", hash_key(k))
    assert hash_key(k) == hash_key(k) and hash_key(k) != hash_key(k + "x")


def test_add_stores_only_the_hash_and_authenticates() -> None:
    mem = MemoryStore()
    store = ApiKeyStore(mem)

    async def scenario() -> None:
        key, record = await store.add("u1", "svc", ["calls:write"], rate_limit=(100, 3600), now=NOW)
        assert record.key_id == hash_key(key)[:12]
        names = await mem.keys("")
        assert names == ["apikey:" + hash_key(key)]
        blob = await mem.get(names[0])
        assert blob is not None and key.encode() not in blob
        ident = await authenticate_api_key(store, key, NOW + 1)
        assert (ident.user, ident.role, ident.permissions) == ("u1", "svc", ("calls:write",))
        assert ident.method == "api_key"
        assert ident.principal == "key:" + hash_key(key) and key not in ident.principal
        assert ident.rate_limit == (100, 3600.0)

    run(scenario())


def test_unknown_inactive_expired() -> None:
    store = ApiKeyStore(MemoryStore())
    key, rec = run(store.add("u1", "svc", expires_at=NOW + 10, now=NOW))
    assert failure(authenticate_api_key(store, generate_key(), NOW)) == "unknown_key"
    assert failure(authenticate_api_key(store, "not-a-key", NOW)) == "unknown_key"
    assert failure(authenticate_api_key(store, key, NOW + 10)) == "expired"
    assert run(authenticate_api_key(store, key, NOW + 9)).user == "u1"
    assert run(store.revoke(rec.key_id)) is True
    assert failure(authenticate_api_key(store, key, NOW)) == "inactive"
    assert run(store.revoke("000000000000")) is False


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("active"),
        lambda d: d.update(active="true"),
        lambda d: d.update(active=1),
        lambda d: d.update(extra="garbage"),
        lambda d: d.update(permissions="admin"),
        lambda d: d.update(permissions=["ok", 1]),
        lambda d: d.update(role="admin\r\nX-Evil: 1"),
        lambda d: d.update(user=""),
        lambda d: d.update(expires_at="never"),
        lambda d: d.update(expires_at=True),
        lambda d: d.update(rate_limit=[100]),
        lambda d: d.update(rate_limit=[0, 60]),
        lambda d: d.update(rate_limit=[1.5, 60]),
        lambda d: d.update(v=2),
        lambda d: d.update(key_id="ffffffffffff"),
    ],
)
def test_malformed_record_fails_closed(mutate) -> None:  # type: ignore[no-untyped-def]
    mem = MemoryStore()
    store = ApiKeyStore(mem)
    key, _ = run(store.add("u1", "svc", now=NOW))
    name = "apikey:" + hash_key(key)
    doc = json.loads(run(mem.get(name)))
    mutate(doc)
    run(mem.set(name, json.dumps(doc).encode()))
    assert failure(authenticate_api_key(store, key, NOW)) == "malformed_record"


@pytest.mark.parametrize("blob", [b"", b"null", b"[]", b"{", b"\xff\xfe", b'{"v":1}'])
def test_from_json_garbage(blob: bytes) -> None:
    with pytest.raises(MalformedRecord):
        ApiKeyRecord.from_json(blob)


def test_record_round_trip() -> None:
    rec = ApiKeyRecord("0123456789ab", "u", "r", ("p",), True, None, (5, 60.0), NOW)
    assert ApiKeyRecord.from_json(rec.to_json()) == rec


class DownStore(MemoryStore):
    async def get(self, key: str) -> bytes | None:
        raise StoreUnavailable("disk on fire")

    async def keys(self, prefix: str) -> list[str]:
        raise StoreUnavailable("disk on fire")

    async def set(self, key: str, value: bytes, ttl: float | None = None, tags: Sequence[str] = ()) -> None:
        raise StoreUnavailable("disk on fire")


def test_store_unavailable_propagates() -> None:
    with pytest.raises(StoreUnavailable):
        run(authenticate_api_key(ApiKeyStore(DownStore()), generate_key(), NOW))


def test_list_get_and_cli_helpers() -> None:
    mem = MemoryStore()
    store = ApiKeyStore(mem)

    async def scenario() -> None:
        text = await cmd_keys_add(store, "alice", "admin", ["a", "b"], "100/1h", "30d", now=NOW)
        key = text.splitlines()[-1]
        assert re.fullmatch(r"er_[A-Za-z0-9_-]{43}", key)
        ident = await authenticate_api_key(store, key, NOW + 29 * 86400)
        assert ident.rate_limit == (100, 3600.0)
        assert (await store.lookup(key)).expires_at == NOW + 30 * 86400  # type: ignore[union-attr]
        key2 = (await cmd_keys_add(store, "bob", "viewer", [], None, None, now=NOW + 1)).splitlines()[-1]
        key_id = hash_key(key)[:12]

        listing = await cmd_keys_list(store, now=NOW)
        assert key_id in listing and "alice" in listing and "bob" in listing
        assert key not in listing and key2 not in listing
        assert [r.user for r in await store.records()] == ["alice", "bob"]

        shown = await cmd_keys_show(store, key_id, now=NOW)
        assert "alice" in shown and "active" in shown and key not in shown
        assert await cmd_keys_revoke(store, key_id) == f"revoked {key_id}"
        assert "revoked" in await cmd_keys_show(store, key_id, now=NOW)
        with pytest.raises(LookupError):
            await cmd_keys_show(store, "000000000000")
        with pytest.raises(LookupError):
            await cmd_keys_revoke(store, "nothex")

        await mem.set("apikey:" + "f" * 64, b"{broken")
        assert "1 malformed" in await cmd_keys_list(store, now=NOW)

    run(scenario())


def test_cli_rejects_bad_input() -> None:
    store = ApiKeyStore(MemoryStore())
    for bad in ("100", "x/1h", "0/1h", "100/1y", "-1/1h", "5/0s"):
        with pytest.raises(ValueError):
            run(cmd_keys_add(store, "u", "r", [], bad, None))
    with pytest.raises(ValueError):
        run(cmd_keys_add(store, "u\n", "r", [], None, None))
    assert parse_rate_limit("5/1m") == (5, 60.0)
    assert parse_rate_limit("100/1h") == (100, 3600.0)
    with pytest.raises(ValueError):
        run(cmd_keys_add(store, "u", "r", [], None, "0s"))


def test_each_stored_version_is_parsed_once_and_an_edit_is_seen_at_once() -> None:
    store = ApiKeyStore(MemoryStore())
    key, _ = run(store.add("u1", "svc", ["read"], now=NOW))
    first = run(authenticate_api_key(store, key, NOW))
    assert run(authenticate_api_key(store, key, NOW)) is first  # same stored bytes: the same identity
    name = "apikey:" + hash_key(key)
    doc = json.loads(run(store.store.get(name)))
    doc["role"] = "admin"
    run(store.store.set(name, json.dumps(doc).encode()))
    edited = run(authenticate_api_key(store, key, NOW))
    assert edited.role == "admin" and edited is not first
    assert edited.principal == first.principal == "key:" + hash_key(key)

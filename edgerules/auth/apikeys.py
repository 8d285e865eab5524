"""API keys: generation, hashing, strict stored records, authentication and the `edgerules keys` helpers.

Only SHA-256 hashes of keys are stored. A fast hash is right here (unlike passwords): keys are 256-bit
random strings from `secrets`, so there is nothing to brute-force and a slow KDF would only cost latency on
every request. The store is addressed by the hash, so a lookup compares no secret bytes; the one place a
derived value is compared (record key_id against the hash) uses `compare_digest`.

Records are parsed strictly: a missing field, a wrong type or an unknown field makes the record malformed,
and a malformed record is an authentication failure, never a pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from hmac import compare_digest
from typing import Any

from edgerules.auth.identity import AuthFailure, Identity, valid_identity_fields
from edgerules.kinds import EdgeRulesError
from edgerules.memo import remember
from edgerules.stores.base import Store
from edgerules.units import parse_duration

KEY_PREFIX = "er_"
_KEY_FORMAT = re.compile(r"er_[A-Za-z0-9_-]{43}")
_KEY_ID_FORMAT = re.compile(r"[0-9a-f]{12}")
RECORD_VERSION = 1
_FIELDS = frozenset(
    {"v", "key_id", "user", "role", "permissions", "active", "expires_at", "rate_limit", "created_at"}
)


class MalformedRecord(EdgeRulesError, ValueError):
    """A stored API-key record failed strict parsing."""


def generate_key() -> str:
    """A new API key: `er_` + 43 url-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """SHA-256 hex of the key (see the module docstring for why a fast hash is right)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    key_id: str  # first 12 hex characters of the key hash, for display and management
    user: str
    role: str
    permissions: tuple[str, ...]
    active: bool
    expires_at: float | None
    rate_limit: tuple[int, float] | None  # (limit, window seconds)
    created_at: float

    def to_json(self) -> bytes:
        doc = {
            "v": RECORD_VERSION,
            "key_id": self.key_id,
            "user": self.user,
            "role": self.role,
            "permissions": list(self.permissions),
            "active": self.active,
            "expires_at": self.expires_at,
            "rate_limit": list(self.rate_limit) if self.rate_limit is not None else None,
            "created_at": self.created_at,
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> ApiKeyRecord:
        """Parse a stored record; raise MalformedRecord on anything unexpected."""
        try:
            doc: Any = json.loads(data)
        except (ValueError, RecursionError, TypeError):
            raise MalformedRecord("record is not JSON") from None
        if not isinstance(doc, dict) or set(doc) != _FIELDS:
            raise MalformedRecord("record fields are wrong")
        if doc["v"] != RECORD_VERSION or isinstance(doc["v"], bool):
            raise MalformedRecord("unknown record version")
        if not isinstance(doc["key_id"], str) or not _KEY_ID_FORMAT.fullmatch(doc["key_id"]):
            raise MalformedRecord("bad key_id")
        if not valid_identity_fields(doc["user"], doc["role"], doc["permissions"]):
            raise MalformedRecord("bad user/role/permissions")
        if not isinstance(doc["permissions"], list):
            raise MalformedRecord("permissions must be a list")
        if not isinstance(doc["active"], bool):
            raise MalformedRecord("active must be a boolean")
        expires_at = doc["expires_at"]
        if expires_at is not None and not _is_number(expires_at):
            raise MalformedRecord("bad expires_at")
        if not _is_number(doc["created_at"]):
            raise MalformedRecord("bad created_at")
        rate_limit = doc["rate_limit"]
        if rate_limit is not None:
            if not (
                isinstance(rate_limit, list)
                and len(rate_limit) == 2
                and isinstance(rate_limit[0], int)
                and not isinstance(rate_limit[0], bool)
                and rate_limit[0] > 0
                and _is_number(rate_limit[1])
                and rate_limit[1] > 0
            ):
                raise MalformedRecord("bad rate_limit")
            rate_limit = (rate_limit[0], float(rate_limit[1]))
        return cls(
            key_id=doc["key_id"],
            user=doc["user"],
            role=doc["role"],
            permissions=tuple(doc["permissions"]),
            active=doc["active"],
            expires_at=float(expires_at) if expires_at is not None else None,
            rate_limit=rate_limit,
            created_at=float(doc["created_at"]),
        )


class ApiKeyStore:
    """API-key records in a Store, under `prefix` + SHA-256(key). StoreUnavailable propagates."""

    def __init__(self, store: Store, prefix: str = "apikey:") -> None:
        self.store = store
        self.prefix = prefix
        # Parsed records by their exact stored bytes, and identities by record: every request with a key reads
        # its record (so a revocation or an edit anywhere is seen at once) but parses and checks each stored
        # version once, and the same Identity object comes back for the same key (its identity headers are then
        # memoised too). Bounded; they live exactly as long as this key store (the engine state).
        self._parsed: dict[bytes, ApiKeyRecord] = {}
        self._identities: dict[int, tuple[ApiKeyRecord, Identity]] = {}

    async def add(
        self,
        user: str,
        role: str,
        permissions: Sequence[str] = (),
        *,
        rate_limit: tuple[int, float] | None = None,
        expires_at: float | None = None,
        now: float | None = None,
    ) -> tuple[str, ApiKeyRecord]:
        """Create a key. Returns (the key, shown once and never stored, its record)."""
        perms = list(permissions)
        if not valid_identity_fields(user, role, perms):
            raise ValueError("user and role must be non-empty printable strings, permissions a list of them")
        if rate_limit is not None and (rate_limit[0] <= 0 or rate_limit[1] <= 0):
            raise ValueError("rate limit must be positive")
        while True:
            key = generate_key()
            digest = hash_key(key)
            if not await self.store.keys(self.prefix + digest[:12]):
                break  # a 48-bit key_id collision is astronomically rare, but key_id must stay unique
        record = ApiKeyRecord(
            key_id=digest[:12],
            user=user,
            role=role,
            permissions=tuple(perms),
            active=True,
            expires_at=expires_at,
            rate_limit=(int(rate_limit[0]), float(rate_limit[1])) if rate_limit is not None else None,
            created_at=time.time() if now is None else now,
        )
        await self.store.set(self.prefix + digest, record.to_json())
        return key, record

    async def lookup(self, key: str) -> ApiKeyRecord | None:
        """The record for a presented key, None if unknown. Raises MalformedRecord, StoreUnavailable."""
        return (await self._lookup(key))[0]

    async def _lookup(self, key: str) -> tuple[ApiKeyRecord | None, str]:
        """(record or None, the key's hash)."""
        if not isinstance(key, str) or not _KEY_FORMAT.fullmatch(key):
            return None, ""  # cannot be one of ours: no store round trip for garbage
        digest = hash_key(key)
        data = await self.store.get(self.prefix + digest)
        if data is None:
            return None, digest
        record = self._parsed_record(data)
        if not compare_digest(record.key_id, digest[:12]):
            raise MalformedRecord("record stored under another key's hash")
        return record, digest

    def _parsed_record(self, data: bytes) -> ApiKeyRecord:
        record = self._parsed.get(data)
        if record is None:
            record = ApiKeyRecord.from_json(data)  # MalformedRecord is raised, never remembered
            remember(self._parsed, bytes(data), record)
        return record

    def _identity_of(self, record: ApiKeyRecord, principal: str) -> Identity:
        known = self._identities.get(
            id(record)
        )  # the entry holds the record: its id cannot be reused meanwhile
        if known is not None and known[0] is record and known[1].principal == principal:
            return known[1]
        identity = Identity(
            user=record.user,
            role=record.role,
            permissions=record.permissions,
            method="api_key",
            principal=principal,
            rate_limit=record.rate_limit,
        )
        remember(self._identities, id(record), (record, identity))
        return identity

    async def _find(self, key_id: str) -> tuple[str, ApiKeyRecord] | None:
        if not isinstance(key_id, str) or not _KEY_ID_FORMAT.fullmatch(key_id):
            return None
        names = await self.store.keys(self.prefix + key_id)
        if len(names) != 1:
            return None
        data = await self.store.get(names[0])
        if data is None:
            return None
        return names[0], ApiKeyRecord.from_json(data)

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        found = await self._find(key_id)
        return found[1] if found else None

    async def records(self) -> list[ApiKeyRecord]:
        """All well-formed records, oldest first (malformed ones are counted by `scan`)."""
        return (await self.scan())[0]

    async def scan(self) -> tuple[list[ApiKeyRecord], list[str]]:
        """(well-formed records oldest first, store keys of malformed records)."""
        records: list[ApiKeyRecord] = []
        malformed: list[str] = []
        for name in await self.store.keys(self.prefix):
            data = await self.store.get(name)
            if data is None:
                continue
            try:
                records.append(ApiKeyRecord.from_json(data))
            except MalformedRecord:
                malformed.append(name)
        records.sort(key=lambda r: (r.created_at, r.key_id))
        return records, malformed

    async def revoke(self, key_id: str) -> bool:
        """Mark a key inactive (the record stays for audit). False if there is no such key."""
        found = await self._find(key_id)
        if found is None:
            return False
        name, record = found
        if record.active:
            await self.store.set(name, dataclasses.replace(record, active=False).to_json())
        return True


async def authenticate_api_key(key_store: ApiKeyStore, key: str, now: float) -> Identity:
    """Identity for a presented API key, or AuthFailure. StoreUnavailable propagates (answer 503)."""
    try:
        record, digest = await key_store._lookup(key)
    except MalformedRecord:
        raise AuthFailure("malformed_record", "API key record is malformed") from None
    if record is None:
        raise AuthFailure("unknown_key", "invalid API key")
    if not record.active:
        raise AuthFailure("inactive", "API key revoked")
    if record.expires_at is not None and record.expires_at <= now:
        raise AuthFailure("expired", "API key expired")
    return key_store._identity_of(record, "key:" + digest)


# --- CLI helpers (the lead wires argparse; each returns the text to print) ---


def _positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"{text!r}: the duration must be positive")
    return seconds


def parse_rate_limit(text: str) -> tuple[int, float]:
    """`100/1h` -> (100, 3600.0)."""
    limit, sep, window = text.partition("/")
    if not sep or not limit.strip().isdigit() or int(limit) <= 0:
        raise ValueError(f"bad rate limit {text!r} (expected e.g. 100/1h)")
    return int(limit), _positive_duration(window)


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _describe(record: ApiKeyRecord, now: float) -> str:
    if not record.active:
        return "revoked"
    if record.expires_at is not None and record.expires_at <= now:
        return "expired"
    return "active"


def _rate(record: ApiKeyRecord) -> str:
    if record.rate_limit is None:
        return "-"
    return f"{record.rate_limit[0]}/{record.rate_limit[1]:g}s"


def _show(record: ApiKeyRecord, now: float) -> list[str]:
    return [
        f"key_id:      {record.key_id}",
        f"user:        {record.user}",
        f"role:        {record.role}",
        f"permissions: {', '.join(record.permissions) or '-'}",
        f"status:      {_describe(record, now)}",
        f"rate limit:  {_rate(record)}",
        f"created:     {_when(record.created_at)}",
        f"expires:     {_when(record.expires_at)}",
    ]


async def cmd_keys_add(
    store: ApiKeyStore,
    user: str,
    role: str,
    permissions: Sequence[str],
    rate_limit: str | None = None,
    expires: str | None = None,
    *,
    now: float | None = None,
) -> str:
    """Create a key; the LAST line of the returned text is the key itself (shown only this once)."""
    now = time.time() if now is None else now
    limit = parse_rate_limit(rate_limit) if rate_limit else None
    expires_at = now + _positive_duration(expires) if expires else None
    key, record = await store.add(user, role, permissions, rate_limit=limit, expires_at=expires_at, now=now)
    lines = _show(record, now)
    lines += ["", "Store this key now; it is not kept and cannot be shown again:", key]
    return "\n".join(lines)


async def cmd_keys_list(store: ApiKeyStore, *, now: float | None = None) -> str:
    now = time.time() if now is None else now
    records, malformed = await store.scan()
    rows = [("KEY_ID", "USER", "ROLE", "STATUS", "RATE", "EXPIRES")]
    rows += [(r.key_id, r.user, r.role, _describe(r, now), _rate(r), _when(r.expires_at)) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if malformed:
        lines.append(f"warning: {len(malformed)} malformed record(s) ignored (they never authenticate)")
    return "\n".join(lines)


async def cmd_keys_show(store: ApiKeyStore, key_id: str, *, now: float | None = None) -> str:
    """Details of one key. Raises LookupError if there is no such key_id (or its record is malformed)."""
    try:
        record = await store.get(key_id)
    except MalformedRecord:
        raise LookupError(f"API key {key_id!r} has a malformed record (it never authenticates)") from None
    if record is None:
        raise LookupError(f"no API key with id {key_id!r}")
    return "\n".join(_show(record, time.time() if now is None else now))


async def cmd_keys_revoke(store: ApiKeyStore, key_id: str) -> str:
    """Revoke one key. Raises LookupError if there is no such key_id (or its record is malformed)."""
    try:
        found = await store.revoke(key_id)
    except MalformedRecord:
        raise LookupError(f"API key {key_id!r} has a malformed record (it never authenticates)") from None
    if not found:
        raise LookupError(f"no API key with id {key_id!r}")
    return f"revoked {key_id}"

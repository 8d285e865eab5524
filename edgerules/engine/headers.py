"""Header fields across the edge: the one hop-by-hop definition and the one header-edit value.

Every path that sends header fields on (the buffered upstream client, streams and WebSocket upgrades forwarded
by mitmproxy, responses to the client, cache entries, and the offline tools `test`, `explain` and `replay`)
goes through the two functions here, so they cannot disagree:

1. `end_to_end(fields)` drops the hop-by-hop fields (RFC 9110 7.6.1): the fixed set `HOP_BY_HOP` and every
   field that a `Connection` field names. This runs on what the other side sent, *before* the edge adds
   anything, so a client (or an origin) naming `X-User-Id` or `X-Forwarded-For` in `Connection` cannot remove
   a header the edge itself adds.
2. `HeaderEdits.apply(fields)` applies the policy's and the edge's own edits in one fixed order:
   **remove** (every field of each name), then **add** (only when no field of that name is left), then
   **set** (every field of the name replaced by one, appended at the end; when a name is set more than once,
   the last value wins).

Both work on str pairs and on bytes pairs (mitmproxy's `Headers.fields`); names compare case-insensitively.
Pure: no mitmproxy, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# RFC 9110 7.6.1 (Connection, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding, Upgrade) and the fields
# that only make sense on one connection (Trailer, RFC 9110 6.6.2; the Proxy-Authenticate/Authorization pair,
# RFC 9110 11.7: consumed by the proxy they are addressed to).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "trailer",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
# Framing belongs to whoever writes the message: the buffered client writes its own Content-Length; on
# streams mitmproxy frames the body from these fields, so they stay there (`keep=`).
FRAMING = frozenset({"content-length", "transfer-encoding"})
# What a request to an origin never carries on from the client, besides the hop-by-hop fields: `Expect`
# (mitmproxy answers 100-continue itself and reads the whole body before the addon sends it).
REQUEST_ONLY_HERE = frozenset({"expect"})

_BYTES_HOP = frozenset(n.encode() for n in HOP_BY_HOP)


def connection_nominated(fields: Iterable[tuple[Any, Any]]) -> set[str]:
    """Lower-case names listed in every `Connection` field (str result for str or bytes fields)."""
    out: set[str] = set()
    for name, value in fields:
        if name.lower() in (b"connection", "connection"):
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            out.update(t.strip().lower() for t in text.split(",") if t.strip())
    return out


def end_to_end(
    fields: Sequence[tuple[Any, Any]],
    *,
    drop: Iterable[str] = (),
    keep: Iterable[str] = (),
) -> list[tuple[Any, Any]]:
    """`fields` without the hop-by-hop ones: `HOP_BY_HOP`, every field a `Connection` field names, and `drop`
    (lower-case names); `keep` (lower-case names) stays whatever the rules above say. Works on str or bytes
    pairs (all of one kind)."""
    if not fields:
        return []
    is_bytes = isinstance(fields[0][0], bytes)
    removed = set(HOP_BY_HOP)
    removed.update(drop)
    removed.update(connection_nominated(fields))
    removed.difference_update(keep)
    if is_bytes:
        removed_b = {n.encode("latin-1") for n in removed}
        return [(n, v) for n, v in fields if n.lower() not in removed_b]
    return [(n, v) for n, v in fields if n.lower() not in removed]


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """Edits to a header block, applied in this order: remove, add (only when absent), set (replace).

    `remove` holds lower-case names; `add` and `set` (name, value) pairs in the order the rules gave them.
    """

    remove: tuple[str, ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    set: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.remove or self.add or self.set)

    def then_set(self, pairs: Iterable[tuple[str, str]]) -> HeaderEdits:
        """These edits followed by more `set` pairs (they win over earlier ones of the same name)."""
        more = tuple(pairs)
        return HeaderEdits(self.remove, self.add, self.set + more) if more else self

    def without_set(self, names: Iterable[str]) -> HeaderEdits:
        """These edits minus the `set` pairs of `names` (lower-case)."""
        names = frozenset(names)
        return HeaderEdits(
            self.remove, self.add, tuple((n, v) for n, v in self.set if n.lower() not in names)
        )

    def apply(
        self, fields: Iterable[tuple[Any, Any]], encode: Callable[[str], Any] | None = None
    ) -> list[tuple[Any, Any]]:
        """The edited fields. `encode` turns the edits' str names and values into the fields' type (bytes
        fields: `encode=lambda s: s.encode("utf-8", "surrogateescape")`)."""
        remove: Iterable[Any] = self.remove
        add: Iterable[tuple[Any, Any]] = self.add
        to_set: Iterable[tuple[Any, Any]] = self.set
        if encode is not None:
            remove = [encode(n) for n in remove]
            add = [(encode(n), encode(v)) for n, v in add]
            to_set = [(encode(n), encode(v)) for n, v in to_set]
        final: dict[Any, tuple[Any, Any]] = {}
        for name, value in to_set:
            final[name.lower()] = (name, value)
        dropped = {n.lower() for n in remove}
        dropped.update(final)
        out = [(n, v) for n, v in fields if n.lower() not in dropped] if dropped else list(fields)
        if add:
            present = {n.lower() for n, _ in out}
            for name, value in add:
                low = name.lower()
                if low not in present and low not in final:
                    present.add(low)
                    out.append((name, value))
        out.extend(final.values())
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "remove": list(self.remove),
            "add": [list(p) for p in self.add],
            "set": [list(p) for p in self.set],
        }


NO_EDITS = HeaderEdits()


def forwarded_request_fields(
    client_fields: Sequence[tuple[Any, Any]],
    edits: HeaderEdits,
    *,
    framing_kept: bool,
    websocket: bool = False,
    encode: Callable[[str], Any] | None = None,
) -> list[tuple[Any, Any]]:
    """What the origin receives: the client's end-to-end fields, `Expect` dropped, then `edits`.

    `framing_kept`: mitmproxy forwards the body itself (streams, WebSockets) and frames it from
    Content-Length / Transfer-Encoding; the buffered client frames its own (and drops them). A WebSocket
    upgrade keeps `Upgrade` and sends `Connection: Upgrade` (the only hop-by-hop exchange the edge relays).
    """
    keep: set[str] = set(FRAMING) if framing_kept else set()
    drop = set(REQUEST_ONLY_HERE)
    if not framing_kept:
        drop.update(FRAMING)
    if websocket:
        keep.add("upgrade")
    out = edits.apply(end_to_end(client_fields, drop=drop, keep=keep), encode)
    if websocket:
        name, value = ("Connection", "Upgrade")
        out.append((encode(name), encode(value)) if encode is not None else (name, value))
    return out


def relayed_response_fields(
    origin_fields: Sequence[tuple[Any, Any]],
    edits: HeaderEdits,
    *,
    framing_kept: bool,
    upgrade: bool = False,
    encode: Callable[[str], Any] | None = None,
) -> list[tuple[Any, Any]]:
    """What the client receives from an origin's response: its end-to-end fields, then `edits`.

    `framing_kept`: mitmproxy relays a streamed body and frames it from these fields; a buffered response is
    framed by the edge (Content-Length of the body it holds). `upgrade`: a 101 to a WebSocket upgrade keeps
    `Upgrade` and says `Connection: Upgrade`."""
    keep: set[str] = set(FRAMING) if framing_kept else set()
    if upgrade:
        keep.add("upgrade")
    drop = () if framing_kept else FRAMING
    out = edits.apply(end_to_end(origin_fields, drop=drop, keep=keep), encode)
    if upgrade:
        out.append(
            (encode("Connection"), encode("Upgrade")) if encode is not None else ("Connection", "Upgrade")
        )
    return out

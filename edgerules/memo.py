"""Bounded memo tables for the request path.

Many pure results are remembered between requests (per policy plan or per module): geo lookups, error answers,
header-name checks, routes, parsed records. Their keys often come from clients (header names, coordinates,
tokens), so every table is bounded: when it is full it starts over, which keeps the hot entries cheap to find
again and the memory flat whatever clients send.
"""

from __future__ import annotations

LIMIT = 4096


def remember[K, V](table: dict[K, V], key: K, value: V, limit: int | None = None) -> V:
    """Store ``value`` under ``key`` in ``table`` (emptied first when it holds ``limit`` entries, ``LIMIT`` by
    default); returns it."""
    if len(table) >= (LIMIT if limit is None else limit):
        table.clear()
    table[key] = value
    return value

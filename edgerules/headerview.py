"""`HeaderView`: the one header type of the engine, the cache rules and the tools (no mitmproxy types).

A leaf: the HTTP caching rules (`edgerules.cache.http`) and the engine's values (`edgerules.engine.values`) both
build on it, so it imports nothing from edgerules.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["HeaderView"]


class HeaderView:
    """Case-insensitive, multi-valued, read-only view of request or response headers."""

    __slots__ = ("_index", "pairs")

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self.pairs: tuple[tuple[str, str], ...] = tuple(pairs)
        index: dict[str, list[str]] = {}
        for name, value in self.pairs:
            index.setdefault(name.lower(), []).append(value)
        self._index = index

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of the field (for fields that must appear once)."""
        values = self._index.get(name.lower())
        return values[0] if values else default

    def joined(self, name: str) -> str | None:
        """Every value of the field joined with ``", "`` (RFC 9110 5.3), None when absent."""
        values = self._index.get(name.lower())
        return None if values is None else ", ".join(values)

    def get_all(self, name: str) -> list[str]:
        return list(self._index.get(name.lower(), ()))

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._index

    def names(self) -> list[str]:
        return list(self._index)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """The (name, value) pairs as received: a view can go wherever a list of pairs is accepted."""
        return iter(self.pairs)

    def __repr__(self) -> str:
        return f"HeaderView({list(self.pairs)!r})"

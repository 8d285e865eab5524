"""Evaluating a compiled `model.Match` and media-type patterns."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from edgerules.engine.values import HeaderView
from edgerules.paths import split_path
from edgerules.policy.model import Match


def media_type(content_type: str | None) -> str | None:
    """`Application/JSON; charset=utf-8` -> `application/json`; None for a missing or malformed value."""
    if not content_type:
        return None
    value = content_type.split(";", 1)[0].strip().lower()
    if value.count("/") != 1:
        return None
    major, minor = value.split("/")
    if not major or not minor:
        return None
    return value


def media_matches(value: str | None, patterns: Iterable[str]) -> bool:
    """Compare as media types, never substrings: `audio/*` matches `audio/mpeg`, not `application/audio-x`."""
    if value is None:
        return False
    major = value.split("/", 1)[0]
    for pattern in patterns:
        if pattern == value or pattern == "*/*":
            return True
        if pattern.endswith("/*") and pattern[:-2] == major:
            return True
    return False


def matches(
    match: Match,
    *,
    path: str,
    method: str,
    headers: HeaderView,
    request_class: str | None = None,
    country: str | None = None,
) -> bool:
    return match_request(match, path, method, headers, request_class, country)


def match_request(
    match: Match,
    path: str,
    method: str,
    headers: HeaderView,
    request_class: str | None,
    country: str | None,
    segments: Sequence[str] | None = None,
) -> bool:
    """`matches` with positional arguments: the engine calls it for every rule of every request.

    `segments` is `paths.split_path(path)` (the engine splits each request's path once, not once per rule).
    Every condition must hold; the cheap set lookups go before the path match.
    """
    if match.methods is not None and method not in match.methods:
        return False
    if match.classes is not None and request_class not in match.classes:
        return False
    if match.countries is not None and country not in match.countries:
        return False
    paths = match.paths
    if paths is not None:
        if segments is None:
            segments = split_path(path)
        firsts = paths.first_segments
        if firsts is not None and (segments[0] if segments else "") not in firsts:
            return False
        if paths.match(path, segments) is None:
            return False
    if match.content_types is not None and not media_matches(
        media_type(headers.get("content-type")), match.content_types
    ):
        return False
    for cond in match.headers:
        value = headers.get(cond.name)
        if cond.present is not None:
            if (value is not None) != cond.present:
                return False
            continue
        if value is None:
            return False
        if cond.equals is not None and value != cond.equals:
            return False
        if cond.contains is not None and cond.contains not in value:
            return False
        if cond.regex is not None and cond.regex.fullmatch(value) is None:  # type: ignore[attr-defined]
            return False
    return True

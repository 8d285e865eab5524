"""Country -> ordered regions -> the first healthy ones, with the seed's routing headers."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from edgerules.engine.values import Target, TraceEntry
from edgerules.policy.model import LatencyTarget, Policy, Region

EARTH_RADIUS_KM = 6371.0


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    d_lat = math.radians(lat2 - lat1)
    d_lon = math.radians(lon2 - lon1)
    a = (
        math.sin(d_lat / 2) ** 2
        + math.cos(math.radians(lat1)) * math.cos(math.radians(lat2)) * math.sin(d_lon / 2) ** 2
    )
    return EARTH_RADIUS_KM * 2 * math.atan2(math.sqrt(a), math.sqrt(1 - a))


def latency_target_ms(spec: LatencyTarget, region: Region, lat: float | None, lon: float | None) -> int:
    """The seed's estimate: 1 ms per 100 km of great-circle distance + 30 ms, clamped to 50..200 ms."""
    if lat is None or lon is None or region.lat is None or region.lon is None:
        return round(spec.default_ms)
    distance = haversine_km(lat, lon, region.lat, region.lon)
    estimate = round(distance / 100 * spec.per_100km_ms) + spec.base_ms
    return round(max(spec.min_ms, min(spec.max_ms, estimate)))


def candidates(policy: Policy, country: str) -> tuple[str, ...]:
    return policy.routing.countries.get(country, policy.routing.default)


def choose_targets(
    policy: Policy,
    country: str,
    lat: float | None,
    lon: float | None,
    path_and_query: str,
    is_healthy: Callable[[str], bool],
) -> tuple[list[Target], tuple[str, ...]]:
    """Healthy targets in failover order (at most 1 + retries), and the full candidate list.

    An empty target list means every candidate is down; the caller applies `when_all_unhealthy`.
    """
    routing = policy.routing
    order = candidates(policy, country)
    labels = routing.priorities
    targets: list[Target] = []
    for index, name in enumerate(order):
        if not is_healthy(name):
            continue
        label = labels[index] if index < len(labels) else labels[-1]
        targets.append(make_target(policy, policy.regions[name], label, lat, lon, path_and_query))
        if len(targets) > routing.retries:
            break
    return targets, order


def make_target(
    policy: Policy,
    region: Region,
    priority: str,
    lat: float | None,
    lon: float | None,
    path_and_query: str,
    degraded: bool = False,
) -> Target:
    routing = policy.routing
    names = routing.headers
    headers: list[tuple[str, str]] = []
    if names.target_region:
        headers.append((names.target_region, region.name))
    if names.priority:
        headers.append((names.priority, priority))
    if names.latency_target:
        headers.append(
            (names.latency_target, str(latency_target_ms(routing.latency_target, region, lat, lon)))
        )
    if degraded and names.degraded:
        headers.append((names.degraded, "true"))
    if routing.host_rewrite == "upstream":
        default_port = 443 if region.scheme == "https" else 80
        host = region.host if region.port == default_port else f"{region.host}:{region.port}"
        headers.append(("Host", host))
    return Target(
        region=region.name,
        priority=priority,
        scheme=region.scheme,
        host=region.host,
        port=region.port,
        path=region.base_path + path_and_query,
        headers=tuple(headers),
        degraded=degraded,
    )


class RoutePlan(NamedTuple):
    """Where requests with the same (country, coordinates, candidates' health) go, before their path is known.

    A pure function of the policy and those facts, so the engine memoises it per policy; `Forward.targets` turns it
    into the request's targets.
    """

    targets: tuple[Target, ...]  # `path` holds only the region's base path; empty: refuse (all down, reject)
    order: tuple[str, ...]
    note: TraceEntry | None  # the routing trace entry (None when refused)


def plan_route(
    policy: Policy, country: str, lat: float | None, lon: float | None, healthy: tuple[bool, ...]
) -> RoutePlan:
    """`choose_targets` plus `when_all_unhealthy`, for candidates whose health is `healthy` (in order)."""
    routing = policy.routing
    order = candidates(policy, country)
    up = dict(zip(order, healthy, strict=True))
    targets, _ = choose_targets(policy, country, lat, lon, "", up.__getitem__)
    if targets:
        skipped = order[: order.index(targets[0].region)]
        detail = f"skipped unhealthy {list(skipped)}" if skipped else f"candidates {list(order)}"
        note = TraceEntry("routing", targets[0].region, targets[0].priority, detail, routing.source)
        return RoutePlan(tuple(targets), order, note)
    if routing.when_all_unhealthy == "reject" or not order:
        return RoutePlan((), order, None)
    primary = policy.regions[order[0]]
    fallback = make_target(policy, primary, "fallback", lat, lon, "", degraded=True)
    detail = "every candidate unhealthy: primary, degraded"
    return RoutePlan((fallback,), order, TraceEntry("routing", order[0], "fallback", detail, routing.source))

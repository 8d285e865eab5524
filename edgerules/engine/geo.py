"""Where the client is: a country header believed only from trusted peers (or a MaxMind database), else a default.

An attacker-chosen country can only select among the policy's own routing lists (routing looks it up in a
dict of region names), never an arbitrary host.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

from edgerules.engine.values import HeaderView
from edgerules.policy.model import Geo


@functools.lru_cache(maxsize=4096)
def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(geo: Geo, client_ip: str) -> bool:
    if not geo.trusted_proxies:
        return False
    address = _parse_ip(client_ip)
    if address is None:
        return False
    return any(address.version == net.version and address in net for net in geo.trusted_proxies)


def _coordinate(value: str | None, limit: float) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if number != number or abs(number) > limit:  # NaN or out of range
        return None
    return number


def locate(
    geo: Geo, client_ip: str, headers: HeaderView, trusted: bool | None = None
) -> tuple[str, float | None, float | None, str]:
    """(country, lat, lon, how) for this client; `trusted` is `is_trusted(geo, client_ip)` when the caller
    already knows it."""
    if trusted is None:
        trusted = is_trusted(geo, client_ip)
    if trusted:
        country = headers.get(geo.country_header) if geo.country_header else None
        if country is not None:
            country = country.strip().upper()
            if len(country) == 2 and country.isascii() and country.isalpha():
                lat = _coordinate(headers.get(geo.latitude_header), 90.0) if geo.latitude_header else None
                lon = _coordinate(headers.get(geo.longitude_header), 180.0) if geo.longitude_header else None
                return country, lat, lon, f"header {geo.country_header} from trusted peer {client_ip}"
    if geo.maxmind_db:
        found = _maxmind_lookup(geo.maxmind_db, client_ip)
        if found is not None:
            return (*found, f"MaxMind database {geo.maxmind_db}")
    return geo.default_country, None, None, "default country"


def _maxmind_lookup(path: str, client_ip: str) -> tuple[str, float | None, float | None] | None:
    reader = _maxmind_reader(path)
    if reader is None:
        return None
    try:
        record = reader.get(client_ip)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    country = (record.get("country") or record.get("registered_country") or {}).get("iso_code")
    location = record.get("location") or {}
    if not isinstance(country, str):
        return None
    return country.upper(), location.get("latitude"), location.get("longitude")


@functools.lru_cache(maxsize=4)
def _maxmind_reader(path: str) -> Any:
    """The optional `maxminddb` package reads GeoIP2/GeoLite2 .mmdb files; without it the default applies."""
    try:
        import maxminddb  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        return maxminddb.open_database(path)
    except (OSError, ValueError):
        return None

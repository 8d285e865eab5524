"""The addon's own HTTP client to origins: timeouts, failover to the next region, passive health.

mitmproxy 12 has no upstream connect/read timeout and answers connection failures with its own HTML 502, which
an addon cannot replace. So for buffered requests the addon sends the request itself (aiohttp, pooled
connections) and hands mitmproxy a finished response.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import aiohttp
from yarl import URL

from edgerules.engine.values import Target

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    target: Target
    elapsed: float  # seconds, from sending to the full body


class UpstreamError(Exception):
    """`kind` is "connect" (nothing was sent), "timeout" or "protocol" (the origin broke the exchange)."""

    def __init__(self, kind: str, detail: str, target: Target) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.target = target


class UpstreamClient:
    def __init__(self, *, max_connections: int = 256) -> None:
        self._max = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max, limit_per_host=0, keepalive_timeout=15, ttl_dns_cache=60
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def send(
        self,
        method: str,
        target: Target,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        *,
        timeout: float,
        connect_timeout: float,
    ) -> UpstreamResponse:
        url = URL.build(scheme=target.scheme, host=target.host, port=target.port, encoded=True).join(
            URL(target.path, encoded=True)
        )
        client_timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        started = time.perf_counter()
        session = self._get_session()
        try:
            async with session.request(
                method,
                url,
                headers=list(headers),
                data=body if body else None,
                allow_redirects=False,
                timeout=client_timeout,
                compress=None,
            ) as response:
                payload = await response.read()
                raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers]
                return UpstreamResponse(
                    status=response.status,
                    reason=response.reason or "",
                    headers=[(k, v) for k, v in raw if k.lower() not in HOP_BY_HOP],
                    body=payload,
                    target=target,
                    elapsed=time.perf_counter() - started,
                )
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError("connect", str(exc.os_error or exc), target) from exc
        except aiohttp.ServerTimeoutError as exc:
            kind = "connect" if "connect" in str(exc).lower() else "timeout"
            raise UpstreamError(kind, str(exc) or "timed out", target) from exc
        except TimeoutError as exc:
            raise UpstreamError("timeout", f"no answer within {timeout:g}s", target) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError("protocol", f"{type(exc).__name__}: {exc}", target) from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def request_headers(
    original: Iterable[tuple[str, str]],
    set_headers: Iterable[tuple[str, str]],
    remove: Iterable[str],
    target: Target,
) -> list[tuple[str, str]]:
    """The headers the origin gets: the client's, minus removed and hop-by-hop ones, with ours set on top."""
    replaced = {name.lower() for name, _ in set_headers} | {name.lower() for name, _ in target.headers}
    dropped = set(remove) | replaced | HOP_BY_HOP | {"expect"}
    out = [(n, v) for n, v in original if n.lower() not in dropped]
    out.extend(set_headers)
    out.extend(target.headers)
    return out

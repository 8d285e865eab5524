"""The flood (issue #16): everything hostile at once against one edge, on loopback, for a bounded time.

For FLOOD_SECONDS, at the same time:

- oversized declared uploads (Content-Length 200 MiB, a little of it sent) from OVERSIZED clients in a loop;
- chunked uploads to the streamed audio path at 8x its limit from STREAMERS clients in a loop;
- SLOWLORIS connections dribbling header lines (reconnecting when the edge closes them);
- endless request heads (past the 64 KiB head limit);
- requests for large origin answers: over the edge's origin cap (refused) and under it (served);
- ordinary JWT requests, one after the other, counted.

Asserted: every ordinary request is answered 200 (and there are many); the edge's RSS grows by less than
RSS_BOUND_MIB over its value before the flood; every hostile request ends with 413/431/408 or a closed
connection (never a 200, never a 5xx); the large answers are 502 `upstream_too_large` over the cap and 200
under it. One JSON line of figures is printed (run with -s to see it; docs/resilience.md has a run's figures).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.resilience.test_hostile import base_headers, bearer_token, responses
from tests.support.origins import Origins, start_origins
from tests.support.policies import ENV, write_policy
from tests.support.proxy import Proxy, http, start_edge_process

pytestmark = [pytest.mark.e2e, pytest.mark.resilience]

FLOOD_SECONDS = float(os.environ.get("EDGERULES_FLOOD_SECONDS", "12"))
MAX_BODY = 64 * 1024
OVERSIZED = 10
STREAMERS = 4
SLOWLORIS = 300
ENDLESS = 3
RSS_BOUND_MIB = 120
OPTIONS = {
    "edgerules_head_timeout": "2",
    "edgerules_keepalive_timeout": "5",
    "edgerules_body_timeout": "3",
    "edgerules_max_connections": "2000",
    "edgerules_max_origin_body": "4m",
}


def vmrss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


@pytest.fixture(scope="module")
def origins() -> Iterator[Origins]:
    started = start_origins(["us-east-1", "us-west-2"])
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture(params=["mitmdump", "serve"])
def edge(request, origins, tmp_path) -> Iterator[Proxy]:
    # Health checks and origin timeouts with room for a loaded box: the edge's own event loop is what the
    # flood slows down, and a probe that times out for that would mark healthy regions down.
    overlay = {
        "validation": {"max_body_size": MAX_BODY},
        "health": {"interval": "2s", "timeout": "1.5s"},
        "routing": {"timeout": "15s"},
    }
    policy = write_policy(tmp_path, {name: o.port for name, o in origins.items()}, overlay)
    proxy = start_edge_process(policy, environ=ENV, serve=request.param == "serve", options=OPTIONS)
    try:
        yield proxy
    finally:
        proxy.stop()


class Flood:
    def __init__(self, proxy: Proxy, deadline: float) -> None:
        self.host, self.port = proxy.host, proxy.port
        self.deadline = deadline
        self.outcomes: dict[str, Counter[str]] = {}

    def note(self, kind: str, received: bytes, closed: bool) -> None:
        statuses = [status for status, _ in responses(received)]
        outcome = ",".join(map(str, statuses)) if statuses else ("closed" if closed else "open")
        self.outcomes.setdefault(kind, Counter())[outcome] += 1

    def live(self) -> bool:
        return time.monotonic() < self.deadline

    async def _read_all(self, reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, bool]:
        received = bytearray()
        try:
            async with asyncio.timeout(timeout):
                while chunk := await reader.read(65536):
                    received += chunk
            return bytes(received), True
        except TimeoutError:
            return bytes(received), False
        except (ConnectionError, OSError):
            return bytes(received), True

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> bool:
        try:
            writer.write(data)
            await writer.drain()
            return True
        except (ConnectionError, OSError):
            return False

    async def oversized(self) -> None:
        head = (
            b"POST /api/v1/calls/flood-oversized HTTP/1.1\r\n"
            + base_headers()
            + b"Content-Type: application/json\r\n"
            + f"Content-Length: {200 * 1024 * 1024}\r\n\r\n".encode()
        )
        while self.live():
            reader, writer = await asyncio.open_connection(self.host, self.port)
            await self._send(writer, head + b"x" * 65536)
            received, closed = await self._read_all(reader, 10)
            writer.close()
            self.note("oversized upload", received, closed)
            await asyncio.sleep(0.2)

    async def streamer(self) -> None:
        head = (
            b"POST /voice/stream HTTP/1.1\r\n"
            + base_headers()
            + b"Content-Type: audio/wav\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (4096, b"s" * 4096)
        while self.live():
            reader, writer = await asyncio.open_connection(self.host, self.port)
            ok = await self._send(writer, head)
            sent = 0
            while ok and sent < 8 * MAX_BODY:
                ok = await self._send(writer, chunk)
                sent += 4096
                await asyncio.sleep(0.001)
            if ok:
                await self._send(writer, b"0\r\n\r\n")
            received, closed = await self._read_all(reader, 10)
            writer.close()
            self.note("chunked stream upload", received, closed)
            await asyncio.sleep(0.2)

    async def slowloris(self, i: int) -> None:
        while self.live():
            reader, writer = await asyncio.open_connection(self.host, self.port)
            ok = await self._send(writer, f"GET /api/v1/calls/slow-{i} HTTP/1.1\r\nHost: edge\r\n".encode())
            received = b""
            closed = False
            while ok and self.live():
                received, closed = await self._read_all(reader, 1.0)
                if closed or received:
                    break
                ok = await self._send(writer, b"X-Slow: a\r\n")
            if not closed and not received and ok:
                continue_reading = max(0.0, self.deadline - time.monotonic())
                received, closed = await self._read_all(reader, min(continue_reading, 0.1))
            writer.close()
            if received or closed or not ok:
                self.note("slowloris", received, closed or not ok)
            await asyncio.sleep(1.0)  # a few hundred held open, not a connection storm

    async def endless_head(self) -> None:
        line = b"X-Filler: " + b"e" * 1000 + b"\r\n"
        while self.live():
            reader, writer = await asyncio.open_connection(self.host, self.port)
            ok = await self._send(writer, b"GET /api/v1/calls/endless HTTP/1.1\r\nHost: edge\r\n")
            sent = 0
            while ok and sent < 1024 * 1024:
                ok = await self._send(writer, line * 16)
                sent += len(line) * 16
            received, closed = await self._read_all(reader, 10)
            writer.close()
            self.note("endless head", received, closed or not ok)
            await asyncio.sleep(0.5)

    async def large_answers(self, size: int, kind: str) -> None:
        token = bearer_token()
        while self.live():
            reader, writer = await asyncio.open_connection(self.host, self.port)
            request = (
                b"GET /api/v1/calls/flood-large HTTP/1.1\r\nHost: edge\r\nCF-IPCountry: US\r\n"
                + f"Authorization: Bearer {token}\r\nX-Test-Body-Size: {size}\r\nConnection: close\r\n\r\n".encode()
            )
            await self._send(writer, request)
            received, closed = await self._read_all(reader, 15)
            writer.close()
            self.note(kind, received, closed)
            await asyncio.sleep(0.2)

    async def run(self) -> None:
        tasks = [self.oversized() for _ in range(OVERSIZED)]
        tasks += [self.streamer() for _ in range(STREAMERS)]
        tasks += [self.slowloris(i) for i in range(SLOWLORIS)]
        tasks += [self.endless_head() for _ in range(ENDLESS)]
        tasks += [self.large_answers(8 << 20, "large answer over the cap") for _ in range(2)]
        tasks += [self.large_answers(1 << 20, "large answer under the cap") for _ in range(2)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors[:3]


def test_flood_of_hostile_clients_while_ordinary_requests_are_served(edge):
    pid = edge.pid
    assert pid is not None
    headers = {"CF-IPCountry": "US", "Authorization": "Bearer " + bearer_token()}
    for i in range(10):  # warm up: caches, connection pools, first-use imports
        assert http("GET", f"{edge.url}/api/v1/calls/warm-{i}", headers).status == 200
    baseline = vmrss_mib(pid)
    deadline = time.monotonic() + FLOOD_SECONDS
    flood = Flood(edge, deadline)

    peak = [baseline]
    ordinary: Counter[str] = Counter()
    stop = threading.Event()

    def sample_rss() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], vmrss_mib(pid))

    def ordinary_requests() -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            try:
                r = http("GET", f"{edge.url}/api/v1/calls/ordinary-{n}", headers, timeout=15)
                ordinary[str(r.status)] += 1
            except OSError as exc:
                ordinary[type(exc).__name__] += 1
            time.sleep(0.02)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    client = threading.Thread(target=ordinary_requests, daemon=True)
    sampler.start()
    client.start()
    started = time.monotonic()
    try:
        asyncio.run(flood.run())
    finally:
        client.join(30)
        stop.set()
        sampler.join(5)
    elapsed = time.monotonic() - started
    after = vmrss_mib(pid)

    figures = {
        "runner": "serve" if "serve" in " ".join(edge.process.argv) else "mitmdump",
        "seconds": round(elapsed, 1),
        "ordinary": dict(ordinary),
        "hostile": {kind: dict(counts) for kind, counts in sorted(flood.outcomes.items())},
        "rss_mib": {"before": round(baseline, 1), "peak": round(peak[0], 1), "after": round(after, 1)},
    }
    print(json.dumps(figures))
    if path := os.environ.get("EDGERULES_RESILIENCE_REPORT"):
        with open(path, "a") as handle:
            handle.write(json.dumps({"scenario": "flood", **figures}) + "\n")

    health = [
        line
        for line in edge.output().splitlines()
        if ("region" in line and "unhealthy" in line) or "ejected" in line
    ]
    # ordinary requests kept being served, every one of them
    assert set(ordinary) == {"200"}, (ordinary, health[-5:])
    assert ordinary["200"] >= 3, ordinary
    # memory stayed flat
    assert peak[0] - baseline < RSS_BOUND_MIB, figures["rss_mib"]
    # every hostile request ended with a refusal or a closed connection
    allowed = {
        "oversized upload": {"413", "closed"},
        "chunked stream upload": {"413", "closed"},
        "slowloris": {"408", "closed"},
        "endless head": {"431", "closed"},
        "large answer over the cap": {"502"},
        "large answer under the cap": {"200"},
    }
    for kind, counts in flood.outcomes.items():
        assert set(counts) <= allowed[kind], (kind, dict(counts))
    for kind in allowed:
        assert sum(flood.outcomes.get(kind, Counter()).values()) >= 1, f"no {kind} finished"
    assert flood.outcomes["oversized upload"]["413"] >= 1
    assert flood.outcomes["slowloris"]["408"] >= 1
    assert edge.running

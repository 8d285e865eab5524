"""`render_report`: table, JSON and HTML from known rollups, and the HTML in real headless Chromium."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edgerules.observe.metrics import HOUR, HourRollup, MetricsConfig, RequestRecord, rollup_fields
from edgerules.observe.report import nice_ticks, render_report

T0 = 1_714_521_600.0  # 2024-05-01 00:00 UTC
H0 = int(T0 // HOUR)
BUCKETS = MetricsConfig().latency_buckets_ms


def _rec(
    hour: int, i: int, region: str, latency: float, *, error: bool, cache: str, country: str
) -> RequestRecord:
    status = 503 if error else 200
    return RequestRecord(
        (H0 + hour) * HOUR + i, latency, None, region, cache, country, "api", status, "GET", None,
        "upstream_timeout" if error else None,
    )  # fmt: skip


def known_rollups() -> list[HourRollup]:
    """Three hours: 10/20/30 requests, 1/0/3 errors, two regions, three countries, ~half the lookups hit."""
    plan = {0: (10, 1), 1: (20, 0), 2: (30, 3)}
    out = []
    for hour, (n, errors) in plan.items():
        recs = [
            _rec(
                hour,
                i,
                "us-east-1" if i % 2 == 0 else "eu-west-1",
                20.0 if i % 2 == 0 else 80.0,
                error=i < errors,
                cache="HIT" if i % 4 < 2 else "MISS",
                country=("US", "DE", "IN")[i % 3],
            )
            for i in range(n)
        ]
        out.append(HourRollup(H0 + hour, dict(rollup_fields(recs, BUCKETS))))
    return out


# --------------------------------------------------------------------------------------------------------
# table and json


def test_table_has_hours_and_exact_totals() -> None:
    text = render_report(known_rollups(), "table", title="Edge")
    lines = text.splitlines()
    assert lines[0] == "Edge: 2024-05-01 00:00 - 03:00 UTC (3 h)"
    hour_rows = [line for line in lines if line.startswith("2024-05-01")]
    assert len(hour_rows) == 3
    assert re.match(r"2024-05-01 02:00\s+30\s+3\s+10\.0%\s+53\.3%", hour_rows[2])
    total = lines[-1]
    assert re.match(r"total\s+60\s+4\s+6\.7%\s+53\.3%", total)
    assert "us-east-1 50%, eu-west-1 50%" in total or "eu-west-1 50%, us-east-1 50%" in total


def test_table_and_json_handle_no_data() -> None:
    text = render_report([], "table")
    assert "no requests recorded" in text and text.splitlines()[-1].split()[:2] == ["total", "0"]
    doc = json.loads(render_report([], "json"))
    assert doc["hours"] == [] and doc["totals"]["requests"] == 0 and doc["period"]["from"] is None


def test_json_is_machine_readable_and_exact() -> None:
    doc = json.loads(render_report(list(reversed(known_rollups())), "json", title="t"))
    assert [h["hour"] for h in doc["hours"]] == [H0, H0 + 1, H0 + 2]  # sorted
    assert [h["requests"] for h in doc["hours"]] == [10, 20, 30]
    assert [h["errors"] for h in doc["hours"]] == [1, 0, 3]
    totals = doc["totals"]
    assert totals["requests"] == 60 and totals["errors"] == 4 and totals["hours"] == 3
    assert totals["regions"] == {"eu-west-1": 30, "us-east-1": 30}
    assert totals["countries"] == {"US": 21, "DE": 20, "IN": 19}  # largest first
    assert totals["cache_hits"] == 32 and totals["cache_hit_ratio"] == 0.533
    assert totals["statuses"] == {"2xx": 56, "5xx": 4}
    assert totals["latency_buckets_ms"]["le_25"] == 30 and totals["latency_buckets_ms"]["le_100"] == 30
    # us-east-1 is all 20 ms (bucket 10..25): p50 interpolates to 17.5
    assert totals["region_latency_ms"]["us-east-1"]["p50"] == pytest.approx(17.5)
    assert doc["period"] == {
        "from": "2024-05-01T00:00:00Z",
        "to": "2024-05-01T03:00:00Z",
        "hours_with_data": 3,
    }


def test_unknown_format_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown report format"):
        render_report([], "xml")  # type: ignore[arg-type]


def test_nice_ticks() -> None:
    assert nice_ticks(30) == [0, 10, 20, 30]
    assert nice_ticks(640) == [0, 200, 400, 600, 800]
    assert nice_ticks(0) == [0.0, 1.0]
    assert nice_ticks(100)[-1] >= 100


# --------------------------------------------------------------------------------------------------------
# html (static checks)


def test_html_is_self_contained_and_accessible() -> None:
    page = render_report(known_rollups(), "html", title="Edge <report> & co")
    assert page.startswith("<!DOCTYPE html>") and '<html lang="en">' in page
    assert "<title>Edge &lt;report&gt; &amp; co</title>" in page  # escaped
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")
    assert "https://" not in page and '<link rel="stylesheet"' not in page
    assert page.count('<svg class="chart"') == 5
    assert page.count('role="img"') == 5 and page.count("<desc id=") == 5
    assert page.count('data-series="requests"') == 3 + 3  # requests chart + country chart bars
    assert "Hour (UTC)" in page and "Latency (ms)" in page and "Hit ratio (%)" in page


def test_html_empty_data_is_graceful() -> None:
    page = render_report([], "html")
    assert "No requests were recorded in this period." in page
    assert "<svg" not in page


# --------------------------------------------------------------------------------------------------------
# html in headless chromium (DevTools protocol over aiohttp's websocket client)


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]

INSPECT_JS = """
(() => {
  const charts = {};
  for (const svg of document.querySelectorAll('svg.chart')) {
    const series = {};
    for (const el of svg.querySelectorAll('.bar, .point, .line')) {
      const key = el.tagName + ':' + el.dataset.series;
      const box = el.getBBox();
      series[key] = series[key] || {count: 0, drawn: 0};
      series[key].count += 1;
      if (box.width > 0 && box.height > 0) series[key].drawn += 1;
    }
    charts[svg.dataset.chart] = {
      series,
      width: svg.getBoundingClientRect().width,
      title: svg.querySelector('title').textContent,
      labelledby: svg.getAttribute('aria-labelledby'),
      axisLabels: [...svg.querySelectorAll('.axis-label')].map(t => t.textContent),
    };
  }
  return {
    title: document.title,
    charts,
    tableRows: document.querySelectorAll('tbody tr').length,
    empty: document.querySelectorAll('.empty').length,
    resources: performance.getEntriesByType('resource').map(e => e.name),
    scripts: document.scripts.length,
  };
})()
"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


class Browser:
    """One headless Chromium process and one page, driven over the DevTools protocol."""

    def __init__(self, executable: str, profile: Path) -> None:
        self.executable = executable
        self.profile = profile
        self.proc: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.events: list[dict[str, Any]] = []
        self._next_id = 0

    async def __aenter__(self) -> Browser:
        self.proc = await asyncio.create_subprocess_exec(
            self.executable,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={self.profile}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        port = None
        async with asyncio.timeout(30):
            while port is None:
                line = (await self.proc.stderr.readline()).decode(errors="replace")
                if not line:
                    raise RuntimeError("chromium exited before DevTools started")
                if m := re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line):
                    port = int(m[1])
        # keep draining stderr so chromium never blocks on a full pipe
        self._drain = asyncio.create_task(self._drain_stderr())
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        page = next(t for t in targets if t["type"] == "page")
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        for domain in ("Runtime", "Log", "Page"):
            await self.send(f"{domain}.enable")
        return self

    async def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while await self.proc.stderr.readline():
            pass

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.send("Browser.close")
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()
        if self.proc is not None:
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._drain.cancel()

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.ws is not None
        self._next_id += 1
        ident = self._next_id
        await self.ws.send_json({"id": ident, "method": method, "params": params or {}})
        async with asyncio.timeout(30):
            while True:
                msg = await self.ws.receive_json()
                if msg.get("id") == ident:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg.get("result", {})
                if "method" in msg:
                    self.events.append(msg)

    async def wait_event(self, method: str) -> dict[str, Any]:
        assert self.ws is not None
        async with asyncio.timeout(30):
            while True:
                if found := [e for e in self.events if e["method"] == method]:
                    self.events.remove(found[0])
                    return found[0]
                msg = await self.ws.receive_json()
                if "method" in msg:
                    self.events.append(msg)

    async def open(self, url: str) -> None:
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1200, "height": 1600, "deviceScaleFactor": 1, "mobile": False},
        )
        await self.send("Page.navigate", {"url": url})
        await self.wait_event("Page.loadEventFired")

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluate failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def console_errors(self) -> list[str]:
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif e["method"] == "Runtime.exceptionThrown":
                out.append(str(p.get("exceptionDetails", {}).get("text")))
            elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(str(p["entry"].get("text")))
        return out

    async def screenshot(self, path: Path) -> None:
        result = await self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})
        path.write_bytes(base64.b64decode(result["data"]))


@pytest.mark.browser
def test_html_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    executable = _chromium()
    if executable is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    report = tmp_path / "report.html"
    report.write_text(render_report(known_rollups(), "html", title="Edge report"), encoding="utf-8")
    empty = tmp_path / "empty.html"
    empty.write_text(render_report([], "html", title="Empty"), encoding="utf-8")
    shot = tmp_path / "report.png"

    async def main() -> tuple[dict[str, Any], dict[str, Any], list[str], list[str]]:
        async with Browser(executable, tmp_path / "profile") as browser:
            await browser.open(report.as_uri())
            found = await browser.evaluate(INSPECT_JS)
            await browser.screenshot(shot)
            await browser.open(empty.as_uri())
            found_empty = await browser.evaluate(INSPECT_JS)
            errors = browser.console_errors()
            # the harness itself must see console errors, or "no errors" above proves nothing
            await browser.evaluate("console.error('probe-error')")
            await browser.send("Runtime.evaluate", {"expression": "1"})
            probe = browser.console_errors()
        return found, found_empty, errors, probe

    found, found_empty, errors, probe = asyncio.run(main())
    assert errors == []
    assert any("probe-error" in p for p in probe)

    assert found["title"] == "Edge report"
    assert found["scripts"] == 0 and found["resources"] == []  # nothing fetched: self-contained
    charts = found["charts"]
    assert set(charts) == {"requests", "latency", "cache", "region-latency", "countries"}
    for name, chart in charts.items():
        assert chart["width"] > 300, name  # laid out, not collapsed
        assert chart["title"] and len(chart["labelledby"].split()) == 2, name

    requests = charts["requests"]["series"]
    assert requests["rect:requests"] == {"count": 3, "drawn": 3}
    assert requests["rect:errors"] == {"count": 3, "drawn": 2}  # the hour without errors has a 0-height bar
    assert charts["requests"]["axisLabels"] == ["Requests", "Hour (UTC)"]

    latency = charts["latency"]["series"]
    for p in ("p50", "p95", "p99"):
        assert latency[f"circle:{p}"] == {"count": 3, "drawn": 3}
        assert latency[f"polyline:{p}"]["count"] == 1
    assert charts["latency"]["axisLabels"] == ["Latency (ms)", "Hour (UTC)"]

    assert charts["cache"]["series"]["circle:hit ratio"] == {"count": 3, "drawn": 3}
    region = charts["region-latency"]["series"]
    assert all(region[f"rect:{p}"] == {"count": 2, "drawn": 2} for p in ("p50", "p95", "p99"))
    assert charts["countries"]["series"]["rect:requests"] == {"count": 3, "drawn": 3}
    assert found["tableRows"] == 3

    assert found_empty["charts"] == {} and found_empty["empty"] == 1

    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_html_charts_fill_hours_without_traffic() -> None:
    first, _, third = known_rollups()
    page = render_report([first, third], "html")
    requests_chart = page[page.index('data-chart="requests"') : page.index('data-chart="latency"')]
    assert requests_chart.count('data-series="requests"') == 3  # the quiet hour is a zero column
    latency_chart = page[page.index('data-chart="latency"') : page.index('data-chart="cache"')]
    assert latency_chart.count("<polyline") == 0  # no line drawn across the gap
    assert latency_chart.count('<circle class="point"') == 6
    assert page.count("<tr><td>2024-05-01") == 2  # the table lists hours with data only

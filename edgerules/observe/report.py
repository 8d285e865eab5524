"""`edgerules report`: hourly rollups as a text table, JSON, or one self-contained HTML page.

The HTML page has no external assets and no JavaScript: the charts are inline SVG drawn here, with titles,
axis labels and a `<title>` tooltip on every bar and point, and a data table for screen readers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Literal

from edgerules.observe.metrics import HOUR, HourRollup

Format = Literal["table", "json", "html"]

# Okabe-Ito palette: distinguishable with the common colour-vision deficiencies
BLUE, VERMILLION, GREEN, ORANGE, PURPLE, SKY = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#E69F00",
    "#CC79A7",
    "#56B4E9",
)
PCT_COLOURS = {"p50": GREEN, "p95": ORANGE, "p99": VERMILLION}


def render_report(
    rollups: Sequence[HourRollup], fmt: Format = "table", *, title: str = "edgerules report"
) -> str:
    ordered = sorted(rollups, key=lambda r: r.hour)
    if fmt == "table":
        return _table(ordered, title)
    if fmt == "json":
        return _json(ordered, title)
    if fmt == "html":
        return _html(ordered, title)
    raise ValueError(f"unknown report format {fmt!r} (table, json or html)")


# ------------------------------------------------------------------------------------------------------------
# shared helpers


def _hour_label(hour: int) -> str:
    return datetime.fromtimestamp(hour * HOUR, UTC).strftime("%Y-%m-%d %H:00")


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _top(counts: dict[str, int], total: int, n: int = 3) -> str:
    if not counts or not total:
        return "-"
    items = list(counts.items())
    text = ", ".join(f"{k} {v / total * 100:.0f}%" for k, v in items[:n])
    return text + (f" +{len(items) - n}" if len(items) > n else "")


def _period(rollups: Sequence[HourRollup]) -> str:
    if not rollups:
        return "no data"
    first, last = rollups[0].hour, rollups[-1].hour
    end = _hour_label(last + 1)
    if end[:10] == _hour_label(first)[:10]:
        end = end[11:]
    return f"{_hour_label(first)} - {end} UTC ({last - first + 1} h)"


# ------------------------------------------------------------------------------------------------------------
# table


def _hour_figures(label: str, r: HourRollup, count: Callable[[int], str]) -> list[str]:
    """One row of the hourly table (text and HTML): label, counts written with `count`, ratios, latencies."""
    p = r.percentiles()
    return [
        label,
        count(r.requests),
        count(r.errors),
        _pct(r.error_ratio),
        _pct(r.cache_hit_ratio),
        _ms(r.avg_latency_ms),
        _ms(p["p50"]),
        _ms(p["p95"]),
        _ms(p["p99"]),
        _top(r.breakdown("region"), r.requests),
    ]


def _table(rollups: Sequence[HourRollup], title: str) -> str:
    header = (
        "hour (UTC)",
        "requests",
        "errors",
        "err %",
        "hit %",
        "avg ms",
        "p50",
        "p95",
        "p99",
        "top regions",
    )
    rows: list[tuple[str, ...]] = []

    def row(label: str, r: HourRollup) -> tuple[str, ...]:
        return tuple(_hour_figures(label, r, str))

    for r in rollups:
        rows.append(row(_hour_label(r.hour), r))
    total = HourRollup.combine(rollups)
    widths = [max(len(x) for x in col) for col in zip(header, *rows, row("total", total), strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i in (0, len(cells) - 1) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    out = [f"{title}: {_period(rollups)}", "", line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    if not rollups:
        out.append("(no requests recorded in this period)")
    out += [line(["-" * w for w in widths]), line(row("total", total))]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------------------
# json


def _json(rollups: Sequence[HourRollup], title: str) -> str:
    doc = {
        "title": title,
        "period": {
            "from": rollups[0].start_iso if rollups else None,
            "to": datetime.fromtimestamp((rollups[-1].hour + 1) * HOUR, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            if rollups
            else None,
            "hours_with_data": len(rollups),
        },
        "hours": [r.to_json() for r in rollups],
        "totals": HourRollup.combine(rollups).to_json(),
    }
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


# ------------------------------------------------------------------------------------------------------------
# html: svg charts


W, H = 720, 300
ML, MR, MT, MB = 70, 16, 16, 64  # plot margins: room for the y labels and two-line x labels


def nice_ticks(maximum: float, count: int = 5) -> list[float]:
    """0 and round steps (1, 2, 2.5, 5 x 10^n) up to at least `maximum`."""
    if maximum <= 0 or not math.isfinite(maximum):
        return [0.0, 1.0]
    raw = maximum / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    ticks = [0.0]
    while ticks[-1] < maximum - 1e-9:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _fmt_tick(value: float, unit: str = "") -> str:
    if unit == "%":
        return f"{value:.0f}%"
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 10_000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _fmt_value(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 or value == int(value) else f"{value:.1f}"


def _svg_open(chart: str, title: str, desc: str, height: int = H) -> list[str]:
    ident = f"chart-{chart}"
    return [
        f'<svg class="chart" data-chart="{chart}" viewBox="0 0 {W} {height}" role="img" '
        f'aria-labelledby="{ident}-title {ident}-desc" preserveAspectRatio="xMidYMid meet">',
        f'<title id="{ident}-title">{escape(title)}</title>',
        f'<desc id="{ident}-desc">{escape(desc)}</desc>',
    ]


def _y_axis(ticks: list[float], unit: str, label: str, height: int = H) -> list[str]:
    top = ticks[-1] or 1.0
    plot_h = height - MT - MB
    out = []
    for t in ticks:
        y = MT + plot_h - t / top * plot_h
        out.append(f'<line class="grid" x1="{ML}" x2="{W - MR}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(
            f'<text class="tick" x="{ML - 8}" y="{y + 4:.1f}" text-anchor="end">{_fmt_tick(t, unit)}</text>'
        )
    cy = MT + plot_h / 2
    out.append(
        f'<text class="axis-label" x="14" y="{cy:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {cy:.1f})">{escape(label)}</text>'
    )
    return out


def _x_axis(hours: Sequence[int], centres: Sequence[float], height: int = H) -> list[str]:
    """Hour labels at round steps (at most about 12), the date under the first one and at each new day."""
    step = next((s for s in (1, 2, 3, 4, 6, 12, 24, 48, 72, 168) if len(hours) / s <= 12), 336)
    base = height - MB
    out = [f'<line class="axis" x1="{ML}" x2="{W - MR}" y1="{base}" y2="{base}"/>']
    last_day = None
    for i in (i for i, h in enumerate(hours) if h % step == 0 or step == 1):
        dt = datetime.fromtimestamp(hours[i] * HOUR, UTC)
        day = dt.strftime("%b %d")
        x = centres[i]
        out.append(f'<text class="tick" x="{x:.1f}" y="{base + 16}" text-anchor="middle">{dt:%H:00}</text>')
        if day != last_day:
            out.append(
                f'<text class="tick day" x="{x:.1f}" y="{base + 34}" text-anchor="middle">{day}</text>'
            )
            last_day = day
    out.append(
        f'<text class="axis-label" x="{(ML + W - MR) / 2:.1f}" y="{height - 6}" text-anchor="middle">'
        "Hour (UTC)</text>"
    )
    return out


def _legend(items: Sequence[tuple[str, str]]) -> str:
    spans = "".join(
        f'<span class="key"><span class="swatch" style="background:{colour}"></span>{escape(name)}</span>'
        for name, colour in items
    )
    return f'<div class="legend" aria-hidden="true">{spans}</div>'


def _requests_chart(rollups: Sequence[HourRollup]) -> str:
    n = len(rollups)
    ticks = nice_ticks(max(r.requests for r in rollups))
    top = ticks[-1]
    plot_w, plot_h = W - ML - MR, H - MT - MB
    slot = plot_w / n
    bar = max(1.0, min(28.0, slot * 0.4))
    out = _svg_open(
        "requests",
        "Requests and errors per hour",
        f"Bar chart over {n} hours: for each hour a bar for requests and one for errors.",
    )
    out += _y_axis(ticks, "", "Requests")
    centres = []
    for i, r in enumerate(rollups):
        cx = ML + slot * (i + 0.5)
        centres.append(cx)
        label = _hour_label(r.hour)
        for series, value, colour, x in (
            ("requests", r.requests, BLUE, cx - bar),
            ("errors", r.errors, VERMILLION, cx),
        ):
            h = value / top * plot_h
            out.append(
                f'<rect class="bar" data-series="{series}" x="{x:.1f}" y="{MT + plot_h - h:.1f}" '
                f'width="{bar:.1f}" height="{h:.1f}" fill="{colour}"><title>{label} UTC: {value} {series}'
                "</title></rect>"
            )
    out += _x_axis([r.hour for r in rollups], centres)
    out.append("</svg>")
    return _figure(
        "Requests and errors per hour", "\n".join(out), _legend([("Requests", BLUE), ("Errors", VERMILLION)])
    )


def _line_chart(
    chart: str,
    title: str,
    desc: str,
    hours: Sequence[int],
    series: Sequence[tuple[str, str, Sequence[float | None]]],
    *,
    unit: str,
    y_label: str,
    fixed_top: float | None = None,
) -> str:
    n = len(hours)
    values = [v for _, _, vs in series for v in vs if v is not None]
    ticks = nice_ticks(fixed_top if fixed_top is not None else max(values, default=0.0))
    top = ticks[-1] or 1.0
    plot_w, plot_h = W - ML - MR, H - MT - MB
    slot = plot_w / n
    centres = [ML + slot * (i + 0.5) for i in range(n)]
    out = _svg_open(chart, title, desc)
    out += _y_axis(ticks, unit, y_label)
    radius = 3.5 if n <= 48 else 1.6
    for name, colour, vs in series:
        points = [
            (i, centres[i], MT + plot_h - v / top * plot_h, v) for i, v in enumerate(vs) if v is not None
        ]
        # one polyline per run of consecutive hours with data: a gap stays a gap
        runs: list[list[tuple[float, float]]] = []
        for j, (i, x, y, _) in enumerate(points):
            if j == 0 or points[j - 1][0] != i - 1:
                runs.append([])
            runs[-1].append((x, y))
        for run in runs:
            if len(run) > 1:
                path = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
                out.append(f'<polyline class="line" data-series="{name}" points="{path}" stroke="{colour}"/>')
        for i, x, y, v in points:
            shown = f"{v:.1f}%" if unit == "%" else f"{_ms(v)} ms"
            out.append(
                f'<circle class="point" data-series="{name}" cx="{x:.1f}" cy="{y:.1f}" r="{radius}" '
                f'fill="{colour}"><title>{_hour_label(hours[i])} UTC: {escape(name)} {shown}</title></circle>'
            )
    out += _x_axis(hours, centres)
    out.append("</svg>")
    return _figure(title, "\n".join(out), _legend([(name, colour) for name, colour, _ in series]))


def _hbar_chart(
    chart: str,
    title: str,
    desc: str,
    rows: Sequence[tuple[str, Sequence[tuple[str, str, float, str]]]],
    *,
    x_label: str,
    legend: Sequence[tuple[str, str]] = (),
) -> str:
    """Horizontal bars: one group per row label, one bar per (series, colour, value, tooltip)."""
    per_group = max(len(bars) for _, bars in rows)
    bar_h = 16 if per_group > 1 else 22
    group_h = per_group * bar_h + 14
    ml = 120
    height = MT + len(rows) * group_h + 50
    values = [v for _, bars in rows for _, _, v, _ in bars]
    ticks = nice_ticks(max(values, default=0.0))
    top = ticks[-1] or 1.0
    plot_w = W - ml - MR - 56
    out = _svg_open(chart, title, desc, height)
    base = height - 50
    for t in ticks:
        x = ml + t / top * plot_w
        out.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{MT}" y2="{base}"/>')
        out.append(
            f'<text class="tick" x="{x:.1f}" y="{base + 16}" text-anchor="middle">{_fmt_tick(t)}</text>'
        )
    for gi, (label, bars) in enumerate(rows):
        y0 = MT + gi * group_h + 6
        out.append(
            f'<text class="tick row-label" x="{ml - 8}" y="{y0 + len(bars) * bar_h / 2 + 4:.1f}" '
            f'text-anchor="end">{escape(label)}</text>'
        )
        for bi, (series, colour, value, tip) in enumerate(bars):
            w = value / top * plot_w
            y = y0 + bi * bar_h
            out.append(
                f'<rect class="bar" data-series="{escape(series)}" x="{ml}" y="{y:.1f}" width="{w:.1f}" '
                f'height="{bar_h - 3}" fill="{colour}"><title>{escape(tip)}</title></rect>'
            )
            out.append(
                f'<text class="value" x="{ml + w + 4:.1f}" y="{y + bar_h / 2 + 2:.1f}">'
                f"{_fmt_value(value)}</text>"
            )
    out.append(f'<line class="axis" x1="{ml}" x2="{ml}" y1="{MT}" y2="{base}"/>')
    out.append(
        f'<text class="axis-label" x="{ml + plot_w / 2:.1f}" y="{height - 8}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    out.append("</svg>")
    return _figure(title, "\n".join(out), _legend(legend) if legend else "")


def _figure(caption: str, svg: str, legend: str = "") -> str:
    return f'<figure class="card">\n<figcaption>{escape(caption)}</figcaption>\n{legend}\n{svg}\n</figure>'


def _region_latency_chart(total: HourRollup) -> str:
    regions = list(total.breakdown("region"))[:10]
    rows = []
    for region in regions:
        p = total.percentiles(region)
        bars = [
            (name, PCT_COLOURS[name], p[name] or 0.0, f"{region}: {name} {_ms(p[name])} ms")
            for name in ("p50", "p95", "p99")
        ]
        rows.append((region, bars))
    if not rows:
        return ""
    return _hbar_chart(
        "region-latency",
        "Latency percentiles by region",
        "Horizontal bars: p50, p95 and p99 latency in milliseconds for each region over the whole period.",
        rows,
        x_label="Latency (ms)",
        legend=[(k, c) for k, c in PCT_COLOURS.items()],
    )


def _country_chart(total: HourRollup) -> str:
    countries = list(total.breakdown("country").items())
    if len(countries) > 12:
        countries = [*countries[:11], ("other", sum(n for _, n in countries[11:]))]
    rows = [
        (name, [("requests", SKY, float(n), f"{name}: {n} requests ({n / total.requests * 100:.1f}%)")])
        for name, n in countries
    ]
    if not rows:
        return ""
    return _hbar_chart(
        "countries",
        "Requests by client country",
        "Horizontal bars: number of requests per client country over the whole period, largest first.",
        rows,
        x_label="Requests",
    )


# ------------------------------------------------------------------------------------------------------------
# html: page


CSS = """
:root { --bg:#f6f7f9; --card:#fff; --ink:#1c2430; --muted:#5b6675; --grid:#e3e7ec; --axis:#8792a2; }
@media (prefers-color-scheme: dark) {
  :root { --bg:#12161c; --card:#1b2129; --ink:#e7ebf0; --muted:#9aa5b4; --grid:#2b333d; --axis:#6b7684; }
}
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; }
main { max-width:1180px; margin:0 auto; padding:28px 20px 48px; }
h1 { font-size:26px; margin:0 0 4px; }
.period { color:var(--muted); margin:0 0 20px; }
.kpis { display:grid; grid-template-columns:repeat(auto-fit,minmax(190px,1fr)); gap:12px;
  margin-bottom:18px; }
.kpi { background:var(--card); border-radius:10px; padding:12px 14px; box-shadow:0 1px 2px rgba(0,0,0,.08); }
.kpi .label { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.kpi .value { font-size:22px; font-weight:650; font-variant-numeric:tabular-nums; white-space:nowrap; }
.kpi .value.small { font-size:18px; line-height:1.65; }
.grid2 { display:grid; grid-template-columns:repeat(auto-fit,minmax(520px,1fr)); gap:16px; }
.card { background:var(--card); border-radius:10px; padding:14px 16px 8px; margin:0;
  box-shadow:0 1px 2px rgba(0,0,0,.08); }
figcaption { font-weight:600; margin-bottom:4px; }
.legend { display:flex; gap:14px; flex-wrap:wrap; font-size:13px; color:var(--muted); margin-bottom:2px; }
.swatch { display:inline-block; width:11px; height:11px; border-radius:2px; margin-right:5px;
  vertical-align:-1px; }
svg.chart { width:100%; height:auto; display:block; }
svg .grid { stroke:var(--grid); stroke-width:1; }
svg .axis { stroke:var(--axis); stroke-width:1; }
svg .tick { fill:var(--muted); font-size:13px; }
svg .value { fill:var(--ink); font-size:12px; }
svg .axis-label { fill:var(--ink); font-size:14px; font-weight:600; }
svg .line { fill:none; stroke-width:2; }
svg .bar:hover, svg .point:hover { opacity:.75; }
.empty { background:var(--card); border-radius:10px; padding:36px; text-align:center; color:var(--muted); }
table { width:100%; border-collapse:collapse; background:var(--card); border-radius:10px; overflow:hidden;
  font-variant-numeric:tabular-nums; font-size:13px; margin-top:16px; box-shadow:0 1px 2px rgba(0,0,0,.08); }
caption { text-align:left; font-weight:600; padding:10px 0; }
th, td { padding:6px 10px; text-align:right; border-bottom:1px solid var(--grid); }
th:first-child, td:first-child, th:last-child, td:last-child { text-align:left; }
thead th { color:var(--muted); font-weight:600; }
tfoot td { font-weight:650; }
footer { color:var(--muted); font-size:12px; margin-top:18px; }
"""


def _kpis(total: HourRollup) -> str:
    p = total.percentiles()
    items = [
        ("Requests", f"{total.requests:,}"),
        ("Errors", f"{total.errors:,} ({_pct(total.error_ratio)})"),
        ("Cache hit ratio", _pct(total.cache_hit_ratio)),
        ("Avg latency", f"{_ms(total.avg_latency_ms)} ms"),
        ("p50 / p95 / p99 ms", f"{_ms(p['p50'])} / {_ms(p['p95'])} / {_ms(p['p99'])}"),
    ]
    tiles = "".join(
        f'<div class="kpi"><div class="label">{escape(k)}</div>'
        f'<div class="value{" small" if len(v) > 14 else ""}">{escape(v)}</div></div>'
        for k, v in items
    )
    return f'<section class="kpis" aria-label="Totals">{tiles}</section>'


def _html_table(rollups: Sequence[HourRollup], total: HourRollup) -> str:
    head = [
        "Hour (UTC)",
        "Requests",
        "Errors",
        "Error %",
        "Cache hit %",
        "Avg ms",
        "p50",
        "p95",
        "p99",
        "Top regions",
    ]

    def cells(label: str, r: HourRollup) -> str:
        values = _hour_figures(label, r, lambda n: f"{n:,}")
        return "<tr>" + "".join(f"<td>{escape(v)}</td>" for v in values) + "</tr>"

    body = "\n".join(cells(_hour_label(r.hour), r) for r in rollups)
    return (
        '<table aria-label="Hourly figures"><caption>Hourly figures</caption><thead><tr>'
        + "".join(f'<th scope="col">{h}</th>' for h in head)
        + f"</tr></thead>\n<tbody>\n{body}\n</tbody><tfoot>{cells('Total', total)}</tfoot></table>"
    )


def _html(rollups: Sequence[HourRollup], title: str) -> str:
    total = HourRollup.combine(rollups)
    if total.requests == 0:
        content = '<p class="empty" role="status">No requests were recorded in this period.</p>'
    else:
        # charts get every hour of the period (an hour without traffic is a zero, not a missing column)
        by_hour = {r.hour: r for r in rollups}
        span = range(rollups[0].hour, rollups[-1].hour + 1)
        every = [by_hour.get(h, HourRollup(h, {})) for h in span]
        hours = list(span)
        charts = [
            _requests_chart(every),
            _line_chart(
                "latency",
                "Latency percentiles per hour",
                "Line chart: p50, p95 and p99 latency in milliseconds for each hour.",
                hours,
                [
                    (name, colour, [r.percentile(q) for r in every])
                    for (name, colour), q in zip(PCT_COLOURS.items(), (0.5, 0.95, 0.99), strict=True)
                ],
                unit="ms",
                y_label="Latency (ms)",
            ),
            _line_chart(
                "cache",
                "Cache hit ratio per hour",
                "Line chart: share of cache lookups served from the edge cache, in percent, for each hour.",
                hours,
                [
                    (
                        "hit ratio",
                        GREEN,
                        [None if r.cache_hit_ratio is None else r.cache_hit_ratio * 100 for r in every],
                    )
                ],
                unit="%",
                y_label="Hit ratio (%)",
                fixed_top=100.0,
            ),
            _region_latency_chart(total),
            _country_chart(total),
        ]
        content = (
            _kpis(total)
            + '\n<section class="grid2" aria-label="Charts">\n'
            + "\n".join(c for c in charts if c)
            + "\n</section>\n"
            + _html_table(rollups, total)
        )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<link rel="icon" href="data:,">
<title>{escape(title)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<h1>{escape(title)}</h1>
<p class="period">{escape(_period(rollups))}</p>
{content}
<footer>Generated by edgerules from hourly rollups.
Percentiles are estimated from latency histogram buckets.</footer>
</main>
</body>
</html>
"""

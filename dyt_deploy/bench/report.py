"""Benchmark reports: report.json (versioned schema), report.md (tables), report.html (plots).

The HTML page is self-contained: plots are inline SVG, no script or network access needed.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

SCHEMA_ID = "dyt-deploy/bench-report"
SCHEMA_VERSION = 1
_PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]

_SUMMARY = {"type": "object", "required": ["count", "median_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms",
                                           "throughput"],
            "properties": {k: {"type": "number"} for k in ("median_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms",
                                                           "throughput")}}
REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["schema", "schema_version", "created_at", "machine", "versions", "settings", "results"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "schema_version": {"const": SCHEMA_VERSION},
        "created_at": {"type": "string"},
        "machine": {"type": "object", "required": ["cpus", "platform"]},
        "versions": {"type": "object"},
        "settings": {"type": "object", "required": ["arch", "variants", "baseline", "warmup", "iters", "threads"]},
        "results": {"type": "array", "items": {
            "type": "object", "required": ["group", "shape", "variant", "summary", "median_ci_ms"],
            "properties": {"summary": _SUMMARY, "median_ci_ms": {"type": "array", "minItems": 2, "maxItems": 2},
                           "ratio_to_baseline": {"type": ["object", "null"],
                                                 "required": ["ratio", "low", "high"]}}}},
        "headline": {"type": "array"},
        "layer": {"type": ["object", "null"]},
        "profile": {"type": ["object", "null"]},
    },
}


def write_reports(report: dict, out_dir: Path) -> dict[str, Path]:
    """Write report.json, report.md and report.html into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md", "html": out_dir / "report.html"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["md"].write_text(markdown(report))
    paths["html"].write_text(html_page(report))
    return paths


def _ratio_text(row: dict) -> str:
    r = row.get("ratio_to_baseline")
    return "baseline" if r is None else f"{r['ratio']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"


def results_table(report: dict) -> list[list[str]]:
    """Rows: group, shape, variant, median, p90, p99, throughput, ratio to baseline [95% CI]."""
    rows = []
    for row in sorted(report["results"], key=lambda r: (r["group"], _shape_key(r["shape"]), r["variant"])):
        s = row["summary"]
        rows.append([row["group"], row["shape"], row["variant"], f"{s['median_ms']:.3f}", f"{s['p90_ms']:.3f}",
                     f"{s['p99_ms']:.3f}", f"{s['throughput']:.1f}", _ratio_text(row)])
    return rows


RESULT_COLUMNS = ["runner / setting", "shape", "variant", "median ms", "p90 ms", "p99 ms", "items/s",
                  "ratio to baseline [95% CI]"]


def _shape_key(shape: str) -> tuple:
    return tuple(int(p.split("=")[1]) if "=" in p else 0 for p in shape.split(","))


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# dyt-bench: {s['arch']}", "",
             f"Variants {', '.join(s['variants'])}; baseline **{s['baseline']}**; {s['iters']} interleaved rounds "
             f"after {s['warmup']} warm-up calls; threads {s['threads']}; onnxruntime graph optimization "
             f"`{s.get('ort_opt_level', 'all')}`. Machine: {report['machine'].get('cpu', '?')} "
             f"({report['machine']['cpus']} CPUs). Ratio < 1: faster than the baseline.", "",
             "| " + " | ".join(RESULT_COLUMNS) + " |", "|" + " --- |" * len(RESULT_COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in results_table(report)]
    if report.get("headline"):
        lines += ["", f"## Best DyT export against {s['baseline']} with its best fusions (onnxruntime)", "",
                  "| shape | baseline | median ms | best DyT | median ms | ratio [95% CI] |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for h in report["headline"]:
            r = h["ratio"]
            lines.append(f"| {h['shape']} | {h['baseline']} | {h['baseline_median_ms']:.3f} | {h['contender']} | "
                         f"{h['contender_median_ms']:.3f} | {r['ratio']:.3f} [{r['low']:.3f}, {r['high']:.3f}] |")
    fusions = s.get("fusions") or {}
    if fusions:
        lines += ["", "Fusions applied by each optimizer (fused operator counts):", ""]
        for key, counts in fusions.items():
            lines.append(f"- {key}: {', '.join(f'{k} {v}' for k, v in counts.items()) or 'none'}")
    if report.get("layer"):
        layer = report["layer"]
        lines += ["", f"## The norm layer alone (torch, memory copy {layer['copy_gbps']:.1f} GB/s)", "",
                  "| kind | tokens | width | median µs | GB/s | % of copy |", "| --- | --- | --- | --- | --- | --- |"]
        for r in layer["rows"]:
            lines.append(f"| {r['kind']} | {r['tokens']} | {r['width']} | {r['median_us']:.1f} | {r['gbps']:.2f} | "
                         f"{100 * r['gbps'] / layer['copy_gbps']:.0f}% |")
    if report.get("profile"):
        lines += ["", "## Where onnxruntime spends the time", "", "| model | norm-related share | top ops (µs/run) |",
                  "| --- | --- | --- |"]
        for key, p in report["profile"].items():
            top = ", ".join(f"{k} {v:.0f}" for k, v in list(p["op_us_per_run"].items())[:5])
            lines.append(f"| {key} | {100 * p['norm_share']:.1f}% | {top} |")
    for note in report.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


# ---- HTML with inline SVG plots ----

def _color(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


def bar_chart(title: str, bars: list[tuple[str, float, float, float]], unit: str = "ms") -> str:
    """Horizontal bars (label, value, low, high) with whiskers from low to high."""
    width, left, bar_h = 640, 180, 22
    height = 30 + bar_h * len(bars) + 20
    top = max((b[3] for b in bars), default=1.0) or 1.0
    scale = (width - left - 110) / top  # room right of the longest whisker for its value
    parts = [f'<svg class="plot" width="{width}" height="{height}" role="img"><title>{html.escape(title)}</title>',
             f'<text x="4" y="16" font-weight="bold">{html.escape(title)}</text>']
    for i, (label, value, low, high) in enumerate(bars):
        y = 30 + i * bar_h
        parts += [f'<text x="4" y="{y + 15}">{html.escape(label)}</text>',
                  f'<rect x="{left}" y="{y + 3}" width="{value * scale:.1f}" height="{bar_h - 8}" fill="{_color(i)}"/>',
                  f'<line x1="{left + low * scale:.1f}" x2="{left + high * scale:.1f}" y1="{y + 11}" y2="{y + 11}" '
                  'stroke="black"/>',
                  f'<text x="{left + high * scale + 4:.1f}" y="{y + 15}">{value:.3g} {unit}</text>']
    parts.append("</svg>")
    return "".join(parts)


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str) -> str:
    """One polyline per series of (x, y) points."""
    width, height, pad = 640, 300, 50
    points = [p for s in series.values() for p in s]
    if not points:
        return ""
    x_max = max(p[0] for p in points) or 1.0
    y_max = max(p[1] for p in points) * 1.1 or 1.0

    def xy(p: tuple[float, float]) -> str:
        return f"{pad + p[0] / x_max * (width - 2 * pad):.1f},{height - pad - p[1] / y_max * (height - 2 * pad):.1f}"

    parts = [f'<svg class="plot" width="{width}" height="{height}" role="img"><title>{html.escape(title)}</title>',
             f'<text x="4" y="16" font-weight="bold">{html.escape(title)}</text>',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
             f'<text x="{width / 2}" y="{height - 10}">{html.escape(x_label)}</text>',
             f'<text x="4" y="{pad - 8}">{html.escape(y_label)} (max {y_max / 1.1:.3g})</text>']
    for i, (name, pts) in enumerate(series.items()):
        path = " ".join(xy(p) for p in sorted(pts))
        parts.append(f'<polyline fill="none" stroke="{_color(i)}" stroke-width="2" points="{path}"/>')
        parts.append(f'<text x="{width - pad - 150}" y="{pad + 14 * i}" fill="{_color(i)}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def stacked_bars(title: str, rows: dict[str, dict[str, float]], top: int = 6) -> str:
    """One 100% bar per row, split by category (the ``top`` largest overall, the rest as 'other')."""
    totals: dict[str, float] = {}
    for shares in rows.values():
        for k, v in shares.items():
            totals[k] = totals.get(k, 0.0) + v
    keep = sorted(totals, key=totals.get, reverse=True)[:top]
    width, left, bar_h = 640, 180, 24
    height = 50 + bar_h * len(rows) + 20 * ((len(keep) + 4) // 4)
    parts = [f'<svg class="plot" width="{width}" height="{height}" role="img"><title>{html.escape(title)}</title>',
             f'<text x="4" y="16" font-weight="bold">{html.escape(title)}</text>']
    for i, (label, shares) in enumerate(rows.items()):
        y, x, total = 30 + i * bar_h, float(left), sum(shares.values()) or 1.0
        parts.append(f'<text x="4" y="{y + 15}">{html.escape(label)}</text>')
        parts_of = [(k, shares.get(k, 0.0)) for k in keep] + [("other", sum(v for k, v in shares.items()
                                                                             if k not in keep))]
        for j, (_, value) in enumerate(parts_of):
            w = value / total * (width - left - 20)
            parts.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{bar_h - 8}" fill="{_color(j)}"/>')
            x += w
    legend_y = 40 + bar_h * len(rows)
    for j, name in enumerate([*keep, "other"]):
        parts.append(f'<text x="{4 + (j % 4) * 150}" y="{legend_y + 16 * (j // 4)}" fill="{_color(j)}">'
                     f'■ {html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def html_page(report: dict) -> str:
    s = report["settings"]
    sections = []
    groups = sorted({(r["group"], r["shape"]) for r in report["results"]}, key=lambda g: (g[0], _shape_key(g[1])))
    for group, shape in groups:
        rows = sorted((r for r in report["results"] if r["group"] == group and r["shape"] == shape),
                      key=lambda r: r["variant"])
        bars = [(r["variant"], r["summary"]["median_ms"], *r["median_ci_ms"]) for r in rows]
        sections.append(bar_chart(f"{group}, {shape}: median latency, 95% CI", bars))
    for group in sorted({r["group"] for r in report["results"]}):
        series: dict[str, list[tuple[float, float]]] = {}
        for r in report["results"]:
            if r["group"] == group:
                batch = dict(p.split("=") for p in r["shape"].split(","))["batch"]
                series.setdefault(r["variant"], []).append((float(batch), r["summary"]["median_ms"]))
        sections.append(line_chart(f"{group}: median latency against batch size", series, "batch", "ms"))
    if report.get("profile"):
        shares = {k: p["op_us_per_run"] for k, p in report["profile"].items()}
        sections.append(stacked_bars("onnxruntime time by op type", shares))
    table = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                    for row in results_table(report))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in RESULT_COLUMNS)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dyt-bench: {html.escape(s['arch'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}svg{{display:block;margin:1em 0}}
svg text{{font-size:12px}}</style></head><body>
<h1>dyt-bench: {html.escape(s['arch'])}</h1>
<p>Baseline {html.escape(s['baseline'])}; {s['iters']} interleaved rounds after {s['warmup']} warm-up calls;
threads {s['threads']}; {html.escape(str(report['machine'].get('cpu', '')))} ({report['machine']['cpus']} CPUs);
created {html.escape(report['created_at'])}. Ratio below 1: faster than the baseline.</p>
<table><tr>{head}</tr>{table}</table>
{''.join(sections)}
<pre>{html.escape(markdown(report))}</pre>
</body></html>
"""

"""Benchmark reports: report.json (versioned schema), report.md (tables), report.html (plots).

Both human-readable reports open with the answer (:func:`summary_block`): per device, runtime and
shape, each variant against its twin as a ratio of medians with its interval, each variant at its
fastest setting. The details follow. The HTML page is self-contained: plots are inline SVG, no
script or network access needed, and a variant has one colour in every plot and legend.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import palette
from .palette import ALL_VARIANT_COLORS, CATEGORY_COLORS
from .stats import MIN_SAMPLES, Ratio, judge, load_from, ratio_from_intervals

SCHEMA_ID = "dyt-deploy/bench-report"
SCHEMA_VERSION = 2  # 2: the "summary" block (write_reports adds it), optional "device" per result
VARIANT_PALETTE = ALL_VARIANT_COLORS  # colours by position, for plots without variant names (palette.py)
CATEGORY_PALETTE = CATEGORY_COLORS
POINTWISE_PREFIXES = ("dyt", "derf")  # normalizers without statistics: the model's side of the question
REFERENCE_VARIANT = "layernorm"

_SUMMARY = {"type": "object", "required": ["count", "median_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms",
                                           "throughput"],
            "properties": {k: {"type": "number"} for k in ("median_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms",
                                                           "throughput")}}
_RATIO = {"type": "object", "required": ["ratio", "low", "high"],
          "properties": {k: {"type": "number"} for k in ("ratio", "low", "high", "confidence")}}
_ANSWER = {"type": "object",
           "required": ["device", "runtime", "shape", "variant", "reference", "ratio", "verdict", "interval",
                        "variant_setting", "reference_setting", "variant_median_ms", "reference_median_ms"],
           "properties": {"ratio": _RATIO, "verdict": {"enum": ["faster", "slower", "no clear difference"]},
                          "interval": {"enum": ["bootstrap", "combined"]},
                          "samples": {"type": "integer"}, "rounds_to_settle": {"type": ["integer", "null"]},
                          "min_samples": {"type": "integer"}, "note": {"type": "string"},
                          "loaded": {"type": "boolean"},
                          "variant_median_ms": {"type": "number"}, "reference_median_ms": {"type": "number"}}}
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
        "settings": {"type": "object", "required": ["arch", "variants", "baseline", "warmup", "iters", "threads"],
                     "properties": {"device": {"type": "string"}, "own_norm": {"type": ["string", "null"]},
                                    "not_timed": {"type": "object"}, "variants_made": {"type": "object"}}},
        "summary": {"type": "array", "items": _ANSWER},
        "results": {"type": "array", "items": {
            "type": "object", "required": ["group", "shape", "variant", "summary", "median_ci_ms"],
            "properties": {"summary": _SUMMARY, "median_ci_ms": {"type": "array", "minItems": 2, "maxItems": 2},
                           "device": {"type": "string"},
                           "ratio_to_baseline": {"anyOf": [_RATIO, {"type": "null"}]}}}},
        "headline": {"type": "array"},
        "load": {"type": ["object", "null"], "required": ["before", "after", "cpus", "loaded"]},
        "layer": {"type": ["object", "null"]},
        "profile": {"type": ["object", "null"]},
    },
}


def write_reports(report: dict, out_dir: Path) -> dict[str, Path]:
    """Write report.json (with its ``summary`` block, see :func:`with_summary`), report.md and
    report.html into ``out_dir``; returns their paths."""
    report = with_summary(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md", "html": out_dir / "report.html"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["md"].write_text(markdown(report))
    paths["html"].write_text(html_page(report))
    return paths


# ---- the answer: each variant against its twin, best setting of each ----

def with_summary(report: dict) -> dict:
    """A copy of ``report`` with its ``summary`` block computed from its results (see :func:`summary_block`)."""
    from .accuracy import annotate_summary

    return {**report, "summary": annotate_summary(summary_block(report), report)}


def is_pointwise(variant: str) -> bool:
    """DyT-like normalizers (dyt, dyt-folded, derf, ...): no mean or variance."""
    return variant.startswith(POINTWISE_PREFIXES)


def comparisons(variants: list[str], baseline: str, own: str | None = None) -> list[tuple[str, str]]:
    """The (variant, reference) pairs the summary answers, in reading order.

    The reference is ``layernorm`` when it ran, else ``baseline``. ``own`` is the model's own
    variant (None: ``dyt`` if it ran, else the first point-wise one): it is compared with the
    reference and with every other twin that has statistics (``rmsnorm``); every other variant
    (``dyt-folded``, ``derf``; all of them when ``own`` is the reference) with the reference.
    """
    reference = REFERENCE_VARIANT if REFERENCE_VARIANT in variants else baseline
    if own is None:
        own = "dyt" if "dyt" in variants else next((v for v in variants if is_pointwise(v)), None)
    pairs = []
    own_is_contender = own is not None and own != reference and own in variants
    if own_is_contender:
        pairs.append((own, reference))
        pairs += [(own, v) for v in variants if v not in (own, reference) and not is_pointwise(v)]
    pairs += [(v, reference) for v in variants
              if v not in (own, reference) and (is_pointwise(v) or not own_is_contender)]
    return pairs


def device_of(row: dict, settings: dict) -> str:
    """A result's device: its own ``device``, else the settings' ``device``, else ``cpu``."""
    return row.get("device") or settings.get("device") or "cpu"


def split_group(group: str) -> tuple[str, str]:
    """``ort/ort-transformers`` -> (``ort``, ``ort-transformers``); a group without a setting: (group, ``default``)."""
    runtime, _, setting = group.partition("/")
    return runtime, setting or "default"


def _best_rows(report: dict) -> dict[tuple[str, str, str], dict[str, dict]]:
    """Per (device, runtime, shape): each variant's fastest result (lowest median) over the runtime's settings."""
    best: dict[tuple[str, str, str], dict[str, dict]] = {}
    for row in report["results"]:
        key = (device_of(row, report["settings"]), split_group(row["group"])[0], row["shape"])
        here = best.setdefault(key, {})
        current = here.get(row["variant"])
        if current is None or row["summary"]["median_ms"] < current["summary"]["median_ms"]:
            here[row["variant"]] = row
    return best


def _pair_ratio(row: dict, reference: dict, baseline: str) -> tuple[Ratio | dict, str]:
    """The bootstrap ratio the harness computed when both ran in one setting against the baseline,
    else one combined from the two medians' intervals."""
    exact = row.get("ratio_to_baseline")
    if exact and row["group"] == reference["group"] and reference["variant"] == baseline:
        return exact, "bootstrap"
    return ratio_from_intervals(row["summary"]["median_ms"], row["median_ci_ms"], reference["summary"]["median_ms"],
                                reference["median_ci_ms"]), "combined"


def summary_block(report: dict) -> list[dict]:
    """One entry per device x runtime x shape x :func:`comparisons` pair that ran there: the ratio of
    medians variant / reference, each at its fastest setting of that runtime, with its 95% interval
    and its verdict (:func:`dyt_deploy.bench.stats.judge`: on the fewer rounds of the two, under the
    report's ``load``). The model's own variant is ``settings["own_norm"]`` (absent or null:
    ``dyt``, see :func:`comparisons`)."""
    s = report["settings"]
    variants = list(dict.fromkeys([*s["variants"], *(r["variant"] for r in report["results"])]))
    pairs = comparisons(variants, s["baseline"], s.get("own_norm"))
    entries = []
    for (device, runtime, shape), rows in sorted(_best_rows(report).items(), key=lambda kv: _place_key(kv[0])):
        for variant, reference in pairs:
            if variant in rows and reference in rows and _timed(rows[variant]) and _timed(rows[reference]):
                entries.append(_entry(device, runtime, shape, rows[variant], rows[reference], s["baseline"],
                                      report.get("load")))
    return entries


def _timed(row: dict) -> bool:
    """A median above zero (a clock too coarse for the call reads 0: no ratio to take)."""
    return row["summary"]["median_ms"] > 0 and min(row["median_ci_ms"]) > 0


def _place_key(place: tuple[str, str, str]) -> tuple:
    return place[0], place[1], _shape_key(place[2])


def _entry(device: str, runtime: str, shape: str, row: dict, reference: dict, baseline: str,
           load: dict | None = None) -> dict:
    ratio, method = _pair_ratio(row, reference, baseline)
    ratio = ratio.as_dict() if isinstance(ratio, Ratio) else dict(ratio)
    samples = min(row["summary"]["count"], reference["summary"]["count"])
    verdict = judge(ratio, samples, load_from(load))
    return {"device": device, "runtime": runtime, "shape": shape, "variant": row["variant"],
            "reference": reference["variant"], "ratio": ratio, **verdict.as_dict(), "interval": method,
            "variant_setting": split_group(row["group"])[1], "reference_setting": split_group(reference["group"])[1],
            "variant_median_ms": row["summary"]["median_ms"],
            "reference_median_ms": reference["summary"]["median_ms"]}


def answer_text(entry: dict) -> str:
    """``x0.930 [0.910, 0.950] faster``: the ratio of medians, its interval and the verdict, then in
    brackets why there is no clear difference and what would settle it, or that the machine was loaded."""
    r, note = entry["ratio"], entry.get("note")
    return f"x{r['ratio']:.3f} [{r['low']:.3f}, {r['high']:.3f}] {entry['verdict']}" + (f" ({note})" if note else "")


SUMMARY_COLUMNS = ["device", "runtime", "shape", "comparison", "ratio of medians [95% CI]",
                   "fastest setting: median ms"]


def summary_table(report: dict) -> list[list[str]]:
    """Rows of the answer table (:data:`SUMMARY_COLUMNS`); a report without its block gets one computed."""
    entries = report["summary"] if "summary" in report else summary_block(report)
    return [[e["device"], e["runtime"], e["shape"], f"{e['variant']} vs {e['reference']}", answer_text(e),
             f"{e['variant']} ({e['variant_setting']}) {e['variant_median_ms']:.3f}; "
             f"{e['reference']} ({e['reference_setting']}) {e['reference_median_ms']:.3f}"] for e in entries]


def summary_note(report: dict) -> str:
    """What the answer table's figures are, in one paragraph, and which variants were not timed and why."""
    not_timed = report["settings"].get("not_timed") or {}
    skipped = "".join(f" Not timed: {variant} ({why})." for variant, why in not_timed.items())
    return ("Ratio of median latencies, variant / reference, each at its fastest setting of that runtime (for "
            "onnxruntime: the graph optimizer) at that shape; below 1 the variant is faster. \"no clear difference\": "
            f"the 95% interval holds 1, or fewer than {MIN_SAMPLES} rounds ran; the rounds that would settle it are "
            "estimated from the observed spread at the observed ratio. " + load_text(report)
            + "The interval is the bootstrap of the ratio where both ran in the same setting "
            "against the baseline, else combined from the two medians' bootstrap intervals." + skipped)


def load_text(report: dict) -> str:
    """The machine's load during the run, as a sentence (nothing for a report that did not record it)."""
    load = load_from(report.get("load"))
    if load is None:
        return ""
    busy = " (a loaded machine: more runnable tasks than CPUs, so other work competed for the cores)"
    return f"Measured at {load.text()}{busy if load.loaded else ''}. "


# ---- detail tables, shared by report.md and report.html ----

@dataclass
class Table:
    """One titled table of the report (rendered as Markdown or HTML), with an optional note before it."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""
    anchor: str = ""
    items: list[str] = field(default_factory=list)  # a bullet list instead of rows


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


def _shape_sizes(shape: str) -> dict[str, str]:
    """``batch=1,seq=128`` -> {"batch": "1", "seq": "128"} (parts without ``=`` are left out)."""
    return dict(p.partition("=")[::2] for p in shape.split(",") if "=" in p)


def _shape_key(shape: str) -> tuple:
    """Sort key: sizes as numbers, in the label's order (``batch=2`` before ``batch=10``)."""
    return tuple((int(v) if v.isdigit() else 0, v) for v in _shape_sizes(shape).values())


def method_text(report: dict) -> str:
    """How the figures were measured, in one paragraph."""
    s, machine = report["settings"], report["machine"]
    return (f"Variants {', '.join(s['variants'])}; baseline {s['baseline']}; {s['iters']} interleaved rounds after "
            f"{s['warmup']} warm-up calls; threads {s['threads']}; onnxruntime graph optimization "
            f"{s.get('ort_opt_level', 'all')}. Machine: {machine.get('cpu', '?')} ({machine['cpus']} CPUs); "
            f"created {report['created_at']}. Ratio below 1: faster than the baseline.")


def detail_tables(report: dict) -> list[Table]:
    """Every table after the answer: all results, fusions, the norm layer alone, the op profile."""
    tables = [Table("Every runner, setting and shape", RESULT_COLUMNS, results_table(report), method_text(report),
                    "results")]
    if report.get("accuracy"):
        tables.append(accuracy_table(report))
    made = report["settings"].get("variants_made") or {}
    if made:
        tables.append(Table("How each variant was made", [], [], items=[f"{k}: {v}" for k, v in made.items()]))
    fusions = report["settings"].get("fusions") or {}
    skipped = report["settings"].get("optimizers_skipped") or {}
    if fusions or skipped:
        tables.append(Table("Fusions applied by each optimizer (fused operator counts)", [], [], items=[
            *(f"{key}: {', '.join(f'{k} {v}' for k, v in counts.items()) or 'none'}"
              for key, counts in fusions.items()),
            *(f"{optimizer}: not applied ({why})" for optimizer, why in skipped.items())]))
    if report.get("layer"):
        tables.append(layer_table(report["layer"]))
    if report.get("profile"):
        tables.append(Table("Where onnxruntime spends the time", ["model", "norm-related share", "top ops (µs/run)"],
                            [[key, f"{100 * p['norm_share']:.1f}%",
                              ", ".join(f"{k} {v:.0f}" for k, v in list(p["op_us_per_run"].items())[:5])]
                             for key, p in report["profile"].items()], anchor="profile"))
    return tables


def accuracy_headlines(report: dict) -> list[str]:
    """The answer with accuracy (``dyt-bench --data``): one sentence per comparison, see ``bench.accuracy``."""
    from .accuracy import headline_sentences

    return headline_sentences(report)


def accuracy_table(report: dict) -> Table:
    """Accuracy (or perplexity) per runner, precision and variant on the data, with whether it compares."""
    from .accuracy import ACCURACY_COLUMNS, accuracy_rows

    section = report["accuracy"]
    note = f"On {section['data']} ({section['samples']} samples). {section['note']}"
    return Table("Accuracy on the data", ACCURACY_COLUMNS, accuracy_rows(report), note, "accuracy")


LAYER_COLUMNS = ["kind", "tokens", "width", "MiB read + written", "median µs", "GB/s", "% of same-size copy",
                 "% of main-memory copy", "fits in cache"]


def layer_table(layer: dict) -> Table:
    """The norm layer alone: each row's bandwidth beside a copy of the same tensor (``copy_gbps`` of
    the row, timed with it) and beside the main-memory copy; the note says why a row can pass 100%
    of the latter (its tensors stay in the caches)."""
    rows = [[r["kind"], str(r["tokens"]), str(r["width"]), _mib(r.get("bytes")), f"{r['median_us']:.1f}",
             f"{r['gbps']:.2f}", _percent(r["gbps"], r.get("copy_gbps")), _percent(r["gbps"], layer["copy_gbps"]),
             {True: "yes", False: "no"}.get(r.get("in_cache"), "?")] for r in layer["rows"]]
    note = (f"torch, float32. The main-memory copy ({layer['copy_gbps']:.1f} GB/s) copies a buffer far larger "
            "than the caches. At sizes that fit in the caches a layer reads and writes cache, not main memory, so it "
            "can pass 100% of that figure (a LayerNorm at 200% of it is a cache-resident size, not a layer faster "
            "than memory): the same-size copy, timed interleaved with the layers, is the fair reference there.")
    return Table("The norm layer alone", LAYER_COLUMNS, rows, note, anchor="layer")


def _percent(value: float, reference: float | None) -> str:
    return "–" if not reference else f"{100 * value / reference:.0f}%"


def _mib(size: int | None) -> str:
    return "–" if size is None else f"{size / 2**20:.2f}"


def _md_table(table: Table, level: str = "##") -> list[str]:
    lines = ["", f"{level} {table.title}", ""]
    if table.note:
        lines += [table.note, ""]
    if table.items:
        return lines + [f"- {item}" for item in table.items]
    return lines + ["| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns),
                    *("| " + " | ".join(row) + " |" for row in table.rows)]


def markdown(report: dict) -> str:
    """report.md: the answer table first, then every detail table and the notes."""
    answer = Table(answer_title(report), SUMMARY_COLUMNS, summary_table(report))
    lines = [f"# dyt-bench: {report['settings']['arch']}", *_md_table(answer)]
    if not answer.rows:
        lines.append("| " + " | ".join(["no variant could be compared with a twin timed on the same runtime",
                                          *[""] * (len(SUMMARY_COLUMNS) - 1)]) + " |")
    lines += ["", summary_note(report)]
    lines += [line for sentence in accuracy_headlines(report) for line in ("", sentence)]
    from .int8 import int8_sentences

    int8 = int8_sentences(report)
    if int8:
        lines += ["", "## INT8: what it buys each norm, and what it needs", "", *(f"- {line}" for line in int8)]
    for table in detail_tables(report):
        lines += _md_table(table)
    for note in report.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def answer_title(report: dict) -> str:
    return f"On {report['settings']['arch']}: each variant against its twin, at the fastest setting of each"


# ---- HTML with inline SVG plots ----

def variant_colors(report: dict) -> dict[str, str]:
    """One colour per variant for the whole page, the dashboard's (:mod:`.palette`); the order is the
    settings', then any other variant in the results."""
    return palette.variant_colors([*report["settings"]["variants"], *sorted(r["variant"] for r in report["results"])])


def _color_of(label: str, index: int, colors: dict[str, str] | None) -> str:
    if colors and label in colors:
        return colors[label]
    return VARIANT_PALETTE[index % len(VARIANT_PALETTE)]


def _svg_open(title: str, width: int, height: int) -> list[str]:
    return [f'<svg class="plot" width="{width}" height="{height}" role="img"><title>{html.escape(title)}</title>',
            f'<text x="4" y="16" font-weight="bold">{html.escape(title)}</text>']


def bar_chart(title: str, bars: list[tuple[str, float, float, float]], unit: str = "ms",
              colors: dict[str, str] | None = None) -> str:
    """Horizontal bars (label, value, low, high) with whiskers from low to high. A bar's colour is
    ``colors[label]`` (None, or a label not in it: the palette in bar order)."""
    width, left, bar_h = 640, 180, 22
    height = 30 + bar_h * len(bars) + 20
    top = max((b[3] for b in bars), default=1.0) or 1.0
    scale = (width - left - 110) / top  # room right of the longest whisker for its value
    parts = _svg_open(title, width, height)
    for i, (label, value, low, high) in enumerate(bars):
        y, name = 30 + i * bar_h, html.escape(label)
        parts += [f'<text x="4" y="{y + 15}">{name}</text>',
                  f'<rect class="mark" data-series="{name}" x="{left}" y="{y + 3}" width="{value * scale:.1f}" '
                  f'height="{bar_h - 8}" fill="{_color_of(label, i, colors)}"/>',
                  f'<line x1="{left + low * scale:.1f}" x2="{left + high * scale:.1f}" y1="{y + 11}" y2="{y + 11}" '
                  'stroke="black"/>',
                  f'<text x="{left + high * scale + 4:.1f}" y="{y + 15}">{value:.3g} {unit}</text>']
    parts.append("</svg>")
    return "".join(parts)


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str,
               colors: dict[str, str] | None = None) -> str:
    """One line with a dot per point for each series of (x, y) points, x ticks at the x values, the
    legend right of the plot area (never over a line); colours as in :func:`bar_chart`. Empty string
    when there are no points."""
    width, height, pad, right = 640, 300, 50, 480  # plot area: pad..right across, pad..height-pad down
    points = [p for s in series.values() for p in s]
    if not points:
        return ""
    x_max = max(p[0] for p in points) or 1.0
    y_ticks = nice_ticks(max(p[1] for p in points))
    y_max = y_ticks[-1]

    def at(p: tuple[float, float]) -> tuple[float, float]:
        return pad + p[0] / x_max * (right - pad), height - pad - p[1] / y_max * (height - 2 * pad)

    parts = [*_svg_open(title, width, height),
             f'<line x1="{pad}" y1="{height - pad}" x2="{right}" y2="{height - pad}" stroke="black"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
             f'<text x="{(pad + right) / 2}" y="{height - 10}">{html.escape(x_label)}</text>',
             f'<text class="axis-title" x="4" y="{pad - 12}">{html.escape(y_label)}</text>']
    for tick in y_ticks:
        y = at((0, tick))[1]
        parts += [f'<line x1="{pad}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>',
                  f'<text class="ytick" x="{pad - 4}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>']
    for x in sorted({p[0] for p in points}):
        parts.append(f'<text x="{at((x, 0))[0] - 4:.1f}" y="{height - pad + 16}">{x:g}</text>')
    for i, (name, pts) in enumerate(series.items()):
        color, label = _color_of(name, i, colors), html.escape(name)
        xy = [at(p) for p in sorted(pts)]
        parts.append(f'<polyline class="mark" data-series="{label}" fill="none" stroke="{color}" stroke-width="2" '
                     f'points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in xy)}"/>')
        parts += [f'<circle class="mark" data-series="{label}" cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}"/>'
                  for x, y in xy]
        legend_y = pad + 16 * i
        parts += [f'<line class="legend" data-series="{label}" x1="{right + 16}" x2="{right + 34}" '
                  f'y1="{legend_y - 4}" y2="{legend_y - 4}" stroke="{color}" stroke-width="3"/>',
                  f'<text class="legend" data-series="{label}" x="{right + 40}" y="{legend_y}" '
                  f'fill="{color}">{label}</text>']
    parts.append("</svg>")
    return "".join(parts)


def nice_ticks(top: float, most: int = 6) -> list[float]:
    """Axis ticks from 0 to at least ``top`` in a round step (1, 2, 2.5 or 5 times a power of ten),
    at most ``most`` of them: 273 -> 0, 50, ..., 300."""
    if not top > 0:
        return [0.0, 1.0]
    power = 10.0 ** math.floor(math.log10(top / (most - 1)))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if math.ceil(top / (m * power) - 1e-9) <= most - 1)
    return [round(i * step, 12) for i in range(math.ceil(top / step - 1e-9) + 1)]


def stacked_bars(title: str, rows: dict[str, dict[str, float]], top: int = 6) -> str:
    """One 100% bar per row, split by category (the ``top`` largest overall, any rest as 'other'),
    in :data:`CATEGORY_PALETTE`'s colours (not the variants')."""
    totals: dict[str, float] = {}
    for shares in rows.values():
        for k, v in shares.items():
            totals[k] = totals.get(k, 0.0) + v
    keep = sorted(totals, key=totals.get, reverse=True)[:top]
    names = [*keep, "other"] if any(k not in keep for k in totals) else keep
    width, left, bar_h = 640, 180, 24
    height = 50 + bar_h * len(rows) + 20 * ((len(names) + 3) // 4)
    parts = _svg_open(title, width, height)
    for i, (label, shares) in enumerate(rows.items()):
        y, x, total = 30 + i * bar_h, float(left), sum(shares.values()) or 1.0
        parts.append(f'<text x="4" y="{y + 15}">{html.escape(label)}</text>')
        values = [shares.get(k, 0.0) for k in keep] + [sum(v for k, v in shares.items() if k not in keep)]
        for j, value in enumerate(values[:len(names)]):
            w = value / total * (width - left - 20)
            if w <= 0:
                continue
            parts.append(f'<rect class="mark" data-category="{html.escape(names[j])}" x="{x:.1f}" y="{y + 3}" '
                         f'width="{w:.1f}" height="{bar_h - 8}" fill="{_category_color(j)}"/>')
            x += w
    legend_y = 40 + bar_h * len(rows)
    for j, name in enumerate(names):
        parts.append(f'<text class="legend" data-category="{html.escape(name)}" x="{4 + (j % 4) * 150}" '
                     f'y="{legend_y + 16 * (j // 4)}" fill="{_category_color(j)}">■ {html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _category_color(index: int) -> str:
    return CATEGORY_PALETTE[index % len(CATEGORY_PALETTE)]


def latency_plots(report: dict, colors: dict[str, str]) -> list[str]:
    """Per group and shape, the variants' medians as bars; per group (and sequence length), median
    against batch size where at least two batch sizes ran (one point is no line: that plot is left out)."""
    results = report["results"]
    plots = []
    for group, shape in sorted({(r["group"], r["shape"]) for r in results}, key=lambda g: (g[0], _shape_key(g[1]))):
        rows = sorted((r for r in results if r["group"] == group and r["shape"] == shape),
                      key=lambda r: list(colors).index(r["variant"]))
        bars = [(r["variant"], r["summary"]["median_ms"], *r["median_ci_ms"]) for r in rows]
        plots.append(bar_chart(f"{group}, {shape}: median latency, 95% CI", bars, colors=colors))
    for (group, rest), series in sorted(_batch_series(results, colors).items()):
        if len({x for points in series.values() for x, _ in points}) >= 2:
            where = f"{group}, {rest}" if rest else group
            plots.append(line_chart(f"{where}: median latency against batch size", series, "batch",
                                      "median latency (ms)", colors))
    return plots


def _batch_series(results: list[dict], colors: dict[str, str]) -> dict[tuple[str, str], dict]:
    """(group, the shape without its batch) -> variant -> [(batch, median ms)], variants in colour order."""
    out: dict[tuple[str, str], dict[str, list[tuple[float, float]]]] = {}
    for r in sorted(results, key=lambda r: list(colors).index(r["variant"])):
        sizes = _shape_sizes(r["shape"])
        if not sizes.get("batch", "").isdigit():
            continue
        rest = ",".join(f"{k}={v}" for k, v in sizes.items() if k != "batch")
        out.setdefault((r["group"], rest), {}).setdefault(r["variant"], []).append(
            (float(sizes["batch"]), r["summary"]["median_ms"]))
    return out


def _html_table(table: Table, level: str = "h2", table_id: str = "") -> str:
    ident = f' id="{table_id or table.anchor}"' if table_id or table.anchor else ""
    out = [f"<{level}>{html.escape(table.title)}</{level}>"]
    if table.note:
        out.append(f"<p>{html.escape(table.note)}</p>")
    if table.items:
        return "".join(out) + "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in table.items) + "</ul>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    return "".join(out) + f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _answer_html(report: dict) -> str:
    """The answer table, with each row's verdict as a class (faster / slower / unclear) for styling."""
    entries = report["summary"] if "summary" in report else summary_block(report)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in SUMMARY_COLUMNS)
    body = "".join(f'<tr class="{_VERDICT_CLASS[e["verdict"]]}">' + "".join(f"<td>{html.escape(c)}</td>" for c in row)
                   + "</tr>" for e, row in zip(entries, summary_table(report), strict=True))
    if not entries:
        body = (f'<tr><td colspan="{len(SUMMARY_COLUMNS)}">no variant could be compared with a twin timed on the same '
                'runtime</td></tr>')
    return (f"<h2>{html.escape(answer_title(report))}</h2><table id=\"summary\"><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table><p>{html.escape(summary_note(report))}</p>")


_VERDICT_CLASS = {"faster": "faster", "slower": "slower", "no clear difference": "unclear"}
_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:.5em 0}"
          "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}#results td:nth-child(n+4){text-align:right}"
          "#summary tr.faster td:nth-child(5){color:#1a7f37;font-weight:bold}"
          "#summary tr.slower td:nth-child(5){color:#b42318;font-weight:bold}"
          "svg{display:block;margin:1em 0}svg text{font-size:12px}")


def _int8_html(report: dict) -> str:
    """The INT8 section (``--precisions fp32,int8``) as a list; empty without one."""
    from .int8 import int8_sentences

    lines = int8_sentences(report)
    if not lines:
        return ""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return f'<h2 id="int8">INT8: what it buys each norm, and what it needs</h2><ul>{items}</ul>'


def html_page(report: dict) -> str:
    """report.html: the answer table first, then the results with their plots, then the other tables."""
    s = report["settings"]
    colors = variant_colors(report)
    results, *others = detail_tables(report)
    parts = [_answer_html(report), *(f'<p class="accuracy">{html.escape(text)}</p>' for text in
                                     accuracy_headlines(report)), _int8_html(report), _html_table(results),
             *latency_plots(report, colors)]
    for table in others:
        parts.append(_html_table(table))
        if table.anchor == "profile":
            parts.append(stacked_bars("onnxruntime time by op type",
                                      {k: p["op_us_per_run"] for k, p in report["profile"].items()}))
    parts += [f"<p>{html.escape(note)}</p>" for note in report.get("notes", [])]
    parts.append('<p>The same tables in Markdown: <a href="report.md">report.md</a>; every figure: '
                 '<a href="report.json">report.json</a>.</p>')
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>dyt-bench: '
            f'{html.escape(s["arch"])}</title>\n<style>{_STYLE}</style></head><body>\n'
            f'<h1>dyt-bench: {html.escape(s["arch"])}</h1>\n' + "\n".join(parts) + "\n</body></html>\n")

"""The GPU benchmark's report: gpu_report.json (the raw dict), gpu_report.md, gpu_report.html.

All three are written together through a staging folder, so a failed run leaves no partial report.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from pathlib import Path

from ..repository import staged_file
from .report import VARIANT_PALETTE, bar_chart

GPU_REPORT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["schema", "schema_version", "created_at", "facts", "settings", "layer", "decoder", "goals"],
    "properties": {
        "schema": {"const": "dyt-deploy/gpu-bench-report"},
        "schema_version": {"const": 1},
        "facts": {"type": "object", "required": ["device", "torch", "gpu"]},
        "layer": {"type": "array", "items": {"type": "object", "required": [
            "case", "tokens", "width", "dtype", "provider", "median_us", "p10_us", "p90_us", "gbps",
            "copy_fraction", "cuda_graph"]}},
        "decoder": {"type": ["object", "null"], "required": ["config", "results", "ratios"]},
        "goals": {"type": "array", "items": {"type": "object", "required": ["goal", "measured", "met"]}},
    },
}


def _device_line(facts: dict) -> str:
    if facts.get("gpu"):
        return (f"{facts['gpu']} ({facts.get('memory_gib')} GiB, {facts.get('multiprocessors')} SMs, "
                f"L2 {facts.get('l2_mib')} MiB, compute capability {facts.get('capability')}), "
                f"CUDA {facts.get('cuda')}, torch {facts['torch']}, triton {facts.get('triton')}")
    return f"CPU {facts.get('cpu')} (no GPU: figures are not GPU figures), torch {facts['torch']}"


LAYER_COLUMNS = ["case", "provider", "median µs", "p10-p90 µs", "GB/s", "of copy"]
DECODER_COLUMNS = ["variant", "median ms", "p10-p90 ms", "vs RMSNorm (95% CI)"]
GOAL_COLUMNS = ["goal", "measured", "met"]


def layer_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        frac = "" if r.get("copy_fraction") is None else f"{r['copy_fraction']:.0%}"
        out.append([r["case"], r["provider"], f"{r['median_us']:.1f}", f"{r['p10_us']:.1f}-{r['p90_us']:.1f}",
                    f"{r['gbps']:.3g}", frac])
    return out


def decoder_rows(decoder: dict) -> list[list[str]]:
    ratios = {r["variant"]: r for r in decoder["ratios"]}
    out = []
    for r in decoder["results"]:
        q = ratios.get(r["variant"])
        vs = f"{q['ratio']:.3f} [{q['low']:.3f}, {q['high']:.3f}] vs {q['baseline']}" if q else ""
        out.append([r["variant"], f"{r['median_ms']:.2f}", f"{r['p10_ms']:.2f}-{r['p90_ms']:.2f}", vs])
    return out


def goal_rows(goals: list[dict]) -> list[list[str]]:
    return [[g["goal"], g["measured"], "yes" if g["met"] else "NO"] for g in goals]


def _md_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---" if i < 2 or c.startswith(("goal", "met", "vs")) else "---:" for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def layer_table(rows: list[dict]) -> list[str]:
    return _md_table(LAYER_COLUMNS, layer_rows(rows))


def decoder_table(decoder: dict) -> list[str]:
    return _md_table(DECODER_COLUMNS, decoder_rows(decoder))


def _layer_method(report: dict) -> str:
    s, facts = report["settings"], report["facts"]
    graphs = any(r["cuda_graph"] for r in report["layer"])
    l2 = f" (the GPU's L2 holds {facts['l2_mib']} MiB)" if facts.get("l2_mib") else ""
    timing = "replayed from a CUDA graph and timed with CUDA events" if graphs else "timed with the wall clock"
    return (f"Per call; {s['layer_rounds']} interleaved samples per provider, each one pass over a rotation of "
            f"inputs of at least {s['min_bytes_per_sample'] / 2**20:.0f} MiB{l2}, {timing}. GB/s counts bytes "
            "read plus written; 'of copy' is the share of `x.clone()`'s GB/s in the same case.")


def _decoder_method(report: dict) -> str:
    dec, facts = report["decoder"], report["facts"]
    c = dec["config"]
    clock = "between CUDA events" if facts.get("gpu") else "on the wall clock"
    return (f"dim {c['dim']}, depth {c['depth']}, heads {c['heads']}, FFN {c['ffn_dim']}, vocab {c['vocab_size']} "
            f"({dec['parameters'] / 1e6:.3g} M parameters), batch {dec['batch']} x {dec['seq']} tokens, "
            f"{dec['dtype']}, forward only; each sample one forward pass {clock}, variants interleaved. "
            "`dyt/triton` is eager with the Triton kernels and the residual adds fused into the norms.")


def markdown(report: dict) -> str:
    out = ["# DyT on the GPU: norm layer and decoder", "",
           f"Measured {report['created_at']} on {_device_line(report['facts'])}.", ""]
    if report["goals"]:
        out += ["## Goals", "", *_md_table(GOAL_COLUMNS, goal_rows(report["goals"])), ""]
    out += ["## Norm layer alone", "", _layer_method(report), "", *layer_table(report["layer"]), ""]
    if report.get("decoder"):
        out += ["## LLaMA-style decoder", "", _decoder_method(report), "", *decoder_table(report["decoder"]), ""]
    return "\n".join(out)


def _html_table(columns: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _colors(names: Iterable[str]) -> dict[str, str]:
    return {name: VARIANT_PALETTE[i % len(VARIANT_PALETTE)] for i, name in enumerate(dict.fromkeys(names))}


def html_page(report: dict) -> str:
    parts = [f"<h1>DyT on the GPU</h1><p>Measured {html.escape(report['created_at'])} on "
             f"{html.escape(_device_line(report['facts']))}.</p>"]
    if report["goals"]:
        parts.append("<h2>Goals</h2>" + _html_table(GOAL_COLUMNS, goal_rows(report["goals"])))
    parts.append(f"<h2>Norm layer alone</h2><p>{html.escape(_layer_method(report))}</p>")
    colors = _colors(r["provider"] for r in report["layer"])  # a provider keeps its colour from case to case
    for case in dict.fromkeys(r["case"] for r in report["layer"]):
        bars = [(r["provider"], r["gbps"], r["gbps"] * r["median_us"] / r["p90_us"],
                 r["gbps"] * r["median_us"] / r["p10_us"]) for r in report["layer"] if r["case"] == case]
        parts.append(bar_chart(f"{case}: GB/s at the median (whiskers: at p90 and p10 time)", bars, unit="GB/s",
                               colors=colors))
    parts.append(_html_table(LAYER_COLUMNS, layer_rows(report["layer"])))
    if report.get("decoder"):
        bars = [(r["variant"], r["median_ms"], r["p10_ms"], r["p90_ms"]) for r in report["decoder"]["results"]]
        parts += [f"<h2>LLaMA-style decoder</h2><p>{html.escape(_decoder_method(report))}</p>",
                  bar_chart("forward pass: median ms (whiskers p10-p90)", bars),
                  _html_table(DECODER_COLUMNS, decoder_rows(report["decoder"]))]
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>DyT GPU benchmark</title>"
            "<style>body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}svg{display:block;margin:1em 0}"
            "svg text{font-size:12px}</style></head><body>" + "".join(parts) + "</body></html>\n")


def write_gpu_reports(report: dict, out_dir: Path) -> dict[str, Path]:
    """gpu_report.{json,md,html} in ``out_dir`` (replacing earlier ones); returns their paths."""
    names = {"json": "gpu_report.json", "md": "gpu_report.md", "html": "gpu_report.html"}
    texts = {"json": json.dumps(report, indent=2) + "\n", "md": markdown(report), "html": html_page(report)}
    final = out_dir / names["json"]
    with staged_file(final, force=True) as stage:
        for key, name in names.items():
            (stage / name).write_text(texts[key])
    return {key: out_dir / name for key, name in names.items()}

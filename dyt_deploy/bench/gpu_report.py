"""The GPU benchmark's report: gpu_report.json (the raw dict), gpu_report.md, gpu_report.html.

All three are written together through a staging folder, so a failed run leaves no partial report.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from ..repository import staged_file
from .report import bar_chart

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


def layer_table(rows: list[dict]) -> list[str]:
    lines = ["| case | provider | median µs | p10-p90 µs | GB/s | of copy |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        frac = "" if r.get("copy_fraction") is None else f"{r['copy_fraction']:.0%}"
        lines.append(f"| {r['case']} | {r['provider']} | {r['median_us']:.1f} | {r['p10_us']:.1f}-{r['p90_us']:.1f} "
                     f"| {r['gbps']:.0f} | {frac} |")
    return lines


def decoder_table(decoder: dict) -> list[str]:
    ratios = {r["variant"]: r for r in decoder["ratios"]}
    lines = ["| variant | median ms | p10-p90 ms | vs RMSNorm (95% CI) |", "|---|---:|---:|---|"]
    for r in decoder["results"]:
        q = ratios.get(r["variant"])
        vs = f"{q['ratio']:.3f} [{q['low']:.3f}, {q['high']:.3f}] vs {q['baseline']}" if q else ""
        lines.append(f"| {r['variant']} | {r['median_ms']:.2f} | {r['p10_ms']:.2f}-{r['p90_ms']:.2f} | {vs} |")
    return lines


def markdown(report: dict) -> str:
    facts, s = report["facts"], report["settings"]
    out = ["# DyT on the GPU: norm layer and decoder", "",
           f"Measured {report['created_at']} on {_device_line(facts)}.", ""]
    if report["goals"]:
        out += ["## Goals", "", "| goal | measured | met |", "|---|---|---|"]
        out += [f"| {g['goal']} | {g['measured']} | {'yes' if g['met'] else 'NO'} |" for g in report["goals"]]
        out.append("")
    out += ["## Norm layer alone", "",
            f"Per call; {s['layer_rounds']} interleaved samples per provider, each one pass over a rotation of "
            f"inputs of at least {s['min_bytes_per_sample'] / 2**20:.0f} MiB (several times L2), "
            + ("replayed as a CUDA graph and timed with CUDA events. " if any(r["cuda_graph"] for r in report["layer"])
               else "timed with the wall clock. ")
            + "GB/s counts bytes read plus written; 'of copy' is the share of `x.clone()`'s GB/s in the same case.",
            "", *layer_table(report["layer"]), ""]
    dec = report.get("decoder")
    if dec:
        c = dec["config"]
        out += ["## LLaMA-style decoder", "",
                f"dim {c['dim']}, depth {c['depth']}, heads {c['heads']}, FFN {c['ffn_dim']}, vocab {c['vocab_size']} "
                f"({dec['parameters'] / 1e6:.0f} M parameters), batch {dec['batch']} x {dec['seq']} tokens, "
                f"{dec['dtype']}, forward only; each sample one forward pass between CUDA events, variants "
                "interleaved. `dyt/triton` is eager with the Triton kernels and the residual adds fused into "
                "the norms.",
                "", *decoder_table(dec), ""]
    return "\n".join(out)


def html_page(report: dict) -> str:
    body = [f"<h1>DyT on the GPU</h1><p>{html.escape(_device_line(report['facts']))}</p>"]
    for case in dict.fromkeys(r["case"] for r in report["layer"]):
        bars = [(r["provider"], r["gbps"], r["gbps"] * r["median_us"] / r["p90_us"],
                 r["gbps"] * r["median_us"] / r["p10_us"]) for r in report["layer"] if r["case"] == case]
        body.append(bar_chart(f"norm layer {case}: GB/s (whiskers p90-p10 time)", bars, unit="GB/s"))
    if report.get("decoder"):
        bars = [(r["variant"], r["median_ms"], r["p10_ms"], r["p90_ms"]) for r in report["decoder"]["results"]]
        body.append(bar_chart("decoder forward: median ms (whiskers p10-p90)", bars))
    md = html.escape(markdown(report))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>DyT GPU benchmark</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:auto} svg{display:block;margin:1em 0}"
            "pre{white-space:pre-wrap}</style></head><body>" + "".join(body) + f"<pre>{md}</pre></body></html>\n")


def write_gpu_reports(report: dict, out_dir: Path) -> dict[str, Path]:
    """gpu_report.{json,md,html} in ``out_dir`` (replacing earlier ones); returns their paths."""
    names = {"json": "gpu_report.json", "md": "gpu_report.md", "html": "gpu_report.html"}
    texts = {"json": json.dumps(report, indent=2) + "\n", "md": markdown(report), "html": html_page(report)}
    final = out_dir / names["json"]
    with staged_file(final, force=True) as stage:
        for key, name in names.items():
            (stage / name).write_text(texts[key])
    return {key: out_dir / name for key, name in names.items()}

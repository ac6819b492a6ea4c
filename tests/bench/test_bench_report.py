"""Reports: valid JSON for the schema, the answer first (each variant against its twin, best setting of
each), Markdown tables, an HTML page with its plots inline."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import jsonschema
import numpy as np
import pytest

from dyt_deploy.bench.harness import Timings, analyze
from dyt_deploy.bench.report import (
    REPORT_SCHEMA,
    SCHEMA_VERSION,
    comparisons,
    latency_plots,
    markdown,
    summary_block,
    variant_colors,
    with_summary,
    write_reports,
)
from dyt_deploy.bench.stats import MIN_SAMPLES, judge, median_interval, median_ratio, ratio_from_intervals

# Relative latency per (group, variant): onnxruntime's transformer fusions speed LayerNorm and RMSNorm
# up, not DyT, so each variant's fastest setting differs; torch has no folded variant.
SPEEDS = {
    "ort/none": {"layernorm": 1.0, "rmsnorm": 0.98, "dyt": 0.90, "dyt-folded": 0.88},
    "ort/ort-transformers": {"layernorm": 0.85, "rmsnorm": 0.90, "dyt": 0.92, "dyt-folded": 0.89},
    "torch": {"layernorm": 1.0, "rmsnorm": 0.97, "dyt": 0.90},
}
VARIANTS = ["layernorm", "rmsnorm", "dyt", "dyt-folded"]


def synthetic_timings(batches: tuple[int, ...] = (1, 8), speeds: dict | None = None, rounds: int = 40,
                      seed: int = 0) -> Timings:
    """Normal timings (1% spread) around ``batch x speed`` ms for every group and variant in ``speeds``."""
    rng = np.random.default_rng(seed)
    timings = Timings()
    for batch in batches:
        for group, variants in (speeds or SPEEDS).items():
            for variant, speed in variants.items():
                for value in rng.normal(batch * speed, batch * speed * 0.01, rounds) / 1e3:
                    timings.add(group, f"batch={batch}", variant, value)
    return timings


def batch_of(shape: str) -> int:
    return int(dict(p.split("=") for p in shape.split(","))["batch"])


def report_from(timings: Timings, variants: list[str] | None = None, baseline: str = "layernorm",
                **settings) -> dict:
    """A report dict as ``dyt-bench`` makes it, from ``timings`` (analysed by the harness's own code)."""
    rows = analyze(timings, baseline, batch_of)
    return {
        "schema": "dyt-deploy/bench-report", "schema_version": SCHEMA_VERSION,
        "created_at": "2026-01-01T00:00:00+00:00", "machine": {"cpu": "test cpu", "cpus": 2, "platform": "linux"},
        "versions": {"torch": "x"},
        "settings": {"arch": "vit_tiny", "variants": variants or VARIANTS, "baseline": baseline, "warmup": 1,
                     "iters": 40, "threads": 2,
                     "fusions": {"layernorm/ort-transformers": {"SkipLayerNormalization": 4}}, **settings},
        "results": [{**r.as_dict(), "median_ci_ms": list(median_interval(timings.seconds[(r.group, r.shape,
                                                                                            r.variant)]))}
                    for r in rows],
        "layer": {"copy_gbps": 10.0, "rows": [{"kind": "dyt", "tokens": 256, "width": 384, "median_us": 50.0,
                                               "gbps": 7.9}]},
        "profile": {"dyt/none": {"op_us_per_run": {"MatMul": 900.0, "Tanh": 100.0}, "total_us_per_run": 1000.0,
                                 "norm_share": 0.1}},
    }


def synthetic_report(batches: tuple[int, ...] = (1, 8)) -> dict:
    return report_from(synthetic_timings(batches))


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


def test_reports_are_written_and_valid(tmp_path):
    report = synthetic_report()
    paths = write_reports(report, tmp_path / "out")
    loaded = json.loads(paths["json"].read_text())
    jsonschema.validate(loaded, REPORT_SCHEMA)
    assert loaded["summary"] and "summary" not in report  # written into the file, the caller's dict untouched
    dyt_row = next(r for r in loaded["results"] if r["variant"] == "dyt" and r["shape"] == "batch=1"
                   and r["group"] == "torch")
    assert dyt_row["ratio_to_baseline"]["ratio"] == pytest.approx(0.90, abs=0.02)
    md = paths["md"].read_text()
    assert "| ort/none | batch=8 | dyt |" in md and "SkipLayerNormalization 4" in md and "10.0%" in md
    page = paths["html"].read_text()
    collector = _Collector()
    collector.feed(page)
    # 3 groups x 2 shapes of latency bars, 3 groups' latency against batch size, op-time shares
    assert collector.tags.count("svg") == 10
    assert "<pre" not in page and "report.md" in page
    assert "<script" not in page and "http" not in page.split("<body>")[1]  # self-contained, no network


def test_schema_rejects_a_report_without_results_or_with_a_bad_summary():
    report = synthetic_report()
    del report["results"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(report, REPORT_SCHEMA)
    report = synthetic_report()
    report["results"][0]["summary"]["median_ms"] = "fast"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(report, REPORT_SCHEMA)
    report = with_summary(synthetic_report())
    jsonschema.validate(report, REPORT_SCHEMA)
    report["summary"][0]["verdict"] = "quicker"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(report, REPORT_SCHEMA)


def _entry(summary: list[dict], runtime: str, shape: str, variant: str, reference: str) -> dict:
    (entry,) = [e for e in summary if (e["runtime"], e["shape"], e["variant"], e["reference"])
                == (runtime, shape, variant, reference)]
    return entry


def test_summary_takes_each_variants_fastest_setting_and_the_exact_interval_where_it_has_one():
    timings = synthetic_timings((1,))
    summary = summary_block(report_from(timings))
    ort = _entry(summary, "ort", "batch=1", "dyt", "layernorm")
    # DyT is fastest without fusions, LayerNorm with them: DyT loses on onnxruntime, at its best setting
    assert (ort["variant_setting"], ort["reference_setting"]) == ("none", "ort-transformers")
    assert ort["verdict"] == "slower" and ort["interval"] == "combined"
    exact = median_ratio(timings.seconds[("ort/none", "batch=1", "dyt")],
                         timings.seconds[("ort/ort-transformers", "batch=1", "layernorm")])
    assert ort["ratio"]["ratio"] == pytest.approx(exact.ratio)
    assert ort["ratio"]["low"] == pytest.approx(exact.low, abs=0.005)
    assert ort["ratio"]["high"] == pytest.approx(exact.high, abs=0.005)
    torch = _entry(summary, "torch", "batch=1", "dyt", "layernorm")
    assert torch["verdict"] == "faster" and torch["interval"] == "bootstrap"
    assert torch["variant_setting"] == torch["reference_setting"] == "default"
    assert torch["ratio"]["ratio"] == pytest.approx(0.90, abs=0.01)
    # RMSNorm is fastest with fusions (0.90), as fast as DyT without them (0.90): no clear difference
    assert _entry(summary, "ort", "batch=1", "dyt", "rmsnorm")["verdict"] == "no clear difference"
    assert _entry(summary, "ort", "batch=1", "dyt-folded", "layernorm")["verdict"] == "slower"  # 0.88 vs 0.85
    pairs = [(e["runtime"], e["variant"], e["reference"]) for e in summary]
    assert pairs == [("ort", "dyt", "layernorm"), ("ort", "dyt", "rmsnorm"), ("ort", "dyt-folded", "layernorm"),
                     ("torch", "dyt", "layernorm"), ("torch", "dyt", "rmsnorm")]  # torch ran no folded variant


def test_summary_lines_are_per_device_runtime_and_shape():
    report = report_from(synthetic_timings((8, 1), {"torch": {"layernorm": 1.0, "dyt": 0.9}}),
                         ["layernorm", "dyt"])  # ran 8 first: the answer still lists batch sizes in order
    gpu = report_from(synthetic_timings((1,), {"torch/bf16": {"layernorm": 1.0, "dyt": 1.2}}, seed=1),
                      ["layernorm", "dyt"])
    report["results"] += [{**r, "device": "cuda:0"} for r in gpu["results"]]
    summary = summary_block(report)
    assert [(e["device"], e["runtime"], e["shape"], e["verdict"]) for e in summary] == [
        ("cpu", "torch", "batch=1", "faster"), ("cpu", "torch", "batch=8", "faster"),
        ("cuda:0", "torch", "batch=1", "slower")]
    assert summary[2]["variant_setting"] == "bf16"


def test_comparisons_put_the_models_variant_against_each_twin():
    assert comparisons(VARIANTS, "layernorm") == [("dyt", "layernorm"), ("dyt", "rmsnorm"),
                                                  ("dyt-folded", "layernorm")]
    # a LayerNorm model: every twin against it, whatever the baseline was
    assert comparisons(VARIANTS, "rmsnorm", own="layernorm") == [("rmsnorm", "layernorm"), ("dyt", "layernorm"),
                                                                 ("dyt-folded", "layernorm")]
    assert comparisons(["rmsnorm", "dyt", "dyt-folded", "derf"], "rmsnorm") == [
        ("dyt", "rmsnorm"), ("dyt-folded", "rmsnorm"), ("derf", "rmsnorm")]
    assert comparisons(["dyt", "dyt-folded"], "dyt") == [("dyt-folded", "dyt")]
    assert comparisons(["layernorm", "rmsnorm"], "layernorm") == [("rmsnorm", "layernorm")]


@pytest.mark.parametrize(("low", "high", "expected"), [(0.9, 0.99, "faster"), (1.01, 1.2, "slower"),
                                                       (0.9, 1.0, "no clear difference"),
                                                       (1.0, 1.1, "no clear difference")])
def test_verdict_says_faster_or_slower_only_when_the_interval_excludes_one(low, high, expected):
    assert judge({"ratio": (low + high) / 2, "low": low, "high": high}, MIN_SAMPLES).verdict == expected


def test_a_ratio_combined_from_two_median_intervals_matches_the_bootstrap():
    rng = np.random.default_rng(5)
    for spread in (0.02, 0.1, 0.3):
        a, b = rng.lognormal(np.log(9e-3), spread, 60), rng.lognormal(np.log(1e-2), 0.05, 40)
        exact = median_ratio(a, b)
        combined = ratio_from_intervals(np.median(a) * 1e3, median_interval(a), np.median(b) * 1e3,
                                        median_interval(b))
        width = exact.high - exact.low
        assert combined.ratio == pytest.approx(exact.ratio)
        assert combined.low == pytest.approx(exact.low, abs=0.15 * width)
        assert combined.high == pytest.approx(exact.high, abs=0.15 * width)
    point = ratio_from_intervals(2.0, (2.0, 2.0), 4.0, (4.0, 4.0))  # one timing each: no spread
    assert (point.ratio, point.low, point.high) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError):
        ratio_from_intervals(0.0, (0.0, 1.0), 1.0, (0.9, 1.1))


def test_markdown_opens_with_the_answer():
    md = markdown(with_summary(synthetic_report((1,))))
    lines = md.splitlines()
    assert lines[0] == "# dyt-bench: vit_tiny" and lines[2].startswith("## On vit_tiny: each variant against")
    first_table = next(i for i, line in enumerate(lines) if line.startswith("|"))
    assert lines[first_table].startswith("| device | runtime | shape | comparison | ratio of medians")
    torch_line = next(line for line in lines if line.startswith("| cpu | torch | batch=1 | dyt vs layernorm |"))
    assert re.search(r"\| x0\.\d{3} \[0\.\d{3}, 0\.\d{3}\] faster \|", torch_line)
    assert md.index("dyt vs layernorm") < md.index("## Every runner, setting and shape")


def test_latency_against_batch_is_one_plot_per_sequence_length_with_two_batch_sizes():
    timings = Timings()
    for shape in ("batch=1,seq=128", "batch=4,seq=128", "batch=1,seq=512"):
        for variant, speed in (("rmsnorm", 1.0), ("dyt", 0.9)):
            for value in np.linspace(0.99, 1.01, 5) * speed * batch_of(shape) / 1e3:
                timings.add("torch", shape, variant, value)
    report = report_from(timings, ["rmsnorm", "dyt"], "rmsnorm")
    plots = latency_plots(report, variant_colors(report))
    lines = [p for p in plots if "against batch size" in p]
    assert len(plots) == 4 and len(lines) == 1  # bars per shape; seq=512 ran one batch size: no line
    assert "torch, seq=128: median latency against batch size" in lines[0]
    assert lines[0].count("<polyline") == 2 and lines[0].count("<circle") == 4
    for variant, color in variant_colors(report).items():
        assert all(re.search(f'<rect class="mark" data-series="{variant}"[^>]* fill="{color}"', p) for p in plots[:3])


def test_a_layernorm_model_gets_each_twin_against_it_and_the_untimed_variant_is_named():
    timings = synthetic_timings((1,), {"torch": {"layernorm": 1.0, "rmsnorm": 0.97, "dyt": 0.9}})
    report = with_summary(report_from(
        timings, baseline="rmsnorm", own_norm="layernorm", not_timed={"dyt-folded": "its export does not match"},
        variants_made={"layernorm": "the model (layernorm)", "dyt": "twin: 4 layernorm layers converted to dyt"},
        optimizers_skipped={"ort-transformers": "no fusions for convnext models"}))
    assert [(e["variant"], e["reference"], e["verdict"]) for e in report["summary"]] == [
        ("rmsnorm", "layernorm", "faster"), ("dyt", "layernorm", "faster")]
    assert all(e["interval"] == "combined" for e in report["summary"])  # the baseline was rmsnorm, not the reference
    md = markdown(report)
    assert "Not timed: dyt-folded (its export does not match)." in md.split("## Every runner")[0]
    assert "- dyt: twin: 4 layernorm layers converted to dyt" in md
    assert "- ort-transformers: not applied (no fusions for convnext models)" in md


def test_a_median_of_zero_gives_no_ratio_instead_of_failing_the_report(tmp_path):
    report = report_from(synthetic_timings((1,), {"torch": {"layernorm": 1.0, "dyt": 0.9}}), ["layernorm", "dyt"])
    row = next(r for r in report["results"] if r["variant"] == "layernorm")
    row["summary"]["median_ms"], row["median_ci_ms"] = 0.0, [0.0, 0.0]
    assert summary_block(report) == []
    page = write_reports(report, tmp_path)["html"].read_text()
    assert "no variant could be compared with a twin timed on the same runtime" in page
    assert "| no variant could be compared with a twin timed on the same runtime |" in markdown(report)


def test_too_few_rounds_give_no_clear_difference_with_the_rounds_that_would_settle_it(tmp_path):
    timings = synthetic_timings((1,), {"torch": {"layernorm": 1.0, "dyt": 0.8}}, rounds=10)
    report = report_from(timings, ["layernorm", "dyt"])
    (entry,) = summary_block(report)
    assert entry["ratio"]["high"] < 1  # the interval alone would say faster
    assert entry["verdict"] == "no clear difference" and entry["samples"] == 10
    assert entry["rounds_to_settle"] == MIN_SAMPLES
    paths = write_reports(report, tmp_path)
    jsonschema.validate(json.loads(paths["json"].read_text()), REPORT_SCHEMA)
    line = next(x for x in paths["md"].read_text().splitlines() if x.startswith("| cpu | torch | batch=1 | dyt vs"))
    assert f"no clear difference (10 rounds, under the minimum of {MIN_SAMPLES}; about {MIN_SAMPLES} rounds" in line
    assert '<tr class="unclear"><td>cpu</td>' in paths["html"].read_text()  # no colour for it


def test_the_load_average_is_recorded_and_a_loaded_machine_named_beside_each_figure(tmp_path):
    report = report_from(synthetic_timings((1,), {"torch": {"layernorm": 1.0, "dyt": 0.9}}), ["layernorm", "dyt"])
    report["load"] = {"before": 3.0, "after": 5.5, "cpus": 2, "loaded": True}
    paths = write_reports(report, tmp_path)
    (entry,) = json.loads(paths["json"].read_text())["summary"]
    assert entry["verdict"] == "faster" and entry["loaded"]
    md = paths["md"].read_text()
    assert "faster (loaded machine: load average 3.00 → 5.50 on 2 CPUs)" in md
    assert "Measured at load average 3.00 → 5.50 on 2 CPUs (a loaded machine" in md
    report["load"] = {"before": 0.2, "after": 0.4, "cpus": 2, "loaded": False}
    md = markdown(report)
    assert "Measured at load average 0.20 → 0.40 on 2 CPUs." in md and "loaded machine" not in md


def test_batch_plots_have_round_y_ticks_and_the_unit_on_the_axis_title():
    report = synthetic_report((1, 8))
    lines = [p for p in latency_plots(report, variant_colors(report)) if "against batch size" in p]
    assert len(lines) == 3
    for plot in lines:
        ticks = [float(t) for t in re.findall(r'<text class="ytick"[^>]*>([^<]*)</text>', plot)]
        steps = np.diff(ticks)
        assert ticks[0] == 0 and len(ticks) >= 3 and np.allclose(steps, steps[0])
        group = re.search(r"<title>([^:<]*):", plot).group(1)
        top = max(r["summary"]["median_ms"] for r in report["results"] if r["group"] == group)
        assert top <= ticks[-1] < 2 * top  # the axis reaches the data, not far past it
        assert steps[0] / 10 ** np.floor(np.log10(steps[0])) in (1, 2, 2.5, 5)  # a round step
        assert '<text class="axis-title" x="4" y="38">median latency (ms)</text>' in plot and "(max" not in plot


def test_the_layer_table_sets_each_row_beside_a_same_size_copy_and_says_why_it_passes_main_memory():
    report = synthetic_report((1,))
    report["layer"] = {"copy_gbps": 10.0, "rows": [
        {"kind": "layernorm", "tokens": 256, "width": 384, "median_us": 38.0, "gbps": 20.7, "copy_gbps": 30.0,
         "bytes": 786432, "in_cache": True},
        {"kind": "dyt", "tokens": 256, "width": 384, "median_us": 50.0, "gbps": 7.9}]}  # a report from before
    md = markdown(report)
    assert "| layernorm | 256 | 384 | 0.75 | 38.0 | 20.70 | 69% | 207% | yes |" in md
    assert "| dyt | 256 | 384 | – | 50.0 | 7.90 | – | 79% | ? |" in md
    assert "a LayerNorm at 200% of it is a cache-resident size, not a layer faster than memory" in md


def test_the_layer_bench_times_a_same_size_copy_beside_the_layers():
    from dyt_deploy.bench.layer import cpu_layer_bench, last_level_cache_bytes

    rows = cpu_layer_bench([16], [32], repeats=3)
    assert [r["kind"] for r in rows] == ["layernorm", "rmsnorm", "dyt"]
    assert len({r["copy_gbps"] for r in rows}) == 1 and rows[0]["copy_gbps"] > 0 and rows[0]["bytes"] == 2 * 16 * 32 * 4
    cache = last_level_cache_bytes()
    assert rows[0]["in_cache"] is (None if cache is None else True)

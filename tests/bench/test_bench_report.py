"""Reports: valid JSON for the schema, Markdown tables, an HTML page with its plots inline."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import jsonschema
import numpy as np
import pytest

from dyt_deploy.bench.harness import Timings, analyze
from dyt_deploy.bench.report import REPORT_SCHEMA, write_reports
from dyt_deploy.bench.stats import median_interval


def synthetic_report() -> dict:
    rng = np.random.default_rng(0)
    timings = Timings()
    for shape, scale in (("batch=1", 1.0), ("batch=8", 6.0)):
        for variant, speed in (("layernorm", 1.0), ("dyt", 0.95)):
            for value in rng.normal(scale * speed, 0.01, 40) / 1e3:
                timings.add("ort/none", shape, variant, value)
    rows = analyze(timings, "layernorm", lambda s: int(s.split("=")[1]))
    return {
        "schema": "dyt-deploy/bench-report", "schema_version": 1, "created_at": "2026-01-01T00:00:00+00:00",
        "machine": {"cpu": "test cpu", "cpus": 2, "platform": "linux"}, "versions": {"torch": "x"},
        "settings": {"arch": "vit_tiny", "variants": ["layernorm", "dyt"], "baseline": "layernorm", "warmup": 1,
                     "iters": 40, "threads": 2,
                     "fusions": {"layernorm/ort-transformers": {"SkipLayerNormalization": 4}}},
        "results": [{**r.as_dict(), "median_ci_ms": list(median_interval(timings.seconds[(r.group, r.shape,
                                                                                            r.variant)]))}
                    for r in rows],
        "layer": {"copy_gbps": 10.0, "rows": [{"kind": "dyt", "tokens": 256, "width": 384, "median_us": 50.0,
                                               "gbps": 7.9}]},
        "profile": {"dyt/none": {"op_us_per_run": {"MatMul": 900.0, "Tanh": 100.0}, "total_us_per_run": 1000.0,
                                 "norm_share": 0.1}},
    }


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
    dyt_row = next(r for r in loaded["results"] if r["variant"] == "dyt" and r["shape"] == "batch=1")
    assert dyt_row["ratio_to_baseline"]["ratio"] == pytest.approx(0.95, abs=0.02)
    md = paths["md"].read_text()
    assert "| ort/none | batch=8 | dyt |" in md and "SkipLayerNormalization 4" in md and "10.0%" in md
    page = paths["html"].read_text()
    collector = _Collector()
    collector.feed(page)
    assert collector.tags.count("svg") == 4  # 2 shapes x latency bars, latency vs batch, op-time shares
    assert "<script" not in page and "http" not in page.split("<body>")[1]  # self-contained, no network


def test_schema_rejects_a_report_without_results():
    report = synthetic_report()
    del report["results"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(report, REPORT_SCHEMA)
    report = synthetic_report()
    report["results"][0]["summary"]["median_ms"] = "fast"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(report, REPORT_SCHEMA)

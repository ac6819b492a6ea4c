"""Verdicts on the service's figures: the live view and the controlled comparison say faster or slower
only with enough samples and an interval that excludes 1 (dyt-bench's rule, one function), record the
load average and the spread, and list each family's last comparison for the dashboard."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_testlib import BackgroundServer, images, json_request, serve_in_thread

from dyt_deploy.bench.stats import MIN_SAMPLES, judge
from service.http.app import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def fresh(repository: Path) -> Iterator[httpx.Client]:
    """A server of its own: no traffic but this module's."""
    with serve_in_thread(create_app(repository, Settings(threads=1, warmup_runs=1))) as running:
        running: BackgroundServer
        with httpx.Client(base_url=running.url, timeout=60) as client:
            yield client


def assert_judged(ratio: dict, samples: int) -> None:
    """The ratio carries the verdict judge() gives on its own figures, and its load record."""
    expected = judge(ratio, samples)
    assert ratio["samples"] == samples and ratio["min_samples"] == MIN_SAMPLES
    assert ratio["verdict"] == expected.verdict and ratio["rounds_to_settle"] == expected.rounds_to_settle
    assert expected.note in ratio["note"]
    assert ratio["low"] <= ratio["ratio"] <= ratio["high"]


def test_eight_live_requests_give_no_clear_difference_however_narrow_the_interval(fresh: httpx.Client) -> None:
    for seed in range(8):
        for model in ("vit-layernorm", "vit-dyt"):
            assert fresh.post(f"/v2/models/{model}/infer", json=json_request(images(1, seed))).status_code == 200
    report = fresh.get("/api/live").json()
    family = next(f for f in report["families"] if f["family"] == "vit_tiny")
    (ratio,) = family["ratios"]
    for figure in ("compute", "e2e"):
        assert_judged(ratio[figure], 8)
        assert ratio[figure]["verdict"] == "no clear difference"
        assert f"8 rounds, under the minimum of {MIN_SAMPLES}" in ratio[figure]["note"]
    load = family["load"]
    assert load["cpus"] >= 1 and load["before"] >= 0 and load["loaded"] == (max(load["before"], load["after"])
                                                                            > load["cpus"])


@pytest.mark.parametrize("rounds", [8, 2 * MIN_SAMPLES])
def test_a_comparison_records_load_spread_and_a_verdict_its_interval_supports(fresh: httpx.Client,
                                                                              rounds: int) -> None:
    response = fresh.post("/api/compare", json={"family": "vit_tiny", "rounds": rounds, "warmup": 1})
    assert response.status_code == 200, response.text
    report = response.json()
    (ratio,) = report["ratios"]
    assert_judged(ratio, rounds)
    if rounds < MIN_SAMPLES:
        assert ratio["verdict"] == "no clear difference"
        assert ratio["rounds_to_settle"] is None or ratio["rounds_to_settle"] >= MIN_SAMPLES  # None: within 1%
    clear = ratio["high"] < 1 or ratio["low"] > 1
    assert (ratio["verdict"] != "no clear difference") == (clear and rounds >= MIN_SAMPLES)
    assert {"before", "after", "cpus", "loaded"} <= set(report["load"])
    assert all(v["summary"]["std_ms"] >= 0 and len(v["timings_ms"]) == rounds for v in report["variants"])
    live = fresh.get("/api/live").json()
    assert live["comparisons"] == {"vit_tiny": report["finished_at"]}  # the dashboard finds it there

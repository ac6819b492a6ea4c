"""Latency comparison: live statistics of served traffic, and the controlled interleaved comparison."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
from service_testlib import images, json_request


def send_traffic(client: httpx.Client, requests: int = 5) -> None:
    for model in ("vit-layernorm", "vit-dyt"):
        for i in range(requests):
            response = client.post(f"/v2/models/{model}/infer", json=json_request(images(1, seed=i)))
            assert response.status_code == 200


def test_live_statistics_per_variant_and_ratio(client: httpx.Client) -> None:
    send_traffic(client)
    report = client.get("/api/live").json()
    families = {f["family"]: f for f in report["families"]}
    assert set(families) == {"vit_tiny", "bert_tiny"} and families["bert_tiny"]["ratios"] == []  # one variant
    family = families["vit_tiny"]
    assert family["baseline"] == "vit-layernorm"
    variants = {v["model"]: v for v in family["variants"]}
    assert {v["variant"] for v in variants.values()} == {"layernorm", "dyt"}
    for row in variants.values():
        assert row["state"] == "READY" and row["count"] >= 5
        compute, e2e = row["compute_ms"], row["e2e_ms"]
        assert 0 < compute["p50"] <= compute["p90"] <= compute["p99"]
        assert e2e["p50"] >= compute["p50"]  # end-to-end holds the compute
    (ratio,) = family["ratios"]
    assert ratio["model"] == "vit-dyt" and ratio["baseline"] == "vit-layernorm"
    expected = variants["vit-dyt"]["compute_ms"]["p50"] / variants["vit-layernorm"]["compute_ms"]["p50"]
    assert np.isclose(ratio["compute"]["ratio"], expected, rtol=0.25)  # newer traffic may have arrived since
    assert ratio["compute"]["low"] <= ratio["compute"]["ratio"] <= ratio["compute"]["high"]
    assert ratio["e2e"]["ratio"] > 0


def test_controlled_comparison_is_interleaved_and_outside_traffic_stats(client: httpx.Client) -> None:
    before = client.get("/v2/models/vit-dyt/stats").json()["model_stats"][0]["execution_count"]
    response = client.post("/api/compare", json={"family": "vit_tiny", "dims": {"batch": 2}, "rounds": 8,
                                                 "warmup": 1})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["schedule"] == "interleaved, rotated" and report["baseline"] == "vit-layernorm"
    assert report["dims"] == {"batch": 2} and report["rounds"] == 8
    summaries = {v["model"]: v["summary"] for v in report["variants"]}
    timings = {v["model"]: v["timings_ms"] for v in report["variants"]}
    assert all(s["count"] == 8 for s in summaries.values()) and all(len(t) == 8 for t in timings.values())
    assert np.isclose(summaries["vit-dyt"]["median_ms"], np.median(timings["vit-dyt"]))
    (ratio,) = report["ratios"]
    assert np.isclose(ratio["ratio"], summaries["vit-dyt"]["median_ms"] / summaries["vit-layernorm"]["median_ms"])
    assert ratio["low"] <= ratio["ratio"] <= ratio["high"]
    assert client.get("/api/compare/vit_tiny").json() == report
    assert client.get("/api/compare/other").status_code == 404
    after = client.get("/v2/models/vit-dyt/stats").json()["model_stats"][0]["execution_count"]
    assert after == before  # comparison calls are not counted as traffic


def wait_for_comparison(client: httpx.Client, timeout_s: float = 30) -> None:
    """Wait until /api/live reports a controlled comparison in progress."""
    deadline = time.monotonic() + timeout_s
    while client.get("/api/live").json()["comparison_running"] is None:
        assert time.monotonic() < deadline, "the comparison did not start"
        time.sleep(0.01)


def test_traffic_is_served_during_a_comparison_and_a_second_one_waits(client: httpx.Client) -> None:
    results: dict[str, httpx.Response] = {}
    body = {"family": "vit_tiny", "dims": {"batch": 8}, "rounds": 200, "warmup": 0}
    worker = threading.Thread(target=lambda: results.setdefault(
        "long", httpx.post(f"{client.base_url}/api/compare", json=body, timeout=120)))
    worker.start()
    try:
        wait_for_comparison(client)
        second = client.post("/api/compare", json={"family": "vit_tiny", "rounds": 1})
        assert second.status_code == 409 and "already running" in second.json()["error"]
        served = client.post("/v2/models/vit-dyt/infer", json=json_request(images(1)))
        assert served.status_code == 200
        assert worker.is_alive(), "the request should not have waited for the whole comparison"
    finally:
        worker.join(timeout=120)
    assert results["long"].status_code == 200
    assert all(v["summary"]["count"] == 200 for v in results["long"].json()["variants"])

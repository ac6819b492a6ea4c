"""dyt-serve --engine ray: the scaling flags become Serve's options, and bad ones are one error line
before Ray starts; the router's API key rule is dyt-serve's; the generation statistics that replicas
hand on add up in the stats deployment's store, the live view and /metrics (no Ray instance is
started here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from service.cli import RayScaling, main
from service.telemetry.generation_stats import GenerationRecord, GenerationStats, quantiles
from service.engines.ray import Handed, MergedMetrics, RemoteGenerationStats, Router, StatsCollector


def test_autoscaling_flags_become_serves_autoscaling_config() -> None:
    assert RayScaling(2, None, None, 2, 1, 0).autoscaling() is None
    assert RayScaling(1, 1, 4, 3, 1, 0).autoscaling() == {"min_replicas": 1, "max_replicas": 4,
                                                            "target_ongoing_requests": 3}
    assert RayScaling(1, 2, None, 2, 1, 0).autoscaling()["max_replicas"] == 2


@pytest.mark.parametrize(("flags", "message"), [
    (["--min-replicas", "3", "--max-replicas", "1"], "--min-replicas 3 / --max-replicas 1"),
    (["--replicas", "0"], "--replicas 0"),
])
def test_bad_scaling_flags_are_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              flags: list[str], message: str) -> None:
    status = main(["--repository", str(tmp_path), "--engine", "ray", *flags])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines



def test_the_router_asks_for_the_key_on_every_route_but_the_probes() -> None:
    router = Router({}, None, api_key="k3y")
    assert router.key_problem("/v2/health/ready", {}) is None
    assert "needs an API key" in router.key_problem("/v2/models/stats", {})
    assert router.key_problem("/v2/models/m/infer", {"x-api-key": "k3y"}) is None
    assert router.key_problem("/api/live", {"authorization": "Bearer k3y"}) is None
    assert router.key_problem("/metrics", {"x-api-key": "wrong"}) == "wrong API key"
    assert Router({}, None, api_key="k3y", public_metrics=True).key_problem("/metrics", {}) is None
    assert Router({}, None).key_problem("/v2/models/stats", {}) is None  # no key set: open


def test_generation_statistics_handed_on_by_two_replicas_add_up() -> None:
    collector, replicas = StatsCollector(window=8), [GenerationStats(window=8), GenerationStats(window=8)]
    handed = [Handed(), Handed()]

    def hand_on(i: int) -> None:  # what an answer of replica i carries, published by the router
        taken = handed[i].take(replicas[i])
        if taken is not None:
            collector.publish("m", f"r{i}", None, taken)

    replicas[0].started()
    hand_on(0)
    hand_on(0)  # nothing new: nothing handed on
    assert handed[0].take(replicas[0]) is None
    replicas[0].record(GenerationRecord(3, 4, "length", 0.1, 0.4, [0.01, 0.02, 0.03]))
    replicas[1].started()
    replicas[1].record(GenerationRecord(5, 1, "cancelled", 0.3, 0.3, []))
    replicas[1].started()
    hand_on(1)
    version, _, samples = replicas[0].export(0)
    assert version == 2 and [s[0] for s in samples] == [1, 2, 3, 4, 5]  # in order of their numbers
    assert [s[0] for s in replicas[0].export(3)[2]] == [4, 5]
    collector.publish("m", "r0", None, (1, {**replicas[0].export()[1], "finished": {}, "running": 9}, []))  # late
    hand_on(0)
    snapshot = collector.snapshot(["m"], 8)["m"]
    summary, (first, gaps) = RemoteGenerationStats(snapshot["generation"], 8).report()
    assert summary["requests"] == 2 and summary["running"] == 1 and summary["cancelled"] == 1
    assert summary["finish_reasons"] == {"stop": 0, "length": 1, "cancelled": 1}
    assert summary["prompt_tokens"] == 8 and summary["output_tokens"] == 5
    assert sorted(first) == [0.1, 0.3] and gaps == [0.01, 0.02, 0.03]
    assert summary["time_to_first_token_ms"] == pytest.approx(quantiles([0.1, 0.3], 1e3))
    assert summary["tokens_per_s"] == pytest.approx(quantiles([10.0]))

    registry = CollectorRegistry(auto_describe=False)
    merged = {"m": {"finished": summary["finish_reasons"], "failed": 0, "running": 1, "prompt_tokens": 8,
                    "output_tokens": 5}}
    registry.register(MergedMetrics([], {"m": ("m", "llama", "dyt")}, {"m": True}, merged))
    text = generate_latest(registry).decode()
    assert 'dyt_generate_requests_total{family="llama",finish_reason="cancelled",model="m",variant="dyt"} 1.0' in text
    assert 'dyt_generate_requests_total{family="llama",finish_reason="error",model="m",variant="dyt"} 0.0' in text
    assert 'dyt_generate_tokens_total{family="llama",kind="output",model="m",variant="dyt"} 5.0' in text
    assert 'dyt_generations_running{family="llama",model="m",variant="dyt"} 1.0' in text

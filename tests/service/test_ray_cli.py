"""dyt-serve --engine ray: the scaling flags become Serve's options, and bad ones are one error line
before Ray starts; the router's API key rule is dyt-serve's (no Ray instance is started here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cli import RayScaling, main
from service.ray_app import Router


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

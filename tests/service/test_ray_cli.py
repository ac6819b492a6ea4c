"""dyt-serve --engine ray: the scaling flags become Serve's options, and bad ones are one error line
before Ray starts (no Ray instance is started here; the service on Ray is tests/service/test_engines.py and
test_ray_generate.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.cli import RayScaling, main


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


def test_a_model_busy_answering_stays_ready_when_its_readiness_question_waits(tmp_path: Path) -> None:
    """RayModels' readiness poll: a describe() that times out while the model's replicas answered
    requests just now (the question queued behind them) keeps the model READY; the same time-out
    with no recent answer, or an error, makes it UNAVAILABLE. (A stand-in for the deployment
    handle: the logic is the ingress's own; tests/service/test_engines.py runs it on Ray.)"""
    import asyncio
    import time

    from service.engines.ray_models import RemoteModel
    from service.settings import Settings
    from service.telemetry.metrics import ServiceMetrics

    class Method:
        def __init__(self, answer: Any) -> None:
            self.answer = answer

        async def remote(self) -> Any:
            if isinstance(self.answer, float):
                await asyncio.sleep(self.answer)
            elif isinstance(self.answer, Exception):
                raise self.answer
            return self.answer

    class Deployment:  # after the first description, the poll asks state()
        describe = state = Method(None)

    model = RemoteModel("m", Deployment(), Settings(repository=str(tmp_path)), ServiceMetrics())
    model.state, model.described = "READY", True
    Deployment.state = Method(1.0)  # queued behind requests: no answer within 0.05 s
    model.answered_at = time.monotonic()
    asyncio.run(model.describe(0.05))
    assert model.state == "READY"
    model.answered_at = time.monotonic() - 10  # nothing answered lately: gone
    asyncio.run(model.describe(0.05))
    assert model.state == "UNAVAILABLE" and "answered within 0.05 s" in model.reason
    model.state, model.answered_at = "READY", time.monotonic()
    Deployment.state = Method(RuntimeError("actor died"))  # an error is never "busy"
    asyncio.run(model.describe(0.05))
    assert model.state == "UNAVAILABLE"

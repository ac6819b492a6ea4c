"""dyt-serve --engine ray: the scaling flags become Serve's options, and bad ones are one error line
before Ray starts (no Ray instance is started here; the service on Ray is tests/service/test_engines.py and
test_ray_generate.py)."""

from __future__ import annotations

from pathlib import Path

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

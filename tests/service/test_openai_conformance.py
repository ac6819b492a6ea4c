"""Conformance with independent clients, on real servers on loopback.

* KServe's Python SDK (its Open Inference Protocol v2 REST client): liveness, readiness, model
  readiness, inference with JSON and with binary tensors, outputs equal to onnxruntime in this
  process. The SDK pins packages this project's environment has newer (protobuf, psutil), so it
  lives in its own environment (``make kserve-env``); without it that test skips.
* Schemathesis over the server's /openapi.json: a few generated requests (valid and not) per
  documented operation, OpenAI routes included; no 5xx, and every answer's status, content type and
  body as documented. ``make stress`` runs the long version (benchmarks/openapi_fuzz.py).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from openai_testlib import openai_repository
from openai_testlib import settings as service_settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from service_testlib import BackgroundServer, images, serve_in_thread

from dyt_deploy.runners.onnxruntime_runner import OnnxRuntimeRunner
from service.http.app import create_app

ROOT = Path(__file__).resolve().parents[2]
KSERVE_PYTHON = ROOT / ".venv-kserve" / "bin" / "python"

EXAMPLES = 4  # per operation: 31 operations in ~20 s on 2 cores
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.skipif(not KSERVE_PYTHON.exists(), reason="KServe's SDK environment is missing: make kserve-env")
def test_kserve_sdk_reads_readiness_and_infers_json_and_binary(server: BackgroundServer, tmp_path: Path,
                                                               reference: dict[str, OnnxRuntimeRunner]) -> None:
    pixels = images(2, seed=3)
    np.save(tmp_path / "pixels.npy", pixels)
    done = subprocess.run([str(KSERVE_PYTHON), str(Path(__file__).with_name("kserve_check.py")), server.url,
                           "vit-dyt", str(tmp_path / "pixels.npy")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert (found["live"], found["ready"], found["model_ready"]) == (True, True, True)
    expected = reference["vit-dyt"].infer({"pixel_values": pixels})
    name = next(iter(expected))
    for kind in ("json", "binary"):
        answer = found[kind]
        assert (answer["model_name"], answer["id"], answer["name"]) == ("vit-dyt", f"kserve-{kind}", name)
        assert answer["shape"] == list(expected[name].shape)
        np.testing.assert_allclose(np.reshape(answer["data"], answer["shape"]), expected[name], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def fuzzed_server() -> Iterator[BackgroundServer]:
    with serve_in_thread(create_app(openai_repository(), service_settings(max_generate_tokens=8,
                                                                          compare_max_rounds=2))) as running:
        yield running


def fuzzed(operation: Any, seen: list[Any]) -> Any:
    """A hypothesis test of ``operation``: each generated case called and checked (and kept in ``seen``)."""

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def call(case: Any) -> None:
        seen.append(case)
        case.call_and_validate(checks=CHECKS, timeout=30)

    return call


def test_every_documented_operation_answers_as_documented(fuzzed_server: BackgroundServer) -> None:
    """A few generated requests per operation, every one checked; the figures are printed."""
    api = schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json")
    operations = [found.ok() for found in api.get_all_operations()]
    seen: list[Any] = []
    failures = []
    for operation in operations:
        try:
            fuzzed(operation, seen)()
        except Exception as err:  # each operation's first failure, all reported at the end
            failures.append(f"{operation.label}: {err}")
    print(f"schemathesis: {len(operations)} operations, {len(seen)} cases, {len(failures)} failures")
    labels = {operation.label for operation in operations}
    assert {"GET /v1/models", "POST /v1/completions", "POST /v1/chat/completions", "POST /v1/embeddings"} <= labels
    assert len(operations) >= 30 and len(seen) >= 2 * len(operations)
    assert not failures, "\n".join(failures)

"""INT8 folders served: the DyT and LayerNorm twins quantized into one repository (family
``ARCH-int8``) serve like any folder, and the dashboard's live view and controlled comparison put DyT
INT8 next to LayerNorm INT8 (LayerNorm as the baseline), on a real uvicorn server on loopback."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from reference_testlib import tiny_reference

from dyt_deploy.export import ExportConfig
from dyt_deploy.quantize import QuantizeOptions, quantize_model
from service.engines.uvicorn import serve_in_thread
from service.http.app import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def int8_repository(tmp_path_factory: pytest.TempPathFactory):
    twins = tiny_reference("image")
    repo = tmp_path_factory.mktemp("int8-served") / "repo"
    for norm in ("dyt", "layernorm"):  # the defaults: no data (LayerNorm's post-norm inputs: dynamic)
        quantize_model(twins.checkpoints[norm], None, ExportConfig(repository=repo), QuantizeOptions(verify=False))
    return repo, twins


def test_int8_twins_serve_and_compare_as_one_family(int8_repository) -> None:
    repo, twins = int8_repository
    assert {p.name for p in repo.iterdir()} == {"vit_tiny-dyt-int8", "vit_tiny-layernorm-int8"}
    pixels = np.load(twins.test_data)["pixel_values"][:2]
    body = {"inputs": [{"name": "pixel_values", "shape": list(pixels.shape), "datatype": "FP32",
                        "data": pixels.ravel().tolist()}]}
    with serve_in_thread(create_app(repo, Settings(threads=1, warmup_runs=1))) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        for name in ("vit_tiny-dyt-int8", "vit_tiny-layernorm-int8"):
            for _ in range(3):
                answer = client.post(f"/v2/models/{name}/infer", json=body)
                assert answer.status_code == 200 and answer.json()["outputs"][0]["shape"] == [2, 10]
        live = client.get("/api/live").json()
        (family,) = live["families"]
        assert family["family"] == "vit_tiny-int8"
        assert {v["model"]: v["variant"] for v in family["variants"]} == {"vit_tiny-dyt-int8": "dyt",
                                                                          "vit_tiny-layernorm-int8": "layernorm"}
        (ratio,) = family["ratios"]
        assert ratio["baseline"] == "vit_tiny-layernorm-int8" and ratio["compute"]["ratio"] > 0
        report = client.post("/api/compare", json={"family": "vit_tiny-int8", "dims": {"batch": 1}, "rounds": 4,
                                                   "warmup": 1})
        assert report.status_code == 200, report.text
        assert report.json()["baseline"] == "vit_tiny-layernorm-int8"
        assert {v["model"] for v in report.json()["variants"]} == {"vit_tiny-dyt-int8", "vit_tiny-layernorm-int8"}

"""The service on Ray Serve (service.engines.ray): a local Ray instance of 2 CPUs, the DyT and LayerNorm
ViTs deployed with 2 replicas each, reached through Serve's HTTP proxy with tritonclient and httpx.

One Ray instance serves the whole module (starting Ray takes seconds); it is shut down at the end.
Skipped, with the reason, where Ray is not installed or cannot start.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from service_testlib import free_port, images

from service.settings import Settings

ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'dyt-deploy[ray]')")
serve = pytest.importorskip("ray.serve")

MODELS = ("vit-layernorm", "vit-dyt")
APP = "dyt"


@pytest.fixture(scope="module")
def ray_serve() -> Iterator[str]:
    """A local Ray instance (2 CPUs, no dashboard, a small object store) and Serve's HTTP proxy on a
    free loopback port; yields the proxy's ``host:port``."""
    try:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 << 20, log_to_driver=False)
    except Exception as err:  # pragma: no cover - depends on the host
        pytest.skip(f"Ray could not start here: {type(err).__name__}: {err}")
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield f"127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def deployed(ray_serve: str, repository: Path) -> str:
    """Both ViTs, 2 replicas each (a quarter CPU apiece), behind the ingress; waits for readiness."""
    from service.engines.ray import build_app

    app = build_app(repository, Settings(threads=1, warmup_runs=1), models=list(MODELS), num_replicas=2,
                    num_cpus=0.25, ingress_cpus=0.1)
    serve.run(app, name=APP, route_prefix="/")
    deadline = time.monotonic() + 120
    while httpx.get(f"http://{ray_serve}/v2/health/ready", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the Serve application did not become ready"
        time.sleep(0.5)
    return ray_serve


def infer(client: httpclient.InferenceServerClient, model: str, array: np.ndarray, binary: bool) -> np.ndarray:
    given = httpclient.InferInput("pixel_values", list(array.shape), "FP32")
    given.set_data_from_numpy(array, binary_data=binary)
    wanted = [httpclient.InferRequestedOutput("logits", binary_data=binary)]
    return client.infer(model, [given], outputs=wanted).as_numpy("logits")


def model_stats(address: str, model: str) -> dict:
    return httpx.get(f"http://{address}/v2/models/{model}/stats", timeout=10).json()["model_stats"][0]


def test_health_metadata_and_routing_by_model_name(deployed: str) -> None:
    client = httpclient.InferenceServerClient(deployed)
    assert client.is_server_live() and client.is_server_ready()
    assert "statistics" in client.get_server_metadata()["extensions"]
    for model in MODELS:
        assert client.is_model_ready(model)
        metadata = client.get_model_metadata(model)
        assert metadata["name"] == model and metadata["inputs"][0]["name"] == "pixel_values"
        assert client.get_model_config(model)["max_batch_size"] >= 1
    unknown = httpx.get(f"http://{deployed}/v2/models/nope/ready")
    assert unknown.status_code == 404 and "vit-dyt" in unknown.json()["error"]
    index = httpx.post(f"http://{deployed}/v2/repository/index").json()
    assert {e["name"]: e["state"] for e in index} == {m: "READY" for m in MODELS}


def test_json_and_binary_infer_through_the_proxy_equal_the_runner(deployed: str, reference: dict) -> None:
    before = {m: model_stats(deployed, m)["inference_count"] for m in MODELS}
    client = httpclient.InferenceServerClient(deployed)
    sent = 0
    for model in MODELS:
        for seed, binary in enumerate((False, True, True, False) * 3):
            array = images(batch=2, seed=seed)
            expected = reference[model].infer({"pixel_values": array})["logits"]
            np.testing.assert_allclose(infer(client, model, array, binary), expected, rtol=1e-5, atol=1e-5)
            sent += 2 if model == MODELS[0] else 0
    assert model_stats(deployed, MODELS[0])["inference_count"] - before[MODELS[0]] == sent
    per_replica = httpx.get(f"http://{deployed}/api/replicas").json()
    for model in MODELS:  # Serve spread the requests over both replicas of each model
        assert len(per_replica[model]) == 2 and all(n > 0 for n in per_replica[model].values()), per_replica


def replica_actors(model: str) -> list:
    names = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if f"#model-{model}#" in a["name"] and a["name"].startswith("SERVE_REPLICA")]
    return [ray.get_actor(a["name"], namespace=a["namespace"]) for a in names]


def running_replicas(model: str) -> int:
    status = serve.status().applications[APP].deployments[f"model-{model}"]
    return status.replica_states.get("RUNNING", 0)


def infer_with_retries(address: str, model: str, array: np.ndarray, attempts: int = 40) -> tuple[np.ndarray, int]:
    """One request, retried (as a client should) on 503 or a broken connection; the outputs and
    how many attempts failed."""
    failed = 0
    client = httpclient.InferenceServerClient(address, network_timeout=30)
    for _ in range(attempts):
        try:
            return infer(client, model, array, binary=True), failed
        except Exception:
            failed += 1
            client = httpclient.InferenceServerClient(address, network_timeout=30)
            time.sleep(0.2)
    raise AssertionError(f"{model}: no answer after {attempts} attempts")


def traffic(address: str, model: str, stop: threading.Event, seed: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Requests one after the other until ``stop``: (input, output, failed attempts) of each."""
    done = []
    while not stop.is_set():
        array = images(batch=1, seed=seed + len(done))
        outputs, failed = infer_with_retries(address, model, array)
        done.append((array, outputs, failed))
    return done


def test_killing_a_replica_loses_no_retried_request_and_stats_count_each_once(deployed: str,
                                                                                reference: dict) -> None:
    model = "vit-dyt"
    before = model_stats(deployed, model)
    victim = replica_actors(model)[0]
    stop = threading.Event()
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(traffic, deployed, model, stop, 1000 * (i + 1)) for i in range(3)]
        time.sleep(1.0)
        ray.kill(victim, no_restart=True)
        time.sleep(3.0)  # traffic goes on while Serve notices and replaces the replica
        stop.set()
        answers = [a for f in futures for a in f.result(timeout=180)]
    for array, outputs, _ in answers:
        expected = reference[model].infer({"pixel_values": array})["logits"]
        np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)
    deadline = time.monotonic() + 90
    while running_replicas(model) != 2 or len(replica_actors(model)) != 2:
        assert time.monotonic() < deadline, "the deployment did not return to 2 replicas"
        time.sleep(0.5)
    assert victim._actor_id not in {a._actor_id for a in replica_actors(model)}  # a new replica replaced it
    after = model_stats(deployed, model)
    assert after["inference_count"] - before["inference_count"] == len(answers)
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == len(answers)


def test_live_ratios_and_comparison_cover_every_replica(deployed: str) -> None:
    live = httpx.get(f"http://{deployed}/api/live", timeout=30).json()
    (family,) = live["families"]
    variants = {v["model"]: v for v in family["variants"]}
    everything = {m["name"]: m for m in httpx.get(f"http://{deployed}/v2/models/stats").json()["model_stats"]}
    for model in MODELS:
        assert variants[model]["total_count"] == everything[model]["inference_stats"]["success"]["count"] > 0
    metrics = httpx.get(f"http://{deployed}/metrics").text
    for model in MODELS:
        line = next(li for li in metrics.splitlines() if li.startswith("dyt_inference_requests_total{")
                    and f'model="{model}"' in li and 'outcome="success"' in li)
        assert float(line.rsplit(" ", 1)[1]) == everything[model]["inference_stats"]["success"]["count"]
    page = httpx.get(f"http://{deployed}/")
    assert "<html" in page.text.lower() and "default-src 'none'" in page.headers["content-security-policy"]
    (ratio,) = family["ratios"]
    assert ratio["baseline"] == "vit-layernorm" and ratio["compute"]["ratio"] > 0
    report = httpx.post(f"http://{deployed}/api/compare", timeout=60,
                        json={"family": "vit_tiny", "dims": {"batch": 1}, "rounds": 4, "warmup": 1}).json()
    assert report["baseline"] == "vit-layernorm" and {v["model"] for v in report["variants"]} == set(MODELS)
    assert all(len(v["timings_ms"]) == 4 for v in report["variants"])
    assert httpx.get(f"http://{deployed}/api/compare/vit_tiny").json() == report
    too_big = httpx.post(f"http://{deployed}/api/compare", timeout=60,
                         json={"family": "vit_tiny", "dims": {"batch": 10**6}, "rounds": 1, "warmup": 0})
    assert too_big.status_code == 400 and "batch" in too_big.json()["error"]
    assert httpx.post(f"http://{deployed}/api/compare", json={"rounds": 2}).status_code == 400

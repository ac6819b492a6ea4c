"""One app, two engines: the same HTTP battery against dyt-serve's uvicorn and against Ray Serve
(the same app as its ingress, each model a deployment), both over the same repository with the same
settings (an API key, small limits), on real servers on loopback. Each check asserts what the answer
must be, and that both engines answer it identically (status and body; replica ids and timings
aside).

The Ray side is one local Ray instance (2 CPUs) started with the proxy callback
(service.engines.ray_proxy), two replicas per model (a fifth of a CPU apiece). Then what only Ray has:
requests spread over both replicas of each model, and a replica killed during traffic loses no
request that the client retries while the statistics count each answered request once (last: it
changes the deployment). Skipped, with the reason, where Ray is not installed or cannot start.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from service_testlib import framed_events, images, json_request, local_ray, wait_until_ready

from service.engines.uvicorn import serve_in_thread
from service.http.app import create_app
from service.settings import Settings

ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'dyt-deploy[ray]')")
serve = pytest.importorskip("ray.serve")

APP = "battery"
KEY = "battery-key"
AUTH = {"x-api-key": KEY}
LLM = "llm-dyt"
ENCODER = "bert-dyt"
VITS = ("vit-layernorm", "vit-dyt")
SETTINGS = Settings(threads=1, warmup_runs=1, api_key=KEY, max_body_bytes=2 << 20, max_in_flight=2,
                    body_timeout_s=3.0, body_grace_s=30.0, compare_max_batch=8, max_generate_tokens=40)
PROMPT = {"text_input": "DyT is", "parameters": {"max_tokens": 12}}
TIMING_FIELDS = {"time_to_first_token_ms", "tokens_per_s"}


@pytest.fixture(scope="module")
def battery_repository(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two ViTs and the BERT encoder of the service tests' repository, and a depth-1 llama decoder
    (text-generation)."""
    from dyt_deploy.checkpoint import save_checkpoint
    from dyt_deploy.export import export_onnx
    from dyt_deploy.models import create_model

    root = tmp_path_factory.mktemp("battery")
    for name in (*VITS, ENCODER):
        shutil.copytree(repository / name, root / "repo" / name)
        np.savez(root / "repo" / name / "examples.npz", pixel_values=images(batch=3, seed=11),
                 labels=np.array([0, 1, 2]))  # the dashboard's labelled examples
    save_checkpoint(create_model("llama_tiny", norm="dyt", seed=0, dim=32, depth=1, heads=2, ffn_dim=64,
                                 vocab_size=256, max_seq_len=64), root / "llm.pt")
    export_onnx(root / "llm.pt", repository=root / "repo", name=LLM, family="llama_gen",
                task="text-generation", verify=False)
    return root / "repo"


@pytest.fixture(scope="module")
def uvicorn_url(battery_repository: Path) -> Iterator[str]:
    with serve_in_thread(create_app(battery_repository, SETTINGS)) as server:
        yield server.url


@pytest.fixture(scope="module")
def ray_url(battery_repository: Path) -> Iterator[str]:
    """The same repository and settings on Ray Serve: two replicas per model (a fifth of a CPU apiece), the app as
    the ingress,
    the proxy on a free loopback port with the proxy callback (as dyt-serve --engine ray starts it)."""
    from service.engines.ray import build_app
    from service.engines.ray_proxy import ray_environment

    with local_ray(ray_environment(SETTINGS)) as address:  # the proxy callback, as dyt-serve --engine ray
        serve.run(build_app(battery_repository, SETTINGS, num_replicas=2, num_cpus=0.2, ingress_cpus=0.1),
                  name=APP, route_prefix="/")
        wait_until_ready(f"http://{address}")
        yield f"http://{address}"


@pytest.fixture(scope="module")
def engines(uvicorn_url: str, ray_url: str) -> dict[str, str]:
    return {"uvicorn": uvicorn_url, "ray": ray_url}


def same(engines: dict[str, str], check: Callable[[str], Any]) -> Any:
    """``check``'s result on each engine; they must be equal. Returns it."""
    found = {engine: check(url) for engine, url in engines.items()}
    assert found["uvicorn"] == found["ray"], found
    return found["uvicorn"]


def answer(response: httpx.Response) -> tuple[int, Any]:
    """Status and body (JSON when it is JSON), timings left out."""
    try:
        body = response.json()
    except ValueError:
        return response.status_code, response.text
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in TIMING_FIELDS}
    return response.status_code, body


def get(url: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    return answer(httpx.get(url + path, timeout=60, **kwargs))


def post(url: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    return answer(httpx.post(url + path, timeout=60, **kwargs))


def raw(url: str, data: bytes) -> tuple[str, Any]:
    """``data`` sent on a fresh connection as it is; the answer's status line and JSON body."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(data)
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += conn.recv(65536) or b"\r\n\r\n"
        head, _, body = reply.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(
            b"content-length:"))
        while len(body) < length:
            body += conn.recv(65536)
    return head.split(b"\r\n")[0].decode(), json.loads(body)


def test_health_metadata_and_the_openapi_document(engines: dict[str, str]) -> None:
    assert same(engines, lambda u: get(u, "/v2/health/live")) == (200, {"live": True})
    assert same(engines, lambda u: get(u, "/v2/health/ready")) == (200, {"ready": True})
    status, meta = same(engines, lambda u: get(u, "/v2", headers=AUTH))
    assert status == 200 and "generate" in meta["extensions"]
    for model in (*VITS, LLM, ENCODER):
        status, body = same(engines, lambda u, m=model: get(u, f"/v2/models/{m}", headers=AUTH))
        assert status == 200 and body["name"] == model
        assert same(engines, lambda u, m=model: get(u, f"/v2/models/{m}/ready", headers=AUTH))[0] == 200
        assert same(engines, lambda u, m=model: get(u, f"/v2/models/{m}/config", headers=AUTH))[0] == 200
    status, index = same(engines, lambda u: post(u, "/v2/repository/index", headers=AUTH))
    assert status == 200 and {e["name"]: e["state"] for e in index} == dict.fromkeys((*VITS, LLM, ENCODER), "READY")
    status, document = same(engines, lambda u: get(u, "/openapi.json", headers=AUTH))
    operations = [op for item in document["paths"].values() for op in item.values() if isinstance(op, dict)]
    assert status == 200 and len(operations) >= 24
    assert any(p.endswith("/infer") for p in document["paths"]) and any(p.endswith("/generate") for p in
                                                                        document["paths"])


def test_the_api_key_is_asked_for_everywhere_but_the_probes(engines: dict[str, str]) -> None:
    for path in ("/v2", "/v2/models/vit-dyt", "/api/live", "/metrics", "/", "/-/routes", "/-/healthz"):
        status, body = same(engines, lambda u, p=path: get(u, p))
        assert status == 401 and "API key" in body["error"], (path, body)
    status, body = same(engines, lambda u: get(u, "/v2", headers={"x-api-key": "wrong"}))
    assert (status, body) == (401, {"error": "wrong API key"})
    assert same(engines, lambda u: get(u, "/v2", headers={"authorization": f"Bearer {KEY}"}))[0] == 200


def test_inference_json_and_binary_answers_the_same_on_both(engines: dict[str, str], reference: dict) -> None:
    array = images(batch=3, seed=7)
    for model in VITS:
        expected = reference[model].infer({"pixel_values": array})["logits"]
        for binary in (False, True):
            def infer(url: str, m: str = model, b: bool = binary) -> list:
                client = httpclient.InferenceServerClient(url.removeprefix("http://"))
                given = httpclient.InferInput("pixel_values", list(array.shape), "FP32")
                given.set_data_from_numpy(array, binary_data=b)
                wanted = [httpclient.InferRequestedOutput("logits", binary_data=b)]
                result = client.infer(m, [given], outputs=wanted, headers=dict(AUTH))  # (it adds to the dict)
                return result.as_numpy("logits").tolist()

            np.testing.assert_allclose(np.array(same(engines, infer)), expected, rtol=1e-5, atol=1e-5)


def test_bad_inputs_get_the_same_errors(engines: dict[str, str]) -> None:
    url = "/v2/models/vit-dyt/infer"
    wrong_shape = json_request(np.zeros((1, 3, 16, 16), np.float32))
    cases = [
        (url, {"json": wrong_shape}, 400),
        ("/v2/models/nope/infer", {"json": json_request(images(1))}, 404),
        (url, {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
        (url, {"json": {"inputs": [{"name": "pixel_values", "shape": [1], "datatype": "FP32", "data": "x"}]}}, 400),
        (url, {"json": json_request(np.zeros((33, 3, 32, 32), np.float32))}, 400),  # over max_batch_size 32
    ]
    for path, kwargs, expected in cases:
        headers = {**AUTH, **kwargs.pop("headers", {})}
        status, body = same(engines, lambda u, p=path, k=kwargs, h=headers: post(u, p, headers=h, **k))
        assert status == expected and body["error"], (path, body)


def test_limits_apply_on_both(engines: dict[str, str]) -> None:
    big = b'{"inputs": [' + b" " * (3 << 20)  # 3 MiB: over the 2 MiB body limit (and the model's JSON limit)
    status, body = same(engines, lambda u: post(u, "/v2/models/vit-dyt/infer", content=big, headers={
        **AUTH, "content-type": "application/json"}))
    assert status == 413 and "limit" in body["error"], body
    status, body = same(engines, lambda u: post(u, "/v2/models/llm-dyt/generate", content=b" " * (3 << 20),
                                                headers={**AUTH, "content-type": "application/json"}))
    assert status == 413
    bad_compares = [b'{"family": "vit_tiny", "rounds": Infinity}', b'{"family": "vit_tiny", "warmup": 100000}',
                    b'{"family": "vit_tiny", "dims": {"batch": 32}}', b"[" * 100_000 + b"]" * 100_000]
    for content in bad_compares:
        status, body = same(engines, lambda u, c=content: post(u, "/api/compare", content=c, headers={
            **AUTH, "content-type": "application/json"}))
        assert status in (400, 413) and body["error"], (content[:40], body)


def test_malformed_http_and_oversized_heads_are_json_on_both(engines: dict[str, str]) -> None:
    status, body = same(engines, lambda u: raw(u, b"GET /v2 HTTP/1.1\r\nHost x\r\n\r\n"))
    assert status.startswith("HTTP/1.1 400") and "malformed HTTP" in body["error"]
    huge = b"GET /v2 HTTP/1.1\r\nHost: x\r\n" + b"".join(b"x-h%d: %s\r\n" % (i, b"a" * 1000) for i in range(80))
    status, body = same(engines, lambda u: raw(u, huge))  # a head that goes on: refused once over 64 KiB
    assert status.startswith("HTTP/1.1 431") and "headers" in body["error"]


def test_a_body_that_does_not_arrive_is_refused_on_both(engines: dict[str, str]) -> None:
    def stalled(url: str) -> tuple[str, Any]:
        return raw(url, b"POST /v2/models/vit-dyt/infer HTTP/1.1\r\nHost: x\r\nx-api-key: " + KEY.encode()
                   + b"\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"inputs\"")

    status, body = same(engines, stalled)
    assert status.startswith("HTTP/1.1 408") and "body" in body["error"]


def test_a_burst_is_shed_with_retry_after_on_both(engines: dict[str, str]) -> None:
    body = json.dumps(json_request(images(16))).encode()

    def burst(url: str) -> tuple[bool, bool]:
        with httpx.Client(timeout=120, headers={**AUTH, "content-type": "application/json"}) as client:
            for _ in range(3):  # three bursts at most: one must overlap the bound of 2 in flight
                with ThreadPoolExecutor(24) as pool:
                    answers = list(pool.map(lambda _: client.post(f"{url}/v2/models/vit-dyt/infer", content=body),
                                            range(24)))
                shed = [a for a in answers if a.status_code == 503]
                if shed:
                    break
        statuses = {a.status_code for a in answers}
        return bool(shed) and all(a.headers.get("retry-after") == "1" for a in shed), statuses <= {200, 503}

    assert same(engines, burst) == (True, True)


def test_generation_and_replicas_on_both(engines: dict[str, str]) -> None:
    greedy = {**PROMPT, "parameters": {**PROMPT["parameters"], "temperature": 0}}
    status, whole = same(engines, lambda u: post(u, f"/v2/models/{LLM}/generate", json=greedy, headers=AUTH))
    assert status == 200 and whole["output_tokens"] == 12 and whole["finish_reason"] == "length"

    def streamed(url: str) -> str:
        response = httpx.post(f"{url}/v2/models/{LLM}/generate_stream", json=greedy, headers=AUTH, timeout=60)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        return "".join(e["text_output"] for e in framed_events(response.content))

    assert same(engines, streamed) == whole["text_output"]
    too_many = {**PROMPT, "parameters": {"max_tokens": 41}}
    status, body = same(engines, lambda u: post(u, f"/v2/models/{LLM}/generate", json=too_many, headers=AUTH))
    assert status == 400 and "max_tokens" in body["error"]
    for url in engines.values():  # the generations are counted, by whoever answered them
        status, replicas = get(url, "/api/replicas", headers=AUTH)
        assert status == 200 and sum(replicas[LLM].values()) >= 2, replicas


def test_dashboard_live_view_and_metrics_on_both(engines: dict[str, str]) -> None:
    def page(url: str) -> tuple[int, str]:
        response = httpx.get(url + "/", headers=AUTH, timeout=30)
        return response.status_code, response.headers["content-security-policy"]

    status, policy = same(engines, page)
    assert status == 200 and "default-src 'none'" in policy
    for url in engines.values():
        status, live = get(url, "/api/live", headers=AUTH)
        (family,) = [f for f in live["families"] if f["family"] == "vit_tiny"]
        assert status == 200 and {v["model"] for v in family["variants"]} == set(VITS)
        metrics = httpx.get(url + "/metrics", headers=AUTH, timeout=30).text
        assert 'dyt_inference_requests_total{family="vit_tiny",model="vit-dyt",outcome="success"' in metrics
        assert "dyt_generate_requests_total" in metrics
    def compared(url: str) -> tuple[int, list[str]]:
        response = httpx.post(url + "/api/compare", headers=AUTH, timeout=60,
                              json={"family": "vit_tiny", "dims": {"batch": 1}, "rounds": 2, "warmup": 0})
        return response.status_code, sorted(v["model"] for v in response.json()["variants"])

    assert same(engines, compared) == (200, sorted(VITS))


def test_labelled_examples_run_on_both(engines: dict[str, str]) -> None:
    def predicted(url: str) -> tuple[int, list]:
        status, report = get(url, "/api/examples", headers=AUTH)
        (family,) = report["families"]
        return status, [(v["model"], [(p["label"], round(p["confidence"], 4)) for p in v["predictions"]])
                        for v in family["variants"]]

    status, variants = same(engines, predicted)
    assert status == 200 and sorted(m for m, _ in variants) == sorted(VITS)
    assert all(len(predictions) == 3 for _, predictions in variants)


def test_the_openai_client_gets_the_same_answers_on_both(engines: dict[str, str]) -> None:
    openai = pytest.importorskip("openai", reason="the openai client is not installed (pip install -e '.[test]')")

    def client(url: str) -> Any:
        return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)

    models = same(engines, lambda u: sorted(m.id for m in client(u).models.list()))
    assert models == sorted((*VITS, LLM, ENCODER))
    messages = [{"role": "user", "content": "DyT is"}]

    def chat(url: str) -> tuple[str, int, int, str]:
        reply = client(url).chat.completions.create(model=LLM, messages=messages, max_tokens=10, temperature=0)
        return (reply.choices[0].message.content, reply.usage.prompt_tokens, reply.usage.completion_tokens,
                reply.choices[0].finish_reason)

    text, prompt_tokens, completion_tokens, reason = same(engines, chat)
    assert completion_tokens == 10 and reason == "length" and prompt_tokens > 0

    def streamed(url: str) -> tuple[str, int]:
        chunks = list(client(url).chat.completions.create(model=LLM, messages=messages, max_tokens=10, temperature=0,
                                                          stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks[-1].usage.completion_tokens

    assert same(engines, streamed) == (text, 10)

    def refused(url: str) -> tuple[int, str | None]:
        with pytest.raises(openai.BadRequestError) as caught:
            client(url).chat.completions.create(model=LLM, messages=messages, n=2)
        return caught.value.status_code, caught.value.param

    assert same(engines, refused) == (400, "n")

    bad = {  # the list: each a 4xx in OpenAI's error shape, the same on both engines
        "unknown model": ({"model": "nope", "messages": messages}, 404),
        "messages not a list": ({"model": LLM, "messages": "DyT is"}, 400),
        "a role the default template refuses": ({"model": LLM, "messages": [{"role": "tool", "content": "x"}]}, 400),
        "max_tokens over the limit": ({"model": LLM, "messages": messages, "max_tokens": 41}, 400),
        "prompt over the context": ({"model": LLM, "messages": [{"role": "user", "content": "x" * 60}],
                                     "max_tokens": 30}, 400),
    }
    for case, (fields, expected) in bad.items():
        status, body = same(engines, lambda u, f=fields: post(u, "/v1/chat/completions", json=f, headers=AUTH))
        assert status == expected and set(body["error"]) == {"message", "type", "param", "code"}, (case, body)
    status, body = same(engines, lambda u: post(u, "/v1/chat/completions", content=b'{"model": "\xff"}', headers={
        **AUTH, "content-type": "application/json"}))
    assert status == 400 and body["error"]["message"], body  # not UTF-8

    def embedded(url: str) -> list[list[float]]:
        answer = client(url).embeddings.create(model=ENCODER, input=["DyT", "is tanh"], encoding_format="float")
        return [np.round(d.embedding, 5).tolist() for d in answer.data]

    vectors = same(engines, embedded)
    assert len(vectors) == 2 and len(vectors[0]) > 1 and vectors[0] != vectors[1]


def test_the_proxy_drops_the_headers_that_lift_rays_time_outs() -> None:
    from service.engines.ray_proxy import EDGE_HEADERS, EdgeHeaders

    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        seen.append(scope["headers"])

    headers = [(b"x-request-timeout-seconds", b"0"), (b"x-request-disconnect-disabled", b"?1"), (b"host", b"x")]
    asyncio.run(EdgeHeaders(app)({"type": "http", "headers": headers}, None, None))
    assert seen == [[(b"host", b"x")]] and not EDGE_HEADERS & {k for k, _ in seen[0]}


def test_requests_spread_over_both_replicas_of_each_model(engines: dict[str, str]) -> None:
    array = images(batch=1, seed=3)
    client = httpclient.InferenceServerClient(engines["ray"].removeprefix("http://"))
    for model in VITS:
        for _ in range(12):
            given = httpclient.InferInput("pixel_values", list(array.shape), "FP32")
            given.set_data_from_numpy(array, binary_data=True)
            client.infer(model, [given], headers=dict(AUTH))
    status, replicas = get(engines["ray"], "/api/replicas", headers=AUTH)
    for model in VITS:  # Serve spread the requests over both replicas of each model
        assert len(replicas[model]) == 2 and all(n > 0 for n in replicas[model].values()), replicas


def replica_actors(model: str) -> list:
    names = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if f"#model-{model}#" in a["name"] and a["name"].startswith("SERVE_REPLICA")]
    return [ray.get_actor(a["name"], namespace=a["namespace"]) for a in names]


def running_replicas(model: str) -> int:
    return serve.status().applications[APP].deployments[f"model-{model}"].replica_states.get("RUNNING", 0)


def infer_with_retries(address: str, model: str, array: np.ndarray, attempts: int = 40) -> tuple[np.ndarray, int]:
    """One request, retried (as a client should) on 503 or a broken connection; the outputs and
    how many attempts failed."""
    failed = 0
    for _ in range(attempts):
        try:
            client = httpclient.InferenceServerClient(address, network_timeout=30)
            given = httpclient.InferInput("pixel_values", list(array.shape), "FP32")
            given.set_data_from_numpy(array, binary_data=True)
            return client.infer(model, [given], headers=dict(AUTH)).as_numpy("logits"), failed
        except Exception:
            failed += 1
            time.sleep(0.2)
    raise AssertionError(f"{model}: no answer after {attempts} attempts")


def traffic(address: str, model: str, stop: threading.Event, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Requests one after the other until ``stop``: (input, output) of each."""
    done = []
    while not stop.is_set():
        array = images(batch=1, seed=seed + len(done))
        done.append((array, infer_with_retries(address, model, array)[0]))
    return done


def test_killing_a_replica_loses_no_retried_request_and_stats_count_each_once(engines: dict[str, str],
                                                                                reference: dict) -> None:
    url, model = engines["ray"], "vit-dyt"
    address = url.removeprefix("http://")

    def served() -> int:
        return get(url, f"/v2/models/{model}/stats", headers=AUTH)[1]["model_stats"][0]["inference_stats"][
            "success"]["count"]

    before, victim, stop = served(), replica_actors(model)[0], threading.Event()
    with ThreadPoolExecutor(2) as pool:  # two clients: within the bound of 2 in flight
        futures = [pool.submit(traffic, address, model, stop, 1000 * (i + 1)) for i in range(2)]
        time.sleep(1.0)
        ray.kill(victim, no_restart=True)
        time.sleep(3.0)  # traffic goes on while Serve notices and replaces the replica
        stop.set()
        answers = [a for f in futures for a in f.result(timeout=180)]
    for array, outputs in answers:
        expected = reference[model].infer({"pixel_values": array})["logits"]
        np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)
    deadline = time.monotonic() + 90
    while running_replicas(model) != 2 or len(replica_actors(model)) != 2:
        assert time.monotonic() < deadline, "the deployment did not return to 2 replicas"
        time.sleep(0.5)
    assert victim._actor_id not in {a._actor_id for a in replica_actors(model)}  # a new replica replaced it
    assert served() - before == len(answers)  # each answered request once; the failed attempts not

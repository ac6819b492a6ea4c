"""The generate extension on a real server (uvicorn on loopback, httpx): tiny zoo llama decoders, a DyT one
and its RMSNorm twin, exported once per session with --task text-generation into a repository beside a
ViT. Greedy text equals dyt_deploy.generate in PyTorch, the stream adds up to the same text, seeded
sampling repeats, stop sequences cut, every bad parameter and limit is a 400, a client that goes away
stops its generation, a long stream blocks nobody, statistics reach /api/live, /metrics and the
dashboard. tritonclient has no generate API: it is used for the metadata and readiness routes."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import torch
from chromium_testlib import headless_chromium, needs_chromium
from prometheus_client.parser import text_string_to_metric_families
from service_testlib import (
    API_KEY,
    BackgroundServer,
    SlowDecoder,
    framed_events,
    images,
    json_request,
    serve_in_thread,
    sse_events,
)

import dyt_deploy
from dyt_deploy.checkpoint import save_checkpoint
from dyt_deploy.export import export_onnx
from dyt_deploy.models import create_model
from service.errors import BadRequest
from service.http.app import create_app
from service.protocol.generate import StopSequences, parse_generate_request
from service.settings import Settings

TINY = {"dim": 32, "depth": 1, "heads": 2, "ffn_dim": 64, "vocab_size": 256, "max_seq_len": 64}
LIMITS = {"max_generate_tokens": 40, "max_prompt_tokens": 40, "max_generations": 2}
PROMPT = "DyT is"
STEP_S = 0.02  # a slowed step: long enough for a client to leave mid-generation


@pytest.fixture(scope="session")
def textgen_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """repo/llm-dyt and repo/llm-rmsnorm (family llama_gen, 64 positions, byte vocabulary), exported
    with task text-generation, and repo/vit-dyt (a depth-1 ViT on 32x32 images: a model that does not
    generate)."""
    root = tmp_path_factory.mktemp("textgen")
    for norm in ("dyt", "rmsnorm"):
        model = create_model("llama_tiny", norm=norm, seed=0, **TINY)
        save_checkpoint(model, root / f"{norm}.pt")
        export_onnx(root / f"{norm}.pt", repository=root / "repo", name=f"llm-{norm}", family="llama_gen",
                    task="text-generation", verify=False)
    save_checkpoint(create_model("vit_tiny", norm="dyt", depth=1, img_size=32), root / "vit.pt")
    export_onnx(root / "vit.pt", repository=root / "repo", name="vit-dyt", verify=False)
    return root / "repo"


@pytest.fixture(scope="session")
def gen_server(textgen_repository: Path) -> Iterator[BackgroundServer]:
    with serve_in_thread(create_app(textgen_repository, Settings(threads=1, warmup_runs=1, **LIMITS))) as running:
        yield running


@pytest.fixture(scope="session")
def gen(gen_server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gen_server.url, timeout=30) as http:
        yield http


@pytest.fixture(scope="session")
def torch_models(textgen_repository: Path) -> dict[str, torch.nn.Module]:
    return {name: dyt_deploy.load_model(textgen_repository.parent / f"{name.split('-')[1]}.pt")
            for name in ("llm-dyt", "llm-rmsnorm")}


def generate(client: httpx.Client, model: str, text: str = PROMPT, **parameters: Any) -> httpx.Response:
    return client.post(f"/v2/models/{model}/generate", json={"text_input": text, "parameters": parameters})


def stream_events(client: httpx.Client, path: str, body: dict) -> list[dict]:
    """The stream's events, read as server-sent events (httpx-sse)."""
    with client.stream("POST", path, json=body) as answer:
        assert answer.status_code == 200, answer.read()
        assert answer.headers["content-type"].startswith("text/event-stream")
        return list(sse_events(answer))


@contextmanager
def slow_steps(server: BackgroundServer, name: str, seconds: float = STEP_S) -> Iterator[Any]:
    """Slow every step of model ``name``'s generations (the server runs in this process)."""
    model = server.app.state.service.registry.models[name]
    original = model.generator.new_decoder
    model.generator.new_decoder = lambda: SlowDecoder(original(), seconds)
    try:
        yield model
    finally:
        model.generator.new_decoder = original


def wait_for(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the server"
        time.sleep(0.01)


# ------------------------------------------------------------------------------------------------
# Text


@pytest.mark.parametrize("name", ["llm-dyt", "llm-rmsnorm"])
def test_greedy_generate_equals_pytorch(gen: httpx.Client, torch_models: dict, name: str) -> None:
    answer = gen.post(f"/v2/models/{name}/generate",
                      json={"id": "req-1", "text_input": PROMPT, "parameters": {"max_tokens": 12}})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = dyt_deploy.generate(torch_models[name], PROMPT, 12)
    assert body["text_output"] == expected.text[0]
    assert (body["id"], body["model_name"], body["model_version"]) == ("req-1", name, "1")
    assert (body["finish_reason"], body["prompt_tokens"], body["output_tokens"]) == ("length", len(PROMPT), 12)
    assert body["time_to_first_token_ms"] > 0 and body["tokens_per_s"] > 0


def test_the_stream_adds_up_to_the_generate_text(gen: httpx.Client) -> None:
    whole = generate(gen, "llm-dyt", "Layer norms", max_tokens=16).json()
    events = stream_events(gen, "/v2/models/llm-dyt/versions/1/generate_stream",
                           {"text_input": "Layer norms", "parameters": {"max_tokens": 16}})
    tokens, last = events[:-1], events[-1]
    assert [e["index"] for e in tokens] == list(range(16))
    assert all(e["model_name"] == "llm-dyt" and e["model_version"] == "1" for e in events)
    assert "".join(e["text_output"] for e in events) == whole["text_output"]
    assert (last["finish_reason"], last["output_tokens"], last["prompt_tokens"]) == ("length", 16, 11)
    assert last["time_to_first_token_ms"] > 0 and last["tokens_per_s"] > 0


def test_each_event_ends_with_a_blank_line_and_matches_the_document(gen: httpx.Client) -> None:
    """The raw bytes: every event is ``data: {json}`` and a blank line (what EventSource needs); each
    event's JSON is what the OpenAPI document's itemSchema says a stream sends."""
    path = "/v2/models/llm-dyt/generate_stream"
    raw = gen.post(path, json={"text_input": PROMPT, "id": "s-1", "parameters": {"max_tokens": 6}})
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
    events = framed_events(raw.content)
    assert len(events) == 7 and events[-1]["finish_reason"] == "length"
    document = gen.get("/openapi.json").json()
    schema = document["paths"]["/v2/models/{model_name}/generate_stream"]["post"]["responses"]["200"]["content"][
        "text/event-stream"]["itemSchema"]
    failed = gen.post(path, json={"text_input": PROMPT, "parameters": {"max_tokens": 10**6}})
    for event in [*events, {"error": "an error event"}]:
        jsonschema.validate(event, schema)
    assert failed.status_code == 400  # refused before a stream begins: a JSON answer, not an event
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"text_output": "x"}, schema)  # the schema is not "any string"


GENERATE_BODIES = {
    "a prompt": {"text_input": PROMPT, "parameters": {"max_tokens": 2}},
    "an empty prompt": {"text_input": "", "parameters": {"max_tokens": 2}},
    "max_tokens at the limit": {"text_input": PROMPT, "parameters": {"max_tokens": LIMITS["max_generate_tokens"]}},
    "max_tokens over it": {"text_input": PROMPT, "parameters": {"max_tokens": LIMITS["max_generate_tokens"] + 1}},
}


@pytest.mark.parametrize("case", GENERATE_BODIES)
@pytest.mark.parametrize("route", ["generate", "generate_stream"])
def test_the_generate_schema_accepts_what_the_server_serves(gen: httpx.Client, route: str, case: str) -> None:
    body = GENERATE_BODIES[case]
    answer = gen.post(f"/v2/models/llm-dyt/{route}", json=body)
    assert answer.status_code in (200, 400), answer.text
    document = gen.get("/openapi.json").json()
    schema = document["paths"][f"/v2/models/{{model_name}}/{route}"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    assert jsonschema.Draft202012Validator(schema).is_valid(body) == (answer.status_code == 200), answer.text


def test_seeded_sampling_repeats_and_equals_pytorch(gen: httpx.Client, torch_models: dict) -> None:
    sampling = {"max_tokens": 12, "temperature": 0.9, "top_k": 50, "top_p": 0.95}
    texts = [generate(gen, "llm-dyt", seed=seed, **sampling).json()["text_output"] for seed in (7, 7, 8, 9)]
    assert texts[0] == texts[1] and len(set(texts)) >= 2
    expected = dyt_deploy.generate(torch_models["llm-dyt"], PROMPT, 12, temperature=0.9, top_k=50, top_p=0.95, seed=7)
    assert texts[0] == expected.text[0]


def test_stop_sequences_end_the_text_before_them(gen: httpx.Client) -> None:
    full = generate(gen, "llm-dyt", max_tokens=24).json()["text_output"]
    start = next(i for i in range(4, len(full) - 2) if "\ufffd" not in full[i:i + 2])
    stop = full[start:start + 2]
    cut = full[:full.index(stop)]
    answer = generate(gen, "llm-dyt", max_tokens=24, stop=["never here", stop]).json()
    assert (answer["text_output"], answer["finish_reason"]) == (cut, "stop")
    assert answer["output_tokens"] < 24
    events = stream_events(gen, "/v2/models/llm-dyt/generate_stream",
                           {"text_input": PROMPT, "parameters": {"max_tokens": 24, "stop": stop}})
    assert "".join(e["text_output"] for e in events) == cut and events[-1]["finish_reason"] == "stop"


def test_stop_sequences_hold_back_what_may_begin_one() -> None:
    stops = StopSequences(["END", "xyz"])
    assert [stops.push(p) for p in ("hello E", "N", "x", "D more")] == ["hello ", "", "EN", "xD more"]
    stops = StopSequences(["END"])
    assert [stops.push(p) for p in ("a E", "ND b")] == ["a ", ""] and stops.stopped and stops.flush() == ""


# ------------------------------------------------------------------------------------------------
# Refusals


BAD_PARAMETERS = [
    ({"max_token": 3}, "unknown parameter 'max_token'; known parameters: max_tokens, temperature, top_k, top_p, "
                       "seed, stop"),
    ({"max_tokens": 0}, "parameters.max_tokens: Input should be greater than or equal to 1"),
    ({"max_tokens": "5"}, "parameters.max_tokens: Input should be a valid integer"),
    ({"max_tokens": True}, "parameters.max_tokens: Input should be a valid integer"),
    ({"temperature": -0.5}, "parameters.temperature: Input should be greater than or equal to 0"),
    ({"temperature": "hot"}, "parameters.temperature: Input should be a valid number"),
    ({"top_p": 0}, "parameters.top_p: Input should be greater than 0"),
    ({"top_p": 1.5}, "parameters.top_p: Input should be less than or equal to 1"),
    ({"top_k": -1}, "parameters.top_k: Input should be greater than or equal to 0"),
    ({"top_k": 2.5}, "parameters.top_k: Input should be a valid integer"),
    ({"seed": -1}, "parameters.seed: must be an integer from 0 to 9223372036854775807"),
    ({"seed": "x"}, "parameters.seed: must be an integer from 0"),
    ({"stop": ""}, "parameters.stop: must be a string or a list of at most 16 strings of 1 to 256 characters"),
    ({"stop": 5}, "parameters.stop: must be a string or a list"),
    ({"stop": ["a"] * 17}, "parameters.stop: 17 stop sequences, at most 16"),
    ({"max_tokens": 41}, "max_tokens 41 is over this server's limit of 40 (--max-generate-tokens); ask for fewer"),
]


@pytest.mark.parametrize("route", ["generate", "generate_stream"])
@pytest.mark.parametrize(("parameters", "message"), BAD_PARAMETERS, ids=[m[:40] for _, m in BAD_PARAMETERS])
def test_bad_parameters_are_400s_that_say_what_to_change(gen: httpx.Client, route: str, parameters: dict,
                                                         message: str) -> None:
    answer = gen.post(f"/v2/models/llm-dyt/{route}", json={"text_input": PROMPT, "parameters": parameters})
    assert answer.status_code == 400 and answer.headers["content-type"] == "application/json"
    assert message in answer.json()["error"]


BAD_REQUESTS = [
    ({"text_input": ""}, 400, "text_input is empty: give a prompt of at least one token"),
    ({"text_input": "x" * 41}, 400, "the prompt is 41 tokens, over this server's limit of 40 (--max-prompt-tokens); "
                                    "shorten it"),
    ({"text_input": "x" * 30, "parameters": {"max_tokens": 40}}, 400,
     "the prompt (30 tokens) + max_tokens (40) = 70 is more than model 'llm-dyt''s context of 64 tokens; shorten "
     "the prompt or lower max_tokens"),
    ({"text_input": "", "parameters": {"max_tokens": 99}}, 400, "max_tokens 99 is over this server's limit of 40 "
                                                                "(--max-generate-tokens); ask for fewer; text_input"),
    ({"prompt": "hi"}, 400, "unknown field 'prompt'; known fields: id, text_input, parameters"),
    ({"text_input": 5}, 400, "text_input: Input should be a valid string"),
    ({"text_input": "a", "parameters": [1]}, 400, "parameters: Input should be a valid dictionary"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_REQUESTS, ids=[m[:40] for _, _, m in BAD_REQUESTS])
def test_bad_prompts_and_limits_are_400s(gen: httpx.Client, body: dict, status: int, message: str) -> None:
    for route in ("generate", "generate_stream"):
        answer = gen.post(f"/v2/models/llm-dyt/{route}", json=body)
        assert answer.status_code == status and message in answer.json()["error"], answer.text


@pytest.mark.parametrize(("body", "field"), [({"text_input": "a\ud800b"}, "text_input"),
                                             ({"text_input": "a", "parameters": {"stop": ["x", "\udfff"]}},
                                              "parameters.stop"),
                                             ({"id": "\ud83d", "text_input": "a"}, "id")])
def test_text_that_is_not_unicode_is_a_400_and_the_connection_lives_on(gen: httpx.Client, body: dict,
                                                                       field: str) -> None:
    """JSON may escape a lone surrogate (\\ud800), which no UTF-8 carries: refused, not a 500."""
    for route in ("generate", "generate_stream"):
        answer = gen.post(f"/v2/models/llm-dyt/{route}", content=json.dumps(body).encode(),
                          headers={"content-type": "application/json"})
        assert answer.status_code == 400, answer.text
        assert f"{field} is not valid Unicode text" in answer.json()["error"]
        assert gen.post(f"/v2/models/llm-dyt/{route}", json={"text_input": "a", "parameters": {"max_tokens": 2}}
                        ).status_code == 200  # same client, same connection


def test_a_model_that_does_not_generate_and_unknown_models_are_refused(gen: httpx.Client) -> None:
    for route in ("generate", "generate_stream"):
        answer = gen.post(f"/v2/models/vit-dyt/{route}", json={"text_input": PROMPT})
        assert answer.status_code == 400
        assert "model 'vit-dyt' does not generate text" in answer.json()["error"]
        assert "POST /v2/models/vit-dyt/infer" in answer.json()["error"]
        assert gen.post(f"/v2/models/nope/{route}", json={"text_input": PROMPT}).status_code == 404
        assert gen.post(f"/v2/models/llm-dyt/versions/2/{route}", json={"text_input": PROMPT}).status_code == 404
        bad_json = gen.post(f"/v2/models/llm-dyt/{route}", content=b"{not json")
        assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]
        huge = gen.post(f"/v2/models/llm-dyt/{route}", json={"text_input": "x" * (70 << 10)})
        assert huge.status_code == 413 and "over the limit of 65536 bytes" in huge.json()["error"]


def test_the_request_parser_reports_every_problem_at_once() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_generate_request(json.dumps({"text_input": 1, "parameters": {"top_p": 2, "seed": -3}}).encode())
    message = str(caught.value)
    assert "text_input" in message and "parameters.top_p" in message and "parameters.seed" in message


def test_the_generation_limits_come_from_flags_and_dyt_variables(textgen_repository: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from service import cli

    monkeypatch.setenv("DYT_MAX_PROMPT_TOKENS", "100")
    monkeypatch.setenv("DYT_MAX_GENERATIONS", "3")
    settings = cli.settings_from_options({"repository": textgen_repository, "max_generate_tokens": 64})
    assert (settings.max_generate_tokens, settings.max_prompt_tokens, settings.max_generations) == (64, 100, 3)
    assert (Settings().max_generate_tokens, Settings(max_generations=1).max_prompt_tokens) == (512, 100)
    monkeypatch.setenv("DYT_MAX_GENERATIONS", "0")
    assert cli.main(["--repository", str(textgen_repository), "--max-generate-tokens", "0"]) == 2
    err = capsys.readouterr().err
    assert "--max-generate-tokens: " in err and "$DYT_MAX_GENERATIONS: " in err


# ------------------------------------------------------------------------------------------------
# Cancellation, concurrency, timeouts


def test_a_dropped_stream_stops_generating(gen_server: BackgroundServer, gen: httpx.Client) -> None:
    with slow_steps(gen_server, "llm-dyt") as model:
        before = model.generation_stats.summary()
        with gen.stream("POST", "/v2/models/llm-dyt/generate_stream",
                        json={"text_input": PROMPT, "parameters": {"max_tokens": 40}}) as answer:
            lines = answer.iter_lines()
            assert json.loads(next(line for line in lines if line)[6:])["index"] == 0
        wait_for(lambda: model.generation_stats.summary()["cancelled"] == before["cancelled"] + 1)
        after = model.generation_stats.summary()
        assert after["output_tokens"] - before["output_tokens"] < 10  # of 40; a step is 20 ms
        assert after["running"] == model.running == 0


def test_a_client_that_leaves_a_generate_call_stops_it(gen_server: BackgroundServer) -> None:
    with slow_steps(gen_server, "llm-rmsnorm") as model:
        before = model.generation_stats.summary()
        with httpx.Client(base_url=gen_server.url, timeout=0.15) as impatient, pytest.raises(httpx.ReadTimeout):
            generate(impatient, "llm-rmsnorm", max_tokens=40)
        wait_for(lambda: model.generation_stats.summary()["cancelled"] == before["cancelled"] + 1)
        assert model.generation_stats.summary()["output_tokens"] - before["output_tokens"] < 20


def test_a_long_stream_blocks_neither_other_models_nor_other_streams(gen_server: BackgroundServer,
                                                                     gen: httpx.Client) -> None:
    with slow_steps(gen_server, "llm-dyt", 0.05) as model, gen.stream(
            "POST", "/v2/models/llm-dyt/generate_stream",
            json={"text_input": PROMPT, "parameters": {"max_tokens": 40}}) as answer:  # 40 steps of 50 ms: 2 s
        lines = (line for line in answer.iter_lines() if line)
        next(lines)
        assert gen.post("/v2/models/vit-dyt/infer", json=json_request(images(1))).status_code == 200
        assert generate(gen, "llm-rmsnorm", max_tokens=8).status_code == 200
        short = stream_events(gen, "/v2/models/llm-dyt/generate_stream",
                              {"text_input": "a", "parameters": {"max_tokens": 3}})  # takes turns with the long one
        still_running = model.generation_stats.summary()["running"]
        rest = [json.loads(line[6:]) for line in lines]
    assert short[-1]["output_tokens"] == 3 and still_running == 1
    assert rest[-1]["finish_reason"] == "length" and len(rest) == 40  # 39 tokens + the last event


def test_generations_beyond_the_bound_get_503_with_retry_after(gen_server: BackgroundServer) -> None:
    body = {"text_input": PROMPT, "parameters": {"max_tokens": 30}}
    results: list[int] = []

    def long_one() -> None:
        with httpx.Client(base_url=gen_server.url, timeout=30) as client:
            results.append(client.post("/v2/models/llm-dyt/generate", json=body).status_code)

    with slow_steps(gen_server, "llm-dyt") as model:
        threads = [threading.Thread(target=long_one) for _ in range(LIMITS["max_generations"])]
        for thread in threads:
            thread.start()
        wait_for(lambda: model.running == LIMITS["max_generations"])
        with httpx.Client(base_url=gen_server.url, timeout=30) as client:
            refused = client.post("/v2/models/llm-dyt/generate_stream", json=body)
        for thread in threads:
            thread.join()
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "generating for 2 requests (limit 2, --max-generations); retry later" in refused.json()["error"]
    assert results == [200, 200]


def test_a_model_that_fails_mid_generation_is_a_500_or_an_error_event(gen_server: BackgroundServer,
                                                                        gen: httpx.Client) -> None:
    model = gen_server.app.state.service.registry.models["llm-dyt"]
    original = model.generator.new_decoder

    class Broken(SlowDecoder):
        def __call__(self, *args: Any) -> Any:
            raise RuntimeError("the runner broke")

    before = model.generation_stats.summary()["failed"]
    model.generator.new_decoder = lambda: Broken(original(), 0)
    try:
        failed = generate(gen, "llm-dyt", max_tokens=4)
        events = stream_events(gen, "/v2/models/llm-dyt/generate_stream", {"text_input": PROMPT})
    finally:
        model.generator.new_decoder = original
    message = "model 'llm-dyt' failed while generating: RuntimeError: the runner broke"
    assert failed.status_code == 500 and failed.json()["error"] == message
    assert events == [{"error": message}]
    assert model.generation_stats.summary()["failed"] == before + 2 and model.running == 0
    assert generate(gen, "llm-dyt", max_tokens=2).json()["output_tokens"] == 2  # and it generates again


@pytest.fixture(scope="module")
def keyed_server(textgen_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    """llm-rmsnorm alone, behind an API key, with a request timeout of 0.5 s."""
    repo = tmp_path_factory.mktemp("keyed") / "repo"
    shutil.copytree(textgen_repository / "llm-rmsnorm", repo / "llm-rmsnorm")
    settings = Settings(threads=1, warmup_runs=0, api_key=API_KEY, request_timeout_s=0.5)
    with serve_in_thread(create_app(repo, settings)) as running:
        yield running


def test_the_generate_routes_need_the_api_key_when_one_is_set(keyed_server: BackgroundServer) -> None:
    body = {"text_input": PROMPT, "parameters": {"max_tokens": 4}}
    with httpx.Client(base_url=keyed_server.url, timeout=30) as client:
        for route in ("generate", "generate_stream", "versions/1/generate"):
            refused = client.post(f"/v2/models/llm-rmsnorm/{route}", json=body)
            assert refused.status_code == 401 and "API key" in refused.json()["error"]
            wrong = client.post(f"/v2/models/llm-rmsnorm/{route}", json=body, headers={"x-api-key": "nope"})
            assert wrong.status_code == 401
            assert client.post(f"/v2/models/llm-rmsnorm/{route}", json=body,
                               headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200


def test_a_stream_outlives_the_request_timeout_and_generate_does_not(keyed_server: BackgroundServer) -> None:
    body = {"text_input": PROMPT, "parameters": {"max_tokens": 40}}  # 40 steps of 20 ms: 0.8 s > 0.5 s
    with slow_steps(keyed_server, "llm-rmsnorm") as model, httpx.Client(
            base_url=keyed_server.url, timeout=30, headers={"x-api-key": API_KEY}) as client:
        events = stream_events(client, "/v2/models/llm-rmsnorm/generate_stream", body)
        assert events[-1]["finish_reason"] == "length" and events[-1]["output_tokens"] == 40
        timed_out = client.post("/v2/models/llm-rmsnorm/generate", json=body)
        assert timed_out.status_code == 504 and "timed out after 0.5 s" in timed_out.json()["error"]
        wait_for(lambda: model.running == 0)
        assert model.generation_stats.summary()["cancelled"] == 1


# ------------------------------------------------------------------------------------------------
# The decoder as a plain model, metadata, statistics


def test_infer_runs_the_decoder_graph_itself(gen: httpx.Client, textgen_repository: Path) -> None:
    ids = [68, 121, 84]
    past = {"shape": [1, 2, 0, 16], "datatype": "FP32", "data": []}
    inputs = [{"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": ids},
              {"name": "attention_mask", "shape": [1, 3], "datatype": "INT64", "data": [1, 1, 1]},
              {"name": "position_ids", "shape": [1, 3], "datatype": "INT64", "data": [0, 1, 2]},
              {"name": "past_key_values.0.key", **past}, {"name": "past_key_values.0.value", **past}]
    answer = gen.post("/v2/models/llm-dyt/infer", json={"inputs": inputs, "outputs": [{"name": "logits"}]})
    assert answer.status_code == 200, answer.text
    logits = torch.tensor(answer.json()["outputs"][0]["data"]).reshape(1, 3, 256)
    reference = dyt_deploy.load_model(textgen_repository.parent / "dyt.pt")
    with torch.no_grad():
        expected = reference(torch.tensor([ids]))
    assert torch.allclose(logits, expected, atol=1e-4)


def test_tritonclient_reads_metadata_and_readiness(gen_server: BackgroundServer) -> None:
    triton_http = pytest.importorskip("tritonclient.http")
    client = triton_http.InferenceServerClient(gen_server.address)
    assert client.is_server_ready() and client.is_model_ready("llm-dyt") and client.is_model_ready("llm-rmsnorm")
    assert "generate" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata("llm-dyt")
    assert metadata["parameters"] == {"family": "llama_gen", "norm": "dyt", "task": "text-generation"}
    assert [t["name"] for t in metadata["inputs"]][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert metadata["inputs"][3]["shape"] == [-1, 2, -1, 16]
    assert client.get_model_config("llm-dyt")["max_batch_size"] == 32


def test_generation_statistics_reach_live_and_metrics(gen: httpx.Client) -> None:
    for name in ("llm-dyt", "llm-rmsnorm"):
        for seed in range(3):
            assert generate(gen, name, f"prompt {seed}", max_tokens=6).status_code == 200
    live = gen.get("/api/live").json()
    family = next(f for f in live["families"] if f["family"] == "llama_gen")
    assert family["baseline"] == "llm-rmsnorm"
    variants = {v["model"]: v["generation"] for v in family["variants"]}
    for stats in variants.values():
        assert stats["requests"] >= 3 and stats["output_tokens"] >= 18 and stats["prompt_tokens"] >= 24
        assert stats["time_to_first_token_ms"]["p50"] > 0 and stats["inter_token_ms"]["p90"] > 0
        assert stats["tokens_per_s"]["p50"] > 0 and stats["finish_reasons"]["length"] >= 3
    ratio = family["ratios"][0]
    assert ratio["model"] == "llm-dyt" and ratio["inter_token"]["ratio"] > 0 and ratio["time_to_first_token"]
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(gen.get("/metrics").text) for s in family.samples}
    labels = (("family", "llama_gen"), ("model", "llm-dyt"), ("variant", "dyt"))
    dyt = variants["llm-dyt"]

    def sample(name: str, **extra: str) -> float:
        return samples[(name, tuple(sorted(labels + tuple(extra.items()))))]

    assert sample("dyt_generate_requests_total", finish_reason="length") >= 3
    assert sample("dyt_generate_tokens_total", kind="output") >= dyt["output_tokens"]
    assert sample("dyt_generate_tokens_total", kind="prompt") >= dyt["prompt_tokens"]
    assert sample("dyt_generate_time_to_first_token_seconds_count") >= 3
    assert sample("dyt_generate_inter_token_seconds_count") >= 15
    assert sample("dyt_generations_running") == 0


def test_a_controlled_comparison_times_the_decoders_prefill(gen: httpx.Client) -> None:
    answer = gen.post("/api/compare", json={"family": "llama_gen", "rounds": 4, "warmup": 1, "dims": {"sequence": 8}})
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert {v["variant"] for v in report["variants"]} == {"dyt", "rmsnorm"}
    assert report["ratios"][0]["model"] == "llm-dyt" and report["baseline"] == "llm-rmsnorm"


@needs_chromium
def test_the_dashboard_shows_generation_beside_the_live_view(gen_server: BackgroundServer, gen: httpx.Client,
                                                             tmp_path: Path) -> None:
    pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.support.ui import WebDriverWait

    for name in ("llm-dyt", "llm-rmsnorm"):
        assert generate(gen, name, max_tokens=5).status_code == 200
    rows_js = """return [...document.querySelectorAll(
        '.family[data-family="llama_gen"] .generation-table tr[data-model]')].map(r => ({
        model: r.dataset.model, variant: r.dataset.variant, generations: r.querySelector('.generations').textContent
      }));"""
    with headless_chromium() as browser:
        browser.get(gen_server.url + "/")
        rows: list[dict] = []

        def both_rows(driver: Any) -> bool:
            rows[:] = driver.execute_script(rows_js)
            return len(rows) >= 2

        WebDriverWait(browser, 20).until(both_rows)
        by_variant = {r["variant"]: r for r in rows}
        assert set(by_variant) == {"dyt", "rmsnorm"} and int(by_variant["dyt"]["generations"]) >= 1
        ratio = browser.execute_script(
            "return document.querySelector('.generation-ratios[data-model=\"llm-dyt\"]').textContent")
        assert "llm-dyt / llm-rmsnorm" in ratio and "inter-token median ratio: ×" in ratio
        bars = browser.execute_script("return document.querySelectorAll('.family[data-family=\"llama_gen\"] "
                                      "svg rect.bar[data-stat=\"p50\"]').length")
        assert bars >= 4  # time to first token and inter-token, both variants
        browser.save_screenshot(str(tmp_path / "dashboard.png"))


def test_a_hugging_face_decoder_generates_through_its_own_tokenizer(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    pytest.importorskip("transformers")
    from tests.export.hf_folders import write_folder

    hf_model, source = write_folder(tmp_path / "llama", "llama")
    words = ["[UNK]", "the", "dyt", "layer", "is", "a", "tanh", "of", "norm"]
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, "[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.save(str(source / "tokenizer.json"))
    export_onnx(source, repository=tmp_path / "repo", name="hf-dyt", task="text-generation", verify=False)
    eos = hf_model.config.eos_token_id
    expected = dyt_deploy.generate(dyt_deploy.load_model(source), [1, 2, 3], 10, stop_tokens=[eos]).tokens[0]
    with serve_in_thread(create_app(tmp_path / "repo", Settings(threads=1, warmup_runs=1))) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        answer = generate(client, "hf-dyt", "the dyt layer", max_tokens=10).json()
    assert answer["prompt_tokens"] == 3 and answer["output_tokens"] == len(expected)
    assert answer["text_output"] == tokenizer.decode(expected)
    assert answer["finish_reason"] == ("stop" if len(expected) < 10 else "length")

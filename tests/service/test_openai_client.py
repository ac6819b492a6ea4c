"""The OpenAI routes through the official ``openai`` client, sync and async, streaming and not, on a
real uvicorn server on loopback (clients with ``max_retries=0`` and strict response validation, so
a body that drifts from the client's schema fails). Greedy text equals dyt_deploy.generate in
PyTorch, usage counts are the prompt's and the output's tokens, bad parameters raise the client's
own BadRequestError with the field in ``.param``, a dropped stream stops its generation, and
generations through /v1 reach the same statistics and Prometheus counters as /generate."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai_testlib import checkpoint_of, openai_repository, settings
from prometheus_client.parser import text_string_to_metric_families
from service_testlib import API_KEY, BackgroundServer, SlowDecoder, serve_in_thread

import dyt_deploy
from dyt_deploy.runners.onnxruntime_runner import OnnxRuntimeRunner
from service.http.app import create_app

PROMPT = "DyT is"
CHAT = [{"role": "user", "content": PROMPT}]
DEFAULT_PROMPT = "user: DyT is\nassistant:"  # the default chat template's rendering of CHAT
HF_PROMPT = "<s><|user|>DyT is</s><|assistant|>"  # llm-chat's tokenizer_config.json template


@pytest.fixture(scope="module")
def server() -> Iterator[BackgroundServer]:
    with serve_in_thread(create_app(openai_repository(), settings())) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                       _strict_response_validation=True) as made:
        yield made


@pytest.fixture(scope="module")
def llm() -> Any:
    return dyt_deploy.load_model(checkpoint_of(openai_repository(), "llm-dyt"))


def reference(llm: Any, prompt: str, tokens: int) -> str:
    return dyt_deploy.generate(llm, prompt, tokens).text[0]


def test_the_model_list_gives_each_task(client: openai.OpenAI) -> None:
    cards = {m.id: m for m in client.models.list()}
    assert {name: card.task for name, card in cards.items()} == {  # type: ignore[attr-defined]
        "llm-dyt": "text-generation", "llm-chat": "text-generation", "bert-dyt": "embeddings"}
    assert all(card.object == "model" and card.owned_by == "dyt-deploy" and card.created > 0 for card in cards.values())
    assert client.models.retrieve("bert-dyt").id == "bert-dyt"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("nope")
    assert "unknown model 'nope'" in caught.value.message


def test_a_greedy_completion_is_pytorchs_text_with_its_token_counts(client: openai.OpenAI, llm: Any) -> None:
    answer = client.completions.create(model="llm-dyt", prompt=PROMPT, max_tokens=12)
    assert answer.choices[0].text == reference(llm, PROMPT, 12)
    assert (answer.choices[0].finish_reason, answer.model, answer.object) == ("length", "llm-dyt", "text_completion")
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (6, 12, 18)
    assert answer.id.startswith("cmpl-") and abs(answer.created - time.time()) < 60


def test_a_chat_completion_renders_the_default_template(client: openai.OpenAI, llm: Any) -> None:
    answer = client.chat.completions.create(model="llm-dyt", messages=CHAT, max_completion_tokens=10, max_tokens=3)
    assert answer.choices[0].message.content == reference(llm, DEFAULT_PROMPT, 10)  # max_completion_tokens wins
    assert answer.choices[0].message.role == "assistant" and answer.choices[0].finish_reason == "length"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(DEFAULT_PROMPT), 10)


def test_a_folders_chat_template_makes_the_prompt_and_refuses_roles(client: openai.OpenAI, llm: Any) -> None:
    answer = client.chat.completions.create(model="llm-chat", messages=CHAT, max_tokens=8)
    assert answer.choices[0].message.content == reference(llm, HF_PROMPT, 8)
    assert answer.usage.prompt_tokens == len(HF_PROMPT)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="llm-chat", messages=[{"role": "system", "content": "be terse"}, *CHAT])
    assert caught.value.param == "messages" and "Only user and assistant roles are supported!" in caught.value.message


def test_the_async_client_gets_the_same_text(server: BackgroundServer, llm: Any) -> None:
    async def both() -> tuple[Any, Any]:
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                                      _strict_response_validation=True) as aclient:
            return await asyncio.gather(
                aclient.completions.create(model="llm-dyt", prompt=PROMPT, max_tokens=9),
                aclient.chat.completions.create(model="llm-dyt", messages=CHAT, max_tokens=9))

    text, chat = asyncio.run(both())
    assert text.choices[0].text == reference(llm, PROMPT, 9)
    assert chat.choices[0].message.content == reference(llm, DEFAULT_PROMPT, 9)


def test_a_chat_stream_adds_up_to_the_answer_with_usage_last(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="llm-dyt", messages=CHAT, max_tokens=16)
    chunks = list(client.chat.completions.create(model="llm-dyt", messages=CHAT, max_tokens=16, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks[:-1]].count("length") == 1
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    assert all(c.usage is None for c in chunks[:-1]) and len({(c.id, c.created) for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    plain = list(client.chat.completions.create(model="llm-dyt", messages=CHAT, max_tokens=4, stream=True))
    assert all(c.usage is None and c.choices for c in plain)


def test_an_async_completion_stream_ends_with_done(server: BackgroundServer, client: openai.OpenAI) -> None:
    whole = client.completions.create(model="llm-dyt", prompt="Layer norms", max_tokens=10).choices[0].text

    async def streamed() -> list[Any]:
        # not strict: the client types a completion choice's finish_reason as never null, which every
        # chunk but the last has (as OpenAI's own stream sends them)
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as aclient:
            stream = await aclient.completions.create(model="llm-dyt", prompt="Layer norms", max_tokens=10,
                                                      stream=True, stream_options={"include_usage": True})
            return [chunk async for chunk in stream]

    chunks = asyncio.run(streamed())
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert chunks[-1].usage.prompt_tokens == len("Layer norms") and chunks[-1].usage.completion_tokens == 10
    raw = httpx.post(f"{server.url}/v1/completions", json={"model": "llm-dyt", "prompt": "a", "max_tokens": 3,
                                                             "stream": True}, timeout=30)
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.endswith("data: [DONE]\n\n") and raw.text.count("\n\n") == raw.text.count("data: ")


def test_stop_sequences_and_seeds(client: openai.OpenAI, llm: Any) -> None:
    full = reference(llm, PROMPT, 20)
    stop = full[5:7]
    cut = client.completions.create(model="llm-dyt", prompt=PROMPT, max_tokens=20, stop=[stop, "never-seen"])
    assert cut.choices[0].text == full[:full.index(stop)] and cut.choices[0].finish_reason == "stop"
    sampled = [client.completions.create(model="llm-dyt", prompt=PROMPT, max_tokens=12, temperature=1.0, top_p=0.9,
                                         seed=7).choices[0].text for _ in range(2)]
    other = client.completions.create(model="llm-dyt", prompt=PROMPT, max_tokens=12, temperature=1.0, seed=8)
    assert sampled[0] == sampled[1] != other.choices[0].text


# ------------------------------------------------------------------------------------------------
# Refusals: the client's own exceptions, the field in .param


BAD_CHATS = {
    "n": ({"n": 2}, "n"),
    "logprobs": ({"logprobs": True}, "logprobs"),
    "tools": ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    "stream_options without stream": ({"stream_options": {"include_usage": True}}, "stream_options"),
    "max_tokens over the limit": ({"max_tokens": 41}, "max_tokens"),
    "max_completion_tokens over the limit": ({"max_completion_tokens": 41}, "max_completion_tokens"),
    "prompt over the context": ({"messages": [{"role": "user", "content": "x" * 39}], "max_tokens": 30},
                                "messages"),
    "temperature negative": ({"temperature": -1}, "temperature"),
    "seed negative": ({"seed": -1}, "seed"),
    "response_format json": ({"response_format": {"type": "json_object"}}, "response_format"),
    "an image part": ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:,"}}]}]}, "messages"),
}


@pytest.mark.parametrize("case", BAD_CHATS)
def test_bad_chat_parameters_raise_bad_request_naming_the_field(client: openai.OpenAI, case: str) -> None:
    fields, param = BAD_CHATS[case]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**{"model": "llm-dyt", "messages": CHAT, **fields})
    assert caught.value.status_code == 400 and caught.value.param == param, caught.value.body
    assert caught.value.type == "invalid_request_error" and caught.value.message


def test_bad_completion_parameters_and_the_wrong_kind_of_model(client: openai.OpenAI) -> None:
    for fields, param in (({"suffix": "end"}, "suffix"), ({"prompt": ["a", "b"]}, "prompt"),
                          ({"model": "bert-dyt"}, "model"), ({"prompt": ""}, "prompt")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(**{"model": "llm-dyt", "prompt": PROMPT, **fields})
        assert caught.value.param == param, caught.value.body
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert missing.value.type == "not_found_error" and "unknown model 'gpt-4o'" in missing.value.message


@pytest.mark.parametrize(("body", "words"), [
    (b'{"model": "llm-dyt", "messages": "hi"}', "messages: Input should be a valid list"),
    (b'{"model": "llm-dyt", "messages": []}', "messages"),
    (b'{"model": "llm-dyt", "prompt": "\xff\xfe\xfd"}', "not valid JSON"),
    (b'{"model": "llm-dyt", "prompt": "\\ud800"}', "not valid Unicode"),
    (b'{"model": "llm-dyt", "prompt": "a", "temperature": "0.5"}', "temperature"),
    (b'[1, 2]', "must be an object"),
])
def test_malformed_bodies_are_400_in_openais_shape(server: BackgroundServer, body: bytes, words: str) -> None:
    path = "/v1/chat/completions" if b"messages" in body else "/v1/completions"
    answer = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and words in error["message"], error


def test_other_paths_keep_the_protocols_error_shape(server: BackgroundServer) -> None:
    assert httpx.get(server.url + "/v2/models/nope").json() == {
        "error": "unknown model 'nope'; known: bert-dyt, llm-chat, llm-dyt"}
    assert httpx.get(server.url + "/v1/no/such/route").json()["error"]["type"] == "not_found_error"


# ------------------------------------------------------------------------------------------------
# Embeddings


def test_embeddings_are_the_encoders_pooled_output(server: BackgroundServer, client: openai.OpenAI) -> None:
    runner = OnnxRuntimeRunner(openai_repository() / "bert-dyt" / "1" / "model.onnx", threads=1)
    with runner:
        expected = [runner.infer({"input_ids": np.asarray([list(text.encode())], np.int64),
                                  "attention_mask": np.ones((1, len(text)), np.int64)})["logits"][0]
                    for text in ("DyT", "is tanh")]
    answer = client.embeddings.create(model="bert-dyt", input=["DyT", "is tanh"], encoding_format="float")
    assert [d.index for d in answer.data] == [0, 1] and answer.usage.prompt_tokens == 10
    np.testing.assert_allclose([d.embedding for d in answer.data], expected, rtol=1e-5, atol=1e-6)
    by_ids = client.embeddings.create(model="bert-dyt", input=list(b"DyT"), encoding_format="float")
    assert by_ids.data[0].embedding == answer.data[0].embedding
    # the client asks for base64 by itself (and decodes it) when no format is given; its strict
    # validation would check the base64 text against the float list it decodes it to
    loose = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    assert loose.embeddings.create(model="bert-dyt", input="DyT").data[0].embedding == answer.data[0].embedding
    raw = loose.embeddings.create(model="bert-dyt", input="DyT", encoding_format="base64").data[0].embedding
    assert np.frombuffer(base64.b64decode(raw), "<f4").tolist() == answer.data[0].embedding


def test_bad_embedding_requests(client: openai.OpenAI) -> None:
    for fields, param in (({"model": "llm-dyt"}, "model"), ({"input": []}, "input"),
                          ({"input": [5000]}, "input"), ({"dimensions": 8}, "dimensions"),
                          ({"input": "x" * 41}, "input")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(**{"model": "bert-dyt", "input": "DyT", "encoding_format": "float", **fields})
        assert caught.value.param == param, caught.value.body


# ------------------------------------------------------------------------------------------------
# One generation path: cancellation, statistics, metrics


def generations(server: BackgroundServer, model: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "dyt_generate_requests_total" and s.labels.get("model") == model)


def test_v1_generations_count_where_generate_counts(server: BackgroundServer, client: openai.OpenAI) -> None:
    model = server.app.state.service.registry.models["llm-chat"]
    before, counted = model.generation_stats.summary(), generations(server, "llm-chat")
    client.chat.completions.create(model="llm-chat", messages=CHAT, max_tokens=5)
    list(client.chat.completions.create(model="llm-chat", messages=CHAT, max_tokens=3, stream=True))
    after = model.generation_stats.summary()
    assert after["output_tokens"] - before["output_tokens"] == 8 and generations(server, "llm-chat") == counted + 2


def test_a_dropped_stream_stops_generating(server: BackgroundServer) -> None:
    model = server.app.state.service.registry.models["llm-dyt"]
    original = model.generator.new_decoder
    model.generator.new_decoder = lambda: SlowDecoder(original(), 0.02)
    try:
        before = model.generation_stats.summary()
        body = {"model": "llm-dyt", "messages": CHAT, "max_tokens": 40, "stream": True}
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as answer:
            lines = (line for line in answer.iter_lines() if line)
            assert json.loads(next(lines)[6:])["choices"][0]["delta"]["role"] == "assistant"
        deadline = time.monotonic() + 5
        while model.generation_stats.summary()["cancelled"] == before["cancelled"]:
            assert time.monotonic() < deadline, "the generation was not cancelled"
            time.sleep(0.01)
        after = model.generation_stats.summary()
    finally:
        model.generator.new_decoder = original
    assert after["output_tokens"] - before["output_tokens"] < 10 and model.running == 0


def test_the_generation_bound_is_a_503_the_client_sees(server: BackgroundServer) -> None:
    model = server.app.state.service.registry.models["llm-dyt"]
    model.running += 2  # the bound (max_generations 2) reached, as by two long generations
    try:
        with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as busy, \
                pytest.raises(openai.InternalServerError) as caught:
            busy.completions.create(model="llm-dyt", prompt=PROMPT, max_tokens=2)
    finally:
        model.running -= 2
    assert caught.value.status_code == 503 and caught.value.response.headers["retry-after"] == "1"
    assert "--max-generations" in caught.value.message


# ------------------------------------------------------------------------------------------------
# The API key, the gates, the README's example


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[BackgroundServer]:
    with serve_in_thread(create_app(openai_repository(), settings(api_key=API_KEY))) as running:
        yield running


def test_the_clients_api_key_is_the_servers_key(keyed_server: BackgroundServer) -> None:
    base = f"{keyed_server.url}/v1"
    with openai.OpenAI(base_url=base, api_key=API_KEY, max_retries=0, _strict_response_validation=True) as keyed:
        assert keyed.completions.create(model="llm-dyt", prompt=PROMPT, max_tokens=2).usage.completion_tokens == 2
    with openai.OpenAI(base_url=base, api_key="wrong", max_retries=0) as wrong, \
            pytest.raises(openai.AuthenticationError) as caught:
        wrong.models.list()
    assert caught.value.body["message"] == "wrong API key" and caught.value.type == "authentication_error"
    with openai.OpenAI(base_url=base, api_key=API_KEY, max_retries=0) as keyed, \
            pytest.raises(openai.APIStatusError) as large:
        keyed.completions.create(model="llm-dyt", prompt="x" * (70 << 10), max_tokens=2)
    assert large.value.status_code == 413 and "over the limit of 65536 bytes" in large.value.message
    assert large.value.type == "invalid_request_error"


def readme_example() -> str:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("### Use it from the OpenAI client", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readmes_example_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8000)) == 0:
            pytest.skip("port 8000, the README's, is taken on this machine")
    with serve_in_thread(create_app(openai_repository(), settings()), port=8000):
        exec(compile(readme_example(), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "completion_tokens=16" in printed and "prompt_tokens=23" in printed

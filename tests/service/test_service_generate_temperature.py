"""Tiny temperatures on a real server (uvicorn on loopback, httpx): ``"temperature": 1e-45`` was a
500 ("probability tensor contains inf/nan") on /generate and an error event on the stream route;
it is greedy decoding, on both routes, as dyt_deploy.generate gives it in PyTorch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_testlib import serve_in_thread

import dyt_deploy
from dyt_deploy.checkpoint import save_checkpoint
from dyt_deploy.export import export_onnx
from dyt_deploy.models import create_model
from service.http.app import create_app
from service.settings import Settings

TINY = {"dim": 32, "depth": 1, "heads": 2, "ffn_dim": 64, "vocab_size": 256, "max_seq_len": 64}
PROMPT = "DyT is"
TOKENS = 10
TEMPERATURES = [1e-45, 1e-30, 1e-8]


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("temperature") / "llm.pt"
    save_checkpoint(create_model("llama_tiny", norm="dyt", seed=0, **TINY), path)
    return path


@pytest.fixture(scope="module")
def client(model_pt: Path) -> Iterator[httpx.Client]:
    """A server on repo/llm-dyt, the model exported with task text-generation."""
    repository = model_pt.parent / "repo"
    export_onnx(model_pt, repository=repository, name="llm-dyt", task="text-generation", verify=False)
    with serve_in_thread(create_app(repository, Settings(threads=1, warmup_runs=1))) as server, \
            httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def greedy_text(model_pt: Path) -> str:
    return dyt_deploy.generate(dyt_deploy.load_model(model_pt), PROMPT, TOKENS).text[0]


def _body(temperature: float) -> dict:
    return {"text_input": PROMPT, "parameters": {"max_tokens": TOKENS, "temperature": temperature, "seed": 7}}


def _events(answer: httpx.Response) -> list[dict]:
    """The stream's server-sent events (blank-line separated), each one's data as JSON."""
    blocks = [block for block in answer.text.replace("\r\n", "\n").split("\n\n") if block.strip()]
    data = ["\n".join(line[5:].lstrip() for line in block.split("\n") if line.startswith("data:")) for block in blocks]
    return [json.loads(item) for item in data if item]


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_generate_at_a_tiny_temperature_is_greedy(client: httpx.Client, greedy_text: str, temperature: float) -> None:
    answer = client.post("/v2/models/llm-dyt/generate", json=_body(temperature))
    assert answer.status_code == 200, answer.text
    assert answer.json()["text_output"] == greedy_text
    assert answer.json()["finish_reason"] == "length"


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_the_stream_at_a_tiny_temperature_is_greedy(client: httpx.Client, greedy_text: str,
                                                    temperature: float) -> None:
    answer = client.post("/v2/models/llm-dyt/generate_stream", json=_body(temperature))
    assert answer.status_code == 200, answer.text
    events = _events(answer)
    assert not any("error" in event for event in events), events
    assert "".join(event.get("text_output", "") for event in events) == greedy_text
    assert events[-1]["finish_reason"] == "length"

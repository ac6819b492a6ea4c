"""Generation on Ray Serve (service.engines.ray): a tiny llama decoder exported with --task text-generation,
one replica whose decoder steps are slowed (so that a stream takes a measurable time), behind the
ingress and Serve's HTTP proxy on a local Ray instance of 2 CPUs.

A /generate_stream arrives event by event as the replica generates, adds up to /generate's text, and
a client that drops it stops the generation on the replica within a few steps (the replica's
generation statistics count it as cancelled). The ingress's /api/live and /metrics count the
generations as they reached it, a dropped stream and a left /generate included.
Skipped, with the reason, where Ray is not installed or cannot start.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_testlib import SlowDecoder, framed_events, local_ray, sse_events, wait_until_ready

from service.settings import Settings

ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'dyt-deploy[ray]')")
serve = pytest.importorskip("ray.serve")

from service.engines import ray as ray_app  # noqa: E402  (after the skip: the module imports without Ray, the test needs it)

APP = "dyt-generate"
MODEL = "llm-dyt"
TINY = {"dim": 32, "depth": 1, "heads": 2, "ffn_dim": 64, "vocab_size": 256, "max_seq_len": 64}
PROMPT = "DyT is"
STEP_S = 0.05  # each decoder step on the replica: 30 tokens take at least 1.5 s
TOKENS = 30


class SlowReplica(ray_app.ModelReplica):
    """The model replica with every decoder step slowed by ``STEP_S``, and its own generation
    statistics for the test to read (to check what the ingress shows against)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        generator = self.model.generator
        new_decoder = generator.new_decoder
        generator.new_decoder = lambda: SlowDecoder(new_decoder(), STEP_S)

    def generation(self) -> dict[str, Any]:
        return self.model.generation_stats.summary()


@pytest.fixture(scope="module")
def textgen_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """repo/llm-dyt: a depth-1 llama decoder (64 positions, byte vocabulary), task text-generation."""
    from dyt_deploy.checkpoint import save_checkpoint
    from dyt_deploy.export import export_onnx
    from dyt_deploy.models import create_model

    root = tmp_path_factory.mktemp("ray-textgen")
    save_checkpoint(create_model("llama_tiny", norm="dyt", seed=0, **TINY), root / "dyt.pt")
    export_onnx(root / "dyt.pt", repository=root / "repo", name=MODEL, family="llama_gen",
                task="text-generation", verify=False)
    return root / "repo"


@pytest.fixture(scope="module")
def deployed(textgen_repository: Path) -> Iterator[str]:
    """A local Ray instance (2 CPUs), Serve's proxy on a free loopback port, and the decoder on one
    slowed replica behind the ingress; yields the proxy's ``host:port`` once it is ready."""
    with local_ray() as address:
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # SlowReplica travels by value
        ray.cloudpickle.register_pickle_by_value(sys.modules["service_testlib"])  # and its SlowDecoder
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ray_app, "ModelReplica", SlowReplica)
            app = ray_app.build_app(textgen_repository, Settings(threads=1, warmup_runs=1), num_replicas=1,
                                    num_cpus=0.25, ingress_cpus=0.1)
        serve.run(app, name=APP, route_prefix="/")
        wait_until_ready(f"http://{address}")
        yield address


def generation(address: str) -> dict[str, Any]:
    """The replica's generation statistics (there is one replica)."""
    return serve.get_deployment_handle(f"model-{MODEL}", app_name=APP).generation.remote().result()


def live_generation(address: str) -> dict[str, Any]:
    """The decoder's generation figures in the ingress's /api/live."""
    (family,) = httpx.get(f"http://{address}/api/live", timeout=30).json()["families"]
    (variant,) = family["variants"]
    assert variant["generation"] is not None, variant
    return variant["generation"]


def wait_for(check: Any, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def body(max_tokens: int) -> dict[str, Any]:
    return {"text_input": PROMPT, "parameters": {"max_tokens": max_tokens}}


def test_a_stream_arrives_event_by_event_and_adds_up_to_generate(deployed: str) -> None:
    url = f"http://{deployed}/v2/models/{MODEL}"
    whole = httpx.post(f"{url}/generate", json=body(TOKENS), timeout=60)
    assert whole.status_code == 200, whole.text
    assert whole.json()["finish_reason"] == "length" and whole.json()["output_tokens"] == TOKENS
    arrivals, events = [], []
    with httpx.stream("POST", f"{url}/generate_stream", json=body(TOKENS), timeout=60) as answer:
        assert answer.status_code == 200, answer.read()
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert answer.headers["cache-control"] == "no-cache"
        for event in sse_events(answer):  # read as server-sent events, as a browser's EventSource would
            arrivals.append(time.monotonic())
            events.append(event)
    assert len(events) == TOKENS + 1 and [e.get("index") for e in events[:-1]] == list(range(TOKENS))
    assert events[-1]["finish_reason"] == "length" and events[-1]["output_tokens"] == TOKENS
    assert "".join(e["text_output"] for e in events) == whole.json()["text_output"]
    # the first token came while the other 29 steps (at least 1.45 s) were still to run
    assert arrivals[-1] - arrivals[0] > 0.6 * (TOKENS - 1) * STEP_S, arrivals
    raw = httpx.post(f"{url}/generate_stream", json=body(4), timeout=60)  # its bytes: each event, a blank line
    assert [e.get("index") for e in framed_events(raw.content)] == [0, 1, 2, 3, None]
    refused = httpx.post(f"{url}/generate_stream", json=body(10**6), timeout=60)
    assert refused.status_code == 400 and "max_tokens" in refused.json()["error"]
    shown = live_generation(deployed)  # both answers carried the replica's statistics
    assert shown["finish_reasons"]["length"] >= 2 and shown["requests"] == generation(deployed)["requests"]
    assert httpx.get(f"{url}/stats", timeout=30).status_code == 200


def test_a_dropped_stream_stops_the_generation_on_its_replica(deployed: str) -> None:
    before = generation(deployed)
    with httpx.stream("POST", f"http://{deployed}/v2/models/{MODEL}/generate_stream", json=body(50),
                      timeout=60) as answer:
        assert next(sse_events(answer))["index"] == 0
    deadline = time.monotonic() + 30
    while (after := generation(deployed))["cancelled"] != before["cancelled"] + 1:
        assert time.monotonic() < deadline, f"the generation was not cancelled: {after}"
        time.sleep(0.1)
    assert after["running"] == 0 and after["requests"] == before["requests"] + 1
    assert after["output_tokens"] - before["output_tokens"] < 25  # of 50: it stopped within a few steps


def test_a_dropped_openai_stream_stops_the_generation_on_its_replica(deployed: str) -> None:
    before = generation(deployed)
    request = {"model": MODEL, "prompt": PROMPT, "max_tokens": 50, "stream": True}
    with httpx.stream("POST", f"http://{deployed}/v1/completions", json=request, timeout=60) as answer:
        assert answer.status_code == 200
        assert "choices" in next(sse_events(answer))  # the first chunk; then the client goes
    deadline = time.monotonic() + 30
    while (after := generation(deployed))["cancelled"] != before["cancelled"] + 1:
        assert time.monotonic() < deadline, f"the generation was not cancelled: {after}"
        time.sleep(0.1)
    assert after["running"] == 0 and after["output_tokens"] - before["output_tokens"] < 25


def test_a_client_that_leaves_a_generate_call_stops_it_on_its_replica(deployed: str) -> None:
    before = generation(deployed)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"http://{deployed}/v2/models/{MODEL}/generate", json=body(50), timeout=0.5)
    deadline = time.monotonic() + 30
    while (after := generation(deployed))["cancelled"] != before["cancelled"] + 1:
        assert time.monotonic() < deadline, f"the generation was not cancelled: {after}"
        time.sleep(0.1)
    assert after["running"] == 0 and after["output_tokens"] - before["output_tokens"] < 35


def test_the_ingress_live_view_and_metrics_show_the_replicas_generations(deployed: str) -> None:
    url = f"http://{deployed}/v2/models/{MODEL}"
    before = live_generation(deployed)
    assert before["running"] == 0
    for tokens in (5, 8):
        assert httpx.post(f"{url}/generate", json=body(tokens), timeout=60).status_code == 200
    with httpx.stream("POST", f"{url}/generate_stream", json=body(50), timeout=60) as answer:
        events = sse_events(answer)  # held: an iterator let go closes the connection
        assert "index" in next(events)
        wait_for(lambda: live_generation(deployed)["running"] == 1, "a stream under way is not shown running")
    with pytest.raises(httpx.ReadTimeout):  # a /generate whose client leaves
        httpx.post(f"{url}/generate", json=body(50), timeout=0.5)
    wait_for(lambda: live_generation(deployed)["cancelled"] == before["cancelled"] + 2,
             f"the cancelled generations are not shown: {live_generation(deployed)}")
    after, own = live_generation(deployed), generation(deployed)
    assert after["requests"] == before["requests"] + 4 and after["running"] == 0 and after["failed"] == 0
    assert after["finish_reasons"]["length"] == before["finish_reasons"]["length"] + 2
    assert after["prompt_tokens"] - before["prompt_tokens"] == 4 * len(PROMPT)
    assert 13 < after["output_tokens"] - before["output_tokens"] < 13 + 50
    counts = ("requests", "running", "failed", "cancelled", "finish_reasons", "prompt_tokens")
    assert {k: after[k] for k in counts} == {k: own[k] for k in counts}  # one replica: what it did
    # tokens and times as the ingress received them: a cancelled generation's replica may have made a
    # token or two that never reached the ingress; each token took a slowed step, and the ride back
    assert own["output_tokens"] - 4 <= after["output_tokens"] <= own["output_tokens"]
    assert after["inter_token_ms"]["p50"] >= 0.8 * STEP_S * 1e3
    assert after["time_to_first_token_ms"]["p50"] >= own["time_to_first_token_ms"]["p50"] * 0.8
    metrics = httpx.get(f"http://{deployed}/metrics", timeout=30).text

    def value(name: str, label: str) -> float:
        line = next(li for li in metrics.splitlines() if li.startswith(name + "{") and label in li)
        return float(line.rsplit(" ", 1)[1])

    assert value("dyt_generate_requests_total", 'finish_reason="cancelled"') == after["cancelled"]
    assert value("dyt_generate_requests_total", 'finish_reason="length"') == after["finish_reasons"]["length"]
    assert value("dyt_generate_tokens_total", 'kind="output"') == after["output_tokens"]
    assert value("dyt_generations_running", f'model="{MODEL}"') == 0

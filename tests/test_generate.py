"""dyt_deploy.generate: KV-cache decoding equals full recomputation; greedy, sampling, stop tokens,
streaming, cancellation and argument errors, on the zoo decoder and Hugging Face causal LMs."""

from __future__ import annotations

import re
import threading

import pytest
import torch

import dyt_deploy
from dyt_deploy.errors import DytDeployError, OptionError
from dyt_deploy.generation import GenerationSettings, Generator, Sampler
from dyt_deploy.models import create_model
from dyt_deploy.tokenizer import ByteTokenizer, TextStream

TINY = {"dim": 64, "depth": 2, "heads": 4, "ffn_dim": 128, "vocab_size": 300, "max_seq_len": 96}


@pytest.fixture(scope="module", params=["dyt", "rmsnorm"])
def decoder(request: pytest.FixtureRequest) -> torch.nn.Module:
    return create_model("llama_tiny", norm=request.param, **TINY)


def test_cached_forward_equals_full_recomputation(decoder: torch.nn.Module) -> None:
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = decoder(ids)
        logits, cache = decoder.forward_cached(ids[:, :7])
        steps = [logits]
        for i in range(7, 12):
            logits, cache = decoder.forward_cached(ids[:, i:i + 1], cache)
            steps.append(logits)
    assert cache[0][0].shape == (2, 4, 12, 16)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def _greedy_without_cache(model: torch.nn.Module, prompt: list[int], steps: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt):].tolist()


def test_greedy_generation_equals_recomputing_every_step(decoder: torch.nn.Module) -> None:
    prompt = [5, 17, 42, 7]
    result = dyt_deploy.generate(decoder, prompt, 20)
    assert result.tokens == [_greedy_without_cache(decoder, prompt, 20)]
    assert result.finish_reasons == ["length"] and result.prompt_tokens == 4


def test_a_left_padded_batch_generates_what_each_prompt_does_alone(decoder: torch.nn.Module) -> None:
    prompts = [[5, 17, 42, 7, 99], [8, 1]]
    batch = dyt_deploy.generate(decoder, prompts, 12)
    assert batch.tokens == [dyt_deploy.generate(decoder, p, 12).tokens[0] for p in prompts]


def test_sampling_is_seeded_and_reproducible(decoder: torch.nn.Module) -> None:
    def sample(seed: int) -> list[list[int]]:
        return dyt_deploy.generate(decoder, [[1, 2, 3], [4, 5, 6]], 16, temperature=1.5, top_k=50, top_p=0.95,
                                   seed=seed).tokens

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    assert sample(7) != dyt_deploy.generate(decoder, [[1, 2, 3], [4, 5, 6]], 16).tokens


def test_top_k_1_and_a_tiny_top_p_are_greedy(decoder: torch.nn.Module) -> None:
    greedy = dyt_deploy.generate(decoder, [3, 4], 10).tokens
    assert dyt_deploy.generate(decoder, [3, 4], 10, temperature=2.0, top_k=1, seed=1).tokens == greedy
    assert dyt_deploy.generate(decoder, [3, 4], 10, temperature=2.0, top_p=1e-6, seed=1).tokens == greedy


@pytest.mark.parametrize("temperature", [1e-45, 1e-30, 1e-8, 5e-324])
@pytest.mark.parametrize(("top_k", "top_p"), [(0, 1.0), (5, 1.0), (0, 0.9)])
def test_a_tiny_temperature_is_greedy_decoding(temperature: float, top_k: int, top_p: float) -> None:
    """logits / 1e-45 overflows float32 (softmax NaN, "probability tensor contains inf/nan"):
    the sampler scales in float64 from the row maximum, so the limit is the argmax."""
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(1)) * 8
    sampler = Sampler(GenerationSettings(temperature=temperature, top_k=top_k, top_p=top_p, seed=0))
    for _ in range(3):
        assert sampler(logits).tolist() == logits.argmax(dim=-1).tolist()


def test_a_tiny_temperature_shares_a_tie_and_never_picks_below_it() -> None:
    logits = torch.tensor([[2.0, 5.0, 5.0, -1.0]])
    sampler = Sampler(GenerationSettings(temperature=1e-45, seed=0))
    picked = {int(sampler(logits)) for _ in range(40)}
    assert picked == {1, 2}


def test_generation_at_a_tiny_temperature_equals_greedy(decoder: torch.nn.Module) -> None:
    prompt = [5, 17, 42, 7]
    greedy = dyt_deploy.generate(decoder, prompt, 8).tokens
    for temperature in (1e-45, 1e-30, 1e-8):
        assert dyt_deploy.generate(decoder, prompt, 8, temperature=temperature, seed=3).tokens == greedy


def test_the_sampler_keeps_only_the_nucleus() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    drawn = {int(Sampler(GenerationSettings(temperature=1.0, top_p=0.7, seed=s))(logits)) for s in range(200)}
    assert drawn == {0, 1}


def test_a_stop_token_ends_a_sequence_and_is_not_returned(decoder: torch.nn.Module) -> None:
    free = dyt_deploy.generate(decoder, [[5, 17, 42, 7], [8, 1]], 12)
    stop = free.tokens[0][3]
    stopped = dyt_deploy.generate(decoder, [[5, 17, 42, 7], [8, 1]], 12, stop_tokens=[stop])
    assert stopped.tokens[0] == free.tokens[0][:free.tokens[0].index(stop)]
    assert stopped.finish_reasons[0] == "stop"


def test_text_in_text_out_with_the_byte_tokenizer(decoder: torch.nn.Module) -> None:
    result = dyt_deploy.generate(decoder, "DyT: ", 8)
    assert result.prompt_tokens == 5
    assert result.text == [ByteTokenizer().decode(result.tokens[0])]


def test_the_stream_yields_the_generated_tokens_and_stops_on_cancel(decoder: torch.nn.Module) -> None:
    generator = Generator(decoder)
    settings = GenerationSettings(max_new_tokens=10)
    streamed = list(generator.stream([5, 17, 42], settings))
    assert [t.id for t in streamed] == generator.generate([5, 17, 42], settings).tokens[0]
    assert streamed[-1].finish_reason == "length" and all(t.finish_reason is None for t in streamed[:-1])
    cancel = threading.Event()
    taken = []
    for token in generator.stream([5, 17, 42], settings, cancel=cancel):
        taken.append(token)
        if len(taken) == 3:
            cancel.set()
    assert len(taken) == 4 and taken[-1].finish_reason == "cancelled"


def test_the_text_stream_never_splits_a_character() -> None:
    stream = TextStream(ByteTokenizer())
    pieces = [stream.push(b) for b in "é!".encode()]
    assert pieces == ["", "é", "!"] and stream.flush() == ""


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": -1.0}, "temperature"),
    ({"temperature": float("inf")}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"top_k": -2}, "top_k"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
])
def test_bad_settings_are_named(kwargs: dict, field: str) -> None:
    with pytest.raises(OptionError) as caught:
        GenerationSettings(**kwargs)
    assert [f for f, _ in caught.value.problems] == [field]


@pytest.mark.parametrize(("prompt", "max_new", "message"), [
    ([], 4, "prompt is empty"), ([5, 300], 4, "outside the model's vocabulary"),
    ([1] * 90, 10, "more than the model's 96 positions"), (3.5, 4, "prompts must be"),
])
def test_bad_prompts_are_clear_errors(decoder: torch.nn.Module, prompt: object, max_new: int, message: str) -> None:
    with pytest.raises(DytDeployError, match=message):
        dyt_deploy.generate(decoder, prompt, max_new)


def test_a_model_without_a_cache_path_cannot_generate() -> None:
    with pytest.raises(DytDeployError, match="cannot generate"):
        dyt_deploy.generate(create_model("vit_tiny"), [1, 2], 2)


def test_the_command_line_streams_a_continuation(tmp_path) -> None:
    from typer.testing import CliRunner

    from dyt_deploy.checkpoint import save_checkpoint
    from dyt_deploy.cli import generate_app

    save_checkpoint(create_model("llama_tiny", norm="dyt", **TINY), tmp_path / "m.pt")
    result = CliRunner().invoke(generate_app, [str(tmp_path / "m.pt"), "-p", "DyT", "-n", "5", "--seed", "1",
                                               "--temperature", "0.9"])
    assert result.exit_code == 0, result.output
    assert "[5 tokens" in result.output and "length]" in result.output
    assert result.stdout.endswith("\n")
    bad = CliRunner().invoke(generate_app, [str(tmp_path / "m.pt"), "-p", "DyT", "--top-p", "2"])
    assert bad.exit_code == 2 and "top_p" in bad.output


def test_the_command_line_at_a_tiny_temperature_prints_the_greedy_text(tmp_path) -> None:
    """dyt-generate --temperature 1e-45 ended in a traceback (inf/nan probabilities); it is greedy
    decoding. The text ends its line, and the summary line gives the time to the first token."""
    from typer.testing import CliRunner

    from dyt_deploy.checkpoint import save_checkpoint
    from dyt_deploy.cli import generate_app

    save_checkpoint(create_model("llama_tiny", norm="dyt", **TINY), tmp_path / "m.pt")
    args = [str(tmp_path / "m.pt"), "-p", "DyT", "-n", "6"]
    greedy = CliRunner().invoke(generate_app, args)
    assert greedy.exit_code == 0, greedy.output
    for temperature in ("1e-45", "1e-30", "1e-8"):
        tiny = CliRunner().invoke(generate_app, [*args, "--temperature", temperature, "--seed", "2"])
        assert tiny.exit_code == 0, tiny.output
        assert "Traceback" not in tiny.output and tiny.stdout == greedy.stdout
    assert greedy.stdout.endswith("\n") and greedy.stdout.strip()
    summary = re.search(r"\[6 tokens, first after (\d+) ms, ([\d.]+) tokens/s; length\]", greedy.stderr)
    assert summary is not None, greedy.stderr
    assert float(summary.group(2)) > 0


def test_a_stream_advanced_from_other_threads_and_dropped_leaves_nothing_behind(decoder: torch.nn.Module) -> None:
    from concurrent.futures import ThreadPoolExecutor

    generator = Generator(decoder)
    settings = GenerationSettings(max_new_tokens=8)
    stream = generator.stream([5, 17, 42], settings)
    with ThreadPoolExecutor(max_workers=2) as pool:  # a server's threadpool: each next() may run elsewhere
        first = [pool.submit(next, stream).result() for _ in range(3)]
    del stream  # dropped mid-way
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
    assert [t.id for t in first] == generator.generate([5, 17, 42], settings).tokens[0][:3]


def test_text_that_is_not_unicode_is_refused_by_the_byte_tokenizer() -> None:
    with pytest.raises(DytDeployError, match=r"not valid Unicode: surrogates not allowed at character 1"):
        ByteTokenizer().encode("a\ud800b")

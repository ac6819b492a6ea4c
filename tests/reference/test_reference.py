"""Reference twins: trained at the tiny preset, they learn, reproduce, cache and load as official checkpoints."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from reference_testlib import tiny_reference
from typer.testing import CliRunner

from dyt_deploy.checkpoint import load_checkpoint
from dyt_deploy.cli import app
from dyt_deploy.errors import OptionError
from dyt_deploy.reference import ensure_reference, recipe_for
from dyt_deploy.reference.data import STDLIB_MODULES, stdlib_corpus
from dyt_deploy.reference.train import evaluate, learning_rate

SHORT = {"steps": 6, "warmup_steps": 2}  # a few steps: enough to tell runs apart, seconds to train


def test_image_twins_learn_far_above_chance() -> None:
    reference = tiny_reference("image")
    card = reference.card
    assert set(reference.checkpoints) == {"dyt", "layernorm"}
    for variant in ("dyt", "layernorm"):
        assert card["variants"][variant]["test_top1"] > 0.4  # ten classes: chance is 0.1
        assert card["variants"][variant]["seconds"] > 0 and card["variants"][variant]["seed"] == 0
    assert card["split"]["test"] == 360 and card["data"]["split"]["random_state"] == 0
    assert card["schedule"]["steps"] == recipe_for("image", "tiny").steps


@pytest.mark.parametrize("variant", ["dyt", "layernorm"])
def test_checkpoints_load_as_official_training_checkpoints(variant: str) -> None:
    """No options: the architecture and its size come from the checkpoint's args, the EMA weights load,
    and they score on test.npz exactly what the card says."""
    reference = tiny_reference("image")
    raw = torch.load(reference.checkpoints[variant], weights_only=False)
    assert {"model", "model_ema", "optimizer", "epoch", "args"} <= set(raw)
    assert raw["args"].model == "vit_tiny" and raw["args"].nb_classes == 10
    loaded = load_checkpoint(reference.checkpoints[variant])
    assert (loaded.arch, loaded.norm, loaded.weights, loaded.source_format) == (
        "vit_tiny", variant, "model_ema", "training-checkpoint")
    assert loaded.config["dim"] == 32 and loaded.config["img_size"] == 8
    with np.load(reference.test_data) as test:
        assert set(test.files) == {"pixel_values", "labels"} and test["pixel_values"].shape == (360, 1, 8, 8)
        top1 = evaluate(loaded.model, "image", torch.from_numpy(test["pixel_values"]), torch.from_numpy(test["labels"]))
    assert top1 == reference.card["variants"][variant]["test_top1"]


def test_twins_share_every_weight_outside_the_norms_at_the_start(tmp_path: Path) -> None:
    """Zero steps would not train; one step with lr 0 leaves the shared initialisation as it was."""
    made = ensure_reference("image", tmp_path, preset="tiny", threads=1, steps=1, warmup_steps=1, lr=0.0, min_lr=0.0)
    dyt, ln = (torch.load(made.checkpoints[v], weights_only=False)["model"] for v in ("dyt", "layernorm"))
    shared = [k for k in dyt if k in ln and "norm" not in k]
    assert len(shared) > 10 and all(torch.equal(dyt[k], ln[k]) for k in shared)
    assert any(k.endswith("alpha") for k in dyt) and not any(k.endswith("alpha") for k in ln)


def test_same_seed_same_weights_and_numbers(tmp_path: Path) -> None:
    first = ensure_reference("image", tmp_path / "a", seed=3, preset="tiny", threads=1, **SHORT)
    second = ensure_reference("image", tmp_path / "b", seed=3, preset="tiny", threads=1, **SHORT)
    other = ensure_reference("image", tmp_path / "c", seed=4, preset="tiny", threads=1, **SHORT)
    for variant in ("dyt", "layernorm"):
        a, b, c = (torch.load(r.checkpoints[variant], weights_only=False)["model_ema"] for r in (first, second, other))
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not all(torch.equal(a[k], c[k]) for k in a)
        assert first.card["variants"][variant]["test_top1"] == second.card["variants"][variant]["test_top1"]
    assert np.array_equal(np.load(first.test_data)["labels"], np.load(second.test_data)["labels"])


def test_a_matching_card_is_reused_and_retrain_trains_again(tmp_path: Path) -> None:
    made = ensure_reference("image", tmp_path, preset="tiny", threads=1, **SHORT)
    stamp = made.checkpoints["dyt"].stat().st_mtime_ns
    again = ensure_reference("image", tmp_path, preset="tiny", threads=1, **SHORT)
    assert (made.trained, again.trained) == (True, False)
    assert again.checkpoints["dyt"].stat().st_mtime_ns == stamp and again.card == made.card
    other_seed = ensure_reference("image", tmp_path, seed=1, preset="tiny", threads=1, **SHORT)
    assert other_seed.trained and other_seed.card["seed"] == 1
    assert ensure_reference("image", tmp_path, seed=1, preset="tiny", threads=1, retrain=True, **SHORT).trained


def test_two_callers_of_one_folder_train_it_once(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        calls = [pool.submit(ensure_reference, "image", tmp_path, preset="tiny", threads=1, **SHORT) for _ in range(2)]
        made = [call.result() for call in calls]
    assert sorted(r.trained for r in made) == [False, True] and made[0].card == made[1].card


def test_a_folder_missing_a_checkpoint_is_trained_again(tmp_path: Path) -> None:
    made = ensure_reference("image", tmp_path, preset="tiny", threads=1, **SHORT)
    made.checkpoints["layernorm"].unlink()
    assert ensure_reference("image", tmp_path, preset="tiny", threads=1, **SHORT).trained


def test_text_twins_beat_a_uniform_byte_model_and_pin_their_corpus() -> None:
    reference = tiny_reference("text")
    card = reference.card
    assert set(reference.checkpoints) == {"dyt", "rmsnorm"}
    for variant in ("dyt", "rmsnorm"):
        assert card["variants"][variant]["test_perplexity"] < 40  # uniform over 256 bytes: 256
    corpus = stdlib_corpus()
    assert card["data"]["sha256"] == hashlib.sha256(corpus).hexdigest()
    assert card["data"]["modules"] == list(STDLIB_MODULES) and card["data"]["python"]
    assert "another Python version gives another corpus" in card["data"]["note"]
    with np.load(reference.test_data) as test:
        ids, labels = test["input_ids"], test["labels"]
    assert ids.shape == labels.shape and ids.shape[1] == 32 and np.array_equal(ids[:, 1:], labels[:, :-1])
    loaded = load_checkpoint(reference.checkpoints["rmsnorm"])
    assert (loaded.arch, loaded.norm, loaded.config["vocab_size"]) == ("llama_tiny", "rmsnorm", 256)
    assert load_checkpoint(reference.checkpoints["dyt"]).norm == "dyt"


def test_warm_up_then_cosine_down_to_min_lr() -> None:
    recipe = recipe_for("image", steps=100, warmup_steps=10, lr=1.0, min_lr=0.01)
    rates = [learning_rate(recipe, step) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:], strict=False))
    assert rates[-1] == pytest.approx(0.01, abs=1e-3)


def test_unknown_task_and_preset_are_one_option_error() -> None:
    with pytest.raises(OptionError) as info:
        recipe_for("audio", "huge")
    assert [field for field, _ in info.value.problems] == ["task", "preset"]


def test_cli_reuses_the_twins_and_says_so(tmp_path: Path) -> None:
    folder = tiny_reference("image").folder
    result = CliRunner().invoke(app, ["train-reference", "--task", "image", "-o", str(folder), "--preset", "tiny",
                                      "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "reused (card matches" in result.output and "dyt: " in result.output and "test top-1" in result.output


def test_cli_bad_task_is_one_error_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train-reference", "--task", "audio", "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: --task: unknown task 'audio'")


def test_dyt_export_takes_the_dyt_checkpoint(tmp_path: Path) -> None:
    from dyt_deploy.cli import export_app

    checkpoint = tiny_reference("image").checkpoints["dyt"]
    result = CliRunner().invoke(export_app, [str(checkpoint), "-o", str(tmp_path / "dyt.onnx")])
    assert result.exit_code == 0, result.output
    assert "weights: model_ema (EMA)" in result.output and (tmp_path / "dyt.onnx").is_file()
    assert json.loads((tiny_reference("image").folder / "card.json").read_text())["task"] == "image"

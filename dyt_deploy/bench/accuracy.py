"""Accuracy beside latency: ``dyt-bench MODEL --data FILE.npz``.

Every timed runner (runtime x setting x precision) of every variant runs the data file's samples
(see :mod:`dyt_deploy.check_data`); the report gets per row the accuracy (labels of a classifier),
the perplexity (a language model's next-token labels) and the top-1 agreement with the variant's
own PyTorch fp32 module.

Whether two variants' accuracies compare depends on how they were made: the reference twins
(``dyt train-reference``) were each trained, with the same data and schedule, so theirs do; the
twins of a user's model are converted from it (norm layers swapped, untrained), so theirs say
nothing about the norm and the report says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..check_data import CheckData, accuracy, load_check_data, perplexity, top1_agreement
from ..runners import Runner
from .variants import VARIANTS, VariantSet

BATCH = 64
NAMES = {"dyt": "DyT", "dyt-folded": "DyT (folded)", "layernorm": "LayerNorm", "rmsnorm": "RMSNorm", "derf": "Derf"}
RUNTIMES = {"ort": "onnxruntime", "openvino": "OpenVINO", "ort-cuda": "onnxruntime CUDA", "torch": "PyTorch",
            "torch-compile": "torch.compile", "aoti": "AOTInductor", "ort-int8": "onnxruntime INT8",
            "openvino-int8": "OpenVINO INT8"}


# -- the reference twins --------------------------------------------------------------------------

def with_trained_twins(variant_set: VariantSet, model: Path, weights: str | None = None) -> VariantSet:
    """``variant_set`` with each converted twin replaced by its trained twin where ``model`` is a
    reference checkpoint (``dyt train-reference``) whose card has one; unchanged otherwise."""
    from ..checkpoint import load_checkpoint
    from ..reference.card import card_of_checkpoint, checkpoint_paths, metric_text

    found = card_of_checkpoint(model)
    if found is None:
        return variant_set
    card, _ = found
    folder = Path(model).resolve().parent.parent
    paths = checkpoint_paths(folder, card)
    loaded: dict[str, Any] = {}
    for variant in variant_set.models:
        norm = VARIANTS[variant][0]
        if norm in paths and norm != variant_set.own:
            loaded.setdefault(norm, load_checkpoint(paths[norm], weights=weights).model)
            variant_set.models[variant] = loaded[norm]
            variant_set.made[variant] = f"trained twin {paths[norm]} ({metric_text(card, norm)} on its card)"
    return variant_set


def comparable_variants(variant_set: VariantSet) -> set[str]:
    """The variants whose accuracy compares: for a reference checkpoint, every variant its card trained
    (the model and its trained twins); none for a user's model with converted twins or the zoo's random weights."""
    from ..reference.card import card_of_checkpoint

    source = Path(variant_set.source)
    found = card_of_checkpoint(source) if source.is_file() else None
    trained = set(found[0]["variants"]) if found is not None else set()
    return {v for v in variant_set.models if VARIANTS[v][0] in trained}


# -- measuring ------------------------------------------------------------------------------------

def accuracy_section(groups: dict[str, dict[str, Runner]], variant_set: VariantSet, data_path: Path) -> dict:
    """Accuracy per variant x group (and PyTorch fp32 per variant) on the samples of ``data_path``."""
    data = load_check_data(data_path, variant_set.specs)
    language = _is_language_model(variant_set, data)
    comparable = comparable_variants(variant_set)
    expected = {variant: _pytorch_logits(module, variant_set, data) for variant, module in variant_set.models.items()}
    rows = [_row("pytorch", "fp32", variant, logits, logits, data, language, variant in comparable)
            for variant, logits in expected.items()]
    for group, members in groups.items():
        for variant, runner in members.items():
            logits = _runner_logits(runner, data)
            rows.append(_row(group, _precision(group), variant, logits, expected[variant], data, language,
                             variant in comparable))
    return {"data": str(data_path), "samples": data.samples, "labels": data.labels is not None,
            "metric": "perplexity" if language else "top1", "comparable": sorted(comparable),
            "note": comparability_note(variant_set, comparable), "rows": rows}


def _is_language_model(variant_set: VariantSet, data: CheckData) -> bool:
    specs = variant_set.specs
    return len(specs) == 1 and data.labels is not None and data.labels.shape == data.inputs[specs[0].name].shape


def _pytorch_logits(module: Any, variant_set: VariantSet, data: CheckData) -> np.ndarray:
    import torch

    from ..models.base import flatten_outputs

    out = []
    with torch.no_grad():
        for feed in data.batches(BATCH):
            tensors = [torch.from_numpy(feed[s.name]) for s in variant_set.specs]
            out.append(flatten_outputs(module(*tensors))[0].float().numpy())
    return np.concatenate(out)


def _runner_logits(runner: Runner, data: CheckData) -> np.ndarray:
    """The runner's first output over every batch; fp32 feeds, as in the timing (torch runners cast their own)."""
    out = []
    for feed in data.batches(BATCH):
        got = runner.infer(feed)
        out.append(np.asarray(next(iter(got.values())), np.float32))
    return np.concatenate(out)


def _precision(group: str) -> str:
    """A torch group's precision is its setting (``torch/fp16``); INT8 groups (``ort-int8/no-data``,
    ``bench.int8``) run int8; other ONNX groups fp32."""
    runtime, _, setting = group.partition("/")
    if runtime.endswith("-int8"):
        return "int8"
    return setting if setting in ("fp16", "bf16") else "fp32"


def _row(group: str, precision: str, variant: str, logits: np.ndarray, expected: np.ndarray, data: CheckData,
         language: bool, comparable: bool) -> dict:
    runtime, _, setting = group.partition("/")
    row = {"group": group, "runtime": runtime, "setting": setting or "default", "precision": precision,
           "variant": variant, "samples": data.samples, "agreement": top1_agreement(expected, logits),
           "accuracy": None, "perplexity": None, "comparable": comparable}
    if data.labels is not None:
        row["accuracy"] = accuracy(logits, data.labels)
        row["perplexity"] = perplexity(logits, data.labels) if language else None
    return row


def comparability_note(variant_set: VariantSet, comparable: set[str]) -> str:
    """Whether the variants' accuracies compare, in a sentence."""
    others = [v for v in variant_set.models if v not in comparable]
    if not others:
        return ("Every variant is a trained reference twin (same data, schedule and initialisation outside the "
                "norms): their accuracies compare, DyT against its twin.")
    converted = ", ".join(others)
    return (f"Not comparable: {converted} {'is' if len(others) == 1 else 'are'} untrained (converted from the model's "
            "norm layers, or random zoo weights), so their accuracy says nothing about the norm; it shows what "
            "each deployment computes. Train comparable twins with dyt train-reference.")


# -- reading it back ------------------------------------------------------------------------------

def accuracy_of(report: dict, group: str, variant: str) -> dict | None:
    """The accuracy row of ``variant`` in ``group``; None when the report has none."""
    section = report.get("accuracy") or {}
    return next((r for r in section.get("rows", []) if r["group"] == group and r["variant"] == variant), None)


def annotate_summary(entries: list[dict], report: dict) -> list[dict]:
    """Each answer entry with ``accuracy``: the variant's and the reference's figure at the entry's
    settings, the metric, and whether they compare (absent when the report measured none)."""
    if not report.get("accuracy"):
        return entries
    metric = report["accuracy"]["metric"]
    for entry in entries:
        mine = accuracy_of(report, _group(entry["runtime"], entry["variant_setting"]), entry["variant"])
        theirs = accuracy_of(report, _group(entry["runtime"], entry["reference_setting"]), entry["reference"])
        if mine is not None and theirs is not None:
            entry["accuracy"] = {"metric": metric, "variant": _figure(mine, metric),
                                 "reference": _figure(theirs, metric),
                                 "comparable": mine["comparable"] and theirs["comparable"]}
    return entries


def _group(runtime: str, setting: str) -> str:
    return runtime if setting == "default" else f"{runtime}/{setting}"


def _figure(row: dict, metric: str) -> float | None:
    return row["perplexity"] if metric == "perplexity" else row["accuracy"]


def headline_sentences(report: dict) -> list[str]:
    """``DyT x0.930 [0.910, 0.950] of LayerNorm's latency on OpenVINO (batch=8), accuracy 98.3% vs 98.1%``,
    one per answer entry that has accuracy figures."""
    return [_sentence(e) for e in report.get("summary", []) if e.get("accuracy")]


def _sentence(entry: dict) -> str:
    r, acc = entry["ratio"], entry["accuracy"]
    mine, theirs = NAMES.get(entry["variant"], entry["variant"]), NAMES.get(entry["reference"], entry["reference"])
    where = RUNTIMES.get(entry["runtime"], entry["runtime"])
    if entry["variant_setting"] in ("fp16", "bf16"):
        where += f" {entry['variant_setting']}"
    text = (f"{mine} x{r['ratio']:.2f} [{r['low']:.2f}, {r['high']:.2f}] of {theirs}'s latency on {where} "
            f"({entry['shape']}), {_metric_text(acc)}")
    return text if acc["comparable"] else text + " (not comparable: an untrained twin)"


def _metric_text(acc: dict) -> str:
    if acc["variant"] is None or acc["reference"] is None:
        return "no labels in the data, agreement only"
    if acc["metric"] == "perplexity":
        return f"perplexity {acc['variant']:.3f} vs {acc['reference']:.3f}"
    return f"accuracy {acc['variant']:.1%} vs {acc['reference']:.1%}"


ACCURACY_COLUMNS = ["runner / setting", "precision", "variant", "accuracy", "perplexity",
                    "top-1 agreement with its PyTorch fp32", "comparable"]


def accuracy_rows(report: dict) -> list[list[str]]:
    """Rows of :data:`ACCURACY_COLUMNS`, PyTorch fp32 first."""
    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.2%}"

    rows = report.get("accuracy", {}).get("rows", [])
    return [[r["group"], r["precision"], r["variant"], share(r["accuracy"]),
             "-" if r["perplexity"] is None else f"{r['perplexity']:.3f}", share(r["agreement"]),
             "yes" if r["comparable"] else "no"] for r in rows]

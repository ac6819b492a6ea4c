"""``dyt-check``: the PyTorch reference and each runner on the same seeded inputs.

The target is a model.pt (ONNX-based runners then get a fresh, unverified export in a temporary
folder) or a model folder of a repository (its ``1/model.onnx``, ``1/model.plan``, ``1/model.pt2`` and
the model.pt its manifest names as source). A text-generation folder (``dyt-export --task
text-generation``) is checked as its export was: greedy decoding in onnxruntime against PyTorch
(:func:`check_decoder_folder`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .check_data import (
    AGREEMENT_THRESHOLDS,
    CheckData,
    DataFigures,
    DataOutputs,
    figures,
    greedy_continuations,
    load_check_data,
)
from .checkpoint import load_checkpoint
from .dtypes import cast_floats
from .errors import DytDeployError
from .export.signature import flatten_outputs, input_specs, output_names, sample_sizes
from .export.steps import Progress, Steps
from .feeds import random_feed
from .parity import INT8_MIN_COSINE, ParityReport, default_tolerances
from .repository import MANIFEST_NAME, read_manifest
from .runners import MODULE, PLAN, Runner, create_runner, runner_kind
from .runners.registry import PT2
from .specs import TensorSpec


@dataclass
class CheckTarget:
    """What the runners are checked on: the reference module, its IO, and the deployed files."""

    reference: nn.Module
    specs: list[TensorSpec]
    output_names: list[str]
    dtype: str = "fp32"
    onnx_path: Path | None = None  # or an OpenVINO folder's model.xml, which only the openvino runner takes
    plan_path: Path | None = None
    package_path: Path | None = None  # an AOTInductor model.pt2
    model_path: Path | None = None
    load_options: dict[str, Any] = field(default_factory=dict)  # how model_path was loaded (arch, weights, ...)
    trust_pickle: bool = False  # --trust-pickle: also for the folder's own model.pt2 (the aoti runner)
    quantized: bool = False  # an INT8 folder (dyt quantize): its own file is judged by INT8's verdict


def check_target(source: str | Path, arch: str | None = None, trust_pickle: bool = False,
                 weights: str | None = None) -> CheckTarget:
    """A model.pt, or a model folder holding dyt.json (see the module docstring).

    ``weights`` picks the weights of a training checkpoint ("model" or "ema"); None: the EMA
    weights when present, and for a model folder the weights it was exported from.
    """
    source = Path(source)
    if source.is_dir() and not (source / "config.json").is_file():  # config.json: a Hugging Face folder, a model
        return _folder_target(source, trust_pickle, weights)
    options = {"arch": arch, "trust_pickle": trust_pickle, "weights": weights}
    loaded = load_checkpoint(source, **options)
    specs = input_specs(loaded.model, None, None)
    return CheckTarget(loaded.model, specs, output_names(loaded.model), model_path=source, load_options=options)


def _folder_target(folder: Path, trust_pickle: bool, weights: str | None) -> CheckTarget:
    if not (folder / MANIFEST_NAME).is_file():
        raise DytDeployError(f"{folder}: not a model folder (no {MANIFEST_NAME}); pass REPO/NAME or a model.pt")
    manifest = read_manifest(folder)
    source = (manifest.get("source") or {}).get("path")
    if not source or not Path(source).exists():  # a model.pt, or a Hugging Face folder
        raise DytDeployError(f"{folder}: the reference model.pt named in {MANIFEST_NAME} ({source}) is not here; "
                             "run dyt-check on the model.pt instead, or export again from where it is")
    weights = weights or _weights_choice((manifest.get("source") or {}).get("weights"))
    loaded = load_checkpoint(source, arch=manifest.get("arch"), trust_pickle=trust_pickle, weights=weights)
    specs = [TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in manifest["inputs"]]
    specs = _with_value_ranges(specs, loaded.model)
    plan, ir, package = (folder / "1" / name for name in ("model.plan", "model.xml", "model.pt2"))
    model_file = ir if ir.is_file() else folder / "1" / "model.onnx"  # an OpenVINO folder holds IR, no ONNX
    if package.is_file() and not model_file.is_file():  # an AOTInductor folder: ONNX runners get a fresh export
        model_file = None
    return CheckTarget(loaded.model, specs, [o["name"] for o in manifest["outputs"]], manifest.get("dtype", "fp32"),
                       model_file, plan if plan.is_file() else None, package if package.is_file() else None,
                       Path(source), trust_pickle=trust_pickle, quantized=manifest.get("precision") == "int8")


def is_decoder_folder(source: str | Path) -> bool:
    """Whether ``source`` is a model folder written by ``dyt-export --task text-generation``."""
    folder = Path(source)
    if not (folder / MANIFEST_NAME).is_file():
        return False
    return read_manifest(folder).get("task") == "text-generation"


def check_decoder_folder(folder: str | Path, runners: list[str] | None = None, atol: float | None = None,
                         rtol: float | None = None, trust_pickle: bool = False) -> Any:
    """Greedy decoding of the folder's ONNX decoder (``1/model.onnx`` or, as ``-o`` writes it,
    ``model.onnx``) in onnxruntime against the model.pt or Hugging Face folder its manifest names;
    a :class:`dyt_deploy.export.decoder.DecodingCheck`. Only the ``ort`` runner decodes here."""
    from .export.decoder import check_decoding

    folder = Path(folder)
    unsupported = sorted(set(runners or ["ort"]) - {"ort"})
    if unsupported:
        raise DytDeployError(f"{folder} is a text-generation model: dyt-check decodes it with --runners ort only "
                             f"(not {', '.join(unsupported)})")
    manifest = read_manifest(folder)
    source = (manifest.get("source") or {}).get("path")
    if not source or not Path(source).exists():
        raise DytDeployError(f"{folder}: the reference model named in {MANIFEST_NAME} ({source}) is not here; "
                             "export again from where it is")
    onnx_path = next((p for p in (folder / "1" / "model.onnx", folder / "model.onnx") if p.is_file()), None)
    if onnx_path is None:
        raise DytDeployError(f"{folder}: no 1/model.onnx or model.onnx; export it again")
    weights = _weights_choice((manifest.get("source") or {}).get("weights"))
    loaded = load_checkpoint(source, arch=manifest.get("arch"), trust_pickle=trust_pickle, weights=weights)
    return check_decoding(onnx_path, loaded.model, manifest.get("dtype", "fp32"), atol, rtol)


def _weights_choice(recorded: str | None) -> str | None:
    """The ``weights`` choice that loads what an export recorded (``model_ema`` -> "ema")."""
    if recorded is None:
        return None
    return "ema" if "ema" in recorded else "model"


def _with_value_ranges(specs: list[TensorSpec], model: nn.Module) -> list[TensorSpec]:
    """Integer inputs take the zoo's value ranges (token ids below the vocabulary size) when known."""
    try:
        zoo = {s.name: s for s in input_specs(model, None, None)}
    except DytDeployError:
        return specs
    return [TensorSpec(s.name, s.shape, "float32" if s.dtype == "float16" else s.dtype,
                       zoo[s.name].low, zoo[s.name].high) if s.name in zoo else s for s in specs]


def default_runners(target: CheckTarget) -> list[str]:
    if target.package_path is not None:
        return ["aoti"]
    if target.onnx_path is None:
        return ["torch-compile", "ort"]
    if target.onnx_path.suffix == ".xml":
        return ["openvino"]
    return ["ort", "trt"] if target.plan_path else ["ort"]


def runner_for_target(kind: str, target: CheckTarget, workdir: Path) -> Runner:
    """A runner of ``kind`` over ``target``: its module, engine, or ONNX file (exported into
    ``workdir`` when the target has none)."""
    takes = runner_kind(kind).takes
    if takes == MODULE:
        return create_runner(kind, target.reference, input_names=[s.name for s in target.specs],
                             output_names=target.output_names)
    if takes == PLAN:
        if target.plan_path is None:
            raise DytDeployError(f"runner {kind} needs a TensorRT engine: build one with dyt-build REPO/NAME")
        return create_runner(kind, target.plan_path)
    if takes == PT2:
        return create_runner(kind, _package_for(target, workdir), trust_pickle=target.trust_pickle)
    model_file = _onnx_for(target, workdir)
    if model_file.suffix == ".xml" and kind != "openvino":
        raise DytDeployError(f"runner {kind} needs ONNX; {model_file} is OpenVINO IR: use --runners openvino")
    return create_runner(kind, model_file)


def _package_for(target: CheckTarget, workdir: Path) -> Path:
    """The target's AOTInductor package; for a model.pt, one compiled (unverified, fp32, CPU) into ``workdir``."""
    if target.package_path is None:
        from .export.aoti import compile_package

        target.package_path = compile_package(target.reference, target.specs, workdir / "model.pt2").path
    return target.package_path


def _onnx_for(target: CheckTarget, workdir: Path) -> Path:
    if target.onnx_path is None:
        from .export import export_onnx

        target.onnx_path = export_onnx(target.model_path, workdir / "model.onnx", verify=False,
                                       **target.load_options).onnx_path
    return target.onnx_path


def check_model(source: str | Path, runners: list[str] | None = None, samples: int = 3, atol: float | None = None,
                rtol: float | None = None, arch: str | None = None, trust_pickle: bool = False,
                weights: str | None = None, progress: Progress | None = None) -> dict[str, ParityReport]:
    """Parity of each runner against the PyTorch reference; every runner is checked before returning.

    ``weights``: see :func:`check_target`. ``progress(event, step, seconds)``: called with "start"
    and "done" (and the step's seconds) around each runner, export or compile included.
    """
    target = check_target(source, arch=arch, trust_pickle=trust_pickle, weights=weights)
    feeds = [random_feed(target.specs, sample_sizes(index, target.specs), index) for index in range(samples)]
    expected = [_reference(target, feed) for feed in feeds]
    reports: dict[str, ParityReport] = {}
    step = Steps(progress)
    with tempfile.TemporaryDirectory(prefix="dyt-check-") as workdir:
        for kind in runners or default_runners(target):
            with step(f"runner {kind}"):
                precision = _precision(kind, target, Path(workdir))
                report = ParityReport(*default_tolerances(precision, atol, rtol),
                                      min_cosine=_int8_cosine(kind, target, Path(workdir)))
                with runner_for_target(kind, target, Path(workdir)) as runner:
                    for feed, ref in zip(feeds, expected, strict=True):
                        got = runner.infer(cast_floats(feed, precision))
                        report.add_sample(ref, {k: np.asarray(v, np.float32) for k, v in got.items()},
                                          {k: v.shape for k, v in feed.items()})
            reports[kind] = report
    return reports


def _runs_own_file(kind: str, target: CheckTarget, workdir: Path) -> bool:
    """Whether runner ``kind`` runs the folder's own file (not the module, not a fresh export into
    ``workdir`` of a folder without one)."""
    takes = runner_kind(kind).takes
    fresh_onnx = takes not in (MODULE, PLAN, PT2) and (target.onnx_path is None or workdir in target.onnx_path.parents)
    return not (takes == MODULE or fresh_onnx)


def _precision(kind: str, target: CheckTarget, workdir: Path) -> str:
    """The torch runners and a fresh ONNX export into ``workdir`` (of a folder without one) run
    fp32; the folder's own files run in its dtype."""
    return target.dtype if _runs_own_file(kind, target, workdir) else "fp32"


def _int8_cosine(kind: str, target: CheckTarget, workdir: Path) -> float | None:
    """INT8's verdict (cosine similarity, :data:`~dyt_deploy.parity.INT8_MIN_COSINE`) for an INT8
    folder's own file; None (elementwise tolerances) for everything else."""
    return INT8_MIN_COSINE if target.quantized and _runs_own_file(kind, target, workdir) else None


def _reference(target: CheckTarget, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        outputs = flatten_outputs(target.reference(*[torch.from_numpy(feed[s.name]) for s in target.specs]))
    return {name: t.float().numpy() for name, t in zip(target.output_names, outputs, strict=False)}


# -- on the user's data (--data) -------------------------------------------------------------------

@dataclass
class DataResult:
    """One runner at one precision on the data: its parity (today's tolerances) and its figures."""

    parity: ParityReport
    figures: DataFigures

    @property
    def passed(self) -> bool:
        return self.figures.passed

    def to_dict(self) -> dict:
        return {**self.parity.to_dict(), "passed": self.passed, "data": self.figures.to_dict()}


def check_model_on_data(source: str | Path, data: str | Path, runners: list[str] | None = None,
                        atol: float | None = None, rtol: float | None = None,
                        agreement: dict[str, float] | None = None, prompts: int = 8, new_tokens: int = 16,
                        batch: int = 64, arch: str | None = None, trust_pickle: bool = False,
                        weights: str | None = None, progress: Progress | None = None) -> dict[str, DataResult]:
    """Each runner on the samples of ``data`` (a .npz, see :mod:`dyt_deploy.check_data`) against PyTorch fp32.

    ``runners``: kinds as for :func:`check_model`; a torch kind may name a precision, ``torch/fp16``.
    ``agreement``: precision -> the least top-1 agreement that passes (default
    :data:`~dyt_deploy.check_data.AGREEMENT_THRESHOLDS`). ``prompts``/``new_tokens``: language
    models' greedy decoding check (the first ``prompts`` samples, their first half as the prompt).
    """
    target = check_target(source, arch=arch, trust_pickle=trust_pickle, weights=weights)
    samples = load_check_data(data, target.specs)
    thresholds = {**AGREEMENT_THRESHOLDS, **(agreement or {})}
    prompt_ids = _prompts(target, samples, prompts)
    expected = _outputs(lambda feed: _reference(target, feed), target, samples, batch, prompt_ids, new_tokens)
    results: dict[str, DataResult] = {}
    step = Steps(progress)
    with tempfile.TemporaryDirectory(prefix="dyt-check-") as workdir:
        for name in runners or default_runners(target):
            with step(f"runner {name}"):
                results[name] = _data_result(name, target, samples, expected, Path(workdir), thresholds, batch,
                                             prompt_ids, new_tokens, atol, rtol)
    return results


def _data_result(name: str, target: CheckTarget, samples: CheckData, expected: DataOutputs, workdir: Path,
                 thresholds: dict[str, float], batch: int, prompt_ids: np.ndarray | None, new_tokens: int,
                 atol: float | None, rtol: float | None) -> DataResult:
    kind, _, asked = name.partition("/")
    precision = _data_precision(kind, asked, target, workdir)
    min_cosine = None if asked else _int8_cosine(kind, target, workdir)
    parity = ParityReport(*default_tolerances(precision, atol, rtol), min_cosine=min_cosine)
    with _data_runner(kind, asked, target, workdir) as runner:
        def infer(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            got = runner.infer(feed if asked else cast_floats(feed, precision))  # a torch runner casts its own
            return {k: np.asarray(v, np.float32) for k, v in got.items()}

        got = _outputs(infer, target, samples, batch, prompt_ids, new_tokens, parity, expected)
    judged = "int8" if min_cosine is not None else precision
    return DataResult(parity, figures(name, judged, samples, expected, got, parity, thresholds[judged]))


def _data_precision(kind: str, asked: str, target: CheckTarget, workdir: Path) -> str:
    """The precision a runner runs in: what ``KIND/PRECISION`` asks for a torch kind, else the file's."""
    if not asked:
        return _precision(kind, target, workdir)
    if runner_kind(kind).takes != MODULE:
        raise DytDeployError(f"runner {kind}/{asked}: only the torch runners take a precision; {kind} runs its "
                             "file's (export one with dyt-export --dtype fp16 for an fp16 ONNX)")
    from .parity import DEFAULT_TOLERANCES

    if asked not in DEFAULT_TOLERANCES:
        raise DytDeployError(f"runner {kind}/{asked}: unknown precision; choose one of "
                             f"{', '.join(DEFAULT_TOLERANCES)}")
    return asked


def _data_runner(kind: str, asked: str, target: CheckTarget, workdir: Path) -> Runner:
    if asked:
        return create_runner(kind, target.reference, input_names=[s.name for s in target.specs],
                             output_names=target.output_names, dtype=asked)
    return runner_for_target(kind, target, workdir)


def _prompts(target: CheckTarget, samples: CheckData, count: int) -> np.ndarray | None:
    """A language model's greedy-decoding prompts: the first half of the first ``count`` samples; None
    for other models (or ``count`` 0)."""
    if count < 1 or not _is_language_model(target):
        return None
    ids = samples.inputs[target.specs[0].name][:count]
    return ids[:, :max(1, ids.shape[1] // 2)]


def _is_language_model(target: CheckTarget) -> bool:
    """One integer input with a sequence dim and logits over tokens per position (a causal LM)."""
    specs = target.specs
    if len(specs) != 1 or "int" not in specs[0].dtype or len(specs[0].shape) != 2:
        return False
    return getattr(target.reference, "family", "") == "llama" or hasattr(target.reference, "generate")


def _outputs(infer: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], target: CheckTarget,
             samples: CheckData, batch: int, prompt_ids: np.ndarray | None, new_tokens: int,
             parity: ParityReport | None = None, expected: DataOutputs | None = None) -> DataOutputs:
    """The first output of ``infer`` over every batch of ``samples`` (and the greedy continuations of
    ``prompt_ids``); with ``parity``, each batch is compared with ``expected``'s."""
    first = target.output_names[0]
    outputs = DataOutputs()
    for index, feed in enumerate(samples.batches(batch)):
        got = infer(feed)
        if parity is not None and expected is not None:
            parity.add_sample({first: expected.logits[index]}, {first: got.get(first)} if first in got else {},
                              {k: v.shape for k, v in feed.items()})
        outputs.logits.append(got[first])
    if prompt_ids is not None:
        name = target.specs[0].name
        outputs.continuations = greedy_continuations(lambda ids: infer({name: ids})[first], prompt_ids, new_tokens)
    return outputs

"""``--task text-generation``: a decoder as ONNX with past key/values, verified by greedy decoding.

The graph (the names onnxruntime-genai and Hugging Face Optimum use):

- inputs ``input_ids`` (batch, seq) int64, ``attention_mask`` (batch, past + seq) int64 (1: a real
  token), ``position_ids`` (batch, seq) int64, ``past_key_values.N.key`` / ``.value`` (batch, heads,
  past, head_dim) per layer N;
- outputs ``logits`` (batch, seq, vocab), ``present.N.key`` / ``.value`` (batch, heads, past + seq, head_dim).

Batch, sequence and past length are dynamic (past 0 is the prefill). The model is checked by
decoding ``VERIFY_TOKENS`` tokens greedily in onnxruntime and in PyTorch (fp32): the tokens must be
equal and the logits within tolerance at every step. The folder written holds ``model.onnx``,
``genai_config.json`` for onnxruntime-genai, and ``dyt.json`` (the manifest, with the decoding check).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from torch import nn

from ..checkpoint import load_checkpoint
from ..dtypes import torch_dtype
from ..errors import DytDeployError, first_line
from ..parity import default_tolerances
from ..repository import library_versions, refuse_existing, sha256_file, staged_folder, write_manifest
from . import signature as sig
from .config import ExportConfig

VERIFY_TOKENS = 32
VERIFY_PROMPTS = ((5, 17, 42, 7, 99, 3, 11), (8, 1, 64))  # two prompts of different lengths: padding is checked too
GENAI_CONFIG = "genai_config.json"
GENAI_TYPE = "llama"  # onnxruntime-genai's decoder-only model type with this graph's IO (rotary in the graph)
_EXPORT_SIZES = {"batch": 2, "seq": 3, "past": 4}


class DecoderGraph(nn.Module):
    """The zoo decoder's ``forward_cached`` with flat inputs and outputs, as the ONNX graph has them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        logits, present = self.model.forward_cached(input_ids, cache, attention_mask, position_ids)
        return (logits, *[t for pair in present for t in pair])


def input_names(layers: int) -> list[str]:
    pasts = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *pasts]


def output_names(layers: int) -> list[str]:
    return ["logits", *[f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]]


def check_decoder(model: nn.Module, source: Any) -> None:
    """Refuse a model that has no key/value cache path (only the zoo's llama decoders have one)."""
    if not hasattr(model, "forward_cached") or not hasattr(model, "empty_cache"):
        raise DytDeployError(f"{source}: --task text-generation takes the zoo's llama decoders (llama_tiny, "
                             f"llama_small; {type(model).__name__} has no key/value cache path); "
                             "export other models without --task")


def example_inputs(model: nn.Module, dtype: str, sizes: dict[str, int] = _EXPORT_SIZES) -> tuple[torch.Tensor, ...]:
    """Seeded inputs of the graph at ``sizes`` (batch, seq, past); past in the export dtype."""
    batch, seq, past = sizes["batch"], sizes["seq"], sizes["past"]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, int(model.config["vocab_size"]), (batch, seq), generator=generator)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    positions = torch.arange(past, past + seq).expand(batch, seq).contiguous()
    heads = int(model.config["heads"])
    shape = (batch, heads, past, int(model.config["dim"]) // heads)
    cache = [torch.randn(shape, generator=generator).to(torch_dtype(dtype))
             for _ in range(2 * len(model.layers))]
    return (ids, mask, positions, *cache)


def decoder_to_onnx(model: nn.Module, dtype: str, opset: int) -> ir.Model:
    """``model`` (a zoo decoder) as the cached decoder graph, in memory, pattern form."""
    from .api import ExportError, prepare_for_dtype

    layers = len(model.layers)
    graph = DecoderGraph(prepare_for_dtype(model, dtype)).eval()
    args = example_inputs(model, dtype)
    auto = torch.export.Dim.AUTO
    pasts = tuple({0: auto, 2: auto} for _ in range(2 * layers))  # *past is one argument to torch.export
    shapes = ({0: auto, 1: auto}, {0: auto, 1: auto}, {0: auto, 1: auto}, pasts)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph, args, dynamo=True, dynamic_shapes=shapes,
                                        input_names=input_names(layers), output_names=output_names(layers),
                                        opset_version=opset, verbose=False, optimize=True)
    except Exception as err:  # torch.export raises many types; all mean "could not capture"
        raise ExportError(f"torch.onnx.export of the cached decoder failed: {first_line(err)}") from None
    return program.model


class OnnxDecoder:
    """A :class:`dyt_deploy.generation.Decoder` on an ONNX decoder graph in a runner: it keeps the
    ``present`` outputs and feeds them back as ``past_key_values``."""

    def __init__(self, runner: Any, config: dict[str, Any], dtype: str) -> None:
        self.runner = runner
        self.vocab_size = int(config["vocab_size"])
        self.max_length = int(config["max_seq_len"])
        self.layers = int(config["depth"])
        self.heads, self.head_dim = int(config["heads"]), int(config["dim"]) // int(config["heads"])
        self.np_dtype = np.float16 if dtype == "fp16" else np.float32
        self.past: list[np.ndarray] | None = None

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor) -> torch.Tensor:
        batch = input_ids.shape[0]
        if self.past is None:
            self.past = [np.zeros((batch, self.heads, 0, self.head_dim), self.np_dtype)] * (2 * self.layers)
        feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy(),
                "position_ids": position_ids.numpy()}
        feed.update(zip(input_names(self.layers)[3:], self.past, strict=True))
        out = self.runner.infer(feed)
        self.past = [out[name] for name in output_names(self.layers)[1:]]
        return torch.from_numpy(np.asarray(out["logits"][:, -1], dtype=np.float32))


@dataclass
class DecodingCheck:
    """Greedy decoding in the ONNX model vs PyTorch: equal tokens, the worst logit difference per step."""

    steps: int
    tokens_equal: bool
    first_difference: int | None  # the first step whose tokens differ
    max_abs_diff: float
    max_abs_diff_per_step: list[float]
    atol: float
    rtol: float

    @property
    def passed(self) -> bool:
        return self.tokens_equal and self.within_tolerance

    @property
    def within_tolerance(self) -> bool:
        return self.max_abs_diff <= self.atol + self.rtol * self._scale

    _scale: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "tokens_equal": self.tokens_equal, "first_difference": self.first_difference,
                "max_abs_diff": self.max_abs_diff, "max_abs_diff_per_step": self.max_abs_diff_per_step,
                "atol": self.atol, "rtol": self.rtol, "passed": self.passed}


def check_decoding(onnx_path: Path, reference: nn.Module, dtype: str, atol: float | None = None,
                   rtol: float | None = None, steps: int = VERIFY_TOKENS, kind: str = "ort") -> DecodingCheck:
    """Decode ``steps`` tokens greedily from ``VERIFY_PROMPTS`` in the ONNX model (runner ``kind``)
    and in ``reference`` (fp32); the logits of step i agree when ``|onnx - torch| <= atol + rtol * max|torch|``."""
    from ..generation import GenerationSettings, Generator
    from ..runners import create_runner

    settings = GenerationSettings(max_new_tokens=steps)
    prompts = [list(p) for p in VERIFY_PROMPTS]
    expected = Generator(reference).generate(prompts, settings, keep_logits=True)
    with create_runner(kind, onnx_path) as runner:
        got = Generator(lambda: OnnxDecoder(runner, reference.config, dtype)).generate(prompts, settings,
                                                                                       keep_logits=True)
    atol, rtol = default_tolerances(dtype, atol, rtol)
    diffs = [float((a - b).abs().max()) for a, b in zip(got.step_logits, expected.step_logits, strict=False)]
    scale = max(float(t.abs().max()) for t in expected.step_logits)
    firsts = [i for i, (a, b) in enumerate(zip(_columns(got.tokens), _columns(expected.tokens), strict=False))
              if a != b]
    equal = got.tokens == expected.tokens
    check = DecodingCheck(steps, equal, None if equal else (firsts[0] if firsts else min(map(len, got.tokens))),
                          max(diffs), [round(d, 7) for d in diffs], atol, rtol)
    check._scale = scale
    return check


def _columns(rows: list[list[int]]) -> list[tuple[int, ...]]:
    return list(zip(*rows, strict=False))


def genai_config(model: nn.Module, dtype: str, filename: str = "model.onnx") -> dict[str, Any]:
    """The ``genai_config.json`` onnxruntime-genai reads for this graph (decoder-only, type ``llama``:
    its IO names, head counts and sizes; greedy search by default; cache buffers not shared, as the
    graph concatenates past and new keys itself). Its end-of-text id is the last of the vocabulary
    (pass it as a stop token to ``dyt_deploy.generate`` for the same stopping rule)."""
    config = model.config
    vocab, heads = int(config["vocab_size"]), int(config["heads"])
    return {
        "model": {
            "type": GENAI_TYPE,
            "bos_token_id": 0,
            "eos_token_id": vocab - 1,  # the zoo has no end-of-text token; genai needs one in range: the last id
            "pad_token_id": 0,
            "context_length": int(config["max_seq_len"]),
            "vocab_size": vocab,
            "decoder": {
                "session_options": {"log_id": "dyt-deploy", "provider_options": []},
                "filename": filename,
                "head_size": int(config["dim"]) // heads,
                "hidden_size": int(config["dim"]),
                "num_attention_heads": heads,
                "num_key_value_heads": heads,
                "num_hidden_layers": int(config["depth"]),
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids", "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "max_length": int(config["max_seq_len"]), "min_length": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": False, "temperature": 1.0,
                   "top_k": 1, "top_p": 1.0, "repetition_penalty": 1.0, "early_stopping": True,
                   "length_penalty": 1.0, "no_repeat_ngram_size": 0, "diversity_penalty": 0.0},
    }


def default_folder(model_path: Path) -> Path:
    """Beside the model: ``model.pt`` -> ``model-text-generation/``."""
    return model_path.with_name(f"{model_path.stem}-text-generation")


def export_decoder(model_path: str | Path, output: str | Path | None, config: ExportConfig,
                   progress: Any = None) -> Any:
    """Export a zoo decoder for incremental decoding into the folder ``output`` (default: beside the
    model, ``<stem>-text-generation/``), verified by greedy decoding first; nothing is written on failure.

    ``config``'s form, dtype, fold, opset, atol/rtol, verify and force apply; ``repository``/``name``
    write the folder ``repository/name`` instead (default name ``<arch>-<norm>-textgen``).
    """
    from .api import ExportResult, VerificationFailed, _Steps, save_onnx
    from .fold import fold_dyt_affine
    from .forms import to_form

    started, steps = time.perf_counter(), _Steps(progress)
    with steps("load model.pt"):
        loaded = load_checkpoint(model_path, arch=config.arch, trust_pickle=config.trust_pickle,
                                 weights=config.weights)
    check_decoder(loaded.model, model_path)
    folder = _folder(Path(model_path), output, config, loaded)
    refuse_existing(folder, config.force)
    with steps(f"export the cached decoder to ONNX (opset {config.opset}, {config.dtype})"):
        onnx_model = decoder_to_onnx(loaded.model, config.dtype, config.opset)
    fold_report = fold_dyt_affine(onnx_model) if config.fold else None
    with steps(f"rewrite DyT into the {config.form} form"):
        counts = dict(to_form(onnx_model, config.form))
    result = ExportResult(folder / "model.onnx", folder, config.form, counts, fold_report, None,
                          weights=loaded.weights)
    with staged_folder(folder, config.force) as stage:
        save_onnx(onnx_model, stage / "model.onnx")
        check = None
        if config.verify and config.form != "plugin":
            with steps(f"greedy-decode {VERIFY_TOKENS} tokens in onnxruntime and PyTorch"):
                check = check_decoding(stage / "model.onnx", loaded.model, config.dtype, config.atol, config.rtol)
            result.decoding = check.to_dict()
            if not check.passed:
                raise VerificationFailed(f"{model_path}: greedy decoding in ONNX differs from PyTorch "
                                         f"({_why(check)})", result)
        (stage / GENAI_CONFIG).write_text(json.dumps(genai_config(loaded.model, config.dtype), indent=2) + "\n")
        result.seconds = time.perf_counter() - started
        result.manifest = _manifest(loaded, onnx_model, result, config, stage)
        write_manifest(stage, result.manifest)
    return result


def _folder(model_path: Path, output: str | Path | None, config: ExportConfig, loaded: Any) -> Path:
    if config.repository is not None:
        return config.repository / (config.name or f"{loaded.arch or model_path.stem}-{loaded.norm}-textgen")
    return Path(output) if output else default_folder(model_path)


def _why(check: DecodingCheck) -> str:
    if not check.tokens_equal:
        return f"tokens differ from step {check.first_difference}"
    return f"logits differ by up to {check.max_abs_diff:.3g} (atol {check.atol}, rtol {check.rtol})"


def _manifest(loaded: Any, onnx_model: ir.Model, result: Any, config: ExportConfig, stage: Path) -> dict[str, Any]:
    from ..repository import MANIFEST_FORMAT, MANIFEST_VERSION

    inputs, outputs = sig.graph_signature(onnx_model)
    source = Path(loaded.path).resolve() if loaded.path else None
    return {
        "format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "task": "text-generation",
        "name": result.model_dir.name, "family": config.family or loaded.arch, "arch": loaded.arch,
        "config": loaded.config, "norm": loaded.norm, "form": result.form, "dyt_sites": result.form_counts,
        "folded": None if result.fold is None else vars(result.fold), "opset": config.opset, "dtype": config.dtype,
        "inputs": inputs, "outputs": outputs,
        "source": {"path": str(source) if source else None, "format": loaded.source_format,
                   "sha256": sha256_file(source) if source and source.is_file() else None},
        "decoding": result.decoding, "versions": library_versions(),
        "export_seconds": round(result.seconds, 3),
        "artifacts": {p.name: sha256_file(p) for p in sorted(stage.iterdir()) if p.is_file()},
    }

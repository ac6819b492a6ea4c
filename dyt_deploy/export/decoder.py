"""``--task text-generation``: a decoder as ONNX with past key/values, verified by greedy decoding.

Decoders: the zoo's llama models (their ``forward_cached``) and Hugging Face causal LMs
(DyT-converted LLaMA/Qwen2 folders, on transformers' own cache, grouped key/value heads included).

The graph (the names onnxruntime-genai and Hugging Face Optimum use):

- inputs ``input_ids`` (batch, seq) int64, ``attention_mask`` (batch, past + seq) int64 (1: a real
  token), ``position_ids`` (batch, seq) int64, ``past_key_values.N.key`` / ``.value`` (batch, heads,
  past, head_dim) per layer N;
- outputs ``logits`` (batch, seq, vocab), ``present.N.key`` / ``.value`` (batch, heads, past + seq, head_dim).

Batch, sequence and past length are dynamic (past 0 is the prefill); the graph names them ``batch``,
``sequence``, ``past_sequence`` and ``total_sequence`` (past + new: the mask and the presents). The
model is checked by decoding ``VERIFY_TOKENS`` tokens greedily in onnxruntime and in PyTorch (fp32):
the tokens must be equal and the logits within tolerance at every step.

What is written: with ``-o FOLDER``, ``FOLDER/model.onnx``, ``genai_config.json`` for onnxruntime-genai
and ``dyt.json`` (the manifest, with the decoding check and the decoder's sizes). With ``--repository
R --name N``, Triton's layout, which dyt-serve serves as a generative model: ``R/N/config.pbtxt``
(platform onnxruntime_onnx, the graph's inputs and outputs), ``R/N/dyt.json`` and ``R/N/1/`` with
``model.onnx`` and ``genai_config.json`` (onnxruntime-genai opens ``R/N/1``). Either way the source
folder's tokenizer files (``tokenizer.json`` and its companions) are copied beside ``genai_config.json``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from torch import nn

from ..checkpoint import load_checkpoint, source_label
from ..dtypes import torch_dtype
from ..errors import DytDeployError, first_line
from ..parity import default_tolerances
from ..repository import (
    MANIFEST_NAME,
    config_pbtxt,
    library_versions,
    refuse_existing,
    sha256_file,
    staged_folder,
    write_manifest,
)
from ..tokenizer import TOKENIZER_FILE
from . import signature as sig
from .config import ExportConfig
from .steps import ExportError, ExportResult, Steps, VerificationFailed, guess_norm, prepare_for_dtype, save_onnx

VERIFY_TOKENS = 32
VERIFY_PROMPTS = ((5, 17, 42, 7, 99, 3, 11), (8, 1, 64))  # two prompts of different lengths: padding is checked too
GENAI_CONFIG = "genai_config.json"
# a Hugging Face folder's tokenizer files, copied beside genai_config.json (onnxruntime-genai's Tokenizer reads them)
TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json")
VERSION = "1"  # the version folder of the repository layout
# the graph's dynamic dims, by their role
BATCH, SEQUENCE, PAST, TOTAL = "batch", "sequence", "past_sequence", "total_sequence"
_EXPORT_SIZES = {"batch": 2, "seq": 3, "past": 4}


@dataclass(frozen=True)
class DecoderSpec:
    """What the graph's shapes and onnxruntime-genai's config need to know of a decoder."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    vocab_size: int
    max_length: int
    model_type: str = "llama"  # onnxruntime-genai's type (see ``GENAI_TYPES``)
    bos_token_id: int = 0
    eos_token_id: int | None = None  # None: the last id of the vocabulary


GENAI_TYPES = ("llama", "qwen2", "mistral", "gemma", "granite", "olmo", "nemotron")  # decoder-only types it knows


def _causal_lm(model: nn.Module) -> nn.Module | None:
    """The transformers causal LM inside ``model`` (as ``dyt_deploy.hf`` wraps it), else None."""
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) and type(inner).__name__.endswith("ForCausalLM") else None


def decoder_spec(model: nn.Module, source: Any = "the model") -> DecoderSpec:
    """The :class:`DecoderSpec` of a zoo decoder or a Hugging Face causal LM; anything else is refused."""
    if hasattr(model, "forward_cached") and hasattr(model, "empty_cache"):
        c = model.config
        return DecoderSpec(int(c["depth"]), int(c["heads"]), int(c["heads"]), int(c["dim"]) // int(c["heads"]),
                           int(c["dim"]), int(c["vocab_size"]), int(c["max_seq_len"]))
    lm = _causal_lm(model)
    if lm is None:
        raise DytDeployError(f"{source}: --task text-generation takes the zoo's llama decoders (llama_tiny, "
                             f"llama_small) and Hugging Face causal LM folders; {type(model).__name__} is neither; "
                             "export it without --task")
    c = lm.config
    heads = int(c.num_attention_heads)
    head_dim = int(getattr(c, "head_dim", None) or c.hidden_size // heads)
    eos = c.eos_token_id[0] if isinstance(c.eos_token_id, list) else c.eos_token_id
    return DecoderSpec(int(c.num_hidden_layers), heads, int(getattr(c, "num_key_value_heads", None) or heads),
                       head_dim, int(c.hidden_size), int(c.vocab_size), int(c.max_position_embeddings),
                       c.model_type if c.model_type in GENAI_TYPES else "llama", int(c.bos_token_id or 0), eos)


def check_decoder(model: nn.Module, source: Any) -> None:
    """Refuse a model without a key/value cache path (see :func:`decoder_spec`)."""
    decoder_spec(model, source)


class DecoderGraph(nn.Module):
    """A decoder's cached forward with flat inputs and outputs, as the ONNX graph has them: the zoo's
    ``forward_cached``, or a causal LM on a transformers ``DynamicCache`` built from the past tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.lm = _causal_lm(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        if self.lm is None:
            logits, present = self.model.forward_cached(input_ids, pairs, attention_mask, position_ids)
            return (logits, *[t for pair in present for t in pair])
        return self._hf_forward(input_ids, attention_mask, position_ids, pairs)

    def _hf_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                    pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        import inspect

        from transformers import DynamicCache

        cache = DynamicCache(config=self.lm.config)
        for index, (key, value) in enumerate(pairs):
            cache.update(key, value, index)
        cache_key = "cache" if "cache" in inspect.signature(self.lm.forward).parameters else "past_key_values"
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=True, return_dict=True, **{cache_key: cache})
        present = out[cache_key]
        return (out["logits"], *[t for layer in present.layers for t in (layer.keys, layer.values)])


def input_names(layers: int) -> list[str]:
    pasts = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *pasts]


def output_names(layers: int) -> list[str]:
    return ["logits", *[f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]]


def example_inputs(spec: DecoderSpec, dtype: str, sizes: dict[str, int] = _EXPORT_SIZES) -> tuple[torch.Tensor, ...]:
    """Seeded inputs of the graph at ``sizes`` (batch, seq, past); past in the export dtype."""
    batch, seq, past = sizes["batch"], sizes["seq"], sizes["past"]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, spec.vocab_size, (batch, seq), generator=generator)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    positions = torch.arange(past, past + seq).expand(batch, seq).contiguous()
    shape = (batch, spec.kv_heads, past, spec.head_dim)
    cache = [torch.randn(shape, generator=generator).to(torch_dtype(dtype)) for _ in range(2 * spec.layers)]
    return (ids, mask, positions, *cache)


def decoder_to_onnx(model: nn.Module, dtype: str, opset: int) -> ir.Model:
    """``model`` (a zoo decoder) as the cached decoder graph, in memory, pattern form."""

    spec = decoder_spec(model)
    layers = spec.layers
    graph = DecoderGraph(prepare_for_dtype(model, dtype)).eval()
    args = example_inputs(spec, dtype)
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
    name_dynamic_dims(program.model)
    return program.model


def name_dynamic_dims(model: ir.Model) -> None:
    """Give the graph's dynamic dims their roles' names (``batch``, ``sequence``, ``past_sequence``,
    ``total_sequence``) in place of torch.export's ``s43``-style symbols, on every value that has them:
    what tools show (a Triton config, a server's metadata) reads as the decoder's interface, and a
    key and a value of the same past share one name."""
    graph = model.graph
    by_name = {v.name: v for v in graph.inputs}
    names: dict[str, str] = {}
    for value, dims in ((by_name["input_ids"], (BATCH, SEQUENCE)), (by_name["attention_mask"], (BATCH, TOTAL))):
        names.update({str(d.value): role for d, role in zip(value.shape, dims, strict=True)
                      if isinstance(d, ir.SymbolicDim)})
    for value in graph.inputs[3:]:
        if isinstance(value.shape[2], ir.SymbolicDim):
            names[str(value.shape[2].value)] = PAST
    symbol = re.compile(r"\b[a-z]\d+\b")
    totals = {f"{PAST} + {SEQUENCE}", f"{SEQUENCE} + {PAST}"}

    def renamed(dim: Any) -> Any:
        if not isinstance(dim, ir.SymbolicDim) or dim.value is None:
            return dim
        text = symbol.sub(lambda m: names.get(m.group(), m.group()), str(dim.value))
        return TOTAL if text in totals else text

    nodes = ir.traversal.RecursiveGraphIterator(graph)
    values = [*graph.inputs, *graph.outputs, *(output for node in nodes for output in node.outputs)]
    for value in values:
        if value.shape is not None:
            value.shape = ir.Shape([renamed(d) for d in value.shape])


class OnnxDecoder:
    """A :class:`dyt_deploy.generation.Decoder` on an ONNX decoder graph in a runner: it keeps the
    ``present`` outputs and feeds them back as ``past_key_values``."""

    def __init__(self, runner: Any, spec: DecoderSpec, dtype: str) -> None:
        self.runner = runner
        self.vocab_size, self.max_length = spec.vocab_size, spec.max_length
        self.layers, self.heads, self.head_dim = spec.layers, spec.kv_heads, spec.head_dim
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
    spec = decoder_spec(reference)
    prompts = [[t % spec.vocab_size for t in p] for p in VERIFY_PROMPTS]
    expected = Generator(reference).generate(prompts, settings, keep_logits=True)
    with create_runner(kind, onnx_path) as runner:
        got = Generator(lambda: OnnxDecoder(runner, spec, dtype)).generate(prompts, settings, keep_logits=True)
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
    """The ``genai_config.json`` onnxruntime-genai reads for this graph (decoder-only: its IO names,
    head counts and sizes; ``type`` the model's where onnxruntime-genai knows it, else ``llama``;
    greedy search by default; cache buffers not shared, as the graph concatenates past and new keys
    itself). The end-of-text id is the model's, or for the zoo (which has none) the last id of the
    vocabulary (pass it as a stop token to ``dyt_deploy.generate`` for the same stopping rule)."""
    spec = decoder_spec(model)
    return {
        "model": {
            "type": spec.model_type,
            "bos_token_id": spec.bos_token_id,
            "eos_token_id": spec.vocab_size - 1 if spec.eos_token_id is None else spec.eos_token_id,
            "pad_token_id": 0,
            "context_length": spec.max_length,
            "vocab_size": spec.vocab_size,
            "decoder": {
                "session_options": {"log_id": "dyt-deploy", "provider_options": []},
                "filename": filename,
                "head_size": spec.head_dim,
                "hidden_size": spec.hidden,
                "num_attention_heads": spec.heads,
                "num_key_value_heads": spec.kv_heads,
                "num_hidden_layers": spec.layers,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids", "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "max_length": spec.max_length, "min_length": 0, "num_beams": 1,
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
    write the model folder ``repository/name`` in Triton's layout instead (default name
    ``<arch>-<norm>-textgen``; see the module docstring).
    """
    from .fold import fold_dyt_affine
    from .forms import site_counts, to_form

    started, steps = time.perf_counter(), Steps(progress)
    with steps(f"load {source_label(model_path)}"):
        loaded = load_checkpoint(model_path, arch=config.arch, trust_pickle=config.trust_pickle,
                                 weights=config.weights)
    check_decoder(loaded.model, model_path)
    folder = _folder(Path(model_path), output, config, loaded)
    refuse_existing(folder, config.force)
    with steps(f"export the cached decoder to ONNX (opset {config.opset}, {config.dtype})"):
        onnx_model = decoder_to_onnx(loaded.model, config.dtype, config.opset)
    fold_report = fold_dyt_affine(onnx_model) if config.fold else None
    with steps(f"rewrite DyT into the {config.form} form"):
        counts = site_counts(onnx_model, config.form, to_form(onnx_model, config.form))
    files = Path(VERSION) if config.repository is not None else Path()  # where model.onnx goes in the folder
    result = ExportResult(folder / files / "model.onnx", folder, config.form, counts, fold_report, None,
                          weights=loaded.weights)
    with staged_folder(folder, config.force) as stage:
        save_onnx(onnx_model, stage / files / "model.onnx")
        check = None
        if config.verify and config.form != "plugin":
            with steps(f"greedy-decode {VERIFY_TOKENS} tokens in onnxruntime and PyTorch"):
                check = check_decoding(stage / files / "model.onnx", loaded.model, config.dtype, config.atol,
                                       config.rtol)
            result.decoding = check.to_dict()
            if not check.passed:
                raise VerificationFailed(f"{model_path}: greedy decoding in ONNX differs from PyTorch "
                                         f"({_why(check)})", result)
        (stage / files / GENAI_CONFIG).write_text(json.dumps(genai_config(loaded.model, config.dtype), indent=2)
                                                  + "\n")
        tokenizer = copy_tokenizer(loaded.path, stage / files)
        if config.repository is not None:
            inputs, outputs = sig.graph_signature(onnx_model)
            (stage / "config.pbtxt").write_text(config_pbtxt(folder.name, inputs, outputs))
        result.seconds = time.perf_counter() - started
        result.manifest = _manifest(loaded, onnx_model, result, config, stage)
        result.manifest["tokenizer"] = (files / tokenizer).as_posix() if tokenizer else None
        write_manifest(stage, result.manifest)
    return result


def copy_tokenizer(source: Path | None, folder: Path) -> str | None:
    """Copy the tokenizer files of a Hugging Face ``source`` folder into ``folder``; the name of its
    ``tokenizer.json`` there (None: the source has none, as the zoo's model.pt files; generation
    then uses the byte-level tokenizer)."""
    if source is None or not Path(source).is_dir() or not (Path(source) / TOKENIZER_FILE).is_file():
        return None
    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            shutil.copyfile(Path(source) / name, folder / name)
    return TOKENIZER_FILE


def _folder(model_path: Path, output: str | Path | None, config: ExportConfig, loaded: Any) -> Path:
    if config.repository is not None:
        return config.repository / (config.name or f"{loaded.arch or model_path.stem}-{loaded.norm}-textgen")
    return Path(output) if output else default_folder(model_path)


def _why(check: DecodingCheck) -> str:
    if not check.tokens_equal:
        return f"tokens differ from step {check.first_difference}"
    return f"logits differ by up to {check.max_abs_diff:.3g} (atol {check.atol}, rtol {check.rtol})"


def _manifest(loaded: Any, onnx_model: ir.Model, result: Any, config: ExportConfig, stage: Path) -> dict[str, Any]:
    """dyt.json: the default export's fields, ``task`` text-generation, ``decoder`` (the
    :class:`DecoderSpec`: layers, heads, sizes, end-of-text id; what a server needs to run the graph)
    and the decoding check; artifacts by their path in the folder."""
    from ..repository import MANIFEST_FORMAT, MANIFEST_VERSION

    inputs, outputs = sig.graph_signature(onnx_model)
    source = Path(loaded.path).resolve() if loaded.path else None
    files = sorted(p for p in stage.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    return {
        "format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "task": "text-generation",
        "name": result.model_dir.name, "family": config.family or loaded.arch or (source.name if source else "model"),
        "arch": loaded.arch, "config": loaded.config, "norm": loaded.norm or guess_norm(loaded.model),
        "form": result.form, "dyt_sites": result.form_counts,
        "folded": None if result.fold is None else vars(result.fold), "opset": config.opset, "dtype": config.dtype,
        "inputs": inputs, "outputs": outputs, "decoder": asdict(decoder_spec(loaded.model)),
        "source": {"path": str(source) if source else None, "format": loaded.source_format,
                   "sha256": sha256_file(source) if source and source.is_file() else None},
        "decoding": result.decoding, "versions": library_versions(),
        "export_seconds": round(result.seconds, 3),
        "artifacts": {p.relative_to(stage).as_posix(): sha256_file(p) for p in files},
    }

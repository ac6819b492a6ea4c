"""``BenchConfig``: every setting of a latency comparison in one validated object.

``dyt-bench``, ``run_benchmark(...)`` (its keywords are a thin wrapper) and the report's
``settings`` section all read it; its checks live here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import WEIGHTS
from ..errors import OptionError, choice_problem
from .variants import OPTIMIZERS, VARIANTS

INT8_PRECISIONS = ("fp32", "int8")  # bench.int8.PRECISIONS

# runners of the ONNX files (one group per optimizer for ort/ort-cuda) and of the modules themselves
ONNX_BENCH_RUNNERS = ("ort", "openvino", "ort-cuda")
TORCH_BENCH_RUNNERS = ("torch", "torch-compile", "torch-triton", "torch-optimize", "aoti")
BENCH_RUNNERS = ONNX_BENCH_RUNNERS + TORCH_BENCH_RUNNERS
CPU_ONLY_RUNNERS = ("ort", "openvino")
CUDA_ONLY_RUNNERS = ("ort-cuda",)
DEFAULT_RUNNERS = {"cpu": ("ort", "openvino"), "cuda": ("torch", "torch-compile", "torch-triton")}
BENCH_DTYPES = ("fp32", "fp16", "bf16")
DEFAULT_VARIANTS = ("layernorm", "rmsnorm", "dyt", "dyt-folded")
# task text-generation (``bench.generate``): its own runners, the LLaMA norms, prompt lengths as seqs
TASKS = ("default", "text-generation")
GENERATION_RUNNERS = ("torch", "ort", "ort-genai")
GENERATION_DEFAULTS = {"arch": "llama_small", "variants": ("rmsnorm", "dyt"), "baseline": "rmsnorm",
                       "seqs": (16, 64, 256), "runners": {"cpu": ("torch", "ort", "ort-genai"), "cuda": ("torch",)}}


@dataclass(frozen=True)
class BenchConfig:
    """How to benchmark the norm variants of one model: a zoo architecture, or the user's own model.

    Attributes:
        arch: zoo architecture (used when ``model`` is None).
        model: the user's model: anything dyt-export reads (a model.pt of any supported format, an
            official training checkpoint, a Hugging Face folder, a safetensors state dict with
            ``model_arch``). Its own norm kind is the model itself; the other variants are twins
            made by converting its norm layers (see ``bench.variants``).
        model_arch, weights, trust_pickle, input_shapes: as dyt-export's ``--arch``, ``--weights``,
            ``--trust-pickle`` and ``--input-shape`` for ``model``.
        variants: layernorm, rmsnorm, dyt, dyt-folded, derf; ``baseline`` must be one of them.
        runners: of the exported ONNX: "ort" (one group per ONNX optimizer), "openvino" (CPU),
            "ort-cuda" (onnxruntime-gpu); of the modules: "torch", "torch-compile", "torch-triton"
            (eager with the Triton DyT kernels), "torch-optimize" (``dyt_deploy.optimize``: folded,
            kernels, compiled; the best PyTorch path of each variant), "aoti" (an AOTInductor package
            of each variant, compiled into ``workdir`` per dtype: slow to build, as a deployment runs
            it). Empty: the device's defaults (CPU: ort, openvino; CUDA: torch, torch-compile,
            torch-triton).
        device: "cpu", "cuda" or "cuda:N": where the torch runners run (on CUDA timed with CUDA events).
        dtypes: precisions of the torch runners, one group each (fp32, fp16, bf16); ONNX is fp32.
        batches, seqs: shapes to time (seqs only for token models).
        threads: intra-op threads for torch and onnxruntime (0: their defaults).
        warmup: untimed calls per variant and shape; iters: interleaved timed rounds.
        optimizers: ONNX optimizers for the "ort" runner.
        baseline: the variant ratios are relative to.
        layer, profile: add the norm-layer bandwidth table and onnxruntime's per-op profile.
        layer_tokens: token counts of the norm-layer table (widths: the model's and 1024).
        workdir: where model.pt and ONNX files go (None: a temporary folder, removed after).
        overrides: architecture config overrides (``depth=2``).
        task: "default" (one forward pass per call, as above) or "text-generation" (a zoo llama
            decoder: prefill/time to first token at prompt lengths ``seqs``, decode tokens/s at
            ``batches``; runners torch, ort, ort-genai; see ``bench.generate``). Fields left at their
            defaults take the task's: llama_small, variants rmsnorm and dyt, prompts 16, 64 and 256,
            baseline rmsnorm (where layernorm is not among the variants).
        decode_tokens: text-generation: decode steps per timed call (each step is one sample).
        data: a .npz of samples (``dyt-check --data``'s format): every timed runner also runs them, and
            the report gets accuracy (or perplexity) per variant x runtime x precision (``bench.accuracy``).
        precisions: of the ONNX runners (ort, openvino): "fp32" (default) and/or "int8": each variant's
            INT8 models, without calibration data and with it, in groups of their own (``bench.int8``),
            and the report's ``int8`` section (INT8 / fp32 per norm, DyT INT8 vs LayerNorm INT8).
    """

    arch: str = "vit_small"
    model: Path | None = None
    model_arch: str | None = None
    weights: str | None = None
    trust_pickle: bool = False
    input_shapes: tuple[str, ...] = ()
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    runners: tuple[str, ...] = ()
    device: str = "cpu"
    dtypes: tuple[str, ...] = ("fp32",)
    batches: tuple[int, ...] = (1, 8)
    seqs: tuple[int, ...] = (128,)
    threads: int = 0
    warmup: int = 10
    iters: int = 50
    optimizers: tuple[str, ...] = ("none", "ort-transformers")
    baseline: str = "layernorm"
    layer: bool = True
    layer_tokens: tuple[int, ...] = (256, 1024, 4096)
    profile: bool = True
    workdir: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    task: str = "default"
    decode_tokens: int = 32
    data: Path | None = None
    precisions: tuple[str, ...] = ("fp32",)

    def __post_init__(self) -> None:
        if self.task == "text-generation":
            self._generation_defaults()
        for name in ("model", "data"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        for name in ("variants", "runners", "batches", "seqs", "optimizers", "layer_tokens", "input_shapes",
                     "dtypes", "precisions"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.runners:
            object.__setattr__(self, "runners", DEFAULT_RUNNERS["cpu" if self.device == "cpu" else "cuda"])
        problems = self.problems()
        if problems:
            raise OptionError(problems)

    def _generation_defaults(self) -> None:
        """Fields still at the latency benchmark's defaults take text generation's."""
        for name in ("arch", "variants", "seqs"):
            if getattr(self, name) == type(self).__dataclass_fields__[name].default:
                object.__setattr__(self, name, GENERATION_DEFAULTS[name])
        if self.baseline == type(self).__dataclass_fields__["baseline"].default and self.baseline not in self.variants:
            object.__setattr__(self, "baseline", GENERATION_DEFAULTS["baseline"])
        if not self.runners:
            object.__setattr__(self, "runners", GENERATION_DEFAULTS["runners"]["cpu" if self.device == "cpu"
                                                                              else "cuda"])

    @classmethod
    def from_options(cls, **options: Any) -> BenchConfig:
        """A config from keyword options where None means "the default" (as the CLI and
        ``run_benchmark`` pass them)."""
        return cls(**{name: value for name, value in options.items() if value is not None})

    def problems(self) -> list[tuple[str, str]]:
        """Every invalid field as ``(field, what is wrong)``; all of them, not the first."""
        generation = self.task == "text-generation"
        found = [(name, message) for name, known, values in (
            ("variants", VARIANTS, self.variants),
            ("runners", GENERATION_RUNNERS if generation else BENCH_RUNNERS, self.runners),
            ("optimizers", OPTIMIZERS, self.optimizers), ("dtypes", BENCH_DTYPES, self.dtypes),
            ("precisions", INT8_PRECISIONS, self.precisions))
            if (message := _unknown(name, values, known))]
        found += choice_problem("task", self.task, TASKS)
        if self.decode_tokens < 1:
            found.append(("decode_tokens", f"decode_tokens must be at least 1, not {self.decode_tokens}"))
        found += self._generation_device_problems() if generation else self._device_problems()
        if self.model is not None and not self.model.exists():
            found.append(("model", f"{self.model}: no such file or folder"))
        if self.data is not None and (generation or not Path(self.data).is_file()):
            found.append(("data", "text generation measures no accuracy: drop --data" if generation
                          else f"{self.data}: no such file"))
        if self.weights is not None:
            found += choice_problem("weights", self.weights, WEIGHTS)
        if "int8" in self.precisions and (generation or not set(self.runners) & {"ort", "openvino"}):
            found.append(("precisions", "int8 is timed on the ort and openvino runners (task default)"))
        for name in ("variants", "runners", "batches", "optimizers", "precisions"):
            if not getattr(self, name):
                found.append((name, f"{name} must not be empty"))
        if self.variants and self.baseline not in self.variants:
            found.append(("baseline", f"baseline {self.baseline!r} is not among the variants "
                                      f"{', '.join(self.variants)}"))
        for name in ("batches", "seqs", "layer_tokens"):
            if any(v < 1 for v in getattr(self, name)):
                found.append((name, f"{name} must be positive, not {list(getattr(self, name))}"))
        for name, low in (("threads", 0), ("warmup", 0), ("iters", 1)):
            if getattr(self, name) < low:
                found.append((name, f"{name} must be at least {low}, not {getattr(self, name)}"))
        return found


    def _generation_device_problems(self) -> list[tuple[str, str]]:
        on_cuda = self.device == "cuda" or self.device.startswith("cuda:") and self.device[5:].isdigit()
        if self.device != "cpu" and not on_cuda:
            return [("device", f"device must be cpu, cuda or cuda:N, not {self.device!r}")]
        wrong = [r for r in self.runners if on_cuda and r != "torch"]
        return [("runners", f"{', '.join(wrong)} run on the CPU; on CUDA text generation times torch")] if wrong else []

    def _device_problems(self) -> list[tuple[str, str]]:
        on_cuda = self.device == "cuda" or self.device.startswith("cuda:") and self.device[5:].isdigit()
        if self.device != "cpu" and not on_cuda:
            return [("device", f"device must be cpu, cuda or cuda:N, not {self.device!r}")]
        wrong = [r for r in self.runners if r in (CUDA_ONLY_RUNNERS if self.device == "cpu" else CPU_ONLY_RUNNERS)]
        if wrong:
            return [("runners", f"{', '.join(wrong)} cannot run on {self.device}; on the CPU: "
                                f"{', '.join(r for r in BENCH_RUNNERS if r not in CUDA_ONLY_RUNNERS)}; on CUDA: "
                                f"{', '.join(r for r in BENCH_RUNNERS if r not in CPU_ONLY_RUNNERS)}")]
        return []


def _unknown(what: str, values: tuple[str, ...], known: Any) -> str | None:
    unknown = [v for v in values if v not in known]
    singular = what.removesuffix("s")
    return f"unknown {singular} {', '.join(map(repr, unknown))}; known: {', '.join(known)}" if unknown else None

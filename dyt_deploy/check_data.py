"""``dyt-check MODEL --data FILE.npz``: the runners on the user's data, against PyTorch fp32.

The file holds one array per model input, named after it, first dim = samples, and optionally
``labels`` (a classifier: one class per sample; a language model: the next token per position).
Per runner and precision it reports top-1 agreement with PyTorch fp32 (per position for language
models), accuracy when labels exist, the parity figures (max abs error, ...) and, for language
models, greedy token agreement over a few prompts and the held-out perplexity change.

The verdict keeps the parity tolerances and adds an agreement floor per precision
(:data:`AGREEMENT_THRESHOLDS`, each overridable).
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import DytDeployError
from .parity import ParityReport
from .specs import TensorSpec

AGREEMENT_THRESHOLDS = {"fp32": 1.0, "fp16": 0.995, "bf16": 0.995, "int8": 0.99}
LABELS = "labels"


@dataclass
class CheckData:
    """A validated data file: the model's inputs (cast to the specs' dtypes) and optional labels."""

    path: Path
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    samples: int

    def batches(self, size: int) -> list[dict[str, np.ndarray]]:
        return [{k: v[start:start + size] for k, v in self.inputs.items()} for start in range(0, self.samples, size)]


def load_check_data(path: str | Path, specs: list[TensorSpec]) -> CheckData:
    """Read ``path`` (.npz) for a model with inputs ``specs``; every problem found in one error."""
    path = Path(path)
    arrays = _read_npz(path)
    problems = [p for spec in specs for p in _input_problems(spec, arrays)]
    counts = {name: len(a) for name, a in arrays.items() if a.ndim >= 1 and (name == LABELS or
                                                                           name in {s.name for s in specs})}
    if len(set(counts.values())) > 1:
        problems.append("arrays hold different sample counts (first dims: "
                        + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")")
    labels = arrays.get(LABELS)
    if labels is not None and not np.issubdtype(labels.dtype, np.integer):
        problems.append(f"labels has dtype {labels.dtype}; class or token ids are integers")
    if not problems and not min(counts.values(), default=0):
        problems.append("no samples (first dim 0)")
    if problems:
        names = ", ".join(s.name for s in specs)
        raise DytDeployError(f"{path}: bad data file: {'; '.join(problems)} (expected one array per model input "
                             f"({names}), first dim = samples, and optional integer {LABELS})")
    inputs = {s.name: arrays[s.name].astype(s.dtype, copy=False) for s in specs}
    return CheckData(path, inputs, None if labels is None else labels.astype(np.int64), counts[specs[0].name])


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DytDeployError(f"{path}: no such file; --data takes a .npz of the model's inputs (+ labels)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise DytDeployError(f"{path}: a single .npy array, not a .npz archive of named arrays; "
                                     "save it with numpy.savez(path, INPUT_NAME=array, labels=...)")
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DytDeployError(f"{path}: not a readable .npz archive ({type(err).__name__}: {err}); "
                             "save one with numpy.savez") from None


def _input_problems(spec: TensorSpec, arrays: dict[str, np.ndarray]) -> list[str]:
    """What is wrong with the array for ``spec``: missing, wrong rank, fixed dims or dtype, ids out of range."""
    array = arrays.get(spec.name)
    if array is None:
        found = ", ".join(sorted(arrays)) or "nothing"
        return [f"no array {spec.name!r} (it holds {found})"]
    if array.ndim != len(spec.shape):
        return [f"{spec.name} has shape {array.shape}; the model takes {_shape_text(spec)}"]
    wrong = [axis for axis, dim in enumerate(spec.shape) if axis and isinstance(dim, int) and array.shape[axis] != dim]
    if wrong:
        return [f"{spec.name} has shape {array.shape}; the model takes {_shape_text(spec)}"]
    floating = np.issubdtype(np.dtype(spec.dtype), np.floating)
    if floating != np.issubdtype(array.dtype, np.floating) or not (floating or np.issubdtype(array.dtype, np.integer)):
        return [f"{spec.name} has dtype {array.dtype}; the model takes {spec.dtype}"]
    if not floating and array.size and spec.high > spec.low and (array.min() < spec.low or array.max() >= spec.high):
        return [f"{spec.name} holds values in [{array.min()}, {array.max()}]; the model takes [{spec.low}, "
                f"{spec.high - 1}]"]
    return []


def _shape_text(spec: TensorSpec) -> str:
    return "(" + ", ".join(str(d) for d in spec.shape) + ")"


# -- figures -----------------------------------------------------------------------------------------

@dataclass
class DataFigures:
    """What one runner at one precision did on the data, against PyTorch fp32 on the same data."""

    runner: str
    precision: str
    samples: int
    agreement: float  # top-1 agreement with PyTorch fp32 (per position for language models)
    threshold: float
    max_abs: float
    accuracy: float | None = None
    reference_accuracy: float | None = None
    perplexity: float | None = None
    reference_perplexity: float | None = None
    greedy_agreement: float | None = None
    prompts: int = 0
    new_tokens: int = 0
    parity_passed: bool = True

    @property
    def agreement_passed(self) -> bool:
        return self.agreement >= self.threshold

    @property
    def passed(self) -> bool:
        return self.parity_passed and self.agreement_passed

    @property
    def perplexity_change(self) -> float | None:
        if self.perplexity is None or self.reference_perplexity is None:
            return None
        return self.perplexity - self.reference_perplexity

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "agreement_passed": self.agreement_passed,
                "perplexity_change": self.perplexity_change}


@dataclass
class DataOutputs:
    """One side's first output over every sample (logits), and its greedy continuations if any."""

    logits: list[np.ndarray] = field(default_factory=list)
    continuations: np.ndarray | None = None

    def all(self) -> np.ndarray:
        return np.concatenate(self.logits)


def top1_agreement(reference: np.ndarray, got: np.ndarray) -> float:
    """Share of rows (over the last axis) whose argmax agrees."""
    return float(np.mean(reference.argmax(-1) == got.argmax(-1)))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(-1) == labels))


def perplexity(logits: np.ndarray, labels: np.ndarray) -> float:
    """exp of the mean cross-entropy of ``labels`` (token ids) under ``logits`` (..., vocab)."""
    flat = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    peak = flat.max(-1, keepdims=True)
    log_norm = np.log(np.exp(flat - peak).sum(-1)) + peak[:, 0]
    picked = flat[np.arange(len(flat)), labels.reshape(-1)]
    return float(math.exp(np.mean(log_norm - picked)))


def figures(runner: str, precision: str, data: CheckData, reference: DataOutputs, got: DataOutputs,
            parity: ParityReport, threshold: float) -> DataFigures:
    """The figures of one runner (``got``) against the reference, see :class:`DataFigures`."""
    ref_logits, logits = reference.all(), got.all()
    result = DataFigures(runner, precision, data.samples, top1_agreement(ref_logits, logits), threshold,
                         max((o.max_abs for o in parity.outputs.values()), default=0.0),
                         parity_passed=parity.passed)
    if data.labels is not None:
        result.accuracy, result.reference_accuracy = accuracy(logits, data.labels), accuracy(ref_logits, data.labels)
        if logits.ndim == 3:
            result.perplexity = perplexity(logits, data.labels)
            result.reference_perplexity = perplexity(ref_logits, data.labels)
    if got.continuations is not None and reference.continuations is not None:
        result.greedy_agreement = float(np.mean(got.continuations == reference.continuations))
        result.prompts, result.new_tokens = got.continuations.shape
    return result


def greedy_continuations(infer, prompts: np.ndarray, new_tokens: int) -> np.ndarray:
    """``new_tokens`` greedy tokens after each prompt (rows of ``prompts``), recomputing the whole
    sequence each step with ``infer(input_ids) -> logits`` (batch, seq, vocab)."""
    sequence = prompts
    for _ in range(new_tokens):
        logits = infer(sequence)
        sequence = np.concatenate([sequence, logits[:, -1].argmax(-1)[:, None].astype(sequence.dtype)], axis=1)
    return sequence[:, prompts.shape[1]:]

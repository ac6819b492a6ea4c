"""The INT8 verdict: an INT8 model against its fp32 reference, on seeded inputs and on held-out data.

INT8 cannot match fp32 to fp32's tolerances, so the verdict is stated in what quantization keeps:

- seeded inputs (as every export's verification): per output, the cosine similarity of the INT8
  outputs to the reference's is at least :data:`MIN_COSINE` and nothing is NaN/Inf where the
  reference is finite (the max/p99 errors are reported, not judged);
- held-out data (a reference twin's test set, or ``--data``): top-1 agreement with the reference
  at least :data:`MIN_AGREEMENT`, and test accuracy at most :data:`MAX_ACCURACY_DROP` below it.

The reference is the PyTorch fp32 module when the model came from a checkpoint, else the fp32 ONNX
model in onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..check_data import accuracy, load_check_data, top1_agreement
from ..feeds import random_feed
from ..parity import INT8_MIN_COSINE, ParityReport
from ..specs import TensorSpec

MIN_COSINE = INT8_MIN_COSINE
MIN_AGREEMENT = 0.99
MAX_ACCURACY_DROP = 0.01
DATA_BATCH = 64

Infer = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class Int8Verdict:
    """Seeded-input parity (figures) and, with data, agreement and accuracy against the reference."""

    runtime: str
    parity: ParityReport
    min_cosine: float
    data: str | None = None
    samples: int = 0
    agreement: float | None = None
    accuracy: float | None = None
    reference_accuracy: float | None = None
    min_agreement: float = MIN_AGREEMENT
    max_accuracy_drop: float = MAX_ACCURACY_DROP

    @property
    def cosine(self) -> float:
        return min((o.cosine for o in self.parity.outputs.values()), default=float("nan"))

    @property
    def problems(self) -> list[str]:
        """Every failed check, in words (empty: passed)."""
        found = [f"{o.name}: {o.problem}" for o in self.parity.outputs.values() if o.problem]
        if not self.parity.outputs:
            found.append("no outputs compared")
        elif not self.cosine >= self.min_cosine:
            found.append(f"cosine similarity {self.cosine:.4f} < {self.min_cosine}")
        if self.agreement is not None and self.agreement < self.min_agreement:
            found.append(f"top-1 agreement {self.agreement:.2%} < {self.min_agreement:.0%}")
        drop = self.accuracy_drop
        if drop is not None and drop > self.max_accuracy_drop:
            found.append(f"accuracy {self.accuracy:.2%} is {drop * 100:.2f} points below fp32's "
                         f"{self.reference_accuracy:.2%} (at most {self.max_accuracy_drop * 100:.1f})")
        return found

    @property
    def accuracy_drop(self) -> float | None:
        if self.accuracy is None or self.reference_accuracy is None:
            return None
        return self.reference_accuracy - self.accuracy

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        figures = {k: v for k, v in asdict(self).items() if k != "parity"}
        return {**figures, "passed": self.passed, "problems": self.problems, "cosine": self.cosine,
                "accuracy_drop": self.accuracy_drop, "parity": self.parity.to_dict()}


def seeded_parity(infer: Infer, reference: Infer, specs: list[TensorSpec], samples: int) -> ParityReport:
    """Both sides on ``samples`` seeded inputs (batch 1, 2, 3, ...; named dims at the export sizes);
    figures without an elementwise verdict (INT8 is judged by cosine, see :class:`Int8Verdict`)."""
    report = ParityReport(1e30, 0.0)  # no elementwise verdict: finite, so the manifest stays strict JSON
    for index in range(samples):
        feed = random_feed(specs, {"batch": index + 1, "seq": 16}, seed=index, default_dim=2)
        expected = reference(feed)
        got = infer(feed)
        report.add_sample(expected, {n: np.asarray(v, np.float32) for n, v in got.items()},
                          {k: v.shape for k, v in feed.items()})
    return report


def verdict(runtime: str, infer: Infer, reference: Infer, specs: list[TensorSpec], samples: int,
            data: Path | None, min_cosine: float = MIN_COSINE, min_agreement: float = MIN_AGREEMENT,
            max_accuracy_drop: float = MAX_ACCURACY_DROP) -> Int8Verdict:
    """The INT8 verdict of ``infer`` against ``reference`` (see the module docstring)."""
    result = Int8Verdict(runtime, seeded_parity(infer, reference, specs, samples), min_cosine,
                         min_agreement=min_agreement, max_accuracy_drop=max_accuracy_drop)
    if data is not None:
        checked = load_check_data(data, specs)
        got, expected = _logits(infer, checked), _logits(reference, checked)
        result.data, result.samples = str(data), checked.samples
        result.agreement = top1_agreement(expected, got)
        if checked.labels is not None and got.ndim == 2:
            result.accuracy, result.reference_accuracy = accuracy(got, checked.labels), accuracy(expected,
                                                                                                 checked.labels)
    return result


def _logits(infer: Infer, data) -> np.ndarray:
    return np.concatenate([np.asarray(next(iter(infer(feed).values())), np.float32)
                           for feed in data.batches(DATA_BATCH)])


def torch_reference(module, specs: list[TensorSpec], output_names: list[str]) -> Infer:
    """``feed -> outputs`` of a PyTorch module in fp32 (no grad), named as the ONNX outputs."""
    import torch

    from ..models.base import flatten_outputs

    def infer(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            outputs = flatten_outputs(module(*[torch.from_numpy(feed[s.name]) for s in specs]))
        return {name: t.float().numpy() for name, t in zip(output_names, outputs, strict=False)}

    return infer

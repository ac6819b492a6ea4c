"""Parity statistics and verdicts: how far a runtime's outputs are from the PyTorch reference.

A sample passes when every element satisfies ``|got - ref| <= atol + rtol * |ref|`` (numpy's
``allclose``) and nothing is NaN/Inf where the reference is finite. The other figures (relative
error, cosine similarity, top-1 agreement) describe the gap; they do not decide the verdict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

# (atol, rtol) by precision. fp16 has ~3 decimal digits; errors add up over a network's depth.
# bf16 keeps 8 significant bits to fp16's 11 (fp32's exponent range), so its rounding is 8x coarser.
DEFAULT_TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (2e-2, 2e-2), "bf16": (5e-2, 5e-2)}
# An INT8 model is judged by direction, not elementwise: each output's cosine similarity to the fp32
# reference at least this (quantization moves every element a little; its answers stay)
INT8_MIN_COSINE = 0.98
_REL_FLOOR = 1e-6  # denominators below this count as this, so zeros in the reference stay finite


def default_tolerances(dtype: str, atol: float | None = None, rtol: float | None = None) -> tuple[float, float]:
    """``(atol, rtol)`` for ``dtype`` ("fp32", "fp16", "bf16"), each replaced by the caller's value if given."""
    base_atol, base_rtol = DEFAULT_TOLERANCES[dtype]
    return (base_atol if atol is None else atol, base_rtol if rtol is None else rtol)


@dataclass
class OutputParity:
    """Worst-case figures for one output over every sample compared."""

    name: str
    shape: tuple[int, ...]  # of the first sample (the export shape)
    max_abs: float = 0.0
    mean_abs: float = 0.0
    p99_abs: float = 0.0
    max_rel: float = 0.0
    cosine: float = 1.0
    top1: float | None = None
    samples: int = 0
    passed: bool = True
    problem: str = ""

    def merge(self, other: OutputParity) -> None:
        """Fold another sample's figures into this one, keeping the worst of each."""
        n = self.samples
        self.max_abs = max(self.max_abs, other.max_abs)
        self.mean_abs = (self.mean_abs * n + other.mean_abs) / (n + 1)
        self.p99_abs = max(self.p99_abs, other.p99_abs)
        self.max_rel = max(self.max_rel, other.max_rel)
        self.cosine = min(self.cosine, other.cosine)
        if other.top1 is not None:
            self.top1 = other.top1 if self.top1 is None else (self.top1 * n + other.top1) / (n + 1)
        self.samples += 1
        self.passed = self.passed and other.passed
        self.problem = self.problem or other.problem


def compare_output(name: str, ref: np.ndarray, got: np.ndarray, atol: float, rtol: float,
                   min_cosine: float | None = None) -> OutputParity:
    """Figures and verdict for one output of one sample. ``top1`` is set for outputs of rank >= 2.
    The verdict is elementwise (``atol + rtol * |ref|``), or with ``min_cosine`` (INT8 models) the
    cosine similarity at least that."""
    ref = np.asarray(ref)
    got = np.asarray(got)
    if ref.shape != got.shape:
        return OutputParity(name, tuple(got.shape), float("inf"), float("inf"), float("inf"), float("inf"), -1.0,
                            None, 1, False, f"shape {got.shape} != reference {ref.shape}")
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    nonfinite = bool(np.any(~np.isfinite(got64) & np.isfinite(ref64)))
    diff = np.abs(got64 - ref64)
    diff = np.where(np.isfinite(diff), diff, np.inf)
    flat = diff.ravel()
    parity = OutputParity(
        name=name,
        shape=tuple(got.shape),
        max_abs=float(flat.max()) if flat.size else 0.0,
        mean_abs=float(flat.mean()) if flat.size else 0.0,
        p99_abs=float(np.percentile(flat, 99)) if flat.size else 0.0,
        max_rel=float((diff / np.maximum(np.abs(ref64), _REL_FLOOR)).max()) if flat.size else 0.0,
        cosine=_cosine(ref64, got64),
        top1=_top1(ref64, got64),
        samples=1,
    )
    close = parity.cosine >= min_cosine if min_cosine is not None else bool(np.all(diff <= atol + rtol * np.abs(ref64)))
    parity.passed = not nonfinite and close
    parity.problem = "NaN/Inf where the reference is finite" if nonfinite else ""
    return parity


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("nan")
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return 1.0 if norm == 0 else float(a @ b / norm)


def _top1(ref: np.ndarray, got: np.ndarray) -> float | None:
    """Share of rows (over the last axis) whose argmax agrees; None for rank < 2 outputs."""
    if ref.ndim < 2 or ref.shape[-1] < 2:
        return None
    return float(np.mean(ref.argmax(-1) == got.argmax(-1)))


@dataclass
class ParityReport:
    """Parity of one runtime against the reference over several samples and shapes."""

    atol: float
    rtol: float
    outputs: dict[str, OutputParity] = field(default_factory=dict)
    shapes: list[dict[str, list[int]]] = field(default_factory=list)
    min_cosine: float | None = None  # set: the verdict is by cosine (an INT8 model), not atol/rtol

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(o.passed for o in self.outputs.values())

    def add_sample(self, ref: dict[str, np.ndarray], got: dict[str, np.ndarray], feed_shapes: dict) -> None:
        """Compare every output of one sample (all of them, even after a failure)."""
        self.shapes.append({k: list(v) for k, v in feed_shapes.items()})
        for name, expected in ref.items():
            if name not in got:
                result = OutputParity(name, (), samples=1, passed=False, problem="output missing")
            else:
                result = compare_output(name, expected, got[name], self.atol, self.rtol, self.min_cosine)
            if name in self.outputs:
                self.outputs[name].merge(result)
            else:
                self.outputs[name] = result

    def to_dict(self) -> dict:
        return {"passed": self.passed, "atol": self.atol, "rtol": self.rtol, "min_cosine": self.min_cosine,
                "shapes": self.shapes,
                "outputs": {name: asdict(o) for name, o in self.outputs.items()}}

    def rows(self) -> list[list[str]]:
        """One row per output: name, shape, max abs, p99 abs, max rel, cosine, top-1, verdict."""
        rows = []
        for o in self.outputs.values():
            top1 = "-" if o.top1 is None else f"{o.top1:.1%}"
            verdict = "ok" if o.passed else f"FAIL {o.problem}".strip()
            rows.append([o.name, "x".join(map(str, o.shape)), f"{o.max_abs:.3g}", f"{o.p99_abs:.3g}",
                         f"{o.max_rel:.3g}", f"{o.cosine:.6f}", top1, verdict])
        return rows


PARITY_COLUMNS = ["output", "shape", "max abs", "p99 abs", "max rel", "cosine", "top-1", "verdict"]

"""``QuantizeOptions``: the INT8 choices of ``dyt quantize`` / ``dyt-export --precision int8``.

Where the model comes from and where it goes (architecture, weights, repository, backend, ...) is
the export's :class:`~dyt_deploy.export.config.ExportConfig`; these are the INT8 choices on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import OptionError, choice_problem
from .plan import ACTIVATIONS
from .verify import MAX_ACCURACY_DROP, MIN_AGREEMENT, MIN_COSINE


@dataclass(frozen=True)
class QuantizeOptions:
    """How to quantize.

    Attributes:
        activations: the inputs the DyT math does not bound (attention/MLP interiors, the residual
            stream, post-LayerNorm inputs): "dynamic" (default, no data: ranges measured per call),
            "static" (ranges from ``calibration``) or "float" (left in fp32).
        calibration: a .npz of model inputs (``dyt-check --data``'s format) for ``static``.
        fold: fold DyT gamma/beta into the next linear layers first (default), so their input is
            ``tanh(alpha*x)`` at scale 1/127; unfolded DyT inputs get ``max(|gamma|+|beta|)/127``.
        data: held-out samples (with ``labels``) for the agreement/accuracy verdict; None: a reference
            twin's own test set when the model is one, else seeded inputs only.
        min_cosine, min_agreement, max_accuracy_drop: the INT8 verdict (``quantize.verify``).
        samples: seeded verification inputs.
        verify: run the verdict before writing (nothing is written when it fails).
        reduce_range: 7-bit weights (default; onnxruntime's ``reduce_range``): correct on x86 CPUs
            without VNNI, whose u8 x s8 kernels saturate 16-bit sums of 8-bit products (see
            ``quantize.qdq``); False: full 8-bit weights, for CPUs with VNNI only.
    """

    activations: str = "dynamic"
    calibration: Path | None = None
    fold: bool = True
    data: Path | None = None
    min_cosine: float = MIN_COSINE
    min_agreement: float = MIN_AGREEMENT
    max_accuracy_drop: float = MAX_ACCURACY_DROP
    samples: int = 3
    verify: bool = True
    reduce_range: bool = True

    def __post_init__(self) -> None:
        for name in ("calibration", "data"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        problems = self.problems()
        if problems:
            raise OptionError(problems)

    def problems(self) -> list[tuple[str, str]]:
        found = choice_problem("activations", self.activations, ACTIVATIONS)
        if self.activations == "static" and self.calibration is None:
            found.append(("calibration", "--activations static takes its ranges from data: pass --calibration "
                                         "FILE.npz, or use --activations dynamic (no data)"))
        if self.calibration is not None and self.activations != "static":
            found.append(("calibration", f"--calibration is for --activations static, not {self.activations}"))
        for name in ("calibration", "data"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                found.append((name, f"{path}: no such file"))
        if not 0 <= self.min_cosine <= 1 or not 0 <= self.min_agreement <= 1:
            found.append(("min_cosine", "min_cosine and min_agreement are shares in [0, 1]"))
        if self.samples < 1:
            found.append(("samples", f"verification needs at least 1 sample, not {self.samples}"))
        return found

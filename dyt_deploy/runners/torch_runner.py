"""PyTorch runners: eager and ``torch.compile``."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..export.signature import flatten_outputs
from .base import MissingBackendError, Runner, RunnerError, Timer


class TorchRunner(Runner):
    """Runs an ``nn.Module`` on ``device``; inputs are passed positionally in ``input_names`` order.

    ``compile=True`` wraps the module in ``torch.compile`` (compiled on the first inference, which
    ``activate`` runs when given ``warmup_feed``).
    """

    def __init__(self, model: nn.Module, input_names: list[str], output_names: list[str], *,
                 compile: bool = False, device: str = "cpu", warmup_feed: dict[str, np.ndarray] | None = None) -> None:
        super().__init__()
        self.name = "torch-compile" if compile else "torch"
        self.model, self.input_names, self.output_names = model, input_names, output_names
        self.compile, self.device, self.warmup_feed = compile, device, warmup_feed
        self._callable: nn.Module | None = None

    def _activate(self) -> None:
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise MissingBackendError(f"{self.name}: no CUDA device; use device='cpu'")
        module = self.model.to(self.device).eval()
        self._callable = torch.compile(module) if self.compile else module
        if self.warmup_feed is not None:
            self._infer(self.warmup_feed)

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise RunnerError(f"{self.name}: feed lacks input(s) {', '.join(missing)}")
        args = [torch.from_numpy(np.ascontiguousarray(feed[n])).to(self.device) for n in self.input_names]
        with torch.inference_mode(), Timer() as timer:
            result = flatten_outputs(self._callable(*args))
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
        self.last_inference_time = timer.seconds
        return {name: t.detach().float().cpu().numpy() for name, t in zip(self.output_names, result, strict=False)}

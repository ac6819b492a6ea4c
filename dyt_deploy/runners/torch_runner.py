"""PyTorch runners: eager, ``torch.compile``, and eager with the Triton DyT kernels."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..models.base import flatten_outputs
from .base import MissingBackendError, Runner, RunnerError, Timer


class TorchRunner(Runner):
    """Runs an ``nn.Module`` on ``device``; inputs are passed positionally in ``input_names`` order.

    ``dtype`` ("fp32", "fp16", "bf16") casts the module's floating weights and float inputs; outputs
    come back as float32 numpy. ``last_inference_time`` is the module call alone: inputs are copied to
    the device before the clock starts (and kept there while the same feed comes back, as in a
    benchmark's rounds); on CUDA it is measured with CUDA events.

    ``optimize=MODE`` runs ``dyt_deploy.optimize(model, mode=MODE)`` on a copy (gamma/beta folded,
    the kernels where they run, compiled in that ``torch.compile`` mode; "eager" compiles nothing).
    ``compile=True`` wraps the module in ``torch.compile`` (compiled on the first inference, which
    ``activate`` runs when given ``warmup_feed``). ``kernels=True`` runs a copy of the module with
    every DynamicTanh swapped for the Triton kernel module (``dyt_deploy.kernels.use_kernels``);
    the kernels need a CUDA device, or ``TRITON_INTERPRET=1`` to be interpreted on the CPU.
    """

    def __init__(self, model: nn.Module, input_names: list[str], output_names: list[str], *,
                 compile: bool = False, device: str = "cpu", warmup_feed: dict[str, np.ndarray] | None = None,
                 kernels: bool = False, dtype: str = "fp32", optimize: str | None = None) -> None:
        from ..dtypes import torch_dtype

        super().__init__()
        if compile and kernels:
            raise ValueError("choose compile or kernels: torch.compile generates its own DyT kernels")
        if optimize is not None and (compile or kernels):
            raise ValueError("optimize compiles and picks the kernels itself: not with compile or kernels")
        self.name = ("torch-compile" if compile else "torch-triton" if kernels
                     else f"torch-optimize/{optimize}" if optimize else "torch")
        self.optimize = optimize
        self.model, self.input_names, self.output_names = model, input_names, output_names
        self.compile, self.kernels, self.device, self.warmup_feed = compile, kernels, device, warmup_feed
        self.dtype, self._torch_dtype = dtype, torch_dtype(dtype)
        self._callable: nn.Module | None = None
        self._feed: tuple[dict[str, np.ndarray], list[torch.Tensor]] | None = None  # the last feed, on the device
        self.kernel_sites = 0

    def _deactivate(self) -> None:
        self._feed = None

    def _activate(self) -> None:
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise MissingBackendError(f"{self.name}: no CUDA device; use device='cpu'")
        module = copy.deepcopy(self.model) if self.kernels else self.model  # the swap must not touch the original
        module = module.to(self.device).eval()
        if self.dtype != "fp32":
            module = (module if self.kernels else copy.deepcopy(module)).to(self._torch_dtype)
        if self.kernels:
            module = self._with_kernels(module)
        if self.optimize is not None:
            module = self._optimized(module)
        self._callable = torch.compile(module) if self.compile else module
        if self.warmup_feed is not None:
            self._infer(self.warmup_feed)

    def _optimized(self, module: nn.Module) -> nn.Module:
        """``dyt_deploy.optimize`` on a copy: fold sites found on the warm-up feed (or the zoo model's own inputs)."""
        from ..optimize_model import optimize

        example = None
        if self.warmup_feed is not None:
            example = tuple(self._on_device(self.warmup_feed))
        elif callable(getattr(module, "example_inputs", None)):
            example = tuple(t.to(self.device) for t in module.example_inputs().values())
            example = tuple(t.to(self._torch_dtype) if t.is_floating_point() else t for t in example)
        optimized, self.optimize_report = optimize(module, mode=self.optimize, example_inputs=example)
        self._feed = None
        return optimized

    def _with_kernels(self, module: nn.Module) -> nn.Module:
        from .. import kernels

        if not kernels.triton_available():
            raise MissingBackendError(f"{self.name}: Triton is not installed (it comes with PyTorch's CUDA builds; "
                                      "else pip install triton)")
        if not self.device.startswith("cuda") and not kernels.interpreting():
            raise MissingBackendError(f"{self.name}: the Triton kernels run on a CUDA device; on the CPU only "
                                      "through Triton's interpreter (set TRITON_INTERPRET=1 before starting)")
        module, self.kernel_sites = kernels.use_kernels(module)
        if not self.kernel_sites:
            raise RunnerError(f"{self.name}: the model has no channels-last DynamicTanh for the kernels to run")
        return module

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise RunnerError(f"{self.name}: feed lacks input(s) {', '.join(missing)}")
        args = self._on_device(feed)
        with torch.inference_mode():
            if self.device.startswith("cuda"):
                result = self._timed_with_events(args)
            else:
                with Timer() as timer:
                    result = flatten_outputs(self._callable(*args))
                self.last_inference_time = timer.seconds
        return {name: t.detach().float().cpu().numpy() for name, t in zip(self.output_names, result, strict=False)}

    def _on_device(self, feed: dict[str, np.ndarray]) -> list[torch.Tensor]:
        if self._feed is not None and self._feed[0] is feed:
            return self._feed[1]
        args = []
        for name in self.input_names:
            tensor = torch.from_numpy(np.ascontiguousarray(feed[name])).to(self.device)
            args.append(tensor.to(self._torch_dtype) if tensor.is_floating_point() else tensor)
        self._feed = (feed, args)
        return args

    def _timed_with_events(self, args: list[torch.Tensor]) -> list[torch.Tensor]:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = flatten_outputs(self._callable(*args))
        end.record()
        end.synchronize()
        self.last_inference_time = start.elapsed_time(end) / 1000.0
        return result

"""``optimize(model, mode=...)``: a DyT model made ready to serve from PyTorch.

Three steps, each optional, applied to a copy of the model:

1. **Fold** (``fold=True``): where every reader of a channels-last DyT is an ``nn.Linear`` (pre-norm
   blocks: the attention's qkv, the MLP's first layer, the LM head), ``W @ (g*t + b) + c =
   (W*g) @ t + (W@b + c)``: gamma and beta go into the linear layer, and the DyT keeps only
   ``tanh(alpha*x)`` -- the rewrite ``dyt-export --fold`` makes in ONNX, here on the modules.
   Sites are found by running the model once on example inputs and recording which torch calls
   read each DyT's output (a ``TorchFunctionMode``): tracing is not needed, so models with
   data-dependent shapes (rotary tables sliced by the sequence length) fold too.
2. **Kernels** (``kernels=None``: wherever the Triton kernels can run, i.e. a CUDA device or
   Triton's interpreter): :func:`~dyt_deploy.kernels.use_kernels`, which also moves each residual
   add in front of a DyT into its kernel.
3. **Compile**, by ``mode``: ``"eager"`` (no compile), ``"default"``, ``"reduce-overhead"`` (CUDA
   graphs: the launch cost of small batches) or ``"max-autotune"`` (Inductor's autotuned GEMM
   templates, where a DyT ``tanh`` can be fused into the next matmul's input load) -- the
   ``torch.compile`` modes of the same names.

The result computes what the model computes, within rounding (fp32: ~1e-6; the kernels'
documented error for 16-bit activations). It is for inference: folding changes the parameters.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import unknown_name
from .nn import DynamicTanh

MODES = ("eager", "default", "reduce-overhead", "max-autotune")
log = logging.getLogger(__name__)


@dataclass
class OptimizeReport:
    """What :func:`optimize` did: folded sites (DyT -> the linear layers it went into), sites left
    with why, kernel sites, residual adds fused, and the compile mode."""

    mode: str
    folded: dict[str, list[str]] = field(default_factory=dict)
    not_folded: dict[str, str] = field(default_factory=dict)
    kernel_sites: int = 0
    fused_adds: int = 0
    untraced: str | None = None

    def describe(self) -> str:
        lines = [f"mode {self.mode}: {len(self.folded)} DyT folded into "
                 f"{sum(map(len, self.folded.values()))} linear layers, {len(self.not_folded)} left, "
                 f"{self.kernel_sites} on the Triton kernels ({self.fused_adds} residual adds fused)"]
        lines += [f"  left {site}: {why}" for site, why in self.not_folded.items()]
        if self.untraced:
            lines.append(f"  not folded: {self.untraced}")
        return "\n".join(lines)


def optimize(model: nn.Module, mode: str = "default", *, fold: bool = True, kernels: bool | None = None,
             example_inputs: object = None, inplace: bool = False) -> tuple[nn.Module, OptimizeReport]:
    """``model`` folded, on the DyT kernels and compiled as ``mode`` says; returns ``(module, report)``.

    Args:
        mode: "eager", "default", "reduce-overhead" or "max-autotune" (see the module docstring).
        fold: fold gamma/beta into the linear layers that read a DyT.
        example_inputs: inputs for the one forward pass that finds the fold sites (a tensor, a tuple, or a
            dict by input name); default: the zoo model's ``example_inputs()``.
        kernels: use the Triton DyT kernels; None: where they can run (the model's device is CUDA
            and Triton is installed, or Triton's interpreter is on).
        inplace: change ``model`` itself instead of a copy (saves the memory of one model).
    """
    if mode not in MODES:
        raise unknown_name("optimize mode", mode, MODES)
    module = model if inplace else copy.deepcopy(model)
    module.eval()
    report = OptimizeReport(mode)
    if fold:
        fold_dyt_into_linear(module, example_inputs, report)
    if kernels if kernels is not None else _kernels_can_run(module):
        from .kernels import use_kernels
        from .kernels.fusion import fuse_residual_adds

        module, report.kernel_sites = use_kernels(module, fuse=False)
        if report.kernel_sites:
            report.fused_adds = len(fuse_residual_adds(module).fused)
    if mode != "eager":
        module = torch.compile(module, mode=mode)
    log.info(report.describe())
    return module, report


def _kernels_can_run(module: nn.Module) -> bool:
    from .kernels import interpreting, triton_available

    devices = {p.device.type for p in module.parameters()}
    return triton_available() and (devices == {"cuda"} or interpreting())


# tensor methods and attributes that read a tensor's metadata, not its values
_METADATA_METHODS = {"size", "dim", "numel", "is_floating_point", "stride", "is_contiguous", "element_size"}
_METADATA_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "layout", "is_cuda", "requires_grad"}


def _reads_values(func: object) -> bool:
    name = getattr(func, "__name__", "")
    if name == "__get__":
        return getattr(getattr(func, "__self__", None), "__name__", None) not in _METADATA_ATTRIBUTES
    return name not in _METADATA_METHODS


class _Readers(TorchFunctionMode):
    """Records, during one forward pass, every torch call that reads a DyT layer's output, and every
    linear layer's inputs (by weight), so folding can prove a DyT's only readers are linear layers."""

    def __init__(self, linear_names: dict[int, str]) -> None:
        super().__init__()
        self.linear_names = linear_names  # id(weight) -> module name
        self.outputs: dict[int, tuple[str, torch.Tensor]] = {}  # id(output) -> (DyT name, the output, kept alive)
        self.calls: dict[str, int] = {}  # DyT name -> forward calls
        self.readers: dict[str, list[str]] = {}  # DyT name -> what read its output ("linear NAME" or a function)
        self.linear_inputs: dict[str, list[int]] = {}  # linear name -> id of each input it was called on

    def dyt_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self.calls[name] = self.calls.get(name, 0) + 1
            self.outputs[id(output)] = (name, output)
            self.readers.setdefault(name, [])
        return hook

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        linear = self.linear_names.get(id(args[1])) if func is F.linear and len(args) > 1 else None
        if linear is not None:
            self.linear_inputs.setdefault(linear, []).append(id(args[0]))
        if _reads_values(func):
            for index, value in enumerate([*args, *kwargs.values()]):
                if isinstance(value, torch.Tensor) and id(value) in self.outputs:
                    reader = f"linear {linear}" if linear is not None and index == 0 else _func_name(func)
                    self.readers[self.outputs[id(value)][0]].append(reader)
        return func(*args, **kwargs)


def _func_name(func: object) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


def _as_args(example_inputs: object) -> tuple:
    if isinstance(example_inputs, dict):
        return tuple(example_inputs.values())
    return tuple(example_inputs) if isinstance(example_inputs, list | tuple) else (example_inputs,)


def fold_dyt_into_linear(model: nn.Module, example_inputs: object = None,
                         report: OptimizeReport | None = None) -> OptimizeReport:
    """Fold the gamma/beta of every channels-last DyT whose readers are all ``nn.Linear`` into them, in place.

    The readers are found by running ``model`` once on ``example_inputs`` (a tensor, a tuple of them, or a
    dict by input name; default: the zoo model's own ``example_inputs()``) and recording which torch calls
    read each DyT's output: every value-reading call must be a linear layer, called on that output only.
    A folded DyT keeps ``alpha`` only (``weight`` and ``bias`` become None); each linear layer gets new
    parameters (never edited in place, so a weight tied elsewhere, e.g. an embedding, is untouched).
    """
    report = report or OptimizeReport("fold")
    if example_inputs is None and callable(getattr(model, "example_inputs", None)):
        example_inputs = model.example_inputs()
    if example_inputs is None:
        report.untraced = "no example inputs: pass example_inputs= (the model is not from the zoo)"
        return report
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    dyts = {name: m for name, m in model.named_modules() if isinstance(m, DynamicTanh) and m.weight is not None}
    recorder = _Readers({id(m.weight): name for name, m in linears.items()})
    hooks = [m.register_forward_hook(recorder.dyt_hook(name)) for name, m in dyts.items()]
    try:
        with torch.no_grad(), recorder:
            model(*_as_args(example_inputs))
    finally:
        for hook in hooks:
            hook.remove()
    for name, dyt in dyts.items():
        readers, why = _linear_readers(name, dyt, recorder)
        if why is not None:
            report.not_folded[name] = why
            continue
        _fold(dyt, [linears[r] for r in readers])
        report.folded[name] = readers
    return report


def _linear_readers(name: str, dyt: DynamicTanh, recorder: _Readers) -> tuple[list[str], str | None]:
    if not dyt.channels_last:
        return [], "channels-first"
    if recorder.calls.get(name, 0) != 1:
        return [], "not called exactly once in a forward pass"
    readers = recorder.readers[name]
    others = [r for r in readers if not r.startswith("linear ")]
    if others:
        return [], f"read by {others[0]}, not a linear layer"
    linears = [r.removeprefix("linear ") for r in readers]
    output_id = next(key for key, (owner, _) in recorder.outputs.items() if owner == name)
    shared = [lin for lin in linears if any(i != output_id for i in recorder.linear_inputs[lin])]
    if shared:
        return [], f"{shared[0]} is also called on other inputs"
    return (sorted(set(linears)), None) if linears else ([], "its output is not read")


@torch.no_grad()
def _fold(dyt: DynamicTanh, linears: list[nn.Linear]) -> None:
    gamma = dyt.weight.detach().to(torch.float64)
    beta = None if dyt.bias is None else dyt.bias.detach().to(torch.float64)
    for linear in linears:
        weight = linear.weight.detach().to(torch.float64)  # (out, in)
        new_weight = (weight * gamma[None, :]).to(linear.weight.dtype)
        linear.weight = nn.Parameter(new_weight, requires_grad=False)
        if beta is None:
            continue
        shift = weight @ beta
        bias = shift if linear.bias is None else linear.bias.detach().to(torch.float64) + shift
        linear.bias = nn.Parameter(bias.to(linear.weight.dtype), requires_grad=False)
    dyt.weight = None
    dyt.bias = None

"""AOTInductor packages: model.pt -> ``torch.export`` -> ``aoti_compile_and_package`` -> ``model.pt2``.

The package holds compiled kernels and the weights; ``torch._inductor.aoti_load_package`` runs it
without tracing the model again (the ``aoti`` runner). The dims the model's signature names
(``batch``, and ``seq`` for token models) stay dynamic: ``torch.export.Dim.AUTO``, so a dim the
model's code fixes becomes static and is reported rather than failing the export. Before anything
is written the package runs in the ``aoti`` runner against eager PyTorch at several batch sizes.

A model folder is ``REPO/NAME/1/model.pt2`` + ``dyt.json``, staged and renamed into place like the
other folders. It has no config.pbtxt: Triton Inference Server has no backend for AOTInductor
packages (its PyTorch backend runs TorchScript ``model.pt`` and Python ``model.py`` models), so such
a folder is served by dyt-serve, not by Triton.
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import WEIGHTS, LoadedModel, load_checkpoint
from ..dtypes import PRECISIONS, torch_dtype
from ..errors import DytDeployError, OptionError, choice_problem, first_line
from ..feeds import random_feed, random_tensors
from ..nn.convert import norm_kind_of
from ..parity import ParityReport, default_tolerances
from ..repository import (
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    library_versions,
    refuse_existing,
    sha256_file,
    staged_file,
    staged_folder,
    write_manifest,
)
from ..runners.aoti_runner import META_DTYPE, META_INPUTS, META_OUTPUTS, package_metadata
from ..specs import TensorSpec
from . import signature as sig
from .steps import Fp32Norm

AOTI_DEVICES = ("cpu", "cuda")
AOTI_DTYPES = tuple(PRECISIONS)  # fp32, fp16, bf16
PACKAGE_NAME = "model.pt2"

Progress = Callable[[str], None]


class AotiBuildError(DytDeployError):
    """torch.export or AOTInductor could not build the package."""


class AotiVerificationFailed(AotiBuildError):
    """The package's outputs are not within tolerance of PyTorch's; ``result`` holds the figures."""

    def __init__(self, message: str, result: AotiResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class AotiConfig:
    """How to build one AOTInductor package.

    Attributes:
        device: "cpu" (default) or "cuda": what the package is compiled for and runs on.
        dtype: "fp32" (default), "fp16" or "bf16": the precision the model computes in (its
            LayerNorm/RMSNorm stay fp32); inputs and outputs stay float32 at the runner.
        arch, trust_pickle, weights, input_shapes: how the model is read, as dyt-export's options.
        samples: verification inputs (sample 0 at batch 2, then batch 3 and 1; seq 16, 11, 7).
        atol, rtol: verification tolerances; None: per dtype (``parity.DEFAULT_TOLERANCES``).
        verify: run the package against eager PyTorch before anything is written.
        repository, name, family: write ``repository/name/1/model.pt2`` + dyt.json (name default
            ``<arch>-<norm>-aoti``; family default the architecture) instead of one file.
        force: replace an existing output.
    """

    device: str = "cpu"
    dtype: str = "fp32"
    arch: str | None = None
    trust_pickle: bool = False
    weights: str | None = None
    input_shapes: tuple[str, ...] | None = None
    samples: int = 3
    atol: float | None = None
    rtol: float | None = None
    verify: bool = True
    repository: Path | None = None
    name: str | None = None
    family: str | None = None
    force: bool = False

    def __post_init__(self) -> None:
        if self.input_shapes is not None:
            object.__setattr__(self, "input_shapes", tuple(self.input_shapes) or None)
        if self.repository is not None:
            object.__setattr__(self, "repository", Path(self.repository))
        problems = self.problems()
        if problems:
            raise OptionError(problems)

    def problems(self) -> list[tuple[str, str]]:
        """Every invalid field as ``(field, what is wrong)``; all of them, not the first."""
        found = []
        found += choice_problem("device", self.device, AOTI_DEVICES)
        found += choice_problem("dtype", self.dtype, AOTI_DTYPES)
        if self.samples < 1:
            found.append(("samples", f"verification needs at least 1 sample, not {self.samples}"))
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                found.append((name, f"{name} must be a non-negative number, not {value}"))
        if self.weights is not None:
            found += choice_problem("weights", self.weights, WEIGHTS)
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            found.append(("name", f"model folder name {self.name!r} must be a plain folder name"))
        return found


@dataclass
class AotiResult:
    """What a build produced: the package, its folder, signature, parity and manifest."""

    package_path: Path
    model_dir: Path | None
    device: str
    dtype: str
    inputs: list[dict]
    outputs: list[dict]
    parity: ParityReport | None
    manifest: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class CompiledPackage:
    """A package written by :func:`compile_package`: its IO (dyt.json entries, named dims kept),
    the inputs as specs (dims the model fixed are ints), and notes on such dims."""

    path: Path
    inputs: list[dict]
    outputs: list[dict]
    specs: list[TensorSpec]
    notes: list[str]
    target: dict[str, str]


def build_aoti(model_path: str | Path, output: str | Path | None = None, config: AotiConfig | None = None,
               progress: Progress | None = None) -> AotiResult:
    """Build, verify and write the AOTInductor package of ``model_path`` as ``config`` says.

    ``output``: the .pt2 file to write (default: beside the model, ``.pt2`` suffix); ignored with
    ``config.repository``. Nothing is written when any step fails.

    Raises:
        AotiVerificationFailed: outputs out of tolerance (``.result`` has the figures).
        DytDeployError: bad input, or torch.export / AOTInductor failed.
    """
    started, config, say = time.perf_counter(), config or AotiConfig(), progress or (lambda _: None)
    _require_device(config.device)
    if config.repository is None or config.name is not None:  # the target is known before loading
        early_dir, early_file = _targets(None, model_path, output, config)
        refuse_existing(early_dir or early_file, config.force)
    say("load the model")
    loaded = load_checkpoint(model_path, arch=config.arch, trust_pickle=config.trust_pickle, weights=config.weights)
    model_dir, package_path = _targets(loaded, model_path, output, config)
    refuse_existing(model_dir or package_path, config.force)
    specs = sig.input_specs(loaded.model, list(config.input_shapes or []), None)
    stager = staged_folder(model_dir, config.force) if model_dir else staged_file(package_path, config.force)
    with stager as stage:
        staged = stage / "1" / PACKAGE_NAME if model_dir else stage / package_path.name
        say(f"torch.export and AOTInductor compile ({config.device}, {config.dtype})")
        package = compile_package(loaded.model, specs, staged, device=config.device, dtype=config.dtype)
        result = AotiResult(package_path, model_dir, config.device, config.dtype, package.inputs, package.outputs,
                            None, notes=package.notes)
        if config.verify:
            say(f"verify against PyTorch ({config.samples} samples, aoti runner)")
            result.parity = verify_package(staged, loaded.model, package.specs, config)
            if not result.parity.passed:
                raise AotiVerificationFailed(f"{model_path}: the package's outputs differ from PyTorch beyond "
                                             f"tolerance ({_worst(result.parity)}); nothing written", result)
        result.seconds = time.perf_counter() - started
        result.manifest = aoti_manifest(loaded, result, config, package, staged)
        if model_dir is not None:
            write_manifest(stage, result.manifest)
    return result


def compile_package(model: nn.Module, specs: list[TensorSpec], path: Path, *, device: str = "cpu",
                    dtype: str = "fp32") -> CompiledPackage:
    """``model`` in ``dtype`` on ``device``, exported with its named dims dynamic and compiled by
    AOTInductor into the package ``path``, its IO signature in the package metadata."""
    module = module_for(model, dtype, device)
    args = tuple(_example_args(specs, dtype, device))
    program = _export(module, specs, args)
    inputs, notes = _input_signature(program, specs)
    outputs = _output_signature(program, model, inputs)
    metadata = {META_INPUTS: json.dumps(inputs), META_OUTPUTS: json.dumps(outputs), META_DTYPE: dtype}
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch._inductor.aoti_compile_and_package(program, package_path=str(path),
                                                 inductor_configs={"aot_inductor.metadata": metadata})
    except Exception as err:  # Inductor and the C++ compiler fail in many ways; all mean "could not build"
        raise AotiBuildError(f"AOTInductor could not compile the model for {device}: {first_line(err)}. It needs "
                             "a C++ compiler (g++ or clang++) on the PATH, and for cuda a CUDA build of PyTorch"
                             ) from None
    specs = [TensorSpec(t["name"], tuple(t["shape"]), t["dtype"], s.low, s.high) for t, s in zip(inputs, specs,
                                                                                                  strict=True)]
    target = {k: v for k, v in package_metadata(path).items() if k.startswith("AOTI_")}
    return CompiledPackage(path, inputs, outputs, specs, notes, target)


def module_for(model: nn.Module, dtype: str, device: str = "cpu") -> nn.Module:
    """The module to compile: ``model`` itself for fp32 on the CPU; else a copy on ``device`` (the
    caller's model stays where it is), in fp16/bf16 with LayerNorm and RMSNorm layers computing in
    fp32 (DyT has no statistics and stays in the low precision)."""
    if dtype == "fp32" and device == "cpu":
        return model
    low = copy.deepcopy(model).to(device=device, dtype=torch_dtype(dtype))
    for name, module in list(low.named_modules()):
        if norm_kind_of(module) in ("layernorm", "rmsnorm"):
            parent_name, _, child = name.rpartition(".")
            setattr(low.get_submodule(parent_name) if parent_name else low, child, Fp32Norm(module))
    return low


def _example_args(specs: list[TensorSpec], dtype: str, device: str) -> list[torch.Tensor]:
    tensors = random_tensors(specs, sig.EXPORT_SIZES, seed=0).values()
    return [(t.to(torch_dtype(dtype)) if t.is_floating_point() else t).to(device) for t in tensors]


def _export(module: nn.Module, specs: list[TensorSpec], args: tuple[torch.Tensor, ...]) -> Any:
    dynamic_shapes = tuple({axis: torch.export.Dim.AUTO for axis in spec.dynamic_dims} or None for spec in specs)
    try:
        with torch.no_grad():
            return torch.export.export(module.eval(), args, dynamic_shapes=dynamic_shapes)
    except Exception as err:  # torch.export raises many types; all mean "could not capture"
        shapes = ", ".join(f"{s.name}={tuple(a.shape)}" for s, a in zip(specs, args, strict=True))
        raise AotiBuildError(f"torch.export could not capture the model on inputs {shapes}: {first_line(err)}. "
                             "Check --input-shape") from None


def _input_signature(program: Any, specs: list[TensorSpec]) -> tuple[list[dict], list[str]]:
    """The program's inputs as dyt.json entries: a named dim the export kept symbolic keeps its
    name, one the model's code fixed becomes its size (with a note). Floats are float32 at the runner."""
    entries, notes = [], []
    for spec, value in zip(specs, _placeholder_values(program), strict=True):
        shape: list[int | str] = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, str) and isinstance(value.shape[axis], int):
                notes.append(f"the model fixes dim {dim!r} of {spec.name} at {value.shape[axis]}: the package "
                             "takes only that size")
                dim = value.shape[axis]
            shape.append(dim)
        entries.append({"name": spec.name, "dtype": "float32" if _is_float(spec.dtype) else spec.dtype,
                        "shape": shape})
    return entries, notes


def _output_signature(program: Any, model: nn.Module, inputs: list[dict]) -> list[dict]:
    """The program's user outputs as dyt.json entries (float32 at the runner); a dim that is an
    input's named dim gets its name, other symbolic dims ``<output>_dim<axis>``."""
    names_by_symbol = {}
    for entry, value in zip(inputs, _placeholder_values(program), strict=True):
        for axis, dim in enumerate(entry["shape"]):
            if isinstance(dim, str):
                names_by_symbol.setdefault(str(value.shape[axis]), dim)
    values = _output_values(program)
    entries = []
    for name, value in zip(sig.output_names(model, len(values)), values, strict=True):
        shape = [d if isinstance(d, int) else names_by_symbol.get(str(d), f"{name}_dim{axis}")
                 for axis, d in enumerate(value.shape)]
        entries.append({"name": name, "dtype": "float32" if value.is_floating_point() else str(value.dtype)[6:],
                        "shape": shape})
    return entries


def _placeholder_values(program: Any) -> list[Any]:
    """The fake tensors of the program's user inputs, in argument order."""
    from torch.export.graph_signature import InputKind

    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    specs = program.graph_signature.input_specs
    return [nodes[s.arg.name].meta["val"] for s in specs if s.kind == InputKind.USER_INPUT]


def _output_values(program: Any) -> list[Any]:
    """The fake tensors of the program's user outputs, in order."""
    from torch.export.graph_signature import OutputKind

    returned = next(n for n in program.graph.nodes if n.op == "output").args[0]
    kinds = [s.kind for s in program.graph_signature.output_specs]
    return [node.meta["val"] for node, kind in zip(returned, kinds, strict=True) if kind == OutputKind.USER_OUTPUT]


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


def verify_package(path: Path, reference: nn.Module, specs: list[TensorSpec], config: AotiConfig) -> ParityReport:
    """The package in the ``aoti`` runner against eager PyTorch (fp32, CPU) on ``config.samples``
    seeded inputs at different sizes of the dynamic dims (batch 2, 3, 1, ...)."""
    from ..runners import create_runner

    report = ParityReport(*default_tolerances(config.dtype, config.atol, config.rtol))
    with create_runner("aoti", path) as runner:
        for index in range(config.samples):
            feed = random_feed(specs, sig.sample_sizes(index, specs), seed=index)
            expected = _reference_outputs(reference, feed, runner.output_names)
            try:
                got = runner.infer(feed)
            except Exception as err:  # the package refused a size the export accepted
                shapes = ", ".join(f"{k}={v.shape}" for k, v in feed.items())
                raise AotiBuildError(f"verification sample {index} ({shapes}) failed to run in the package: "
                                     f"{first_line(err)}") from None
            report.add_sample(expected, got, {k: v.shape for k, v in feed.items()})
    return report


def _reference_outputs(reference: nn.Module, feed: dict, names: list[str]) -> dict:
    with torch.no_grad():
        outputs = sig.flatten_outputs(reference(*[torch.from_numpy(a) for a in feed.values()]))
    return {name: t.float().numpy() for name, t in zip(names, outputs, strict=False)}


def _worst(parity: ParityReport) -> str:
    failed = [o for o in parity.outputs.values() if not o.passed]
    return ", ".join(f"{o.name}: max abs {o.max_abs:.3g}" for o in failed) or "no outputs compared"


def _main_norm(model: nn.Module) -> str | None:
    """The norm kind most of the model's norm layers have (None without any)."""
    kinds = Counter(kind for module in model.modules() if (kind := norm_kind_of(module)) is not None)
    return kinds.most_common(1)[0][0] if kinds else None


def _require_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise DytDeployError(f"device cuda: no CUDA device is visible (PyTorch {torch.__version__} is {build}); "
                             "build on a GPU host, or use --device cpu")


def _targets(loaded: LoadedModel | None, model_path: str | Path, output: str | Path | None,
             config: AotiConfig) -> tuple[Path | None, Path]:
    if config.repository is None:
        return None, Path(output) if output else _default_package_path(Path(model_path))
    name = config.name
    if name is None:
        stem = f"{loaded.arch}-{loaded.norm}" if loaded is not None and loaded.arch else Path(model_path).stem
        name = f"{stem}-aoti"
    model_dir = config.repository / name
    return model_dir, model_dir / "1" / PACKAGE_NAME


def _default_package_path(model_path: Path) -> Path:
    """Beside the model: ``model.pt`` -> ``model.pt2``; a folder ``Qwen2.5-0.5B`` -> ``Qwen2.5-0.5B.pt2``."""
    return model_path.with_name(model_path.name + ".pt2") if model_path.is_dir() else model_path.with_suffix(".pt2")


def aoti_manifest(loaded: LoadedModel, result: AotiResult, config: AotiConfig, package: CompiledPackage,
                  staged: Path) -> dict[str, Any]:
    """The dyt.json of an AOTInductor folder: the ONNX folders' fields where they apply, plus the
    device, the dims left dynamic and the package's compile target (CPU ISA, compute capability)."""
    source = Path(loaded.path).resolve() if loaded.path else None
    dynamic = sorted({d for t in result.inputs for d in t["shape"] if isinstance(d, str)})
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "name": result.model_dir.name if result.model_dir else result.package_path.stem,
        "family": config.family or loaded.arch or (source.stem if source else "model"),
        "arch": loaded.arch,
        "config": loaded.config,
        "norm": loaded.norm or _main_norm(loaded.model),
        "backend": "aoti",
        "device": config.device,
        "dtype": config.dtype,
        "inputs": result.inputs,
        "outputs": result.outputs,
        "dynamic": dynamic,
        "source": {"path": str(source) if source else None, "format": loaded.source_format,
                   "sha256": sha256_file(source) if source else None, "weights": loaded.weights},
        "parity": None if result.parity is None else result.parity.to_dict(),
        "target": package.target,
        "versions": library_versions(),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "export_seconds": round(result.seconds, 3),
        "artifacts": {f"1/{PACKAGE_NAME}": sha256_file(staged)},
    }

"""ONNX -> TensorRT engine (``model.plan`` plus its manifest ``model.plan.json``), for TensorRT 10.x and 11.x.

- Networks are strongly typed (``STRONGLY_TYPED``: opt-in on 10.x, always on in 11.x): the engine
  keeps the ONNX file's types, so an fp16 engine comes from an fp16 ONNX (``dyt-export --dtype
  fp16``). No precision flag is ever set (``BuilderFlag.FP16`` no longer exists in 11.x).
- TF32 is cleared, so fp32 engines match fp32 references (TensorRT enables it by default).
- One optimization profile: the given ranges, else the defaults of ``profiles.py`` from the
  model's dynamic dims.
- The plugin DyT form (bodiless ``DynamicTanh`` nodes) registers dyt-deploy's plugin first; a
  function-form file with several overloads of ``DynamicTanh`` is inlined first, because
  TensorRT's parser keys local functions by name alone and would use one body for all.
- Every input problem is found before TensorRT is imported, so it is reported on any host; without
  TensorRT or a GPU the build stops with a one-line MissingBackendError.

The plan and its manifest are written into a staging folder beside the target and renamed into
place, so a failed build leaves any previous engine untouched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import DytDeployError
from ..repository import MANIFEST_NAME, read_manifest, staged_file
from .backend import create_builder, import_tensorrt, make_logger, tensorrt_version
from .manifest import EngineManifest, HostFacts, gather_host_facts, manifest_path_for, write_engine_manifest
from .plugin import (
    bodiless_dyt_nodes,
    check_param_shapes,
    complete_inputs,
    input_names,
    output_shape,
    register_plugin,
)
from .profiles import InputProfile, Profiles, model_limits, profiles_to_dict, resolve_profiles

log = logging.getLogger("dyt_deploy.tensorrt")
OPT_LEVELS = range(0, 6)  # TensorRT's builder optimization levels; it defaults to 3
_FLOAT_NAMES = {1: "fp32", 10: "fp16", 16: "bf16", 11: "fp64", 17: "fp8", 18: "fp8", 19: "fp8", 20: "fp8"}


class EngineBuildError(DytDeployError):
    """TensorRT could not parse the ONNX file or build an engine from it; the message lists why."""


# ---- what to build from, and where to ----


@dataclass(frozen=True)
class BuildTarget:
    """A build's input and output: the ONNX file, the plan path and, for model folders, the folder and its dyt.json."""

    source: Path
    onnx_path: Path
    plan_path: Path
    model_dir: Path | None = None
    model_manifest: dict[str, Any] | None = None


def resolve_target(source: str | os.PathLike, plan_path: str | os.PathLike | None = None) -> BuildTarget:
    """Where to read and write. ``source`` is a model folder REPO/NAME (reads 1/model.onnx, writes
    1/model.plan by default) or an .onnx file (writes MODEL.plan beside it by default); an .onnx
    inside a model folder (REPO/NAME/1/model.onnx) also picks up the folder's dyt.json."""
    source = Path(source)
    if source.is_dir():
        return _folder_target(source, plan_path)
    if not source.exists():
        raise DytDeployError(f"{source} does not exist; pass an .onnx file or a model folder REPO/NAME")
    if source.suffix != ".onnx":
        raise DytDeployError(f"{source} is not an .onnx file; pass an .onnx file or a model folder REPO/NAME")
    model_dir = _folder_of(source)
    plan = Path(plan_path) if plan_path is not None else source.with_suffix(".plan")
    return _checked(BuildTarget(source, source, plan, model_dir, read_manifest(model_dir) if model_dir else None))


def _folder_target(folder: Path, plan_path: str | os.PathLike | None) -> BuildTarget:
    manifest = read_manifest(folder)
    onnx_path = folder / "1" / "model.onnx"
    if not onnx_path.is_file():
        raise DytDeployError(f"{folder}: no 1/model.onnx; export into the folder first (dyt-export --repository)")
    plan = Path(plan_path) if plan_path is not None else folder / "1" / "model.plan"
    return _checked(BuildTarget(folder, onnx_path, plan, folder, manifest))


def _folder_of(onnx_path: Path) -> Path | None:
    folder = onnx_path.resolve().parent.parent
    return folder if onnx_path.resolve().parent.name == "1" and (folder / MANIFEST_NAME).is_file() else None


def _checked(target: BuildTarget) -> BuildTarget:
    if target.plan_path.resolve() == target.onnx_path.resolve():
        raise DytDeployError(f"-o {target.plan_path} would overwrite the ONNX file; name the plan e.g. model.plan")
    if target.plan_path.is_dir():
        raise DytDeployError(f"-o {target.plan_path} is a folder; name the plan file, e.g. model.plan")
    return target


def max_batch_of(model_dir: Path | None) -> int | None:
    """The ``max_batch_size`` of a model folder's config.pbtxt (None if absent or 0: not batched)."""
    from ..triton_config import read_config

    config = read_config(model_dir) if model_dir else None
    return config.max_batch_size or None if config is not None else None


# ---- the ONNX side ----


def onnx_inputs(model: Any) -> list[dict[str, Any]]:
    """The graph's inputs as ``{"name", "dtype", "shape"}`` (named dims as str, unnamed dynamic dims None)."""
    from onnx import helper

    initializers = {t.name for t in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "unknown"
        inputs.append({"name": value.name, "dtype": dtype, "shape": [_dim(d) for d in tensor.shape.dim]})
    return inputs


def _dim(dim: Any) -> int | str | None:
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    return dim.dim_param or None


def onnx_precision(model: Any) -> str:
    """The float types of the model's inputs and initializers, e.g. "fp32", "fp16" or "fp16+fp32"."""
    types = [t.data_type for t in model.graph.initializer]
    types += [v.type.tensor_type.elem_type for v in model.graph.input]
    names = sorted({_FLOAT_NAMES[t] for t in types if t in _FLOAT_NAMES})
    return "+".join(names) or "fp32"


@dataclass
class PreparedOnnx:
    """The ONNX bytes handed to TensorRT's parser, and what was done to them."""

    data: bytes
    sha256: str  # of the file as read
    precision: str
    inputs: list[dict[str, Any]]
    plugin_nodes: int = 0
    notes: list[str] = field(default_factory=list)


def prepare_onnx(onnx_path: Path) -> PreparedOnnx:
    """Load the graph (external weights stay on disk), check and complete plugin nodes, inline overloaded functions."""
    import onnx

    try:
        data = onnx_path.read_bytes()
        model = onnx.load_from_string(data)  # external weights are not loaded: they stay beside onnx_path
    except Exception as err:  # OSError, protobuf's DecodeError, ...: all mean "not a readable ONNX file"
        raise DytDeployError(f"{onnx_path}: not a readable ONNX file ({type(err).__name__}: {err})") from None
    notes: list[str] = []
    plugin_nodes = bodiless_dyt_nodes(model)
    if plugin_nodes:
        check_plugin_nodes(model, plugin_nodes)
        padded = complete_inputs(model)
        notes.append(f"{len(plugin_nodes)} DynamicTanh nodes run as the dyt_deploy plugin"
                     + (f" ({padded} given neutral gamma/beta inputs)" if padded else ""))
    overloaded = overloaded_functions(model)
    if overloaded:
        model = inline_functions(model)
        notes.append(f"inlined the local functions: {', '.join(overloaded)} has several overloads and TensorRT's "
                     "parser keys functions by name alone")
    return PreparedOnnx(model.SerializeToString(), hashlib.sha256(data).hexdigest(), onnx_precision(model),
                        onnx_inputs(model), len(plugin_nodes), notes)


def overloaded_functions(model: Any) -> list[str]:
    """Names shared by several local functions (overloads): TensorRT's parser would keep only the first body."""
    names = [f.name for f in model.functions]
    return sorted({name for name in names if names.count(name) > 1})


def inline_functions(model: Any) -> Any:
    from onnx import inliner

    return inliner.inline_local_functions(model)


def check_plugin_nodes(model: Any, nodes: Iterable[Any]) -> None:
    """Check each plugin node's input count and its known alpha/gamma/beta shapes; all problems in one error."""
    constants = constant_shapes(model)
    values = value_shapes(model)
    problems = []
    for node in nodes:  # graph order is topological: a DyT's output shape (x's) reaches the DyT after it
        x_shape = values.get(node.input[0])
        if x_shape is not None:
            values.setdefault(node.output[0], output_shape(x_shape))
        try:
            names = input_names(len(node.input))
            params = {name: constants.get(value) for name, value in zip(names[1:], node.input[1:], strict=True)}
            check_param_shapes(x_shape, params)
        except DytDeployError as err:
            problems.append(f"node {node.name or node.output[0]!r}: {err}")
    if problems:
        raise DytDeployError("the plugin DyT form cannot be built: " + "; ".join(problems))


def constant_shapes(model: Any) -> dict[str, list[int]]:
    """Shapes of initializers and Constant-node outputs, by name."""
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                shapes[node.output[0]] = list(value.dims)
    return shapes


def value_shapes(model: Any) -> dict[str, tuple[int | None, ...]]:
    """Shapes ONNX shape inference knows, by value name (unknown dims None); {} when inference fails."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference is only a help for the checks; a model it cannot handle is checked less
        return {}
    shapes: dict[str, tuple[int | None, ...]] = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return shapes


# ---- settings ----


@dataclass(frozen=True)
class BuildSettings:
    """Builder settings. None means TensorRT's default: workspace = all device memory, opt level 3, no timing cache."""

    workspace_mb: int | None = None
    opt_level: int | None = None
    timing_cache: Path | None = None

    def problems(self) -> list[str]:
        problems = []
        if self.workspace_mb is not None and self.workspace_mb <= 0:
            problems.append(f"--workspace must be a positive number of MiB, not {self.workspace_mb}")
        if self.opt_level is not None and self.opt_level not in OPT_LEVELS:
            problems.append(f"--opt-level must be 0..5 (TensorRT's default is 3), not {self.opt_level}")
        if self.timing_cache is not None and self.timing_cache.is_dir():
            problems.append(f"--timing-cache {self.timing_cache} is a folder; name a file")
        return problems


def model_profiles(target: BuildTarget, prepared: PreparedOnnx, given: Mapping[str, InputProfile] | None) -> Profiles:
    """The engine's profile: ``given`` ranges, the rest derived from dyt.json (model folders) or the ONNX inputs."""
    manifest = target.model_manifest or {}
    inputs = manifest.get("inputs") or prepared.inputs
    limits = model_limits(manifest.get("config"), max_batch_of(target.model_dir))
    return resolve_profiles(inputs, given, limits)


def build_command(target: BuildTarget, given: Mapping[str, InputProfile] | None, settings: BuildSettings) -> list[str]:
    """The dyt-build command line that repeats this build (stored in the manifest for the rebuild message)."""
    command = ["dyt-build", str(target.source), "-o", str(target.plan_path)]
    for profile in (given or {}).values():
        command += ["--profile", profile.text()]
    options = {"--timing-cache": settings.timing_cache, "--workspace": settings.workspace_mb,
               "--opt-level": settings.opt_level}
    for flag, value in options.items():
        command += [flag, str(value)] if value is not None else []
    return command


# ---- TensorRT ----


def network_flags(trt: ModuleType) -> tuple[int, bool]:
    """(flags for ``create_network``, strongly typed?): STRONGLY_TYPED wherever TensorRT has it."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return (1 << int(flag), True) if flag is not None else (0, False)


def parse_onnx(trt: ModuleType, network: Any, logger: Any, prepared: PreparedOnnx, onnx_path: Path) -> None:
    """Parse into ``network``; on failure raise one EngineBuildError listing every parser error."""
    parser = trt.OnnxParser(network, logger)
    if parser.parse(prepared.data, str(onnx_path)):
        return
    errors = [describe_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
    raise EngineBuildError(f"TensorRT could not parse {onnx_path}: " + "; ".join(errors or ["no reason given"]))


def describe_parser_error(error: Any) -> str:
    """``node 3 (Tanh_1, DynamicTanh): <description>`` from an ``IParserError``."""
    where = []
    node = _call(error, "node")
    if node is not None and node >= 0:
        where.append(f"node {node}")
    names = [n for n in (_call(error, "node_name"), _call(error, "node_operator")) if n]
    if names:
        where.append(f"({', '.join(names)})")
    description = _call(error, "desc") or str(error)
    return f"{' '.join(where)}: {description}" if where else description


def _call(obj: Any, name: str) -> Any:
    method = getattr(obj, name, None)
    return method() if callable(method) else None


def configure(trt: ModuleType, config: Any, settings: BuildSettings) -> None:
    """Workspace, optimization level, TF32 off. Never a precision flag: types come from the ONNX file."""
    if settings.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    if settings.opt_level is not None:
        config.builder_optimization_level = settings.opt_level
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is not None:
        config.clear_flag(tf32)


def add_profile(builder: Any, network: Any, config: Any, profiles: Profiles) -> None:
    """One optimization profile with every range; a dynamic network input without a range is an error."""
    uncovered = [network.get_input(i).name for i in range(network.num_inputs)
                 if -1 in tuple(network.get_input(i).shape) and network.get_input(i).name not in profiles]
    if uncovered:
        raise EngineBuildError(f"dynamic inputs without a shape range: {', '.join(uncovered)}; "
                               "pass --profile NAME=min:opt:max for each")
    if not profiles:
        return
    profile = builder.create_optimization_profile()
    for p in profiles.values():
        profile.set_shape(p.name, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)


def attach_timing_cache(config: Any, path: Path | None) -> None:
    """Start from the timing cache at ``path`` (a fresh one when the file is missing or from another device)."""
    if path is None:
        return
    data = path.read_bytes() if path.is_file() else b""
    if not config.set_timing_cache(config.create_timing_cache(data), False):
        log.warning("timing cache %s does not fit this device or TensorRT version; starting a fresh one", path)
        config.set_timing_cache(config.create_timing_cache(b""), False)


def save_timing_cache(config: Any, path: Path | None) -> None:
    if path is None:
        return
    from ..repository import atomic_write

    with atomic_write(path) as staged:
        staged.write_bytes(bytes(config.get_timing_cache().serialize()))


def build_plan(trt: ModuleType, prepared: PreparedOnnx, onnx_path: Path, profiles: Profiles,
               settings: BuildSettings) -> tuple[bytes, bool]:
    """Parse and build with TensorRT: (serialized plan, strongly typed?)."""
    logger = make_logger(trt)
    builder = create_builder(trt, logger)
    flags, strongly_typed = network_flags(trt)
    network = builder.create_network(flags)
    parse_onnx(trt, network, logger, prepared, onnx_path)
    config = builder.create_builder_config()
    configure(trt, config, settings)
    add_profile(builder, network, config, profiles)
    attach_timing_cache(config, settings.timing_cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"TensorRT could not build an engine from {onnx_path} (its log above says why)")
    save_timing_cache(config, settings.timing_cache)
    return bytes(plan), strongly_typed


# ---- the whole build ----


@dataclass
class BuildResult:
    """What build_engine wrote."""

    plan_path: Path
    manifest_path: Path
    manifest: EngineManifest
    target: BuildTarget
    seconds: float
    notes: list[str] = field(default_factory=list)


Progress = Callable[[str], None]


def build_engine(source: str | os.PathLike, plan_path: str | os.PathLike | None = None,
                 profiles: Mapping[str, InputProfile] | None = None, timing_cache: str | os.PathLike | None = None,
                 workspace_mb: int | None = None, opt_level: int | None = None,
                 progress: Progress | None = None) -> BuildResult:
    """Build a TensorRT engine from ``source`` (an .onnx file or a model folder REPO/NAME); see the module docstring.

    ``plan_path`` defaults to REPO/NAME/1/model.plan for a folder and MODEL.plan beside an .onnx;
    an existing plan there is replaced (atomically, with its manifest). ``profiles`` maps input
    names to ranges (parse ``--profile`` text with ``profiles.parse_profiles``); inputs not named
    get the defaults derived from the model. ``timing_cache`` is read when it exists and written
    back after the build. ``workspace_mb``/``opt_level`` default to TensorRT's own defaults.
    """
    started = time.perf_counter()
    target = resolve_target(source, plan_path)
    settings = BuildSettings(workspace_mb, opt_level, Path(timing_cache) if timing_cache is not None else None)
    if settings.problems():
        raise DytDeployError("; ".join(settings.problems()))
    prepared = prepare_onnx(target.onnx_path)
    engine_profiles = model_profiles(target, prepared, profiles)
    trt = import_tensorrt()
    if prepared.plugin_nodes:
        register_plugin()
    (progress or (lambda _: None))(f"building {target.plan_path} from {target.onnx_path} "
                                   f"with TensorRT {tensorrt_version(trt)}")
    plan, strongly_typed = build_plan(trt, prepared, target.onnx_path, engine_profiles, settings)
    build = build_record(target, prepared, profiles, settings, strongly_typed, time.perf_counter() - started)
    manifest = make_manifest(target, prepared, plan, engine_profiles, gather_host_facts(), tensorrt_version(trt),
                             build)
    write_plan(target.plan_path, plan, manifest)
    return BuildResult(target.plan_path, manifest_path_for(target.plan_path), manifest, target,
                       time.perf_counter() - started, prepared.notes)


def build_record(target: BuildTarget, prepared: PreparedOnnx, given: Mapping[str, InputProfile] | None,
                 settings: BuildSettings, strongly_typed: bool, seconds: float) -> dict[str, Any]:
    """The manifest's ``build`` section: settings (None = TensorRT's default), notes, time, the command line."""
    return {
        "strongly_typed": strongly_typed, "tf32": False, "workspace_mb": settings.workspace_mb,
        "opt_level": settings.opt_level,
        "timing_cache": str(settings.timing_cache) if settings.timing_cache is not None else None,
        "notes": prepared.notes, "seconds": round(seconds, 3),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": build_command(target, given, settings),
    }


def make_manifest(target: BuildTarget, prepared: PreparedOnnx, plan: bytes, profiles: Profiles, facts: HostFacts,
                  trt_version: str, build: dict[str, Any]) -> EngineManifest:
    """The engine manifest of a finished build (GPU facts "unknown" where the host could not tell)."""
    return EngineManifest(
        tensorrt_version=trt_version, gpu_name=facts.gpu_name or "unknown",
        compute_capability=facts.compute_capability or "unknown", onnx_sha256=prepared.sha256,
        plan_sha256=hashlib.sha256(plan).hexdigest(), profiles=profiles_to_dict(profiles),
        precision=prepared.precision, onnx_path=relative_to_plan(target.onnx_path, target.plan_path),
        plugin=prepared.plugin_nodes > 0, cuda_version=facts.cuda_version, build=build,
    )


def relative_to_plan(onnx_path: Path, plan_path: Path) -> str:
    """The ONNX path as the manifest stores it: relative to the plan's folder where possible."""
    try:
        return os.path.relpath(onnx_path.resolve(), plan_path.resolve().parent)
    except ValueError:  # another drive (Windows)
        return str(onnx_path.resolve())


def write_plan(plan_path: Path, plan: bytes, manifest: EngineManifest) -> None:
    """Write the plan and its manifest beside each other, atomically (staged, then renamed)."""
    with staged_file(plan_path, force=True) as stage:
        write_engine_manifest(stage / manifest_path_for(plan_path).name, manifest)
        (stage / plan_path.name).write_bytes(plan)

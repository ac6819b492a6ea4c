"""``dyt-build``: a TensorRT engine from an ONNX file or a model folder, or (``--backend aoti``) an
AOTInductor package from a model (console script: ``build_app``).

The command line of both builds, at the top layer: it may import ``dyt_deploy.tensorrt`` and, for
the AOTInductor build, ``export`` and ``checkpoint`` (which the TensorRT package itself may not).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from .cli_common import console, err_console, new_app, print_parity, user_errors
from .errors import DytDeployError

if TYPE_CHECKING:
    from .export.aoti import AotiConfig

build_app = new_app("Build a TensorRT engine (model.plan) from ONNX, or an AOTInductor package (model.pt2) "
                    "from a model.")
BACKENDS = ("tensorrt", "aoti")


@build_app.command()
@user_errors
def build(
    source: Path = typer.Argument(..., help="TensorRT: MODEL.onnx, or a model folder REPO/NAME (reads "
                                  "1/model.onnx). aoti: anything dyt-export takes (model.pt, training checkpoint, "
                                  "Hugging Face folder, safetensors)."),
    output: Path = typer.Option(None, "-o", "--output", help="The file to write [default: REPO/NAME/1/model.plan "
                                "for a folder, MODEL.plan beside an .onnx; aoti: MODEL.pt2 beside the model]; an "
                                "existing plan is replaced."),
    backend: str = typer.Option("tensorrt", help="tensorrt: a TensorRT engine; aoti: an AOTInductor package "
                                "(torch.export + torch._inductor.aoti_compile_and_package), verified against "
                                "PyTorch."),
    profile: list[str] = typer.Option(None, "--profile", help="TensorRT: NAME=min:opt:max shape range of an input, "
                                      "shapes like 1x3x224x224; repeat per input [default: from the model's dynamic "
                                      "dims: batch 1/8/32, seq 1/128/max length]."),
    timing_cache: Path = typer.Option(None, "--timing-cache", help="TensorRT: timing cache file to start from and "
                                      "update (speeds up rebuilds on the same GPU)."),
    workspace: int = typer.Option(None, "--workspace", help="TensorRT: workspace memory limit in MiB [default: "
                                  "TensorRT's, all device memory]."),
    opt_level: int = typer.Option(None, "--opt-level", help="TensorRT: builder optimization level 0-5 [default: "
                                  "TensorRT's, 3]; higher builds slower and may run faster."),
    device: str = typer.Option(None, help="aoti: cpu or cuda, what the package is compiled for [default: cpu]."),
    dtype: str = typer.Option(None, help="aoti: fp32, fp16 or bf16, the precision the model computes in "
                              "(LayerNorm/RMSNorm stay fp32; inputs and outputs float32) [default: fp32]."),
    repository: Path = typer.Option(None, help="aoti: write a model folder REPOSITORY/NAME (1/model.pt2 + dyt.json) "
                                    "for dyt-serve."),
    name: str = typer.Option(None, help="aoti: the model folder's name [default: ARCH-NORM-aoti]."),
    force: bool = typer.Option(False, "--force", help="aoti: replace an existing package or folder."),
    arch: str = typer.Option(None, help="aoti: zoo architecture, for checkpoints that do not record one."),
    input_shape: list[str] = typer.Option(None, "--input-shape", help="aoti: NAME=d0,d1,...[:dtype] per input, for "
                                          "models outside the zoo (dim 0 batch, dim 1 of integer inputs seq)."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="aoti: allow pickled Python objects (trusted "
                                      "files)."),
    weights: str = typer.Option(None, help="aoti: training checkpoints: model or ema [default: ema when present]."),
    samples: int = typer.Option(None, help="aoti: verification inputs, at batch 2, 3, 1, ... [default: 3]."),
) -> None:
    """Build a TensorRT engine and its manifest (model.plan.json), for TensorRT 10.x and 11.x; or, with
    --backend aoti, an AOTInductor package (model.pt2) checked against PyTorch at several batch sizes.

    Engines keep the ONNX file's precision (strongly typed; for fp16 export with --dtype fp16) and
    build with TF32 off. Needs TensorRT and an NVIDIA GPU; without them it stops with one line.
    AOTInductor packages need a C++ compiler (g++) and, for --device cuda, a CUDA GPU.
    """
    if backend not in BACKENDS:
        raise DytDeployError(f"unknown --backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    trt_only = {"--profile": profile, "--timing-cache": timing_cache, "--workspace": workspace,
                "--opt-level": opt_level}
    aoti_only = {"--device": device, "--dtype": dtype, "--repository": repository, "--name": name, "--force": force,
                 "--arch": arch, "--input-shape": input_shape, "--trust-pickle": trust_pickle, "--weights": weights,
                 "--samples": samples}
    _refuse_options(backend, trt_only if backend == "aoti" else aoti_only)
    if backend == "aoti":
        from .export.aoti import AotiConfig

        config = AotiConfig(device=device or "cpu", dtype=dtype or "fp32", arch=arch, trust_pickle=trust_pickle,
                            weights=weights, input_shapes=input_shape or None, repository=repository, name=name,
                            force=force, samples=3 if samples is None else samples)
        _build_aoti(source, output, config)
        return
    _build_tensorrt(source, output, profile, timing_cache, workspace, opt_level)


def _refuse_options(backend: str, others: dict[str, object]) -> None:
    given = [flag for flag, value in others.items() if value not in (None, False, [])]
    if given:
        other = "aoti" if backend == "tensorrt" else "tensorrt"
        raise DytDeployError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for --backend {other}, "
                             f"not {backend}")


def _progress(step: str) -> None:
    from rich.markup import escape

    err_console.print(f"[dim]… {escape(step)}[/]", highlight=False)


def _build_tensorrt(source: Path, output: Path | None, profile: list[str] | None, timing_cache: Path | None,
                    workspace: int | None, opt_level: int | None) -> None:
    from rich.markup import escape

    from .tensorrt.build import build_engine
    from .tensorrt.profiles import parse_profiles

    result = build_engine(source, output, profiles=parse_profiles(profile), timing_cache=timing_cache,
                          workspace_mb=workspace, opt_level=opt_level, progress=_progress)
    manifest = result.manifest
    ranges = ", ".join(f"{name} {r['min']}..{r['max']}" for name, r in manifest.profiles.items()) or "static shapes"
    lines = [f"note: {note}" for note in result.notes] + [
        f"TensorRT {manifest.tensorrt_version} on {manifest.gpu_name} (compute {manifest.compute_capability}), "
        f"precision {manifest.precision}, profile: {ranges}",
        f"wrote {result.plan_path} and {result.manifest_path.name} in {result.seconds:.1f} s",
    ]
    for line in lines:
        console.print(escape(line), highlight=False)


def _build_aoti(source: Path, output: Path | None, config: AotiConfig) -> None:
    """Build, verify and write the package; print the parity table, a PASSED/FAILED line and what was written."""
    from rich.markup import escape

    from .export.aoti import AotiVerificationFailed, build_aoti

    title = f"AOTInductor package ({config.device}, {config.dtype}) vs PyTorch"
    try:
        result = build_aoti(source, output, config, progress=_progress)
    except AotiVerificationFailed as failure:
        print_parity(failure.result.parity, title)
        err_console.print(f"[bold red]error:[/] {escape(str(failure))}", highlight=False)
        sys.exit(1)
    for note in result.notes:
        console.print(escape(f"note: {note}"), highlight=False)
    if result.parity is not None:
        print_parity(result.parity, title)
    dynamic = ", ".join(result.manifest["dynamic"]) or "none (static shapes)"
    written = f"{result.model_dir} (1/model.pt2, dyt.json)" if result.model_dir else str(result.package_path)
    console.print(escape(f"dynamic dims: {dynamic}; wrote {written} in {result.seconds:.1f} s"), highlight=False)

"""``dyt-build``: a TensorRT engine from an ONNX file or a model folder (console script: ``build_app``)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..cli_common import console, err_console, new_app, user_errors

build_app = new_app("Build a TensorRT engine (model.plan) from ONNX.")


@build_app.command()
@user_errors
def build(
    source: Path = typer.Argument(..., help="MODEL.onnx, or a model folder REPO/NAME (reads 1/model.onnx)."),
    output: Path = typer.Option(None, "-o", "--output", help="The plan to write [default: REPO/NAME/1/model.plan "
                                "for a folder, MODEL.plan beside an .onnx]; an existing one is replaced."),
    profile: list[str] = typer.Option(None, "--profile", help="NAME=min:opt:max shape range of an input, shapes "
                                      "like 1x3x224x224; repeat per input [default: from the model's dynamic dims: "
                                      "batch 1/8/32, seq 1/128/max length]."),
    timing_cache: Path = typer.Option(None, "--timing-cache", help="Timing cache file to start from and update "
                                      "(speeds up rebuilds on the same GPU)."),
    workspace: int = typer.Option(None, "--workspace", help="Workspace memory limit in MiB [default: TensorRT's, "
                                  "all device memory]."),
    opt_level: int = typer.Option(None, "--opt-level", help="Builder optimization level 0-5 [default: TensorRT's, "
                                  "3]; higher builds slower and may run faster."),
) -> None:
    """Build a TensorRT engine and its manifest (model.plan.json), for TensorRT 10.x and 11.x.

    Engines keep the ONNX file's precision (strongly typed; for fp16 export with --dtype fp16) and
    build with TF32 off. Needs TensorRT and an NVIDIA GPU; without them it stops with one line.
    """
    from rich.markup import escape

    from .build import build_engine
    from .profiles import parse_profiles

    result = build_engine(source, output, profiles=parse_profiles(profile), timing_cache=timing_cache,
                          workspace_mb=workspace, opt_level=opt_level,
                          progress=lambda step: err_console.print(f"[dim]… {escape(step)}[/]", highlight=False))
    manifest = result.manifest
    ranges = ", ".join(f"{name} {r['min']}..{r['max']}" for name, r in manifest.profiles.items()) or "static shapes"
    lines = [f"note: {note}" for note in result.notes] + [
        f"TensorRT {manifest.tensorrt_version} on {manifest.gpu_name} (compute {manifest.compute_capability}), "
        f"precision {manifest.precision}, profile: {ranges}",
        f"wrote {result.plan_path} and {result.manifest_path.name} in {result.seconds:.1f} s",
    ]
    for line in lines:
        console.print(escape(line), highlight=False)

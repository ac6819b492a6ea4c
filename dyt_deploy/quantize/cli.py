"""``dyt quantize MODEL -o OUT.onnx`` (and what ``dyt-export --precision int8`` prints)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from ..cli_common import console, err_console, print_error, user_errors

ACTIVATIONS_HELP = ("Inputs the DyT math does not bound (attention/MLP interiors, post-LayerNorm): dynamic (ranges "
                    "measured per call, no data), static (ranges from --calibration) or float (left fp32).")


def _progress(event: str, step: str, seconds: float) -> None:
    if event == "start":
        err_console.print(f"[dim]… {step}[/]", highlight=False)
    else:
        err_console.print(f"[green]✓[/] {step} [dim]({seconds:.1f} s)[/]", highlight=False)


@user_errors
def quantize(
    model: Path = typer.Argument(..., help="Anything dyt-export takes (model.pt, a training checkpoint, a Hugging Face "
                                 "folder), or an exported fp32 .onnx."),
    output: Path = typer.Option(None, "-o", "--output", help="INT8 ONNX file to write [default: MODEL.int8.onnx]."),
    activations: str = typer.Option("dynamic", help=ACTIVATIONS_HELP),
    calibration: Path = typer.Option(None, help="A .npz of model inputs (one array per input, first dim = samples) "
                                     "for --activations static."),
    fold: bool = typer.Option(True, "--fold/--no-fold", help="Fold DyT gamma/beta into the next linear layers first "
                              "(their input is then tanh(alpha*x): scale 1/127)."),
    data: Path = typer.Option(None, help="Held-out .npz with labels for the agreement/accuracy verdict [default: a "
                              "reference twin's test set]."),
    reduce_range: bool = typer.Option(True, "--reduce-range/--full-range-weights", help="7-bit weights (correct on "
                                      "x86 CPUs without VNNI) or full 8-bit (VNNI CPUs only)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Judge the INT8 model before writing it."),
    repository: Path = typer.Option(None, help="Write a model folder REPOSITORY/NAME instead of one file."),
    name: str = typer.Option(None, help="Model folder name [default: ARCH-NORM-int8]."),
    family: str = typer.Option(None, help="Family of the folder [default: ARCH-int8]."),
    backend: str = typer.Option("onnxruntime", help="With --repository: onnxruntime (1/model.onnx) or openvino "
                                "(the INT8 IR, 1/model.xml)."),
    arch: str = typer.Option(None, help="Zoo architecture, for checkpoints that do not record one."),
    weights: str = typer.Option(None, help="Training checkpoints: model or ema weights [default: ema if present]."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow pickled Python objects in MODEL."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output."),
) -> None:
    """Quantize MODEL to INT8: DyT-fed linear inputs get their scale from the graph (no data), the
    rest as --activations says; verify against fp32, then write.

    Nothing is written when the verdict fails (exit status 1) or on any error (exit status 2).
    """
    from ..export.config import ExportConfig
    from .config import QuantizeOptions

    export = ExportConfig(arch=arch, repository=repository, name=name, family=family, force=force,
                          trust_pickle=trust_pickle, weights=weights, backend=backend)
    options = QuantizeOptions(activations=activations, calibration=calibration, fold=fold, data=data,
                              reduce_range=reduce_range, verify=verify)
    run_quantize(model, output, export, options)


def run_quantize(model: Path, output: Path | None, export: Any, options: Any) -> None:
    """Quantize, print what was quantized how and the verdicts; exit 1 when the verdict fails."""
    from .api import Int8VerificationFailed, quantize_model

    try:
        result = quantize_model(model, output, export, options, progress=_progress)
    except Int8VerificationFailed as failure:
        print_summary(failure.result)
        print_error(f"{failure}; nothing written (--no-verify writes it anyway)")
        sys.exit(1)
    print_summary(result)
    console.print(f"wrote {result.model_dir or result.path} in {result.seconds:.1f} s", highlight=False)


def print_summary(result: Any) -> None:
    """What was quantized how (per input kind), the notes, the kernels each runtime runs, the verdicts."""
    for kind, hows in result.plan.table().items():
        console.print(f"linear inputs after {kind}: " + ", ".join(f"{n} {how}" for how, n in hows.items()),
                      highlight=False)
    scales = sorted({round(s.scale, 6) for s in result.plan.fixed_sites()})
    data = "needs calibration data" if result.plan.needs_data else "no data needed"
    console.print(f"static scales from the DyT math: {', '.join(map(str, scales)) or 'none'} ({data})",
                  highlight=False)
    for note in result.plan.notes:
        console.print(f"note: {note}", highlight=False)
    if result.fused:
        console.print("onnxruntime kernels: " + ", ".join(f"{k} {v}" for k, v in result.fused.items()),
                      highlight=False)
    if result.openvino:
        layers = result.openvino.get("linear_layers", {})
        vnni = {True: "", False: " (this CPU has no VNNI: OpenVINO quantizes no activations per call, and its INT8 "
                                  "kernels are slow here)", None: ""}[result.openvino.get("vnni")]
        console.print("OpenVINO linear layers: " + ", ".join(f"{v} {k}" for k, v in layers.items()) + vnni,
                      highlight=False)
    for v in result.verdicts:
        _parity_table(v)
        line = f"{v.runtime}: cosine {v.cosine:.5f} (at least {v.min_cosine})"
        if v.agreement is not None:
            line += f", top-1 agreement {v.agreement:.2%} on {v.samples} held-out samples"
        if v.accuracy is not None:
            line += f", accuracy {v.accuracy:.2%} vs fp32 {v.reference_accuracy:.2%}"
        console.print(f"{line}: {'PASSED' if v.passed else 'FAILED ' + '; '.join(v.problems)}", highlight=False)


def _parity_table(verdict: Any) -> None:
    """The seeded-input figures (max/p99 error, cosine, top-1) without fp32's elementwise verdict."""
    from rich.table import Table

    from ..parity import PARITY_COLUMNS

    table = Table(*PARITY_COLUMNS[:-1], title=f"INT8 ({verdict.runtime}) vs fp32, {len(verdict.parity.shapes)} "
                                             "seeded inputs")
    for row in verdict.parity.rows():
        table.add_row(*row[:-1])
    console.print(table)

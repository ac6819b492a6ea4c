"""Command-line entry points: one ``dyt`` command with a subcommand per tool (``dyt export``,
``dyt check``, ...), and the same commands as ``dyt-export``, ``dyt-check``, ... console scripts.

Each command is a thin layer over the Python API; errors go through the one handler in
``cli_common`` (one ``error:`` line, exit status 2).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from .cli_common import console, err_console, new_app, print_error, print_parity, user_errors
from .errors import DytDeployError

zoo_app = new_app("The model zoo: list architectures, write a model.pt.", no_args_is_help=True)


# The zoo at a glance, without importing torch (which takes seconds): architecture, family, default
# norm, parameters with that norm. tests/test_zoo_catalog.py checks every row against the built models.
ZOO_CATALOG: tuple[tuple[str, str, str, int], ...] = (
    ("bert_small", "bert", "layernorm", 17330690),
    ("bert_tiny", "bert", "layernorm", 610178),
    ("convnext_base", "convnext", "layernorm", 88591464),
    ("convnext_large", "convnext", "layernorm", 197767336),
    ("convnext_small", "convnext", "layernorm", 50223688),
    ("convnext_tiny", "convnext", "layernorm", 28589128),
    ("llama_small", "llama", "rmsnorm", 33694208),
    ("llama_tiny", "llama", "rmsnorm", 3688704),
    ("vit_base", "vit", "layernorm", 86567656),
    ("vit_large", "vit", "layernorm", 304326632),
    ("vit_small", "vit", "layernorm", 22050664),
    ("vit_tiny", "vit", "layernorm", 5717416),
)


@zoo_app.command("list")
def zoo_list() -> None:
    """List the zoo's architectures with their family and parameter count."""
    table = Table("architecture", "family", "default norm", "parameters")
    for name, family, norm, params in ZOO_CATALOG:
        table.add_row(name, family, norm, f"{params / 1e6:.1f} M")
    console.print(table)


@zoo_app.command("create")
@user_errors
def zoo_create(
    name: str = typer.Argument(..., help="Architecture, e.g. vit_small (see `dyt-zoo list`)."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the model.pt."),
    norm: str = typer.Option(None, help="layernorm, rmsnorm, dyt or derf (default: the architecture's own)."),
    seed: int = typer.Option(0, help="Weights outside the norm layers depend on this seed only."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
) -> None:
    """Build a zoo model with random weights and save it as a dyt-deploy model.pt."""
    from .checkpoint import save_checkpoint
    from .models import create_model

    if output.exists() and not force:
        raise DytDeployError(f"{output} exists; pass --force to overwrite it")
    model = create_model(name, norm=norm, seed=seed)
    save_checkpoint(model, output)
    console.print(f"wrote {output} ({name}, norm {model.config['norm']}, seed {seed})")


def _progress_printer() -> Callable[[str, str, float], None]:
    def report(event: str, step: str, seconds: float) -> None:
        if event == "start":
            err_console.print(f"[dim]… {step}[/]", highlight=False)
        else:
            err_console.print(f"[green]✓[/] {step} [dim]({seconds:.1f} s)[/]", highlight=False)

    return report


export_app = new_app("Export a model.pt to verified ONNX.")
WEIGHTS_HELP = ("Training checkpoints: model or ema, the weights to use [default: ema when the checkpoint has "
                "them (model_ema), else model].")


@export_app.command()
@user_errors
def export(
    model: Path = typer.Argument(..., help="model.pt (dyt-deploy, state_dict, training checkpoint), a .pt2, or a "
                                 "Hugging Face folder (save_pretrained; needs transformers)."),
    output: Path = typer.Option(None, "-o", "--output", help="ONNX file to write [default: MODEL with .onnx]."),
    arch: str = typer.Option(None, help="Zoo architecture, for checkpoints that do not record one."),
    form: str = typer.Option("pattern", help="DyT in ONNX: pattern (Mul/Tanh/Mul/Add), function (one "
                             "DynamicTanh node with a function body) or plugin (bodiless, for TensorRT)."),
    opset: int = typer.Option(20, help="ONNX opset."),
    dynamic: str = typer.Option(None, help="Dims left dynamic: batch,seq (default: all the model has) or none."),
    input_shape: list[str] = typer.Option(None, "--input-shape", help="NAME=d0,d1,...[:dtype] per input; "
                                          "needed for models outside the zoo. Repeat per input."),
    dtype: str = typer.Option("fp32", help="fp32 or fp16 (LayerNorm/RMSNorm keep fp32 inside)."),
    fold: bool = typer.Option(False, "--fold", help="Fold DyT gamma/beta into the linear layers after it."),
    atol: float = typer.Option(None, help="Absolute tolerance [default: 1e-4 fp32, 2e-2 fp16]."),
    rtol: float = typer.Option(None, help="Relative tolerance [default: 1e-3 fp32, 2e-2 fp16]."),
    samples: int = typer.Option(3, help="Verification inputs (the first at the export shape, then others)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check ONNX against PyTorch before writing."),
    repository: Path = typer.Option(None, help="Write a model folder REPOSITORY/NAME (Triton layout) instead."),
    name: str = typer.Option(None, help="Model folder name [default: ARCH-NORM]."),
    family: str = typer.Option(None, help="Family shared by the norm variants of one model [default: ARCH]."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow model.pt files holding pickled "
                                      "Python objects (runs code from the file: trusted files only)."),
    weights: str = typer.Option(None, help=WEIGHTS_HELP),
    backend: str = typer.Option("onnxruntime", help="With --repository: the folder's runtime, onnxruntime "
                                "(1/model.onnx) or openvino (1/model.xml + model.bin, OpenVINO IR converted from "
                                "the verified ONNX and verified in OpenVINO)."),
    task: str = typer.Option("default", help="default (one forward pass) or text-generation (a zoo llama decoder "
                             "with past key/values, checked by greedy decoding; -o is a folder with model.onnx and "
                             "genai_config.json for onnxruntime-genai)."),
    precision: str = typer.Option("fp32", help="fp32, or int8: DyT folded and quantized (QDQ; DyT-fed inputs at "
                                  "the scale the graph gives, no data; see dyt quantize), judged by the INT8 "
                                  "verdict; a folder's default name gets -int8."),
    activations: str = typer.Option("dynamic", help="int8: inputs the DyT math does not bound: dynamic (no data), "
                                    "static (--calibration) or float."),
    calibration: Path = typer.Option(None, help="int8 with --activations static: a .npz of model inputs."),
) -> None:
    """Export MODEL to ONNX with DyT in the chosen form, verify it against PyTorch, and write it.

    Nothing is written when verification fails (exit status 1) or on any error (exit status 2).
    """
    from .export import ExportConfig, VerificationFailed, export_model
    from .export.signature import parse_dynamic

    config = ExportConfig(arch=arch, form=form, opset=opset, dynamic=parse_dynamic(dynamic), input_shapes=input_shape,
                          dtype=dtype, fold=fold, atol=atol, rtol=rtol, samples=samples, verify=verify,
                          repository=repository, name=name, family=family, force=force, trust_pickle=trust_pickle,
                          weights=weights, backend=backend, task=task, precision=precision, activations=activations,
                          calibration=calibration)
    if config.precision == "int8":
        from .quantize.cli import run_quantize
        from .quantize.config import QuantizeOptions

        run_quantize(model, output, config, QuantizeOptions(activations=activations, calibration=calibration,
                                                            samples=samples, verify=verify))
        return
    try:
        result = export_model(model, output, config, progress=_progress_printer())
    except VerificationFailed as failure:
        if failure.result.decoding is not None:
            _print_decoding(failure.result.decoding)
        elif failure.result.ir_parity is not None:
            print_parity(failure.result.ir_parity, "OpenVINO IR (CPU) vs PyTorch")
        else:
            print_parity(failure.result.parity, "ONNX (onnxruntime CPU) vs PyTorch")
        print_error(f"{failure}; nothing written (--no-verify writes it anyway)")
        sys.exit(1)
    _print_export_summary(result)


def _print_export_summary(result: Any) -> None:
    if result.weights is not None:
        ema = " (EMA)" if "ema" in result.weights else ""
        console.print(f"weights: {result.weights}{ema}", highlight=False)
    sites = ", ".join(f"{n} {k or 'full'}" for k, n in result.form_counts.items()) or "none"
    console.print(f"form: {result.form} (DyT sites: {sites})", highlight=False)
    if result.fold is not None:
        console.print(f"folded: {result.fold.folded} DyT into {result.fold.linear_layers} linear layers, "
                      f"{result.fold.skipped} left (a consumer is not linear)", highlight=False)
    if result.decoding is not None:
        _print_decoding(result.decoding)
    elif result.parity is not None:
        print_parity(result.parity, "ONNX (onnxruntime CPU) vs PyTorch")
        if result.ir_parity is not None:
            print_parity(result.ir_parity, "OpenVINO IR (CPU) vs PyTorch")
    else:
        console.print("not verified (--no-verify, or the plugin form, which only TensorRT runs)")
    where = result.model_dir or result.onnx_path
    console.print(f"wrote {where} in {result.seconds:.1f} s", highlight=False)


def _print_decoding(decoding: dict[str, Any]) -> None:
    tokens = "equal" if decoding["tokens_equal"] else f"differ from step {decoding['first_difference']}"
    console.print(f"greedy decoding, {decoding['steps']} tokens, onnxruntime vs PyTorch: tokens {tokens}, "
                  f"logits max abs diff {decoding['max_abs_diff']:.3g} (atol {decoding['atol']}, rtol "
                  f"{decoding['rtol']}): {'PASSED' if decoding['passed'] else 'FAILED'}", highlight=False)


generate_app = new_app("Generate text with a decoder (zoo llama model.pt or Hugging Face causal LM folder).")


@generate_app.command()
@user_errors
def generate(
    model: Path = typer.Argument(..., help="A zoo llama model.pt or a Hugging Face causal LM folder."),
    prompt: str = typer.Option(..., "-p", "--prompt", help="The text to continue."),
    max_new_tokens: int = typer.Option(32, "-n", "--max-new-tokens", help="The most tokens to generate."),
    temperature: float = typer.Option(0.0, help="0: greedy; above 0: sample with this temperature."),
    top_k: int = typer.Option(0, help="Sample from the K most likely tokens (0: all)."),
    top_p: float = typer.Option(1.0, help="Sample from the smallest set reaching this probability (1: all)."),
    seed: int = typer.Option(None, help="Sampling seed (same seed, same text) [default: random]."),
    stop: list[int] = typer.Option(None, "--stop", help="A token id that ends generation. Repeat for more."),
    tokenizer: Path = typer.Option(None, help="tokenizer.json or a folder with one [default: MODEL's own for a "
                                   "folder, else UTF-8 bytes]."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow model.pt files holding pickled objects."),
) -> None:
    """Print the prompt's continuation, token by token, then (on stderr) the token count, the time to
    the first token and the speed."""
    from .checkpoint import load_checkpoint
    from .generation import GenerationSettings, Generator
    from .tokenizer import TOKENIZER_FILE, load_tokenizer

    loaded = load_checkpoint(model, trust_pickle=trust_pickle)
    own = model / TOKENIZER_FILE if model.is_dir() and (model / TOKENIZER_FILE).is_file() else None
    generator = Generator(loaded.model, load_tokenizer(tokenizer or own))
    settings = GenerationSettings(max_new_tokens, temperature, top_k, top_p, seed, tuple(stop or ()))
    tokens = []
    for token in generator.stream(prompt, settings):
        tokens.append(token)
        console.print(token.text, end="", highlight=False, markup=False, soft_wrap=True)
    console.print(highlight=False)  # the text ends its line
    err_console.print(generation_summary(tokens), highlight=False)


def generation_summary(tokens: list[Any]) -> str:
    """``[N tokens, first after T ms, S tokens/s; REASON]`` for a stream's generated tokens (the
    first token's time is the time to first token: the prompt's prefill and one step)."""
    if not tokens:
        return "[0 tokens; stop]"
    first, last = tokens[0], tokens[-1]
    speed = f", {len(tokens) / last.seconds:.1f} tokens/s" if last.seconds > 0 else ""
    return f"[{len(tokens)} tokens, first after {first.seconds * 1000:.0f} ms{speed}; {last.finish_reason or 'stop'}]"


form_app = new_app("Convert the DyT form of an ONNX file.")


@form_app.command()
@user_errors
def convert_form(
    source: Path = typer.Argument(..., help="An ONNX file exported by dyt-export (any form)."),
    to: str = typer.Option(..., "--to", help="pattern, function or plugin."),
    output: Path = typer.Option(None, "-o", "--output", help="Where to write [default: SOURCE, needs --force]."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output."),
    check: bool = typer.Option(True, "--check/--no-check", help="Run both files in onnxruntime and refuse "
                               "to write if outputs differ (not possible for the plugin form)."),
) -> None:
    """Rewrite DyT between its ONNX forms without changing the model's outputs."""
    from .export import convert_form_file

    done = convert_form_file(source, output, to, force=force, check=check)
    sites = ", ".join(f"{n} {k or 'full'}" for k, n in done.counts.items()) or "none"
    drift = "not checked" if done.max_abs_diff is None else f"max abs output diff {done.max_abs_diff:.3g}"
    console.print(f"{done.before} -> {done.after}: {sites} DyT sites; {drift}; wrote {done.output}", highlight=False)


check_app = new_app("Check runners against the PyTorch reference.")


@check_app.command()
@user_errors
def check(
    model: Path = typer.Argument(..., help="A model.pt, a Hugging Face folder, or a model folder REPO/NAME "
                                 "written by dyt-export or dyt-build --backend aoti."),
    runners: str = typer.Option(None, help="Comma-separated: torch, torch-compile, torch-triton, ort, ort-cuda, "
                                "ort-trt, openvino, trt, aoti [default: torch-compile,ort for a model.pt; ort (+trt "
                                "with an engine) for a folder; openvino for an OpenVINO folder; aoti for an "
                                "AOTInductor folder]."),
    samples: int = typer.Option(3, help="Seeded inputs; the first at the export shape, the others at other shapes."),
    atol: float = typer.Option(None, help="Absolute tolerance [default: 1e-4 for fp32 runners, 2e-2 for fp16]."),
    rtol: float = typer.Option(None, help="Relative tolerance [default: 1e-3 for fp32 runners, 2e-2 for fp16]."),
    arch: str = typer.Option(None, help="Zoo architecture, for checkpoints that do not record one."),
    json_path: Path = typer.Option(None, "--json", help="Also write the figures as JSON."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow pickled Python objects (trusted files)."),
    weights: str = typer.Option(None, help=WEIGHTS_HELP),
    data: Path = typer.Option(None, help="A .npz of your samples instead of seeded inputs: one array per model "
                              "input, named after it, first dim = samples, optional integer labels. Adds top-1 "
                              "agreement with PyTorch fp32, accuracy, and for language models greedy agreement and "
                              "perplexity; a torch runner may name a precision (torch/fp16)."),
    agreement: str = typer.Option(None, help="With --data: least top-1 agreement per precision, e.g. fp16=0.99 "
                                  "[default: fp32=1, fp16=0.995, bf16=0.995]."),
    prompts: int = typer.Option(8, help="With --data, language models: prompts decoded greedily (16 tokens each)."),
) -> None:
    """Run each runner and the PyTorch reference on the same inputs; one PASSED/FAILED line per runner.
    A text-generation folder is checked by greedy decoding in onnxruntime against PyTorch instead.

    Exit status: 0 all passed, 1 a runner failed, 2 bad input or a missing backend.
    """
    import json

    from .check import check_decoder_folder, check_model, is_decoder_folder

    kinds = [k.strip() for k in runners.split(",") if k.strip()] if runners else None
    if is_decoder_folder(model):  # a text-generation folder: checked by greedy decoding, as its export was
        decoding = check_decoder_folder(model, kinds, atol, rtol, trust_pickle=trust_pickle).to_dict()
        _print_decoding(decoding)
        if json_path:
            json_path.write_text(json.dumps({"ort": decoding}, indent=2) + "\n")
        sys.exit(0 if decoding["passed"] else 1)
    if data is not None:
        from .check_cli import check_on_data

        sys.exit(check_on_data(model, data, kinds, atol, rtol, agreement, prompts, arch, trust_pickle, weights,
                               json_path, _progress_printer()))
    times: dict[str, float] = {}
    show = _progress_printer()

    def progress(event: str, step: str, seconds: float) -> None:
        show(event, step, seconds)
        if event == "done":
            times[step.removeprefix("runner ")] = seconds

    reports = check_model(model, kinds, samples, atol, rtol, arch=arch, trust_pickle=trust_pickle, weights=weights,
                          progress=progress)
    for kind, report in reports.items():
        print_parity(report, f"{kind} vs PyTorch")
    _name_the_slow_runner(times)
    if json_path:
        json_path.write_text(json.dumps({k: r.to_dict() for k, r in reports.items()}, indent=2) + "\n")
    sys.exit(0 if all(r.passed for r in reports.values()) else 1)


def _name_the_slow_runner(times: dict[str, float], slow_s: float = 10.0) -> None:
    """With several runners, name the slowest when it took over ``slow_s`` and how to leave it out."""
    if len(times) < 2 or max(times.values()) < slow_s:
        return
    slowest = max(times, key=times.__getitem__)
    others = ",".join(k for k in times if k != slowest)
    err_console.print(f"slowest: {slowest} ({times[slowest]:.1f} s of {sum(times.values()):.1f} s); "
                      f"leave it out with --runners {others}", highlight=False)


bench_app = new_app("Latency of DyT vs LayerNorm vs RMSNorm variants of one model.")


def _ints(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DytDeployError(f"expected comma-separated integers, got {text!r}") from None


def _overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["depth=2", "alpha_init=0.8"]`` -> ``{"depth": 2, "alpha_init": 0.8}`` (ints, floats, else strings)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DytDeployError(f"bad --set {pair!r}: expected KEY=VALUE, e.g. depth=2")
        for cast in (int, float, str):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
    return out


def _names(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


@bench_app.command()
@user_errors
def bench(
    source: str = typer.Argument(None, metavar="[MODEL]", help="Your model: anything dyt-export takes (a model.pt, an "
                                 "official training checkpoint, a Hugging Face folder, a state dict with --arch), "
                                 "or a zoo name. Its twins with the other norms are built by conversion."),
    model: str = typer.Option(None, "--model", help="Zoo architecture (see dyt-zoo list) [default: vit_small]."),
    arch: str = typer.Option(None, help="MODEL's zoo architecture, for state dicts that do not record one."),
    weights: str = typer.Option(None, help="Training checkpoints: 'model' or 'ema' weights [default: ema if present]."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow MODEL to be a whole pickled nn.Module "
                                      "(unpickling runs code from the file)."),
    input_shape: list[str] = typer.Option(None, "--input-shape", help="MODEL's inputs NAME=d0,d1,...[:dtype] where "
                                          "it does not say them (repeat per input)."),
    variants: str = typer.Option(None, help="layernorm, rmsnorm, dyt, dyt-folded, derf "
                                 "[default: layernorm,rmsnorm,dyt,dyt-folded]."),
    runners: str = typer.Option(None, help="ort, openvino, ort-cuda (ONNX); torch, torch-compile, torch-triton, "
                                "torch-optimize, aoti (AOTInductor packages, compiled per variant) [default: "
                                "ort,openvino on the CPU; torch,torch-compile,torch-triton on CUDA]."),
    batch: str = typer.Option("1,8", help="Batch sizes."),
    seq: str = typer.Option(None, help="Sequence lengths, for token models [default: 128]."),
    threads: int = typer.Option(0, help="Intra-op threads for torch and onnxruntime [default: theirs]."),
    warmup: int = typer.Option(10, help="Warm-up calls per variant and shape."),
    iters: int = typer.Option(50, help="Interleaved rounds (each times every variant once)."),
    optimizers: str = typer.Option(None, "--graph-optimizers", "--optimizers",
                                   help="ONNX graph rewriters tried for the ort runner: none, ort-transformers, "
                                   "onnxscript [default: none,ort-transformers] (not dyt_deploy.optimize, the "
                                   "PyTorch model preparation the torch-optimize runner times)."),
    baseline: str = typer.Option("layernorm", help="The variant ratios are relative to."),
    layer: bool = typer.Option(True, "--layer/--no-layer", help="Also time the norm layer alone (GB/s)."),
    layer_tokens: str = typer.Option("256,1024,4096", help="Token counts of the norm-layer table (at the model's "
                                     "width and 1024)."),
    profile: bool = typer.Option(True, "--profile/--no-profile", help="Also profile onnxruntime per op type."),
    output: Path = typer.Option(Path("reports/bench"), "-o", "--output", help="Report folder."),
    config: list[str] = typer.Option(None, "--set", help="Architecture config override KEY=VALUE, e.g. "
                                     "--set depth=2 --set img_size=64; repeat per key."),
    device: str = typer.Option("cpu", help="cpu or cuda[:N]: where the torch runners run (on CUDA: torch, "
                               "torch-compile, torch-triton by default, timed with CUDA events, in --dtypes)."),
    suite: str = typer.Option("model", help="model: MODEL and its twins on each runner. kernels (CUDA): the norm "
                              "layer alone (copy, LayerNorm, RMSNorm, DyT eager/compiled/Triton kernel) and a "
                              "LLaMA-style decoder; --set then sizes the decoder."),
    tokens: str = typer.Option(None, help="GPU suite: token counts of the layer cases [default: 4096 at widths "
                               "1024-8192 bf16, 16384x4096 bf16, 4096x4096 fp16/fp32]."),
    widths: str = typer.Option(None, help="GPU suite: layer widths (with --tokens) [default: 4096]."),
    dtypes: str = typer.Option(None, help="Precisions of the torch runners: fp32, fp16, bf16 [default: fp32 on the "
                               "CPU, bf16 on CUDA]; kernels suite: of the layer cases (with --tokens)."),
    decoder: bool = typer.Option(True, "--decoder/--no-decoder", help="GPU suite: also time the decoder."),
    task: str = typer.Option("default", help="default, or text-generation: a zoo llama decoder's time to first "
                             "token at prompt lengths --seq [16,64,256] and decode tokens/s at --batch, on torch, "
                             "ort, ort-genai [default model llama_small, variants rmsnorm,dyt, baseline rmsnorm]."),
    decode_tokens: int = typer.Option(32, help="text-generation: decode steps per timed call."),
    data: Path = typer.Option(None, help="A .npz of samples (as dyt-check --data): adds accuracy (or perplexity) per "
                              "variant, runtime and precision; comparable between the reference twins (dyt "
                              "train-reference), not between converted (untrained) twins."),
    precisions: str = typer.Option("fp32", help="Of the ort/openvino runners: fp32 and/or int8 (each variant's "
                                   "INT8 models without calibration data and with it, timed beside fp32)."),
) -> None:
    """Time the norm variants of MODEL on each runner, interleaved, and write report.{json,md,html}."""
    import os

    if suite not in ("model", "kernels"):
        raise DytDeployError(f"--suite {suite!r}: use model or kernels")
    if suite == "kernels":
        _gpu_bench(device, tokens, widths, dtypes, decoder, batch, seq, warmup, iters, config, output)
        return

    # OpenMP threads that spin after torch's calls would slow the onnxruntime call after them
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from rich.progress import Progress

    from .bench.config import BenchConfig

    model_path, model = _bench_source(source, model)
    bench_config = BenchConfig.from_options(
        arch=model, model=model_path, model_arch=arch, weights=weights, trust_pickle=trust_pickle,
        input_shapes=input_shape or None, device=device, dtypes=_names(dtypes) or _default_dtypes(device),
        variants=_names(variants), runners=_names(runners), batches=_ints(batch),
        seqs=_ints(seq),
        optimizers=_names(optimizers), layer_tokens=_ints(layer_tokens), threads=threads, warmup=warmup, iters=iters,
        baseline=baseline, layer=layer, profile=profile, overrides=_overrides(config), task=task,
        decode_tokens=decode_tokens, data=data, precisions=_names(precisions))

    from .bench.api import benchmark
    from .bench.report import RESULT_COLUMNS, SUMMARY_COLUMNS, results_table, summary_table, write_reports

    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task("preparing", total=None)

        def progress(step: str, done: int, total: int) -> None:
            bar.update(task, description=step, completed=done, total=total or None)

        report = benchmark(bench_config, progress)
    paths = write_reports(report, output)
    name = report["settings"]["arch"]
    tables = ((f"{name}: the answer", SUMMARY_COLUMNS, summary_table(report)),
              (f"{name}: median latency, ratio to {report['settings']['baseline']}", RESULT_COLUMNS,
               results_table(report)))
    for title, columns, rows in tables:
        table = Table(*columns, title=title)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    skipped = {"not timed": "not_timed", "optimizer skipped": "optimizers_skipped", "runner skipped": "runners_skipped"}
    for label, key in skipped.items():
        for what, why in report["settings"].get(key, {}).items():
            err_console.print(f"{label}: {what}: {why}", highlight=False)
    from .bench.report import accuracy_headlines, with_summary

    for sentence in accuracy_headlines(with_summary(report)):
        console.print(sentence, highlight=False)
    from .bench.int8 import int8_sentences

    for sentence in int8_sentences(report):
        console.print(sentence, highlight=False)
    console.print(f"wrote {paths['json']}, {paths['md']}, {paths['html']}", highlight=False)


def _default_dtypes(device: str) -> list[str]:
    return ["fp32"] if device == "cpu" else ["bf16"]


def _bench_source(source: str | None, zoo_name: str | None) -> tuple[Path | None, str]:
    """(the user's model path or None, the zoo name): MODEL is a path when one exists, else a zoo name."""
    from .models import list_models

    if source is None:
        return None, zoo_name or "vit_small"
    if zoo_name is not None:
        raise DytDeployError(f"give MODEL ({source}) or --model ({zoo_name}), not both")
    if Path(source).exists():
        return Path(source), "vit_small"
    if source in list_models():
        return None, source
    raise DytDeployError(f"MODEL {source!r} is neither a file or folder nor a zoo architecture "
                         f"({', '.join(list_models())})")


def _gpu_bench(device: str, tokens: str | None, widths: str | None, dtypes: str | None, decoder: bool, batch: str,
               seq: str | None, warmup: int, iters: int, config: list[str] | None, output: Path) -> None:
    """``dyt-bench --device cuda``: the GPU suite, written to gpu_report.{json,md,html}."""
    import torch

    if not device.startswith("cuda"):
        raise DytDeployError(f"--device {device!r}: use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise DytDeployError(f"--device {device}: no CUDA device is visible (PyTorch {torch.__version__} is {build}); "
                             "run on a machine with an NVIDIA GPU, or drop --device for the CPU benchmark")
    from rich.progress import Progress

    from .bench.gpu import DTYPES, LayerCase, run_gpu_benchmark
    from .bench.gpu_report import decoder_table, layer_table, write_gpu_reports

    cases = None
    if tokens or widths or dtypes:
        names = _names(dtypes) or ["bf16"]
        unknown = [d for d in names if d not in DTYPES]
        if unknown:
            raise DytDeployError(f"unknown --dtypes {', '.join(unknown)}; use {', '.join(DTYPES)}")
        cases = [LayerCase(t, w, d) for t in (_ints(tokens) or [4096]) for w in (_ints(widths) or [4096])
                 for d in names]
    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task("preparing", total=None)

        def progress(step: str, done: int, total: int) -> None:
            bar.update(task, description=step, completed=done, total=total or None)

        report = run_gpu_benchmark(device, cases, layer_rounds=iters, decoder=decoder,
                                   decoder_config=_overrides(config), batch=(_ints(batch) or [1])[0],
                                   seq=(_ints(seq) or [4096])[0], warmup=warmup, decoder_rounds=iters,
                                   progress=progress)
    paths = write_gpu_reports(report, output)
    console.print("\n".join(layer_table(report["layer"])), highlight=False)
    if report["decoder"]:
        console.print("\n".join(decoder_table(report["decoder"])), highlight=False)
    for goal in report["goals"]:
        console.print(f"{'met' if goal['met'] else 'NOT MET'}: {goal['goal']}: {goal['measured']}", highlight=False)
    console.print(f"wrote {paths['json']}, {paths['md']}, {paths['html']}", highlight=False)


# ---- the one `dyt` command: every tool above as a subcommand ----

app = new_app("dyt-deploy: DyT transformers from model.pt to verified ONNX, engines, a service and honest "
              "latency comparisons.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
app.command("export")(export)
app.command("form")(convert_form)
app.command("check")(check)
app.command("bench")(bench)
app.command("generate")(generate)


def _mount_build() -> None:
    """``dyt build``, defined beside the engine package."""
    from .build_cli import build

    app.command("build")(build)


_mount_build()


def _mount_reference() -> None:
    """``dyt train-reference``, defined beside the reference package."""
    from .reference.cli import train_reference

    app.command("train-reference")(train_reference)


_mount_reference()


def _mount_quantize() -> None:
    """``dyt quantize``, defined beside the quantize package."""
    from .quantize.cli import quantize

    app.command("quantize")(quantize)


_mount_quantize()


@app.command("serve", add_help_option=False,
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve(ctx: typer.Context) -> None:
    """Serve a model repository over the Open Inference Protocol v2 (same options as dyt-serve; dyt serve --help).

    The service package (FastAPI, uvicorn) loads only when this command runs, found through the
    ``dyt-serve`` console script's entry point: dyt_deploy never imports the service (which builds
    on it).
    """
    from importlib.metadata import entry_points

    found = entry_points(group="console_scripts", name="dyt-serve")
    if not found:
        raise DytDeployError("dyt-serve is not installed; pip install dyt-deploy (the service is part of it)")
    sys.exit(next(iter(found)).load()(list(ctx.args)))

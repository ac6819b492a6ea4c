"""``dyt-check MODEL --data FILE.npz``: the command's side (tables, verdict lines, JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from .cli_common import console, print_parity
from .errors import DytDeployError

DATA_COLUMNS = ["runner", "precision", "samples", "top-1 agreement (floor)", "accuracy (PyTorch fp32)",
                "max abs", "perplexity (PyTorch fp32)", "greedy agreement", "verdict"]


def parse_agreement(text: str | None) -> dict[str, float]:
    """``"fp16=0.99,bf16=0.98"`` -> ``{"fp16": 0.99, "bf16": 0.98}`` (shares in [0, 1])."""
    from .check_data import AGREEMENT_THRESHOLDS

    floors: dict[str, float] = {}
    for part in (p.strip() for p in (text or "").split(",") if p.strip()):
        precision, _, value = part.partition("=")
        try:
            floors[precision] = float(value)
        except ValueError:
            raise DytDeployError(f"--agreement {part!r}: expected PRECISION=SHARE, e.g. fp16=0.99") from None
        if precision not in AGREEMENT_THRESHOLDS or not 0.0 <= floors[precision] <= 1.0:
            raise DytDeployError(f"--agreement {part!r}: precision one of {', '.join(AGREEMENT_THRESHOLDS)}, "
                                 "share between 0 and 1")
    return floors


def check_on_data(model: Path, data: Path, runners: list[str] | None, atol: float | None, rtol: float | None,
                  agreement: str | None, prompts: int, arch: str | None, trust_pickle: bool, weights: str | None,
                  json_path: Path | None, progress: Any) -> int:
    """Run the data check, print its tables and one PASSED/FAILED line per runner; the exit status."""
    from .check import check_model_on_data

    results = check_model_on_data(model, data, runners, atol, rtol, parse_agreement(agreement), prompts=prompts,
                                  arch=arch, trust_pickle=trust_pickle, weights=weights, progress=progress)
    for name, result in results.items():
        print_parity(result.parity, f"{name} vs PyTorch on {data.name}")
    table = Table(*DATA_COLUMNS, title=f"{model} on {data}")
    for result in results.values():
        table.add_row(*data_row(result.figures))
    console.print(table)
    for name, result in results.items():
        console.print(f"{'[bold green]PASSED[/]' if result.passed else '[bold red]FAILED[/]'} {name} on {data.name}: "
                      f"{verdict_text(result.figures)}", highlight=False)
    if json_path:
        json_path.write_text(json.dumps({k: r.to_dict() for k, r in results.items()}, indent=2) + "\n")
    return 0 if all(r.passed for r in results.values()) else 1


def data_row(figures: Any) -> list[str]:
    """One row of :data:`DATA_COLUMNS`."""
    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.2%}"

    accuracy = "-" if figures.accuracy is None else f"{share(figures.accuracy)} ({share(figures.reference_accuracy)})"
    ppl = "-" if figures.perplexity is None else f"{figures.perplexity:.4f} ({figures.reference_perplexity:.4f})"
    greedy = "-" if figures.greedy_agreement is None else (
        f"{share(figures.greedy_agreement)} of {figures.prompts}x{figures.new_tokens}")
    return [figures.runner, figures.precision, str(figures.samples),
            f"{share(figures.agreement)} ({share(figures.threshold)})", accuracy, f"{figures.max_abs:.3g}", ppl,
            greedy, "ok" if figures.passed else "FAIL"]


def verdict_text(figures: Any) -> str:
    """Why a runner passed or failed, in a clause."""
    parts = [f"top-1 agreement {figures.agreement:.2%} "
             f"{'>=' if figures.agreement_passed else '<'} {figures.threshold:.2%}",
             "within tolerance" if figures.parity_passed else "outside the parity tolerance"]
    if figures.accuracy is not None:
        parts.append(f"accuracy {figures.accuracy:.2%} vs {figures.reference_accuracy:.2%} in PyTorch fp32")
    if figures.perplexity_change is not None:
        parts.append(f"perplexity change {figures.perplexity_change:+.4f}")
    return ", ".join(parts)

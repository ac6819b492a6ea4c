"""Command-line entry points. Each command is a thin layer over the Python API.

Errors of the project's family print as one message (no traceback) and exit with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from .errors import DytDeployError

console = Console()
err_console = Console(stderr=True)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a DytDeployError into ``error: <message>`` on stderr and exit status 2."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except DytDeployError as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False)
            sys.exit(2)

    return run


zoo_app = typer.Typer(help="The model zoo: list architectures, write a model.pt.", no_args_is_help=True,
                      add_completion=False)


@zoo_app.command("list")
def zoo_list() -> None:
    """List the zoo's architectures with their family and parameter count."""
    from .models import create_model, get_arch, list_models

    table = Table("architecture", "family", "default norm", "parameters")
    for name in list_models():
        model = create_model(name)
        params = sum(p.numel() for p in model.parameters())
        table.add_row(name, get_arch(name).family, model.config["norm"], f"{params / 1e6:.1f} M")
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

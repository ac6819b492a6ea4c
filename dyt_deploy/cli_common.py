"""What every dyt-deploy command shares: the Typer app factory, the consoles, and the one error handler.

A :class:`~dyt_deploy.errors.DytDeployError` reaching a command prints as one ``error:`` line on
stderr (no traceback) and exits with status 2; an :class:`~dyt_deploy.errors.OptionError` names
each bad option by its flag. Anything else is a bug and keeps its traceback. Warnings of the model
repository (a stale staging folder removed) print as they are, one line each on stderr.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import DytDeployError, OptionError

# Tables stay readable when output goes to a pipe or a CI log (rich assumes 80 columns there).
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)

# config fields whose flag is not --<field with dashes>
FLAGS = {"input_shapes": "--input-shape", "batches": "--batch", "seqs": "--seq", "overrides": "--set",
         "max_in_flight": "--max-in-flight", "max_body_bytes": "--max-body-mb", "request_timeout_s": "--timeout"}


def flag_of(field: str) -> str:
    """The command-line flag of a config field (``input_shapes`` -> ``--input-shape``)."""
    return FLAGS.get(field, "--" + field.replace("_", "-"))


def error_text(err: BaseException | str) -> str:
    """The message of an error as the CLI shows it: option errors name their flags."""
    if isinstance(err, OptionError):
        return "; ".join(f"{flag_of(field)}: {message}" for field, message in err.problems)
    return str(err)


def print_error(err: BaseException | str) -> None:
    """``error: <message>`` on stderr; brackets in the message are text, not rich markup."""
    err_console.print(f"[bold red]error:[/] {escape(error_text(err))}", highlight=False)


class _StderrLines(logging.Handler):
    """Prints each record's message as one line on stderr (the commands' console)."""

    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(escape(record.getMessage()), highlight=False, soft_wrap=True)


def show_repository_warnings() -> None:
    """Print the model repository's warnings (``removed stale staging folder ... left by process N``)
    on stderr; installed once per process."""
    logger = logging.getLogger("dyt_deploy.repository")
    if not any(isinstance(handler, _StderrLines) for handler in logger.handlers):
        logger.addHandler(_StderrLines(logging.WARNING))


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a DytDeployError into ``error: <message>`` on stderr and exit status 2; show the
    repository's warnings (:func:`show_repository_warnings`)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        show_repository_warnings()
        try:
            return command(*args, **kwargs)
        except DytDeployError as err:
            print_error(err)
            sys.exit(2)

    return run


def new_app(help: str, **kwargs: Any) -> typer.Typer:
    """A Typer app as every dyt-deploy command has it: plain-text help (brackets stay brackets)."""
    return typer.Typer(help=help, add_completion=False, rich_markup_mode=None, **kwargs)


def print_parity(parity: Any, title: str) -> None:
    """The parity table and a PASSED/FAILED line."""
    from .parity import PARITY_COLUMNS

    rule = (f"INT8: cosine >= {parity.min_cosine:g}" if getattr(parity, "min_cosine", None) is not None
            else f"atol {parity.atol:g}, rtol {parity.rtol:g}")
    table = Table(*PARITY_COLUMNS, title=f"{title} ({rule}, {len(parity.shapes)} samples)")
    for row in parity.rows():
        table.add_row(*row)
    console.print(table)
    verdict = "[bold green]PASSED[/]" if parity.passed else "[bold red]FAILED[/]"
    console.print(f"{verdict} {title}")

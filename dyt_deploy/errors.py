"""The project's one exception family.

Every error a user can cause (a bad path, a corrupt file, an unknown name, a wrong shape) is a
``DytDeployError`` whose message says what went wrong and what to do. The CLI prints the message
without a traceback; anything else reaching the CLI is a bug.
"""

from __future__ import annotations


class DytDeployError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class UnknownNameError(DytDeployError, LookupError):
    """A registry lookup (norm kind, architecture, ...) found nothing; the message lists what exists."""


class ConversionError(DytDeployError):
    """A norm layer could not be converted to the requested kind."""


class CheckpointError(DytDeployError):
    """A model.pt could not be read or does not fit its architecture."""


class MissingBackendError(DytDeployError):
    """A backend (onnxruntime-gpu, TensorRT, Triton, CUDA) is not installed or has no device to run
    on; the message names the extra to install."""


class OptionError(DytDeployError, ValueError):
    """One or more options of a config object are invalid.

    ``problems`` holds ``(field, message)`` pairs, all of them; the message is in library terms
    (the field's name), and the CLI shows each field as its flag.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{field}: {message}" for field, message in self.problems))


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none): for wrapping a
    library's multi-line error into one of ours."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def unknown_name(what: str, name: str, known: list[str] | tuple[str, ...]) -> UnknownNameError:
    """Build the standard 'unknown X' error that lists the known names."""
    return UnknownNameError(f"unknown {what} {name!r}; known: {', '.join(sorted(known))}")


def choice_problem(field: str, value: object, choices: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """``[(field, "unknown FIELD 'value'; choose one of ...")]`` when ``value`` is not a choice, else ``[]``:
    one problem in the form the config objects collect for :class:`OptionError`."""
    if value in choices:
        return []
    return [(field, f"unknown {field} {value!r}; choose one of {', '.join(choices)}")]

"""Every command the README and the docs show runs as written.

Commands come from the shell blocks (```sh) and from inline code that starts with one of the project's
tools. Each is checked without running it (running them all would take hours and a GPU):
- the project's console scripts (pyproject's [project.scripts]) are parsed by their own Click
  command, so a missing required option, an unknown option or a bad choice fails here;
- ``make TARGET`` names a target of the Makefile, and a command shown as ``# ~ make TARGET`` is what
  that target runs;
- ``python FILE.py --opt`` names a file that exists and whose ``--help`` lists every option used;
- ``curl`` addresses a route the service has, with that method;
- ``pip install 'dyt-deploy[EXTRA]'`` names extras pyproject defines.
The first hour of the README is run for real by tests/test_readme_first_hour.py.
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import tomllib
import typer

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]


def shell_lines(text: str) -> list[tuple[str, str]]:
    """(command, its trailing comment) of the ```sh blocks, continuation lines joined, comment lines
    dropped."""
    commands = []
    for block in re.findall(r"^```(?:sh|bash|shell)\n(.*?)^```", text, re.S | re.M):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                command, _, comment = re.split(r"(\s#\s?)", line + " # ", maxsplit=1)
                commands.append((command.strip(), comment.strip(" #")))
    return commands


def inline_commands(text: str) -> list[str]:
    """Inline code outside the blocks that starts with a tool of ours and has arguments."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    tools = "|".join(re.escape(name) for name in sorted(SCRIPTS, key=len, reverse=True))
    found = [m for m in re.findall(r"`([^`\n]+)`", prose) if re.match(rf"({tools}) \S", m)]
    return [m for m in found if is_a_command(m)]


def is_a_command(snippet: str) -> bool:
    """Inline code is a command when it gives an argument (``dyt-serve repo``); a tool with options
    alone (``dyt-export --fold``, ``dyt-build --backend aoti``) or a subcommand's name alone
    (``dyt check``, ``dyt-zoo create``) names a feature."""
    argv = shlex.split(snippet, comments=True)
    subcommands = set(getattr(click_command(argv[0]), "commands", {}))
    arguments = [word for before, word in zip(argv, argv[1:], strict=False)
                 if not word.startswith("-") and not before.startswith("-") and word not in subcommands]
    return bool(arguments)


def commands_of(page: Path) -> list[tuple[str, str]]:
    text = page.read_text()
    return shell_lines(text) + [(line, "") for line in inline_commands(text)]


def words(line: str) -> list[list[str]]:
    """The simple commands of a line (split at pipes, ``&&`` and ``;``), env assignments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    parts, current = [], []
    for token in lexer:
        if set(token) <= set("|&;"):
            parts.append(current)
            current = []
        else:
            current.append(token)
    parts.append(current)
    return [drop_env(p) for p in parts if drop_env(p)]


def drop_env(argv: list[str]) -> list[str]:
    while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):
        argv = argv[1:]
    return argv


@cache
def click_command(tool: str) -> Any:
    """The Click command behind a console script: a Typer app, or a ``main`` beside its module's ``app``."""
    module_name, attr = SCRIPTS[tool].split(":")
    module = importlib.import_module(module_name)
    target = getattr(module, attr)
    if not isinstance(target, typer.Typer):
        target = module.app
    return typer.main.get_command(target)


def check_tool(argv: list[str]) -> str | None:
    """Parse ``argv`` with the tool's own Click command (nothing runs); the error, if any."""
    command = click_command(argv[0])
    try:
        context = command.make_context(argv[0], argv[1:])
        while hasattr(command, "get_command") and rest_of(context):  # a group and its subcommand
            name, *rest = rest_of(context)
            sub = command.get_command(context, name)
            if sub is None:
                return f"no subcommand {name!r}"
            command, context = sub, sub.make_context(name, rest, parent=context)
    except Exception as err:  # Typer's Click (vendored): a usage error has format_message, --help exits
        if hasattr(err, "format_message"):
            return err.format_message()
        if type(err).__name__ == "Exit":
            return None
        raise
    return None


def rest_of(context: Any) -> list[str]:
    """What a group's context left for its subcommand (``_protected_args`` in newer Click)."""
    protected = getattr(context, "_protected_args", None) or getattr(context, "protected_args", None) or []
    return [*protected, *context.args]


@cache
def make_targets() -> dict[str, str]:
    """Makefile target -> its recipe (as ``make -n`` prints it, without the install step)."""
    names = re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M)
    recipes = {}
    for name in names:
        done = subprocess.run(["make", "-n", "-s", name, "STAMP=Makefile"], cwd=ROOT, capture_output=True, text=True)
        recipes[name] = re.sub(r"\\\n\s*", " ", done.stdout) if done.returncode == 0 else ""
    return recipes


def check_make(argv: list[str], comment: str) -> str | None:
    targets = [a for a in argv[1:] if "=" not in a and not a.startswith("-")]
    missing = [t for t in targets if t not in make_targets()]
    return f"no make target {missing}" if missing else None


def check_same_as_make(argv: list[str], comment: str) -> str | None:
    """A command shown as ``# ~ make T`` (or ``same as make T``) has every option the recipe gives."""
    found = re.search(r"(?:~|same as) make ([\w-]+)", comment)
    if not found:
        return None
    recipe = make_targets().get(found.group(1), "")
    tool = Path(argv[0]).name
    line = next((ln for ln in recipe.splitlines() if Path(shlex.split(ln)[0]).name == tool), None) if recipe else None
    if line is None:
        return f"make {found.group(1)} does not run {tool}"
    shown, made = argv[1:], shlex.split(line)[1:]
    return None if shown == made else f"make {found.group(1)} runs {shlex.join([tool, *made])}"


@cache
def help_text(script: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    return done.stdout + done.stderr


def check_python(argv: list[str], comment: str) -> str | None:
    if len(argv) < 2 or argv[1] == "-m" or argv[1].startswith("-c"):
        return None
    if not (ROOT / argv[1]).is_file():
        return f"no file {argv[1]}"
    options = {a.split("=")[0] for a in argv[2:] if a.startswith("--")}
    unknown = sorted(o for o in options if o not in help_text(argv[1]))
    return f"{argv[1]} --help does not list {unknown}" if unknown else None


@cache
def service_routes() -> list[tuple[set[str], re.Pattern]]:
    """(methods, path pattern) of every operation in the service's OpenAPI document."""
    from service.http.app import create_app

    paths = create_app(ROOT / "tests", None).openapi()["paths"]
    return [({m.upper() for m in operations}, re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"))
            for path, operations in paths.items()]


def check_curl(argv: list[str], comment: str) -> str | None:
    urls = [a for a in argv if re.match(r"^(https?://)?(localhost|127\.0\.0\.1):\d+", a)]
    if not urls:
        return None
    path = re.sub(r"^(https?://)?[^/]+", "", urls[0]).split("?")[0] or "/"
    method = "POST" if any(a in ("-d", "--data", "--data-binary", "-F") for a in argv) else "GET"
    if "-X" in argv:
        method = argv[argv.index("-X") + 1]
    if any(method in methods and pattern.match(path) for methods, pattern in service_routes()):
        return None
    return f"the service has no {method} {path}"


def check_pip(argv: list[str], comment: str) -> str | None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    for spec in argv[2:]:
        found = re.match(r"^(?:dyt-deploy|\.|-e \.)\[([\w,-]+)\]", spec)
        if found:
            missing = [e for e in found.group(1).split(",") if e not in extras]
            if missing:
                return f"pyproject has no extra {missing}"
    return None


CHECKERS = {"make": check_make, "python": check_python, "python3": check_python, "curl": check_curl,
            "pip": check_pip}


def shown_commands() -> list[tuple[str, str, str]]:
    found = []
    for page in PAGES:
        for line, comment in commands_of(page):
            found.append((str(page.relative_to(ROOT)), line, comment))
    return found


def problems_of(line: str, comment: str) -> list[str]:
    problems = []
    for argv in words(line):
        tool = Path(argv[0]).name
        if tool in SCRIPTS:
            problems.append(check_tool([tool, *argv[1:]]))
            problems.append(check_same_as_make([tool, *argv[1:]], comment))
        elif tool in CHECKERS:
            problems.append(CHECKERS[tool](argv, comment))
    return [p for p in problems if p]


def test_the_pages_show_commands() -> None:
    tools = {Path(w[0]).name for _, line, _ in shown_commands() for w in words(line)}
    assert {"dyt-export", "dyt-check", "dyt-bench", "dyt-serve", "make"} <= tools


def test_every_shown_command_parses() -> None:
    """One run lists every command that would fail as written."""
    failures = []
    for page, line, comment in shown_commands():
        failures += [f"{page}: {line}\n    -> {p}" for p in problems_of(line, comment)]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(("line", "expected"), [
    ("dyt-serve repo", "Missing option '--repository'"),
    ("dyt-export model.pt --no-such-option", "No such option"),
    ("dyt-check model.pt --runners ort", None),
    ("make no-such-target", "no make target"),
    ("curl -s localhost:8000/v2/no/such/route", "the service has no GET"),
    ("pip install 'dyt-deploy[nope]'", "no extra"),
])
def test_the_checker_catches_what_it_should(line: str, expected: str | None) -> None:
    problems = problems_of(line, "")
    assert (expected is None and not problems) or (expected and any(expected in p for p in problems)), problems


def test_a_command_shown_as_a_make_target_must_be_what_it_runs() -> None:
    assert "make bench runs" in problems_of("dyt-bench --model vit_small --runners ort,torch", "~ make bench")[0]

"""Helpers shared by the CLI commands: JSON output, one-line errors, progress bars, mounting groups and jobs."""

from __future__ import annotations

import functools
import importlib
import json
import sys
from collections.abc import Callable
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ray_app.errors import PrismError
from ray_app.settings import Settings
from ray_app.telemetry import logs

console = Console(stderr=True)
JSON_OPTION = typer.Option(False, "--json", help="Print one JSON object on stdout and nothing else.")



class CLIError(PrismError):
    """An error to show the user as one line (raised by the CLI layer itself)."""

    code = "cli_error"


# Errors meant for the user: printed as one line, exit status 2. Anything else is a bug and keeps its
# traceback, bare ValueError and FileNotFoundError included: code below the CLI raises Prism's own types.
USER_ERRORS: tuple[type[BaseException], ...] = (PrismError,)


def emit(obj: dict[str, Any], as_json: bool, human: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Print ``obj`` as one JSON object (``--json``) or hand it to ``human`` for a readable rendering."""
    if as_json:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
        sys.stdout.flush()
    elif human is not None:
        human(obj)
    else:
        console.print_json(json.dumps(obj, default=str))


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def handle_errors(func: Callable) -> Callable:
    """Turn Prism's own errors and invalid settings into one line on stderr and exit status 2.

    Every other exception (a bug) propagates with its traceback.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ValidationError as exc:
            if exc.title != Settings.__name__:
                raise
            first = exc.errors()[0]
            fail(f"invalid setting {'.'.join(map(str, first['loc'])) or ''}: {first['msg']}")
        except USER_ERRORS as exc:
            fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    return wrapper


def progress(quiet: bool = False) -> Progress:
    """A rich progress bar on stderr (so ``--json`` stdout stays clean)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )


def setup_logging(verbose: bool) -> None:
    """Logs on stderr: INFO with ``--verbose``, else WARNING; text, or JSON lines with ``PRISM_LOG_FORMAT=json``."""
    try:
        logs.setup_logging(verbose)
    except PrismError as exc:
        fail(str(exc))


def job_command(app: typer.Typer, name: str, module: str, help: str) -> None:
    """Mount the job ``module`` (one with ``main(argv, prog)``) as the command ``name`` of ``app``.

    The command hands its raw arguments to the job's own parser, so ``--help`` is the job's and the
    options exist once. The module is imported only when the command runs, to keep ``prism --help`` fast.
    """

    @app.command(name, help=help, add_help_option=False,
                 context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    @handle_errors
    def forward(ctx: typer.Context) -> None:
        importlib.import_module(module).main(list(ctx.args), prog=ctx.command_path)


def mount(app: typer.Typer, entries: dict[str, tuple[str, str]]) -> None:
    """Mount command groups or single commands by import path.

    Each module defines ``app`` (a ``typer.Typer``, mounted as a group) or ``command`` (a function,
    mounted as one command). A module that fails to import or defines neither is an error: `--help`
    must list every group that is meant to exist.

    Raises:
        ImportError: a module (or one of its imports) is missing or broken.
        TypeError: a module defines neither ``app`` nor ``command``.
    """
    for name, (module_name, help_text) in entries.items():
        module = importlib.import_module(module_name)
        if isinstance(getattr(module, "app", None), typer.Typer):
            app.add_typer(module.app, name=name, help=help_text)
        elif callable(getattr(module, "command", None)):
            app.command(name, help=help_text)(module.command)
        else:
            raise TypeError(f"{module_name} defines neither `app` (a typer.Typer) nor `command`")

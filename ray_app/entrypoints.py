"""What every job's ``main(argv)`` shares: its parser's common parts, the parse -> run -> print path,
and a clean stdout under ``--json`` (one JSON object, nothing else). ``prism`` forwards to these mains.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ray_app.errors import PrismError


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, as the Typer commands did; an unset one (None, off, empty) its help says."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


class _JobParser(argparse.ArgumentParser):
    """Reports a bad argument as one ``error:`` line (like a Prism error), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def job_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A job's parser: ``prog``, the first paragraph of the module docstring ``doc``, and ``--json``."""
    description = (doc or "").split("\n\n")[0].strip() or None
    parser = _JobParser(prog=prog, description=description, formatter_class=_HelpFormatter)
    parser.add_argument("--json", action="store_true", help="Print one JSON object on stdout and nothing else.")
    return parser


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=``: an integer in ``low..high`` (no upper bound when ``high`` is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {f'in {low}..{high}' if high is not None else f'at least {low}'}, "
                                             f"got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    """An argparse ``type=``: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


@contextlib.contextmanager
def stdout_to_stderr(active: bool) -> Iterator[None]:
    """Send everything written to stdout to stderr while ``active``: file descriptor 1 (Ray's logs and
    child processes included) and ``sys.stdout``, so that with ``--json`` stdout carries only the result."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run_job(parser: argparse.ArgumentParser, argv: Sequence[str] | None, run: Callable[[dict[str, Any]], dict],
            render: Callable[[dict], str] | None = None) -> dict:
    """Parse ``argv``, run the job and print its result; what every job's ``main(argv)`` is.

    Args:
        parser: the job's parser, with ``--json`` (:func:`job_parser`).
        argv: the arguments (None: ``sys.argv[1:]``).
        run: the job, called with the parsed arguments as a dict (``json`` removed).
        render: the result as text for a reader (default: indented JSON); ``--json`` prints one line of JSON.

    Returns:
        What ``run`` returned.

    Raises:
        SystemExit: status 2 with one ``error: ...`` line on stderr for a :class:`PrismError` (or a bad
            argument, from argparse); any other exception is a bug and propagates with its traceback.
    """
    args = vars(parser.parse_args(argv))
    as_json = args.pop("json")
    try:
        with stdout_to_stderr(as_json):
            result = run(args)
    except PrismError as exc:
        parser.exit(2, f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}\n")
    if as_json:
        text = json.dumps(result, default=str)
    else:
        text = render(result) if render is not None else json.dumps(result, indent=2, default=str)
    print(text, flush=True)
    return result

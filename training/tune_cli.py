"""`prism tune sft`: the Ray Tune sweep (``training.tune``); its arguments are the job's own (``main(argv)``)."""

from __future__ import annotations

import typer

from ray_app.cli.common import handle_errors
from training.tune import build_parser

app = typer.Typer(help="Ray Tune sweeps over the training jobs.", no_args_is_help=True)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    help=f"ASHA over LoRA rank x learning rate; prints the best trial and writes best.json.\n\n{build_parser().format_usage()}",
)
@handle_errors
def sft(args: list[str] = typer.Argument(None, help="The job's arguments (see the usage line above).")) -> None:
    from training.tune import main

    main(list(args or []))

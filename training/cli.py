"""`prism train clip|sft|dpo|merge`: launch the Ray Train jobs. Each job module has ``main(argv)``."""

from __future__ import annotations

import importlib
from pathlib import Path

import typer

from ray_app.cli.common import handle_errors

app = typer.Typer(help="Ray Train jobs: image encoder (clip), LLM SFT and DPO.", no_args_is_help=True)
CONFIG = typer.Option(..., "--config", exists=True, dir_okay=False, help="YAML under training/configs/<model>/<method>.yaml.")
OVERRIDES = typer.Argument(None, help="Dotted key=value overrides, e.g. train.max_steps=20 scaling.num_workers=2.")


def _run(module: str, config: Path, overrides: list[str] | None) -> None:
    importlib.import_module(module).main(["--config", str(config), *(overrides or [])])


@app.command(context_settings={"allow_extra_args": False})
@handle_errors
def clip(config: Path = CONFIG, overrides: list[str] = OVERRIDES) -> None:
    """Train the image encoder (open_clip image tower, text side locked to MiniLM)."""
    _run("training.clip", config, overrides)


@app.command()
@handle_errors
def sft(config: Path = CONFIG, overrides: list[str] = OVERRIDES) -> None:
    """Supervised fine-tuning of the LLM (method: lora | qlora | full)."""
    _run("training.sft", config, overrides)


@app.command()
@handle_errors
def dpo(config: Path = CONFIG, overrides: list[str] = OVERRIDES) -> None:
    """DPO on top of an SFT adapter, with a frozen reference."""
    _run("training.dpo", config, overrides)


@app.command()
@handle_errors
def merge(
    adapter: Path = typer.Option(..., "--adapter", exists=True, file_okay=False, help="LoRA checkpoint folder (e.g. RUN/final)."),
    out: Path = typer.Option(..., "--out", help="New folder for the merged full weights."),
) -> None:
    """Merge a LoRA adapter into its base model and write full safetensors weights."""
    from ray_app.llm.checkpoints import merge_adapter

    typer.echo(str(merge_adapter(adapter, out)))

"""`prism tune sft`: a Ray Tune (ASHA) sweep over LoRA rank and learning rate; reports the best trial."""

from __future__ import annotations

from pathlib import Path

import typer

from ray_app.cli.common import JSON_OPTION, emit, handle_errors

app = typer.Typer(help="Ray Tune sweeps over the training jobs.", no_args_is_help=True)


@app.command()
@handle_errors
def sft(
    config: Path = typer.Option(..., "--config", exists=True, dir_okay=False, help="A LoRA SFT YAML (method: lora)."),
    trials: int = typer.Option(4, min=1, help="Trials sampled (rank from --ranks, lr log-uniform)."),
    max_steps: int = typer.Option(20, min=1, help="Steps per trial (ASHA's max_t)."),
    report_every: int = typer.Option(5, min=1, help="Steps between held-out loss reports (ASHA's rung spacing)."),
    ranks: str = typer.Option("4,8,16", help="LoRA ranks to choose from."),
    lr_min: float = typer.Option(1e-4, help="Lowest learning rate."),
    lr_max: float = typer.Option(3e-3, help="Highest learning rate."),
    overrides: list[str] = typer.Argument(None, help="Dotted key=value overrides of the SFT config."),
    as_json: bool = JSON_OPTION,
) -> None:
    """ASHA over LoRA rank x learning rate; prints the best trial and writes best.json."""
    from ray_app.jobconfig import load_config
    from training.sft import SFTConfig
    from training.tune import sweep

    cfg = load_config(SFTConfig, config, overrides or [])
    if not any(o.startswith("output.run_name=") for o in overrides or []):
        cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"run_name": f"tune-{cfg.output.run_name}"})})
    rank_list = tuple(int(r) for r in ranks.split(",") if r.strip())
    if not rank_list or min(rank_list) < 1:
        raise ValueError("--ranks must be positive integers, e.g. 4,8,16")
    if not 0 < lr_min <= lr_max:
        raise ValueError("need 0 < --lr-min <= --lr-max")
    summary = sweep(cfg, trials, max_steps, report_every, rank_list, (lr_min, lr_max))
    emit(summary, as_json, lambda s: typer.echo(f"best: rank={s['best']['rank']} lr={s['best']['lr']:.2e} eval_loss={s['best']['eval_loss']:.4f} ({s['report']})"))

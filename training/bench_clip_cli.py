"""`prism bench clip`: the command over :func:`training.bench_clip.run_benchmark` (mounted by ``ray_app/cli/bench.py``)."""

from __future__ import annotations

from pathlib import Path

import typer

from ray_app.cli.common import JSON_OPTION, emit, handle_errors
from training.bench_clip import WARMUP_STEPS


@handle_errors
def command(
    config: Path = typer.Option(Path("training/configs/clip/demo.yaml"), "--config", help="clip job YAML."),
    steps: int = typer.Option(30, "--steps", min=WARMUP_STEPS + 2, help="Steps on each side."),
    out_dir: Path = typer.Option(None, "--out", help="Also write bench-clip.{json,md} here (e.g. docs/reports)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Ray Train images/s vs a bare single-process loop on the same data and model."""
    from training.bench_clip import run_benchmark, write_report

    result = run_benchmark(config, steps)
    if out_dir is not None:
        write_report(result, out_dir, command=f"prism bench clip --config {config} --steps {steps} --out {out_dir}"
                                              + (" --json" if json_out else ""))
    emit(result, json_out)

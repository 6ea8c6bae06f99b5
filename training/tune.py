"""Ray Tune sweep for LoRA SFT: ASHA over the LoRA rank and the learning rate on a small budget.

Launch::

    prism tune sft --config training/configs/smollm2/lora.yaml --trials 6 --max-steps 30
    ray job submit --working-dir . -- python -m training.tune --config training/configs/smollm2/lora.yaml --trials 6

The config is an SFT LoRA config (``training/configs/<model>/lora.yaml``) plus an optional ``sweep``
section; every field is honoured by the trials or rejected when the config is loaded. Each trial
trains ``train.max_steps`` steps in one process and reports the held-out loss (the last records of
the training file, never trained on in the sweep) every ``train.log_every`` steps; ASHA stops the
weak trials early. ``scaling.num_workers`` trials run at once, each with ``scaling.cpus_per_worker``
CPUs (and a GPU under ``scaling.use_gpu``). The best trial's rank, learning rate, loss and adapter
are printed and written to ``<run.storage_path or $PRISM_HOME/checkpoints>/<run.name>/best.json``; a
rerun with the same ``run.name`` reports a finished sweep, or restores an unfinished one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ray_app.errors import InputError
from ray_app.jobconfig import JobConfigError, StrictModel, load_config
from training.common import (
    LLMDataSection,
    LLMModelSection,
    LLMTrainSection,
    LoraSection,
    RaySection,
    RunSection,
    ScalingSection,
    absolute_model,
    apply_lora,
    autocast,
    build_optimizer,
    check_gpu_request,
    check_resources,
    micro_batch_indices,
    read_records,
    refuse_existing,
    reject_renamed,
    run_dir_of,
    start_ray,
    warmup_schedule,
)

EVAL_FRACTION = 0.2


class SweepSection(StrictModel):
    """The search: which LoRA ranks, which learning rates, how many samples."""

    trials: int = Field(4, ge=1, description="Trials sampled (a rank from ranks, a log-uniform learning rate).")
    ranks: list[int] = Field(default_factory=lambda: [4, 8, 16], min_length=1, description="LoRA ranks to choose from.")
    lr_min: float = Field(1e-4, gt=0, description="Lowest learning rate.")
    lr_max: float = Field(3e-3, gt=0, description="Highest learning rate.")

    @model_validator(mode="after")
    def _check(self) -> SweepSection:
        if min(self.ranks) < 1 or max(self.ranks) > 256:
            raise ValueError(f"sweep.ranks must be LoRA ranks between 1 and 256, got {self.ranks}")
        if self.lr_min > self.lr_max:
            raise ValueError(f"sweep.lr_min={self.lr_min} is above sweep.lr_max={self.lr_max}")
        return self


class TuneConfig(StrictModel):
    """A sweep over an SFT LoRA config (``training/configs/<model>/lora.yaml``).

    Each trial replaces ``lora.r`` by its rank (keeping ``lora.alpha / lora.r`` as the LoRA scale)
    and ``train.lr`` by its learning rate; everything else is trained as the SFT job would.
    """

    method: Literal["lora", "qlora", "full"] = Field("lora", description="Must be lora: the sweep searches LoRA ranks.")
    strategy: Literal["ddp", "deepspeed"] = Field("ddp", description="Must be ddp: a trial is one process.")
    model: LLMModelSection = Field(default_factory=LLMModelSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    data: LLMDataSection = Field(default_factory=LLMDataSection)
    train: LLMTrainSection = Field(default_factory=LLMTrainSection)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    run: RunSection
    ray: RaySection = Field(default_factory=RaySection)
    sweep: SweepSection = Field(default_factory=SweepSection)

    _renamed = model_validator(mode="before")(reject_renamed)

    @model_validator(mode="after")
    def _check(self) -> TuneConfig:
        if self.method != "lora":
            raise ValueError(f"prism tune sft sweeps LoRA ranks: method must be lora, not {self.method}")
        if self.strategy != "ddp":
            raise ValueError(f"a tune trial is one process: strategy must be ddp, not {self.strategy}")
        check_resources(self.scaling, self.ray)
        return self


def trial_config(cfg: TuneConfig, rank: int, lr: float) -> TuneConfig:
    """``cfg`` with this trial's LoRA rank (same alpha / r scale) and learning rate."""
    alpha = max(1, round(rank * cfg.lora.alpha / cfg.lora.r))
    return cfg.model_copy(update={
        "lora": cfg.lora.model_copy(update={"r": rank, "alpha": alpha}),
        "train": cfg.train.model_copy(update={"lr": lr}),
    })  # fmt: skip


def split_eval(records: list[dict], eval_fraction: float = EVAL_FRACTION) -> tuple[list[dict], list[dict]]:
    """Last ``eval_fraction`` of the records (at least one) are held out for the trial metric."""
    n_eval = max(1, int(len(records) * eval_fraction))
    if len(records) <= n_eval:
        raise InputError(f"need more than {n_eval} records to hold some out, got {len(records)}")
    return records[:-n_eval], records[-n_eval:]


def eval_loss(model, examples: list[dict], collate, batch_size: int, device) -> float:
    """Mean loss over ``examples`` (eval mode, no gradients)."""
    import torch

    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            batch = {k: v.to(device) for k, v in collate(chunk).items()}
            total += float(model(**batch).loss) * len(chunk)
            n += len(chunk)
    model.train()
    return total / n


def save_trial_checkpoint(model, optimizer, cfg: TuneConfig, state: dict, out_dir: Path) -> None:
    """The trial's adapter, optimizer state and model spec (loadable like an SFT checkpoint)."""
    from ray_app.llm.checkpoints import save_lm_checkpoint, write_model_spec

    save_lm_checkpoint(model, out_dir, state=state, optimizer=optimizer)
    write_model_spec(out_dir, cfg.model.name, cfg.model.random_init, cfg.model.init_seed, "lora")


def train_trial(trial: dict) -> None:
    """One Tune trial: LoRA SFT at this trial's ``rank`` and ``lr``; reports ``eval_loss`` every ``log_every`` steps."""
    import torch
    from ray import tune

    from ray_app.llm.checkpoints import (
        build_base_model,
        load_optimizer_state,
        load_trainable_weights,
        read_state,
    )
    from ray_app.llm.collate import SFTCollator, render_sft_example

    cfg = trial_config(TuneConfig.model_validate(trial["config"]), trial["rank"], trial["lr"])
    torch.set_num_threads(cfg.scaling.cpus_per_worker)
    torch.manual_seed(cfg.train.seed)
    device = torch.device("cuda" if cfg.scaling.use_gpu else "cpu")
    base, tokenizer = build_base_model(cfg.model.name, cfg.model.random_init, cfg.model.init_seed)
    model = apply_lora(base, cfg.lora).to(device)
    train = [render_sft_example(tokenizer, r, cfg.data.max_len) for r in trial["train"]]
    held_out = [render_sft_example(tokenizer, r, cfg.data.max_len) for r in trial["eval"]]
    collate = SFTCollator(tokenizer.pad_token_id)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg.train)
    start_step = 0
    if (checkpoint := tune.get_checkpoint()) is not None:  # a trial restarted under run.max_failures
        with checkpoint.as_directory() as folder:
            load_trainable_weights(model, folder)
            load_optimizer_state(optimizer, folder)
            start_step = int(read_state(folder).get("step", 0))
    scheduler = warmup_schedule(optimizer, cfg.train, start_step)

    model.train()
    for step in range(start_step, cfg.train.max_steps):
        for micro in range(cfg.train.grad_accum):
            idx = micro_batch_indices(len(train), step * cfg.train.grad_accum + micro, cfg.train.batch_size, cfg.train.seed)
            batch = {k: v.to(device) for k, v in collate([train[i] for i in idx]).items()}
            with autocast(cfg.train.precision, device):
                loss = model(**batch).loss
            (loss / cfg.train.grad_accum).backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        done = step + 1
        is_final = done == cfg.train.max_steps
        wants_ckpt = is_final or (cfg.train.save_every and done % cfg.train.save_every == 0)
        if wants_ckpt or done % cfg.train.log_every == 0:
            loss = eval_loss(model, held_out, collate, cfg.train.batch_size, device)
            metrics = {"eval_loss": loss if math.isfinite(loss) else 1e9, "step": done}
            with tempfile.TemporaryDirectory() as tmp:
                if wants_ckpt:
                    save_trial_checkpoint(model, optimizer, cfg, metrics, Path(tmp))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp) if wants_ckpt else None)


def build_tuner(cfg: TuneConfig, run_dir: Path, train: list[dict], held_out: list[dict]):
    """A new ``Tuner`` for ``cfg``, or the unfinished one in ``run_dir`` restored (``run.resume``)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    resources = {"cpu": cfg.scaling.cpus_per_worker, "gpu": 1 if cfg.scaling.use_gpu else 0}
    trainable = tune.with_resources(train_trial, resources)
    if run_dir.exists() and tune.Tuner.can_restore(str(run_dir)):
        return tune.Tuner.restore(str(run_dir), trainable, resume_errored=True)
    space = {
        "config": cfg.model_dump(mode="json"),
        "train": train,
        "eval": held_out,
        "rank": tune.choice(list(cfg.sweep.ranks)),
        "lr": tune.loguniform(cfg.sweep.lr_min, cfg.sweep.lr_max),
    }
    every = cfg.train.log_every
    scheduler = ASHAScheduler(time_attr="step", max_t=cfg.train.max_steps, grace_period=min(every, cfg.train.max_steps),
                              reduction_factor=2)  # fmt: skip
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(metric="eval_loss", mode="min", scheduler=scheduler, num_samples=cfg.sweep.trials,
                                    max_concurrent_trials=cfg.scaling.num_workers),  # fmt: skip
        run_config=tune.RunConfig(name=run_dir.name, storage_path=str(run_dir.parent), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=cfg.run.max_failures)),  # fmt: skip
    )


def sweep(cfg: TuneConfig) -> dict:
    """Run the ASHA sweep; returns the best trial (with its adapter) and every trial's last result.

    Raises:
        JobConfigError: a GPU where there is none, or a run folder that may not be reused (before Ray starts).
    """
    import ray

    from ray_app.settings import get_settings

    check_gpu_request(cfg.scaling, cfg.ray)
    run_dir = run_dir_of(cfg.run)
    refuse_existing(run_dir, cfg.run)
    if (run_dir / "best.json").exists():
        return {**json.loads((run_dir / "best.json").read_text()), "already_finished": True, "report": str(run_dir / "best.json")}
    records = read_records(cfg.data.train_path or get_settings().data_dir / "sft" / "train.jsonl", cfg.data.limit,
                           "prism data sft")
    train, held_out = split_eval(records)
    cfg = cfg.model_copy(update={"model": absolute_model(cfg.model)})
    owns_ray = start_ray(cfg.ray, cfg.scaling)
    try:
        started = time.perf_counter()
        results = build_tuner(cfg, run_dir, train, held_out).fit()
    finally:
        if owns_ray:
            ray.shutdown()
    best = results.get_best_result(metric="eval_loss", mode="min")
    summary = {
        "best": {"rank": best.config["rank"], "lr": best.config["lr"], "eval_loss": best.metrics["eval_loss"],
                 "step": best.metrics["step"], "checkpoint": best.checkpoint.path if best.checkpoint else None},
        "trials": [
            {"rank": r.config["rank"], "lr": r.config["lr"], "eval_loss": r.metrics.get("eval_loss"), "steps": r.metrics.get("step")}
            for r in results
            if r.metrics
        ],
        "n_trials": len(results),
        "scheduler": "ASHA",
        "wall_seconds": round(time.perf_counter() - started, 1),
        "n_train": len(train),
        "n_eval": len(held_out),
    }  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "best.json").write_text(json.dumps(summary, indent=2))
    summary["report"] = str(run_dir / "best.json")
    return summary


def build_parser() -> argparse.ArgumentParser:
    """The job's arguments; ``prism tune sft`` passes its command line here unchanged."""
    parser = argparse.ArgumentParser(
        prog="prism tune sft",
        description="ASHA over LoRA rank x learning rate; prints the best trial and writes best.json.",
        epilog="Other arguments are dotted key=value overrides of the config (e.g. data.train_path=FILE.jsonl, "
               "sweep.trials=8, scaling.num_workers=2). Without run.name=..., the run is named tune-<run.name>.",
    )  # fmt: skip
    parser.add_argument("--config", required=True, help="An SFT LoRA YAML (training/configs/<model>/lora.yaml).")
    parser.add_argument("--trials", type=int, help="Trials sampled (sweep.trials).")
    parser.add_argument("--max-steps", type=int, help="Steps per trial, ASHA's max_t (train.max_steps).")
    parser.add_argument("--report-every", type=int, help="Steps between held-out loss reports, ASHA's rung spacing (train.log_every).")
    parser.add_argument("--ranks", help="LoRA ranks to choose from, e.g. 4,8,16 (sweep.ranks).")
    parser.add_argument("--lr-min", type=float, help="Lowest learning rate (sweep.lr_min).")
    parser.add_argument("--lr-max", type=float, help="Highest learning rate (sweep.lr_max).")
    parser.add_argument("--json", action="store_true", help="Print the summary as one JSON object and nothing else.")
    parser.add_argument("overrides", nargs="*", help="Dotted key=value overrides.")
    return parser


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The convenience flags as the dotted overrides they stand for (so the config validates them)."""
    ranks = f"[{args.ranks}]" if args.ranks is not None else None
    pairs = [("sweep.trials", args.trials), ("train.max_steps", args.max_steps), ("train.log_every", args.report_every),
             ("sweep.ranks", ranks), ("sweep.lr_min", args.lr_min), ("sweep.lr_max", args.lr_max)]  # fmt: skip
    return [f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}" for key, value in pairs if value is not None]


def main(argv: list[str] | None = None) -> dict:
    """Entry point of ``prism tune sft`` and ``python -m training.tune``: ``--config YAML [flags] [key=value ...]``.

    Raises:
        JobConfigError: a bad config, override or flag value (before Ray starts).
    """
    args = build_parser().parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    overrides = [*args.overrides, *flag_overrides(args)]
    cfg = load_config(TuneConfig, Path(args.config), overrides)
    if not any(o.startswith("run.name=") for o in overrides):
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"name": f"tune-{cfg.run.name}"})})
    summary = sweep(cfg)
    if args.json:
        print(json.dumps(summary))
    else:
        best = summary["best"]
        print(f"best: rank={best['rank']} lr={best['lr']:.2e} eval_loss={best['eval_loss']:.4f} ({summary['report']})")
    return summary


if __name__ == "__main__":
    try:
        main()
    except JobConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)

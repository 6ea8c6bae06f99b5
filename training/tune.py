"""Ray Tune sweep for LoRA SFT: ASHA over the LoRA rank and the learning rate on a small budget.

Launch::

    prism tune sft --config training/configs/smollm2/lora.yaml --trials 6 --max-steps 30
    ray job submit --working-dir . -- python -m training.tune --config training/configs/smollm2/lora.yaml --trials 6

Each trial trains the SFT config's model for ``max_steps`` in one process (one CPU) and reports
the held-out loss (the last records of the training file, never trained on in the sweep) every
``report_every`` steps; ASHA stops the weak trials early. The best trial's rank, learning rate
and loss are printed and written to ``<checkpoints>/<name>/best.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from ray_app.jobconfig import load_config
from training.sft import SFTConfig, micro_batch_indices, read_jsonl, run_dir_of, start_ray


def split_eval(records: list[dict], eval_fraction: float = 0.2) -> tuple[list[dict], list[dict]]:
    """Last ``eval_fraction`` of the records (at least one) are held out for the trial metric."""
    n_eval = max(1, int(len(records) * eval_fraction))
    if len(records) <= n_eval:
        raise ValueError(f"need more than {n_eval} records to hold some out, got {len(records)}")
    return records[:-n_eval], records[-n_eval:]


def eval_loss(model, examples: list[dict], collate, batch_size: int) -> float:
    """Mean loss over ``examples`` (eval mode, no gradients)."""
    import torch

    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            total += float(model(**collate(chunk)).loss) * len(chunk)
            n += len(chunk)
    model.train()
    return total / n


def train_trial(trial: dict) -> None:
    """One Tune trial: LoRA SFT with this trial's ``rank`` and ``lr``; reports ``eval_loss``."""
    import torch
    from ray import tune

    from ray_app.llm.collate import SFTCollator, render_sft_example
    from training.sft import build_trainable_model

    base = SFTConfig.model_validate(trial["config"])
    cfg = base.model_copy(
        update={
            "lora": base.lora.model_copy(update={"r": trial["rank"], "alpha": 2 * trial["rank"]}),
            "train": base.train.model_copy(update={"lr": trial["lr"]}),
        }
    )
    torch.set_num_threads(1)
    torch.manual_seed(cfg.train.seed)
    model, tokenizer = build_trainable_model(cfg, torch.device("cpu"))
    train = [render_sft_example(tokenizer, r, cfg.data.max_len) for r in trial["train"]]
    held_out = [render_sft_example(tokenizer, r, cfg.data.max_len) for r in trial["eval"]]
    collate = SFTCollator(tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
    model.train()
    for step in range(trial["max_steps"]):
        batch = collate([train[i] for i in micro_batch_indices(len(train), step, cfg.train.batch_size, cfg.train.seed)])
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % trial["report_every"] == 0 or step + 1 == trial["max_steps"]:
            loss = eval_loss(model, held_out, collate, cfg.train.batch_size)
            tune.report({"eval_loss": loss if math.isfinite(loss) else 1e9, "step": step + 1})


def sweep(
    cfg: SFTConfig,
    trials: int = 4,
    max_steps: int = 20,
    report_every: int = 5,
    ranks: tuple[int, ...] = (4, 8, 16),
    lr_range: tuple[float, float] = (1e-4, 3e-3),
    seed: int = 0,
    num_cpus: int = 2,
) -> dict:
    """Run the ASHA sweep; returns the best trial and every trial's last result."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from ray_app.llm.checkpoints import resolve_model_folder
    from ray_app.settings import get_settings

    if cfg.method != "lora":
        raise ValueError("prism tune sft sweeps LoRA rank and learning rate: use a config with method: lora")
    records = read_jsonl(cfg.data.train_path or get_settings().data_dir / "sft" / "train.jsonl", cfg.data.limit)
    train, held_out = split_eval(records)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": str(resolve_model_folder(cfg.model.name).resolve())})})
    run_dir = run_dir_of(cfg.output)
    start_ray(num_cpus)
    space = {
        "config": cfg.model_dump(mode="json"),
        "train": train,
        "eval": held_out,
        "max_steps": max_steps,
        "report_every": report_every,
        "rank": tune.choice(list(ranks)),
        "lr": tune.loguniform(*lr_range),
    }
    scheduler = ASHAScheduler(time_attr="step", max_t=max_steps, grace_period=report_every, reduction_factor=2)
    tuner = tune.Tuner(
        tune.with_resources(train_trial, {"cpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(metric="eval_loss", mode="min", scheduler=scheduler, num_samples=trials, max_concurrent_trials=num_cpus),
        run_config=tune.RunConfig(name=run_dir.name, storage_path=str(run_dir.parent), verbose=0),
    )
    started = time.perf_counter()
    results = tuner.fit()
    best = results.get_best_result(metric="eval_loss", mode="min")
    summary = {
        "best": {"rank": best.config["rank"], "lr": best.config["lr"], "eval_loss": best.metrics["eval_loss"], "step": best.metrics["step"]},
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
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "best.json").write_text(json.dumps(summary, indent=2))
    summary["report"] = str(run_dir / "best.json")
    return summary


def main(argv: list[str] | None = None) -> dict:
    """``python -m training.tune --config YAML [--trials N] [--max-steps N] [key=value ...]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--report-every", type=int, default=5)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    cfg = load_config(SFTConfig, Path(args.config), args.overrides)
    if not any(o.startswith("output.run_name=") for o in args.overrides):
        cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"run_name": f"tune-{cfg.output.run_name}"})})
    summary = sweep(cfg, args.trials, args.max_steps, args.report_every)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

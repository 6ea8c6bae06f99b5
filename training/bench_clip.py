"""`prism bench clip --json`: Ray Train images/s against a bare single-process loop, as a ratio.

    prism bench clip --config training/configs/clip/demo.yaml --steps 30 --json

``run_benchmark`` is the whole benchmark as a plain function; ``prism bench clip`` (``training/bench_clip_cli.py``)
calls it and :func:`write_report` writes ``bench-clip.{json,md}``.

Both sides train the same image tower on the same prepared data (decoded stamps + fixed MiniLM
caption vectors) with the same augmentation, loss and per-worker batch size. The bare loop is one
process with ``scaling.num_workers * scaling.cpus_per_worker`` torch threads (all the cores the Ray run
gets); the Ray side is `training.clip`'s TorchTrainer (DDP over gloo) for the same number of steps.
Images/s counts training images through forward+backward after the first steps (warm-up excluded
on both sides); the Ray figure is the trainer's own measurement, so Ray start-up is reported apart.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from ray_app.jobconfig import load_config
from ray_app.reports import write_report as write_report_files
from training.clip import (
    RATE_WARMUP_STEPS,
    ClipJobConfig,
    ImageTower,
    augment_views,
    batch_loss,
    learning_rate,
    prepare_training_data,
    train,
    use_bf16,
)

WARMUP_STEPS = RATE_WARMUP_STEPS


def bare_train(cfg: ClipJobConfig, data: dict, steps: int, threads: int, seed: int = 0) -> tuple[ImageTower, dict]:
    """Train ``steps`` steps in this process (no Ray, no DDP): each step runs one batch per simulated worker
    (the job's sampling, augmentation, bf16 autocast and loss), then one optimizer step, as DDP averages them.

    Returns:
        The trained module and ``{"images_per_s", "seconds", "losses"}`` (timing excludes the first steps).
    """
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = ImageTower(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    images = torch.from_numpy(np.array(data["images"]))
    caption_ids, label_ids = torch.from_numpy(data["caption_ids"]), torch.from_numpy(data["label_ids"])
    caption_vectors, label_vectors = torch.from_numpy(data["caption_vectors"]), torch.from_numpy(data["label_vectors"])
    photos = torch.from_numpy(np.array(data["background_photos"])) if "background_photos" in data else None
    workers, distinct = cfg.scaling.num_workers, cfg.train.batch_size // cfg.data.views
    bf16 = use_bf16(cfg.train.precision, torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    losses, seen, t0 = [], 0, time.perf_counter()
    for step in range(steps):
        if step == min(WARMUP_STEPS, steps - 1):
            seen, t0 = 0, time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg.train)
        optimizer.zero_grad(set_to_none=True)
        perm, step_loss = torch.randperm(len(images), generator=gen), 0.0
        for worker in range(workers):
            idx = perm[worker * distinct : (worker + 1) * distinct].repeat(cfg.data.views)
            x = augment_views(images[idx], cfg, gen, photos)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                feats = model(x)
            loss = batch_loss(feats.float(), caption_ids[idx], label_ids[idx], caption_vectors, label_vectors,
                              model.logit_scale, cfg) / workers
            loss.backward()
            step_loss += float(loss.detach())
            seen += len(idx)
        optimizer.step()
        losses.append(step_loss)
    elapsed = time.perf_counter() - t0
    return model, {"images_per_s": seen / elapsed if elapsed > 0 else 0.0, "seconds": elapsed, "losses": losses}


def run_benchmark(config: Path, steps: int, overrides: list[str] | None = None) -> dict:
    """Run the bare loop, then the Ray Train job, for ``steps`` steps each; return both rates and their ratio."""
    # The job's own log_every: a report every step would time Ray Train's reporting, not its training.
    cfg = load_config(ClipJobConfig, config, [*(overrides or []), f"train.max_steps={steps}",
                                               f"train.checkpoint_every={steps}"])
    data = prepare_training_data(cfg)
    threads = cfg.scaling.num_workers * cfg.scaling.cpus_per_worker
    load_before = os.getloadavg()[0]
    _, bare = bare_train(cfg, data, steps, threads)
    load_bare = os.getloadavg()[0]  # a shared machine's load changes the comparison: report it per phase
    with tempfile.TemporaryDirectory() as tmp:
        cfg.run.storage_path, cfg.run.name = tmp, "bench-clip"
        started = time.perf_counter()
        summary = train(cfg)
        ray_wall = time.perf_counter() - started
    ray_rate = summary["metrics"]["images_per_s"]
    return {
        "config": str(config),
        "steps": steps,
        "global_batch": cfg.train.batch_size * cfg.scaling.num_workers,
        "num_workers": cfg.scaling.num_workers,
        "threads_total": threads,
        "bare_images_per_s": round(bare["images_per_s"], 2),
        "ray_images_per_s": round(ray_rate, 2),
        "ray_over_bare": round(ray_rate / bare["images_per_s"], 3) if bare["images_per_s"] else None,
        "ray_wall_seconds": round(ray_wall, 1),
        "bare_loop_seconds": round(bare["seconds"], 1),
        "load_avg_1m": {"before": round(load_before, 1), "after_bare": round(load_bare, 1), "after_ray": round(os.getloadavg()[0], 1)},
        "cpu_count": os.cpu_count(),
    }


def render_markdown(result: dict) -> str:
    """``bench-clip.md``: one table of the result's keys and values."""
    rows = "\n".join(f"| {k} | {v} |" for k, v in result.items())
    return (
        "# Ray Train vs a bare loop (image encoder)\n\nGenerated by "
        f"`{result.get('command', 'prism bench clip --out docs/reports --json')}` "
        "(`training/bench_clip.py`); the same numbers are in `bench-clip.json`.\n\n| key | value |\n|---|---|\n" + rows + "\n"
    )


def write_report(result: dict, out_dir: Path, command: str | None = None) -> tuple[Path, Path]:
    """``bench-clip.json`` (with the ``command`` that measured it) and a one-table ``bench-clip.md`` in ``out_dir``."""
    return write_report_files(out_dir, "bench-clip", result, render_markdown, command=command)

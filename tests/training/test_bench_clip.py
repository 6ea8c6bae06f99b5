"""The bare loop `prism bench clip` compares Ray Train against runs the job's own data path (no Ray here)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ray_app.jobconfig import load_config
from training.bench_clip import WARMUP_STEPS, bare_train
from training.clip import ClipJobConfig, ImageTower, prepare_training_data

CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "clip" / "smoke.yaml"


def test_bare_loop_trains_on_the_jobs_views_and_batches():
    cfg = load_config(ClipJobConfig, CONFIG)
    assert cfg.data.views == 2 and cfg.data.photo_backgrounds  # the smoke preset exercises both
    data = prepare_training_data(cfg)
    assert data["background_photos"].shape[1:] == (2 * cfg.model.image_size, 2 * cfg.model.image_size, 3)
    steps = WARMUP_STEPS + 2
    model, result = bare_train(cfg, data, steps, threads=1)
    assert len(result["losses"]) == steps and all(math.isfinite(v) for v in result["losses"])
    # every worker's batch (batch_size views of batch_size / views images) counts, after the warm-up steps
    assert result["images_per_s"] * result["seconds"] == pytest.approx(cfg.train.batch_size * cfg.scaling.num_workers * 2)
    torch.manual_seed(0)
    initial = ImageTower(cfg).visual.state_dict()
    assert any(not torch.equal(v, model.visual.state_dict()[k]) for k, v in initial.items())

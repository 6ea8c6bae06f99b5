"""The clip job end to end on the smoke config: 2 Ray workers (DDP over gloo), a tiny ViT, a few steps.

One run serves every test here (the default suite stays short): rank 0 is killed once after the
first checkpoint, so the same run also shows resume-from-checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ray_app.jobconfig import load_config
from ray_app.models.image import WEIGHTS_NAME, ImageEncoder
from ray_app.raystart import init_ray
from training.clip import ClipJobConfig, ImageTower, instance_loss, main

CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "clip" / "smoke.yaml"
CRASH_AT = 4  # after step-000003 is saved, before step-000006


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    import ray

    storage = tmp_path_factory.mktemp("clip-runs")
    overrides = [f"run.storage_path={storage}", "run.name=smoke", f"train.crash_at_step={CRASH_AT}"]
    init_ray(num_cpus=2, configure_logging=False)
    try:
        summary = main(["--config", str(CONFIG), *overrides])
    finally:
        ray.shutdown()
    cfg = load_config(ClipJobConfig, CONFIG, overrides)
    return summary, cfg, storage / "smoke"


def test_run_layout_and_finite_loss(smoke_run):
    summary, cfg, run_dir = smoke_run
    assert math.isfinite(summary["metrics"]["loss"])
    assert summary["metrics"]["step"] == cfg.train.max_steps
    assert summary["metrics"]["torch_threads"] == cfg.scaling.cpus_per_worker  # one field: Ray CPUs and torch threads
    assert (run_dir / "step-000006" / WEIGHTS_NAME).exists()
    assert (run_dir / "final" / WEIGHTS_NAME).exists()
    assert (run_dir / "config.yaml").exists()
    final_cfg = json.loads((run_dir / "final" / "open_clip_config.json").read_text())
    assert final_cfg["prism"]["step"] == cfg.train.max_steps
    assert len(final_cfg["prism"]["labels"]) == 16
    assert json.loads((run_dir / "final" / "train_summary.json").read_text())["train_images"] > 40
    assert json.loads((run_dir / "metrics.json").read_text())["final"] == str(run_dir / "final")


def test_killed_worker_resumes_from_last_checkpoint(smoke_run):
    summary, cfg, run_dir = smoke_run
    assert (run_dir / ".crashed-once").read_text() == str(CRASH_AT)
    assert summary["metrics"]["resumed_from_step"] == 3
    assert summary["metrics"]["step"] == cfg.train.max_steps


def test_image_tower_changed_and_text_side_locked(smoke_run, text_embedder):
    from ray_app.vision.data import label_vectors

    _, cfg, run_dir = smoke_run
    trained = load_file(str(run_dir / "final" / WEIGHTS_NAME))
    torch.manual_seed(cfg.train.seed)  # the job's initial tower
    initial = ImageTower(cfg).visual.state_dict()
    changed = [k for k, v in initial.items() if not torch.equal(v, trained[f"visual.{k}"])]
    assert len(changed) > len(initial) // 2
    # No text tower is trained or saved: only the fixed MiniLM label vectors ride along, unchanged.
    assert {k for k in trained if not k.startswith("visual.")} == {"logit_scale", "text.label_vectors"}
    np.testing.assert_allclose(trained["text.label_vectors"].numpy(), label_vectors(text_embedder.embed), atol=1e-5)


def test_checkpoint_loads_through_ray_app_loader(smoke_run):
    from ray_app.vision.data import composite_on_white, eval_batch, load_stamp_bank, split_stamps, subsample

    _, cfg, run_dir = smoke_run
    encoder = ImageEncoder(run_dir / "final")
    assert encoder.dim == 384 and encoder.config.image_size == cfg.model.image_size
    bank = load_stamp_bank(subsample(split_stamps()[1], 6), cfg.model.image_size)
    via_loader = encoder.embed([composite_on_white(im) for im in bank.images])

    module = ImageTower(cfg)
    state = load_file(str(run_dir / "final" / WEIGHTS_NAME))
    module.visual.load_state_dict({k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")})
    module.eval()
    with torch.no_grad():
        direct = module(eval_batch(bank.images, cfg.model.image_size)).numpy()
    np.testing.assert_allclose(via_loader, direct, atol=1e-4)
    assert np.allclose(np.linalg.norm(via_loader, axis=1), 1, atol=1e-4)


def test_instance_loss_rewards_views_of_one_image_that_agree():
    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    agreeing = torch.cat([images, images])  # view-major: rows i and 6 + i show image i
    shuffled = torch.cat([images, images[torch.tensor([1, 2, 3, 4, 5, 0])]])
    assert float(instance_loss(agreeing, 2, 0.1)) < 0.01
    assert float(instance_loss(shuffled, 2, 0.1)) > 1.0
    feats = torch.nn.functional.normalize(torch.randn(18, 16), dim=-1).requires_grad_()
    loss = instance_loss(feats, 3, 0.1)  # three views: two positives per row
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0

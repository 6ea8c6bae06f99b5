"""Train Prism's image encoder on its own captioned images (Ray Train, DDP).

    prism train clip --config training/configs/clip/demo.yaml [key=value ...]
    ray job submit --working-dir . -- python -m training.clip --config training/configs/clip/demo.yaml

An open_clip image tower learns to map Tux Paint stamps, the bundled skimage photos and (``data.extra_sources``)
Open Clip Art PNGs and rendered Noto emoji onto the MiniLM vectors of their captions. Every image is
augmented the way users' pictures differ from the stored ones: mirrored, scaled, rotated, cropped and
composited on varied backgrounds (``ray_app.vision.data.augment_batch``). The text
side is locked: caption and label vectors are computed once with the MiniLM embedder and never
change, so one 384-d text vector searches both chunks and images (LiT, with the roles reversed).
The loss is CLIP's symmetric contrastive loss with a learnable temperature; because the text
vectors are fixed, image->text scores every training caption (not only the batch's), and an
optional term scores the 16 category labels. With ``data.views >= 2`` each batch holds several
augmentations of every image and an instance term (SimCLR's NT-Xent) pulls them together, which is
what finding the stored original of a user's mirrored, scaled or re-backgrounded picture needs.
Held-out stamps (``ray_app.vision.data``) are never seen here.

Checkpoints land in ``<run.storage_path>/<run.name>/step-000NNN/`` and ``final/``; each is an open_clip
config JSON plus ``open_clip_model.safetensors`` (``visual.*``) that ``ray_app.models.image.ImageEncoder``
loads. A run whose worker dies restarts from its last checkpoint (``run.max_failures``); a rerun with
the same ``run.name`` resumes from the newest one. The ``scaling``, ``run`` and ``ray`` sections are the
ones every training job shares (``training.common``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

from ray_app.jobconfig import JobConfigError, StrictModel, load_config, save_config, split_argv, step_dir_name
from training.common import (
    RaySection,
    RunSection,
    ScalingSection,
    check_gpu_request,
    check_resources,
    finished_summary,
    fit_trainer,
    lr_multiplier,
    reject_renamed,
    restored_checkpoint,
    resume_point,
    run_dir_of,
)

RATE_WARMUP_STEPS = 3

# --- config -----------------------------------------------------------------------------------


class ModelConfig(StrictModel):
    """The image tower: an open_clip ViT, or a timm model through open_clip's ``timm_model_name``."""

    image_size: int = Field(64, ge=16, le=512, description="Input side in pixels.")
    timm_model_name: str | None = Field(None, description="A timm architecture (e.g. resnet10t); None builds a ViT.")
    layers: int = Field(4, ge=1, le=48, description="ViT depth.")
    width: int = Field(192, ge=16, le=2048, description="ViT width.")
    head_width: int = Field(64, ge=8, description="ViT attention head width.")
    patch_size: int = Field(8, ge=2, le=64, description="ViT patch size.")
    mlp_ratio: float = Field(4.0, gt=0, description="ViT MLP ratio.")
    embed_dim: Literal[384] = Field(384, description="Output size; must match the text embedder (MiniLM: 384).")

    def vision_cfg(self) -> dict:
        """open_clip's ``vision_cfg`` dict for this tower."""
        if self.timm_model_name:
            return {
                "image_size": self.image_size,
                "timm_model_name": self.timm_model_name,
                "timm_model_pretrained": False,
                "timm_pool": "avg",
                "timm_proj": "linear",
            }
        return {
            "image_size": self.image_size,
            "layers": self.layers,
            "width": self.width,
            "head_width": self.head_width,
            "patch_size": self.patch_size,
            "mlp_ratio": self.mlp_ratio,
        }


class DataConfig(StrictModel):
    """Training images: the train split of the stamps, plus the skimage photos."""

    max_stamps: int | None = Field(None, ge=2, description="Use at most this many training stamps (spread over categories).")
    include_photos: bool = Field(True, description="Add the bundled skimage photos (with their captions).")
    bank_size: int | None = Field(None, ge=16, description="Side of the decoded image cache (default: model.image_size).")
    scale_min: float = Field(0.55, gt=0, description="Smallest clip-art size relative to the canvas.")
    scale_max: float = Field(1.1, gt=0, description="Largest (above 1 crops into the clip art).")
    jitter: float = Field(0.3, ge=0, le=1, description="Colour-jitter strength (0 disables).")
    flip: bool = Field(True, description="Random horizontal flips.")
    photo_backgrounds: bool = Field(
        False, description="Also composite on windows of bundled photos (never the evaluation's texture photos).")
    views: int = Field(
        1, ge=1, le=4, description="Augmented views per image in a batch (2+: the instance term has positives).")
    rotation: float = Field(0.0, ge=0, le=180, description="Largest random rotation in degrees, either way (0 disables).")
    extra_sources: list[Literal["openclipart", "emoji"]] = Field(
        default_factory=list, description="More captioned images: Debian openclipart-png and fonts-noto-color-emoji (train split only).")
    max_extra: int | None = Field(None, ge=1, description="Use at most this many extra images (spread evenly).")
    openclipart_skip: list[str] = Field(
        default_factory=lambda: ["computer", "shapes/stars"],
        description="Open Clip Art folders left out of training (application icons; 1,400 near-identical stars).")


class TrainConfig(StrictModel):
    """The optimisation loop."""

    max_steps: int = Field(600, ge=1, description="Optimizer steps (each worker takes one batch per step).")
    batch_size: int = Field(64, ge=2, description="Images per worker per step.")
    lr: float = Field(2e-3, gt=0, description="Peak AdamW learning rate (linear warm-up, cosine decay).")
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(30, ge=0)
    init_temperature: float = Field(0.07, gt=0, lt=1, description="Initial softmax temperature (learned).")
    negatives: Literal["all", "batch"] = Field(
        "all", description="Image->text negatives: every training caption ('all', possible because text is fixed) or the batch's."
    )
    label_loss_weight: float = Field(0.5, ge=0, description="Weight of the 16-category label term (0 disables).")
    instance_loss_weight: float = Field(
        0.0, ge=0, description="Weight of the instance term: views of one image are positives, other images negatives "
        "(needs data.views >= 2; 0 disables).")
    instance_temperature: float = Field(0.1, gt=0, lt=1, description="Softmax temperature of the instance term (fixed).")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: the forward pass under torch.autocast (falls back to fp32 on CPUs without bf16 instructions).")
    checkpoint_every: int = Field(100, ge=1, description="Save step-NNNNNN/ every this many steps (and at the end).")
    log_every: int = Field(10, ge=1)
    keep_checkpoints: int = Field(2, ge=1, description="How many step checkpoints to keep.")
    seed: int = Field(0)
    crash_at_step: int | None = Field(
        None, ge=1, description="Testing only: rank 0 exits once at this step, to exercise resume-from-checkpoint."
    )


class ClipJobConfig(StrictModel):
    """``prism train clip`` config (YAML under training/configs/clip/)."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    scaling: ScalingSection = ScalingSection()
    run: RunSection
    ray: RaySection = RaySection()

    _renamed = model_validator(mode="before")(reject_renamed)

    @model_validator(mode="after")
    def _check(self) -> ClipJobConfig:
        if self.data.scale_min > self.data.scale_max:
            raise ValueError(f"data.scale_min={self.data.scale_min} is above data.scale_max={self.data.scale_max}")
        if self.train.batch_size % self.data.views:
            raise ValueError(f"train.batch_size={self.train.batch_size} is not a multiple of data.views={self.data.views}")
        if self.train.instance_loss_weight > 0 and self.data.views < 2:
            raise ValueError("train.instance_loss_weight > 0 needs data.views >= 2 (its positives are views of one image)")
        if self.train.crash_at_step is not None and self.train.crash_at_step >= self.train.max_steps:
            raise ValueError(f"train.crash_at_step={self.train.crash_at_step} is never reached (train.max_steps="
                             f"{self.train.max_steps})")
        check_resources(self.scaling, self.ray)
        return self


# --- data prepared once on the driver ---------------------------------------------------------


def prepare_training_data(cfg: ClipJobConfig) -> dict:
    """Decode the training images and compute the fixed text vectors (MiniLM) once.

    Returns:
        ``images`` (n, s, s, 4) uint8, ``caption_ids`` (n,) into ``caption_vectors`` (m, 384),
        ``label_ids`` (n,) (-1: no category), ``label_vectors`` (16, 384), ``is_photo`` (n,) bool, and with
        ``data.photo_backgrounds`` ``background_photos`` (k, 2s, 2s, 3) uint8.
    """
    import numpy as np

    from ray_app.corpus import photos
    from ray_app.models.text import get_text_embedder
    from ray_app.vision.data import (
        CATEGORIES,
        label_vectors,
        list_extra_images,
        load_background_photos,
        load_stamp_bank,
        split_extra_images,
        split_stamps,
        square_photo_rgba,
        subsample,
    )

    size = cfg.data.bank_size or cfg.model.image_size
    train, _ = split_stamps()
    train = subsample(train, cfg.data.max_stamps)
    if cfg.data.extra_sources:
        extra, _ = split_extra_images(list_extra_images(cfg.data.extra_sources, tuple(cfg.data.openclipart_skip)))
        train += subsample(extra, cfg.data.max_extra)
    bank = load_stamp_bank(train, size)
    images, captions, cats = list(bank.images), [s.caption for s in bank.stamps], [s.category for s in bank.stamps]
    n_photos = 0
    if cfg.data.include_photos:
        from PIL import Image

        for photo, path in photos.list_photos():
            images.append(square_photo_rgba(Image.open(path), size))
            captions.append(photo.caption)
            cats.append(photo.category)
            n_photos += 1
    unique = sorted(set(captions))
    embedder = get_text_embedder("onnx")
    backgrounds = {"background_photos": load_background_photos(2 * cfg.model.image_size)} if cfg.data.photo_backgrounds else {}
    return backgrounds | {
        "images": np.stack(images),
        "caption_ids": np.array([unique.index(c) for c in captions], dtype=np.int64),
        "caption_vectors": embedder.embed(unique).astype(np.float32),
        "label_ids": np.array([CATEGORIES.index(c) if c in CATEGORIES else -1 for c in cats], dtype=np.int64),
        "label_vectors": label_vectors(embedder.embed).astype(np.float32),
        "is_photo": np.array([False] * len(bank.stamps) + [True] * n_photos),
        "text_model": embedder.model_name,
    }


# --- model, loss, checkpoints (used inside the workers) ---------------------------------------


class ImageTower(torch.nn.Module):
    """The trainable module: open_clip image tower ``visual`` plus a learnable ``logit_scale``."""

    def __init__(self, cfg: ClipJobConfig):
        super().__init__()
        from ray_app.models.image import build_vision_tower

        self.visual = build_vision_tower(cfg.model.embed_dim, cfg.model.vision_cfg())
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / cfg.train.init_temperature)))

    def forward(self, images):
        """Normalised image features, (b, embed_dim)."""
        return torch.nn.functional.normalize(self.visual(images), dim=-1)


def contrastive_loss(feats, caption_ids, caption_vectors, logit_scale, negatives: str):
    """CLIP loss against fixed text vectors; captions shared by several images count as positives.

    Args:
        feats: (b, d) normalised image features.
        caption_ids: (b,) index of each image's caption in ``caption_vectors``.
        caption_vectors: (m, d) fixed, normalised caption vectors.
        logit_scale: scalar tensor (log of the inverse temperature).
        negatives: 'all' scores image->text over every caption, 'batch' over the batch's captions.
    """
    import torch.nn.functional as F

    scale = logit_scale.clamp(max=math.log(100)).exp()
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    batch_text = caption_vectors[caption_ids]
    logits_t2i = scale * batch_text @ feats.T
    loss_t2i = -(F.log_softmax(logits_t2i, dim=1) * same / same.sum(1, keepdim=True)).sum(1).mean()
    if negatives == "all":
        loss_i2t = F.cross_entropy(scale * feats @ caption_vectors.T, caption_ids)
    else:
        loss_i2t = -(F.log_softmax(logits_t2i.T, dim=1) * same / same.sum(1, keepdim=True)).sum(1).mean()
    return (loss_i2t + loss_t2i) / 2


def label_loss(feats, label_ids, label_vectors, logit_scale):
    """Cross-entropy over the 16 fixed category vectors, for images that have a category."""
    import torch.nn.functional as F

    keep = label_ids >= 0
    if not bool(keep.any()):
        return feats.sum() * 0
    scale = logit_scale.clamp(max=math.log(100)).exp()
    return F.cross_entropy(scale * feats[keep] @ label_vectors.T, label_ids[keep])


def instance_loss(feats, views: int, temperature: float):
    """SimCLR's NT-Xent over ``views`` augmented views per image: the other views of an image are its positives.

    Args:
        feats: (views * m, d) normalised features, view-major (rows ``i``, ``m + i``, ... show image ``i``).
        views: views per image (>= 2).
        temperature: fixed softmax temperature.
    """
    import torch.nn.functional as F

    m = feats.shape[0] // views
    owner = torch.arange(m, device=feats.device).repeat(views)
    eye = torch.eye(len(feats), dtype=torch.bool, device=feats.device)
    logits = (feats @ feats.T / temperature).masked_fill(eye, float("-inf"))
    positive = (owner[:, None] == owner[None, :]) & ~eye
    log_prob = F.log_softmax(logits, dim=1).masked_fill(~positive, 0.0)
    return -(log_prob.sum(1) / positive.sum(1)).mean()


def batch_loss(feats, caption_ids, label_ids, caption_vectors, label_vectors, logit_scale, cfg: ClipJobConfig):
    """The job's loss on one worker's batch: the contrastive term, plus the label and instance terms when weighted."""
    loss = contrastive_loss(feats, caption_ids, caption_vectors, logit_scale, cfg.train.negatives)
    if cfg.train.label_loss_weight > 0:
        loss = loss + cfg.train.label_loss_weight * label_loss(feats, label_ids, label_vectors, logit_scale)
    if cfg.train.instance_loss_weight > 0:
        loss = loss + cfg.train.instance_loss_weight * instance_loss(feats, cfg.data.views, cfg.train.instance_temperature)
    return loss


def augment_views(rgba_u8, cfg: ClipJobConfig, gen, photos=None):
    """Training inputs for a batch of bank images with the config's augmentation (``data.*``)."""
    from ray_app.vision.data import augment_batch

    return augment_batch(rgba_u8, cfg.model.image_size, gen, (cfg.data.scale_min, cfg.data.scale_max), cfg.data.jitter,
                         cfg.data.flip, cfg.data.rotation, photos)


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to 5% of the peak."""
    return cfg.lr * lr_multiplier(step, cfg.warmup_steps, decay_steps=max(1, cfg.max_steps - cfg.warmup_steps))


def write_checkpoint(folder: Path, model, optimizer, step: int, cfg: ClipJobConfig, data: dict, extra: dict) -> Path:
    """Write an ImageEncoder-loadable checkpoint (config JSON + safetensors) plus the optimizer state."""
    from safetensors.torch import save_file

    from ray_app.models.image import WEIGHTS_NAME, write_config
    from ray_app.vision.data import CATEGORIES, CLIP_MEAN, CLIP_STD

    tensors = {f"visual.{k}": v.detach().cpu().contiguous() for k, v in model.visual.state_dict().items()}
    tensors["logit_scale"] = model.logit_scale.detach().cpu().reshape(1)
    tensors["text.label_vectors"] = torch.from_numpy(data["label_vectors"])
    save_file(tensors, str(folder / WEIGHTS_NAME))
    write_config(
        folder, cfg.model.embed_dim, cfg.model.vision_cfg(), cfg.model.image_size, data["text_model"], list(CATEGORIES),
        mean=CLIP_MEAN, std=CLIP_STD, extra={"step": step, **extra},
    )
    torch.save({"optimizer": optimizer.state_dict(), "step": step}, folder / "train_state.pt")
    return folder


def restore_checkpoint(folder: Path, model, optimizer) -> int:
    """Load weights and optimizer state from a checkpoint folder; return the step it was taken at."""
    from safetensors.torch import load_file

    from ray_app.models.image import WEIGHTS_NAME

    state = load_file(str(folder / WEIGHTS_NAME))
    model.visual.load_state_dict({k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")})
    model.logit_scale.data.copy_(state["logit_scale"].reshape(()))
    train_state = torch.load(folder / "train_state.pt", weights_only=False)
    optimizer.load_state_dict(train_state["optimizer"])
    return int(train_state["step"])


def maybe_crash(step: int, cfg: TrainConfig, marker: Path) -> None:
    """Testing hook: rank 0 dies (no cleanup, like a lost node) the first time it reaches ``crash_at_step``.

    It first waits until the controller has committed every report made so far: a report still in
    a worker's queue dies with the worker, and then the restart would not find the checkpoint this
    hook is meant to test (a race that showed up on a loaded CI machine).
    """
    if cfg.crash_at_step == step and not marker.exists():
        import ray.train

        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(step))
        os._exit(1)


# --- the loop (one per Ray Train worker) ------------------------------------------------------


def train_loop(loop_config: dict) -> None:
    """Per-worker training loop: sample, augment, contrast against fixed text, report, checkpoint."""
    import numpy as np
    import ray
    import ray.train
    import ray.train.torch

    cfg = ClipJobConfig.model_validate(loop_config["config"])
    data = ray.get(loop_config["data_ref"])
    torch.set_num_threads(cfg.scaling.cpus_per_worker)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    bf16 = use_bf16(cfg.train.precision, device)

    torch.manual_seed(cfg.train.seed)  # same initial tower on every rank and every run
    model = ImageTower(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    start_step = 0
    with restored_checkpoint(loop_config["resume_from"]) as folder:
        if folder is not None:
            start_step = restore_checkpoint(folder, model, optimizer)
    model = ray.train.torch.prepare_model(model)
    core = model.module if hasattr(model, "module") else model

    # Writable copies of the object store's read-only arrays (torch warns on read-only memory).
    images, caption_ids, label_ids, caption_vectors, label_vectors = (
        torch.from_numpy(np.array(data[key]))
        for key in ("images", "caption_ids", "label_ids", "caption_vectors", "label_vectors")
    )
    photos = torch.from_numpy(np.array(data["background_photos"])) if "background_photos" in data else None
    caption_vectors, label_vectors = caption_vectors.to(device), label_vectors.to(device)
    n, bs = len(images), cfg.train.batch_size // cfg.data.views  # distinct images per worker and step
    steps_per_epoch = max(1, n // (bs * world))
    marker = Path(loop_config["run_dir"]) / ".crashed-once"
    t0, seen, last_loss = time.perf_counter(), 0, float("nan")

    for step in range(start_step, cfg.train.max_steps):
        if step == start_step + RATE_WARMUP_STEPS:  # images/s leaves out the first steps (DDP set-up, warm caches)
            t0, seen = time.perf_counter(), 0
        if rank == 0:
            maybe_crash(step, cfg.train, marker)
        # Each epoch is one permutation shared by all ranks (same seed); each rank takes its slice,
        # so a batch never holds the same image twice and ranks never overlap.
        epoch, pos = divmod(step, steps_per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch))
        idx = perm[(pos * world + rank) * bs : (pos * world + rank + 1) * bs]
        if len(idx) < bs:  # fewer images than a global batch: sample with a per-step generator
            idx = torch.randint(0, n, (bs,), generator=torch.Generator().manual_seed(step * 7919 + rank))
        idx = idx.repeat(cfg.data.views)  # view-major: every image once, then again (other augmentations)
        gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step * 131 + rank)
        x = augment_views(images[idx], cfg, gen, photos).to(device)

        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg.train)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            feats = model(x)
        feats = feats.float()
        loss = batch_loss(feats, caption_ids[idx].to(device), label_ids[idx].to(device), caption_vectors, label_vectors,
                          core.logit_scale, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(idx) * world
        last_loss = float(loss.detach())

        done = step + 1
        is_last = done == cfg.train.max_steps
        if done % cfg.train.checkpoint_every == 0 or is_last:
            _report_checkpoint(done, core, optimizer, cfg, data, rank, last_loss, seen, t0, start_step)
        elif done % cfg.train.log_every == 0:
            ray.train.report(_metrics(done, last_loss, core, seen, t0, start_step))


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (``amx_bf16`` or ``avx512_bf16`` in ``/proc/cpuinfo``)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def use_bf16(precision: str, device) -> bool:
    """Autocast to bf16 when asked and the hardware has it (a GPU, or a CPU with bf16 instructions)."""
    if precision != "bf16":
        return False
    if device.type == "cuda" or cpu_has_bf16():
        return True
    print("clip: precision=bf16 asked, but this CPU has no bf16 instructions; training in fp32", file=sys.stderr)
    return False


def _metrics(step: int, loss: float, core, seen: int, t0: float, start_step: int) -> dict:
    elapsed = time.perf_counter() - t0
    return {
        "step": step,
        "loss": loss,
        "temperature": float(1 / core.logit_scale.detach().clamp(max=math.log(100)).exp()),
        "images_per_s": seen / elapsed if elapsed > 0 else 0.0,
        "resumed_from_step": start_step,
        "torch_threads": torch.get_num_threads(),
    }


def _report_checkpoint(step, core, optimizer, cfg, data, rank, loss, seen, t0, start_step) -> None:
    import ray.train

    metrics = _metrics(step, loss, core, seen, t0, start_step)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            write_checkpoint(Path(tmp), core, optimizer, step, cfg, data, {"loss": loss})
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=step_dir_name(step))


# --- the driver -------------------------------------------------------------------------------


def write_final(result_checkpoint, run_dir: Path, summary: dict) -> Path:
    """Copy the last checkpoint to ``final/`` (via a temporary folder, so ``final/`` is never half-written)."""
    final, tmp = run_dir / "final", run_dir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    result_checkpoint.to_directory(str(tmp))
    (tmp / "train_state.pt").unlink(missing_ok=True)
    (tmp / "train_summary.json").write_text(json.dumps(summary, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def train(cfg: ClipJobConfig) -> dict:
    """Run the job and return a summary (final checkpoint, metrics, seconds, images/s).

    Raises:
        JobConfigError: a GPU where there is none, or a run folder that cannot be resumed (before Ray starts).
        RuntimeError: the run failed after ``run.max_failures`` restarts.
    """
    import ray

    from ray_app.models.image import WEIGHTS_NAME

    check_gpu_request(cfg.scaling, cfg.ray)
    run_dir = run_dir_of(cfg.run)
    resume_from = resume_point(run_dir, cfg.run, cfg.train.max_steps, WEIGHTS_NAME)
    if resume_from is not None and resume_from.name == "final":
        return {**finished_summary(run_dir), "final": str(resume_from)}
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    started = time.perf_counter()
    data = prepare_training_data(cfg)
    prepare_seconds = time.perf_counter() - started
    result, _ = fit_trainer(
        train_loop,
        lambda: {"config": cfg.model_dump(mode="json"), "data_ref": ray.put(data), "run_dir": str(run_dir),
                 "resume_from": str(resume_from or "")},
        cfg, run_dir, keep_checkpoints=cfg.train.keep_checkpoints)
    if result.error is not None or result.checkpoint is None:
        raise RuntimeError(f"clip training failed: {result.error}")
    summary = {
        "run_dir": str(run_dir),
        "train_seconds": round(time.perf_counter() - started, 1),
        "prepare_seconds": round(prepare_seconds, 1),
        "train_images": int(len(data["images"])),
        "train_photos": int(data["is_photo"].sum()),
        "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, int | float)},
        "images_per_s": round(float(result.metrics.get("images_per_s", 0.0)), 1),
        "resumed_from": str(resume_from or ""),
    }
    summary["final"] = str(write_final(result.checkpoint, run_dir, summary))
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> dict:
    """Entry point of `prism train clip` and `python -m training.clip`: ``--config YAML key=value ...``.

    Raises:
        JobConfigError: bad config file or override (before Ray starts).
    """
    path, overrides = split_argv(list(sys.argv[1:] if argv is None else argv))
    summary = train(load_config(ClipJobConfig, path, overrides))
    keys = ("final", "train_seconds", "images_per_s", "metrics", "already_finished")
    print(json.dumps({k: summary[k] for k in keys if k in summary}), file=sys.stderr)
    return summary


if __name__ == "__main__":
    try:
        main()
    except JobConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)

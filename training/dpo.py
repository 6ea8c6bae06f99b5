"""Direct preference optimisation of the SFT adapter on Ray Train, with a frozen reference model.

Launch::

    prism train dpo --config training/configs/smollm2/dpo.yaml sft_checkpoint=.prism/checkpoints/smollm2-lora/final
    ray job submit --working-dir . -- python -m training.dpo --config training/configs/smollm2/dpo.yaml

Pairs come from ``prism data dpo``: chosen = the grounded, cited answer; rejected = another
article's answer, an uncited answer, or one that obeys an instruction planted in a passage.
The policy is the SFT LoRA adapter, trained further; the reference is the same SFT model, frozen.
The loss is the DPO objective (Rafailov et al., 2023) in a readable loop of our own
(STYLE.md point 2) rather than TRL's ``DPOTrainer``, whose own training loop and accelerate
state would sit inside Ray Train's worker loop.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ray_app.jobconfig import JobConfigError, StrictModel, load_config, split_argv, step_dir_name
from training.common import (
    LLMDataSection,
    LLMModelSection,
    LLMTrainSection,
    LoraSection,
    RaySection,
    RunSection,
    ScalingSection,
    absolute_model,
    all_reduce,
    apply_lora,
    autocast,
    build_optimizer,
    check_gpu_request,
    check_resources,
    current_lr,
    finished_summary,
    fit_trainer,
    init_deepspeed,
    micro_batch_indices,
    peak_rss_mib,
    read_records,
    reject_renamed,
    report,
    resolve_path,
    restored_checkpoint,
    resume_point,
    run_dir_of,
    shipped_config,
    unwrap,
    warmup_schedule,
    worker_device,
    write_run_files,
)


class DPOConfig(StrictModel):
    """One DPO run (``training/configs/<model>/dpo.yaml``)."""

    sft_checkpoint: str | None = Field(
        None, description="SFT adapter folder (its final/); policy and frozen reference start there. None: a new LoRA on the base."
    )
    beta: float = Field(0.1, gt=0, description="DPO temperature: how far the policy may move from the reference.")
    sft_weight: float = Field(
        0.0, ge=0,
        description="Weight of the chosen answers' mean per-token NLL added to the DPO loss (the 'DPO + SFT' / RPO "
                    "term): keeps the policy a good generator of the preferred answers instead of only widening the "
                    "margin, which without it degenerated into repeated citations here (docs/reports/fine-tuning-methods-70q.md).")
    strategy: Literal["ddp", "deepspeed"] = Field("ddp", description="Data parallelism: torch DDP or DeepSpeed ZeRO.")
    deepspeed_config: str | None = Field(
        None, description="strategy=deepspeed only: a DeepSpeed JSON (relative paths resolve against the current "
                          "directory); None: the shipped training/configs/deepspeed/zero2.json."
    )
    model: LLMModelSection = Field(default_factory=LLMModelSection, description="Base model when sft_checkpoint is None.")
    lora: LoraSection = Field(default_factory=LoraSection, description="New adapter when sft_checkpoint is None.")
    data: LLMDataSection = Field(default_factory=LLMDataSection)
    train: LLMTrainSection = Field(default_factory=lambda: LLMTrainSection(lr=5e-5, batch_size=2, max_steps=50))
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    run: RunSection
    ray: RaySection = Field(default_factory=RaySection)

    _renamed = model_validator(mode="before")(reject_renamed)

    @model_validator(mode="after")
    def _check(self) -> DPOConfig:
        if self.deepspeed_config is not None and self.strategy != "deepspeed":
            raise ValueError("deepspeed_config is only read with strategy=deepspeed")
        check_resources(self.scaling, self.ray)
        return self


# ---------------------------------------------------------------- the objective


def sequence_logps(logits, labels):
    """Sum of log-probabilities of the labelled (answer) tokens of each sequence.

    Args:
        logits: ``(batch, seq, vocab)`` next-token logits.
        labels: ``(batch, seq)`` token ids, ``-100`` where no loss applies.

    Returns:
        ``(batch,)`` summed log-probabilities.
    """
    import torch

    from ray_app.llm.collate import IGNORE_INDEX

    logits, labels = logits[:, :-1, :], labels[:, 1:]
    mask = labels != IGNORE_INDEX
    safe = torch.where(mask, labels, torch.zeros_like(labels))
    token_logps = torch.gather(logits.log_softmax(-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """DPO loss ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))``, averaged over pairs.

    Returns:
        ``(loss, chosen_rewards, rejected_rewards)``; rewards are ``beta * (pi - ref)`` per pair.
    """
    import torch.nn.functional as F

    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


def chosen_nll(policy_chosen, labels):
    """Mean per-token negative log-likelihood of the chosen answers (first half of the batch)."""
    from ray_app.llm.collate import IGNORE_INDEX

    half = labels.shape[0] // 2
    n_tokens = (labels[:half, 1:] != IGNORE_INDEX).sum(-1).clamp(min=1)
    return (-policy_chosen / n_tokens).mean()


def pair_logps(model, batch):
    """Chosen and rejected log-probabilities from one forward pass over the ``2B`` batch."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = sequence_logps(logits.float(), batch["labels"])
    half = logps.shape[0] // 2
    return logps[:half], logps[half:]


# ---------------------------------------------------------------- models


def build_policy_and_reference(cfg: DPOConfig, device):
    """Trainable policy (the SFT adapter, or a new LoRA) and a frozen reference in eval mode, on ``device``."""
    from ray_app.llm.checkpoints import build_base_model, load_lm_from_checkpoint

    if cfg.sft_checkpoint:
        policy, tokenizer = load_lm_from_checkpoint(cfg.sft_checkpoint, trainable=True)
        reference, _ = load_lm_from_checkpoint(cfg.sft_checkpoint)
    else:
        base, tokenizer = build_base_model(cfg.model.name, cfg.model.random_init, cfg.model.init_seed)
        policy = apply_lora(base, cfg.lora)
        reference, _ = build_base_model(cfg.model.name, cfg.model.random_init, cfg.model.init_seed)
    for p in reference.parameters():
        p.requires_grad_(False)
    return policy.to(device), reference.to(device).eval(), tokenizer


def model_spec_for(cfg: DPOConfig) -> dict:
    from ray_app.llm.checkpoints import read_model_spec

    if cfg.sft_checkpoint:
        return read_model_spec(cfg.sft_checkpoint)
    return {"base_model": cfg.model.name, "random_init": cfg.model.random_init, "init_seed": cfg.model.init_seed}


def save_dpo_checkpoint(policy, engine, cfg: DPOConfig, state: dict, optimizer, out_dir: Path, rank: int) -> None:
    """Collective under ZeRO-3; rank 0 writes the adapter, the optimizer state (DDP) and the model spec."""
    from ray_app.llm.checkpoints import save_lm_checkpoint, write_model_spec

    inner = unwrap(policy)
    if engine is not None and engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for p in inner.parameters() if p.requires_grad], modifier_rank=None):
            if rank == 0:
                save_lm_checkpoint(inner, out_dir, state=state)
    elif rank == 0:
        save_lm_checkpoint(inner, out_dir, state=state, optimizer=None if engine else optimizer)
    if rank == 0:
        spec = model_spec_for(cfg)
        write_model_spec(out_dir, spec["base_model"], spec.get("random_init"), spec.get("init_seed", 0), "lora_dpo")


# ---------------------------------------------------------------- the loop


def train_loop(loop_config: dict) -> None:
    """Runs on every Ray Train worker: policy vs frozen reference on preference pairs."""
    import ray.train
    import ray.train.torch
    import torch

    from ray_app.llm.checkpoints import load_optimizer_state, load_trainable_weights, read_state
    from ray_app.llm.collate import DPOCollator, render_dpo_pair

    cfg = DPOConfig.model_validate(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = worker_device(cfg.scaling)
    torch.manual_seed(cfg.train.seed + rank)

    policy, reference, tokenizer = build_policy_and_reference(cfg, device)
    pairs = [render_dpo_pair(tokenizer, r, cfg.data.max_len) for r in loop_config["records"][rank::world]]
    collate = DPOCollator(tokenizer.pad_token_id)
    start_step, engine = 0, None
    with restored_checkpoint(loop_config["resume_from"]) as resume_from:
        if resume_from:
            load_trainable_weights(policy, resume_from)
            start_step = int(read_state(resume_from).get("step", 0))
        optimizer = build_optimizer([p for p in policy.parameters() if p.requires_grad], cfg.train)
        if cfg.strategy == "deepspeed":
            policy, optimizer = init_deepspeed(policy, optimizer, cfg.deepspeed_config, cfg.train, world)
            engine = policy
        else:
            if resume_from:
                load_optimizer_state(optimizer, resume_from)
            if world > 1:
                policy = ray.train.torch.prepare_model(policy, move_to_device=False)
    scheduler = warmup_schedule(optimizer, cfg.train, start_step)

    policy.train()
    losses, margins, accuracies, lrs = [], [], [], []
    tokens, started = 0, time.perf_counter()
    for step in range(start_step, cfg.train.max_steps):
        lrs.append(current_lr(optimizer))
        step_loss = step_margin = step_acc = 0.0
        for micro in range(cfg.train.grad_accum):
            idx = micro_batch_indices(len(pairs), step * cfg.train.grad_accum + micro, cfg.train.batch_size, cfg.train.seed)
            batch = {k: v.to(device) for k, v in collate([pairs[i] for i in idx]).items()}
            tokens += int(batch["attention_mask"].sum())
            with torch.no_grad(), autocast(cfg.train.precision, device):
                ref_chosen, ref_rejected = pair_logps(reference, batch)
            with autocast(cfg.train.precision, device):
                pi_chosen, pi_rejected = pair_logps(policy, batch)
            loss, chosen_r, rejected_r = dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, cfg.beta)
            if cfg.sft_weight:
                loss = loss + cfg.sft_weight * chosen_nll(pi_chosen, batch["labels"])
            if engine is not None:
                engine.backward(loss)
                engine.step()
            else:
                (loss / cfg.train.grad_accum).backward()
            step_loss += float(loss.detach()) / cfg.train.grad_accum
            step_margin += float((chosen_r - rejected_r).mean()) / cfg.train.grad_accum
            step_acc += float((chosen_r > rejected_r).float().mean()) / cfg.train.grad_accum
        if engine is None:
            torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad], cfg.train.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        losses.append(all_reduce(step_loss) / world)
        margins.append(all_reduce(step_margin) / world)
        accuracies.append(all_reduce(step_acc) / world)
        done = step + 1
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"DPO loss is {losses[-1]} at step {done}")
        is_final = done == cfg.train.max_steps
        wants_ckpt = is_final or (cfg.train.save_every and done % cfg.train.save_every == 0)
        if wants_ckpt or done % cfg.train.log_every == 0:
            elapsed = time.perf_counter() - started
            metrics = {
                "step": done,
                "loss": losses[-1],
                "losses": losses,
                "lrs": lrs,
                "reward_margin": margins[-1],
                "reward_accuracy": accuracies[-1],
                "train_tokens": all_reduce(tokens),
                "train_seconds": elapsed,
                "train_tokens_per_s": all_reduce(tokens) / max(elapsed, 1e-9),
                "peak_rss_mib_per_worker": all_reduce(peak_rss_mib(), "max"),
                "world_size": world,
            }
            name = "final" if is_final else step_dir_name(done)
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = Path(tmp) / name
                if wants_ckpt:
                    save_dpo_checkpoint(policy, engine, cfg, metrics, optimizer, ckpt, rank)
                report(metrics, ckpt if wants_ckpt and rank == 0 else None, name)


# ---------------------------------------------------------------- driver


def run(cfg: DPOConfig) -> dict:
    """Launch the Ray Train DPO job; returns the final metrics and the adapter path.

    Raises:
        JobConfigError: an SFT checkpoint that is not an adapter, a GPU where there is none, a
            missing DeepSpeed config, or a run folder that cannot be resumed (before Ray starts).
    """
    from ray_app.llm.checkpoints import STATE_FILE, is_adapter_checkpoint
    from ray_app.settings import get_settings

    check_gpu_request(cfg.scaling, cfg.ray)
    if cfg.sft_checkpoint:
        sft = Path(cfg.sft_checkpoint).resolve()
        if not is_adapter_checkpoint(sft):
            raise JobConfigError(f"sft_checkpoint {cfg.sft_checkpoint} is not a LoRA adapter folder (train method=lora first)")
        cfg = cfg.model_copy(update={"sft_checkpoint": str(sft)})
    else:
        cfg = cfg.model_copy(update={"model": absolute_model(cfg.model)})
    if cfg.strategy == "deepspeed":
        ds_config = resolve_path(cfg.deepspeed_config) if cfg.deepspeed_config else shipped_config("deepspeed/zero2.json")
        cfg = cfg.model_copy(update={"deepspeed_config": str(ds_config)})
    records = read_records(cfg.data.train_path or get_settings().data_dir / "dpo" / "train.jsonl", cfg.data.limit,
                           "prism data dpo")
    run_dir = run_dir_of(cfg.run)
    resume_from = resume_point(run_dir, cfg.run, cfg.train.max_steps, STATE_FILE)
    if resume_from is not None and resume_from.name == "final":
        return finished_summary(run_dir)
    result, seconds = fit_trainer(
        train_loop,
        lambda: {"config": cfg.model_dump(mode="json"), "records": records, "resume_from": str(resume_from or "")},
        cfg, run_dir)
    summary = {**result.metrics, "wall_seconds": seconds, "resumed_from": str(resume_from or "")}
    summary.update(run_dir=str(run_dir), checkpoint=str(run_dir / "final"), method="lora_dpo", strategy=cfg.strategy)
    write_run_files(run_dir, cfg, summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    """Entry point for ``prism train dpo`` and ``python -m training.dpo``: prints the summary as JSON.

    Args:
        argv: ``--config YAML`` and dotted ``key=value`` overrides (default: ``sys.argv[1:]``).
    """
    path, overrides = split_argv(list(sys.argv[1:] if argv is None else argv))
    summary = run(load_config(DPOConfig, path, overrides))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("losses", "lrs")}, default=str))
    return summary


if __name__ == "__main__":
    main()

